import ArgumentParser
import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPKI
import KetenpoortServer

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway on the example region with a development PKI (what `make demo` runs).",
        discussion: "Creates in DIR what is missing — the PKI in DIR/pki, the configuration DIR/gateway.yaml, the database — and keeps serving.")

    @Option(help: "The demo directory.") var dir: String = ".demo"
    @Option(help: "The main listener, HOST:PORT.") var listen: String = "127.0.0.1:8443"
    @Option(name: .customLong("ops-listen"), help: "The operations listener, HOST:PORT.") var opsListen: String = "127.0.0.1:9443"
    @Option(help: "The policy directory.") var policies: String = "Policies"
    @Flag(name: .customLong("no-scenario"), help: "Serve without running the example scenario.") var noScenario = false

    func run() async throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let root = URL(fileURLWithPath: dir).standardizedFileURL.path
        let policyDirectory = URL(fileURLWithPath: policies).standardizedFileURL.path
        let pkiDirectory = root + "/pki"
        if !fm.fileExists(atPath: pkiDirectory + "/ca.crt") {
            let registry = try loadRegistry(policyDirectory + "/partners.yaml")
            try DevelopmentPKI(directory: pkiDirectory).create(
                partners: registry.partners.map { PKIPartner(id: $0.id, name: $0.name, oin: $0.oin.value) },
                officers: registry.officers.map { PKIOfficer(id: $0.id, name: $0.name, serialNumber: $0.serialNumber) },
                force: true)
            announce("created a development PKI in \(pkiDirectory)")
        } else if fm.fileExists(atPath: pkiDirectory + "/.ca/openssl.cnf") {
            // CRLs run 30 days: a PKI kept from an earlier run gets fresh ones, or every partner
            // would be refused with crl_unavailable once they lapse.
            try DevelopmentPKI(directory: pkiDirectory).issueCRLs()
        }
        let keyPath = root + "/keys"
        if !fm.fileExists(atPath: keyPath) {
            try MasterKeyFile.create(path: keyPath)
            announce("created the master key file \(keyPath) (pseudonyms, tokens, the audit log's keys)")
        }
        let configPath = root + "/gateway.yaml"
        if !fm.fileExists(atPath: configPath) {
            let text = """
                # Demo configuration written by `ketenpoort demo`. See docs/configuration.md.
                listen: \(listen)
                ops_listen: \(opsListen)
                policies: \(policyDirectory)
                database: \(root)/ketenpoort.db
                keys: keys
                audit:
                  origin: zhz.ketenpoort.example/audit
                tls:
                  certificate: pki/gateway/server.crt
                  key: pki/gateway/server.key
                  client_ca: pki/ca.crt
                  crl: pki/crl.pem
                client_tls:
                  certificate: pki/gateway/client.crt
                  key: pki/gateway/client.key

                """
            try text.write(toFile: configPath, atomically: true, encoding: .utf8)
            announce("wrote \(configPath)")
        }
        var configuration = try GatewayConfiguration.load(path: configPath)
        configuration.listen = try ListenAddress(parsing: listen, what: "--listen")
        configuration.operationsListen = try ListenAddress(parsing: opsListen, what: "--ops-listen")
        if configuration.masterKeyPath == nil { configuration.masterKeyPath = keyPath }
        let pki = pkiDirectory
        let displayed = dir
        let runScenario = !noScenario
        try await runGateway(configuration) { addresses in
            let port = addresses.main.port ?? 8443
            announce(
                """

                Ketenpoort is serving the example region Zuid-Holland Zuid (policies: \(policyDirectory)).
                Try, in another terminal:

                  curl --cacert \(displayed)/pki/ca.crt \\
                       --cert \(displayed)/pki/partners/wijkteam-dordrecht.crt --key \(displayed)/pki/partners/wijkteam-dordrecht.key \\
                       https://localhost:\(port)/v1/whoami

                  curl --cacert \(displayed)/pki/ca.crt --cert \(displayed)/pki/invalid/unknown-oin.crt --key \(displayed)/pki/invalid/unknown-oin.key \\
                       https://localhost:\(port)/v1/whoami          # 403 unknown_partner
                  curl --cacert \(displayed)/pki/ca.crt --cert \(displayed)/pki/invalid/revoked.crt --key \(displayed)/pki/invalid/revoked.key \\
                       https://localhost:\(port)/v1/whoami          # refused in the handshake

                  curl \(addresses.operationsURL)/metrics

                The audit log (every start, reload and re-identification, durable before answered):

                  .build/debug/ketenpoort log query --db \(displayed)/ketenpoort.db
                  .build/debug/ketenpoort log public-key --keys \(displayed)/keys --db \(displayed)/ketenpoort.db > log.pub
                  .build/debug/ketenpoort log verify --db \(displayed)/ketenpoort.db --public-key log.pub

                The policies of the region, their tests, and one decision explained:

                  .build/debug/ketenpoort policy test Policies
                  .build/debug/ketenpoort policy check Policies

                Certificates: \(pki)/README.txt. Stop with Ctrl-C (graceful shutdown).
                """)
            if !runScenario { return }
            Task { await DemoScenario.run(port: port, pki: pki) }
        }
    }
}
