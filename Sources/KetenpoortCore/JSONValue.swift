/// A JSON value with object keys kept in document order.
///
/// Ketenpoort parses request bodies itself (``JSONParser``) so that it can be strict — duplicate
/// keys, depth and size limits, no trailing garbage — and serialises deterministically.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            // Objects compare as maps: key order does not matter.
            guard a.count == b.count else { return false }
            let right = Dictionary(b, uniquingKeysWith: { first, _ in first })
            return a.allSatisfy { key, value in right[key] == value }
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .null: hasher.combine(0)
        case .bool(let b): hasher.combine(b)
        case .number(let n): hasher.combine(n)
        case .string(let s): hasher.combine(s)
        case .array(let a): hasher.combine(a)
        case .object(let o):
            hasher.combine(o.count)
            for (key, value) in o.sorted(by: { $0.0 < $1.0 }) {
                hasher.combine(key)
                hasher.combine(value)
            }
        }
    }

    /// Member lookup on objects (first match); `nil` for other values.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first(where: { $0.0 == key })?.1
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var numberValue: Double? { if case .number(let n) = self { return n } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectValue: [(String, JSONValue)]? { if case .object(let o) = self { return o } else { return nil } }
    public var intValue: Int? {
        guard case .number(let n) = self, n.rounded() == n, abs(n) < 9.0e15 else { return nil }
        return Int(n)
    }

    /// Compact serialisation. With `sortedKeys`, object members are written in key order
    /// (a canonical form for hashing and comparison).
    public func serialized(sortedKeys: Bool = false) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(to: &out, sortedKeys: sortedKeys)
        return String(decoding: out, as: UTF8.self)
    }

    /// The serialisation as UTF-8 bytes (no String in between).
    public func serializedBytes(sortedKeys: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(to: &out, sortedKeys: sortedKeys)
        return out
    }

    public func write(to out: inout String, sortedKeys: Bool) {
        out += serialized(sortedKeys: sortedKeys)
    }

    /// Writes UTF-8 into a byte buffer. Object keys, with `sortedKeys`, are ordered by their UTF-8
    /// bytes. Strings escape `"`, `\`, control characters, and `<`, `>`, `&` (safe inside HTML).
    public func write(to out: inout [UInt8], sortedKeys: Bool) {
        switch self {
        case .null: out.append(contentsOf: JSONValue.nullBytes)
        case .bool(let b): out.append(contentsOf: b ? JSONValue.trueBytes : JSONValue.falseBytes)
        case .number(let n):
            if n.rounded() == n && abs(n) < 9.0e15 {
                out.append(contentsOf: String(Int64(n)).utf8)
            } else if n.isFinite {
                out.append(contentsOf: "\(n)".utf8)
            } else {
                out.append(contentsOf: JSONValue.nullBytes)
            }
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                item.write(to: &out, sortedKeys: sortedKeys)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            let ordered = sortedKeys ? members.sorted(by: { JSONValue.utf8Precedes($0.0, $1.0) }) : members
            for (index, (key, value)) in ordered.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                JSONValue.writeString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                value.write(to: &out, sortedKeys: sortedKeys)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Whether `a` sorts before `b` by UTF-8 bytes (the canonical key order), comparing the
    /// strings' contiguous storage directly.
    static func utf8Precedes(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                let common = min(x.count, y.count)
                var i = 0
                while i < common {
                    if x[i] != y[i] { return x[i] < y[i] }
                    i += 1
                }
                return x.count < y.count
            }
        }
    }

    static let nullBytes = Array("null".utf8)
    static let trueBytes = Array("true".utf8)
    static let falseBytes = Array("false".utf8)
    static let hexDigits = Array("0123456789abcdef".utf8)

    /// For each byte: 0 copied as is, 1 a two-character escape, 2 a `\u00XX` escape.
    static let escapeClass: [UInt8] = (0..<256).map { b in
        switch b {
        case 0x22, 0x5c, 0x0a, 0x0d, 0x09: return 1
        case 0x3c, 0x3e, 0x26, 0x00..<0x20: return 2
        default: return 0
        }
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { bytes in
            escapeClass.withUnsafeBufferPointer { table in
                var runStart = 0
                var i = 0
                let count = bytes.count
                while i < count {
                    // Runs without anything to escape are copied in one piece.
                    let b = bytes[i]
                    let kind = table[Int(b)]
                    if kind == 0 {
                        i += 1
                        continue
                    }
                    if i > runStart { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
                    out.append(0x5c)
                    if kind == 1 {
                        switch b {
                        case 0x0a: out.append(UInt8(ascii: "n"))
                        case 0x0d: out.append(UInt8(ascii: "r"))
                        case 0x09: out.append(UInt8(ascii: "t"))
                        default: out.append(b)  // " and \
                        }
                    } else {
                        out.append(UInt8(ascii: "u"))
                        out.append(0x30)
                        out.append(0x30)
                        out.append(hexDigits[Int(b >> 4)])
                        out.append(hexDigits[Int(b & 0x0f)])
                    }
                    i += 1
                    runStart = i
                }
                if count > runStart { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<count])) }
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) { self = .object(elements) }
    public init(nilLiteral: ()) { self = .null }
}

/// A strict JSON parser (RFC 8259) with limits. Errors never echo input values.
public struct JSONParser {
    public struct Limits: Sendable {
        public var maxDepth: Int
        public var maxStringBytes: Int
        public var maxMembers: Int
        public init(maxDepth: Int = 32, maxStringBytes: Int = 256 * 1024, maxMembers: Int = 10_000) {
            self.maxDepth = maxDepth
            self.maxStringBytes = maxStringBytes
            self.maxMembers = maxMembers
        }
    }

    public static func parse(_ text: String, limits: Limits = Limits()) throws -> JSONValue {
        try parse(bytes: Array(text.utf8), limits: limits)
    }

    public static func parse(bytes: [UInt8], limits: Limits = Limits()) throws -> JSONValue {
        var parser = Cursor(bytes: bytes, limits: limits)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.error("unexpected data after the JSON value") }
        return value
    }

    struct Cursor {
        let bytes: [UInt8]
        let limits: Limits
        var index = 0
        var members = 0

        init(bytes: [UInt8], limits: Limits) {
            self.bytes = bytes
            self.limits = limits
        }

        /// Up to this many members, duplicate names are found by comparing with each earlier name.
        static let scannedNames = 16

        func error(_ message: String) -> KetenpoortError {
            KetenpoortError(.invalidJSON, "\(message) at byte \(index)")
        }

        mutating func skipWhitespace() {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 {
                index += 1
            }
        }

        mutating func parseValue(depth: Int) throws -> JSONValue {
            guard depth <= limits.maxDepth else { throw error("nesting deeper than \(limits.maxDepth) levels") }
            guard index < bytes.count else { throw error("unexpected end of input") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try parseObject(depth: depth)
            case UInt8(ascii: "["): return try parseArray(depth: depth)
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
            case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
            case UInt8(ascii: "n"): try expectLiteral("null"); return .null
            default: return .number(try parseNumber())
            }
        }

        mutating func expectLiteral(_ literal: String) throws {
            let utf8 = Array(literal.utf8)
            guard index + utf8.count <= bytes.count, Array(bytes[index..<index + utf8.count]) == utf8 else {
                throw error("invalid literal")
            }
            index += utf8.count
        }

        mutating func countMember() throws {
            members += 1
            if members > limits.maxMembers { throw error("more than \(limits.maxMembers) values") }
        }

        mutating func parseObject(depth: Int) throws -> JSONValue {
            index += 1
            var result: [(String, JSONValue)] = []
            // Duplicate names: a scan of the names so far for small objects (no hashing or set
            // per object), a set once an object grows past that.
            var seen: Set<String>? = nil
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(result)
            }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let key = try parseString()
                if seen != nil {
                    guard seen!.insert(key).inserted else { throw error("duplicate member name") }
                } else if result.count < Cursor.scannedNames {
                    for (name, _) in result where name == key { throw error("duplicate member name") }
                } else {
                    var names = Set(result.map(\.0))
                    guard names.insert(key).inserted else { throw error("duplicate member name") }
                    seen = names
                }
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                let value = try parseValue(depth: depth + 1)
                try countMember()
                result.append((key, value))
                skipWhitespace()
                guard index < bytes.count else { throw error("unexpected end of input") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(result) }
                throw error("expected ',' or '}'")
            }
        }

        mutating func parseArray(depth: Int) throws -> JSONValue {
            index += 1
            var result: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(result)
            }
            while true {
                skipWhitespace()
                result.append(try parseValue(depth: depth + 1))
                try countMember()
                skipWhitespace()
                guard index < bytes.count else { throw error("unexpected end of input") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(result) }
                throw error("expected ',' or ']'")
            }
        }

        mutating func parseHex4() throws -> UInt32 {
            guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[index]
                let digit: UInt32
                switch c {
                case 48...57: digit = UInt32(c - 48)
                case 65...70: digit = UInt32(c - 55)
                case 97...102: digit = UInt32(c - 87)
                default: throw error("invalid \\u escape")
                }
                value = value << 4 | digit
                index += 1
            }
            return value
        }

        /// The index of the first quote, backslash or control character from `start` (or the end).
        func plainRunEnd(from start: Int) -> Int {
            var end = start
            while end < bytes.count {
                let d = bytes[end]
                if d == 0x22 || d == 0x5C || d < 0x20 { break }
                end += 1
            }
            return end
        }

        mutating func parseString() throws -> String {
            index += 1  // opening quote
            // The common case: no escape before the closing quote — one validation, one copy.
            let end = plainRunEnd(from: index)
            if end < bytes.count, bytes[end] == 0x22 {
                guard end - index <= limits.maxStringBytes else { throw error("string longer than \(limits.maxStringBytes) bytes") }
                guard let s = String(validating: bytes[index..<end], as: UTF8.self) else { throw error("string is not valid UTF-8") }
                index = end + 1
                return s
            }
            var out: [UInt8] = []
            out.reserveCapacity(32)
            while true {
                guard index < bytes.count else { throw error("unterminated string") }
                let c = bytes[index]
                if out.count > limits.maxStringBytes { throw error("string longer than \(limits.maxStringBytes) bytes") }
                switch c {
                case UInt8(ascii: "\""):
                    index += 1
                    guard let s = String(validating: out, as: UTF8.self) else { throw error("string is not valid UTF-8") }
                    return s
                case UInt8(ascii: "\\"):
                    index += 1
                    guard index < bytes.count else { throw error("unterminated escape") }
                    let e = bytes[index]
                    index += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try parseHex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard index + 2 <= bytes.count, bytes[index] == 0x5C, bytes[index + 1] == UInt8(ascii: "u") else {
                                throw error("unpaired surrogate")
                            }
                            index += 2
                            let low = try parseHex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(scalar) {
                            throw error("unpaired surrogate")
                        }
                        guard let u = Unicode.Scalar(scalar) else { throw error("invalid code point") }
                        out.append(contentsOf: Array(String(Character(u)).utf8))
                    default: throw error("invalid escape")
                    }
                default:
                    guard c >= 0x20 else { throw error("control character in string") }
                    // Copy the run up to the next quote, backslash or control character at once.
                    let end = plainRunEnd(from: index + 1)
                    out.append(contentsOf: bytes[index..<end])
                    index = end
                }
            }
        }

        mutating func parseNumber() throws -> Double {
            let start = index
            if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, (48...57).contains(bytes[index]) else { throw error("invalid value") }
            if bytes[index] == 48 {
                index += 1
            } else {
                while index < bytes.count, (48...57).contains(bytes[index]) { index += 1 }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard index < bytes.count, (48...57).contains(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count, (48...57).contains(bytes[index]) { index += 1 }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard index < bytes.count, (48...57).contains(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count, (48...57).contains(bytes[index]) { index += 1 }
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            guard let value = Double(text), value.isFinite
            else { throw error("invalid number") }
            return value
        }
    }
}
