import Foundation
import KetenpoortCore
import NIOCore
import Testing

/// Push delivery to a partner endpoint over mutual TLS, retried across a gateway restart.
@Suite("Push delivery", .serialized)
struct PushDeliveryTests {
    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let vt = PKIFixture.partner("veilig-thuis-zhz")

    func freePort() throws -> Int {
        let r = try runProcess("/usr/bin/python3", ["-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"])
        return Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// The example policies with a delivery endpoint for Veilig Thuis.
    func policies(endpoint: String) throws -> String {
        let dir = temporaryDirectory("ketenpoort-push-policies")
        for name in try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Policies") where name.hasSuffix(".yaml") || name.hasSuffix(".json") {
            var text = try String(contentsOfFile: packageRoot + "/Policies/" + name, encoding: .utf8)
            if name == "partners.yaml" {
                text = text.replacingOccurrences(of: "    kind: veilig_thuis\n", with: "    kind: veilig_thuis\n    delivery_endpoint: \(endpoint)\n")
            }
            try write(text, to: dir + "/" + name)
        }
        return dir
    }

    func startReceiver(port: Int, out: String, failures: Int = 0, delay: Double = 0) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            packageRoot + "/scripts/push_receiver.py", String(port), PKIFixture.path("gateway/server.crt"), PKIFixture.path("gateway/server.key"),
            PKIFixture.path("ca.crt"), out, String(failures), String(delay),
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait for "listening".
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if String(decoding: drainWithoutBlocking(pipe.fileHandleForReading), as: UTF8.self).contains("listening") { break }
            usleep(50_000)
        }
        return process
    }

    static let safetyReport = """
        {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
         "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1",
                   "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
         "subjects": [{"bsn": "999990019", "role": "child", "age": 9}], "data": {"identity": {"bsn": "999990019"}, "concern_signal": {"summary": "zorgen"}}}
        """

    @Test("a partner whose endpoint fails costs one attempt per backoff: its other items, also later ones, wait with it, untried, and are not lost")
    func failingEndpointTriedOncePerRound() async throws {
        let port = try freePort()  // nobody listens: every push fails
        let clientTLS = "client_tls:\n  certificate: \(PKIFixture.path("gateway/client.crt"))\n  key: \(PKIFixture.path("gateway/client.key"))\n"
        let gateway = try GatewayProcess(extraConfiguration: clientTLS, policies: try policies(endpoint: "https://localhost:\(port)/ketenpoort/inbox"))
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        var ids: [String] = []
        for i in 0..<3 {
            // The later items become due in later rounds (every 0.5 s), while the first waits out
            // its backoff: they wait with it, untried.
            if i > 0 { try await Task.sleep(for: .milliseconds(700)) }
            let r = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: Self.safetyReport)
            #expect(r.status == 201, "\(r.body)")
            ids.append(try #require(r.json?["exchangeId"]?.stringValue))
        }
        func attempts(_ id: String) async throws -> Int { try await team.request("/v1/exchanges/\(id)").json?["delivery"]?["pushAttempts"]?.intValue ?? -1 }
        // Several rounds (every 0.5 s; backoff 1 s, 2 s …) against the dead endpoint.
        try await Task.sleep(for: .seconds(3.5))
        #expect(try await attempts(ids[0]) >= 2, "the first item is retried")
        #expect(try await attempts(ids[1]) == 0, "the others wait with it")
        #expect(try await attempts(ids[2]) == 0)
        // Still there for the recipient to pull.
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.count == 3)
        await vtClient.close()
        await team.close()
    }

    @Test("an endpoint that is down is retried with backoff; after a gateway restart the item is pushed once, with the gateway's certificate, then erased")
    func retriedAcrossRestart() async throws {
        let port = try freePort()
        let received = temporaryDirectory("ketenpoort-push") + "/received.jsonl"
        let clientTLS = "client_tls:\n  certificate: \(PKIFixture.path("gateway/client.crt"))\n  key: \(PKIFixture.path("gateway/client.key"))\n"
        let gateway = try GatewayProcess(extraConfiguration: clientTLS, policies: try policies(endpoint: "https://localhost:\(port)/ketenpoort/inbox"))
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1",
                       "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
             "subjects": [{"bsn": "999990019", "role": "child", "age": 9}], "data": {"identity": {"bsn": "999990019"}, "concern_signal": {"summary": "zorgen"}}}
            """)
        #expect(report.status == 201, "\(report.body)")
        let id = try #require(report.json?["exchangeId"]?.stringValue)
        // Nobody listens yet: attempts are counted, the item waits.
        var attempts = 0
        for _ in 0..<40 where attempts < 1 {
            try await Task.sleep(for: .milliseconds(100))
            attempts = try await team.request("/v1/exchanges/\(id)").json?["delivery"]?["pushAttempts"]?.intValue ?? 0
        }
        #expect(attempts >= 1)
        await team.close()
        #expect(gateway.stop() == 0)

        // The endpoint comes up (answering 503 once), the gateway restarts: the push is retried and lands.
        let receiver = try startReceiver(port: port, out: received, failures: 1)
        defer {
            kill(receiver.processIdentifier, SIGKILL)
            receiver.waitUntilExit()
        }
        let again = try GatewayProcess(directory: gateway.directory, configPath: gateway.configPath, arguments: ["serve", "--config", gateway.configPath])
        defer { again.stop() }
        var lines: [String] = []
        for _ in 0..<150 where lines.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            lines = ((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        #expect(lines.count == 1, "\(again.stderr.suffix(500))")
        let pushed = try JSONParser.parse(try #require(lines.first))
        #expect(pushed["path"]?.stringValue == "/ketenpoort/inbox")
        #expect(pushed["oin"]?.stringValue == "00000009900000000001", "the gateway's client certificate")
        #expect(pushed["body"]?["exchangeId"]?.stringValue == id)
        #expect(pushed["body"]?["data"]?["identity"]?["bsn"]?.stringValue == "999990019")
        let teamAgain = try await TestHTTPSClient.connect(port: again.port, cert: wijkteam.cert, key: wijkteam.key)
        let state = try await teamAgain.request("/v1/exchanges/\(id)")
        #expect(state.json?["delivery"]?["state"]?.stringValue == "acknowledged")
        #expect(state.json?["delivery"]?["pushedAt"]?.stringValue != nil)
        let vtClient = try await TestHTTPSClient.connect(port: again.port, cert: vt.cert, key: vt.key)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.isEmpty == true)
        await teamAgain.close()
        await vtClient.close()
        // Pushed once only.
        try await Task.sleep(for: .milliseconds(1500))
        #expect(((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").count == 1)
    }

    @Test("SIGHUP swaps in a renewed push client certificate: the next push carries it")
    func clientCertificateReloadedOnSIGHUP() async throws {
        let port = try freePort()
        let dir = temporaryDirectory("ketenpoort-push-client")
        let received = dir + "/received.jsonl"
        func install(oin: String, name: String) throws {
            let issued = try PKIFixture.issue(subject: "/CN=ketenpoort-gateway/serialNumber=\(oin)", extensions: "extendedKeyUsage=clientAuth\n", into: dir, name: name)
            for (from, to) in [(issued.cert, dir + "/client.crt"), (issued.key, dir + "/client.key")] {
                try? FileManager.default.removeItem(atPath: to)
                try FileManager.default.copyItem(atPath: from, toPath: to)
            }
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: dir + "/client.key")
        }
        try install(oin: "00000009900000000001", name: "first")
        let receiver = try startReceiver(port: port, out: received)
        defer {
            kill(receiver.processIdentifier, SIGKILL)
            receiver.waitUntilExit()
        }
        let clientTLS = "client_tls:\n  certificate: \(dir)/client.crt\n  key: \(dir)/client.key\n"
        let gateway = try GatewayProcess(extraConfiguration: clientTLS, policies: try policies(endpoint: "https://localhost:\(port)/ketenpoort/inbox"))
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        func pushedOINs(count: Int) async throws -> [String?] {
            var lines: [String] = []
            for _ in 0..<100 where lines.count < count {
                try await Task.sleep(for: .milliseconds(100))
                lines = ((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            }
            return try lines.map { try JSONParser.parse($0)["oin"]?.stringValue }
        }
        #expect(try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: Self.safetyReport).status == 201)
        #expect(try await pushedOINs(count: 1) == ["00000009900000000001"])

        // A renewed certificate (here with another serialNumber, so the receiver can tell them apart).
        try install(oin: "00000009900000000077", name: "renewed")
        gateway.signal(SIGHUP)
        #expect(try await gateway.metricsEventuallyContain("ketenpoort_tls_reloads_total{result=\"ok\"} 1"))
        #expect(try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: Self.safetyReport).status == 201)
        #expect(try await pushedOINs(count: 2) == ["00000009900000000001", "00000009900000000077"])

        // A broken renewal keeps the working certificate and counts a failed reload.
        try "not a certificate".write(toFile: dir + "/client.crt", atomically: true, encoding: .utf8)
        gateway.signal(SIGHUP)
        #expect(try await gateway.metricsEventuallyContain("ketenpoort_tls_reloads_total{result=\"failed\"} 1"))
        #expect(try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: Self.safetyReport).status == 201)
        #expect(try await pushedOINs(count: 3).last == "00000009900000000077")
        await team.close()
    }
}
