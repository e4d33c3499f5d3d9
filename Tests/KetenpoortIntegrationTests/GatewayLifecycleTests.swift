import Foundation
import KetenpoortCore
import NIOCore
import Testing

/// Reload, shutdown, limits and timeouts of a running gateway process.
@Suite("Gateway lifecycle and limits", .serialized)
struct GatewayLifecycleTests {
    let partner = PKIFixture.partner("wijkteam-dordrecht")

    /// A copy of the gateway's server certificate and key that a test may replace.
    func ownServerCertificate() throws -> (dir: String, cert: String, key: String) {
        let dir = temporaryDirectory("ketenpoort-rotate")
        let cert = dir + "/server.crt"
        let key = dir + "/server.key"
        try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.crt"), toPath: cert)
        try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.key"), toPath: key)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
        return (dir, cert, key)
    }

    func tlsSection(cert: String, key: String) -> String {
        """
        tls:
          certificate: \(cert)
          key: \(key)
          client_ca: \(PKIFixture.path("ca.crt"))
          crl: \(PKIFixture.path("crl.pem"))
        """
    }

    @Test("SIGHUP picks up a rotated server certificate while an established connection keeps working")
    func rotationOnSIGHUP() async throws {
        let own = try ownServerCertificate()
        let gateway = try GatewayProcess(tlsSection: tlsSection(cert: own.cert, key: own.key))
        defer { gateway.stop() }
        let established = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let oldFingerprint = try #require(established.handshake.peerCertificate?.fingerprintSHA256)
        #expect(try await established.request("/v1/whoami").status == 200)

        // Issue a new server certificate and move it into place, then SIGHUP.
        let fresh = try PKIFixture.issue(
            subject: "/CN=localhost", extensions: "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            into: own.dir, name: "rotated")
        try FileManager.default.removeItem(atPath: own.cert)
        try FileManager.default.removeItem(atPath: own.key)
        try FileManager.default.copyItem(atPath: fresh.cert, toPath: own.cert)
        try FileManager.default.copyItem(atPath: fresh.key, toPath: own.key)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: own.key)
        gateway.signal(SIGHUP)

        var newFingerprint = oldFingerprint
        for _ in 0..<50 where newFingerprint == oldFingerprint {
            try await Task.sleep(for: .milliseconds(100))
            let probe = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
            newFingerprint = probe.handshake.peerCertificate?.fingerprintSHA256 ?? ""
            #expect(try await probe.request("/v1/whoami").status == 200)
            await probe.close()
        }
        #expect(newFingerprint != oldFingerprint)
        // The connection made before the reload still works.
        #expect(try await established.request("/v1/whoami").status == 200)
        await established.close()
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_tls_reloads_total{result=\"ok\"} 1"))
    }

    @Test("a bad new certificate on SIGHUP keeps the old context and counts a failed reload")
    func badReloadKeepsOldContext() async throws {
        let own = try ownServerCertificate()
        let gateway = try GatewayProcess(tlsSection: tlsSection(cert: own.cert, key: own.key))
        defer { gateway.stop() }
        try write("not a certificate\n", to: own.cert)
        gateway.signal(SIGHUP)
        #expect(try await gateway.metricsEventuallyContain("ketenpoort_tls_reloads_total{result=\"failed\"} 1"))
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await client.request("/v1/whoami").status == 200)
        await client.close()
        #expect(gateway.stderr.contains("tls reload failed"))
    }

    @Test("SIGTERM lets a request in flight finish, then exits 0")
    func gracefulShutdown() async throws {
        let gateway = try GatewayProcess()
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        // Start a request whose body arrives slowly, so it is in flight when SIGTERM comes.
        let body = String(repeating: "x", count: 64)
        let response = try await client.startRequest("/v1/whoami", method: .POST, contentLength: body.count)
        try await client.sendBody(String(body.prefix(32)), end: false)
        try await Task.sleep(for: .milliseconds(200))
        gateway.signal(SIGTERM)
        try await Task.sleep(for: .milliseconds(300))
        // New connections are no longer accepted...
        await #expect(throws: (any Error).self) {
            let late = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
            _ = try await late.request("/v1/whoami")
        }
        // ...while the request in flight completes (405: whoami is GET only) with `connection: close`.
        try await client.sendBody(String(body.suffix(32)), end: true)
        let answer = try await response.get()
        #expect(answer.status == 405)
        #expect(answer.headers.first(name: "connection") == "close")
        let status = gateway.stop()
        #expect(status == 0)
    }

    @Test("a body over the limit gets 413 payload_too_large")
    func bodyLimit() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  max_body_bytes: 4096\n")
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let response = try await client.request("/v1/whoami", method: .POST, headers: [("content-type", "application/json")], body: String(repeating: "a", count: 5000))
        #expect(response.status == 413)
        #expect(response.json?["code"]?.stringValue == "payload_too_large")
        #expect(response.headers.first(name: "content-type") == "application/problem+json")
    }

    @Test("a client that trickles its header is dropped after the header timeout")
    func slowHeaderDropped() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  header_timeout_seconds: 1\n")
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let started = Date()
        try await client.writeRaw("GET /v1/whoami HTTP/1.1\r\n")
        var dropped = false
        for _ in 0..<30 where !dropped {
            try await Task.sleep(for: .milliseconds(200))
            if client.isActive { try? await client.writeRaw("X-Slow: 1\r\n") } else { dropped = true }
        }
        #expect(dropped)
        #expect(Date().timeIntervalSince(started) >= 0.9)
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_slow_clients_dropped_total 1"))
    }

    @Test("connections beyond the maximum are closed at once")
    func maximumConnections() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  max_connections: 2\n")
        defer { gateway.stop() }
        let first = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let second = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await first.request("/v1/whoami").status == 200)
        #expect(try await second.request("/v1/whoami").status == 200)
        await #expect(throws: (any Error).self) {
            let third = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
            _ = try await third.request("/v1/whoami")
        }
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_connections_rejected_total 1"))
        await first.close()
        await second.close()
    }

    @Test("/health is ready and /metrics counts requests by route and status")
    func operationsEndpoints() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let health = try operationsGet(port: gateway.operationsPort, path: "/health")
        #expect(health.status == 200)
        #expect(try JSONParser.parse(health.body)["status"]?.stringValue == "ready")
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await client.request("/v1/whoami").status == 200)
        #expect(try await client.request("/v1/nothing-here/999990019").status == 404)
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_http_requests_total{route=\"/v1/whoami\",status=\"200\"} 1"))
        #expect(metrics.contains("ketenpoort_http_requests_total{route=\"unknown\",status=\"404\"} 1"))
        #expect(metrics.contains("ketenpoort_open_connections 1"))
        // A path (with a BSN in it) never becomes a label.
        #expect(!metrics.contains("999990019"))
        await client.close()
    }
}


@Suite("HTTP/1.1 details")
struct HTTPDetailsTests {
    @Test("pipelined requests are answered in order on one connection")
    func pipelining() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        // Two requests in one write; openssl s_client keeps the connection and prints both answers.
        let request = "GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\nGET /v1/unknown HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        let r = try runProcess(
            "openssl", ["s_client", "-quiet", "-ign_eof", "-connect", "127.0.0.1:\(gateway.port)", "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", PKIFixture.path("ca.crt")],
            stdin: request)
        let first = try #require(r.stdout.range(of: "HTTP/1.1 200 OK"))
        let second = try #require(r.stdout.range(of: "HTTP/1.1 404 Not Found"))
        #expect(first.lowerBound < second.lowerBound)
        #expect(r.stdout.contains("\"id\":\"wijkteam-dordrecht\""))
    }
}

@Suite("Policy hot reload")
struct PolicyReloadTests {
    func copyPolicies() throws -> String {
        let dir = temporaryDirectory("ketenpoort-policies")
        for name in try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Policies") where name.hasSuffix(".yaml") {
            try FileManager.default.copyItem(atPath: packageRoot + "/Policies/" + name, toPath: dir + "/" + name)
        }
        return dir
    }

    func version(_ gateway: GatewayProcess) throws -> String {
        try JSONParser.parse(operationsGet(port: gateway.operationsPort, path: "/health").body)["policy_version"]?.stringValue ?? ""
    }

    func metric(_ gateway: GatewayProcess, _ line: String) throws -> Bool {
        try operationsGet(port: gateway.operationsPort, path: "/metrics").body.contains(line)
    }

    @Test("an invalid new policy set keeps the old one and counts a failed reload; a valid one is swapped in")
    func reload() async throws {
        let policies = try copyPolicies()
        let gateway = try GatewayProcess(policies: policies)
        defer { gateway.stop() }
        let original = try version(gateway)
        #expect(original.hasPrefix("sha256:"))

        // Break a case table: the directory watcher (or SIGHUP) tries it and keeps the old set.
        let table = policies + "/mda-zhz.yaml"
        let text = try String(contentsOfFile: table, encoding: .utf8)
        try (text + "\n  - id: broken-route\n    from: [kind:nobody]\n").write(toFile: table, atomically: true, encoding: .utf8)
        gateway.signal(SIGHUP)
        var failed = false
        for _ in 0..<50 where !failed {
            try await Task.sleep(for: .milliseconds(100))
            failed = try metric(gateway, "ketenpoort_policy_reloads_total{result=\"failed\"}") && !(try metric(gateway, "ketenpoort_policy_reloads_total{result=\"failed\"} 0"))
        }
        #expect(failed)
        #expect(try version(gateway) == original)
        #expect(gateway.stderr.contains("policy reload failed"))
        #expect(gateway.stderr.contains("mda-zhz.yaml:"))

        // A valid change: a new label. The watcher notices the directory change by itself.
        try text.replacingOccurrences(of: "name: MDA++ Zuid-Holland Zuid", with: "name: MDA++ ZHZ").write(toFile: table, atomically: true, encoding: .utf8)
        var swapped = false
        for _ in 0..<100 where !swapped {
            try await Task.sleep(for: .milliseconds(100))
            swapped = try version(gateway) != original
        }
        #expect(swapped)
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: cert, key: key)
        #expect(try await client.request("/v1/whoami").status == 200)
        await client.close()
    }

    @Test("a gateway does not start on an invalid policy set")
    func invalidAtStart() throws {
        let policies = try copyPolicies()
        try "case_table: x\n".write(toFile: policies + "/x.yaml", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { _ = try GatewayProcess(policies: policies) }
    }
}

@Suite("Malformed HTTP")
struct MalformedHTTPTests {
    @Test("a request that is not valid HTTP/1.1 gets 400 problem+json and the connection closes")
    func badRequest() throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        let r = try runProcess(
            "openssl",
            ["s_client", "-quiet", "-ign_eof", "-connect", "127.0.0.1:\(gateway.port)", "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", PKIFixture.path("ca.crt")],
            stdin: "GET /v1/whoami HTTP/1.1\r\nHost localhost\r\n\r\n")
        #expect(r.stdout.contains("HTTP/1.1 400 Bad Request"))
        #expect(r.stdout.contains("application/problem+json"))
        #expect(r.stdout.contains("\"code\":\"invalid_request\""))
        #expect(r.stdout.contains("connection: close"))
    }
}
