import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import Synchronization
import Testing

@testable import KetenpoortAudit

/// Keys for tests: a fixed master key (never a real one).
func testLogKeys(_ ids: [String] = ["k1"]) throws -> LogKeys {
    try LogKeys(keys: try KeyRing(keys: ids.map { ($0, Crypto.sha256(Array("test key \($0)".utf8))) }), origin: "test.ketenpoort.example/audit")
}

func temporaryLogPath() -> String { NSTemporaryDirectory() + "audit-\(UUID().uuidString.prefix(8)).db" }

func drillRecord(_ i: Int) -> AuditRecord {
    AuditRecord(kind: "policy-reloaded", members: [("n", .number(Double(i)))])
}

/// Appends `count` drill records that are kept until `retainUntil`.
func appendDrills(_ log: AuditLog, count: Int, retainUntil: String) async throws {
    for i in 0..<count {
        var record = drillRecord(i)
        record.retainUntil = retainUntil
        _ = try await log.append(record)
    }
}

@Suite("Audit log: signed checkpoints, stored tree, proofs, retention")
struct CheckpointAndProofTests {
    @Test("a tree head is signed every N entries; every entry's stored-tree proof verifies against every checkpoint")
    func checkpointsEveryNEntries() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 10, seconds: 3_600))
        for i in 0..<35 { _ = try await log.append(drillRecord(i)) }
        log.close()
        let store = try SQLiteAuditStore(readingFrom: path)
        let checkpoints = try store.checkpoints()
        // The first batch signs at once (no checkpoint yet), then every 10 entries.
        #expect(checkpoints.map(\.treeSize) == [1, 11, 21, 31])
        var leaves: [[UInt8]] = []
        try store.entries(matching: AuditQuery()) { leaves.append($0.leafHash); return true }
        let verifiers = try keys.verifierKeys
        let tree = StoredTree(store: store)
        for c in checkpoints {
            let parsed = try Checkpoint.verify(note: c.note, keys: verifiers)
            #expect(parsed.rootHash == MerkleTree.root(leaves[0..<Int(c.treeSize)]))
            for m in 0..<c.treeSize {
                let proof = try tree.inclusionProof(index: m, treeSize: c.treeSize)
                #expect(proof == MerkleTree.inclusionProof(index: Int(m), leaves: leaves[0..<Int(c.treeSize)]))
                #expect(MerkleTree.verifyInclusion(leafHash: leaves[Int(m)], index: Int(m), treeSize: Int(c.treeSize), proof: proof, root: parsed.rootHash))
            }
        }
        // Consistency between every pair of checkpoints.
        for (i, old) in checkpoints.enumerated() {
            for new in checkpoints[i...] {
                let proof = try tree.consistencyProof(oldSize: old.treeSize, newSize: new.treeSize)
                #expect(MerkleTree.verifyConsistency(oldSize: Int(old.treeSize), oldRoot: old.rootHash, newSize: Int(new.treeSize), newRoot: new.rootHash, proof: proof))
            }
        }
        let report = try AuditVerifier.verify(path: path, keys: verifiers)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.checkpointsVerified == 4)
        #expect(report.treeHead == MerkleTree.root(leaves))
    }

    @Test("a tree head is signed T seconds after the last one when entries are waiting")
    func checkpointAfterInterval() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 1_000, seconds: 0.3))
        _ = try await log.append(drillRecord(0))
        _ = try await log.append(drillRecord(1))
        _ = try await log.append(drillRecord(2))
        let deadline = Date().addingTimeInterval(10)
        var sizes: [Int64] = []
        while Date() < deadline {
            sizes = try SQLiteAuditStore(readingFrom: path).checkpoints().map(\.treeSize)
            if sizes.last == 3 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        log.close()
        #expect(sizes.first == 1)
        #expect(sizes.last == 3)
    }

    @Test("a log cut off after its last checkpoint, or rewritten before it, fails against a checkpoint kept elsewhere")
    func externalCheckpoint() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 1_000_000, seconds: 3_600))
        for i in 0..<20 { _ = try await log.append(drillRecord(i)) }
        let kept = try #require(try await log.checkpoint())
        #expect(kept.treeSize == 20)
        for i in 20..<25 { _ = try await log.append(drillRecord(i)) }
        log.close()
        let verifiers = try keys.verifierKeys
        #expect(try AuditVerifier.verify(path: path, keys: verifiers, external: kept.note).isValid)

        // Cut off: the last 8 entries and every checkpoint that covered them are gone.
        let copy = temporaryLogPath()
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        if FileManager.default.fileExists(atPath: path + "-wal") { try FileManager.default.copyItem(atPath: path + "-wal", toPath: copy + "-wal") }
        let db = try SQLiteDatabase(path: copy)
        try db.execute("DELETE FROM audit_entries WHERE sequence > 17; DELETE FROM audit_checkpoints WHERE tree_size > 17; DELETE FROM audit_tree")
        let withoutExternal = try AuditVerifier.verify(path: copy, keys: verifiers)
        #expect(withoutExternal.isValid, "without the kept checkpoint, a clean cut is invisible")
        let cut = try AuditVerifier.verify(path: copy, keys: verifiers, external: kept.note)
        #expect(!cut.isValid)
        #expect(cut.firstBadEntry == 18)
        #expect(cut.problem?.contains("cut off") == true)

        // Rewritten: another history of the same length, chained and checkpointed on its own.
        let rewritten = temporaryLogPath()
        let other = try AuditLog(path: rewritten, signer: try keys.signer, schedule: CheckpointSchedule(entries: 1_000_000, seconds: 3_600))
        for i in 0..<25 { _ = try await other.append(drillRecord(i == 3 ? 333 : i)) }
        other.close()
        #expect(try AuditVerifier.verify(path: rewritten, keys: verifiers).isValid)
        let history = try AuditVerifier.verify(path: rewritten, keys: verifiers, external: kept.note)
        #expect(!history.isValid)
        #expect(history.problem?.contains("history was rewritten") == true)

        // An external checkpoint from another log (or a forged one) is refused.
        let otherKeys = try testLogKeys(["k9"])
        let forged = try Checkpoint(origin: otherKeys.origin, treeSize: 20, rootHash: kept.rootHash).signedNote(keyName: otherKeys.origin, key: try otherKeys.signer.key)
        let refused = try AuditVerifier.verify(path: path, keys: verifiers, external: forged)
        #expect(!refused.isValid && refused.problem?.contains("does not verify") == true, "\(refused.problem ?? "")")
        // A file that is not a signed note at all is bad input, not a failed check.
        #expect(throws: KetenpoortError(.invalidInput, "")) { try AuditVerifier.verify(path: path, keys: verifiers, external: "not a checkpoint") }
        // A database that is there but holds no log (emptied, truncated) fails the check.
        let emptied = temporaryLogPath()
        FileManager.default.createFile(atPath: emptied, contents: Data())
        let nothing = try AuditVerifier.verify(path: emptied, keys: verifiers)
        #expect(!nothing.isValid && nothing.problem?.contains("no readable audit log") == true, "\(nothing.problem ?? "")")
    }

    @Test("the kind, time and retention columns are bound to the hashed body: a changed column fails verify, and retention goes by the body")
    func columnsBoundToBody() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer)
        try await appendDrills(log, count: 6, retainUntil: "2046-01-01")
        #expect(try AuditVerifier.verify(path: path, keys: try keys.verifierKeys).isValid)
        func tampered(_ sql: String) throws -> AuditVerifier.Report {
            let copy = temporaryLogPath()
            let db = try SQLiteDatabase(path: path)
            try db.execute("VACUUM INTO '\(copy)'")
            try SQLiteDatabase(path: copy).execute(sql)
            return try AuditVerifier.verify(path: copy, keys: try keys.verifierKeys)
        }
        // Hidden from a `kind` filter, moved out of a period, or set to expire early.
        for sql in [
            "UPDATE audit_entries SET kind = 'drill' WHERE sequence = 3",
            "UPDATE audit_entries SET time = '2020-01-01T00:00:00.000Z' WHERE sequence = 3",
            "UPDATE audit_entries SET retain_until = '2000-01-01' WHERE sequence = 3",
            "UPDATE audit_entries SET retain_until = NULL WHERE sequence = 3",
        ] {
            let report = try tampered(sql)
            #expect(!report.isValid && report.firstBadEntry == 3, "\(sql): \(report.problem ?? "valid")")
            #expect(report.problem?.contains("kind, time or retention column") == true, "\(report.problem ?? "")")
        }
        // Retention goes by the body: a column moved to an earlier day erases nothing.
        try SQLiteDatabase(path: path).execute("UPDATE audit_entries SET retain_until = '2000-01-01' WHERE sequence = 4")
        let store = try SQLiteAuditStore(readingFrom: path)
        #expect(try store.expired(before: "2027-01-01").isEmpty)
        #expect(try store.expired(before: "2047-01-01") == [1, 2, 3, 4, 5, 6])
        let result = try await AuditRetention.run(log: log, store: store, today: "2027-01-01")
        #expect(result.expired == 0)
        log.close()
        #expect(try store.entry(sequence: 4)?.body != nil)
        // Entries and checkpoints deleted together leave an empty log: that fails too.
        let emptied = try tampered("DELETE FROM audit_entries; DELETE FROM audit_checkpoints; DELETE FROM audit_tree")
        #expect(!emptied.isValid && emptied.problem?.contains("holds no entries") == true, "\(emptied.problem ?? "valid")")
    }

    @Test("verifying in two halves on two threads finds the same tree heads and the same first bad entry")
    func twoHalves() async throws {
        let keys = try testLogKeys()
        let verifiers = try keys.verifierKeys
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 9, seconds: 3_600))
        for i in 0..<100 { _ = try await log.append(drillRecord(i)) }
        let kept = try #require(try await log.checkpoint())
        log.close()
        let whole = try AuditVerifier.verify(path: path, keys: verifiers, external: kept.note, splitFrom: 1_000_000)
        let halves = try AuditVerifier.verify(path: path, keys: verifiers, external: kept.note, splitFrom: 8)
        #expect(whole.isValid && halves.isValid)
        #expect(halves.treeHead == whole.treeHead)
        var leaves: [[UInt8]] = []
        try SQLiteAuditStore(readingFrom: path).entries(matching: AuditQuery()) { leaves.append($0.leafHash); return true }
        #expect(whole.treeHead == MerkleTree.root(leaves))
        #expect(whole.treeHead != MerkleTree.emptyRoot)
        #expect(halves.checkpointsVerified == whole.checkpointsVerified)
        #expect(halves.checkpointsVerified >= 12)
        for (sql, first) in [
            ("UPDATE audit_entries SET body = replace(body, '\"n\":70', '\"n\":71') WHERE sequence = 71", Int64(71)),
            ("DELETE FROM audit_entries WHERE sequence = 64", 64),
            ("DELETE FROM audit_entries WHERE sequence = 90", 90),
            ("UPDATE audit_entries SET body = replace(body, '\"n\":20', '\"n\":21') WHERE sequence = 21", 21),
        ] {
            let copy = temporaryLogPath()
            try FileManager.default.copyItem(atPath: path, toPath: copy)
            if FileManager.default.fileExists(atPath: path + "-wal") { try FileManager.default.copyItem(atPath: path + "-wal", toPath: copy + "-wal") }
            try SQLiteDatabase(path: copy).execute(sql)
            let a = try AuditVerifier.verify(path: copy, keys: verifiers, splitFrom: 1_000_000)
            let b = try AuditVerifier.verify(path: copy, keys: verifiers, splitFrom: 8)
            #expect(a.firstBadEntry == first, "\(sql): \(a.problem ?? "")")
            #expect(b.firstBadEntry == first, "\(sql): \(b.problem ?? "")")
        }
    }

    @Test("a proof bundle verifies with only the public key; a changed entry, path or checkpoint does not")
    func proofBundle() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 7, seconds: 3_600))
        for i in 0..<30 { _ = try await log.append(drillRecord(i)) }
        _ = try await log.checkpoint()
        log.close()
        let store = try SQLiteAuditStore(readingFrom: path)
        let publicKeyText = try keys.verifierKeys.map(\.text)
        let verifiers = try publicKeyText.map { try LogVerifierKey(parsing: $0) }
        for sequence: Int64 in [1, 2, 16, 29, 30] {
            let bundle = try AuditProver.prove(sequence: sequence, store: store)
            let reparsed = try ProofBundle(json: try JSONParser.parse(bundle.json.serialized()))
            #expect(try reparsed.verify(keys: verifiers).treeSize == 30)
        }
        let bundle = try AuditProver.prove(sequence: 16, store: store)
        let changedEntry = ProofBundle(
            sequence: 16, entry: bundle.entry!.replacingOccurrences(of: "\"n\":15", with: "\"n\":14"), leafHash: bundle.leafHash, treeSize: 30,
            path: bundle.path, checkpoint: bundle.checkpoint)
        #expect(throws: KetenpoortError.self) { try changedEntry.verify(keys: verifiers) }
        var path2 = bundle.path
        path2[0][0] ^= 1
        let changedPath = ProofBundle(sequence: 16, entry: bundle.entry, leafHash: bundle.leafHash, treeSize: 30, path: path2, checkpoint: bundle.checkpoint)
        #expect(throws: KetenpoortError.self) { try changedPath.verify(keys: verifiers) }
        let moved = ProofBundle(sequence: 17, entry: bundle.entry, leafHash: bundle.leafHash, treeSize: 30, path: bundle.path, checkpoint: bundle.checkpoint)
        #expect(throws: KetenpoortError.self) { try moved.verify(keys: verifiers) }
        let otherKeys = try testLogKeys(["k2", "k3"]).verifierKeys
        #expect(throws: KetenpoortError.self) { try bundle.verify(keys: [otherKeys[0]]) }
        #expect(throws: KetenpoortError.self) { try LogVerifierKey(parsing: "name+00000000+AAAA") }
    }

    @Test("free text is sealed with the log key: the entry holds its hash, the text opens with the key and never lies in clear")
    func sealedText() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let recorder = AuditRecorder(keys: keys)
        let log = try AuditLog(path: path, signer: try keys.signer)
        let comment = "Moeder heeft contact opgenomen; afweging conflict van plichten besproken met collega Jansen."
        let sequence = try await log.append(try recorder.review(exchangeID: "ex-1", officer: "privacy-officer-zhz", outcome: "upheld", comment: comment))
        log.close()
        let store = try SQLiteAuditStore(readingFrom: path)
        let body = try #require(try store.entry(sequence: sequence)?.body)
        #expect(!body.contains("Jansen"))
        let hash = try #require(try JSONParser.parse(body)["texts"]?["comment"]?.stringValue.flatMap(Hex.decode))
        let sealed = try #require(try store.sealedText(sequence: sequence, hash: hash))
        #expect(Crypto.sha256(sealed) == hash)
        #expect(try keys.open(sealed) == comment)
        #expect(throws: (any Error).self) { try testLogKeys(["other"]).open(sealed) }
        let raw = try Data(contentsOf: URL(fileURLWithPath: path)) + ((try? Data(contentsOf: URL(fileURLWithPath: path + "-wal"))) ?? Data())
        #expect(raw.range(of: Data("Jansen".utf8)) == nil)
    }

    @Test("retention erases expired details but keeps the hashes: chain, checkpoints and proofs still verify")
    func retention() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer, schedule: CheckpointSchedule(entries: 5, seconds: 3_600))
        for i in 0..<12 {
            var record = drillRecord(i)
            record.retainUntil = i < 4 ? "2027-01-01" : "2046-01-01"
            record.subjects = ["ps1.k1.subject\(i % 2)"]
            _ = try await log.append(record)
        }
        _ = try await log.checkpoint()
        let store = try SQLiteAuditStore(readingFrom: path)
        let before = try AuditProver.prove(sequence: 2, store: store)
        let dry = try await AuditRetention.run(log: log, store: store, today: "2027-06-01", dryRun: true)
        #expect(dry.expired == 4 && dry.logSequence == nil)
        let result = try await AuditRetention.run(log: log, store: store, today: "2027-06-01")
        #expect(result.expired == 4)
        #expect(result.logSequence == 13)
        _ = try await log.checkpoint()
        log.close()
        for s: Int64 in 1...4 { #expect(try store.entry(sequence: s)?.body == nil) }
        #expect(try store.entry(sequence: 5)?.body != nil)
        var query = AuditQuery()
        query.subjects = ["ps1.k1.subject0"]
        var found: [Int64] = []
        try store.entries(matching: query) { found.append($0.sequence); return true }
        #expect(found == [5, 7, 9, 11])
        // The subject rows went by their key, not by a scan of the index per erased entry.
        let reader = try SQLiteDatabase(path: path)
        #expect(try reader.rows("SELECT count(*) FROM audit_subjects WHERE sequence <= 4", []).first?.int64(0) == 0)
        let plan = try reader.rows("EXPLAIN QUERY PLAN " + SQLiteAuditStore.eraseSubjects, [.integer(1)]).compactMap { $0.string(3) }.joined(separator: "; ")
        #expect(plan.contains("SEARCH audit_subjects") && !plan.contains("SCAN audit_subjects"), "\(plan)")
        let report = try AuditVerifier.verify(path: path, keys: try keys.verifierKeys)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.erasedEntries == 4)
        // The proof made before erasure still verifies; a new one carries only the leaf hash.
        #expect(throws: Never.self) { try before.verify(keys: try keys.verifierKeys) }
        let after = try AuditProver.prove(sequence: 2, store: store)
        #expect(after.entry == nil)
        #expect(try after.verify(keys: try keys.verifierKeys).treeSize == 13)
        // An erasure nobody recorded is tampering.
        let db = try SQLiteDatabase(path: path)
        try db.execute("UPDATE audit_entries SET body = NULL, erased_at = '2027-06-01' WHERE sequence = 6")
        let tampered = try AuditVerifier.verify(path: path, keys: try keys.verifierKeys)
        #expect(!tampered.isValid)
        #expect(tampered.firstBadEntry == 6)
    }

    @Test("retention erases a long backlog a batch at a time, pausing between batches so another writer on the same database gets in")
    func retentionInBatches() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let log = try AuditLog(path: path, signer: try keys.signer)
        try await appendDrills(log, count: 25, retainUntil: "2027-01-01")
        // Another process's log on the same file: the gateway, while `log retention` runs.
        let other = try AuditLog(path: path, signer: try keys.signer)
        let store = try SQLiteAuditStore(readingFrom: path)
        let progress = Mutex<[Int]>([])
        async let retention = AuditRetention.run(
            log: log, store: store, today: "2027-06-01", batchSize: 10, pause: .milliseconds(300)
        ) { done, total in
            #expect(total == 25)
            progress.withLock { $0.append(done) }
        }
        try await Task.sleep(for: .milliseconds(150))
        let between = try await other.append(drillRecord(99))
        let result = try await retention
        other.close()
        log.close()
        #expect(result.expired == 25)
        #expect(progress.withLock { $0 } == [10, 20, 25])
        // Three retention entries, and the other writer's entry between the first and the last.
        var retentions: [Int64] = []
        try store.entries(matching: AuditQuery()) { entry in
            if entry.kind == AuditKind.retention.rawValue { retentions.append(entry.sequence) }
            return true
        }
        #expect(retentions.count == 3)
        #expect(retentions.first! < between && between < retentions.last!, "retention entries \(retentions), the other writer's \(between)")
        let report = try AuditVerifier.verify(path: path, keys: try keys.verifierKeys)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.erasedEntries == 25)
    }
}
