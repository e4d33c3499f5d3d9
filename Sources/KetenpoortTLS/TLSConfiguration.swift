import KetenpoortCore

/// The lowest TLS protocol version a context accepts. TLS 1.3 is always preferred.
public enum TLSMinimumVersion: String, Sendable, CaseIterable, Codable {
    case tls12 = "1.2"
    case tls13 = "1.3"
}

/// What a ``TLSContext`` is built from.
public struct TLSConfiguration: Sendable {
    public enum Role: Sendable { case server, client }

    public var role: Role
    /// PEM file: the certificate, then its intermediates.
    public var certificateChainPath: String?
    /// PEM file with the private key (PKCS#8 or traditional). Must not be accessible by others.
    public var privateKeyPath: String?
    /// PEM bundle of trusted root certificates (server: the partner CAs; client: the server's CA).
    public var trustRootsPath: String
    /// Optional PEM file with CRLs (one per CA in the chain). When given, every certificate of a
    /// peer's chain is checked against it: a revoked certificate is refused.
    public var crlPath: String?
    public var minimumVersion: TLSMinimumVersion
    /// Server: require and verify a client certificate.
    public var requireClientCertificate: Bool
    /// Server: keep a session cache and issue tickets so clients can resume.
    public var sessionResumption: Bool
    /// Maximum chain depth accepted from a peer.
    public var verifyDepth: Int32

    /// The only TLS 1.2 suites allowed: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305.
    public static let tls12CipherList =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    public static let tls13CipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

    public init(
        role: Role,
        certificateChainPath: String?,
        privateKeyPath: String?,
        trustRootsPath: String,
        crlPath: String? = nil,
        minimumVersion: TLSMinimumVersion = .tls12,
        requireClientCertificate: Bool = true,
        sessionResumption: Bool = true,
        verifyDepth: Int32 = 6
    ) {
        self.role = role
        self.certificateChainPath = certificateChainPath
        self.privateKeyPath = privateKeyPath
        self.trustRootsPath = trustRootsPath
        self.crlPath = crlPath
        self.minimumVersion = minimumVersion
        self.requireClientCertificate = requireClientCertificate
        self.sessionResumption = sessionResumption
        self.verifyDepth = verifyDepth
    }

    public static func server(
        certificateChainPath: String, privateKeyPath: String, trustRootsPath: String, crlPath: String? = nil,
        minimumVersion: TLSMinimumVersion = .tls12
    ) -> TLSConfiguration {
        TLSConfiguration(
            role: .server, certificateChainPath: certificateChainPath, privateKeyPath: privateKeyPath,
            trustRootsPath: trustRootsPath, crlPath: crlPath, minimumVersion: minimumVersion)
    }

    public static func client(
        certificateChainPath: String?, privateKeyPath: String?, trustRootsPath: String,
        minimumVersion: TLSMinimumVersion = .tls12
    ) -> TLSConfiguration {
        TLSConfiguration(
            role: .client, certificateChainPath: certificateChainPath, privateKeyPath: privateKeyPath,
            trustRootsPath: trustRootsPath, minimumVersion: minimumVersion, requireClientCertificate: false)
    }
}
