import Foundation
import KetenpoortCore
import KetenpoortStore

/// The audit log in PostgreSQL, shared by several gateway instances.
///
/// Every group commit takes one transaction-scoped advisory lock before it reads the tail, so
/// the commits of all instances are serialised: the chain and the tree stay one sequence, and an
/// instance that finds entries another appended reloads the tail (its frontier) from the tree.
/// Entries and tree nodes are inserted with plain `INSERT` (a duplicate sequence would be a bug:
/// the transaction fails rather than forking the log).
public final class PostgresAuditStore: AuditStore, @unchecked Sendable {
    private let database: PostgresDatabase
    private var cachedTail: AuditTail?
    private let readOnly: Bool

    /// The advisory lock key every instance's group commit holds ("KPAUDIT" in ASCII).
    public static let writerLock: Int64 = 0x4B50_4155_4449_54

    public static let schema = """
        CREATE TABLE IF NOT EXISTS audit_entries (
            sequence BIGINT PRIMARY KEY,
            time TEXT NOT NULL,
            kind TEXT NOT NULL,
            retain_until TEXT,
            body TEXT,
            leaf_hash BYTEA NOT NULL,
            chain_hash BYTEA NOT NULL,
            erased_at TEXT
        );
        CREATE INDEX IF NOT EXISTS audit_entries_retain ON audit_entries (retain_until) WHERE body IS NOT NULL AND retain_until IS NOT NULL;
        CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (time);
        CREATE TABLE IF NOT EXISTS audit_tree (
            level INTEGER NOT NULL,
            position BIGINT NOT NULL,
            hash BYTEA NOT NULL,
            PRIMARY KEY (level, position)
        );
        CREATE TABLE IF NOT EXISTS audit_subjects (
            pseudonym TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            PRIMARY KEY (pseudonym, sequence)
        );
        CREATE TABLE IF NOT EXISTS audit_texts (
            sequence BIGINT NOT NULL,
            hash BYTEA NOT NULL,
            sealed BYTEA NOT NULL,
            PRIMARY KEY (sequence, hash)
        );
        CREATE TABLE IF NOT EXISTS audit_checkpoints (
            tree_size BIGINT PRIMARY KEY,
            time TEXT NOT NULL,
            root_hash BYTEA NOT NULL,
            note TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS audit_health (
            id INTEGER PRIMARY KEY,
            probed_at TEXT NOT NULL
        );
        """

    public init(settings: PostgresSettings, readOnly: Bool = false) throws {
        database = try PostgresDatabase(settings: settings, applicationName: readOnly ? "ketenpoort-reader" : "ketenpoort-audit")
        self.readOnly = readOnly
        if readOnly {
            try database.execute("SET default_transaction_read_only = on")
            guard hasTable("audit_entries") else {
                throw KetenpoortError(.invalidInput, "the database at \(settings.redacted) holds no audit log")
            }
        } else {
            try database.transaction {
                try database.rows("SELECT pg_advisory_xact_lock(?)", [.integer(PostgresAuditStore.writerLock)])
                try database.execute(PostgresAuditStore.schema)
            }
        }
    }

    public func hasTable(_ name: String) -> Bool {
        ((try? database.row("SELECT to_regclass(?) IS NOT NULL", [.text(name)]))??.string(0)) == "t"
    }

    public func tail() throws -> AuditTail {
        var size: Int64 = 0
        var chain = [UInt8](repeating: 0, count: 32)
        if let last = try database.row("SELECT sequence, chain_hash FROM audit_entries ORDER BY sequence DESC LIMIT 1", []) {
            size = last.int64(0)
            chain = last.blob(1) ?? []
        }
        if let cached = cachedTail, cached.size == size, cached.chain == chain { return cached }
        // Another instance appended: its frontier (at most 63 subtree roots) in one query.
        let wanted = AuditTail.frontierPositions(size: size)
        var found: [String: [UInt8]] = [:]
        let interior = wanted.filter { $0.level > 0 }
        if !interior.isEmpty {
            let pairs = Array(repeating: "(?, ?)", count: interior.count).joined(separator: ", ")
            let rows = try database.rows(
                "SELECT level, position, hash FROM audit_tree WHERE (level, position) IN (\(pairs))",
                interior.flatMap { [SQLParameter.integer(Int64($0.level)), .integer($0.position)] })
            for r in rows { found["\(r.int64(0))/\(r.int64(1))"] = r.blob(2) }
        }
        var tail = try AuditTail.load(size: size, chain: chain) { level, position in
            if level > 0, let hash = found["\(level)/\(position)"], hash.count == 32 { return hash }
            return try node(level: level, position: position)
        }
        if let checkpoint = try database.row("SELECT tree_size, time FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1", []) {
            tail.checkpointSize = checkpoint.int64(0)
            tail.checkpointTime = AuditClock.parse(checkpoint.string(1) ?? "")
        }
        cachedTail = tail
        return tail
    }

    public func node(level: Int, position: Int64) throws -> [UInt8] {
        let row =
            level == 0
            ? try database.row("SELECT leaf_hash FROM audit_entries WHERE sequence = ?", [.integer(position + 1)])
            : try database.row("SELECT hash FROM audit_tree WHERE level = ? AND position = ?", [.integer(Int64(level)), .integer(position)])
        guard let hash = row?.blob(0), hash.count == 32 else {
            throw KetenpoortError(.storageCorrupt, "the audit log's tree lacks node \(level)/\(position)")
        }
        return hash
    }

    public func append(preconditions: [Precondition?], _ build: (AuditTail, _ held: [Bool]) throws -> AuditBatch) throws -> AuditBatch {
        guard !readOnly else { throw KetenpoortError(.storage, "this audit store was opened for reading") }
        do {
            let batch = try database.transaction { () throws -> AuditBatch in
                // Serialises the group commits of every instance; released at COMMIT/ROLLBACK.
                try database.rows("SELECT pg_advisory_xact_lock(?)", [.integer(PostgresAuditStore.writerLock)])
                // The preconditions in order, in one pipeline: one round trip for the batch, and a
                // precondition sees what an earlier one changed. A row another transaction is
                // changing is waited for, then the condition is checked again (READ COMMITTED).
                let guarded = preconditions.compactMap { $0 }
                var changed = try database.pipeline(guarded.map { ($0.sql, $0.values) }).makeIterator()
                let held = preconditions.map { precondition in precondition == nil || (changed.next() ?? 0) > 0 }
                let batch = try build(try tail(), held)
                // Everything the batch writes goes in one pipeline: a round trip or two while the
                // lock is held, not one per row.
                var statements: [(sql: String, parameters: [SQLParameter])] = []
                if !batch.erase.isEmpty {
                    let now = AuditClock.timestamp()
                    for sequence in batch.erase {
                        // The subject rows by their key, the pseudonyms read from the entry's
                        // `subjects` before its body is erased (no scan per erased entry).
                        statements.append(
                            (
                                "DELETE FROM audit_subjects WHERE sequence = ? AND pseudonym IN (SELECT jsonb_array_elements_text((SELECT body FROM audit_entries WHERE sequence = ?)::jsonb -> 'subjects'))",
                                [.integer(sequence), .integer(sequence)]
                            ))
                        statements.append(("UPDATE audit_entries SET body = NULL, erased_at = ? WHERE sequence = ? AND body IS NOT NULL", [.text(now), .integer(sequence)]))
                        statements.append(("DELETE FROM audit_texts WHERE sequence = ?", [.integer(sequence)]))
                    }
                }
                statements += PostgresAuditStore.inserts(
                    "audit_entries (sequence, time, kind, retain_until, body, leaf_hash, chain_hash)", width: 7,
                    batch.entries.map { e in
                        [.integer(e.sequence), .text(e.time), .text(e.kind), .optional(e.retainUntil), .text(e.body), .blob(e.leaf), .blob(e.chain)]
                    })
                statements += PostgresAuditStore.inserts(
                    "audit_tree (level, position, hash)", width: 3, batch.nodes.map { [.integer(Int64($0.level)), .integer($0.position), .blob($0.hash)] })
                statements += PostgresAuditStore.inserts(
                    "audit_subjects (pseudonym, sequence)", width: 2, batch.subjects.map { [.text($0.pseudonym), .integer($0.sequence)] }, ignoringDuplicates: true)
                statements += PostgresAuditStore.inserts(
                    "audit_texts (hash, sequence, sealed)", width: 3, batch.texts.map { [.blob($0.hash), .integer($0.sequence), .blob($0.sealed)] },
                    ignoringDuplicates: true)
                for (write, sequence) in batch.sideWrites {
                    statements.append((write.sql, write.values.map { $0.parameter(sequence: sequence) }))
                }
                if let c = batch.checkpoint {
                    statements.append(
                        (
                            "INSERT OR IGNORE INTO audit_checkpoints (tree_size, time, root_hash, note) VALUES (?, ?, ?, ?)",
                            [.integer(c.treeSize), .text(c.time), .blob(c.rootHash), .text(c.note)]
                        ))
                }
                try database.pipeline(statements)
                return batch
            }
            cachedTail = batch.tail
            return batch
        } catch {
            cachedTail = nil
            throw error
        }
    }

    /// Multi-row inserts in chunks of at most 64 rows (each chunk size one prepared statement).
    private static func inserts(_ target: String, width: Int, _ rows: [[SQLParameter]], ignoringDuplicates: Bool = false) -> [(sql: String, parameters: [SQLParameter])] {
        var statements: [(sql: String, parameters: [SQLParameter])] = []
        var start = 0
        while start < rows.count {
            var size = 1
            while size * 2 <= min(64, rows.count - start) { size *= 2 }
            let tuple = "(" + Array(repeating: "?", count: width).joined(separator: ", ") + ")"
            let values = Array(repeating: tuple, count: size).joined(separator: ", ")
            let verb = ignoringDuplicates ? "INSERT OR IGNORE INTO" : "INSERT INTO"
            statements.append(("\(verb) \(target) VALUES \(values)", Array(rows[start..<start + size].joined())))
            start += size
        }
        return statements
    }

    public func entry(sequence: Int64) throws -> StoredEntry? {
        try database.row("SELECT sequence, time, kind, body, leaf_hash, erased_at FROM audit_entries WHERE sequence = ?", [.integer(sequence)]).map(
            PostgresAuditStore.entry)
    }

    static func entry(_ r: SQLRow) -> StoredEntry {
        StoredEntry(sequence: r.int64(0), time: r.string(1) ?? "", kind: r.string(2) ?? "", body: r.string(3), leafHash: r.blob(4) ?? [], erasedAt: r.string(5))
    }

    public func entries(matching query: AuditQuery, _ each: (StoredEntry) throws -> Bool) throws {
        let (conditions, values) = query.conditions { path in
            path.count == 1 ? "(e.body::jsonb)->>'\(path[0])'" : "(e.body::jsonb)#>>'{\(path.joined(separator: ","))}'"
        }
        let binds = values.map { SQLParameter.text($0) }
        // Pages by sequence: a large log is never held in memory at once.
        var after = query.afterSequence ?? 0
        var remaining = query.limit.map { max(0, $0) } ?? Int.max
        while remaining > 0 {
            let page = min(remaining, 2_000)
            var sql = "SELECT e.sequence, e.time, e.kind, e.body, e.leaf_hash, e.erased_at FROM audit_entries e WHERE e.sequence > ?"
            if !conditions.isEmpty { sql += " AND " + conditions.joined(separator: " AND ") }
            // The page size is bound, not written into the SQL: every distinct text is a prepared
            // statement the connection keeps, and callers choose their limit.
            sql += " ORDER BY e.sequence LIMIT ?"
            let rows = try database.rows(sql, [.integer(after)] + binds + [.integer(Int64(page))])
            for row in rows {
                guard try each(PostgresAuditStore.entry(row)) else { return }
            }
            guard rows.count == page, let last = rows.last else { return }
            after = last.int64(0)
            remaining -= rows.count
        }
    }

    public func checkpoints() throws -> [StoredCheckpoint] {
        try database.rows("SELECT tree_size, time, root_hash, note FROM audit_checkpoints ORDER BY tree_size", []).map {
            StoredCheckpoint(treeSize: $0.int64(0), time: $0.string(1) ?? "", rootHash: $0.blob(2) ?? [], note: $0.string(3) ?? "")
        }
    }

    public func sealedText(sequence: Int64, hash: [UInt8]) throws -> [UInt8]? {
        try database.row("SELECT sealed FROM audit_texts WHERE sequence = ? AND hash = ?", [.integer(sequence), .blob(hash)])?.blob(0)
    }

    public func expired(before date: String) throws -> [Int64] {
        try database.rows(
            // The column finds the candidates (indexed); the hashed body decides.
            "SELECT sequence FROM audit_entries WHERE body IS NOT NULL AND retain_until IS NOT NULL AND retain_until < ? AND (body::jsonb)->>'retainUntil' < ? ORDER BY sequence",
            [.text(date), .text(date)]
        ).map { $0.int64(0) }
    }

    public func scan(from: Int64, through: Int64?) throws -> SQLCursor {
        let upper = through ?? Int64.max
        let database = self.database
        var next = from
        return PagedCursor { _ in
            let rows = try database.rows(
                "SELECT sequence, body, leaf_hash, chain_hash, kind, erased_at, time, retain_until FROM audit_entries WHERE sequence >= ? AND sequence <= ? ORDER BY sequence LIMIT 5000",
                [.integer(next), .integer(upper)])
            if let last = rows.last { next = last.int64(0) + 1 }
            return rows
        }
    }

    public func lastSequence() throws -> Int64 {
        try database.row("SELECT coalesce(max(sequence), 0) FROM audit_entries", [])?.int64(0) ?? 0
    }

    public func chainHash(sequence: Int64) throws -> [UInt8]? {
        try database.row("SELECT chain_hash FROM audit_entries WHERE sequence = ?", [.integer(sequence)])?.blob(0)
    }

    public func observedFlows(from: String?, until: String?) throws -> [ObservedFlow] {
        var sql = """
            SELECT b->>'caseTable', b->>'sender', b->>'recipient', b->>'purpose', b->>'decision', b#>>'{basis,type}', b#>>'{basis,ground}', b#>>'{rules,0}', count(*)
            FROM (SELECT body::jsonb AS b FROM audit_entries WHERE kind IN ('exchange-permitted', 'exchange-denied') AND body IS NOT NULL
            """
        var binds: [SQLParameter] = []
        if let from { sql += " AND time >= ?"; binds.append(.text(from)) }
        if let until { sql += " AND time < ?"; binds.append(.text(until)) }
        sql += ") AS x GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
        let flows = try database.rows(sql, binds).map { r in
            ObservedFlow(
                caseTable: r.string(0) ?? "", sender: r.string(1) ?? "", recipient: r.string(2) ?? "", purpose: r.string(3) ?? "", decision: r.string(4) ?? "",
                basisType: r.string(5) ?? "", ground: r.string(6) ?? "", rule: r.string(7) ?? "", count: Int(r.int64(8)))
        }
        return ObservedFlow.sorted(flows)
    }
}
