import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one audit entry says, before the log gives it a sequence number and a time. Members
/// must never hold personal data in clear: subjects as log-domain pseudonyms, free text only
/// encrypted (as its hash here).
public struct AuditRecord: Sendable {
    public var kind: String
    public var members: [(String, JSONValue)]

    public init(kind: String, members: [(String, JSONValue)]) {
        self.kind = kind
        self.members = members
    }
}

/// The append-only, hash-chained audit log in SQLite (WAL, `synchronous=FULL`).
///
/// Each entry's canonical form is its JSON object with keys sorted (UTF-8, no whitespace),
/// including `sequence`, `time` and `kind`. Its leaf hash is SHA-256(0x00 ‖ canonical) (RFC 9162
/// leaf), and its chain hash SHA-256(previous chain hash ‖ leaf hash), starting from 32 zero
/// bytes. Appends from many callers are group-committed: one writer thread takes everything
/// waiting, writes it in one transaction, and answers each caller only after the commit (one
/// fsync for many entries). If the log cannot be written, every waiting append fails.
public final class AuditLog: @unchecked Sendable {
    // The database is used by the writer thread only (appends) or under `readLock` (reads).
    private let database: SQLiteDatabase
    private let condition = NSCondition()
    private var pending: [(AuditRecord, CheckedContinuation<Int64, Error>)] = []
    private var stopped = false
    private var lastChain: [UInt8]
    private var nextSequence: Int64
    private let maxBatch: Int
    private var writer: Thread?

    public static let schema = """
        CREATE TABLE IF NOT EXISTS audit_entries (
            sequence INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            body TEXT NOT NULL,
            leaf_hash BLOB NOT NULL,
            chain_hash BLOB NOT NULL
        );
        """

    public init(path: String, synchronous: SQLiteDatabase.Synchronous = .full, maxBatch: Int = 1_024) throws {
        database = try SQLiteDatabase(path: path, synchronous: synchronous)
        try database.execute(AuditLog.schema)
        let last = try database.prepare("SELECT sequence, chain_hash FROM audit_entries ORDER BY sequence DESC LIMIT 1")
        if try last.step() {
            nextSequence = last.int64(0) + 1
            lastChain = last.blob(1) ?? []
        } else {
            nextSequence = 1
            lastChain = [UInt8](repeating: 0, count: 32)
        }
        self.maxBatch = maxBatch
        // The writer holds the log until `close()`: call it when done.
        let thread = Thread { self.writeLoop() }
        thread.name = "ketenpoort-audit-writer"
        writer = thread
        thread.start()
    }

    /// Stops the writer; appends waiting are written first.
    public func close() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    /// For tests: lets no page be added to this connection's database (a full disk).
    func fillToLimitForTest() throws {
        condition.lock()
        defer { condition.unlock() }
        let count = try database.prepare("PRAGMA page_count")
        _ = try count.step()
        try database.execute("PRAGMA max_page_count = \(count.int64(0))")
    }

    /// Appends one entry; returns its sequence number once it is durable.
    public func append(_ record: AuditRecord) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            condition.lock()
            if stopped {
                condition.unlock()
                continuation.resume(throwing: KetenpoortError(.auditUnavailable, "the audit log is closed"))
                return
            }
            pending.append((record, continuation))
            condition.signal()
            condition.unlock()
        }
    }

    private func writeLoop() {
        while true {
            condition.lock()
            while pending.isEmpty && !stopped { condition.wait() }
            if pending.isEmpty && stopped {
                condition.unlock()
                return
            }
            let batch = Array(pending.prefix(maxBatch))
            pending.removeFirst(batch.count)
            condition.unlock()
            write(batch)
        }
    }

    private func write(_ batch: [(AuditRecord, CheckedContinuation<Int64, Error>)]) {
        let time = AuditLog.timestamp()
        var chain = lastChain
        var sequence = nextSequence
        var rows: [(Int64, String, [UInt8], [UInt8])] = []
        rows.reserveCapacity(batch.count)
        for (record, _) in batch {
            let body = AuditLog.canonical(record, sequence: sequence, time: time)
            let leaf = MerkleTree.leafHash(Array(body.utf8))
            chain = Crypto.sha256(chain + leaf)
            rows.append((sequence, body, leaf, chain))
            sequence += 1
        }
        do {
            try database.transaction {
                let insert = try database.prepare("INSERT INTO audit_entries (sequence, time, body, leaf_hash, chain_hash) VALUES (?, ?, ?, ?, ?)")
                for (seq, body, leaf, chainHash) in rows {
                    insert.reset()
                    insert.bind(1, seq)
                    insert.bind(2, time)
                    insert.bind(3, body)
                    insert.bind(4, leaf)
                    insert.bind(5, chainHash)
                    try insert.step()
                }
            }
            lastChain = chain
            nextSequence = sequence
            for (index, (_, continuation)) in batch.enumerated() { continuation.resume(returning: rows[index].0) }
        } catch {
            // Fail closed: nothing in this batch is acknowledged.
            let failure = KetenpoortError(.auditUnavailable, "the audit log cannot be written: \((error as? KetenpoortError)?.message ?? "storage error")")
            for (_, continuation) in batch { continuation.resume(throwing: failure) }
        }
    }

    /// The canonical JSON of an entry: keys sorted, no whitespace.
    public static func canonical(_ record: AuditRecord, sequence: Int64, time: String) -> String {
        var members = record.members.filter { !["sequence", "time", "kind"].contains($0.0) }
        members.append(("sequence", .number(Double(sequence))))
        members.append(("time", .string(time)))
        members.append(("kind", .string(record.kind)))
        return JSONValue.object(members).serialized(sortedKeys: true)
    }

    static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date())
    }
}

/// `ketenpoort log verify`: re-derives every hash and the chain.
public enum AuditVerifier {
    public struct Report: Sendable {
        public var entries: Int64
        public var treeHead: [UInt8]
        /// The first entry that does not verify, and why (nil: all verify).
        public var firstBadEntry: Int64?
        public var problem: String?
        public var isValid: Bool { firstBadEntry == nil && problem == nil }
    }

    static let sequenceKey = Array("\"sequence\":".utf8)

    /// Whether a canonical entry carries `"sequence":N` for this N.
    static func carries(sequence: Int64, _ body: UnsafeRawBufferPointer) -> Bool {
        let keyCount = sequenceKey.count
        guard body.count > keyCount else { return false }
        var start = -1
        sequenceKey.withUnsafeBytes { key in
            let first = key[0]
            var i = 0
            while i <= body.count - keyCount {
                if body[i] == first && memcmp(body.baseAddress! + i, key.baseAddress!, keyCount) == 0 {
                    start = i
                    return
                }
                i += 1
            }
        }
        guard start >= 0 else { return false }
        var offset = start + keyCount
        var value: Int64 = 0
        var digits = 0
        while offset < body.count, body[offset] >= 48, body[offset] <= 57, digits < 19 {
            value = value * 10 + Int64(body[offset] - 48)
            offset += 1
            digits += 1
        }
        return digits > 0 && value == sequence
    }

    public static func verify(path: String) throws -> Report {
        guard FileManager.default.fileExists(atPath: path) else {
            throw KetenpoortError(.fileUnreadable, "database `\(path)` does not exist")
        }
        let db = try SQLiteDatabase(path: path, readOnly: true)
        let hasher = SHA256Hasher()
        var leaves: [[UInt8]] = []
        var chain = [UInt8](repeating: 0, count: 32)
        var leaf = [UInt8](repeating: 0, count: 32)
        var next = [UInt8](repeating: 0, count: 32)
        var expected: Int64 = 1
        let leafPrefix: [UInt8] = [0x00]
        func bad(_ sequence: Int64, _ why: String) -> Report {
            Report(entries: Int64(leaves.count), treeHead: MerkleTree.rootIteratively(leaves), firstBadEntry: sequence, problem: why)
        }
        do {
            let rows = try db.prepare("SELECT sequence, body, leaf_hash, chain_hash FROM audit_entries ORDER BY sequence")
            while try rows.step() {
                let sequence = rows.int64(0)
                guard sequence == expected else {
                    return bad(expected, sequence > expected ? "entry \(expected) is missing" : "sequence out of order")
                }
                // The body must carry its own sequence number: canonical JSON has `"sequence":N`
                // exactly once (a quote inside a string value is always escaped).
                let ownSequence = rows.withBytes(1) { body -> Bool in AuditVerifier.carries(sequence: sequence, body) }
                rows.withBytes(1) { body in
                    leafPrefix.withUnsafeBytes { prefix in leaf.withUnsafeMutableBufferPointer { hasher.hash(prefix, body, into: $0.baseAddress!) } }
                }
                let leafMatches = rows.withBytes(2) { stored in stored.elementsEqual(leaf) }
                guard leafMatches else { return bad(sequence, "entry \(sequence) was changed: its hash does not match its content") }
                guard ownSequence else { return bad(sequence, "entry \(sequence) does not carry its own sequence number (moved or swapped)") }
                chain.withUnsafeBytes { previous in
                    leaf.withUnsafeBytes { leafBytes in next.withUnsafeMutableBufferPointer { hasher.hash(previous, leafBytes, into: $0.baseAddress!) } }
                }
                swap(&chain, &next)
                let chainMatches = rows.withBytes(3) { stored in stored.elementsEqual(chain) }
                guard chainMatches else { return bad(sequence, "entry \(sequence) breaks the hash chain") }
                leaves.append(leaf)
                expected += 1
            }
        } catch let error as KetenpoortError {
            return Report(entries: Int64(leaves.count), treeHead: MerkleTree.rootIteratively(leaves), firstBadEntry: expected, problem: "the database is unreadable or corrupt: \(error.message)")
        }
        return Report(entries: Int64(leaves.count), treeHead: MerkleTree.rootIteratively(leaves), firstBadEntry: nil, problem: nil)
    }
}
