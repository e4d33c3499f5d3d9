import Foundation
import KetenpoortCore
import KetenpoortStore

#if canImport(Glibc)
import Glibc
#endif

/// The end of the log as the writer needs it: size, last chain hash, the RFC 9162 "frontier"
/// (the roots of the perfect subtrees that make up the tree, largest first) and the last
/// checkpoint. A backend caches it and reloads it when another writer appended.
public struct AuditTail: Sendable {
    public var size: Int64
    public var chain: [UInt8]
    public var frontier: [(level: Int, hash: [UInt8])]
    public var checkpointSize: Int64
    public var checkpointTime: Date?

    public static let empty = AuditTail(
        size: 0, chain: [UInt8](repeating: 0, count: 32), frontier: [], checkpointSize: 0, checkpointTime: nil)

    /// MTH over all entries, folded from the frontier (RFC 9162 §2.1.1).
    public var root: [UInt8] {
        guard var acc = frontier.last?.hash else { return MerkleTree.emptyRoot }
        for node in frontier.dropLast().reversed() { acc = MerkleTree.nodeHash(node.hash, acc) }
        return acc
    }

    /// The tail of a log of `size` entries ending in `chain`: its frontier read through `node`.
    static func load(size: Int64, chain: [UInt8], node: (Int, Int64) throws -> [UInt8]) rethrows -> AuditTail {
        var tail = AuditTail.empty
        tail.size = size
        tail.chain = chain
        for (level, position) in frontierPositions(size: size) { tail.frontier.append((level, try node(level, position))) }
        return tail
    }

    /// The subtrees whose roots make up the frontier of a tree of `size` leaves, largest first.
    static func frontierPositions(size: Int64) -> [(level: Int, position: Int64)] {
        var positions: [(level: Int, position: Int64)] = []
        var offset: Int64 = 0
        for level in stride(from: 62, through: 0, by: -1) where size & (Int64(1) << Int64(level)) != 0 {
            positions.append((level, offset >> Int64(level)))
            offset += Int64(1) << Int64(level)
        }
        return positions
    }

    /// Adds a leaf; returns the interior nodes it completes as (level, position, hash).
    public mutating func push(leaf: [UInt8]) -> [(level: Int, position: Int64, hash: [UInt8])] {
        var completed: [(level: Int, position: Int64, hash: [UInt8])] = []
        let index = size
        frontier.append((0, leaf))
        while frontier.count >= 2, frontier[frontier.count - 1].level == frontier[frontier.count - 2].level {
            let right = frontier.removeLast()
            let left = frontier.removeLast()
            let level = left.level + 1
            let hash = MerkleTree.nodeHash(left.hash, right.hash)
            frontier.append((level, hash))
            completed.append((level, index >> Int64(level), hash))
        }
        size += 1
        return completed
    }
}

/// One entry as stored.
public struct StoredEntry: Sendable {
    public let sequence: Int64
    public let time: String
    public let kind: String
    /// The canonical JSON; `nil` once erased at retention (its hashes stay).
    public let body: String?
    public let leafHash: [UInt8]
    public let erasedAt: String?
}

/// A signed tree head as stored.
public struct StoredCheckpoint: Sendable {
    public let treeSize: Int64
    public let time: String
    public let rootHash: [UInt8]
    public let note: String
}

/// What one group commit writes, all in one transaction.
public struct AuditBatch: Sendable {
    public var entries: [(sequence: Int64, time: String, kind: String, retainUntil: String?, body: String, leaf: [UInt8], chain: [UInt8])] = []
    public var nodes: [(level: Int, position: Int64, hash: [UInt8])] = []
    public var subjects: [(pseudonym: String, sequence: Int64)] = []
    public var texts: [(hash: [UInt8], sequence: Int64, sealed: [UInt8])] = []
    public var erase: [Int64] = []
    public var sideWrites: [(SideWrite, Int64)] = []
    public var checkpoint: StoredCheckpoint?
    public var tail: AuditTail
    public init(tail: AuditTail) { self.tail = tail }
}

/// Filters for `log query` (all optional; combined with AND).
public struct AuditQuery: Sendable {
    public var from: String?
    public var until: String?
    public var kind: String?
    public var caseTable: String?
    public var sender: String?
    public var recipient: String?
    public var purpose: String?
    public var decision: String?
    public var basisType: String?
    /// Subject pseudonyms (one per key in the ring); made in memory from a BSN, never stored.
    public var subjects: [String]?
    public var limit: Int?
    /// Only entries after this sequence (a page cursor).
    public var afterSequence: Int64?
    public init() {}

    /// The WHERE conditions (combined with AND) over `audit_entries e` and their bound values, in
    /// order. `member` writes the backend's expression for a path into the entry's JSON body.
    func conditions(member: (_ path: [String]) -> String) -> (conditions: [String], values: [String]) {
        var conditions: [String] = []
        var values: [String] = []
        if let subjects {
            let marks = Array(repeating: "?", count: max(subjects.count, 1)).joined(separator: ", ")
            conditions.append("e.sequence IN (SELECT sequence FROM audit_subjects WHERE pseudonym IN (\(marks)))")
            values += subjects.isEmpty ? [""] : subjects
        }
        func add(_ sql: String, _ value: String?) {
            guard let value else { return }
            conditions.append(sql)
            values.append(value)
        }
        add("e.time >= ?", from)
        add("e.time < ?", until)
        add("e.kind = ?", kind)
        add("\(member(["caseTable"])) = ?", caseTable)
        add("\(member(["sender"])) = ?", sender)
        add("\(member(["recipient"])) = ?", recipient)
        add("\(member(["purpose"])) = ?", purpose)
        add("\(member(["decision"])) = ?", decision)
        add("\(member(["basis", "type"])) = ?", basisType)
        return (conditions, values)
    }
}

/// Where the audit log lives. SQLite is the embedded backend; PostgreSQL (several gateways)
/// implements the same interface.
public protocol AuditStore: AnyObject {
    /// Runs one durable write transaction: runs `preconditions` (one per record, `nil` for none)
    /// in order, reads the tail (reloading it when another writer appended), lets `build` make
    /// the batch from it and from which preconditions held — changed at least one row (`nil`
    /// always holds) — writes the batch, commits. A precondition that failed to run fails the
    /// transaction, like any other statement.
    func append(preconditions: [Precondition?], _ build: (AuditTail, _ held: [Bool]) throws -> AuditBatch) throws -> AuditBatch
    func tail() throws -> AuditTail
    /// The root of the perfect subtree at `level` and `position` (level 0: a leaf hash).
    func node(level: Int, position: Int64) throws -> [UInt8]
    func entry(sequence: Int64) throws -> StoredEntry?
    func entries(matching query: AuditQuery, _ each: (StoredEntry) throws -> Bool) throws
    func checkpoints() throws -> [StoredCheckpoint]
    /// The sealed text entry `sequence` refers to by `hash`.
    func sealedText(sequence: Int64, hash: [UInt8]) throws -> [UInt8]?
    /// Sequences of entries not yet erased whose retention ended before `date` (YYYY-MM-DD).
    func expired(before date: String) throws -> [Int64]
    /// The entries from `from` (through `through`, or to the end) in order, as the verifier reads
    /// them: sequence, body, leaf_hash, chain_hash, kind, erased_at, time, retain_until.
    func scan(from: Int64, through: Int64?) throws -> SQLCursor
    /// The highest sequence stored (0 when empty).
    func lastSequence() throws -> Int64
    /// The stored chain hash of one entry.
    func chainHash(sequence: Int64) throws -> [UInt8]?
    /// The exchange entries of a period, counted per flow (the route map).
    func observedFlows(from: String?, until: String?) throws -> [ObservedFlow]
    /// Whether the database holds a table of this name (a gateway database also holds the inbox).
    func hasTable(_ name: String) -> Bool
}

extension AuditStore {
    /// Runs one durable write transaction without preconditions (see
    /// ``append(preconditions:_:)``).
    public func append(_ build: (AuditTail) throws -> AuditBatch) throws -> AuditBatch {
        try append(preconditions: []) { tail, _ in try build(tail) }
    }
}

/// One observed flow: exchanges between two partners for a purpose, by decision and basis.
public struct ObservedFlow: Sendable, Hashable {
    public let caseTable: String
    public let sender: String
    public let recipient: String
    public let purpose: String
    public let decision: String
    public let basisType: String
    public let ground: String
    public let rule: String
    public let count: Int

    public init(caseTable: String, sender: String, recipient: String, purpose: String, decision: String, basisType: String, ground: String, rule: String, count: Int) {
        self.caseTable = caseTable
        self.sender = sender
        self.recipient = recipient
        self.purpose = purpose
        self.decision = decision
        self.basisType = basisType
        self.ground = ground
        self.rule = rule
        self.count = count
    }

    static func sorted(_ flows: [ObservedFlow]) -> [ObservedFlow] {
        flows.sorted { ($0.caseTable, $0.sender, $0.recipient, $0.purpose, $0.decision) < ($1.caseTable, $1.sender, $1.recipient, $1.purpose, $1.decision) }
    }
}

/// Opens the audit log wherever the configuration puts it.
public enum AuditStores {
    /// A store the writer appends through (creates the audit tables when missing).
    public static func writable(_ location: DatabaseLocation) throws -> AuditStore {
        switch location {
        case .sqlite(let path): return try SQLiteAuditStore(path: path)
        case .postgresql(let settings): return try PostgresAuditStore(settings: settings)
        }
    }

    /// A store for reading an existing log.
    public static func reading(_ location: DatabaseLocation) throws -> AuditStore {
        switch location {
        case .sqlite(let path): return try SQLiteAuditStore(readingFrom: path)
        case .postgresql(let settings): return try PostgresAuditStore(settings: settings, readOnly: true)
        }
    }
}

/// The audit log in SQLite (WAL), through the system libsqlite3.
public final class SQLiteAuditStore: AuditStore, @unchecked Sendable {
    // Used by one thread at a time: the writer thread, or one reader.
    private(set) var database: SQLiteDatabase
    private var cachedTail: AuditTail?
    private let writable: (path: String, synchronous: SQLiteDatabase.Synchronous)?
    /// After a failed write the connection may stay in SQLite's error state: the next write
    /// opens a fresh one (the uncommitted WAL frames are ignored on open).
    private var reopenBeforeNextWrite = false
    /// Prepared point lookups and inserts (proofs and group commits make many), kept by the
    /// connection.
    private func lookup(_ sql: String) throws -> SQLiteStatement { try database.cachedStatement(sql) }

    public static let schema = """
        CREATE TABLE IF NOT EXISTS audit_entries (
            sequence INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            kind TEXT NOT NULL,
            retain_until TEXT,
            body TEXT,
            leaf_hash BLOB NOT NULL,
            chain_hash BLOB NOT NULL,
            erased_at TEXT
        );
        CREATE INDEX IF NOT EXISTS audit_entries_retain ON audit_entries (retain_until) WHERE body IS NOT NULL AND retain_until IS NOT NULL;
        CREATE TABLE IF NOT EXISTS audit_tree (
            level INTEGER NOT NULL,
            position INTEGER NOT NULL,
            hash BLOB NOT NULL,
            PRIMARY KEY (level, position)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS audit_subjects (
            pseudonym TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            PRIMARY KEY (pseudonym, sequence)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS audit_texts (
            sequence INTEGER NOT NULL,
            hash BLOB NOT NULL,
            sealed BLOB NOT NULL,
            PRIMARY KEY (sequence, hash)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS audit_checkpoints (
            tree_size INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            root_hash BLOB NOT NULL,
            note TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS audit_health (
            id INTEGER PRIMARY KEY,
            probed_at TEXT NOT NULL
        );
        """

    /// Deletes an entry's subject index rows by (pseudonym, sequence), the table's key, with the
    /// pseudonyms read from the entry's `subjects`: a lookup per row, where `WHERE sequence = ?`
    /// alone would scan the whole index once per erased entry.
    static let eraseSubjects = """
        DELETE FROM audit_subjects WHERE sequence = ?1 AND pseudonym IN
            (SELECT value FROM json_each((SELECT body FROM audit_entries WHERE sequence = ?1), '$.subjects'))
        """

    public init(path: String, synchronous: SQLiteDatabase.Synchronous = .full) throws {
        database = try SQLiteDatabase(path: path, synchronous: synchronous)
        writable = (path, synchronous)
        try database.execute(SQLiteAuditStore.schema)
        // ``WALCheckpointer`` copies the WAL back beside the writer, so the writer's own
        // automatic checkpoint (inside a commit, stalling that batch) is rarely reached.
    }

    /// The path of a writable store (for its WAL checkpointer).
    var writablePath: String? { writable?.path }

    /// Opens an existing log for reading only.
    public init(readingFrom path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw KetenpoortError(.fileUnreadable, "database `\(path)` does not exist")
        }
        database = try SQLiteDatabase(path: path, readOnly: true)
        writable = nil
        let check = try database.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'audit_entries'")
        _ = try check.step()
        guard check.int64(0) == 1 else {
            throw KetenpoortError(.invalidInput, "database `\(path)` holds no audit log")
        }
    }

    public func hasTable(_ name: String) -> Bool {
        guard let statement = try? database.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?") else { return false }
        statement.bind(1, name)
        return (try? statement.step()) ?? false
    }

    /// For tests: lets no page be added to this connection's database (a full disk).
    func fillToLimitForTest() throws {
        let count = try database.prepare("PRAGMA page_count")
        _ = try count.step()
        try database.execute("PRAGMA max_page_count = \(count.int64(0))")
    }

    public func tail() throws -> AuditTail {
        let last = try lookup("SELECT sequence, chain_hash FROM audit_entries ORDER BY sequence DESC LIMIT 1")
        var size: Int64 = 0
        var chain = [UInt8](repeating: 0, count: 32)
        if try last.step() {
            size = last.int64(0)
            chain = last.blob(1) ?? []
        }
        last.reset()
        if let cached = cachedTail, cached.size == size, cached.chain == chain { return cached }
        var tail = try AuditTail.load(size: size, chain: chain) { try node(level: $0, position: $1) }
        let checkpoint = try database.prepare("SELECT tree_size, time FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1")
        if try checkpoint.step() {
            tail.checkpointSize = checkpoint.int64(0)
            tail.checkpointTime = AuditClock.parse(checkpoint.string(1) ?? "")
        }
        cachedTail = tail
        return tail
    }

    public func node(level: Int, position: Int64) throws -> [UInt8] {
        let statement: SQLiteStatement
        if level == 0 {
            statement = try lookup("SELECT leaf_hash FROM audit_entries WHERE sequence = ?")
            statement.bind(1, position + 1)
        } else {
            statement = try lookup("SELECT hash FROM audit_tree WHERE level = ? AND position = ?")
            statement.bind(1, Int64(level))
            statement.bind(2, position)
        }
        guard try statement.step(), let hash = statement.blob(0), hash.count == 32 else {
            statement.reset()
            throw KetenpoortError(.storageCorrupt, "the audit log's tree lacks node \(level)/\(position)")
        }
        statement.reset()
        return hash
    }

    public func append(preconditions: [Precondition?], _ build: (AuditTail, _ held: [Bool]) throws -> AuditBatch) throws -> AuditBatch {
        if reopenBeforeNextWrite, let writable {
            database = try SQLiteDatabase(path: writable.path, synchronous: writable.synchronous)
            reopenBeforeNextWrite = false
        }
        do {
            let batch = try database.transaction { () throws -> AuditBatch in
                // In order: a precondition sees what an earlier one of the batch changed.
                let held = try preconditions.map { precondition in
                    try precondition.map { try database.rowsChanged(by: $0.sql, $0.values) > 0 } ?? true
                }
                let batch = try build(try tail(), held)
                if !batch.erase.isEmpty {
                    let erase = try database.prepare("UPDATE audit_entries SET body = NULL, erased_at = ? WHERE sequence = ? AND body IS NOT NULL")
                    let subjects = try database.prepare(SQLiteAuditStore.eraseSubjects)
                    let texts = try database.prepare("DELETE FROM audit_texts WHERE sequence = ?")
                    let now = AuditClock.timestamp()
                    for sequence in batch.erase {
                        // The subject rows first, found through the entry's own `subjects`
                        // while its body is still there.
                        subjects.reset(); subjects.bind(1, sequence); try subjects.step()
                        erase.reset(); erase.bind(1, now); erase.bind(2, sequence); try erase.step()
                        texts.reset(); texts.bind(1, sequence); try texts.step()
                    }
                }
                if !batch.entries.isEmpty {
                    let insert = try lookup(
                        "INSERT INTO audit_entries (sequence, time, kind, retain_until, body, leaf_hash, chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
                    for e in batch.entries {
                        insert.reset()
                        insert.bind(1, e.sequence)
                        insert.bind(2, e.time)
                        insert.bind(3, e.kind)
                        insert.bind(4, e.retainUntil)
                        insert.bind(5, e.body)
                        insert.bind(6, e.leaf)
                        insert.bind(7, e.chain)
                        try insert.step()
                    }
                }
                if !batch.nodes.isEmpty {
                    let insert = try lookup("INSERT INTO audit_tree (level, position, hash) VALUES (?, ?, ?)")
                    for n in batch.nodes {
                        insert.reset()
                        insert.bind(1, Int64(n.level))
                        insert.bind(2, n.position)
                        insert.bind(3, n.hash)
                        try insert.step()
                    }
                }
                if !batch.subjects.isEmpty {
                    let insert = try lookup("INSERT OR IGNORE INTO audit_subjects (pseudonym, sequence) VALUES (?, ?)")
                    for s in batch.subjects {
                        insert.reset()
                        insert.bind(1, s.pseudonym)
                        insert.bind(2, s.sequence)
                        try insert.step()
                    }
                }
                if !batch.texts.isEmpty {
                    let insert = try lookup("INSERT OR IGNORE INTO audit_texts (hash, sequence, sealed) VALUES (?, ?, ?)")
                    for t in batch.texts {
                        insert.reset()
                        insert.bind(1, t.hash)
                        insert.bind(2, t.sequence)
                        insert.bind(3, t.sealed)
                        try insert.step()
                    }
                }
                for (write, sequence) in batch.sideWrites {
                    try database.rows(write.sql, write.values.map { $0.parameter(sequence: sequence) })
                }
                if let c = batch.checkpoint {
                    let insert = try database.prepare("INSERT OR IGNORE INTO audit_checkpoints (tree_size, time, root_hash, note) VALUES (?, ?, ?, ?)")
                    insert.bind(1, c.treeSize)
                    insert.bind(2, c.time)
                    insert.bind(3, c.rootHash)
                    insert.bind(4, c.note)
                    try insert.step()
                }
                return batch
            }
            cachedTail = batch.tail
            return batch
        } catch {
            cachedTail = nil
            reopenBeforeNextWrite = true
            throw error
        }
    }

    public func entry(sequence: Int64) throws -> StoredEntry? {
        let statement = try database.prepare(
            "SELECT sequence, time, kind, body, leaf_hash, erased_at FROM audit_entries WHERE sequence = ?")
        statement.bind(1, sequence)
        return try statement.step() ? SQLiteAuditStore.row(statement) : nil
    }

    static func row(_ s: SQLiteStatement) -> StoredEntry {
        StoredEntry(sequence: s.int64(0), time: s.string(1) ?? "", kind: s.string(2) ?? "", body: s.string(3), leafHash: s.blob(4) ?? [], erasedAt: s.string(5))
    }

    public func entries(matching query: AuditQuery, _ each: (StoredEntry) throws -> Bool) throws {
        var (conditions, binds) = query.conditions { path in "json_extract(e.body, '$.\(path.joined(separator: "."))')" }
        if let after = query.afterSequence { conditions.append("e.sequence > \(after)") }
        var sql = "SELECT e.sequence, e.time, e.kind, e.body, e.leaf_hash, e.erased_at FROM audit_entries e"
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        sql += " ORDER BY e.sequence"
        if let limit = query.limit { sql += " LIMIT \(max(0, limit))" }
        let statement = try database.prepare(sql)
        for (index, value) in binds.enumerated() { statement.bind(Int32(index + 1), value) }
        while try statement.step() {
            guard try each(SQLiteAuditStore.row(statement)) else { return }
        }
    }

    /// The exchange entries of a period, counted per flow, grouped in SQLite. A large log is
    /// counted in two halves on two connections and threads.
    public func observedFlows(from: String?, until: String?) throws -> [ObservedFlow] {
        let size = try tail().size
        let half: Int64 = size / 2
        let parts: [(Int64, Int64)] = size > 100_000 ? [(Int64(0), half), (half, size)] : [(Int64(0), size)]
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var items: [Result<[String: Int], Error>] = []
        }
        let results = Results()
        let path = database.path
        DispatchQueue.concurrentPerform(iterations: parts.count) { i in
            let result = Result { try SQLiteAuditStore.countFlows(path: path, after: parts[i].0, through: parts[i].1, from: from, until: until) }
            results.lock.lock()
            results.items.append(result)
            results.lock.unlock()
        }
        var merged: [String: Int] = [:]
        for result in results.items { for (key, count) in try result.get() { merged[key, default: 0] += count } }
        var flows: [ObservedFlow] = []
        for (text, count) in merged {
            guard let values = (try? JSONParser.parse(text))?.arrayValue, values.count == 8 else { continue }
            let v = values.map { $0.stringValue ?? "" }
            flows.append(ObservedFlow(caseTable: v[0], sender: v[1], recipient: v[2], purpose: v[3], decision: v[4], basisType: v[5], ground: v[6], rule: v[7], count: count))
        }
        return ObservedFlow.sorted(flows)
    }

    /// One json_extract with many paths parses each body once and returns them as a JSON array.
    static func countFlows(path: String, after: Int64, through: Int64, from: String?, until: String?) throws -> [String: Int] {
        let db = try SQLiteDatabase(path: path, readOnly: true)
        try? db.execute("PRAGMA mmap_size = 1073741824")
        var sql = """
            SELECT json_extract(body, '$.caseTable', '$.sender', '$.recipient', '$.purpose', '$.decision', '$.basis.type', '$.basis.ground', '$.rules[0]'), count(*)
            FROM audit_entries WHERE sequence > \(after) AND sequence <= \(through)
              AND kind IN ('exchange-permitted', 'exchange-denied') AND body IS NOT NULL
            """
        var binds: [String] = []
        if let from { sql += " AND time >= ?"; binds.append(from) }
        if let until { sql += " AND time < ?"; binds.append(until) }
        sql += " GROUP BY 1"
        let statement = try db.prepare(sql)
        for (i, value) in binds.enumerated() { statement.bind(Int32(i + 1), value) }
        var counts: [String: Int] = [:]
        while try statement.step() {
            if let text = statement.string(0) { counts[text, default: 0] += Int(statement.int64(1)) }
        }
        return counts
    }

    public func checkpoints() throws -> [StoredCheckpoint] {
        let statement = try database.prepare("SELECT tree_size, time, root_hash, note FROM audit_checkpoints ORDER BY tree_size")
        var result: [StoredCheckpoint] = []
        while try statement.step() {
            result.append(StoredCheckpoint(treeSize: statement.int64(0), time: statement.string(1) ?? "", rootHash: statement.blob(2) ?? [], note: statement.string(3) ?? ""))
        }
        return result
    }

    public func sealedText(sequence: Int64, hash: [UInt8]) throws -> [UInt8]? {
        // Keyed by (sequence, hash): texts are appended in entry order, not scattered by hash.
        let statement = try database.prepare("SELECT sealed FROM audit_texts WHERE sequence = ? AND hash = ?")
        statement.bind(1, sequence)
        statement.bind(2, hash)
        return try statement.step() ? statement.blob(0) : nil
    }

    public func expired(before date: String) throws -> [Int64] {
        let statement = try database.prepare(
            // The column finds the candidates (indexed); the hashed body decides: a column moved
            // to an earlier day must not erase an entry early.
            "SELECT sequence FROM audit_entries WHERE body IS NOT NULL AND retain_until IS NOT NULL AND retain_until < ? AND json_extract(body, '$.retainUntil') < ? ORDER BY sequence")
        statement.bind(1, date)
        statement.bind(2, date)
        var result: [Int64] = []
        while try statement.step() { result.append(statement.int64(0)) }
        return result
    }

    public func scan(from: Int64, through: Int64?) throws -> SQLCursor {
        // One sequential pass: map the file instead of copying every page through read().
        try? database.execute("PRAGMA mmap_size = 1073741824")
        let upper = through.map { " AND sequence <= \($0)" } ?? ""
        return try database.prepare(
            "SELECT sequence, body, leaf_hash, chain_hash, kind, erased_at, time, retain_until FROM audit_entries WHERE sequence >= \(from)\(upper) ORDER BY sequence")
    }

    public func lastSequence() throws -> Int64 {
        let max = try database.prepare("SELECT coalesce(max(sequence), 0) FROM audit_entries")
        _ = try max.step()
        return max.int64(0)
    }

    public func chainHash(sequence: Int64) throws -> [UInt8]? {
        let statement = try database.prepare("SELECT chain_hash FROM audit_entries WHERE sequence = ?")
        statement.bind(1, sequence)
        return try statement.step() ? statement.blob(0) : nil
    }
}

/// Timestamps of the log: RFC 3339, UTC, milliseconds.
public enum AuditClock {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (formatted by hand: a Foundation formatter per batch costs
    /// more than the batch's SQL).
    public static func timestamp(_ date: Date = Date()) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let millis = min(999, max(0, Int((interval - Double(seconds)) * 1000)))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var out = [UInt8](repeating: 0, count: 24)
        func put(_ value: Int, at offset: Int, digits: Int) {
            var v = value
            for i in stride(from: offset + digits - 1, through: offset, by: -1) {
                out[i] = UInt8(48 + v % 10)
                v /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, at: 0, digits: 4)
        put(Int(parts.tm_mon) + 1, at: 5, digits: 2)
        put(Int(parts.tm_mday), at: 8, digits: 2)
        put(Int(parts.tm_hour), at: 11, digits: 2)
        put(Int(parts.tm_min), at: 14, digits: 2)
        put(Int(parts.tm_sec), at: 17, digits: 2)
        put(millis, at: 20, digits: 3)
        out[4] = UInt8(ascii: "-")
        out[7] = UInt8(ascii: "-")
        out[10] = UInt8(ascii: "T")
        out[13] = UInt8(ascii: ":")
        out[16] = UInt8(ascii: ":")
        out[19] = UInt8(ascii: ".")
        out[23] = UInt8(ascii: "Z")
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `text` can bound a query on entry times, which are compared as text: a day
    /// (`YYYY-MM-DD`) or a UTC time as the log writes it (`…T…Z`). An offset such as `+02:00`
    /// would compare wrongly, so it is not accepted.
    public static func isQueryBound(_ text: String) -> Bool {
        if CalendarDate.isValid(text) { return true }
        guard text.utf8.count >= 20, text.hasSuffix("Z"), CalendarDate.isValid(String(text.prefix(10))), parse(text) ?? parseWhole(text) != nil else { return false }
        return true
    }

    private static func parseWhole(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    public static func parse(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }
}
