import Foundation
import KetenpoortCore
import KetenpoortStore
import KetenpoortTLS
import Yams

/// A listener address, `HOST:PORT` (IPv6 as `[::1]:8443`).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String, what: String) throws {
        var host = ""
        var portText = ""
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw KetenpoortError(.configuration, "\(what) `\(text)` is not HOST:PORT")
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(close, offsetBy: 2)...])
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw KetenpoortError(.configuration, "\(what) `\(text)` is not HOST:PORT")
            }
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else {
            throw KetenpoortError(.configuration, "\(what) `\(text)` is not HOST:PORT with a port from 0 to 65535")
        }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Limits that protect the gateway from slow, large or many clients.
public struct GatewayLimits: Sendable, Hashable {
    public var maxConnections = 4_096
    public var maxHeaderBytes = 16 * 1024
    public var maxBodyBytes = 1024 * 1024
    public var handshakeTimeout: Duration = .seconds(10)
    public var idleTimeout: Duration = .seconds(60)
    /// From the first byte of a request to its complete header: slow header senders are dropped.
    public var headerTimeout: Duration = .seconds(10)
    /// From the complete header to the end of the response.
    public var requestTimeout: Duration = .seconds(30)
    /// How long in-flight requests may take to finish on shutdown.
    public var shutdownGrace: Duration = .seconds(10)

    public init() {}
}

/// The gateway's configuration: a YAML file, overridden by `KETENPOORT_*` environment variables,
/// overridden by command-line flags. Relative paths are relative to the configuration file.
public struct GatewayConfiguration: Sendable {
    public var listen = ListenAddress(host: "127.0.0.1", port: 8443)
    /// The operations listener (`/health`, `/metrics`); loopback by default.
    public var operationsListen = ListenAddress(host: "127.0.0.1", port: 9443)
    /// A listener of its own for the officer endpoints (`/console/`, `/v1/audit/entries…`,
    /// `/v1/reviews`); when set, the main listener no longer serves them.
    public var officerListen: ListenAddress?
    public var certificatePath = ""
    public var privateKeyPath = ""
    /// The partner CA bundle: client certificates must chain to one of these roots.
    public var clientCAPath = ""
    public var crlPath: String?
    public var minimumTLSVersion: TLSMinimumVersion = .tls12
    public var sessionResumption = true
    /// The gateway's own client certificate (push delivery).
    public var clientCertificatePath: String?
    public var clientPrivateKeyPath: String?
    public var policyDirectory = "Policies"
    /// A SQLite file (the embedded default) or a `postgresql://` URL (several instances).
    public var databasePath = "ketenpoort.db"
    /// The PostgreSQL password, in a file of its own (never in the URL).
    public var databasePasswordFile: String?
    public var masterKeyPath: String?
    public var limits = GatewayLimits()
    public var eventLoopThreads = 0
    public var logLevel = "info"
    public var audit = AuditSettings()

    public init() {}

    /// The keys a configuration file may contain (anything else is an error: a typo must not be
    /// silently ignored in a security product).
    static let knownKeys: [String: Set<String>] = [
        "": ["listen", "ops_listen", "officer_listen", "tls", "client_tls", "policies", "database", "database_password_file", "keys", "limits", "event_loop_threads", "log_level", "audit"],
        "audit": ["origin", "checkpoint_entries", "checkpoint_seconds"],
        "tls": ["certificate", "key", "client_ca", "crl", "min_version", "session_resumption"],
        "client_tls": ["certificate", "key"],
        "limits": [
            "max_connections", "max_header_bytes", "max_body_bytes", "handshake_timeout_seconds", "idle_timeout_seconds",
            "header_timeout_seconds", "request_timeout_seconds", "shutdown_grace_seconds",
        ],
    ]

    /// Loads a configuration file, applies environment overrides and validates what can be
    /// checked without building TLS contexts. Every error is one line that says what to fix.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GatewayConfiguration {
        guard FileManager.default.fileExists(atPath: path) else {
            throw KetenpoortError(.fileUnreadable, "configuration file `\(path)` does not exist")
        }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KetenpoortError(.fileUnreadable, "configuration file `\(path)` cannot be read")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var configuration = try parse(yaml: text, file: path, baseDirectory: base)
        try configuration.applyEnvironment(environment)
        return configuration
    }

    public static func parse(yaml text: String, file: String, baseDirectory: String) throws -> GatewayConfiguration {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw KetenpoortError(.configuration, "\(file): not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
        }
        var configuration = GatewayConfiguration()
        guard let root = node?.mapping else {
            throw KetenpoortError(.configuration, "\(file): the configuration must be a mapping of keys to values")
        }
        let reader = ConfigReader(file: file, base: baseDirectory)
        try reader.checkKeys(root, section: "")
        if let v = root["listen"] { configuration.listen = try ListenAddress(parsing: try reader.string(v, "listen"), what: "\(reader.at(v))listen") }
        if let v = root["officer_listen"] {
            configuration.officerListen = try ListenAddress(parsing: try reader.string(v, "officer_listen"), what: "\(reader.at(v))officer_listen")
        }
        if let v = root["ops_listen"] {
            configuration.operationsListen = try ListenAddress(parsing: try reader.string(v, "ops_listen"), what: "\(reader.at(v))ops_listen")
        }
        if let v = root["policies"] { configuration.policyDirectory = reader.path(try reader.string(v, "policies")) }
        if let v = root["database"] {
            let text = try reader.string(v, "database")
            configuration.databasePath = PostgresSettings.isPostgresURL(text) ? text : reader.path(text)
        }
        if let v = root["database_password_file"] { configuration.databasePasswordFile = reader.path(try reader.string(v, "database_password_file")) }
        if let v = root["keys"] { configuration.masterKeyPath = reader.path(try reader.string(v, "keys")) }
        if let v = root["event_loop_threads"] { configuration.eventLoopThreads = try reader.int(v, "event_loop_threads", range: 0...256) }
        if let v = root["log_level"] {
            let level = try reader.string(v, "log_level")
            guard GatewayConfiguration.logLevels.contains(level) else {
                throw KetenpoortError(.configuration, "\(reader.at(v))log_level `\(level)` is not one of trace, debug, info, notice, warning, error, critical")
            }
            configuration.logLevel = level
        }
        guard let tlsNode = root["tls"] else {
            throw KetenpoortError(.configuration, "\(file): the `tls` section (certificate, key, client_ca) is missing")
        }
        guard let tls = tlsNode.mapping else {
            throw KetenpoortError(.configuration, "\(reader.at(tlsNode))`tls` must be a mapping")
        }
        try reader.checkKeys(tls, section: "tls")
        for required in ["certificate", "key", "client_ca"] where tls[required] == nil {
            throw KetenpoortError(.configuration, "\(reader.at(tlsNode))`tls.\(required)` is missing")
        }
        configuration.certificatePath = reader.path(try reader.string(tls["certificate"]!, "tls.certificate"))
        configuration.privateKeyPath = reader.path(try reader.string(tls["key"]!, "tls.key"))
        configuration.clientCAPath = reader.path(try reader.string(tls["client_ca"]!, "tls.client_ca"))
        if let v = tls["crl"] { configuration.crlPath = reader.path(try reader.string(v, "tls.crl")) }
        if let v = tls["min_version"] {
            let text = try reader.string(v, "tls.min_version")
            guard let version = TLSMinimumVersion(rawValue: text) else {
                throw KetenpoortError(.configuration, "\(reader.at(v))`tls.min_version` must be \"1.2\" or \"1.3\", not `\(text)`")
            }
            configuration.minimumTLSVersion = version
        }
        if let v = tls["session_resumption"] { configuration.sessionResumption = try reader.bool(v, "tls.session_resumption") }
        if let clientNode = root["client_tls"] {
            guard let client = clientNode.mapping else {
                throw KetenpoortError(.configuration, "\(reader.at(clientNode))`client_tls` must be a mapping")
            }
            try reader.checkKeys(client, section: "client_tls")
            if let v = client["certificate"] { configuration.clientCertificatePath = reader.path(try reader.string(v, "client_tls.certificate")) }
            if let v = client["key"] { configuration.clientPrivateKeyPath = reader.path(try reader.string(v, "client_tls.key")) }
        }
        if let limitsNode = root["limits"] {
            guard let limits = limitsNode.mapping else {
                throw KetenpoortError(.configuration, "\(reader.at(limitsNode))`limits` must be a mapping")
            }
            try reader.checkKeys(limits, section: "limits")
            var l = configuration.limits
            if let v = limits["max_connections"] { l.maxConnections = try reader.int(v, "limits.max_connections", range: 1...1_000_000) }
            if let v = limits["max_header_bytes"] { l.maxHeaderBytes = try reader.int(v, "limits.max_header_bytes", range: 1024...65_536) }
            if let v = limits["max_body_bytes"] { l.maxBodyBytes = try reader.int(v, "limits.max_body_bytes", range: 1024...64 * 1024 * 1024) }
            if let v = limits["handshake_timeout_seconds"] { l.handshakeTimeout = try reader.seconds(v, "limits.handshake_timeout_seconds") }
            if let v = limits["idle_timeout_seconds"] { l.idleTimeout = try reader.seconds(v, "limits.idle_timeout_seconds") }
            if let v = limits["header_timeout_seconds"] { l.headerTimeout = try reader.seconds(v, "limits.header_timeout_seconds") }
            if let v = limits["request_timeout_seconds"] { l.requestTimeout = try reader.seconds(v, "limits.request_timeout_seconds") }
            if let v = limits["shutdown_grace_seconds"] { l.shutdownGrace = try reader.seconds(v, "limits.shutdown_grace_seconds") }
            configuration.limits = l
        }
        if let auditNode = root["audit"] {
            guard let audit = auditNode.mapping else {
                throw KetenpoortError(.configuration, "\(reader.at(auditNode))`audit` must be a mapping")
            }
            try reader.checkKeys(audit, section: "audit")
            if let v = audit["origin"] {
                let origin = try reader.string(v, "audit.origin")
                guard !origin.isEmpty, !origin.contains(where: { $0 == " " || $0 == "+" }) else {
                    throw KetenpoortError(.configuration, "\(reader.at(v))`audit.origin` must be a name without spaces or `+` (for example zhz.ketenpoort.example/audit)")
                }
                configuration.audit.origin = origin
            }
            if let v = audit["checkpoint_entries"] { configuration.audit.checkpointEntries = Int64(try reader.int(v, "audit.checkpoint_entries", range: 1...10_000_000)) }
            if let v = audit["checkpoint_seconds"] {
                let d = try reader.seconds(v, "audit.checkpoint_seconds")
                configuration.audit.checkpointSeconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
            }
        }
        return configuration
    }

    /// `KETENPOORT_LISTEN`, `KETENPOORT_OPS_LISTEN`, `KETENPOORT_TLS_CERTIFICATE`, `KETENPOORT_TLS_KEY`,
    /// `KETENPOORT_TLS_CLIENT_CA`, `KETENPOORT_TLS_CRL`, `KETENPOORT_TLS_MIN_VERSION`, `KETENPOORT_POLICIES`,
    /// `KETENPOORT_DATABASE`, `KETENPOORT_KEYS`, `KETENPOORT_MAX_CONNECTIONS`, `KETENPOORT_MAX_BODY_BYTES`,
    /// `KETENPOORT_LOG_LEVEL`.
    static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// The same ranges as the file: an environment variable may not set what the file may not.
    public mutating func applyEnvironment(_ environment: [String: String]) throws {
        if let v = environment["KETENPOORT_LISTEN"] { listen = try ListenAddress(parsing: v, what: "KETENPOORT_LISTEN") }
        if let v = environment["KETENPOORT_OPS_LISTEN"] { operationsListen = try ListenAddress(parsing: v, what: "KETENPOORT_OPS_LISTEN") }
        if let v = environment["KETENPOORT_TLS_CERTIFICATE"] { certificatePath = v }
        if let v = environment["KETENPOORT_TLS_KEY"] { privateKeyPath = v }
        if let v = environment["KETENPOORT_TLS_CLIENT_CA"] { clientCAPath = v }
        // An empty value (an unset template variable) is no value: it must not switch
        // revocation checking off behind the file's back.
        if let v = environment["KETENPOORT_TLS_CRL"], !v.isEmpty { crlPath = v }
        if let v = environment["KETENPOORT_TLS_MIN_VERSION"] {
            guard let version = TLSMinimumVersion(rawValue: v) else {
                throw KetenpoortError(.configuration, "KETENPOORT_TLS_MIN_VERSION must be 1.2 or 1.3")
            }
            minimumTLSVersion = version
        }
        if let v = environment["KETENPOORT_POLICIES"] { policyDirectory = v }
        if let v = environment["KETENPOORT_DATABASE"] { databasePath = v }
        if let v = environment["KETENPOORT_DATABASE_PASSWORD_FILE"] { databasePasswordFile = v }
        if let v = environment["KETENPOORT_KEYS"] { masterKeyPath = v }
        if let v = environment["KETENPOORT_LOG_LEVEL"] {
            guard GatewayConfiguration.logLevels.contains(v) else {
                throw KetenpoortError(.configuration, "KETENPOORT_LOG_LEVEL `\(v.prefix(32))` is not one of \(GatewayConfiguration.logLevels.joined(separator: ", "))")
            }
            logLevel = v
        }
        if let v = environment["KETENPOORT_MAX_CONNECTIONS"] {
            guard let n = Int(v), (1...1_000_000).contains(n) else {
                throw KetenpoortError(.configuration, "KETENPOORT_MAX_CONNECTIONS must be a whole number from 1 to 1000000")
            }
            limits.maxConnections = n
        }
        if let v = environment["KETENPOORT_MAX_BODY_BYTES"] {
            guard let n = Int(v), (1024...64 * 1024 * 1024).contains(n) else {
                throw KetenpoortError(.configuration, "KETENPOORT_MAX_BODY_BYTES must be a whole number from 1024 to 67108864 (64 MiB)")
            }
            limits.maxBodyBytes = n
        }
    }

    /// The TLS configuration of the main listener.
    public var serverTLS: TLSConfiguration {
        TLSConfiguration(
            role: .server, certificateChainPath: certificatePath, privateKeyPath: privateKeyPath,
            trustRootsPath: clientCAPath, crlPath: crlPath, minimumVersion: minimumTLSVersion,
            requireClientCertificate: true, sessionResumption: sessionResumption)
    }

    /// The TLS configuration of push delivery (`client_tls`), when one is configured: the
    /// gateway's client certificate, and the partners' servers trusted through the same CA bundle.
    public var clientTLS: TLSConfiguration? {
        guard let clientCertificatePath, let clientPrivateKeyPath else { return nil }
        return .client(certificateChainPath: clientCertificatePath, privateKeyPath: clientPrivateKeyPath, trustRootsPath: clientCAPath)
    }

    /// Where the database is: the SQLite file or the PostgreSQL database of `database:`.
    public var databaseLocation: DatabaseLocation { DatabaseLocation(databasePath, passwordFile: databasePasswordFile) }

    /// Checks the files the gateway needs before anything is started.
    public func validate() throws {
        if case .postgresql(let settings) = databaseLocation { try settings.validate() }
        guard FileManager.default.fileExists(atPath: policyDirectory) else {
            throw KetenpoortError(.configuration, "policy directory `\(policyDirectory)` does not exist (set `policies:`)")
        }
        // Building the context checks every file: existence, permissions, PEM, key matching certificate.
        _ = try TLSContext(configuration: serverTLS)
        if let clientTLS { _ = try TLSContext(configuration: clientTLS) }
    }
}

/// The audit log: its name in signed checkpoints and how often a tree head is signed.
public struct AuditSettings: Sendable {
    public var origin = "ketenpoort/audit-log"
    public var checkpointEntries: Int64 = 1_000
    public var checkpointSeconds: Double = 60
}

/// Reads scalar values with `file:line:col:` prefixes in errors.
struct ConfigReader {
    let file: String
    let base: String

    func at(_ node: Node) -> String {
        guard let mark = node.mark else { return "\(file): " }
        return "\(file):\(mark.line):\(mark.column): "
    }

    func checkKeys(_ mapping: Node.Mapping, section: String) throws {
        let known = GatewayConfiguration.knownKeys[section] ?? []
        for (key, _) in mapping {
            guard let name = key.string else {
                throw KetenpoortError(.configuration, "\(at(key))keys must be text")
            }
            if !known.contains(name) {
                let prefix = section.isEmpty ? "" : "\(section)."
                throw KetenpoortError(
                    .configuration, "\(at(key))unknown key `\(prefix)\(name)`; expected one of \(known.sorted().joined(separator: ", "))")
            }
        }
    }

    func string(_ node: Node, _ name: String) throws -> String {
        guard let scalar = node.scalar else {
            throw KetenpoortError(.configuration, "\(at(node))`\(name)` must be text")
        }
        return scalar.string
    }

    func int(_ node: Node, _ name: String, range: ClosedRange<Int>) throws -> Int {
        guard let scalar = node.scalar, let value = Int(scalar.string), range.contains(value) else {
            throw KetenpoortError(.configuration, "\(at(node))`\(name)` must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    func seconds(_ node: Node, _ name: String) throws -> Duration {
        guard let scalar = node.scalar, let value = Double(scalar.string), value > 0, value <= 3600 else {
            throw KetenpoortError(.configuration, "\(at(node))`\(name)` must be a number of seconds above 0 and at most 3600")
        }
        return .milliseconds(Int64(value * 1000))
    }

    func bool(_ node: Node, _ name: String) throws -> Bool {
        guard let scalar = node.scalar, let value = Bool(scalar.string) else {
            throw KetenpoortError(.configuration, "\(at(node))`\(name)` must be true or false")
        }
        return value
    }

    func path(_ value: String) -> String {
        if value.hasPrefix("/") || value.isEmpty { return value }
        return URL(fileURLWithPath: base).appendingPathComponent(value).standardizedFileURL.path
    }
}
