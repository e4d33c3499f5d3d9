/// Burgerservicenummer: nine digits passing the 11-check (weights 9…2 and −1 for the last digit).
///
/// The value is personal data: ``description`` never prints it. Use ``digits`` deliberately.
public struct BSN: Hashable, Sendable, CustomStringConvertible {
    /// The nine digits. Personal data: never log, never put in an error.
    public let digits: String

    /// Parses and checks a BSN. Throws `invalid_bsn` without echoing the value.
    public init(_ text: String) throws {
        guard BSN.isValid(text) else {
            throw KetenpoortError(.invalidBSN, "not a valid BSN: nine digits passing the 11-check expected")
        }
        self.digits = text
    }

    /// Whether `text` is nine ASCII digits passing the BSN 11-check.
    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 9, bytes.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
        var sum = 0
        for (index, byte) in bytes.enumerated() {
            let digit = Int(byte - 48)
            sum += index == 8 ? -digit : digit * (9 - index)
        }
        return sum % 11 == 0 && bytes.contains(where: { $0 != 48 })
    }

    /// Whether the number lies in the range reserved for tests (999990000–999999999).
    public var isTestNumber: Bool { digits.hasPrefix("99999") }

    /// The valid BSNs of the test range, in ascending order (for tests and the demo).
    public static func testNumbers(count: Int, startingAt start: Int = 999_990_000) -> [BSN] {
        var result: [BSN] = []
        var candidate = start
        while result.count < count && candidate <= 999_999_999 {
            let text = String(candidate)
            if BSN.isValid(text) { result.append(try! BSN(text)) }
            candidate += 1
        }
        return result
    }

    public var description: String { "BSN(redacted)" }
}

/// Organisatie-identificatienummer: 20 digits. Carried in a PKIoverheid certificate's subject
/// serialNumber. Not personal data.
public struct OIN: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let value: String

    public init(_ text: String) throws {
        guard OIN.isValid(text) else {
            throw KetenpoortError(.invalidOIN, "an OIN is 20 digits")
        }
        self.value = text
    }

    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.count == 20 && bytes.allSatisfy { $0 >= 48 && $0 <= 57 }
    }

    public var description: String { value }
    public static func < (lhs: OIN, rhs: OIN) -> Bool { lhs.value < rhs.value }
}
