import KetenpoortCore
import Testing

@Suite("Strict JSON")
struct JSONParserTests {
    @Test("parse(serialize(x)) == x for nested values")
    func roundTrip() throws {
        let value: JSONValue = ["a": [1, 2, "x\"y\n"], "b": ["c": true, "d": nil], "e": "€ and \u{1F600}"]
        #expect(try JSONParser.parse(value.serialized()) == value)
        #expect(try JSONParser.parse(value.serialized(sortedKeys: true)) == value)
    }

    @Test(
        "malformed input is refused with invalid_json",
        arguments: [
            "{\"a\":1,\"a\":2}", "{\"a\":1} x", "[1,]", "{\"a\"}", "\"\u{01}\"", "01", "{\"a\":tru}", "\"\\ud800\"", "",
            String(repeating: "[", count: 40) + String(repeating: "]", count: 40),
        ])
    func refused(text: String) {
        #expect(throws: KetenpoortError(.invalidJSON, "")) { try JSONParser.parse(text) }
    }

    @Test("duplicate member names are refused in small and large objects, wherever the repeat falls")
    func duplicateNames() throws {
        // Small objects compare each name with the earlier ones; from 16 members on, a set is used.
        for count in [2, 15, 16, 17, 40] {
            let names = (0..<count).map { "m\($0)" }
            let unique = "{" + names.map { "\"\($0)\":1" }.joined(separator: ",") + "}"
            #expect(try JSONParser.parse(unique).objectValue?.count == count)
            for repeated in [0, count / 2, count - 1] {
                let text = "{" + (names + [names[repeated]]).map { "\"\($0)\":1" }.joined(separator: ",") + "}"
                #expect(throws: KetenpoortError(.invalidJSON, "")) { try JSONParser.parse(text) }
            }
        }
        // The same name in different objects is not a repeat.
        #expect(try JSONParser.parse(#"{"a":{"a":1},"b":{"a":2}}"#).objectValue?.count == 2)
    }

    @Test("sorted keys follow UTF-8 byte order (the log's canonical form), nested objects too")
    func sortedKeys() {
        let value: JSONValue = .object([
            ("b", 1), ("é", 2), ("aa", 3), ("B", 4), ("", 5), ("a", .object([("z", 1), ("y", 2)])), ("\u{1F600}", 6), ("ab", 7),
        ])
        #expect(value.serialized(sortedKeys: true) == #"{"":5,"B":4,"a":{"y":2,"z":1},"aa":3,"ab":7,"b":1,"é":2,"😀":6}"#)
        #expect(value.serialized() == #"{"b":1,"é":2,"aa":3,"B":4,"":5,"a":{"z":1,"y":2},"😀":6,"ab":7}"#)
    }

    @Test("errors do not echo values")
    func noEcho() {
        do {
            _ = try JSONParser.parse(#"{"bsn": "999990019", "bsn": "999990019"}"#)
        } catch let error as KetenpoortError {
            #expect(!error.message.contains("999990019"))
        } catch {
            Issue.record("unexpected error")
        }
    }

    @Test("strings: escapes written and read back, long runs copied whole, the length limit kept on both paths")
    func strings() throws {
        let samples = [
            "", "plain", String(repeating: "x", count: 5_000), "quote \" backslash \\ slash /", "line\nbreak\ttab\r", "\u{01}\u{1F}",
            "<script>&amp;</script>", "é ü € \u{1F600}", "x" + String(repeating: "\"", count: 3) + "y",
        ]
        for sample in samples {
            let written = JSONValue.string(sample).serialized()
            #expect(try JSONParser.parse(written) == .string(sample))
            // Nothing that could end the string or open markup is left unescaped.
            let inner = written.dropFirst().dropLast()
            #expect(!inner.contains("<") && !inner.contains(">") && !inner.contains("&"))
        }
        #expect(JSONValue.string("a\"b\\c\n<").serialized() == #""a\"b\\c\n\u003c""#)
        #expect(JSONValue.string("\u{07}").serialized() == #""\u0007""#)
        let limits = JSONParser.Limits(maxDepth: 4, maxStringBytes: 8, maxMembers: 10)
        #expect(try JSONParser.parse(bytes: Array(#""abcdefgh""#.utf8), limits: limits) == .string("abcdefgh"))
        #expect(throws: KetenpoortError(.invalidJSON, "")) { try JSONParser.parse(bytes: Array(#""abcdefghi""#.utf8), limits: limits) }
        #expect(throws: KetenpoortError(.invalidJSON, "")) { try JSONParser.parse(bytes: Array(#""abcd\nefghi""#.utf8), limits: limits) }
        // Invalid UTF-8 without escapes (the fast path) is refused too.
        #expect(throws: KetenpoortError(.invalidJSON, "")) { try JSONParser.parse(bytes: [0x22, 0xC3, 0x28, 0x22]) }
    }
}
