import Foundation
import KetenpoortCore
import Testing

/// The front door: which client certificates the gateway accepts, over real mutual TLS.
@Suite("Mutual TLS at the front door", .serialized)
struct MutualTLSTests {
    let gateway: GatewayProcess

    init() throws {
        gateway = try GatewayProcess()
    }

    /// curl (OpenSSL) with a client certificate; returns curl's exit code, HTTP status and body.
    func curl(_ cert: String?, _ key: String?, path: String = "/v1/whoami", extra: [String] = []) throws -> (exit: Int32, status: Int, body: String) {
        var args = ["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", PKIFixture.path("ca.crt"), "--max-time", "10"]
        if let cert, let key { args += ["--cert", cert, "--key", key] }
        args += extra + ["https://localhost:\(gateway.port)\(path)"]
        let r = try runProcess("curl", args)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (r.status, Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    func handshakeFailures(_ reason: String) throws -> Int {
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        for line in metrics.split(separator: "\n") where line.hasPrefix("ketenpoort_tls_handshake_failures_total{reason=\"\(reason)\"}") {
            return Int(Double(line.split(separator: " ").last ?? "0") ?? 0)
        }
        return 0
    }

    @Test("a registered partner gets 200 with its own identity")
    func validPartner() throws {
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        let r = try curl(cert, key)
        #expect(r.exit == 0)
        #expect(r.status == 200)
        let json = try JSONParser.parse(r.body)
        #expect(json["partner"]?["id"]?.stringValue == "wijkteam-dordrecht")
        #expect(json["partner"]?["oin"]?.stringValue == "00000009900000000101")
        #expect(json["partner"]?["kind"]?.stringValue == "local_team")
        gateway.stop()
    }

    @Test("an officer certificate is recognised as an officer")
    func officer() throws {
        let (cert, key) = PKIFixture.officer("privacy-officer-zhz")
        let r = try curl(cert, key)
        #expect(r.status == 200)
        let json = try JSONParser.parse(r.body)
        #expect(json["officer"]?["id"]?.stringValue == "privacy-officer-zhz")
        #expect(json["officer"]?["role"]?.stringValue == "privacy_officer")
        gateway.stop()
    }

    @Test(
        "bad client certificates are refused in the handshake",
        arguments: [
            ("expired", "certificate_expired"),
            ("not-yet-valid", "certificate_not_yet_valid"),
            ("revoked", "certificate_revoked"),
            ("foreign-ca", "unknown_ca"),
            ("server-auth-only", "invalid_purpose"),
        ])
    func refusedCertificates(name: String, reason: String) throws {
        let before = try handshakeFailures(reason)
        let (cert, key) = PKIFixture.invalid(name)
        let r = try curl(cert, key)
        // TLS 1.3: the client learns of the refusal on its first read (curl 56); TLS 1.2: 35.
        #expect(r.exit == 56 || r.exit == 35, "curl exit \(r.exit), status \(r.status)")
        #expect(r.status == 0)
        #expect(try handshakeFailures(reason) == before + 1)
        gateway.stop()
    }

    @Test("no client certificate: refused with certificate_required")
    func noCertificate() throws {
        let before = try handshakeFailures("certificate_required")
        let r = try curl(nil, nil)
        #expect(r.exit == 56 || r.exit == 35)
        #expect(try handshakeFailures("certificate_required") == before + 1)
        gateway.stop()
    }

    @Test("a valid certificate with an unregistered OIN gets 403 unknown_partner")
    func unknownOIN() throws {
        let (cert, key) = PKIFixture.invalid("unknown-oin")
        let r = try curl(cert, key, extra: ["-D", "-"])
        #expect(r.status == 403)
        #expect(r.body.lowercased().contains("content-type: application/problem+json"))
        let json = try JSONParser.parse(String(r.body[r.body.range(of: "{")!.lowerBound...]))
        #expect(json["code"]?.stringValue == "unknown_partner")
        #expect(json["status"]?.intValue == 403)
        gateway.stop()
    }

    @Test("a partner certificate needs its intermediate: sent with the chain it is accepted, the leaf alone is refused")
    func intermediateChain() throws {
        let (cert, key) = PKIFixture.partner("veilig-thuis-zhz")
        let pem = try String(contentsOfFile: cert, encoding: .utf8)
        // The partner file holds the leaf and then the intermediate; the gateway trusts only the root.
        let blocks = pem.components(separatedBy: "-----END CERTIFICATE-----").filter { $0.contains("BEGIN CERTIFICATE") }
        #expect(blocks.count == 2)
        let leafOnly = temporaryDirectory() + "/leaf.crt"
        try write(blocks[0] + "-----END CERTIFICATE-----\n", to: leafOnly)
        let withChain = try curl(cert, key)
        #expect(withChain.status == 200)
        #expect(try JSONParser.parse(withChain.body)["partner"]?["id"]?.stringValue == "veilig-thuis-zhz")
        let alone = try curl(leafOnly, key)
        #expect(alone.status == 0)
        #expect(alone.exit == 56 || alone.exit == 35)
        gateway.stop()
    }

    @Test("a client offering only TLS 1.1 is refused")
    func tls11Refused() throws {
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        // The client lowers its own security level so that it really offers TLS 1.1.
        let r = try runProcess(
            "openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(gateway.port)", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", PKIFixture.path("ca.crt"),
            ], stdin: "")
        #expect(r.status != 0)
        let output = r.stdout + r.stderr
        #expect(output.contains("alert protocol version") || output.contains("unsupported protocol") || output.contains("wrong version number"))
        #expect(output.contains("Cipher is (NONE)"))
        #expect(try handshakeFailures("protocol_version") >= 1)
        gateway.stop()
    }

    @Test("TLS 1.2 is accepted only with ECDHE and AEAD suites")
    func tls12Suites() throws {
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        let good = try runProcess(
            "openssl",
            ["s_client", "-connect", "127.0.0.1:\(gateway.port)", "-tls1_2", "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", PKIFixture.path("ca.crt")],
            stdin: "")
        #expect(good.stdout.contains("Protocol  : TLSv1.2"))
        #expect(good.stdout.contains("Cipher    : ECDHE-"))
        #expect(good.stdout.contains("GCM") || good.stdout.contains("CHACHA20"))
        #expect(!good.stdout.contains("Cipher is (NONE)"))
        let cbc = try runProcess(
            "openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(gateway.port)", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256",
                "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", PKIFixture.path("ca.crt"),
            ], stdin: "")
        #expect(cbc.status != 0)
        #expect((cbc.stdout + cbc.stderr).contains("handshake failure") || (cbc.stdout + cbc.stderr).contains("no shared cipher"))
        gateway.stop()
    }

    @Test("a second TLS stack (GnuTLS) completes mutual TLS and gets the partner's identity")
    func gnutlsInterop() throws {
        let (cert, key) = PKIFixture.partner("jgz-zhz")
        let r = try runProcess(
            "gnutls-cli",
            [
                "--x509cafile", PKIFixture.path("ca.crt"), "--x509certfile", cert, "--x509keyfile", key, "--port", String(gateway.port),
                "--logfile", "/dev/null", "localhost",
            ], stdin: "GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(r.stdout.contains("HTTP/1.1 200 OK"), "gnutls-cli: \(r.stderr.suffix(400))")
        #expect(r.stdout.contains("\"id\":\"jgz-zhz\""))
        gateway.stop()
    }

    @Test("the server certificate is verified by clients against the CA and the host name")
    func serverVerifiedByClient() async throws {
        let (cert, key) = PKIFixture.partner("wijkteam-dordrecht")
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: cert, key: key, host: "localhost")
        let response = try await client.request("/v1/whoami")
        #expect(response.status == 200)
        #expect(client.handshake.protocolVersion == "TLSv1.3")
        await client.close()
        // The gateway's certificate names localhost and 127.0.0.1, not another host.
        await #expect(throws: (any Error).self) {
            _ = try await TestHTTPSClient.connect(port: gateway.port, cert: cert, key: key, host: "gateway.example.org")
        }
        gateway.stop()
    }
}
