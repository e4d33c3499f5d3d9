import Foundation
import KetenpoortCore
import Testing

@testable import KetenpoortCrypto

func hex(_ text: String) -> [UInt8] {
    let clean = text.filter { !$0.isWhitespace }
    var out: [UInt8] = []
    var index = clean.startIndex
    while index < clean.endIndex {
        let next = clean.index(index, offsetBy: 2)
        out.append(UInt8(clean[index..<next], radix: 16)!)
        index = next
    }
    return out
}

func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

@Suite("RFC test vectors through the project's API")
struct VectorTests {
    // RFC 4231, "Identifiers and Test Vectors for HMAC-SHA-224, HMAC-SHA-256, ...", section 4.
    @Test(
        "HMAC-SHA256 (RFC 4231 test cases 1, 2, 3, 4, 6, 7)",
        arguments: [
            ([UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (Array(1...25), [UInt8](repeating: 0xcd, count: 50), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            ([UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            ([UInt8](repeating: 0xaa, count: 131),
             Array("This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".utf8),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ])
    func hmac(key: [UInt8], data: [UInt8], expected: String) throws {
        #expect(hexString(try HMACSHA256(key: key).authenticate(data)) == expected)
    }

    // RFC 5869, "HMAC-based Extract-and-Expand Key Derivation Function (HKDF)", appendix A.1–A.3.
    @Test("HKDF-SHA256 (RFC 5869 test cases 1, 2, 3)")
    func hkdf() throws {
        let ikm1 = [UInt8](repeating: 0x0b, count: 22)
        #expect(
            hexString(try Crypto.hkdfSHA256(key: ikm1, salt: Array(0x00...0x0c), info: Array(0xf0...0xf9), length: 42))
                == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        #expect(
            hexString(try Crypto.hkdfSHA256(key: Array(0x00...0x4f), salt: Array(0x60...0xaf), info: Array(0xb0...0xff), length: 82))
                == "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87")
        #expect(
            hexString(try Crypto.hkdfSHA256(key: ikm1, salt: [], info: [], length: 42))
                == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    }

    // RFC 5297, "Synthetic Initialization Vector (SIV) Authenticated Encryption Using AES",
    // appendix A.1 (deterministic authenticated encryption; a 256-bit key = AES-128-SIV).
    @Test("AES-SIV (RFC 5297 A.1): seal, open, and tamper detection")
    func aesSIV() throws {
        let siv = try AESSIV(key: hex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff"))
        let ad = hex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627")
        let plaintext = hex("11223344 55667788 99aabbcc ddee")
        let sealed = try siv.seal(plaintext, associatedData: [ad])
        #expect(hexString(sealed) == "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c")
        #expect(try siv.open(sealed, associatedData: [ad]) == plaintext)
        var flipped = sealed
        flipped[20] ^= 0x01
        #expect(throws: KetenpoortError.self) { try siv.open(flipped, associatedData: [ad]) }
        #expect(throws: KetenpoortError.self) { try siv.open(sealed, associatedData: [hex("00")]) }
    }

    @Test("AES-256-GCM round trip; altered bytes or AAD are detected")
    func aesGCM() throws {
        let gcm = try AESGCM(key: try Crypto.randomBytes(32))
        let sealed = try gcm.seal(Array("payload".utf8), associatedData: Array("exchange-1".utf8))
        #expect(try gcm.open(sealed, associatedData: Array("exchange-1".utf8)) == Array("payload".utf8))
        var altered = sealed
        altered[14] ^= 0x80
        #expect(throws: KetenpoortError.self) { try gcm.open(altered, associatedData: Array("exchange-1".utf8)) }
        #expect(throws: KetenpoortError.self) { try gcm.open(sealed, associatedData: Array("exchange-2".utf8)) }
        // A random nonce: the same plaintext twice gives different ciphertexts.
        let once = try gcm.seal(Array("payload".utf8))
        let twice = try gcm.seal(Array("payload".utf8))
        #expect(once != twice)
    }

    @Test("AES-256-GCM opens the published test vector (GCM specification, McGrew and Viega, test case 15)")
    func aesGCMKnownAnswer() throws {
        let gcm = try AESGCM(key: hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"))
        let plaintext = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
        let sealed = hex("cafebabefacedbaddecaf888")
            + hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad")
            + hex("b094dac5d93471bdec1a502270e3cc6c")
        #expect(try gcm.open(sealed) == plaintext)
    }

    @Test("AES-256-GCM sealed after a prefix: prefix kept, nonce ‖ ciphertext ‖ tag after it, any length")
    func aesGCMPrefix() throws {
        let gcm = try AESGCM(key: try Crypto.randomBytes(32))
        let prefix = Array("k1".utf8) + [0]
        for length in [0, 1, 16, 2_000] {
            let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 7) }
            let sealed = try gcm.seal(plaintext, associatedData: Array("exchange-1".utf8), after: prefix)
            #expect(sealed.count == prefix.count + 12 + length + 16)
            #expect(Array(sealed.prefix(prefix.count)) == prefix)
            #expect(try gcm.open(Array(sealed.dropFirst(prefix.count)), associatedData: Array("exchange-1".utf8)) == plaintext)
        }
    }
}

@Suite("Pseudonyms, tokens and keys")
struct PseudonymTests {
    let keys = try! KeyRing(keys: [("k1", Array(repeating: 7, count: 32))])

    /// The test range 999990000–999999999 holds only 909 numbers that pass the 11-check, and
    /// tests may use no other valid BSN (any other may be a real person's). So: every valid
    /// test-range BSN, plus nine-digit numbers that fail the 11-check (nobody's BSN) to reach
    /// 10,000 inputs of the same shape.
    static let inputs: [String] = {
        let valid = BSN.testNumbers(count: 10_000).map(\.digits)
        var invalid: [String] = []
        var n = 100_000_000
        while valid.count + invalid.count < 10_000 {
            let text = String(n)
            if !BSN.isValid(text) { invalid.append(text) }
            n += 7_919
        }
        return valid + invalid
    }()

    @Test("deterministic within a domain, distinct across domains, for 10,000 inputs (all 909 valid test-range BSNs)")
    func determinismAndUnlinkability() throws {
        let p = Pseudonymiser(keys: keys)
        let valid = BSN.testNumbers(count: 10_000)
        #expect(valid.count == 909)
        let allInTestRange = valid.allSatisfy { $0.isTestNumber }
        #expect(allInTestRange)
        #expect(Set(Self.inputs).count == 10_000)
        let a = Pseudonymiser.recipientDomain(caseTable: "mda-zhz", recipient: "veilig-thuis-zhz")
        let b = Pseudonymiser.recipientDomain(caseTable: "mda-zhz", recipient: "raad-kinderbescherming")
        var inA = Set<String>()
        var inB = Set<String>()
        for value in Self.inputs {
            let first = try p.pseudonym(of: value, domain: a)
            #expect(first == (try p.pseudonym(of: value, domain: a)))
            inA.insert(first)
            inB.insert(try p.pseudonym(of: value, domain: b))
        }
        #expect(inA.count == 10_000)
        #expect(inB.count == 10_000)
        #expect(inA.isDisjoint(with: inB))
    }

    @Test("the text form carries the version and key id, and parses back")
    func textForm() throws {
        let bsn = try BSN("999990019")
        let text = try Pseudonymiser(keys: keys).pseudonym(of: bsn, domain: "log")
        #expect(text.hasPrefix("ps1.k1."))
        let parsed = try #require(ParsedPseudonym(text))
        #expect(parsed.bytes.count == 32)
        #expect("ps1.\(parsed.keyID).\(Base64URL.encode(parsed.bytes))" == text)
        #expect(!text.contains("999990019"))
    }

    @Test("rotation: old pseudonyms are still recognised; new ones carry the new key id")
    func rotation() throws {
        let dir = NSTemporaryDirectory() + "keys-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + "/master.key"
        try MasterKeyFile.create(path: file)
        let before = Pseudonymiser(keys: try KeyRing.load(path: file))
        let old = try before.pseudonym(of: "999990019", domain: "log")
        #expect(old.hasPrefix("ps1.k1."))
        let oldToken = try Tokeniser(keys: try KeyRing.load(path: file)).token(of: "999990019", domain: "recipient:lokaal-dordrecht:ggz-zhz")
        #expect(try MasterKeyFile.rotate(path: file) == "k2")
        let after = Pseudonymiser(keys: try KeyRing.load(path: file))
        let new = try after.pseudonym(of: "999990019", domain: "log")
        #expect(new.hasPrefix("ps1.k2."))
        #expect(new != old)
        #expect(after.recognise(old, value: "999990019", domain: "log"))
        #expect(after.recognise(new, value: "999990019", domain: "log"))
        #expect(!after.recognise(old, value: "999990020", domain: "log"))
        #expect(!after.recognise(old, value: "999990019", domain: "recipient:mda-zhz:veilig-thuis-zhz"))
        // Tokens made with the old key still re-identify.
        #expect(try Tokeniser(keys: try KeyRing.load(path: file)).reidentify(oldToken, domain: "recipient:lokaal-dordrecht:ggz-zhz") == "999990019")
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test("a key file with loose permissions is refused; group read is allowed", arguments: [0o644, 0o620, 0o606, 0o604])
    func loosePermissions(mode: Int) throws {
        let file = NSTemporaryDirectory() + "loose-\(UUID().uuidString.prefix(6)).key"
        try MasterKeyFile.create(path: file)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: file)
        #expect(throws: KetenpoortError(.insecureFilePermissions, "")) { try KeyRing.load(path: file) }
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: file)
        #expect(try KeyRing.load(path: file).currentKeyID == "k1")
    }

    @Test("key ids are letters, digits, - or _: an id with a dot (it would break every pseudonym and token) is refused")
    func keyIDs() throws {
        let file = NSTemporaryDirectory() + "ids-\(UUID().uuidString.prefix(6)).key"
        try MasterKeyFile.create(path: file)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        for id in ["2025.1", "k 1", ""] {
            try text.replacingOccurrences(of: "k1 current", with: "\(id) current").write(toFile: file, atomically: false, encoding: .utf8)
            #expect(throws: KetenpoortError(.invalidKey, ""), "`\(id)`") { try KeyRing.load(path: file) }
        }
        try text.replacingOccurrences(of: "k1 current", with: "k2025_1 current").write(toFile: file, atomically: false, encoding: .utf8)
        #expect(try KeyRing.load(path: file).currentKeyID == "k2025_1")
    }

    @Test("keys rotate keeps a group-readable key file group-readable (a gateway reading it as its service user still can)")
    func rotateKeepsGroupRead() throws {
        let file = NSTemporaryDirectory() + "group-\(UUID().uuidString.prefix(6)).key"
        try MasterKeyFile.create(path: file)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: file)
        _ = try MasterKeyFile.rotate(path: file)
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o640)
        #expect(try KeyRing.load(path: file).currentKeyID == "k2")
    }

    @Test("keys init refuses to overwrite an existing file")
    func noOverwrite() throws {
        let file = NSTemporaryDirectory() + "exists-\(UUID().uuidString.prefix(6)).key"
        try MasterKeyFile.create(path: file)
        #expect(throws: KetenpoortError.self) { try MasterKeyFile.create(path: file) }
    }

    @Test("a wrong key or domain is detected: the token does not decrypt")
    func wrongKey() throws {
        let token = try Tokeniser(keys: keys).token(of: "999990019", domain: "recipient:a:b")
        #expect(token.hasPrefix("tk1.k1."))
        #expect(try Tokeniser(keys: keys).token(of: "999990019", domain: "recipient:a:b") == token)
        #expect(try Tokeniser(keys: keys).reidentify(token, domain: "recipient:a:b") == "999990019")
        let other = try KeyRing(keys: [("k1", Array(repeating: 8, count: 32))])
        #expect(throws: KetenpoortError.self) { try Tokeniser(keys: other).reidentify(token, domain: "recipient:a:b") }
        #expect(throws: KetenpoortError.self) { try Tokeniser(keys: keys).reidentify(token, domain: "recipient:a:c") }
    }

    @Test("keys never appear in descriptions or errors")
    func noKeyMaterial() throws {
        let secret = Array(repeating: UInt8(0x5a), count: 32)
        let ring = try KeyRing(keys: [("k9", secret)])
        let base64 = Data(secret).base64EncodedString()
        #expect(!String(describing: ring).contains(base64))
        #expect(!"\(ring)".contains("5a5a5a"))
        do {
            _ = try ring.derivedKey(use: "pseudonym", domain: "log", keyID: "k0")
        } catch {
            #expect(!"\(error)".contains(base64))
        }
    }
}

@Suite("Generalisation and the one-pass applier")
struct ApplierTests {
    let applier = ObligationApplier(keys: try! KeyRing(keys: [("k1", Array(repeating: 3, count: 32))]))

    @Test("generalisations; malformed input gives nothing")
    func generalise() {
        #expect(Generalise.year("2015-04-01") == "2015")
        #expect(Generalise.yearMonth("2015-04-01") == "2015-04")
        #expect(Generalise.postcode4("3311 AB") == "3311")
        #expect(Generalise.postcode4("3311ab") == "3311")
        #expect(Generalise.postcode4("0311 AB") == nil)
        #expect(Generalise.postcode4(" 3311  AB ") == "3311")
        for malformed in ["3311 A", "3311 ABC", "33x1 AB", "3311 1B", "3311 ÄB", "", "331 1AB2"] {
            #expect(Generalise.postcode4(malformed) == nil, "\(malformed)")
        }
        #expect(Generalise.ageBand(birthDate: "2015-04-01", on: "2026-03-31") == "4-11")
        #expect(Generalise.ageBand(birthDate: "2014-04-01", on: "2026-04-01") == "12-15")
        #expect(Generalise.ageBand(birthDate: "1950-01-01", on: "2026-01-01") == "65+")
        #expect(Generalise.year("01-04-2015") == nil)
    }

    @Test("one pass: released fields transformed, the rest withheld; a kept BSN arrives intact")
    func applies() throws {
        let data = try JSONParser.parse(#"""
            {"identity": {"bsn": "999990019", "name": "Test Kind", "birthDate": "2015-04-01", "postcode": "3311 AB"},
             "health": {"diagnosis": "x", "summary": "y"}}
            """#)
        let domain = "recipient:mda-zhz:veilig-thuis-zhz"
        let out = try applier.apply(
            data: data,
            released: ["identity.bsn": .keep, "identity.name": .pseudonymise(domain: "recipient"), "identity.birthDate": .generalise(.year),
                       "identity.postcode": .generalise(.postcode4), "health.summary": .keep],
            domain: domain, referenceDate: "2026-05-01")
        #expect(out.released == ["health.summary", "identity.birthDate", "identity.bsn", "identity.name", "identity.postcode"])
        #expect(out.withheld == ["health.diagnosis"])
        #expect(out.data["identity"]?["bsn"]?.stringValue == "999990019")
        #expect(out.data["identity"]?["birthDate"]?.stringValue == "2015")
        #expect(out.data["identity"]?["postcode"]?.stringValue == "3311")
        #expect(out.data["identity"]?["name"]?.stringValue?.hasPrefix("ps1.k1.") == true)
        #expect(out.data["health"]?["diagnosis"] == nil)
        // Pseudonymised BSN for another route: not the BSN, stable.
        let other = try applier.apply(data: data, released: ["identity.bsn": .pseudonymise(domain: "recipient")], domain: "recipient:t:x", referenceDate: "2026-05-01")
        #expect(other.data["identity"]?["bsn"]?.stringValue != "999990019")
        #expect(!other.data.serialized().contains("999990019"))
    }

    @Test("an invalid BSN is refused with invalid_bsn, the value never echoed")
    func invalidBSN() throws {
        let data = try JSONParser.parse(#"{"identity": {"bsn": "123456789"}}"#)
        do {
            _ = try applier.apply(data: data, released: ["identity.bsn": .keep], domain: "log", referenceDate: "2026-05-01")
            Issue.record("an invalid BSN was accepted")
        } catch let error as KetenpoortError {
            #expect(error.code == .invalidBSN)
            #expect(!error.message.contains("123456789"))
        }
    }

    @Test("the pseudonym command: one pseudonym a line, an invalid line named by number only")
    func command() throws {
        let ring = try KeyRing(keys: [("k1", Array(repeating: 1, count: 32))])
        let out = try PseudonymCommand.run(lines: ["999990019", "999990020"], keys: ring, domain: "log")
        #expect(out.count == 2)
        // A blank line would shift every later pseudonym against its BSN: refused, by number.
        #expect(throws: KetenpoortError.self) { try PseudonymCommand.run(lines: ["999990019", "", "999990020"], keys: ring, domain: "log") }
        do {
            _ = try PseudonymCommand.run(lines: ["999990019", "999990018"], keys: ring, domain: "log")
            Issue.record("an invalid BSN was accepted")
        } catch let error as KetenpoortError {
            #expect(error.message.contains("line 2"))
            #expect(!error.message.contains("999990018"))
        }
    }
}

@Suite("BSN and OIN")
struct IdentifierTests {
    @Test("the 11-check", arguments: [("999990019", true), ("999990020", true), ("999990018", false), ("12345678", false), ("99999001a", false), (String(repeating: "0", count: 9), false)])
    func elevenCheck(text: String, valid: Bool) {
        #expect(BSN.isValid(text) == valid)
    }

    @Test("a BSN never prints itself")
    func redacted() throws {
        #expect(!"\(try BSN("999990019"))".contains("999990019"))
    }

    @Test("OIN is 20 digits")
    func oin() {
        #expect(OIN.isValid("00000009900000000101"))
        #expect(!OIN.isValid("0000000990000000010"))
    }
}
