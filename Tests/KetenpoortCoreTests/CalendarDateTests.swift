import Foundation
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

    @Test(
        "the Dutch day: CET, and CEST from 01:00 UTC on the last Sunday of March to 01:00 UTC on the last Sunday of October",
        arguments: [
            // Winter (UTC+1): from 23:00 UTC it is the next day.
            ("2026-12-01T22:59:59Z", "2026-12-01"), ("2026-12-01T23:00:00Z", "2026-12-02"), ("2026-12-31T23:30:00Z", "2027-01-01"),
            // 2026's summer time starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC.
            ("2026-03-28T22:59:59Z", "2026-03-28"), ("2026-03-28T23:00:00Z", "2026-03-29"),
            ("2026-07-01T21:59:59Z", "2026-07-01"), ("2026-07-01T22:00:00Z", "2026-07-02"),
            ("2026-10-24T21:59:59Z", "2026-10-24"), ("2026-10-24T22:00:00Z", "2026-10-25"),
            // Leap day, and a year whose last Sunday of March is the 31st (2024).
            ("2024-02-28T23:00:00Z", "2024-02-29"), ("2024-03-30T23:30:00Z", "2024-03-31"), ("2024-06-30T22:30:00Z", "2024-07-01"),
        ])
    func dutchDay(instant: String, day: String) throws {
        let date = try #require(ISO8601DateFormatter().date(from: instant))
        #expect(CalendarDate.dutchDay(of: date) == day)
    }
}
