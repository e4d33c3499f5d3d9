import Foundation
import KetenpoortCore
import KetenpoortStore
import Synchronization
import Testing

@testable import KetenpoortAudit

@Suite("Audit log: hash chain, group commit, tamper detection")
struct AuditLogTests {
    func temporaryPath() -> String { NSTemporaryDirectory() + "audit-\(UUID().uuidString.prefix(8)).db" }

    func record(_ i: Int) -> AuditRecord {
        AuditRecord(kind: "exchange_permitted", members: [
            ("exchangeId", .string("ex-\(i)")), ("caseTable", "mda-zhz"), ("sender", "wijkteam-dordrecht"),
            ("recipient", "veilig-thuis-zhz"), ("purpose", "safety-assessment"), ("subjects", ["ps1.k1.AxFGaT_q4y_IypHDhZximyN49HuimvZIBV4PnlWwnAk"]),
        ])
    }

    /// A log with `count` entries appended by 64 concurrent writers.
    func filledLog(_ count: Int) async throws -> String {
        let path = temporaryPath()
        let log = try AuditLog(path: path)
        let sequences = try await withThrowingTaskGroup(of: Int64.self) { group in
            for i in 0..<count { group.addTask { try await log.append(self.record(i)) } }
            var all: [Int64] = []
            for try await s in group { all.append(s) }
            return all
        }
        #expect(Set(sequences) == Set(1...Int64(count)))
        log.close()
        return path
    }

    @Test("concurrent appends are numbered without gaps and the chain verifies")
    func appendAndVerify() async throws {
        let path = try await filledLog(300)
        let report = try AuditVerifier.verify(path: path)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.entries == 300)
        #expect(report.treeHead.count == 32)
        // Reopening continues the chain.
        let log = try AuditLog(path: path)
        #expect(try await log.append(record(300)) == 301)
        log.close()
        #expect(try AuditVerifier.verify(path: path).isValid)
    }

    func tamper(_ path: String, _ sql: String) throws {
        let db = try SQLiteDatabase(path: path)
        try db.execute(sql)
    }

    @Test(
        "raw SQL tampering is detected at the first bad entry",
        arguments: [
            ("UPDATE audit_entries SET body = replace(body, 'veilig-thuis-zhz', 'politie-zhz') WHERE sequence = 17", 17),
            ("DELETE FROM audit_entries WHERE sequence = 23", 23),
            ("UPDATE audit_entries SET body = (SELECT body FROM audit_entries WHERE sequence = 31), leaf_hash = (SELECT leaf_hash FROM audit_entries WHERE sequence = 31) WHERE sequence = 30", 30),
            ("UPDATE audit_entries SET chain_hash = zeroblob(32) WHERE sequence = 5", 5),
        ])
    func tampering(sql: String, firstBad: Int64) async throws {
        let path = try await filledLog(50)
        try tamper(path, sql)
        let report = try AuditVerifier.verify(path: path)
        #expect(!report.isValid)
        #expect(report.firstBadEntry == firstBad, "\(report.problem ?? "")")
    }

    @Test("a rewritten entry with recomputed hashes still breaks the chain after it")
    func recomputedHashes() async throws {
        let path = try await filledLog(20)
        let db = try SQLiteDatabase(path: path)
        let read = try db.prepare("SELECT body FROM audit_entries WHERE sequence = 10")
        #expect(try read.step())
        let forged = read.string(0)!.replacingOccurrences(of: "safety-assessment", with: "handover")
        let update = try db.prepare("UPDATE audit_entries SET body = ?, leaf_hash = ? WHERE sequence = 10")
        update.bind(1, forged)
        update.bind(2, MerkleTree.leafHash(Array(forged.utf8)))
        try update.step()
        let report = try AuditVerifier.verify(path: path)
        #expect(report.firstBadEntry == 10)
    }

    @Test("bytes flipped in the database file: reported as tampering or corruption, never a clean pass")
    func flippedBytes() async throws {
        let path = try await filledLog(200)
        // Checkpoint the WAL into the main file so the entries live there.
        try SQLiteDatabase(path: path).execute("PRAGMA wal_checkpoint(TRUNCATE)")
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        var flipped = 0
        for offset in stride(from: 4096 + 500, to: data.count, by: 4096) {
            data[offset] ^= 0x5a
            flipped += 1
        }
        #expect(flipped > 0)
        try data.write(to: URL(fileURLWithPath: path))
        let report = try? AuditVerifier.verify(path: path)
        #expect(report == nil || report!.isValid == false)
    }

    @Test("an unwritable log fails every waiting append (fail closed)")
    func unwritable() async throws {
        let path = temporaryPath()
        let log = try AuditLog(path: path)
        #expect(try await log.append(record(0)) == 1)
        // Simulate a full disk for a second writer: no page may be added any more.
        let other = try AuditLog(path: path)
        try other.fillToLimitForTest()
        await #expect(throws: KetenpoortError(.auditUnavailable, "")) {
            for i in 0..<200 { _ = try await other.append(self.record(i)) }
        }
        other.close()
        log.close()
    }

    @Test("completion-based appends: each called once, after the commit, with its own number; a closed log fails them")
    func completionAppends() async throws {
        let path = temporaryPath()
        let log = try AuditLog(path: path)
        let results = Mutex<[Int: Int64]>([:])
        let done = DispatchGroup()
        for i in 0..<200 {
            done.enter()
            log.append(record(i)) { result in
                results.withLock { map in
                    #expect(map[i] == nil, "completion called twice")
                    if case .success(let sequence) = result { map[i] = sequence }
                }
                done.leave()
            }
        }
        #expect(done.wait(timeout: .now() + 30) == .success)
        let numbered = results.withLock { $0 }
        #expect(numbered.count == 200)
        #expect(Set(numbered.values) == Set(1...200))
        // Every number the completion reported is durable: a fresh reader sees the entry.
        #expect(try AuditVerifier.verify(path: path).entries == 200)
        log.close()
        let failed = Mutex<KetenpoortError?>(nil)
        log.append(record(999)) { result in
            if case .failure(let error) = result { failed.withLock { $0 = error as? KetenpoortError } }
        }
        #expect(failed.withLock { $0?.code } == .auditUnavailable)
    }

    /// A review of `ex-1` that stands on the row still being pending, with a side write of its own.
    func review(_ outcome: String) -> AuditRecord {
        var r = AuditRecord(kind: "review", members: [("exchangeId", "ex-1"), ("outcome", .string(outcome))])
        r.precondition = Precondition(
            "UPDATE reviews SET state = ? WHERE id = 'ex-1' AND state = 'pending'", [.text(outcome)], otherwise: KetenpoortError(.conflict, "reviewed meanwhile"))
        r.sideWrites = [SideWrite("INSERT INTO side_rows (note, sequence) VALUES (?, ?)", [.text(outcome), .sequence])]
        return r
    }

    @Test("preconditions: of two records in one batch that change one row, the first is written; the second alone fails with its conflict, unnumbered and without its side writes; the rest of the batch is written and the log verifies")
    func preconditions() async throws {
        let path = temporaryPath()
        let db = try SQLiteDatabase(path: path)
        try db.execute(
            "CREATE TABLE reviews (id TEXT PRIMARY KEY, state TEXT NOT NULL); INSERT INTO reviews VALUES ('ex-1', 'pending'); CREATE TABLE side_rows (note TEXT NOT NULL, sequence INTEGER NOT NULL)")
        let log = try AuditLog(path: path)
        #expect(try await log.append(record(0)) == 1)
        // Handed over at once: the writer takes them in one group commit.
        let records = [record(1), review("upheld"), record(2), review("not-upheld"), record(3)]
        let results = Mutex<[Int: Result<Int64, Error>]>([:])
        let done = DispatchGroup()
        var together: [(AuditRecord, AuditLog.Completion)] = []
        for (i, r) in records.enumerated() {
            done.enter()
            together.append((r, { result in
                results.withLock { map in
                    #expect(map[i] == nil, "completion called twice")
                    map[i] = result
                }
                done.leave()
            }))
        }
        log.appendTogether(together)
        #expect(done.wait(timeout: .now() + 30) == .success)
        let got = results.withLock { $0 }
        func sequence(_ i: Int) -> Int64? { if case .success(let s) = got[i] { return s } else { return nil } }
        #expect([0, 1, 2, 4].map(sequence) == [2, 3, 4, 5], "numbered consecutively, the refused record skipped")
        guard case .failure(let error) = got[3] else {
            Issue.record("the second review was written: \(String(describing: got[3]))")
            return
        }
        #expect((error as? KetenpoortError)?.code == .conflict)
        #expect((error as? KetenpoortError)?.message == "reviewed meanwhile")
        // A refused record alone in its batch: nothing written, the next entry follows on.
        await #expect(throws: KetenpoortError(.conflict, "")) { try await log.append(self.review("needs-follow-up")) }
        #expect(try await log.append(record(4)) == 6)
        log.close()

        // The database keeps what the log says: the first review, its side write with its number.
        #expect(try db.rows("SELECT state FROM reviews", []).map { $0.string(0) } == ["upheld"])
        #expect(try db.rows("SELECT note, sequence FROM side_rows", []).map { "\($0.string(0) ?? "") \($0.int64(1))" } == ["upheld 3"])
        let store = try SQLiteAuditStore(readingFrom: path)
        var entries: [StoredEntry] = []
        try store.entries(matching: AuditQuery()) { entries.append($0); return true }
        #expect(entries.map(\.sequence) == Array(1...6))
        #expect(entries.filter { $0.kind == "review" }.map(\.sequence) == [3])
        #expect(entries.contains { $0.body?.contains("not-upheld") == true || $0.body?.contains("needs-follow-up") == true } == false)
        #expect(Set(entries[1...4].map(\.time)).count == 1, "one group commit")
        let report = try AuditVerifier.verify(path: path)
        #expect(report.isValid, "\(report.problem ?? "")")
        #expect(report.entries == 6)
    }

    @Test(
        "retention dates: years added by hand, 29 February becomes 28 in a common year, malformed input unchanged",
        arguments: [
            ("2026-12-01", 5, "2031-12-01"), ("2024-02-29", 1, "2025-02-28"), ("2024-02-29", 4, "2028-02-29"), ("0999-01-09", 1, "1000-01-09"),
            ("2026-1-01", 5, "2026-1-01"), ("2026-12-0x", 5, "2026-12-0x"), ("", 5, ""),
        ])
    func retentionDate(date: String, years: Int, expected: String) {
        #expect(AuditRecorder.date(date, plusYears: years) == expected)
    }

    @Test(
        "log timestamps: RFC 3339 in UTC with milliseconds, digits written by hand, read back by the parser",
        arguments: [
            // Fractions exact in binary, so the milliseconds are exact too.
            (0.0, "1970-01-01T00:00:00.000Z"), (951_782_400.5, "2000-02-29T00:00:00.500Z"), (1_796_083_199.875, "2026-11-30T23:59:59.875Z"),
            (1_796_000_000.125, "2026-11-30T00:53:20.125Z"), (4_102_444_800.25, "2100-01-01T00:00:00.250Z"),
        ])
    func timestamp(seconds: Double, expected: String) throws {
        let text = AuditClock.timestamp(Date(timeIntervalSince1970: seconds))
        #expect(text == expected)
        let back = try #require(AuditClock.parse(text))
        #expect(abs(back.timeIntervalSince1970 - seconds) < 0.001)
    }
}
