import Foundation
import KetenpoortCore
import KetenpoortServer
import KetenpoortTLS
import NIOCore
import NIOPosix
import Testing

@Suite("Timeouts, limits, resumption and pinning", .serialized)
struct TimeoutsAndIdentityTests {
    let partner = PKIFixture.partner("wijkteam-dordrecht")

    @Test("a TLS session is resumed on the next connection")
    func sessionResumption() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let context = try TLSContext(configuration: .client(certificateChainPath: partner.cert, privateKeyPath: partner.key, trustRootsPath: PKIFixture.path("ca.crt")))
        let sessions = TLSClientSessionCache()
        let first = try await TestHTTPSClient.connect(port: gateway.port, cert: nil, key: nil, context: context, sessions: sessions)
        #expect(first.handshake.sessionReused == false)
        // TLS 1.3 tickets arrive after the handshake: a request makes sure they were read.
        #expect(try await first.request("/v1/whoami").status == 200)
        await first.close()
        let second = try await TestHTTPSClient.connect(port: gateway.port, cert: nil, key: nil, context: context, sessions: sessions)
        #expect(second.handshake.sessionReused == true)
        // A resumed session still knows who the partner is.
        let response = try await second.request("/v1/whoami")
        #expect(response.json?["partner"]?["id"]?.stringValue == "wijkteam-dordrecht")
        await second.close()
    }

    @Test("a connection that never completes its handshake is closed after the handshake timeout")
    func handshakeTimeout() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  handshake_timeout_seconds: 1\n")
        defer { gateway.stop() }
        // Times are taken on the event loop, so a busy test process cannot skew them.
        let connected = ClientBootstrap(group: TestHTTPSClient.group).connect(host: "127.0.0.1", port: gateway.port)
        let started = try await connected.map { _ in Date() }.get()
        let channel = try await connected.get()
        let closed = try await channel.closeFuture.map { Date() }.get()
        let waited = closed.timeIntervalSince(started)
        #expect(waited >= 0.9 && waited < 5, "closed after \(waited) s")
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_tls_handshake_failures_total{reason=\"timeout\"} 1"))
    }

    @Test("an idle keep-alive connection is closed after the idle timeout")
    func idleTimeout() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  idle_timeout_seconds: 2\n")
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await client.request("/v1/whoami").status == 200)
        // Still open well within the idle timeout, and a request resets it.
        try await Task.sleep(for: .milliseconds(1_000))
        #expect(client.isActive)
        #expect(try await client.request("/v1/whoami").status == 200)
        let lastResponse = client.lastResponseAt
        // Taken on the event loop, so a busy test process cannot skew it.
        let closed = try await client.channel.closeFuture.map { Date() }.get()
        let waited = closed.timeIntervalSince(lastResponse)
        #expect(waited >= 1.8 && waited < 8, "closed \(waited) s after the last response")
    }

    @Test("the operations listener closes idle connections and holds at most 64, so it cannot use up the process's descriptors")
    func operationsListenerLimits() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  idle_timeout_seconds: 2\n")
        defer { gateway.stop() }
        let idle = try IdleTCPConnection(port: gateway.operationsPort)
        #expect(!idle.closedByServer(within: 0.5), "open within the idle timeout")
        #expect(idle.closedByServer(within: 5), "closed after the idle timeout")
        let held = try (0..<64).map { _ in try IdleTCPConnection(port: gateway.operationsPort) }
        try await Task.sleep(for: .milliseconds(300))
        let extra = try IdleTCPConnection(port: gateway.operationsPort)
        #expect(extra.closedByServer(within: 1), "the 65th connection is closed at once")
        _ = held
        // Once those are gone, health is served again.
        try await Task.sleep(for: .seconds(3))
        #expect(try operationsGet(port: gateway.operationsPort, path: "/health/live").status == 200)
    }

    @Test("a request whose body stalls gets 408 after the request timeout")
    func requestTimeout() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  request_timeout_seconds: 1\n")
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let response = try await client.startRequest("/v1/whoami", method: .POST, contentLength: 100)
        try await client.sendBody("only part of it", end: false)
        let answer = try await response.get()
        #expect(answer.status == 408)
        #expect(answer.json?["code"]?.stringValue == "request_timeout")
    }

    @Test("request headers over the limit get 431")
    func headerLimit() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  max_header_bytes: 2048\n")
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let response = try await client.request("/v1/whoami", headers: [("x-padding", String(repeating: "p", count: 3000))])
        #expect(response.status == 431)
        #expect(response.json?["code"]?.stringValue == "headers_too_large")
    }

    @Test("a partner that pins its certificate: another valid certificate with its OIN gets 403 certificate_not_pinned")
    func pinning() async throws {
        let policies = temporaryDirectory("ketenpoort-pinned")
        for name in try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Policies") where name.hasSuffix(".yaml") {
            try FileManager.default.copyItem(atPath: packageRoot + "/Policies/" + name, toPath: policies + "/" + name)
        }
        // Pin the Gorinchem team to a fingerprint that is not its development certificate.
        let registry = try String(contentsOfFile: policies + "/partners.yaml", encoding: .utf8).replacingOccurrences(
            of: "    oin: \"00000009900000000102\"",
            with: "    oin: \"00000009900000000102\"\n    certificate_fingerprints: [\"00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff\"]")
        try registry.write(toFile: policies + "/partners.yaml", atomically: true, encoding: .utf8)
        let gateway = try GatewayProcess(policies: policies)
        defer { gateway.stop() }
        let gorinchem = PKIFixture.partner("wijkteam-gorinchem")
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: gorinchem.cert, key: gorinchem.key)
        let response = try await client.request("/v1/whoami")
        #expect(response.status == 403)
        #expect(response.json?["code"]?.stringValue == "certificate_not_pinned")
        // Unpinned partners are unaffected.
        let dordrecht = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await dordrecht.request("/v1/whoami").status == 200)
    }

    @Test("environment variables are held to the file's ranges; an empty CRL variable does not switch revocation off")
    func environmentChecked() throws {
        var configuration = GatewayConfiguration()
        configuration.crlPath = "/etc/ketenpoort/crl.pem"
        try configuration.applyEnvironment(["KETENPOORT_TLS_CRL": ""])
        #expect(configuration.crlPath == "/etc/ketenpoort/crl.pem")
        for (name, value) in [
            ("KETENPOORT_MAX_BODY_BYTES", "10000000000"), ("KETENPOORT_MAX_BODY_BYTES", "100"), ("KETENPOORT_MAX_CONNECTIONS", "2000000"),
            ("KETENPOORT_LOG_LEVEL", "verbose"),
        ] {
            var c = GatewayConfiguration()
            #expect(throws: KetenpoortError(.configuration, ""), "\(name)=\(value)") { try c.applyEnvironment([name: value]) }
        }
        try configuration.applyEnvironment(["KETENPOORT_MAX_BODY_BYTES": "2048", "KETENPOORT_LOG_LEVEL": "debug"])
        #expect(configuration.limits.maxBodyBytes == 2048 && configuration.logLevel == "debug")
    }

    @Test("environment variables override the configuration file")
    func environmentOverride() throws {
        let dir = temporaryDirectory("ketenpoort-env")
        try write(
            """
            listen: 127.0.0.1:0
            ops_listen: 127.0.0.1:0
            policies: \(packageRoot)/Policies
            tls:
              certificate: \(PKIFixture.path("gateway/server.crt"))
              key: \(PKIFixture.path("gateway/server.key"))
              client_ca: \(PKIFixture.path("ca.crt"))
            """, to: dir + "/gateway.yaml")
        let r = try ketenpoort(["serve", "--config", dir + "/gateway.yaml"], environment: ["KETENPOORT_TLS_KEY": "/nonexistent/from-env.key"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("/nonexistent/from-env.key"))
    }
}
