import KetenpoortCore
import Testing

@Suite("Calendar dates")
struct CalendarDateTests {
    @Test(
        "real days of the Gregorian calendar are accepted, leap days only in leap years",
        arguments: ["2026-12-01", "2024-02-29", "2000-02-29", "2026-01-31", "2026-04-30", "0001-01-01", "9999-12-31"])
    func valid(text: String) {
        #expect(CalendarDate.isValid(text))
    }

    @Test(
        "anything else is refused: impossible days and months, other forms, non-ASCII digits",
        arguments: [
            "2026-02-30", "2025-02-29", "1900-02-29", "2026-04-31", "2026-13-01", "2026-00-10", "2026-01-00", "2026-1-01", "26-01-01",
            "2026/01/01", "2026-01-01T00:00", " 2026-01-01", "", "٢٠٢٦-٠١-٠١", "2026-0a-01",
        ])
    func invalid(text: String) {
        #expect(!CalendarDate.isValid(text))
    }
}
