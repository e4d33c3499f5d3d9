import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one audit entry says, before the log gives it a sequence number and a time. Nothing in
/// it is personal data in clear: subjects only as log-domain pseudonyms, free text only sealed
/// (the entry carries the hash of the sealed text). Build records with ``AuditRecorder``.
public struct AuditRecord: Sendable {
    public var kind: String
    public var members: [(String, JSONValue)]
    /// Log-domain pseudonyms of the people the entry is about (indexed for subject reports).
    public var subjects: [String]
    /// Free text sealed with the log text key: name → sealed bytes; the entry holds the hashes.
    public var texts: [(name: String, sealed: [UInt8])]
    /// The day (YYYY-MM-DD) after which the entry's details are erased.
    public var retainUntil: String?
    /// Entries whose details this entry erases (retention), in the same transaction.
    public var erases: [Int64]
    /// Rows written in the same transaction as the entry (a delivery record, a consent): both
    /// are durable together or neither is.
    public var sideWrites: [SideWrite] = []
    /// The statement that must change a row for the entry to be written at all (a review only
    /// while the exchange is still pending); `nil`: the entry is always written.
    public var precondition: Precondition?

    public init(kind: String, members: [(String, JSONValue)], subjects: [String] = [], texts: [(name: String, sealed: [UInt8])] = [], retainUntil: String? = nil, erases: [Int64] = []) {
        self.kind = kind
        self.members = members
        self.subjects = subjects
        self.texts = texts
        self.retainUntil = retainUntil
        self.erases = erases
    }
}

/// A value bound into a side write; `.sequence` is the entry's own sequence number.
public enum SQLValue: Sendable {
    case text(String)
    case integer(Int64)
    case blob([UInt8])
    case null
    case sequence

    /// The value bound, `.sequence` being the entry's number.
    func parameter(sequence: Int64) -> SQLParameter {
        switch self {
        case .text(let t): return .text(t)
        case .integer(let n): return .integer(n)
        case .blob(let b): return .blob(b)
        case .null: return .null
        case .sequence: return .integer(sequence)
        }
    }
}

/// One statement run in the same transaction as an entry. The SQL is fixed by the caller's code,
/// never built from input; values are bound. It must not fail on a conflict (use `OR IGNORE`
/// or a guarded `UPDATE`): a failing side write fails the whole group commit. A guarded `UPDATE`
/// that matches no row is not an error, and the entry is written all the same: when the entry
/// claims the change (a review, a date recorded), make the statement its ``Precondition``.
public struct SideWrite: Sendable {
    public let sql: String
    public let values: [SQLValue]
    public init(_ sql: String, _ values: [SQLValue]) {
        self.sql = sql
        self.values = values
    }
}

/// The statement an entry stands on: an `UPDATE` (or `INSERT OR IGNORE`) that must change at
/// least one row for the entry to be written. It makes the caller's check ("still pending", "not
/// yet informed", "this claim is still ours") part of the commit, so of two requests that both
/// passed the check only the one whose statement changes the row is logged.
///
/// It runs in the group commit's transaction, in batch order, before any entry of the batch is
/// numbered (and so before every side write of the batch: it cannot stand on a row another
/// record of the same batch writes). When it changes no row, the record is left out of the batch
/// — not numbered, not hashed, none of its side writes run — and only its append fails, with
/// `failure`; the rest of the batch is written as usual. A statement that changed nothing leaves
/// nothing to undo. Its values are plain parameters: the entry's sequence number is not known
/// when it runs (bind `.sequence` in a side write).
public struct Precondition: Sendable {
    public let sql: String
    public let values: [SQLParameter]
    /// What the append fails with when the statement changes no row (a conflict the caller
    /// answers: never personal data).
    public let failure: KetenpoortError
    public init(_ sql: String, _ values: [SQLParameter], otherwise failure: KetenpoortError) {
        self.sql = sql
        self.values = values
        self.failure = failure
    }
}

/// Signs tree heads: the log's Ed25519 key and the name partners know it by.
public struct CheckpointSigner: Sendable {
    public let origin: String
    public let key: Ed25519PrivateKey
    public init(origin: String, key: Ed25519PrivateKey) {
        self.origin = origin
        self.key = key
    }

    public func sign(treeSize: Int64, root: [UInt8], time: String) throws -> StoredCheckpoint {
        let note = try Checkpoint(origin: origin, treeSize: treeSize, rootHash: root).signedNote(keyName: origin, key: key)
        return StoredCheckpoint(treeSize: treeSize, time: time, rootHash: root, note: note)
    }
}

/// When the writer signs a tree head: after `entries` new entries, or `seconds` after the last
/// one if anything was appended since.
public struct CheckpointSchedule: Sendable {
    public var entries: Int64
    public var seconds: Double
    public init(entries: Int64 = 1_000, seconds: Double = 60) {
        self.entries = entries
        self.seconds = seconds
    }
}

/// The append-only, hash-chained audit log.
///
/// Each entry's canonical form is its JSON object with keys sorted (UTF-8, no whitespace),
/// including `sequence`, `time` and `kind` (see docs/audit-log.md). Its leaf hash is
/// SHA-256(0x00 ‖ canonical) (RFC 9162 leaf), and its chain hash SHA-256(previous chain hash ‖
/// leaf hash), starting from 32 zero bytes. The interior nodes of the RFC 9162 tree are stored
/// as they complete, so proofs need no full rebuild. Appends from many callers are
/// group-committed: one writer thread takes everything waiting, writes it in one transaction,
/// and answers each caller only after the commit (one fsync for many entries). If the log
/// cannot be written, every waiting append fails (fail closed). A record whose ``Precondition``
/// changes no row is left out of its batch and only its own append fails, with the
/// precondition's `failure`. Tree heads are signed every `schedule.entries` entries or
/// `schedule.seconds` seconds.
public final class AuditLog: @unchecked Sendable {
    // The store is used by the writer thread only.
    private let store: AuditStore
    private let condition = NSCondition()
    /// Called once with the entry's sequence number when it is durable, or the failure
    /// (`audit_unavailable`, or the record's `precondition.failure`). Runs on the writer thread:
    /// keep it short (complete a promise, resume a continuation).
    public typealias Completion = @Sendable (Result<Int64, Error>) -> Void
    private var pending: [(AuditRecord, Completion)] = []
    private var stopped = false
    private var finished = false
    private let maxBatch: Int
    private let signer: CheckpointSigner?
    private let schedule: CheckpointSchedule
    private var checkpointRequested: [CheckedContinuation<StoredCheckpoint?, Error>] = []
    private let walCheckpointer: WALCheckpointer?
    /// Told after every commit (or probe) whether the log could be written; runs on the writer
    /// thread. The gateway's readiness follows it.
    public typealias CommitObserver = @Sendable (_ written: Bool) -> Void
    private let observer: CommitObserver?
    /// After a failed commit the writer probes the store this often, so the log is found
    /// writable again without waiting for a request (which a not-ready instance may never get).
    static let probeInterval: TimeInterval = 1

    public convenience init(
        path: String, synchronous: SQLiteDatabase.Synchronous = .full, maxBatch: Int = 1_024, signer: CheckpointSigner? = nil,
        schedule: CheckpointSchedule = CheckpointSchedule()
    ) throws {
        try self.init(store: try SQLiteAuditStore(path: path, synchronous: synchronous), maxBatch: maxBatch, signer: signer, schedule: schedule)
    }

    public init(
        store: AuditStore, maxBatch: Int = 1_024, signer: CheckpointSigner? = nil, schedule: CheckpointSchedule = CheckpointSchedule(),
        observer: CommitObserver? = nil
    ) throws {
        self.store = store
        self.observer = observer
        _ = try store.tail()
        self.maxBatch = maxBatch
        self.signer = signer
        self.schedule = schedule
        walCheckpointer = (store as? SQLiteAuditStore)?.writablePath.map { WALCheckpointer(path: $0) }
        // The writer holds the log until `close()`: call it when done.
        let thread = Thread { self.writeLoop() }
        thread.name = "ketenpoort-audit-writer"
        thread.start()
    }

    /// Stops the writer once what is waiting is written; returns when it has stopped.
    public func close() {
        condition.lock()
        stopped = true
        condition.signal()
        while !finished { condition.wait() }
        condition.unlock()
        walCheckpointer?.stop()
    }

    /// For tests: lets no page be added to the database (a full disk).
    func fillToLimitForTest() throws {
        condition.lock()
        defer { condition.unlock() }
        try (store as? SQLiteAuditStore)?.fillToLimitForTest()
    }

    /// Appends one entry; returns its sequence number once it is durable.
    public func append(_ record: AuditRecord) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            append(record) { continuation.resume(with: $0) }
        }
    }

    /// Appends one entry and calls `completion` (on the writer thread) once it is durable. For
    /// callers on an event loop: no task, no extra thread hop.
    public func append(_ record: AuditRecord, completion: @escaping Completion) {
        handToWriter(ifClosed: { completion(.failure($0)) }) { pending.append((record, completion)) }
    }

    /// For tests: hands several records over at once, so that the writer takes them in one group
    /// commit (up to `maxBatch`).
    func appendTogether(_ records: [(AuditRecord, Completion)]) {
        handToWriter(ifClosed: { error in for (_, completion) in records { completion(.failure(error)) } }) { pending.append(contentsOf: records) }
    }

    /// Queues work for the writer thread, or fails it when the log is closed.
    private func handToWriter(ifClosed fail: (KetenpoortError) -> Void, _ enqueue: () -> Void) {
        condition.lock()
        if stopped {
            condition.unlock()
            fail(KetenpoortError(.auditUnavailable, "the audit log is closed"))
            return
        }
        enqueue()
        condition.signal()
        condition.unlock()
    }

    /// Signs a tree head now if entries were appended since the last one; returns the newest.
    public func checkpoint() async throws -> StoredCheckpoint? {
        try await withCheckedThrowingContinuation { continuation in
            handToWriter(ifClosed: { continuation.resume(throwing: $0) }) { checkpointRequested.append(continuation) }
        }
    }

    private func writeLoop() {
        var lastWrite = Date()
        var writable = true
        while true {
            condition.lock()
            while pending.isEmpty && checkpointRequested.isEmpty && !stopped {
                if !writable {
                    if !condition.wait(until: Date(timeIntervalSinceNow: AuditLog.probeInterval)) { break }
                } else if signer != nil {
                    if !condition.wait(until: Date(timeIntervalSinceNow: max(0.05, schedule.seconds / 4))) { break }
                } else {
                    condition.wait()
                }
            }
            if pending.isEmpty && checkpointRequested.isEmpty && stopped {
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let batch = Array(pending.prefix(maxBatch))
            pending.removeFirst(batch.count)
            let requests = checkpointRequested
            checkpointRequested = []
            condition.unlock()
            if !batch.isEmpty || !requests.isEmpty {
                writable = write(batch, forceCheckpoint: !requests.isEmpty, requests: requests)
                lastWrite = Date()
            } else if !writable {
                // An empty commit writes nothing and would pass on a full disk: probe with a row.
                writable = probe()
            } else if Date().timeIntervalSince(lastWrite) >= schedule.seconds / 4 {
                writable = write([], forceCheckpoint: false, requests: [])
                lastWrite = Date()
            }
        }
    }

    private func dueCheckpoint(_ tail: AuditTail, now: Date, force: Bool) -> Bool {
        guard signer != nil, tail.size > tail.checkpointSize else { return false }
        if force || tail.size - tail.checkpointSize >= schedule.entries { return true }
        guard let last = tail.checkpointTime else { return now.timeIntervalSince(.distantPast) >= schedule.seconds }
        return now.timeIntervalSince(last) >= schedule.seconds
    }

    /// Commits one row outside the log (`audit_health`): whether the store takes a durable write.
    private func probe() -> Bool {
        let written: Bool
        do {
            _ = try store.append { tail in
                var batch = AuditBatch(tail: tail)
                batch.sideWrites = [(AuditLog.probeWrite(time: AuditClock.timestamp()), 0)]
                return batch
            }
            written = true
        } catch {
            written = false
        }
        observer?(written)
        return written
    }

    static func probeWrite(time: String) -> SideWrite {
        SideWrite(
            "INSERT INTO audit_health (id, probed_at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at", [.text(time)])
    }

    /// Writes `batch` (and a checkpoint when due) in one commit; `false` when it failed.
    @discardableResult
    private func write(_ batch: [(AuditRecord, Completion)], forceCheckpoint: Bool, requests: [CheckedContinuation<StoredCheckpoint?, Error>]) -> Bool {
        // Whether each record's precondition held (`true` without one), as the commit found it.
        var held: [Bool] = []
        do {
            let written = try store.append(preconditions: batch.map(\.0.precondition)) { start, found in
                guard found.count == batch.count else {
                    throw KetenpoortError(.storage, "the store reported \(found.count) preconditions for \(batch.count) records")
                }
                held = found
                // Read the clock inside the transaction, after the store's write lock: with
                // several writers (instances on PostgreSQL, `log retention` beside the gateway)
                // entry times then follow sequence order.
                let now = Date()
                let time = AuditClock.timestamp(now)
                var result = AuditLog.batch(AuditLog.admitted(batch.map(\.0), held: found), after: start, time: time)
                var tail = result.tail
                if dueCheckpoint(tail, now: now, force: forceCheckpoint), let signer {
                    let checkpoint = try signer.sign(treeSize: tail.size, root: tail.root, time: time)
                    result.checkpoint = checkpoint
                    tail.checkpointSize = tail.size
                    tail.checkpointTime = now
                }
                result.tail = tail
                return result
            }
            observer?(true)
            // The entries are the admitted records, in order; a refused record gets its failure.
            var entries = written.entries.makeIterator()
            for (index, (record, completion)) in batch.enumerated() {
                if index < held.count, held[index], let entry = entries.next() {
                    completion(.success(entry.sequence))
                } else {
                    completion(.failure(record.precondition?.failure ?? KetenpoortError(.auditUnavailable, "the audit log did not write the entry")))
                }
            }
            if !requests.isEmpty {
                let newest = written.checkpoint ?? (try? store.checkpoints().last)
                for r in requests { r.resume(returning: newest) }
            }
            return true
        } catch {
            // Fail closed: nothing in this batch is acknowledged.
            let failure = KetenpoortError(.auditUnavailable, "the audit log cannot be written: \((error as? KetenpoortError)?.message ?? "storage error")")
            observer?(false)
            for (_, completion) in batch { completion(.failure(failure)) }
            for r in requests { r.resume(throwing: failure) }
            return false
        }
    }

    /// The records whose precondition held (`held` has one flag per record), in order.
    static func admitted(_ records: [AuditRecord], held: [Bool]) -> [AuditRecord] {
        zip(records, held).compactMap { $1 ? $0 : nil }
    }

    /// Numbers, hashes and chains `records` after `tail`: the rows one group commit writes.
    static func batch(_ records: [AuditRecord], after start: AuditTail, time: String) -> AuditBatch {
        var tail = start
        var result = AuditBatch(tail: tail)
        result.entries.reserveCapacity(records.count)
        for record in records {
            let sequence = tail.size + 1
            let body = AuditLog.canonical(record, sequence: sequence, time: time)
            let leaf = MerkleTree.leafHash(Array(body.utf8))
            tail.chain = Crypto.sha256(tail.chain + leaf)
            result.nodes.append(contentsOf: tail.push(leaf: leaf))
            result.entries.append((sequence, time, record.kind, record.retainUntil, body, leaf, tail.chain))
            for subject in record.subjects { result.subjects.append((subject, sequence)) }
            for text in record.texts { result.texts.append((Crypto.sha256(text.sealed), sequence, text.sealed)) }
            result.erase.append(contentsOf: record.erases)
            for write in record.sideWrites { result.sideWrites.append((write, sequence)) }
        }
        result.tail = tail
        return result
    }

    /// Loads many records in large transactions without the writer thread (benchmarks, imports).
    /// A record whose precondition changes no row is left out.
    public static func bulkLoad(_ records: [AuditRecord], into store: AuditStore, signer: CheckpointSigner?) throws {
        let time = AuditClock.timestamp()
        var start = 0
        while start < records.count {
            let chunk = Array(records[start..<min(records.count, start + 20_000)])
            start += chunk.count
            let last = start == records.count
            _ = try store.append(preconditions: chunk.map(\.precondition)) { tail, held in
                var result = batch(admitted(chunk, held: held), after: tail, time: time)
                if last, let signer {
                    result.checkpoint = try signer.sign(treeSize: result.tail.size, root: result.tail.root, time: time)
                    result.tail.checkpointSize = result.tail.size
                    result.tail.checkpointTime = Date()
                }
                return result
            }
        }
    }

    /// The canonical JSON of an entry: keys sorted, no whitespace; the log's own members
    /// (`sequence`, `time`, `kind`, `subjects`, `texts`, `retainUntil`, `erases`) override any
    /// member of the same name.
    public static func canonical(_ record: AuditRecord, sequence: Int64, time: String) -> String {
        var members = record.members.filter { !reservedMembers.contains($0.0) }
        members.reserveCapacity(members.count + 7)
        members.append(("sequence", .number(Double(sequence))))
        members.append(("time", .string(time)))
        members.append(("kind", .string(record.kind)))
        if !record.subjects.isEmpty { members.append(("subjects", .array(record.subjects.map { .string($0) }))) }
        if !record.texts.isEmpty {
            members.append(("texts", .object(record.texts.map { ($0.name, .string(Hex.encode(Crypto.sha256($0.sealed)))) })))
        }
        if let retain = record.retainUntil { members.append(("retainUntil", .string(retain))) }
        if !record.erases.isEmpty { members.append(("erases", .array(AuditLog.ranges(record.erases).map { .array([.number(Double($0.lowerBound)), .number(Double($0.upperBound))]) }))) }
        return JSONValue.object(members).serialized(sortedKeys: true)
    }

    /// The log's own members, which override a record's member of the same name.
    static let reservedMembers: Set<String> = ["sequence", "time", "kind", "subjects", "texts", "retainUntil", "erases"]

    /// Sorted sequences as closed ranges.
    public static func ranges(_ sequences: [Int64]) -> [ClosedRange<Int64>] {
        var result: [ClosedRange<Int64>] = []
        for s in sequences.sorted() {
            if let last = result.last, last.upperBound + 1 == s {
                result[result.count - 1] = last.lowerBound...s
            } else if result.last?.contains(s) != true {
                result.append(s...s)
            }
        }
        return result
    }
}

/// Copies the WAL back into the database every half second on a connection of its own
/// (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for, or blocks, the writer), so the writer's
/// commits are not stalled by checkpoints and the WAL does not grow without bound.
final class WALCheckpointer: @unchecked Sendable {
    private let condition = NSCondition()
    private var stopped = false
    private var finished = false

    init(path: String) {
        let thread = Thread { [self] in
            let db = try? SQLiteDatabase(path: path)
            condition.lock()
            while !stopped {
                _ = condition.wait(until: Date(timeIntervalSinceNow: 0.5))
                if stopped { break }
                condition.unlock()
                try? db?.execute("PRAGMA wal_checkpoint(PASSIVE)")
                condition.lock()
            }
            condition.unlock()
            try? db?.execute("PRAGMA wal_checkpoint(PASSIVE)")
            // Closed before `stop()` returns: the caller may take the files over.
            _ = consume db
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "ketenpoort-wal-checkpointer"
        thread.start()
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }
}

/// Lowercase hexadecimal.
public enum Hex {
    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        append(bytes, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the lowercase hexadecimal of `bytes` as UTF-8.
    public static func append(_ bytes: some Sequence<UInt8>, to out: inout [UInt8]) {
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
    }

    private static let digits = Array("0123456789abcdef".utf8)

    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
