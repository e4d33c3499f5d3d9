import Foundation
import KetenpoortCore

/// Generalisations of a value; `nil` when the input is malformed (the field is then withheld,
/// never passed through).
public enum Generalise {
    /// `YYYY-MM-DD` → `YYYY`.
    public static func year(_ date: String) -> String? { parse(date).map { pad($0.0, 4) } }
    /// `YYYY-MM-DD` → `YYYY-MM`.
    public static func yearMonth(_ date: String) -> String? { parse(date).map { "\(pad($0.0, 4))-\(pad($0.1, 2))" } }
    /// `1234 AB` / `1234AB` → `1234`.
    public static func postcode4(_ postcode: String) -> String? {
        // ASCII only: four digits (not starting with 0), two letters, spaces ignored.
        var chars: [UInt8] = []
        chars.reserveCapacity(6)
        for c in postcode.utf8 where c != 32 {
            guard chars.count < 6 else { return nil }
            chars.append(c)
        }
        guard chars.count == 6, chars[0] != 48, chars[0..<4].allSatisfy({ (48...57).contains($0) }),
            chars[4..<6].allSatisfy({ (65...90).contains($0) || (97...122).contains($0) })
        else {
            return nil
        }
        return String(decoding: chars[0..<4], as: UTF8.self)
    }
    /// A birth date to its age band on `reference` (both `YYYY-MM-DD`).
    public static func ageBand(birthDate: String, on reference: String) -> String? {
        guard let b = parse(birthDate), let r = parse(reference) else { return nil }
        var age = r.0 - b.0
        if (r.1, r.2) < (b.1, b.2) { age -= 1 }
        guard age >= 0, age < 130 else { return nil }
        switch age {
        case 0...3: return "0-3"
        case 4...11: return "4-11"
        case 12...15: return "12-15"
        case 16...17: return "16-17"
        case 18...26: return "18-26"
        case 27...64: return "27-64"
        default: return "65+"
        }
    }

    static func parse(_ date: String) -> (Int, Int, Int)? {
        let parts = date.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            let y = Int(parts[0]), let m = Int(parts[1]), let d = Int(parts[2]), (1...12).contains(m), (1...31).contains(d)
        else { return nil }
        return (y, m, d)
    }

    static func pad(_ n: Int, _ width: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
}

/// Applies a decision's field obligations to an exchange's data in one pass.
///
/// `data` is an object of categories, each an object of fields. Fields the decision releases are
/// transformed; every other field is withheld (left out). Fields named `bsn` must be valid BSNs
/// whatever happens to them (`invalid_bsn`, the value never echoed).
public struct ObligationApplier: Sendable {
    public let pseudonymiser: Pseudonymiser
    public let tokeniser: Tokeniser

    public init(keys: KeyRing) {
        pseudonymiser = Pseudonymiser(keys: keys)
        tokeniser = Tokeniser(keys: keys)
    }

    public struct Output: Sendable {
        public var data: JSONValue
        public var released: [String]
        public var withheld: [String]
    }

    /// - Parameters:
    ///   - released: `category.field` → transform for what the decision releases.
    ///   - domain: the recipient domain for pseudonyms and tokens.
    ///   - referenceDate: the decision date (for age bands).
    public func apply(data: JSONValue, released: [String: FieldTransform], domain: String, referenceDate: String) throws -> Output {
        guard case .object(let categories) = data else { throw KetenpoortError(.invalidRequest, "`data` must be an object of categories") }
        var out: [(String, JSONValue)] = []
        var releasedPaths: [String] = []
        var withheldPaths: [String] = []
        for (category, value) in categories {
            guard case .object(let fields) = value else {
                throw KetenpoortError(.invalidRequest, "`data.\(category)` must be an object of fields")
            }
            var kept: [(String, JSONValue)] = []
            for (field, fieldValue) in fields {
                let path = "\(category).\(field)"
                if field == "bsn" {
                    guard let text = fieldValue.stringValue, BSN.isValid(text) else {
                        throw KetenpoortError(.invalidBSN, "`\(path)` is not a valid BSN (nine digits passing the 11-check)")
                    }
                }
                guard let transform = released[path], let transformed = try transform.apply(to: fieldValue, applier: self, domain: domain, referenceDate: referenceDate)
                else {
                    withheldPaths.append(path)
                    continue
                }
                kept.append((field, transformed))
                releasedPaths.append(path)
            }
            if !kept.isEmpty { out.append((category, .object(kept))) }
        }
        return Output(data: .object(out), released: releasedPaths.sorted(), withheld: withheldPaths.sorted())
    }
}

extension FieldTransform {
    /// The transformed value, or `nil` when the field is to be withheld.
    func apply(to value: JSONValue, applier: ObligationApplier, domain: String, referenceDate: String) throws -> JSONValue? {
        switch self {
        case .keep:
            return value
        case .drop:
            return nil
        case .pseudonymise:
            guard let text = Self.text(value) else { return nil }
            return .string(try applier.pseudonymiser.pseudonym(of: text, domain: domain))
        case .token:
            guard let text = Self.text(value) else { return nil }
            return .string(try applier.tokeniser.token(of: text, domain: domain))
        case .generalise(let kind):
            guard let text = value.stringValue else { return nil }
            let result: String?
            switch kind {
            case .year: result = Generalise.year(text)
            case .yearMonth: result = Generalise.yearMonth(text)
            case .postcode4: result = Generalise.postcode4(text)
            case .ageBand: result = Generalise.ageBand(birthDate: text, on: referenceDate)
            }
            return result.map(JSONValue.string)
        }
    }

    static func text(_ value: JSONValue) -> String? {
        switch value {
        case .string(let s): return s
        case .number: return value.serialized()
        default: return nil
        }
    }
}

/// `ketenpoort pseudonym`: one BSN a line in, one pseudonym a line out.
public enum PseudonymCommand {
    public static func run(lines: [String], keys: KeyRing, domain: String) throws -> [String] {
        let pseudonymiser = Pseudonymiser(keys: keys)
        var out: [String] = []
        out.reserveCapacity(lines.count)
        for (index, raw) in lines.enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            // Output line N is input line N's pseudonym: a skipped line would shift every later one.
            guard !line.isEmpty else {
                throw KetenpoortError(.invalidInput, "line \(index + 1) of standard input is empty: give one BSN a line, so that each output line belongs to the same input line")
            }
            guard BSN.isValid(line) else {
                throw KetenpoortError(.invalidBSN, "line \(index + 1) of standard input is not a valid BSN (nine digits passing the 11-check)")
            }
            out.append(try pseudonymiser.pseudonym(of: line, domain: domain))
        }
        return out
    }
}

/// `ketenpoort bench pseudonym`: pseudonyms per second on one core, beside OpenSSL's own
/// HMAC-SHA256 rate for 16-byte inputs measured in the same run.
public enum PseudonymBenchmark {
    public static func run(count: Int) throws -> Double {
        let keys = try KeyRing(keys: [("k1", try Crypto.randomBytes(32))])
        let pseudonymiser = Pseudonymiser(keys: keys)
        let bsns = BSN.testNumbers(count: 10_000).map(\.digits)
        let domain = Pseudonymiser.recipientDomain(caseTable: "mda-zhz", recipient: "veilig-thuis-zhz")
        _ = try pseudonymiser.pseudonym(of: bsns[0], domain: domain)
        let clock = ContinuousClock()
        let start = clock.now
        var sink = 0
        for i in 0..<count { sink &+= try pseudonymiser.pseudonym(of: bsns[i % bsns.count], domain: domain).utf8.count }
        let elapsed = clock.now - start
        precondition(sink > 0)
        return Double(count) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// `openssl speed -hmac sha256 -bytes 16 -seconds S`: HMACs per second.
    public static func opensslHMACRate(seconds: Int = 3, openssl: String = "/usr/bin/openssl") throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: openssl)
        process.arguments = ["speed", "-hmac", "sha256", "-bytes", "16", "-seconds", String(seconds)]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        // "Doing hmac(sha256) for 3s on 16 size blocks: 7431251 hmac(sha256)'s in 2.99s"
        for line in text.split(separator: "\n") where line.contains("size blocks:") {
            let words = line.split(separator: " ")
            if let colon = words.firstIndex(where: { $0.hasSuffix("blocks:") }), colon + 1 < words.count,
                let count = Double(words[colon + 1]), let last = words.last, let secs = Double(last.dropLast())
            {
                return count / secs
            }
        }
        throw KetenpoortError(.crypto, "cannot read the output of `openssl speed -hmac sha256`")
    }
}
