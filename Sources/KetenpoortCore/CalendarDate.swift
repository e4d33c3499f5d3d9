/// Calendar dates as the policies and the API write them: `YYYY-MM-DD`, ASCII digits, a real day
/// of the Gregorian calendar. Dates are compared as text, so a date that is not a real day (a
/// `2026-02-30`, a month 13) would quietly move a validity period: it is refused instead.
public enum CalendarDate {
    public static func isValid(_ text: String) -> Bool {
        let u = Array(text.utf8)
        guard u.count == 10, u[4] == UInt8(ascii: "-"), u[7] == UInt8(ascii: "-") else { return false }
        func number(_ range: Range<Int>) -> Int? {
            var n = 0
            for i in range {
                guard (48...57).contains(u[i]) else { return nil }
                n = n * 10 + Int(u[i] - 48)
            }
            return n
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), (1...12).contains(month), day >= 1 else { return false }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        return day <= days
    }
}
