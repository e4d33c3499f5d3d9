import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import NIOCore
import Synchronization
import Testing

/// The PostgreSQL backend against a real server (Debian's postgresql, started by the test on a
/// loopback port as an unprivileged user and stopped by its PID): the audit log shared by two
/// writers, schema migrations on both backends, two gateway processes on one database.
@Suite("PostgreSQL backend: one log for several gateways", .serialized)
struct PostgresBackendTests {
    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let vt = PKIFixture.partner("veilig-thuis-zhz")

    static func keys() throws -> LogKeys {
        try LogKeys(keys: try KeyRing(keys: [("k1", Crypto.sha256(Array("postgres test key".utf8)))]), origin: "test.ketenpoort.example/audit")
    }

    @Test("two writers (two connections, as two instances) append to one PostgreSQL log: one gapless chain, one tree, every checkpoint verifies")
    func twoWritersOneChain() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let url = try server.createDatabase("twowriters")
        let settings = PostgresSettings(url: url, passwordFile: server.passwordFile)
        let keys = try Self.keys()
        let a = try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer, schedule: CheckpointSchedule(entries: 50, seconds: 3_600))
        let b = try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer, schedule: CheckpointSchedule(entries: 50, seconds: 3_600))
        let sequences = IDList()
        let logs = UncheckedBox([a, b])
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<16 {
                group.addTask {
                    let log = logs.value[writer % 2]
                    for i in 0..<25 {
                        let record = AuditRecord(kind: "policy-reloaded", members: [("writer", .number(Double(writer))), ("n", .number(Double(i)))], subjects: ["ps1.test\(writer)"])
                        if let sequence = try? await log.append(record) { sequences.append(String(sequence)) }
                    }
                }
            }
        }
        a.close()
        b.close()
        let numbered = sequences.all.compactMap { Int64($0) }.sorted()
        #expect(numbered == Array(1...400), "every append numbered once, no gaps")

        let store = try PostgresAuditStore(settings: settings, readOnly: true)
        var leaves: [[UInt8]] = []
        var times: [String] = []
        try store.entries(matching: AuditQuery()) { leaves.append($0.leafHash); times.append($0.time); return true }
        #expect(leaves.count == 400)
        // Each writer reads the clock under the lock: times follow sequence order across writers.
        #expect(times == times.sorted())
        let checkpoints = try store.checkpoints()
        #expect(checkpoints.count >= 8)
        let tree = StoredTree(store: store)
        for c in checkpoints {
            #expect(c.rootHash == MerkleTree.root(leaves[0..<Int(c.treeSize)]))
            let proof = try tree.inclusionProof(index: c.treeSize - 1, treeSize: c.treeSize)
            #expect(MerkleTree.verifyInclusion(leafHash: leaves[Int(c.treeSize - 1)], index: Int(c.treeSize - 1), treeSize: Int(c.treeSize), proof: proof, root: c.rootHash))
        }
        var subjectQuery = AuditQuery()
        subjectQuery.subjects = ["ps1.test3"]
        var found = 0
        try store.entries(matching: subjectQuery) { _ in found += 1; return true }
        #expect(found == 25)

        let report = try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys, splitFrom: 128)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.entries == 400)
        #expect(report.treeHead == MerkleTree.root(leaves))
        #expect(report.checkpointsVerified == checkpoints.count)

        // Tampering with one stored entry is found at that entry.
        let admin = try PostgresDatabase(settings: settings)
        try admin.rows("UPDATE audit_entries SET body = body || ' ' WHERE sequence = 123", [])
        let tampered = try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys, splitFrom: 128)
        #expect(tampered.firstBadEntry == 123)
        // So is a column the filters use, changed without the body (found before entry 123).
        try admin.rows("UPDATE audit_entries SET kind = 'hidden' WHERE sequence = 77", [])
        let column = try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys, splitFrom: 128)
        #expect(column.firstBadEntry == 77 && column.problem?.contains("kind, time or retention column") == true, "\(column.problem ?? "valid")")
    }

    @Test("every PostgreSQL connection bounds lock waits and abandoned transactions, and keeps TCP alive on both ends")
    func sessionTimeouts() throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let settings = PostgresSettings(url: try server.createDatabase("timeouts"), passwordFile: server.passwordFile)
        let db = try PostgresDatabase(settings: settings)
        func show(_ name: String) throws -> String? { try db.rows("SHOW \(name)", []).first?.string(0) }
        #expect(try show("lock_timeout") == "1min")
        #expect(try show("idle_in_transaction_session_timeout") == "2min")
        #expect(try show("tcp_keepalives_idle") == "30")
        // A lock held by another session is given up on, not waited for forever.
        let holder = try PostgresDatabase(settings: settings)
        try holder.execute("BEGIN")
        try holder.rows("SELECT pg_advisory_xact_lock(42)", [])
        try db.execute("SET lock_timeout = '200ms'")
        #expect(throws: KetenpoortError.self) { try db.rows("SELECT pg_advisory_xact_lock(42)", []) }
        try holder.execute("ROLLBACK")
    }

    @Test("preconditions on PostgreSQL: 16 reviews of one row race through two writers; one is written with its side write, the others fail with their conflict and leave nothing; plain entries between them are all written and the log verifies")
    func preconditionsOnPostgres() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let settings = PostgresSettings(url: try server.createDatabase("preconditions"), passwordFile: server.passwordFile)
        let admin = try PostgresDatabase(settings: settings)
        try admin.execute(
            "CREATE TABLE reviews (id TEXT PRIMARY KEY, state TEXT NOT NULL); INSERT INTO reviews VALUES ('ex-1', 'pending'); CREATE TABLE side_rows (note TEXT NOT NULL, sequence BIGINT NOT NULL)")
        let keys = try Self.keys()
        let logs = [
            try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer),
            try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer),
        ]
        let written = IDList()
        let refused = IDList()
        let plain = IDList()
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<16 {
                group.addTask {
                    let log = logs[i % 2]
                    var review = AuditRecord(kind: "review", members: [("exchangeId", "ex-1"), ("outcome", .string("outcome-\(i)"))])
                    review.precondition = Precondition(
                        "UPDATE reviews SET state = ? WHERE id = 'ex-1' AND state = 'pending'", [.text("outcome-\(i)")],
                        otherwise: KetenpoortError(.conflict, "reviewed meanwhile"))
                    review.sideWrites = [SideWrite("INSERT INTO side_rows (note, sequence) VALUES (?, ?)", [.text("outcome-\(i)"), .sequence])]
                    async let other = try? log.append(AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))]))
                    do {
                        written.append("outcome-\(i) \(try await log.append(review))")
                    } catch let error as KetenpoortError where error.code == .conflict {
                        refused.append("outcome-\(i)")
                    } catch {
                        Issue.record("\(error)")
                    }
                    if let sequence = await other { plain.append(String(sequence)) }
                }
            }
        }
        for log in logs { log.close() }
        #expect(written.count == 1 && refused.count == 15 && plain.count == 16, "\(written.all) \(refused.all)")
        let winner = try #require(written.all.first?.split(separator: " ").map(String.init))
        #expect(try admin.rows("SELECT state FROM reviews", []).map { $0.string(0) } == [winner[0]])
        #expect(try admin.rows("SELECT note, sequence FROM side_rows", []).map { "\($0.string(0) ?? "") \($0.int64(1))" } == [winner.joined(separator: " ")])
        let store = try PostgresAuditStore(settings: settings, readOnly: true)
        var reviews: [Int64] = []
        var count = 0
        try store.entries(matching: AuditQuery()) { entry in
            count += 1
            if entry.kind == "review" { reviews.append(entry.sequence) }
            return true
        }
        #expect(count == 17 && reviews.map(String.init) == [winner[1]])
        let report = try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys)
        #expect(report.isValid && report.entries == 17, "\(report.problem ?? "")")

        // Several preconditions in one transaction (one pipeline): each record's own answer, in
        // order, an earlier one's change seen by a later one.
        try admin.execute("INSERT INTO reviews VALUES ('ex-2', 'pending'), ('ex-3', 'pending')")
        func reviewing(_ id: String) -> Precondition {
            Precondition("UPDATE reviews SET state = 'done' WHERE id = ? AND state = 'pending'", [.text(id)], otherwise: KetenpoortError(.conflict, "reviewed meanwhile"))
        }
        var seen: [Bool] = []
        _ = try PostgresAuditStore(settings: settings).append(preconditions: [nil, reviewing("ex-2"), reviewing("ex-2"), nil, reviewing("ex-3"), reviewing("ex-1")]) { tail, held in
            seen = held
            return AuditBatch(tail: tail)
        }
        #expect(seen == [true, true, false, true, true, false])
    }

    @Test("retention on PostgreSQL: expired details and their subject rows are erased, the rest kept, the log still verifies")
    func retentionOnPostgres() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let settings = PostgresSettings(url: try server.createDatabase("retention"), passwordFile: server.passwordFile)
        let keys = try Self.keys()
        let log = try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer, schedule: CheckpointSchedule(entries: 5, seconds: 3_600))
        for i in 0..<8 {
            var record = AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))], subjects: ["ps1.k1.subject\(i % 2)", "ps1.k1.shared"])
            record.retainUntil = i < 4 ? "2027-01-01" : "2046-01-01"
            _ = try await log.append(record)
        }
        let store = try PostgresAuditStore(settings: settings, readOnly: true)
        let result = try await AuditRetention.run(log: log, store: store, today: "2027-06-01")
        #expect(result.expired == 4)
        _ = try await log.checkpoint()
        log.close()
        for s: Int64 in 1...4 { #expect(try store.entry(sequence: s)?.body == nil) }
        for (subject, expected) in [("ps1.k1.subject0", [Int64(5), 7]), ("ps1.k1.shared", [5, 6, 7, 8])] {
            var query = AuditQuery()
            query.subjects = [subject]
            var found: [Int64] = []
            try store.entries(matching: query) { found.append($0.sequence); return true }
            #expect(found == expected, "\(subject)")
        }
        let rows = try PostgresDatabase(settings: settings).rows("SELECT count(*) FROM audit_subjects WHERE sequence <= 4", [])
        #expect(rows.first?.int64(0) == 0)
        let report = try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.erasedEntries == 4)
    }

    @Test("`ketenpoort migrate` on SQLite and PostgreSQL: status, a step at a time, serve refuses an older or newer schema, then runs")
    func migrations() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let url = try server.createDatabase("migrations")
        let sqlite = temporaryDirectory("ketenpoort-migrate") + "/gateway.db"
        FileManager.default.createFile(atPath: sqlite, contents: nil, attributes: [.posixPermissions: 0o600])
        for db in [sqlite, url] {
            let first = try server.ketenpoort(["migrate", "--db", db, "--to", "1"])
            #expect(first.status == 0, "\(first.stderr)")
            #expect(first.stdout.contains("applied: 1 "))
            let status = try server.ketenpoort(["migrate", "--db", db, "--status"])
            #expect(status.stdout.contains("schema version: 1") && status.stdout.contains("pending: 2 "), "\(status.stdout)")

            // A gateway on the older schema refuses to start and says what to run.
            let older = try startGateway(database: db, server: server)
            #expect(older.status == 2)
            #expect(older.stderr.contains("ketenpoort migrate"), "\(older.stderr)")

            let rest = try server.ketenpoort(["migrate", "--db", db])
            #expect(rest.status == 0 && rest.stdout.contains("applied: 2 "), "\(rest.stdout) \(rest.stderr)")
            #expect(try server.ketenpoort(["migrate", "--db", db]).stdout.contains("up to date"))
            let back = try server.ketenpoort(["migrate", "--db", db, "--to", "1"])
            #expect(back.status == 2 && back.stderr.contains("restore a backup"), "\(back.stderr)")

            // A schema newer than the binary knows: refused by serve and by migrate.
            let connection = try DatabaseLocation(db, passwordFile: server.passwordFile).connect()
            try connection.rows("INSERT INTO schema_migrations (version, description, applied_at) VALUES (99, 'from the future', 'x')", [])
            let newer = try startGateway(database: db, server: server)
            #expect(newer.status == 2 && newer.stderr.contains("newer"), "\(newer.stderr)")
            #expect(try server.ketenpoort(["migrate", "--db", db]).status == 2)
            try connection.rows("DELETE FROM schema_migrations WHERE version = 99", [])
        }
        // A password in the URL is refused, and never printed back.
        let withPassword = try ketenpoort(["migrate", "--db", "postgresql://ketenpoort:s3cret@127.0.0.1:\(server.port)/migrations"])
        #expect(withPassword.status == 2 && !withPassword.stderr.contains("s3cret"), "\(withPassword.stderr)")
    }

    @Test("backup and restore: a SQLite copy taken while the log is written, and a pg_dump restored into a new database, both pass `log verify` against a checkpoint kept outside")
    func backupRestoreVerifies() async throws {
        let keys = try Self.keys()
        let verifiers = try keys.verifierKeys
        let keyFile = temporaryDirectory("ketenpoort-backup-keys") + "/verifier.pub"
        try write(verifiers.map(\.text).joined(separator: "\n") + "\n", to: keyFile)

        // SQLite: copy while appends go on; the copy verifies and extends the checkpoint kept before.
        let directory = temporaryDirectory("ketenpoort-backup")
        let path = directory + "/gateway.db"
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 20, seconds: 3_600))
        for i in 0..<100 { _ = try await log.append(AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))])) }
        let kept = try #require(try SQLiteAuditStore(readingFrom: path).checkpoints().last?.note)
        try write(kept, to: directory + "/kept.checkpoint")
        let writer = Task {
            for i in 100..<400 { _ = try await log.append(AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))])) }
        }
        let backup = try ketenpoort(["backup", "--db", path, "--out", directory + "/copy.db"])
        #expect(backup.status == 0, "\(backup.stderr)")
        try await writer.value
        log.close()
        let mode = try FileManager.default.attributesOfItem(atPath: directory + "/copy.db")[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
        let restored = try ketenpoort(["log", "verify", "--db", directory + "/copy.db", "--checkpoint", directory + "/kept.checkpoint", "--public-key", keyFile])
        #expect(restored.status == 0, "\(restored.stdout) \(restored.stderr)")
        #expect(try ketenpoort(["backup", "--db", path, "--out", directory + "/copy.db"]).status == 2, "an existing file is not overwritten")

        // PostgreSQL: pg_dump of the live database, pg_restore into an empty one, verify.
        let server = try PostgresServer()
        defer { server.stop() }
        let url = try server.createDatabase("source")
        let settings = PostgresSettings(url: url, passwordFile: server.passwordFile)
        let pgLog = try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer, schedule: CheckpointSchedule(entries: 20, seconds: 3_600))
        for i in 0..<100 { _ = try await pgLog.append(AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))])) }
        pgLog.close()
        let pgKept = try #require(try PostgresAuditStore(settings: settings, readOnly: true).checkpoints().last?.note)
        try write(pgKept, to: directory + "/pg-kept.checkpoint")
        let password = try String(contentsOfFile: server.passwordFile, encoding: .utf8)
        let bin = try PostgresServer.binDirectory()
        let dump = try runProcess(
            "\(bin)/pg_dump", ["--format=custom", "--file=\(directory)/source.dump", "--dbname=\(url)"], environment: ["PGPASSWORD": password])
        #expect(dump.status == 0, "\(dump.stderr)")
        let target = try server.createDatabase("restored")
        let restore = try runProcess("\(bin)/pg_restore", ["--no-owner", "--dbname=\(target)", directory + "/source.dump"], environment: ["PGPASSWORD": password])
        #expect(restore.status == 0, "\(restore.stderr)")
        let verified = try server.ketenpoort(["log", "verify", "--db", target, "--checkpoint", directory + "/pg-kept.checkpoint", "--public-key", keyFile])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(verified.stdout.contains("100 entries verified"), "\(verified.stdout)")
    }

    @Test("PostgreSQL down: exchanges are refused with 503 and /health is not ready (fail closed); back up: the gateway reconnects and serves again")
    func databaseDownFailsClosed() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let (gateway, other, _) = try startPair(server, database: "outage")
        other.stop()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consents(team)
        let body = ExchangeTests.exchangeBody(consents: ids)
        #expect(try await post(team, "/v1/exchanges", body).status == 201)

        server.stop(keepingData: true)
        for _ in 0..<2 {
            let refused = try await post(team, "/v1/exchanges", body)
            #expect(refused.status == 503, "\(refused.body)")
            #expect(["audit_unavailable", "service_unavailable"].contains(refused.json?["code"]?.stringValue ?? ""), "\(refused.body)")
            #expect(!refused.body.contains("postgresql error") && !refused.body.contains("127.0.0.1"), "no database internals to partners: \(refused.body)")
        }
        let health = try operationsGet(port: gateway.operationsPort, path: "/health")
        #expect(health.status == 503, "\(health.body)")

        try server.start()
        var recovered = false
        for _ in 0..<50 where !recovered {
            if let r = try? await post(team, "/v1/exchanges", body), r.status == 201 { recovered = true } else { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(recovered)
        #expect(try operationsGet(port: gateway.operationsPort, path: "/health").status == 200)
        await team.close()
    }

    @Test("push delivery by two instances on one database: every item reaches the partner's endpoint once, then counts as acknowledged")
    func pushOnceFromTwoInstances() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let push = PushDeliveryTests()
        let port = try push.freePort()
        let received = temporaryDirectory("ketenpoort-push-pair") + "/received.jsonl"
        // A slow partner (0.1 s an answer, several at once): the instances' push rounds overlap,
        // so only the claim keeps them from pushing the same items.
        let receiver = try push.startReceiver(port: port, out: received, delay: 0.1)
        defer {
            kill(receiver.processIdentifier, SIGKILL)
            receiver.waitUntilExit()
        }
        let clientTLS = "client_tls:\n  certificate: \(PKIFixture.path("gateway/client.crt"))\n  key: \(PKIFixture.path("gateway/client.key"))"
        let (a, b, _) = try startPair(
            server, database: "pushpair", extra: clientTLS, policies: try push.policies(endpoint: "https://localhost:\(port)/ketenpoort/inbox"))
        defer {
            a.stop()
            b.stop()
        }
        let body = """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1",
                       "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
             "subjects": [{"bsn": "999990019", "role": "child", "age": 9}], "data": {"identity": {"bsn": "999990019"}, "concern_signal": {"summary": "zorgen"}}}
            """
        var sent: [String] = []
        for (i, gateway) in [a, b, a, b, a, b].enumerated() {
            let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
            for _ in 0..<5 {
                let r = try await post(team, "/v1/exchanges", body)
                #expect(r.status == 201, "\(i): \(r.body)")
                if let id = r.json?["exchangeId"]?.stringValue { sent.append(id) }
            }
            await team.close()
        }
        #expect(sent.count == 30)
        // Both instances' push loops run (every 0.5 s); wait for all items to land.
        var lines: [String] = []
        for _ in 0..<150 {
            lines = ((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            if lines.count >= sent.count { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        try await Task.sleep(for: .seconds(3))  // a second push of any item would arrive by now
        lines = ((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        let pushed = lines.compactMap { line -> String? in
            guard let value = try? JSONParser.parse(line) else { return nil }
            return value["body"]?["exchangeId"]?.stringValue
        }
        #expect(pushed.count == sent.count, "each item pushed exactly once: \(pushed.count) pushes for \(sent.count) exchanges")
        #expect(Set(pushed) == Set(sent))
        let team = try await TestHTTPSClient.connect(port: b.port, cert: wijkteam.cert, key: wijkteam.key)
        for id in sent.prefix(5) {
            #expect(try await team.request("/v1/exchanges/\(id)").json?["delivery"]?["state"]?.stringValue == "acknowledged")
        }
        await team.close()
    }

    @Test("TLS to PostgreSQL through libpq and the system OpenSSL: verify-full against the CA works and is encrypted; no TLS, or an untrusted CA, is refused")
    func tlsToDatabase() async throws {
        let server = try PostgresServer(tls: true)
        defer { server.stop() }
        let url = try server.createDatabase("overtls")
        let migrated = try server.ketenpoort(["migrate", "--db", url])
        #expect(migrated.status == 0, "\(migrated.stderr)")
        let connection = try PostgresDatabase(settings: PostgresSettings(url: url, passwordFile: server.passwordFile))
        let row = try #require(try connection.row("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", []))
        #expect(row.string(0) == "t")
        #expect(row.string(1)?.hasPrefix("TLSv1.") == true)

        // The log over TLS: appended and verified.
        let settings = PostgresSettings(url: url, passwordFile: server.passwordFile)
        let keys = try Self.keys()
        let log = try AuditLog(store: try PostgresAuditStore(settings: settings), signer: try keys.signer)
        for i in 0..<20 { _ = try await log.append(AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))])) }
        log.close()
        #expect(try AuditVerifier.verify(location: .postgresql(settings), keys: try keys.verifierKeys).isValid)

        // Without TLS the server refuses (pg_hba: hostssl only); with another root the client refuses.
        let plain = url.replacingOccurrences(of: "sslmode=verify-full", with: "sslmode=disable")
        let refused = try server.ketenpoort(["migrate", "--db", plain, "--status"])
        #expect(refused.status == 2 && refused.stderr.contains("cannot be reached"), "\(refused.stderr)")
        let otherRoot = url.replacingOccurrences(of: PKIFixture.path("ca.crt"), with: PKIFixture.path("gateway/server.crt"))
        let untrusted = try server.ketenpoort(["migrate", "--db", otherRoot, "--status"])
        #expect(untrusted.status == 2 && untrusted.stderr.contains("certificate"), "\(untrusted.stderr)")
        #expect(!untrusted.stderr.contains(try String(contentsOfFile: server.passwordFile, encoding: .utf8)))
    }

    /// Runs `serve` expecting it to stop at start (a refused schema); returns its exit status.
    func startGateway(database: String, server: PostgresServer) throws -> ProcessResult {
        let directory = temporaryDirectory("ketenpoort-refused")
        try MasterKeyFile.create(path: directory + "/keys")
        try write(
            GatewayProcess.configuration(database: database, keys: directory + "/keys", extra: "database_password_file: \(server.passwordFile)"),
            to: directory + "/gateway.yaml")
        return try ketenpoort(["serve", "--config", directory + "/gateway.yaml"])
    }

    /// Two gateway processes on one PostgreSQL database with the same master key.
    func startPair(_ server: PostgresServer, database: String, extra: String = "", policies: String? = nil) throws -> (GatewayProcess, GatewayProcess, String) {
        let url = try server.createDatabase(database)
        let shared = temporaryDirectory("ketenpoort-pair")
        try MasterKeyFile.create(path: shared + "/keys")
        var gateways: [GatewayProcess] = []
        for name in ["a", "b"] {
            let configPath = "\(shared)/\(name).yaml"
            try write(
                GatewayProcess.configuration(
                    database: url, keys: shared + "/keys", policies: policies,
                    extra: "database_password_file: \(server.passwordFile)\naudit:\n  checkpoint_entries: 25\n\(extra)"),
                to: configPath)
            gateways.append(try GatewayProcess(directory: shared, configPath: configPath, arguments: ["serve", "--config", configPath]))
        }
        return (gateways[0], gateways[1], url)
    }

    func post(_ client: TestHTTPSClient, _ path: String, _ body: String, headers: [(String, String)] = []) async throws -> TestResponse {
        try await client.request(path, method: .POST, headers: [("content-type", "application/json")] + headers, body: body)
    }

    /// Joint custody and both parents' consents, registered through `client`.
    func consents(_ client: TestHTTPSClient) async throws -> [String] {
        let custody = try await post(
            client, "/v1/facts",
            #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(ExchangeTests.child)", "holders": ["\#(ExchangeTests.mother)", "\#(ExchangeTests.father)"]}"#)
        #expect(custody.status == 201, "\(custody.body)")
        var ids: [String] = []
        for parent in [ExchangeTests.mother, ExchangeTests.father] {
            let r = try await post(client, "/v1/consents", ExchangeTests.consentBody(grantor: parent))
            ids.append(try #require(r.json?["consentId"]?.stringValue))
        }
        return ids
    }

    /// Every item in `client`'s inbox (all pages): inbox id → exchange id.
    func inbox(_ client: TestHTTPSClient) async throws -> [(id: String, exchange: String)] {
        var items: [(String, String)] = []
        var cursor = "0"
        while true {
            let page = try await client.request("/v1/inbox?after=\(cursor)&limit=500")
            let list = page.json?["items"]?.arrayValue ?? []
            if list.isEmpty { return items }
            for item in list { items.append((item["id"]?.stringValue ?? "", item["exchangeId"]?.stringValue ?? "")) }
            cursor = page.json?["next"]?.stringValue ?? cursor
        }
    }

    @Test("two gateway processes on one database under concurrent load: no exchange lost or doubled, one acknowledgement each, a withdrawal holds at once everywhere, one idempotent answer, the log verifies")
    func twoGatewaysUnderLoad() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let (a, b, url) = try startPair(server, database: "pair")
        defer {
            a.stop()
            b.stop()
        }
        let setup = try await TestHTTPSClient.connect(port: a.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consents(setup)
        await setup.close()
        let body = ExchangeTests.exchangeBody(consents: ids)

        // Eight senders, alternating between the instances, 15 exchanges each.
        let accepted = IDList()
        let ports = [a.port, b.port]
        let cert = wijkteam
        await withTaskGroup(of: Void.self) { group in
            for sender in 0..<8 {
                group.addTask {
                    guard let client = try? await TestHTTPSClient.connect(port: ports[sender % 2], cert: cert.cert, key: cert.key) else { return }
                    for _ in 0..<15 {
                        if let r = try? await client.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: body),
                            r.status == 201, let id = r.json?["exchangeId"]?.stringValue
                        {
                            accepted.append(id)
                        }
                    }
                    await client.close()
                }
            }
        }
        #expect(accepted.count == 120)

        // The recipient sees every exchange exactly once, through either instance.
        let vtA = try await TestHTTPSClient.connect(port: a.port, cert: vt.cert, key: vt.key)
        let vtB = try await TestHTTPSClient.connect(port: b.port, cert: vt.cert, key: vt.key)
        let items = try await inbox(vtB)
        #expect(items.count == 120)
        #expect(Set(items.map(\.exchange)) == Set(accepted.all))

        // Acknowledged through one instance, then again through the other: one acknowledgement.
        let first = try await vtA.request("/v1/inbox/\(items[0].id)/ack", method: .POST)
        #expect(first.status == 200 && first.json?["acknowledgedBefore"]?.boolValue == false, "\(first.body)")
        let again = try await vtB.request("/v1/inbox/\(items[0].id)/ack", method: .POST)
        #expect(again.status == 200 && again.json?["acknowledgedBefore"]?.boolValue == true, "\(again.body)")
        // Racing acknowledgements of the rest through both instances: each item once.
        let fresh = IDList()
        await withTaskGroup(of: Void.self) { group in
            for client in [vtA, vtB] {
                group.addTask {
                    for item in items.dropFirst() {
                        if let r = try? await client.request("/v1/inbox/\(item.id)/ack", method: .POST), r.json?["acknowledgedBefore"]?.boolValue == false {
                            fresh.append(item.id)
                        }
                    }
                }
            }
        }
        #expect(fresh.count == 119 && Set(fresh.all).count == 119)
        #expect(try await inbox(vtA).isEmpty)

        // A withdrawal through A holds for the very next exchange decided by B.
        let teamA = try await TestHTTPSClient.connect(port: a.port, cert: wijkteam.cert, key: wijkteam.key)
        let teamB = try await TestHTTPSClient.connect(port: b.port, cert: wijkteam.cert, key: wijkteam.key)
        #expect(try await teamA.request("/v1/consents/\(ids[1])/withdraw", method: .POST).status == 200)
        let denied = try await post(teamB, "/v1/exchanges", body)
        #expect(denied.status == 403, "\(denied.body)")

        // One Idempotency-Key sent to both instances at once: carried out once.
        let fresh2 = try await consents(teamA)
        let body2 = ExchangeTests.exchangeBody(consents: fresh2)
        async let onA = post(teamA, "/v1/exchanges", body2, headers: [("idempotency-key", "same-key-1")])
        async let onB = post(teamB, "/v1/exchanges", body2, headers: [("idempotency-key", "same-key-1")])
        let answers = try await [onA, onB]
        let created = answers.filter { $0.status == 201 }
        #expect(created.count >= 1)
        #expect(Set(created.compactMap { $0.json?["exchangeId"]?.stringValue }).count == 1, "\(answers.map(\.body))")
        #expect(answers.allSatisfy { $0.status == 201 || $0.status == 409 })
        #expect(try await inbox(vtA).count == 1)
        for client in [vtA, vtB, teamA, teamB] { await client.close() }

        #expect(a.stop() == 0)
        #expect(b.stop() == 0)
        let verified = try server.ketenpoort(["log", "verify", "--db", url, "--keys", a.directory + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(verified.stdout.contains("entries verified"), "\(verified.stdout)")
    }

    @Test("one of two instances killed (SIGKILL) mid-load: every acknowledged exchange is in the inbox, read through the survivor, and the log verifies")
    func instanceKilledMidLoad() async throws {
        let server = try PostgresServer()
        defer { server.stop() }
        let (a, b, url) = try startPair(server, database: "killed")
        defer { b.stop() }
        let setup = try await TestHTTPSClient.connect(port: b.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consents(setup)
        await setup.close()
        let body = ExchangeTests.exchangeBody(consents: ids)
        let accepted = IDList()
        let ports = [a.port, b.port]
        let cert = wijkteam
        let stopAll = StopFlag()
        let senders = Task {
            await withTaskGroup(of: Void.self) { group in
                for sender in 0..<8 {
                    group.addTask {
                        guard let client = try? await TestHTTPSClient.connect(port: ports[sender % 2], cert: cert.cert, key: cert.key) else { return }
                        while !stopAll.isSet {
                            guard let r = try? await client.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: body) else { return }
                            if r.status == 201, let id = r.json?["exchangeId"]?.stringValue { accepted.append(id) }
                        }
                        await client.close()
                    }
                }
            }
        }
        for _ in 0..<200 where accepted.count < 60 { try await Task.sleep(for: .milliseconds(50)) }
        a.signal(SIGKILL)
        // The survivor keeps taking exchanges.
        let before = accepted.count
        for _ in 0..<100 where accepted.count < before + 30 { try await Task.sleep(for: .milliseconds(50)) }
        stopAll.set()
        _ = await senders.result
        let sent = accepted.all
        #expect(sent.count >= before + 30)
        let vtB = try await TestHTTPSClient.connect(port: b.port, cert: vt.cert, key: vt.key)
        let items = try await inbox(vtB)
        await vtB.close()
        let delivered = Set(items.map(\.exchange))
        let missing = sent.filter { !delivered.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) acknowledged exchanges lost")
        // An exchange whose answer died with the killed instance may be in the inbox too (it was
        // committed); none is there twice.
        #expect(items.count == delivered.count, "\(items.count - delivered.count) exchanges delivered twice")
        #expect(Set(sent).count == sent.count)
        #expect(b.stop() == 0)
        let verified = try server.ketenpoort(["log", "verify", "--db", url, "--keys", b.directory + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
    }
}

/// A value handed to concurrent test tasks that only read it.
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A flag one task sets and others poll.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
