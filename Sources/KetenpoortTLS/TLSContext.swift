import COpenSSL
import KetenpoortCore
import Synchronization

/// An immutable OpenSSL `SSL_CTX` built from a ``TLSConfiguration``.
///
/// A context is never changed once built: reloading certificates builds a new one and swaps it
/// (``TLSContextBox``). Connections keep a reference to the context they started with (OpenSSL
/// reference-counts it), so an established connection survives a reload.
public final class TLSContext: @unchecked Sendable {
    // `SSL_CTX` is safe to share between threads once configured; it is never mutated after init.
    let ctx: OpaquePointer
    public let configuration: TLSConfiguration
    /// The leaf certificate this context presents, if any.
    public let certificate: CertificateInfo?

    public init(configuration: TLSConfiguration) throws {
        self.configuration = configuration
        ERR_clear_error()
        let method = configuration.role == .server ? TLS_server_method() : TLS_client_method()
        guard let ctx = SSL_CTX_new(method) else {
            throw KetenpoortError(.tls, "cannot create a TLS context: \(openSSLErrorString())")
        }
        self.ctx = ctx
        var certificate: CertificateInfo? = nil
        do {
            try TLSContext.configureProtocol(ctx, configuration)
            certificate = try TLSContext.configureIdentity(ctx, configuration)
            try TLSContext.configureTrust(ctx, configuration)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        self.certificate = certificate
    }

    deinit {
        SSL_CTX_free(ctx)
    }

    private static func configureProtocol(_ ctx: OpaquePointer, _ configuration: TLSConfiguration) throws {
        let minimum = configuration.minimumVersion == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION
        guard kp_SSL_CTX_set_min_proto_version(ctx, minimum) == 1,
            kp_SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1
        else {
            throw KetenpoortError(.tls, "cannot set the TLS protocol versions: \(openSSLErrorString())")
        }
        var options = kp_SSL_OP_NO_COMPRESSION() | kp_SSL_OP_NO_RENEGOTIATION()
        if configuration.role == .server { options |= kp_SSL_OP_CIPHER_SERVER_PREFERENCE() }
        if !configuration.sessionResumption { options |= kp_SSL_OP_NO_TICKET() }
        _ = kp_SSL_CTX_set_options(ctx, options)
        _ = kp_SSL_CTX_set_mode(ctx, kp_SSL_MODE_RELEASE_BUFFERS())
        guard SSL_CTX_set_cipher_list(ctx, TLSConfiguration.tls12CipherList) == 1,
            SSL_CTX_set_ciphersuites(ctx, TLSConfiguration.tls13CipherSuites) == 1
        else {
            throw KetenpoortError(.tls, "cannot set the cipher suites: \(openSSLErrorString())")
        }
        if configuration.role == .server {
            // A session id context is required for resumption when client certificates are verified.
            let sessionContext = Array("ketenpoort".utf8)
            _ = SSL_CTX_set_session_id_context(ctx, sessionContext, UInt32(sessionContext.count))
            if configuration.sessionResumption {
                _ = kp_SSL_CTX_set_session_cache_mode(ctx, kp_SSL_SESS_CACHE_SERVER())
                _ = kp_SSL_CTX_sess_set_cache_size(ctx, 20_000)
            } else {
                _ = kp_SSL_CTX_set_session_cache_mode(ctx, kp_SSL_SESS_CACHE_OFF())
            }
        } else {
            _ = kp_SSL_CTX_set_session_cache_mode(ctx, kp_SSL_SESS_CACHE_CLIENT())
        }
    }

    private static func configureIdentity(_ ctx: OpaquePointer, _ configuration: TLSConfiguration) throws -> CertificateInfo? {
        guard let chainPath = configuration.certificateChainPath else {
            if configuration.role == .server {
                throw KetenpoortError(.configuration, "a TLS server needs a certificate")
            }
            return nil
        }
        guard let keyPath = configuration.privateKeyPath else {
            throw KetenpoortError(.configuration, "certificate `\(chainPath)` has no private key configured")
        }
        guard SecretFile.isReadable(chainPath) else {
            throw KetenpoortError(.fileUnreadable, "certificate file `\(chainPath)` does not exist or cannot be read")
        }
        guard SecretFile.isReadable(keyPath) else {
            throw KetenpoortError(.fileUnreadable, "private key file `\(keyPath)` does not exist or cannot be read")
        }
        try SecretFile.checkPermissions(path: keyPath, what: "private key file")
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(ctx, chainPath) == 1 else {
            throw KetenpoortError(.invalidCertificate, "certificate file `\(chainPath)` holds no valid PEM certificate: \(openSSLErrorString())")
        }
        ERR_clear_error()
        guard SSL_CTX_use_PrivateKey_file(ctx, keyPath, SSL_FILETYPE_PEM) == 1 else {
            let reason = openSSLErrorString()
            if reason.contains("values mismatch") || reason.contains("key values mismatch") {
                throw KetenpoortError(.keyCertificateMismatch, "private key `\(keyPath)` does not match certificate `\(chainPath)`")
            }
            throw KetenpoortError(.invalidKey, "private key file `\(keyPath)` holds no valid PEM private key: \(reason)")
        }
        ERR_clear_error()
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw KetenpoortError(.keyCertificateMismatch, "private key `\(keyPath)` does not match certificate `\(chainPath)`")
        }
        guard let leaf = SSL_CTX_get0_certificate(ctx) else { return nil }
        return CertificateInfo(x509: leaf)
    }

    private static func configureTrust(_ ctx: OpaquePointer, _ configuration: TLSConfiguration) throws {
        let caPath = configuration.trustRootsPath
        guard SecretFile.isReadable(caPath) else {
            throw KetenpoortError(.fileUnreadable, "CA bundle `\(caPath)` does not exist or cannot be read")
        }
        ERR_clear_error()
        guard SSL_CTX_load_verify_locations(ctx, caPath, nil) == 1 else {
            throw KetenpoortError(.invalidCertificate, "CA bundle `\(caPath)` holds no valid PEM certificate: \(openSSLErrorString())")
        }
        SSL_CTX_set_verify_depth(ctx, configuration.verifyDepth)
        if configuration.role == .server {
            if configuration.requireClientCertificate {
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
                // The CA names sent in the CertificateRequest (the list is owned by the context).
                if let names = SSL_load_client_CA_file(caPath) {
                    SSL_CTX_set_client_CA_list(ctx, names)
                }
                _ = SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT)
            } else {
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
            }
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            _ = SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER)
        }
        if let crlPath = configuration.crlPath {
            try loadCRLs(ctx, path: crlPath)
        }
    }

    private static func loadCRLs(_ ctx: OpaquePointer, path: String) throws {
        guard SecretFile.isReadable(path) else {
            throw KetenpoortError(.fileUnreadable, "CRL file `\(path)` does not exist or cannot be read")
        }
        ERR_clear_error()
        guard let bio = BIO_new_file(path, "r") else {
            throw KetenpoortError(.fileUnreadable, "CRL file `\(path)` cannot be opened")
        }
        defer { BIO_free(bio) }
        guard let infos = PEM_X509_INFO_read_bio(bio, nil, nil, nil) else {
            throw KetenpoortError(.invalidCertificate, "CRL file `\(path)` holds no valid PEM CRL: \(openSSLErrorString())")
        }
        defer { kp_sk_X509_INFO_pop_free(infos) }
        guard let store = SSL_CTX_get_cert_store(ctx) else {
            throw KetenpoortError(.tls, "TLS context has no certificate store")
        }
        var count = 0
        for index in 0..<kp_sk_X509_INFO_num(infos) {
            guard let info = kp_sk_X509_INFO_value(infos, index), let crl = info.pointee.crl else { continue }
            guard X509_STORE_add_crl(store, crl) == 1 else {
                throw KetenpoortError(.invalidCertificate, "CRL file `\(path)`: cannot add CRL \(index + 1): \(openSSLErrorString())")
            }
            count += 1
        }
        guard count > 0 else {
            throw KetenpoortError(.invalidCertificate, "CRL file `\(path)` holds no CRL")
        }
        _ = X509_STORE_set_flags(store, UInt(kp_X509_V_FLAG_CRL_CHECK() | kp_X509_V_FLAG_CRL_CHECK_ALL()))
    }

    /// Creates the per-connection `SSL` object.
    func makeSSL() throws -> OpaquePointer {
        ERR_clear_error()
        guard let ssl = SSL_new(ctx) else {
            throw KetenpoortError(.tls, "cannot create a TLS connection: \(openSSLErrorString())")
        }
        return ssl
    }
}

/// Drains OpenSSL's thread-local error queue into one line.
public func openSSLErrorString() -> String {
    var messages: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        messages.append(String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return messages.isEmpty ? "no detail from OpenSSL" : messages.joined(separator: "; ")
}

/// What Ketenpoort needs to know of a certificate: identity and fingerprint. Not personal data
/// for organisation certificates; for officer certificates the serial number is an identifier.
public struct CertificateInfo: Sendable, Hashable {
    /// The subject's serialNumber attribute (the OIN in PKIoverheid organisation certificates).
    public let subjectSerialNumber: String?
    public let commonName: String?
    public let organization: String?
    /// SHA-256 over the DER certificate, lowercase hex.
    public let fingerprintSHA256: String
    /// The end of the certificate's validity (seconds since 1970, UTC); `nil` if unreadable.
    public let notAfter: Double?

    init(x509: OpaquePointer) {
        let name = X509_get_subject_name(x509)
        subjectSerialNumber = CertificateInfo.attribute(name, NID_serialNumber)
        commonName = CertificateInfo.attribute(name, NID_commonName)
        organization = CertificateInfo.attribute(name, NID_organizationName)
        var parts = tm()
        if let end = X509_get0_notAfter(x509), ASN1_TIME_to_tm(end, &parts) == 1 {
            notAfter = Double(timegm(&parts))
        } else {
            notAfter = nil
        }
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        if X509_digest(x509, EVP_sha256(), &digest, &length) == 1 {
            fingerprintSHA256 = digest.prefix(Int(length)).map { byte in
                let hex = String(byte, radix: 16)
                return byte < 16 ? "0" + hex : hex
            }.joined()
        } else {
            fingerprintSHA256 = ""
        }
    }

    private static func attribute(_ name: OpaquePointer?, _ nid: Int32) -> String? {
        guard let name else { return nil }
        let index = X509_NAME_get_index_by_NID(name, nid, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry) else {
            return nil
        }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = ASN1_STRING_to_UTF8(&out, data)
        guard length >= 0, let out else { return nil }
        defer { kp_OPENSSL_free(out) }
        return String(decoding: UnsafeBufferPointer(start: out, count: Int(length)), as: UTF8.self)
    }
}

/// Holds the current context of a listener; a reload swaps it atomically.
public final class TLSContextBox: Sendable {
    private let current: Mutex<TLSContext>

    public init(_ context: TLSContext) { current = Mutex(context) }

    public var context: TLSContext {
        current.withLock { $0 }
    }

    public func replace(with context: TLSContext) {
        current.withLock { $0 = context }
    }
}
