import Foundation
import KetenpoortCrypto
import Testing

/// `ketenpoort serve` refuses a bad configuration with one line that says what to fix.
@Suite("Configuration errors")
struct ConfigurationErrorTests {
    func serve(tls: String, extra: String = "") throws -> ProcessResult {
        let dir = temporaryDirectory("ketenpoort-config")
        let config = dir + "/gateway.yaml"
        try write(
            """
            listen: 127.0.0.1:0
            ops_listen: 127.0.0.1:0
            policies: \(packageRoot)/Policies
            \(tls)
            \(extra)
            """, to: config)
        return try ketenpoort(["serve", "--config", config])
    }

    func tls(cert: String = PKIFixture.path("gateway/server.crt"), key: String = PKIFixture.path("gateway/server.key")) -> String {
        """
        tls:
          certificate: \(cert)
          key: \(key)
          client_ca: \(PKIFixture.path("ca.crt"))
        """
    }

    func expectOneLine(_ r: ProcessResult, contains fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 2, "exit \(r.status): \(r.stderr)", sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.contains(fragment), "\(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stdout.isEmpty, sourceLocation: sourceLocation)
    }

    @Test("without `keys:` or KETENPOORT_KEYS, serve takes the master key from its systemd credential, and says all three when there is none")
    func masterKeyFromCredential() throws {
        let dir = temporaryDirectory("ketenpoort-credential")
        let credentials = dir + "/credentials"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        let config = dir + "/gateway.yaml"
        let text = GatewayProcess.configuration(database: dir + "/ketenpoort.db", keys: "unused").replacingOccurrences(of: "keys: unused\n", with: "")
        #expect(!text.contains("keys:"))
        try write(text, to: config)
        expectOneLine(try ketenpoort(["serve", "--config", config]), contains: "a `ketenpoort-master-key` systemd credential")
        try MasterKeyFile.create(path: credentials + "/ketenpoort-master-key")
        let gateway = try GatewayProcess(directory: dir, configPath: config, arguments: ["serve", "--config", config], environment: ["CREDENTIALS_DIRECTORY": credentials])
        #expect(gateway.port > 0)
        #expect(gateway.stop() == 0)
    }

    @Test("a missing configuration file")
    func missingFile() throws {
        expectOneLine(try ketenpoort(["serve", "--config", "/nonexistent/gateway.yaml"]), contains: "configuration file `/nonexistent/gateway.yaml` does not exist")
    }

    @Test("an unreadable (missing) private key")
    func unreadableKey() throws {
        expectOneLine(try serve(tls: tls(key: "/nonexistent/server.key")), contains: "private key file `/nonexistent/server.key` does not exist or cannot be read")
    }

    @Test("a key that does not match its certificate")
    func keyMismatch() throws {
        let dir = temporaryDirectory()
        let other = dir + "/other.key"
        try FileManager.default.copyItem(atPath: PKIFixture.partner("wijkteam-dordrecht").key, toPath: other)
        expectOneLine(try serve(tls: tls(key: other)), contains: "does not match certificate")
    }

    @Test("a private key readable by others is refused", arguments: [0o644, 0o604, 0o620, 0o660])
    func loosePermissions(mode: Int) throws {
        let dir = temporaryDirectory()
        let key = dir + "/server.key"
        try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.key"), toPath: key)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: key)
        expectOneLine(try serve(tls: tls(key: key)), contains: "must not be accessible by others or writable by its group")
    }

    @Test("group read is allowed (container secrets)")
    func groupReadAllowed() async throws {
        let dir = temporaryDirectory()
        let key = dir + "/server.key"
        try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.key"), toPath: key)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: key)
        let gateway = try GatewayProcess(
            tlsSection: """
                tls:
                  certificate: \(PKIFixture.path("gateway/server.crt"))
                  key: \(key)
                  client_ca: \(PKIFixture.path("ca.crt"))
                """)
        #expect(gateway.port > 0)
        #expect(gateway.stop() == 0)
    }

    @Test("an unknown key is named with its line and column")
    func unknownKey() throws {
        let r = try serve(tls: tls(), extra: "lisen: 127.0.0.1:1")
        expectOneLine(r, contains: "unknown key `lisen`")
        #expect(r.stderr.contains("gateway.yaml:8:1:"))
    }

    @Test("a certificate file that holds no certificate")
    func notACertificate() throws {
        let dir = temporaryDirectory()
        let cert = dir + "/server.crt"
        try write("hello\n", to: cert)
        expectOneLine(try serve(tls: tls(cert: cert)), contains: "holds no valid PEM certificate")
    }

    @Test("a bad listen address")
    func badListen() throws {
        expectOneLine(try serve(tls: tls(), extra: "limits:\n  max_connections: 0"), contains: "`limits.max_connections` must be a whole number from 1")
    }
}
