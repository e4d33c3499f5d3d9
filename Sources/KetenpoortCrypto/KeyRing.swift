import Foundation
import KetenpoortCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The master key file: one or more 32-byte keys with ids, exactly one current.
///
/// ```
/// # Ketenpoort master keys — secret: mode 0600 (group read allowed for container secrets).
/// ketenpoort-master-keys v1
/// k2 current 3q2+7w...=
/// k1 previous q83vEj...=
/// ```
/// New pseudonyms and tokens use the current key; previous keys are kept to recognise and
/// re-identify until an operator removes them (retirement).
public enum MasterKeyFile {
    static let header = "ketenpoort-master-keys v1"

    /// Creates a new key file with one random key `k1`, mode 0600 from its creation. Refuses to
    /// overwrite an existing file.
    public static func create(path: String) throws {
        let key = try Crypto.randomBytes(32)
        try writeNew(path: path, text: render([("k1", "current", key)]))
    }

    /// Adds a new random key that becomes current; the old current key becomes previous.
    /// Returns the new key id.
    @discardableResult
    public static func rotate(path: String) throws -> String {
        let ring = try KeyRing.load(path: path)
        let next = "k\((ring.entries.compactMap { Int($0.id.dropFirst()) }.max() ?? 0) + 1)"
        var entries = ring.entries.map { ($0.id, "previous", $0.key) }
        entries.insert((next, "current", try Crypto.randomBytes(32)), at: 0)
        try replace(path: path, text: render(entries))
        return next
    }

    static func render(_ entries: [(String, String, [UInt8])]) -> String {
        var text = "# Ketenpoort master keys — secret. Never commit, log or print this file.\n\(header)\n"
        for (id, state, key) in entries { text += "\(id) \(state) \(Data(key).base64EncodedString())\n" }
        return text
    }

    static func writeNew(path: String, text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { throw KetenpoortError(.invalidInput, "key file `\(path)` already exists: refusing to overwrite it") }
            throw KetenpoortError(.fileUnreadable, "cannot create key file `\(path)`")
        }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
            throw KetenpoortError(.fileUnreadable, "cannot write key file `\(path)`")
        }
    }

    /// Writes a temporary file (0600) and renames it over `path`, keeping the file's owner, group
    /// and group read (0640), so a gateway that reads it as its service user still can.
    static func replace(path: String, text: String) throws {
        let temporary = path + ".new"
        unlink(temporary)
        try writeNew(path: temporary, text: text)
        var old = stat()
        if stat(path, &old) == 0 {
            // Never more than owner read-write and group read, whatever the old mode was.
            _ = chmod(temporary, old.st_mode & 0o640)
            if getuid() == 0 { _ = chown(temporary, old.st_uid, old.st_gid) }
        }
        guard rename(temporary, path) == 0 else { throw KetenpoortError(.fileUnreadable, "cannot replace key file `\(path)`") }
    }
}

/// Where the master key comes from: a path (configuration or flag), a systemd credential
/// (`$CREDENTIALS_DIRECTORY/ketenpoort-master-key`, `LoadCredential=`), or `KETENPOORT_KEYS`.
public enum MasterKeySource {
    public static func resolve(path: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        if let path, !path.isEmpty { return path }
        if let directory = environment["CREDENTIALS_DIRECTORY"] {
            let candidate = directory + "/ketenpoort-master-key"
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
        }
        if let path = environment["KETENPOORT_KEYS"], !path.isEmpty { return path }
        throw KetenpoortError(.configuration, "no master key: set `keys:` in the configuration, KETENPOORT_KEYS, or a `ketenpoort-master-key` credential")
    }
}

/// The loaded master keys and everything derived from them.
///
/// Domain keys are HKDF-SHA256(master, salt "ketenpoort/v1", info "<use>|<domain>"), so a key
/// for one recipient domain says nothing about another. Keys never appear in `description`,
/// errors or logs.
public final class KeyRing: Sendable, CustomStringConvertible {
    struct Entry: Sendable {
        let id: String
        let key: [UInt8]
    }

    let entries: [Entry]
    public let currentKeyID: String
    private let macs = Mutex<[String: HMACSHA256]>([:])
    /// Current-key MACs by domain (the hot path: no key string to build).
    private let currentMACs = Mutex<[String: HMACSHA256]>([:])
    private let derived = Mutex<[String: [UInt8]]>([:])

    public var keyIDs: [String] { entries.map(\.id) }
    public var description: String { "KeyRing(current: \(currentKeyID), keys: \(entries.map(\.id).joined(separator: ", ")))" }

    init(entries: [Entry], current: String) {
        self.entries = entries
        self.currentKeyID = current
    }

    /// For tests and benchmarks: a ring from raw keys (the first is current).
    public convenience init(keys: [(id: String, key: [UInt8])]) throws {
        guard let first = keys.first, keys.allSatisfy({ $0.key.count == 32 }) else {
            throw KetenpoortError(.crypto, "a key ring needs 32-byte keys")
        }
        self.init(entries: keys.map { Entry(id: $0.id, key: $0.key) }, current: first.id)
    }

    /// Loads a key file after checking its permissions.
    public static func load(path: String) throws -> KeyRing {
        try SecretFile.checkPermissions(path: path, what: "key file")
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KetenpoortError(.fileUnreadable, "key file `\(path)` cannot be read")
        }
        var entries: [Entry] = []
        var current: String? = nil
        var sawHeader = false
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line == MasterKeyFile.header { sawHeader = true; continue }
            let parts = line.split(separator: " ").map(String.init)
            guard sawHeader, parts.count == 3, ["current", "previous"].contains(parts[1]),
                let key = Data(base64Encoded: parts[2]).map(Array.init), key.count == 32
            else {
                throw KetenpoortError(.invalidKey, "key file `\(path)` line \(index + 1) is not `ID current|previous BASE64-32-BYTES`")
            }
            // The id is a part of every pseudonym and token (`ps1.<id>.…`): a dot in it would
            // make them unreadable.
            guard !parts[0].isEmpty, parts[0].utf8.count <= 32,
                parts[0].utf8.allSatisfy({ (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 45 || $0 == 95 })
            else {
                throw KetenpoortError(.invalidKey, "key file `\(path)` line \(index + 1): a key id is letters, digits, `-` or `_` (at most 32)")
            }
            guard !entries.contains(where: { $0.id == parts[0] }) else {
                throw KetenpoortError(.invalidKey, "key file `\(path)` line \(index + 1): duplicate key id `\(parts[0])`")
            }
            if parts[1] == "current" {
                guard current == nil else { throw KetenpoortError(.invalidKey, "key file `\(path)` has more than one current key") }
                current = parts[0]
            }
            entries.append(Entry(id: parts[0], key: key))
        }
        guard let current else { throw KetenpoortError(.invalidKey, "key file `\(path)` has no current key") }
        return KeyRing(entries: entries, current: current)
    }

    /// A 32- or 64-byte key for one use and domain, derived from key `keyID`.
    public func derivedKey(use: String, domain: String, keyID: String? = nil, length: Int = 32) throws -> [UInt8] {
        let id = keyID ?? currentKeyID
        let cacheKey = "\(id)|\(use)|\(domain)|\(length)"
        if let cached = derived.withLock({ $0[cacheKey] }) { return cached }
        guard let entry = entries.first(where: { $0.id == id }) else {
            throw KetenpoortError(.crypto, "key `\(id)` is not in the key ring (retired?)")
        }
        let key = try Crypto.hkdfSHA256(key: entry.key, salt: Array("ketenpoort/v1".utf8), info: Array("\(use)|\(domain)".utf8), length: length)
        derived.withLock { $0[cacheKey] = key }
        return key
    }

    func mac(domain: String, keyID: String) throws -> HMACSHA256 {
        if keyID == currentKeyID, let cached = currentMACs.withLock({ $0[domain] }) { return cached }
        let cacheKey = "\(keyID)|\(domain)"
        if let cached = macs.withLock({ $0[cacheKey] }) { return cached }
        let hmac = try HMACSHA256(key: try derivedKey(use: "pseudonym", domain: domain, keyID: keyID))
        macs.withLock { $0[cacheKey] = hmac }
        if keyID == currentKeyID { currentMACs.withLock { $0[domain] = hmac } }
        return hmac
    }
}

/// Keyed pseudonyms: `ps1.<key id>.<base64url(HMAC-SHA256(domain key, value))>`.
///
/// Deterministic within a domain (so a recipient can link its own exchanges about a person),
/// unlinkable across domains (two recipients cannot join on it), and not reversible: a BSN has
/// ~10^9 values, so a plain hash would be reversed in under a second — only a keyed one is safe.
public struct Pseudonymiser: Sendable {
    public let keys: KeyRing

    public init(keys: KeyRing) { self.keys = keys }

    /// The recipient domain of a case table and recipient.
    public static func recipientDomain(caseTable: String, recipient: String) -> String { "recipient:\(caseTable):\(recipient)" }
    /// The gateway's own domain, for the audit log and access reports.
    public static let logDomain = "log"

    public func pseudonym(of value: String, domain: String) throws -> String {
        try pseudonym(of: value, domain: domain, keyID: keys.currentKeyID)
    }

    /// The pseudonym under key `keyID` (finding a person's entries made before a rotation).
    public func pseudonym(of value: String, domain: String, keyID: String) throws -> String {
        let mac = try keys.mac(domain: domain, keyID: keyID)
        var value = value
        return value.withUTF8 { input in
            let prefix = "ps1.\(keyID)."
            // 32 MAC bytes are 43 base64url characters.
            return String(unsafeUninitializedCapacity: prefix.utf8.count + 43) { out in
                var i = 0
                for byte in prefix.utf8 { out[i] = byte; i += 1 }
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
                    mac.authenticate(UnsafeRawBufferPointer(input), into: digest.baseAddress!)
                    i += Base64URL.encode(UnsafeBufferPointer(digest), into: UnsafeMutableBufferPointer(rebasing: out[i...]))
                }
                return i
            }
        }
    }

    public func pseudonym(of bsn: BSN, domain: String) throws -> String {
        try pseudonym(of: bsn.digits, domain: domain)
    }

    /// Whether `pseudonym` was made from `value` in `domain` by any key still in the ring.
    public func recognise(_ pseudonym: String, value: String, domain: String) -> Bool {
        guard let parsed = ParsedPseudonym(pseudonym), parsed.version == "ps1",
            let mac = try? keys.mac(domain: domain, keyID: parsed.keyID)
        else { return false }
        return Crypto.constantTimeEqual(mac.authenticate(Array(value.utf8)), parsed.bytes)
    }
}

/// Reversible tokens: `tk1.<key id>.<base64url(AES-256-SIV(domain key, value; AD = domain))>`.
/// Deterministic per domain; only the gateway, holding the keys, re-identifies — and only when
/// the policy permits it for that partner and purpose (decided by the caller, and logged).
public struct Tokeniser: Sendable {
    public let keys: KeyRing

    public init(keys: KeyRing) { self.keys = keys }

    public func token(of value: String, domain: String) throws -> String {
        let siv = try AESSIV(key: try keys.derivedKey(use: "token", domain: domain, length: 64))
        let sealed = try siv.seal(Array(value.utf8), associatedData: [Array(domain.utf8)])
        return "tk1.\(keys.currentKeyID).\(Base64URL.encode(sealed))"
    }

    public func reidentify(_ token: String, domain: String) throws -> String {
        guard let parsed = ParsedPseudonym(token), parsed.version == "tk1" else {
            throw KetenpoortError(.invalidInput, "not a Ketenpoort token (tk1.<key id>.<base64url>)")
        }
        let siv = try AESSIV(key: try keys.derivedKey(use: "token", domain: domain, keyID: parsed.keyID, length: 64))
        let plain = try siv.open(parsed.bytes, associatedData: [Array(domain.utf8)])
        return String(decoding: plain, as: UTF8.self)
    }
}

struct ParsedPseudonym {
    let version: String
    let keyID: String
    let bytes: [UInt8]

    init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let bytes = Base64URL.decode(String(parts[2])) else { return nil }
        version = String(parts[0])
        keyID = String(parts[1])
        self.bytes = bytes
    }
}

/// base64url without padding (RFC 4648 §5).
public enum Base64URL {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBufferPointer { input in
            String(unsafeUninitializedCapacity: (input.count * 4 + 2) / 3) { out in encode(input, into: out) }
        }
    }

    /// Encodes into `out` (room for ⌈4n/3⌉ bytes); returns the count written.
    static func encode(_ input: UnsafeBufferPointer<UInt8>, into out: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var o = 0
        var i = 0
        while i + 3 <= input.count {
            let n = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
            out[o] = alphabet[Int(n >> 18 & 63)]
            out[o + 1] = alphabet[Int(n >> 12 & 63)]
            out[o + 2] = alphabet[Int(n >> 6 & 63)]
            out[o + 3] = alphabet[Int(n & 63)]
            o += 4
            i += 3
        }
        let rest = input.count - i
        if rest == 1 {
            let n = UInt32(input[i]) << 16
            out[o] = alphabet[Int(n >> 18 & 63)]
            out[o + 1] = alphabet[Int(n >> 12 & 63)]
            o += 2
        } else if rest == 2 {
            let n = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8
            out[o] = alphabet[Int(n >> 18 & 63)]
            out[o + 1] = alphabet[Int(n >> 12 & 63)]
            out[o + 2] = alphabet[Int(n >> 6 & 63)]
            o += 3
        }
        return o
    }

    public static func decode(_ text: String) -> [UInt8]? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s).map(Array.init)
    }
}
