import COpenSSL
import KetenpoortCore
import Synchronization

/// Cryptographic primitives over OpenSSL 3's EVP APIs. Errors never carry key material.
public enum Crypto {
    static func failure(_ what: String) -> KetenpoortError {
        var code = ERR_get_error()
        var detail = ""
        if code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            detail = ": " + String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            while code != 0 { code = ERR_get_error() }
        }
        return KetenpoortError(.crypto, "\(what) failed\(detail)")
    }

    /// `count` random bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard RAND_bytes(&bytes, Int32(count)) == 1 else { throw failure("random generation") }
        return bytes
    }

    /// SHA-256 and AES-256-GCM fetched from the provider once: `EVP_sha256()` and
    /// `EVP_aes_256_gcm()` make OpenSSL 3 look the algorithm up (under a lock) on every use.
    nonisolated(unsafe) static let sha256Digest: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)
    nonisolated(unsafe) static let aes256GCM: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil)

    /// SHA-256.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        _ = EVP_Digest(data, data.count, &out, &length, sha256Digest ?? EVP_sha256(), nil)
        return out
    }

    /// HKDF-SHA256 (RFC 5869).
    public static func hkdfSHA256(key: [UInt8], salt: [UInt8], info: [UInt8], length: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        ERR_clear_error()
        guard let kdf = EVP_KDF_fetch(nil, "HKDF", nil) else { throw failure("HKDF fetch") }
        defer { EVP_KDF_free(kdf) }
        guard kp_hkdf_sha256(kdf, key, key.count, salt, salt.count, info, info.count, &out, length) == 1 else {
            throw failure("HKDF")
        }
        return out
    }

    /// Compares in time independent of where the inputs differ.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return CRYPTO_memcmp(a, b, a.count) == 0
    }
}

/// An HMAC-SHA256 key with prepared OpenSSL contexts. A call takes a context from a small pool,
/// re-initialises it with the same key (`EVP_MAC_init` with a NULL key keeps the key), and
/// returns it: no allocation per MAC, and one key serves many threads.
public final class HMACSHA256: @unchecked Sendable {
    // The template is initialised once and only duplicated; pooled contexts are used by one
    // caller at a time (taken from and returned to `pool` under its lock).
    private let template: OpaquePointer
    private let pool = Mutex<[ContextReference]>([])
    // Fetched once; an EVP_MAC is immutable and safe to share.
    nonisolated(unsafe) private static let mac: OpaquePointer? = EVP_MAC_fetch(nil, "HMAC", nil)

    private struct ContextReference: @unchecked Sendable { let pointer: OpaquePointer }

    public init(key: [UInt8]) throws {
        ERR_clear_error()
        guard let mac = HMACSHA256.mac, let ctx = kp_hmac_sha256_new(mac, key, key.count) else {
            throw Crypto.failure("HMAC-SHA256 key setup")
        }
        template = ctx
    }

    deinit {
        EVP_MAC_CTX_free(template)
        pool.withLock { contexts in
            for c in contexts { EVP_MAC_CTX_free(c.pointer) }
            contexts.removeAll()
        }
    }

    /// Writes the 32-byte MAC of `data` into `out`.
    public func authenticate(_ data: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>) {
        let ctx: OpaquePointer
        if let pooled = pool.withLock({ $0.popLast() }) {
            ctx = pooled.pointer
            _ = EVP_MAC_init(ctx, nil, 0, nil)
        } else {
            guard let fresh = EVP_MAC_CTX_dup(template) else { return }
            ctx = fresh
        }
        var length = 0
        _ = EVP_MAC_update(ctx, data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count)
        _ = EVP_MAC_final(ctx, out, &length, 32)
        pool.withLock { contexts in
            if contexts.count < 64 { contexts.append(ContextReference(pointer: ctx)) } else { EVP_MAC_CTX_free(ctx) }
        }
    }

    /// The 32-byte MAC of `data`.
    public func authenticate(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 32) { buffer, count in
            buffer.initialize(repeating: 0)
            authenticate(data, into: buffer.baseAddress!)
            count = 32
        }
    }

    public func authenticate(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { authenticate($0) }
    }
}

/// Deterministic authenticated encryption with AES-SIV (RFC 5297) through OpenSSL's
/// `AES-128-SIV` / `AES-256-SIV` (32- or 64-byte keys). Output: the 16-byte synthetic IV, then
/// the ciphertext.
public struct AESSIV: Sendable {
    let key: [UInt8]
    let cipherName: String

    public init(key: [UInt8]) throws {
        switch key.count {
        case 32: cipherName = "AES-128-SIV"
        case 48: cipherName = "AES-192-SIV"
        case 64: cipherName = "AES-256-SIV"
        default: throw KetenpoortError(.crypto, "an AES-SIV key is 32, 48 or 64 bytes")
        }
        self.key = key
    }

    public func seal(_ plaintext: [UInt8], associatedData: [[UInt8]]) throws -> [UInt8] {
        ERR_clear_error()
        guard let cipher = EVP_CIPHER_fetch(nil, cipherName, nil) else { throw Crypto.failure("\(cipherName) fetch") }
        defer { EVP_CIPHER_free(cipher) }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Crypto.failure("cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        guard EVP_EncryptInit_ex2(ctx, cipher, key, nil, nil) == 1 else { throw Crypto.failure("AES-SIV init") }
        var outLength: Int32 = 0
        for ad in associatedData {
            guard EVP_EncryptUpdate(ctx, nil, &outLength, ad, Int32(ad.count)) == 1 else { throw Crypto.failure("AES-SIV associated data") }
        }
        var ciphertext = [UInt8](repeating: 0, count: plaintext.count + 16)
        guard EVP_EncryptUpdate(ctx, &ciphertext, &outLength, plaintext, Int32(plaintext.count)) == 1 else { throw Crypto.failure("AES-SIV encrypt") }
        var finalLength: Int32 = 0
        guard ciphertext.withUnsafeMutableBufferPointer({ EVP_EncryptFinal_ex(ctx, $0.baseAddress! + Int(outLength), &finalLength) }) == 1 else {
            throw Crypto.failure("AES-SIV final")
        }
        var tag = [UInt8](repeating: 0, count: 16)
        guard EVP_CIPHER_CTX_ctrl(ctx, kp_EVP_CTRL_AEAD_GET_TAG(), 16, &tag) == 1 else { throw Crypto.failure("AES-SIV tag") }
        return tag + ciphertext.prefix(Int(outLength + finalLength))
    }

    /// Decrypts and authenticates; throws if the key, the associated data or the bytes are wrong.
    public func open(_ sealed: [UInt8], associatedData: [[UInt8]]) throws -> [UInt8] {
        guard sealed.count >= 16 else { throw KetenpoortError(.crypto, "AES-SIV input is too short") }
        ERR_clear_error()
        guard let cipher = EVP_CIPHER_fetch(nil, cipherName, nil) else { throw Crypto.failure("\(cipherName) fetch") }
        defer { EVP_CIPHER_free(cipher) }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Crypto.failure("cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        guard EVP_DecryptInit_ex2(ctx, cipher, key, nil, nil) == 1 else { throw Crypto.failure("AES-SIV init") }
        var tag = Array(sealed.prefix(16))
        guard EVP_CIPHER_CTX_ctrl(ctx, kp_EVP_CTRL_AEAD_SET_TAG(), 16, &tag) == 1 else { throw Crypto.failure("AES-SIV tag") }
        var outLength: Int32 = 0
        for ad in associatedData {
            guard EVP_DecryptUpdate(ctx, nil, &outLength, ad, Int32(ad.count)) == 1 else { throw Crypto.failure("AES-SIV associated data") }
        }
        let ciphertext = Array(sealed.dropFirst(16))
        var plaintext = [UInt8](repeating: 0, count: ciphertext.count + 16)
        guard EVP_DecryptUpdate(ctx, &plaintext, &outLength, ciphertext, Int32(ciphertext.count)) == 1 else {
            ERR_clear_error()
            throw KetenpoortError(.crypto, "the token does not authenticate (wrong key, domain or bytes)")
        }
        var finalLength: Int32 = 0
        guard plaintext.withUnsafeMutableBufferPointer({ EVP_DecryptFinal_ex(ctx, $0.baseAddress! + Int(outLength), &finalLength) }) == 1 else {
            ERR_clear_error()
            throw KetenpoortError(.crypto, "the token does not authenticate (wrong key, domain or bytes)")
        }
        return Array(plaintext.prefix(Int(outLength + finalLength)))
    }
}

/// AES-256-GCM with a random 12-byte nonce: output nonce ‖ ciphertext ‖ 16-byte tag.
public struct AESGCM: Sendable {
    let key: [UInt8]

    public init(key: [UInt8]) throws {
        guard key.count == 32 else { throw KetenpoortError(.crypto, "an AES-256-GCM key is 32 bytes") }
        self.key = key
    }

    public func seal(_ plaintext: [UInt8], associatedData: [UInt8] = []) throws -> [UInt8] {
        try seal(plaintext, associatedData: associatedData, after: [])
    }

    /// `prefix ‖ nonce ‖ ciphertext ‖ tag`, written into one buffer (the prefix is not
    /// authenticated unless it is also in `associatedData`).
    public func seal(_ plaintext: [UInt8], associatedData: [UInt8] = [], after prefix: [UInt8]) throws -> [UInt8] {
        ERR_clear_error()
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Crypto.failure("cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let start = prefix.count
        var out = [UInt8](repeating: 0, count: start + 12 + plaintext.count + 16)
        let sealedLength = try out.withUnsafeMutableBufferPointer { buffer -> Int in
            let base = buffer.baseAddress!
            if start > 0 { prefix.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: start) } }
            let nonce = base + start
            guard RAND_bytes(nonce, 12) == 1 else { throw Crypto.failure("random generation") }
            guard EVP_EncryptInit_ex2(ctx, Crypto.aes256GCM ?? EVP_aes_256_gcm(), key, nonce, nil) == 1 else { throw Crypto.failure("AES-GCM init") }
            var outLength: Int32 = 0
            if !associatedData.isEmpty {
                guard EVP_EncryptUpdate(ctx, nil, &outLength, associatedData, Int32(associatedData.count)) == 1 else { throw Crypto.failure("AES-GCM AAD") }
            }
            let ciphertext = nonce + 12
            guard EVP_EncryptUpdate(ctx, ciphertext, &outLength, plaintext, Int32(plaintext.count)) == 1 else { throw Crypto.failure("AES-GCM encrypt") }
            var finalLength: Int32 = 0
            guard EVP_EncryptFinal_ex(ctx, ciphertext + Int(outLength), &finalLength) == 1 else { throw Crypto.failure("AES-GCM final") }
            let written = Int(outLength + finalLength)
            guard EVP_CIPHER_CTX_ctrl(ctx, kp_EVP_CTRL_AEAD_GET_TAG(), 16, ciphertext + written) == 1 else { throw Crypto.failure("AES-GCM tag") }
            return start + 12 + written + 16
        }
        if sealedLength < out.count { out.removeLast(out.count - sealedLength) }
        return out
    }

    public func open(_ sealed: [UInt8], associatedData: [UInt8] = []) throws -> [UInt8] {
        guard sealed.count >= 28 else { throw KetenpoortError(.crypto, "AES-GCM input is too short") }
        let nonce = Array(sealed.prefix(12))
        var tag = Array(sealed.suffix(16))
        let ciphertext = Array(sealed.dropFirst(12).dropLast(16))
        ERR_clear_error()
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Crypto.failure("cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        guard EVP_DecryptInit_ex2(ctx, Crypto.aes256GCM ?? EVP_aes_256_gcm(), key, nonce, nil) == 1 else { throw Crypto.failure("AES-GCM init") }
        var outLength: Int32 = 0
        if !associatedData.isEmpty {
            guard EVP_DecryptUpdate(ctx, nil, &outLength, associatedData, Int32(associatedData.count)) == 1 else { throw Crypto.failure("AES-GCM AAD") }
        }
        var plaintext = [UInt8](repeating: 0, count: ciphertext.count + 16)
        guard EVP_DecryptUpdate(ctx, &plaintext, &outLength, ciphertext, Int32(ciphertext.count)) == 1 else { throw Crypto.failure("AES-GCM decrypt") }
        guard EVP_CIPHER_CTX_ctrl(ctx, kp_EVP_CTRL_AEAD_SET_TAG(), 16, &tag) == 1 else { throw Crypto.failure("AES-GCM tag") }
        var finalLength: Int32 = 0
        guard plaintext.withUnsafeMutableBufferPointer({ EVP_DecryptFinal_ex(ctx, $0.baseAddress! + Int(outLength), &finalLength) }) == 1 else {
            ERR_clear_error()
            throw KetenpoortError(.crypto, "the ciphertext does not authenticate (wrong key or altered bytes)")
        }
        return Array(plaintext.prefix(Int(outLength + finalLength)))
    }
}

/// SHA-256 with one reusable OpenSSL context, for hashing many small messages (log
/// verification). Not thread-safe: one per thread.
public final class SHA256Hasher {
    private let context: OpaquePointer
    private let md: OpaquePointer?

    public init() {
        context = EVP_MD_CTX_new()
        // An explicitly fetched digest: EVP_DigestInit_ex then skips the provider lookup (and
        // its lock) on every message.
        md = EVP_MD_fetch(nil, "SHA256", nil)
    }

    deinit {
        EVP_MD_CTX_free(context)
        EVP_MD_free(md)
    }

    /// SHA-256 over the concatenation of `parts`, written into `out` (32 bytes).
    public func hash(_ parts: UnsafeRawBufferPointer..., into out: UnsafeMutablePointer<UInt8>) {
        _ = EVP_DigestInit_ex(context, md, nil)
        for part in parts where part.count > 0 { _ = EVP_DigestUpdate(context, part.baseAddress, part.count) }
        var length: UInt32 = 0
        _ = EVP_DigestFinal_ex(context, out, &length)
    }

    public func hash(_ parts: [UInt8]...) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        _ = EVP_DigestInit_ex(context, md, nil)
        for part in parts where !part.isEmpty { part.withUnsafeBytes { _ = EVP_DigestUpdate(context, $0.baseAddress, $0.count) } }
        var length: UInt32 = 0
        _ = EVP_DigestFinal_ex(context, &out, &length)
        return out
    }
}
