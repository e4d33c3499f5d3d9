import Foundation
import KetenpoortCore
import KetenpoortCrypto

/// A signed tree head in the C2SP checkpoint format (a signed note):
///
/// ```
/// <origin>
/// <tree size>
/// <base64 root hash>
///
/// — <key name> <base64(4-byte key id ‖ 64-byte Ed25519 signature)>
/// ```
/// The key id is the first 4 bytes of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key), as C2SP's
/// signed-note specification defines for Ed25519. Partners keep copies; a later checkpoint must
/// be consistent with every earlier one (an RFC 9162 consistency proof).
public struct Checkpoint: Sendable, Equatable {
    public let origin: String
    public let treeSize: Int64
    public let rootHash: [UInt8]

    public init(origin: String, treeSize: Int64, rootHash: [UInt8]) {
        self.origin = origin
        self.treeSize = treeSize
        self.rootHash = rootHash
    }

    /// The signed body: three lines, each ending in a newline.
    public var body: String { "\(origin)\n\(treeSize)\n\(Data(rootHash).base64EncodedString())\n" }

    public static func keyID(name: String, publicKey: Ed25519PublicKey) -> [UInt8] {
        Array(Crypto.sha256(Array(name.utf8) + [0x0a, 0x01] + publicKey.raw).prefix(4))
    }

    /// The note: body, blank line, one signature line.
    public func signedNote(keyName: String, key: Ed25519PrivateKey) throws -> String {
        let signature = try key.sign(Array(body.utf8))
        let blob = Checkpoint.keyID(name: keyName, publicKey: key.publicKey) + signature
        return body + "\n— \(keyName) \(Data(blob).base64EncodedString())\n"
    }

    /// Whether `note` signs exactly `checkpoint`'s body.
    public static func sameBody(_ note: String, as checkpoint: Checkpoint) -> Bool {
        note.hasPrefix(checkpoint.body + "\n")
    }

    /// Parses a note and checks its signature by `keyName` with `publicKey`. A note that is not
    /// a checkpoint is `invalid_input`; one whose signature fails is `signature_invalid`.
    public static func verify(note: String, keyName: String, publicKey: Ed25519PublicKey) throws -> Checkpoint {
        let parts = note.components(separatedBy: "\n\n")
        guard parts.count >= 2 else { throw KetenpoortError(.invalidInput, "not a signed note: no blank line before the signatures") }
        let body = parts[0] + "\n"
        let lines = parts[0].split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 3, let size = Int64(lines[1]), let root = Data(base64Encoded: lines[2]).map(Array.init), root.count == 32 else {
            throw KetenpoortError(.invalidInput, "not a checkpoint: origin, tree size and root hash expected")
        }
        let wanted = keyID(name: keyName, publicKey: publicKey)
        for line in parts[1...].joined(separator: "\n\n").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 3, fields[0] == "—", String(fields[1]) == keyName,
                let blob = Data(base64Encoded: String(fields[2])).map(Array.init), blob.count == 68, Array(blob.prefix(4)) == wanted
            else { continue }
            if publicKey.isValidSignature(Array(blob.dropFirst(4)), for: Array(body.utf8)) {
                return Checkpoint(origin: lines[0], treeSize: size, rootHash: root)
            }
            throw KetenpoortError(.signatureInvalid, "the checkpoint's signature by `\(keyName)` does not verify")
        }
        throw KetenpoortError(.signatureInvalid, "the checkpoint carries no signature by `\(keyName)`")
    }
}

extension KetenpoortError.Code {
    /// A well-formed signed note or proof whose signature does not verify: a failed check (the
    /// command line exits 1), not bad input.
    public static let signatureInvalid = KetenpoortError.Code("signature_invalid")
}
