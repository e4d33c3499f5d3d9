import Foundation
import KetenpoortCore
import KetenpoortCrypto

/// A checkpoint verifier key in the C2SP signed-note form `<name>+<hex key id>+<base64(0x01 ‖
/// Ed25519 public key)>`: what partners keep to check tree heads and proofs without any
/// secret.
public struct LogVerifierKey: Sendable {
    public let name: String
    public let publicKey: Ed25519PublicKey

    public init(name: String, publicKey: Ed25519PublicKey) {
        self.name = name
        self.publicKey = publicKey
    }

    public var keyID: [UInt8] { Checkpoint.keyID(name: name, publicKey: publicKey) }

    public var text: String {
        "\(name)+\(Hex.encode(keyID))+\(Data([0x01] + publicKey.raw).base64EncodedString())"
    }

    /// Parses one verifier key line.
    public init(parsing line: String) throws {
        let parts = line.trimmingCharacters(in: .whitespaces).split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        // base64 may itself hold `+`: the name and the key id are the first two fields.
        guard parts.count >= 3, !parts[0].isEmpty, let id = Hex.decode(parts[1]), id.count == 4,
            let blob = Data(base64Encoded: parts[2...].joined(separator: "+")).map(Array.init), blob.count == 33, blob[0] == 0x01
        else {
            throw KetenpoortError(.invalidInput, "not a verifier key: expected `<name>+<8 hex digits>+<base64 of 0x01 and a 32-byte Ed25519 key>`")
        }
        let key = try Ed25519PublicKey(raw: Array(blob.dropFirst()))
        guard Checkpoint.keyID(name: parts[0], publicKey: key) == id else {
            throw KetenpoortError(.invalidInput, "the verifier key's id does not match its name and key")
        }
        self.init(name: parts[0], publicKey: key)
    }

    /// Reads a file of verifier keys, one a line (`#` comments allowed).
    public static func load(path: String) throws -> [LogVerifierKey] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KetenpoortError(.fileUnreadable, "cannot read verifier key file `\(path)`")
        }
        var keys: [LogVerifierKey] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            do {
                keys.append(try LogVerifierKey(parsing: trimmed))
            } catch let error as KetenpoortError {
                throw KetenpoortError(.invalidInput, "\(path):\(index + 1): \(error.message)")
            }
        }
        guard !keys.isEmpty else { throw KetenpoortError(.invalidInput, "\(path): no verifier key in the file") }
        return keys
    }
}

extension Checkpoint {
    /// Parses a note and checks it carries a valid signature by one of `keys`.
    public static func verify(note: String, keys: [LogVerifierKey]) throws -> Checkpoint {
        var last: KetenpoortError?
        for key in keys {
            do {
                return try verify(note: note, keyName: key.name, publicKey: key.publicKey)
            } catch let error as KetenpoortError {
                // A malformed note stays the answer over "no signature by this key".
                if last?.code != .invalidInput { last = error }
            }
        }
        throw last ?? KetenpoortError(.invalidInput, "no verifier key given")
    }
}

/// The log's keys, all derived from the master key ring (HKDF, one use each): the Ed25519
/// checkpoint key of each key id, and the AES-256-GCM key that seals free text.
public struct LogKeys: Sendable {
    public let keys: KeyRing
    public let origin: String
    public static let defaultOrigin = "ketenpoort/audit-log"

    public init(keys: KeyRing, origin: String = LogKeys.defaultOrigin) throws {
        guard !origin.isEmpty, !origin.contains(where: { $0 == " " || $0 == "+" || $0 == "\n" }) else {
            throw KetenpoortError(.configuration, "the log origin must be non-empty without spaces or `+` (got `\(origin)`)")
        }
        self.keys = keys
        self.origin = origin
    }

    func signingKey(keyID: String) throws -> Ed25519PrivateKey {
        try Ed25519PrivateKey(seed: try keys.derivedKey(use: "log-checkpoint", domain: Pseudonymiser.logDomain, keyID: keyID))
    }

    /// Signs with the current key.
    public var signer: CheckpointSigner {
        get throws { CheckpointSigner(origin: origin, key: try signingKey(keyID: keys.currentKeyID)) }
    }

    /// The public keys of every key in the ring (old checkpoints stay verifiable after rotation).
    public var verifierKeys: [LogVerifierKey] {
        get throws { try keys.keyIDs.map { LogVerifierKey(name: origin, publicKey: try signingKey(keyID: $0).publicKey) } }
    }

    /// Seals free text: `<key id>\0` ‖ AES-256-GCM(nonce ‖ ciphertext ‖ tag); the entry keeps
    /// SHA-256 of the sealed bytes, so erasing the text later leaves the chain intact.
    public func seal(_ text: String) throws -> [UInt8] {
        let id = keys.currentKeyID
        let gcm = try AESGCM(key: try keys.derivedKey(use: "log-text", domain: Pseudonymiser.logDomain, keyID: id))
        return Array(id.utf8) + [0] + (try gcm.seal(Array(text.utf8), associatedData: Array("ketenpoort-log-text".utf8)))
    }

    public func open(_ sealed: [UInt8]) throws -> String {
        guard let zero = sealed.firstIndex(of: 0) else { throw KetenpoortError(.crypto, "sealed log text without a key id") }
        let id = String(decoding: sealed[..<zero], as: UTF8.self)
        let gcm = try AESGCM(key: try keys.derivedKey(use: "log-text", domain: Pseudonymiser.logDomain, keyID: id))
        let plain = try gcm.open(Array(sealed[(zero + 1)...]), associatedData: Array("ketenpoort-log-text".utf8))
        return String(decoding: plain, as: UTF8.self)
    }

    /// The log-domain pseudonyms of a value under every key in the ring.
    public func subjectPseudonyms(_ bsn: BSN) throws -> [String] {
        let pseudonymiser = Pseudonymiser(keys: keys)
        return try keys.keyIDs.map { try pseudonymiser.pseudonym(of: bsn.digits, domain: Pseudonymiser.logDomain, keyID: $0) }
    }
}
