import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import NIOCore
import Testing

/// The running gateway and its audit log: written before answering, refused when it cannot be
/// written, readable by officers, provable to partners.
@Suite("Gateway audit log", .serialized)
struct GatewayAuditTests {
    let ggz = PKIFixture.partner("ggz-zhz")
    let officer = PKIFixture.officer("privacy-officer-zhz")
    // Test-range BSN (999990000–999999999, 11-check).
    let bsn = try! BSN("999990019")

    func token(_ gateway: GatewayProcess) throws -> String {
        let keys = try KeyRing.load(path: gateway.directory + "/keys")
        return try Tokeniser(keys: keys).token(of: bsn.digits, domain: Pseudonymiser.recipientDomain(caseTable: "lokaal-dordrecht", recipient: "ggz-zhz"))
    }

    func reidentify(_ client: TestHTTPSClient, token: String, purpose: String = "handover") async throws -> TestResponse {
        try await client.request(
            "/v1/reidentifications", method: .POST, headers: [("content-type", "application/json")],
            body: #"{"caseTable": "lokaal-dordrecht", "purpose": "\#(purpose)", "token": "\#(token)"}"#)
    }

    @Test("start, re-identification and officer reads: entries before answers, checkpoints for partners, the log verifies, no BSN in the files")
    func loggedBeforeAnswered() async throws {
        let gateway = try GatewayProcess(
            extraConfiguration: "audit:\n  origin: test.ketenpoort.example/audit\n  checkpoint_entries: 2\n", policies: try policiesWithMentalHealthCareStillAMember())
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: ggz.cert, key: ggz.key)
        let token = try token(gateway)
        let answer = try await reidentify(client, token: token)
        #expect(answer.status == 200, "\(answer.body)")
        #expect(answer.json?["value"]?.stringValue == bsn.digits)
        let sequence = try #require(answer.json?["logSequence"]?.intValue)
        #expect(sequence == 2, "entry 1 is the start")

        // Not permitted for this purpose: refused, and nothing re-identified.
        let refused = try await reidentify(client, token: token, purpose: "safety-plan")
        #expect(refused.status == 403)
        #expect(!refused.body.contains(bsn.digits))
        // Partners read tree heads and the public key, not entries.
        let checkpoint = try await client.request("/v1/audit/checkpoint")
        #expect(checkpoint.status == 200)
        #expect(checkpoint.body.hasPrefix("test.ketenpoort.example/audit\n"))
        let publicKey = try await client.request("/v1/audit/public-key")
        #expect(publicKey.status == 200)
        #expect(try await client.request("/v1/audit/entries").status == 403)
        await client.close()

        let officerClient = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        let entries = try await officerClient.request("/v1/audit/entries")
        #expect(entries.status == 200)
        let items = entries.json?["items"]?.arrayValue ?? []
        #expect(items.map { $0["kind"]?.stringValue } == ["policy-reloaded", "re-identification"])
        #expect(items[1]["sender"]?.stringValue == "ggz-zhz")
        #expect(items[1]["subjects"]?.arrayValue?.first?.stringValue?.hasPrefix("ps1.") == true)
        let filtered = try await officerClient.request("/v1/audit/entries?kind=re-identification&limit=1")
        #expect(filtered.json?["items"]?.arrayValue?.count == 1)
        #expect(try await officerClient.request("/v1/audit/entries?kind=nonsense").status == 422)
        // Times are compared as the log writes them: a day or a UTC time; anything else is refused.
        for bad in ["from=abc", "from=2026-02-30", "from=2026-06-01T12:00:00%2B02:00", "until=yesterday", "decision=maybe", "basisType=x"] {
            #expect(try await officerClient.request("/v1/audit/entries?\(bad)").status == 422, "\(bad)")
        }
        for good in ["from=2020-01-01", "until=2999-01-01T00:00:00Z", "from=2020-01-01T00:00:00.000Z&decision=permit"] {
            #expect(try await officerClient.request("/v1/audit/entries?\(good)").status == 200, "\(good)")
        }
        #expect(try await officerClient.request("/v1/audit/entries?from=2020-01-01").json?["items"]?.arrayValue?.count == 2)
        let proof = try await officerClient.request("/v1/audit/entries/2/proof")
        #expect(proof.status == 200)
        let consistency = try await officerClient.request("/v1/audit/consistency?from=1&to=2")
        #expect(consistency.status == 200)
        await officerClient.close()

        // A partner verifies the proof with only the public key.
        let dir = gateway.directory
        try write(proof.body, to: dir + "/proof.json")
        try write(publicKey.body, to: dir + "/log.pub")
        try write(checkpoint.body, to: dir + "/kept-checkpoint")
        let checked = try ketenpoort(["log", "verify-proof", "--proof", dir + "/proof.json", "--public-key", dir + "/log.pub"])
        #expect(checked.status == 0, "\(checked.stdout)\(checked.stderr)")
        try write(proof.body.replacingOccurrences(of: "ggz-zhz", with: "jgz-zhz"), to: dir + "/forged.json")
        let forged = try ketenpoort(["log", "verify-proof", "--proof", dir + "/forged.json", "--public-key", dir + "/log.pub"])
        #expect(forged.status == 1, "\(forged.stdout)\(forged.stderr)")
        #expect(gateway.stop() == 0)

        let verified = try ketenpoort(["log", "verify", "--db", dir + "/ketenpoort.db", "--public-key", dir + "/log.pub", "--checkpoint", dir + "/kept-checkpoint"])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("2 entries verified"))
        // The subject report finds the re-identification's subject only by the BSN on stdin.
        let query = try ketenpoort(["log", "query", "--db", dir + "/ketenpoort.db", "--keys", dir + "/keys", "--subject-stdin", "--json"], stdin: bsn.digits + "\n")
        #expect(query.status == 0, "\(query.stderr)")
        #expect(query.stdout.contains("\"kind\":\"re-identification\""))
        #expect(!query.stdout.contains(bsn.digits))
        let badBSN = try ketenpoort(["log", "query", "--db", dir + "/ketenpoort.db", "--keys", dir + "/keys", "--subject-stdin"], stdin: "999990018\n")
        #expect(badBSN.status == 2)
        #expect(!badBSN.stderr.contains("999990018"))
        // One person per query: a second BSN is refused, not ignored.
        let two = try ketenpoort(["log", "query", "--db", dir + "/ketenpoort.db", "--keys", dir + "/keys", "--subject-stdin"], stdin: bsn.digits + "\n999990020\n")
        #expect(two.status == 2 && two.stderr.contains("holds 2 lines") && !two.stderr.contains("999990020"), "\(two.stderr)")
        // No BSN in clear in any database file.
        #expect(textsInDatabase(dir + "/ketenpoort.db", [bsn.digits]).isEmpty, "BSN found in the database")
    }

    @Test("a partner that has left the table gets no token re-identified, though the route names it (the example region: mental-health care left on 2026-06-30)")
    func formerMemberRefused() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: ggz.cert, key: ggz.key)
        let refused = try await reidentify(client, token: try token(gateway))
        #expect(refused.status == 403 && refused.json?["code"]?.stringValue == "forbidden", "\(refused.body)")
        #expect(!refused.body.contains(bsn.digits))
        await client.close()
    }

    @Test("a log that cannot be written (file size limit): 503 audit_unavailable, /health not ready, nothing re-identified; ready again without a request once writable")
    func failClosed() async throws {
        let gateway = try GatewayProcess(policies: try policiesWithMentalHealthCareStillAMember())
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: ggz.cert, key: ggz.key)
        let token = try token(gateway)
        #expect(try await reidentify(client, token: token).status == 200)

        // Every write past the first byte of a file now fails with EFBIG (a full disk).
        let limit = try runProcess("/usr/bin/prlimit", ["--pid", String(gateway.pid), "--fsize=1:unlimited"])
        #expect(limit.status == 0, "\(limit.stderr)")
        for _ in 0..<3 {
            let refused = try await reidentify(client, token: token)
            #expect(refused.status == 503)
            #expect(refused.json?["code"]?.stringValue == "audit_unavailable")
            #expect(!refused.body.contains(bsn.digits))
        }
        let health = try operationsGet(port: gateway.operationsPort, path: "/health")
        #expect(health.status == 503)
        #expect(try JSONParser.parse(health.body)["checks"]?["audit_log"]?.boolValue == false)
        let metrics = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
        #expect(metrics.contains("ketenpoort_audit_write_failures_total 3"), "\(metrics)")

        func auditReady() throws -> Bool? {
            try JSONParser.parse(try operationsGet(port: gateway.operationsPort, path: "/health").body)["checks"]?["audit_log"]?.boolValue
        }
        // The writer probes with a real row once a second: while writes still fail, it stays
        // not ready (an empty commit would have passed).
        try await Task.sleep(for: .seconds(2.5))
        #expect(try auditReady() == false)

        // Writable again: ready again without any request (a not-ready instance gets none).
        _ = try runProcess("/usr/bin/prlimit", ["--pid", String(gateway.pid), "--fsize=unlimited:unlimited"])
        var recovered = false
        for _ in 0..<50 where !recovered {
            try await Task.sleep(for: .milliseconds(100))
            recovered = try auditReady() == true
        }
        #expect(recovered, "still not ready 5 s after the log became writable")
        let again = try await reidentify(client, token: token)
        #expect(again.status == 200, "\(gateway.stderr)")
        #expect(try JSONParser.parse(try operationsGet(port: gateway.operationsPort, path: "/health").body)["checks"]?["audit_log"]?.boolValue == true)
        await client.close()
        #expect(gateway.stop() == 0)
        // Entries: the start and two re-identifications; none of the refused ones.
        let verified = try ketenpoort(["log", "verify", "--db", gateway.directory + "/ketenpoort.db", "--keys", gateway.directory + "/keys"])
        #expect(verified.stdout.contains("3 entries verified"), "\(verified.stdout)\(verified.stderr)")
    }

    @Test("a read-only log file, or a full disk at start, stops the start with one line, exit 2")
    func unwritableAtStart() throws {
        let dir = temporaryDirectory("ketenpoort-readonly")
        let db = dir + "/ketenpoort.db"
        _ = try ketenpoort(["log", "append-load", "--db", db, "--count", "1"])
        try FileManager.default.setAttributes([.posixPermissions: 0o400], ofItemAtPath: db)
        try FileManager.default.setAttributes([.posixPermissions: 0o500], ofItemAtPath: dir)
        defer { try? FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir) }
        let keys = NSTemporaryDirectory() + "ro-keys-\(UUID().uuidString.prefix(6))"
        try MasterKeyFile.create(path: keys)
        let config = NSTemporaryDirectory() + "ro-\(UUID().uuidString.prefix(6)).yaml"
        try write(
            """
            listen: 127.0.0.1:0
            ops_listen: 127.0.0.1:0
            policies: \(packageRoot)/Policies
            database: \(db)
            keys: \(keys)
            tls:
              certificate: \(PKIFixture.path("gateway/server.crt"))
              key: \(PKIFixture.path("gateway/server.key"))
              client_ca: \(PKIFixture.path("ca.crt"))
            """, to: config)
        let r = try ketenpoort(["serve", "--config", config])
        #expect(r.status == 2, "\(r.stdout)\(r.stderr)")
        #expect(r.stderr.contains("audit log"))
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(!r.stdout.contains("ready:"))

        // A full disk at start: the first entry cannot be written.
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: db)
        let full = try runProcess("/usr/bin/prlimit", ["--fsize=1:unlimited", ketenpoortBinary, "serve", "--config", config])
        #expect(full.status == 2, "\(full.stdout)\(full.stderr)")
        #expect(full.stderr.contains("audit log"), "\(full.stderr)")
        #expect(!full.stdout.contains("ready:"))
    }

    @Test("a policy reload is in force only once the log records it")
    func reloadIsLogged() async throws {
        let policies = temporaryDirectory("ketenpoort-policies")
        for name in try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Policies") where name.hasSuffix(".yaml") || name.hasSuffix(".json") {
            try FileManager.default.copyItem(atPath: packageRoot + "/Policies/" + name, toPath: policies + "/" + name)
        }
        let gateway = try GatewayProcess(policies: policies)
        defer { gateway.stop() }
        let before = try JSONParser.parse(try operationsGet(port: gateway.operationsPort, path: "/health").body)["policy_version"]?.stringValue
        let file = policies + "/zvh-zhz.yaml"
        try (String(contentsOfFile: file, encoding: .utf8) + "\n# changed\n").write(toFile: file, atomically: true, encoding: .utf8)
        gateway.signal(SIGHUP)
        var after = before
        for _ in 0..<50 where after == before {
            try await Task.sleep(for: .milliseconds(100))
            after = try JSONParser.parse(try operationsGet(port: gateway.operationsPort, path: "/health").body)["policy_version"]?.stringValue
        }
        #expect(after != before)
        #expect(gateway.stop() == 0)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "policy-reloaded"])
        let lines = export.stdout.split(separator: "\n").compactMap { try? JSONParser.parse(String($0)) }
        #expect(lines.map { $0["reason"]?.stringValue } == ["startup", "reload"])
        #expect(lines.last?["policyVersion"]?.stringValue == after)
        #expect(lines.last?["previousPolicyVersion"]?.stringValue == before)
    }
}

/// `ketenpoort demo` end to end: the log it writes holds no BSN it was given.
@Suite("Demo run: no personal data in the database files")
struct DemoPersonalDataTests {
    /// Runs `ketenpoort demo` in `dir` and waits for its scenario to end.
    func runDemo(in dir: String) async throws -> GatewayProcess {
        let demo = try GatewayProcess(
            directory: dir, configPath: dir + "/gateway.yaml",
            arguments: ["demo", "--dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--policies", try policiesWithMentalHealthCareStillAMember()])
        for _ in 0..<300 where !demo.stdout.contains("scenario: done") && !demo.stdout.contains("scenario: stopped") {
            try await Task.sleep(for: .milliseconds(100))
        }
        return demo
    }

    @Test("after a demo run (its scenario, and re-identifications of test BSNs), no BSN, name or free text is in ketenpoort.db, -wal or -shm")
    func demoDatabaseHoldsNoBSN() async throws {
        let dir = temporaryDirectory("ketenpoort-demo-run")
        let demo = try await runDemo(in: dir)
        defer { demo.stop() }
        #expect(demo.stdout.contains("scenario: done"), "\(demo.stdout)")
        #expect(demo.stdout.contains("→ 403 exchange_denied"))
        // Test-range BSNs (999990000–999999999, 11-check): the scenario's, and more handed to the demo as tokens.
        let bsns = ["999990019", "999990020", "999990032"]
        let keys = try KeyRing.load(path: dir + "/keys")
        let tokeniser = Tokeniser(keys: keys)
        let pki = dir + "/pki/partners/ggz-zhz"
        let client = try await TestHTTPSClient.connect(port: demo.port, cert: pki + ".crt", key: pki + ".key", ca: dir + "/pki/ca.crt")
        for bsn in bsns {
            let token = try tokeniser.token(of: bsn, domain: Pseudonymiser.recipientDomain(caseTable: "lokaal-dordrecht", recipient: "ggz-zhz"))
            let answer = try await client.request(
                "/v1/reidentifications", method: .POST, headers: [("content-type", "application/json")],
                body: #"{"caseTable": "lokaal-dordrecht", "purpose": "handover", "token": "\#(token)"}"#)
            #expect(answer.status == 200, "\(answer.body)")
        }
        await client.close()
        #expect(demo.stop() == 0)
        var scanned = 0
        for suffix in ["", "-wal", "-shm"] {
            guard let data = FileManager.default.contents(atPath: dir + "/ketenpoort.db" + suffix) else { continue }
            scanned += data.count
            for secret in bsns + ["Demo Kind", "astma", "blauwe plekken", "geweld thuis", "formulier toestemming"] {
                #expect(data.range(of: Data(secret.utf8)) == nil, "`\(secret)` in ketenpoort.db\(suffix)")
            }
        }
        #expect(scanned > 0)
        let verified = try ketenpoort(["log", "verify", "--db", dir + "/ketenpoort.db", "--keys", dir + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("entries verified"), "\(verified.stdout)")

        // A later run keeps the PKI but issues fresh CRLs (they run 30 days; lapsed, every
        // partner would be refused), and its scenario still completes.
        let crlBefore = try String(contentsOfFile: dir + "/pki/crl.pem", encoding: .utf8)
        let again = try await runDemo(in: dir)
        defer { again.stop() }
        #expect(again.stdout.contains("scenario: done"), "\(again.stdout.suffix(400))")
        #expect(try String(contentsOfFile: dir + "/pki/crl.pem", encoding: .utf8) != crlBefore, "fresh CRLs")
        #expect(try String(contentsOfFile: dir + "/pki/ca.crt", encoding: .utf8).isEmpty == false)
    }
}
