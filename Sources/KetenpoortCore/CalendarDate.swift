import Foundation

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

extension CalendarDate {
    /// The Dutch calendar day (`YYYY-MM-DD`) of an instant: the day in force for consents,
    /// memberships, the date by which a family is informed and retention. The Netherlands keep
    /// CET (UTC+1), and CEST (UTC+2) from 01:00 UTC on the last Sunday of March to 01:00 UTC on
    /// the last Sunday of October (the EU rule since 1996). Computed here, so no time-zone
    /// database is needed; a UTC day would keep a consent that ended at midnight valid for
    /// another hour or two.
    public static func dutchDay(of instant: Date = Date()) -> String {
        let seconds = Int64(instant.timeIntervalSince1970.rounded(.down))
        let year = civil(fromDays: floorDivide(seconds, 86_400)).year
        let summerStart = lastSunday(year: year, month: 3) * 86_400 + 3_600
        let summerEnd = lastSunday(year: year, month: 10) * 86_400 + 3_600
        let offset: Int64 = seconds >= summerStart && seconds < summerEnd ? 7_200 : 3_600
        return text(ofDay: floorDivide(seconds + offset, 86_400))
    }

    /// `date` (`YYYY-MM-DD`) plus `days` (negative: minus); an unreadable date is returned as given.
    public static func adding(days count: Int, to date: String) -> String {
        let parts = date.split(separator: "-").compactMap { Int64($0) }
        guard parts.count == 3 else { return date }
        return text(ofDay: days(year: parts[0], month: parts[1], day: parts[2]) + Int64(count))
    }

    /// `YYYY-MM-DD` of a day number.
    static func text(ofDay number: Int64) -> String {
        let (y, m, d) = civil(fromDays: number)
        func pad(_ n: Int64, _ width: Int) -> String {
            let text = String(n)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))"
    }

    private static func floorDivide(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    static func days(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The date of a day number (the inverse of ``days(year:month:day:)``).
    static func civil(fromDays z0: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// The day number of the last Sunday of a month.
    static func lastSunday(year: Int64, month: Int64) -> Int64 {
        let last = month == 12 ? days(year: year + 1, month: 1, day: 1) - 1 : days(year: year, month: month + 1, day: 1) - 1
        let weekday = ((last + 4) % 7 + 7) % 7  // 0 = Sunday; 1970-01-01 was a Thursday
        return last - weekday
    }
}
