/// The one error type of Ketenpoort.
///
/// Shaped after swift-certificates' `CertificateError` and swift-service-lifecycle's
/// `ServiceGroupError`: a stable ``Code`` (used on the wire as the problem+json `code`, and
/// for CLI exit codes), a one-line message that says what to fix, and where it was raised.
/// Messages never carry personal data: identifiers in backticks, pseudonyms at most.
public struct KetenpoortError: Error, Sendable, CustomStringConvertible, Hashable {
    /// A stable, machine-readable error code. Never renamed once published.
    public struct Code: Hashable, Sendable, CustomStringConvertible, RawRepresentable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        // Configuration and files (CLI exit code 2).
        public static let configuration = Code("configuration")
        public static let fileUnreadable = Code("file_unreadable")
        public static let insecureFilePermissions = Code("insecure_file_permissions")
        public static let invalidCertificate = Code("invalid_certificate")
        public static let invalidKey = Code("invalid_key")
        public static let keyCertificateMismatch = Code("key_certificate_mismatch")
        public static let invalidInput = Code("invalid_input")
        public static let invalidBSN = Code("invalid_bsn")
        public static let invalidOIN = Code("invalid_oin")

        // TLS and crypto.
        public static let tls = Code("tls")
        public static let crypto = Code("crypto")

        // HTTP problem codes (contract.md).
        public static let unknownPartner = Code("unknown_partner")
        public static let forbidden = Code("forbidden")
        public static let notFound = Code("not_found")
        public static let invalidJSON = Code("invalid_json")
        public static let invalidRequest = Code("invalid_request")
        public static let unsupportedMediaType = Code("unsupported_media_type")
        public static let payloadTooLarge = Code("payload_too_large")
        public static let exchangeDenied = Code("exchange_denied")
        public static let idempotencyConflict = Code("idempotency_conflict")
        /// Another request changed the same thing first (a second review of one exchange):
        /// nothing was carried out or logged.
        public static let conflict = Code("conflict")
        public static let auditUnavailable = Code("audit_unavailable")
        public static let methodNotAllowed = Code("method_not_allowed")
        public static let requestTimeout = Code("request_timeout")
        public static let headersTooLarge = Code("headers_too_large")
        /// An `Expect` the server cannot meet (anything but `100-continue`): 417.
        public static let expectationFailed = Code("expectation_failed")
        public static let serviceUnavailable = Code("service_unavailable")
        public static let internalError = Code("internal_error")
    }

    public let code: Code
    public let message: String
    public let fileID: String
    public let line: Int

    public init(_ code: Code, _ message: String, fileID: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.fileID = fileID
        self.line = line
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
