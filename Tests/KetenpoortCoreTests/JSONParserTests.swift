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
}
