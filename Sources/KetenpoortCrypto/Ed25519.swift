import COpenSSL
import KetenpoortCore

/// Ed25519 signatures through OpenSSL (for signed log checkpoints).
public final class Ed25519PrivateKey: @unchecked Sendable, CustomStringConvertible {
    // An EVP_PKEY is immutable once made; signing uses a fresh digest context per call.
    let key: OpaquePointer

    /// From a 32-byte seed (for example derived from the master key with HKDF).
    public init(seed: [UInt8]) throws {
        guard seed.count == 32 else { throw KetenpoortError(.crypto, "an Ed25519 seed is 32 bytes") }
        ERR_clear_error()
        guard let key = EVP_PKEY_new_raw_private_key_ex(nil, "ED25519", nil, seed, 32) else {
            throw Crypto.failure("Ed25519 key import")
        }
        self.key = key
    }

    deinit { EVP_PKEY_free(key) }

    public var description: String { "Ed25519PrivateKey(redacted)" }

    public var publicKey: Ed25519PublicKey {
        var raw = [UInt8](repeating: 0, count: 32)
        var length = 32
        _ = EVP_PKEY_get_raw_public_key(key, &raw, &length)
        return try! Ed25519PublicKey(raw: raw)
    }

    public func sign(_ message: [UInt8]) throws -> [UInt8] {
        ERR_clear_error()
        guard let ctx = EVP_MD_CTX_new() else { throw Crypto.failure("digest context") }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestSignInit_ex(ctx, nil, nil, nil, nil, key, nil) == 1 else { throw Crypto.failure("Ed25519 sign init") }
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        guard EVP_DigestSign(ctx, &signature, &length, message, message.count) == 1, length == 64 else {
            throw Crypto.failure("Ed25519 sign")
        }
        return signature
    }
}

public final class Ed25519PublicKey: @unchecked Sendable {
    let key: OpaquePointer
    public let raw: [UInt8]

    public init(raw: [UInt8]) throws {
        guard raw.count == 32 else { throw KetenpoortError(.crypto, "an Ed25519 public key is 32 bytes") }
        ERR_clear_error()
        guard let key = EVP_PKEY_new_raw_public_key_ex(nil, "ED25519", nil, raw, 32) else {
            throw Crypto.failure("Ed25519 public key import")
        }
        self.key = key
        self.raw = raw
    }

    deinit { EVP_PKEY_free(key) }

    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard signature.count == 64, let ctx = EVP_MD_CTX_new() else { return false }
        defer {
            EVP_MD_CTX_free(ctx)
            ERR_clear_error()
        }
        guard EVP_DigestVerifyInit_ex(ctx, nil, nil, nil, nil, key, nil) == 1 else { return false }
        return EVP_DigestVerify(ctx, signature, 64, message, message.count) == 1
    }
}
