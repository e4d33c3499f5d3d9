import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortStore

/// The exchange tables beside the audit log, in the same database. Rows that must be durable
/// together with their log entry (an exchange and its inbox item, a consent and its history)
/// are written as the entry's side writes; reads and acknowledgements use this connection.
///
/// Nothing personal is stored in clear: subjects and grantors as log-domain pseudonyms, payloads
/// sealed per recipient, the stored idempotent answers hold no data.
final class ExchangeRepository: @unchecked Sendable {
    private let database: SQLiteDatabase
    private let lock = NSLock()
    private let statements: StatementCache

    static let schema = """
        CREATE TABLE IF NOT EXISTS exchanges (
            id TEXT PRIMARY KEY,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            case_table TEXT NOT NULL,
            purpose TEXT NOT NULL,
            decision TEXT NOT NULL,
            answer TEXT NOT NULL,
            review_state TEXT NOT NULL,
            basis_ground TEXT NOT NULL,
            inform_subject_by TEXT,
            log_sequence INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS exchanges_review ON exchanges (review_state) WHERE review_state = 'pending';
        CREATE TABLE IF NOT EXISTS inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            exchange_id TEXT NOT NULL UNIQUE,
            recipient TEXT NOT NULL,
            sealed_payload BLOB,
            delivered_at TEXT NOT NULL,
            acknowledged_at TEXT,
            retain_until TEXT
        );
        CREATE INDEX IF NOT EXISTS inbox_recipient ON inbox (recipient, id);
        CREATE TABLE IF NOT EXISTS consents (
            id TEXT PRIMARY KEY,
            case_table TEXT NOT NULL,
            subject TEXT NOT NULL,
            grantor TEXT NOT NULL,
            grantor_ref TEXT,
            purposes TEXT NOT NULL,
            recipients TEXT NOT NULL,
            categories TEXT NOT NULL,
            valid_from TEXT,
            valid_until TEXT,
            evidence_ref TEXT,
            registered_by TEXT NOT NULL,
            status TEXT NOT NULL,
            log_sequence INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS consents_subject ON consents (case_table, subject);
        CREATE TABLE IF NOT EXISTS consent_history (
            consent_id TEXT NOT NULL,
            status TEXT NOT NULL,
            by_partner TEXT NOT NULL,
            log_sequence INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS case_facts (
            case_table TEXT NOT NULL,
            subject TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            registered_by TEXT NOT NULL,
            log_sequence INTEGER NOT NULL,
            PRIMARY KEY (case_table, subject, type)
        );
        CREATE TABLE IF NOT EXISTS idempotency (
            sender TEXT NOT NULL,
            key TEXT NOT NULL,
            body_hash BLOB NOT NULL,
            status INTEGER NOT NULL,
            answer TEXT NOT NULL,
            PRIMARY KEY (sender, key)
        );
        """

    init(path: String) throws {
        database = try SQLiteDatabase(path: path)
        statements = StatementCache(database: database)
        try database.execute(ExchangeRepository.schema)
        // Push delivery state (added after the first inbox schema; older databases get the columns).
        var columns: Set<String> = []
        let info = try database.prepare("PRAGMA table_info(inbox)")
        while try info.step() { if let name = info.string(1) { columns.insert(name) } }
        for (column, type) in [("push_attempts", "INTEGER NOT NULL DEFAULT 0"), ("next_push_at", "TEXT"), ("pushed_at", "TEXT"), ("push_error", "TEXT")]
        where !columns.contains(column) {
            try database.execute("ALTER TABLE inbox ADD COLUMN \(column) \(type)")
        }
        // When the family was informed (recorded by an officer; added after the first schema).
        columns = []
        let exchangeInfo = try database.prepare("PRAGMA table_info(exchanges)")
        while try exchangeInfo.step() { if let name = exchangeInfo.string(1) { columns.insert(name) } }
        if !columns.contains("informed_at") { try database.execute("ALTER TABLE exchanges ADD COLUMN informed_at TEXT") }
    }

    /// Runs `body` with the connection, one caller at a time; prepared statements are reused.
    func with<T>(_ body: (_ statement: (String) throws -> SQLiteStatement) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(statements.statement)
    }

    // MARK: side writes (same transaction as the log entry)

    static func exchangeRow(
        id: String, sender: String, recipient: String, caseTable: String, purpose: String, decision: String, answer: String, review: String,
        ground: String, informSubjectBy: String?, createdAt: String
    ) -> SideWrite {
        SideWrite(
            "INSERT OR IGNORE INTO exchanges (id, sender, recipient, case_table, purpose, decision, answer, review_state, basis_ground, inform_subject_by, log_sequence, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                .text(id), .text(sender), .text(recipient), .text(caseTable), .text(purpose), .text(decision), .text(answer), .text(review), .text(ground),
                informSubjectBy.map { .text($0) } ?? .null, .sequence, .text(createdAt),
            ])
    }

    static func inboxRow(exchangeID: String, recipient: String, sealed: [UInt8], deliveredAt: String, retainUntil: String?) -> SideWrite {
        SideWrite(
            "INSERT OR IGNORE INTO inbox (exchange_id, recipient, sealed_payload, delivered_at, retain_until) VALUES (?, ?, ?, ?, ?)",
            [.text(exchangeID), .text(recipient), .blob(sealed), .text(deliveredAt), retainUntil.map { .text($0) } ?? .null])
    }

    // MARK: reads

    struct StoredAnswer {
        let bodyHash: [UInt8]
        let status: Int
        let answer: String
    }

    func idempotentAnswer(sender: String, key: String) throws -> StoredAnswer? {
        try with { statement in
            let s = try statement("SELECT body_hash, status, answer FROM idempotency WHERE sender = ? AND key = ?")
            s.bind(1, sender)
            s.bind(2, key)
            defer { s.reset() }
            guard try s.step() else { return nil }
            return StoredAnswer(bodyHash: s.blob(0) ?? [], status: Int(s.int64(1)), answer: s.string(2) ?? "")
        }
    }

    struct ConsentRow {
        let id: String
        let subject: String
        let grantor: String
        let grantorRef: String?
        let purposes: [String]
        let recipients: [String]
        let categories: [String]
        let validFrom: String?
        let validUntil: String?
        let status: String
        let registeredBy: String
        let caseTable: String
    }

    static func list(_ text: String?) -> [String] {
        guard let text, let value = try? JSONParser.parse(text), let items = value.arrayValue else { return [] }
        return items.compactMap(\.stringValue)
    }

    static let consentColumns =
        "id, subject, grantor, grantor_ref, purposes, recipients, categories, valid_from, valid_until, status, registered_by, case_table"

    static func consent(_ s: SQLiteStatement) -> ConsentRow {
        ConsentRow(
            id: s.string(0) ?? "", subject: s.string(1) ?? "", grantor: s.string(2) ?? "", grantorRef: s.string(3),
            purposes: list(s.string(4)), recipients: list(s.string(5)), categories: list(s.string(6)), validFrom: s.string(7),
            validUntil: s.string(8), status: s.string(9) ?? "", registeredBy: s.string(10) ?? "", caseTable: s.string(11) ?? "")
    }

    func consents(caseTable: String, subjects: [String]) throws -> [ConsentRow] {
        guard !subjects.isEmpty else { return [] }
        return try with { statement in
            var rows: [ConsentRow] = []
            let s = try statement(
                "SELECT \(ExchangeRepository.consentColumns) FROM consents WHERE case_table = ? AND subject = ?")
            for subject in Set(subjects) {
                s.reset()
                s.bind(1, caseTable)
                s.bind(2, subject)
                while try s.step() { rows.append(ExchangeRepository.consent(s)) }
            }
            s.reset()
            return rows
        }
    }

    func consent(id: String) throws -> ConsentRow? {
        try with { statement in
            let s = try statement(
                "SELECT \(ExchangeRepository.consentColumns) FROM consents WHERE id = ?")
            s.bind(1, id)
            defer { s.reset() }
            return try s.step() ? ExchangeRepository.consent(s) : nil
        }
    }

    /// The newest fact of each type about each subject: subject → type → value.
    func facts(caseTable: String, subjects: [String]) throws -> [String: [String: JSONValue]] {
        guard !subjects.isEmpty else { return [:] }
        return try with { statement in
            var result: [String: [String: JSONValue]] = [:]
            let s = try statement("SELECT type, value FROM case_facts WHERE case_table = ? AND subject = ?")
            for subject in Set(subjects) {
                s.reset()
                s.bind(1, caseTable)
                s.bind(2, subject)
                while try s.step() {
                    if let type = s.string(0), let value = s.string(1).flatMap({ try? JSONParser.parse($0) }) { result[subject, default: [:]][type] = value }
                }
            }
            s.reset()
            return result
        }
    }

    struct ExchangeRow {
        let id: String
        let sender: String
        let recipient: String
        let caseTable: String
        let purpose: String
        let decision: String
        let answer: String
        let reviewState: String
        let ground: String
        let informSubjectBy: String?
        let logSequence: Int64
        let createdAt: String
    }

    static let exchangeColumns =
        "id, sender, recipient, case_table, purpose, decision, answer, review_state, basis_ground, inform_subject_by, log_sequence, created_at"

    static func exchange(_ s: SQLiteStatement) -> ExchangeRow {
        ExchangeRow(
            id: s.string(0) ?? "", sender: s.string(1) ?? "", recipient: s.string(2) ?? "", caseTable: s.string(3) ?? "", purpose: s.string(4) ?? "",
            decision: s.string(5) ?? "", answer: s.string(6) ?? "", reviewState: s.string(7) ?? "", ground: s.string(8) ?? "",
            informSubjectBy: s.string(9), logSequence: s.int64(10), createdAt: s.string(11) ?? "")
    }

    func exchange(id: String) throws -> ExchangeRow? {
        try with { statement in
            let s = try statement("SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE id = ?")
            s.bind(1, id)
            defer { s.reset() }
            return try s.step() ? ExchangeRepository.exchange(s) : nil
        }
    }

    /// Permitted exchanges whose date to inform the subject has passed.
    func informOverdue(today: String, limit: Int) throws -> [ExchangeRow] {
        try with { statement in
            let s = try statement(
                "SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE decision = 'permit' AND inform_subject_by IS NOT NULL AND inform_subject_by < ? AND informed_at IS NULL ORDER BY inform_subject_by LIMIT ?")
            s.bind(1, today)
            s.bind(2, Int64(limit))
            var rows: [ExchangeRow] = []
            while try s.step() { rows.append(ExchangeRepository.exchange(s)) }
            s.reset()
            return rows
        }
    }

    func pendingReviews(limit: Int) throws -> [ExchangeRow] {
        try with { statement in
            let s = try statement("SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE review_state = 'pending' ORDER BY log_sequence LIMIT ?")
            s.bind(1, Int64(limit))
            var rows: [ExchangeRow] = []
            while try s.step() { rows.append(ExchangeRepository.exchange(s)) }
            s.reset()
            return rows
        }
    }

    struct InboxRow {
        let id: Int64
        let exchangeID: String
        let sealed: [UInt8]?
        let deliveredAt: String
        let acknowledgedAt: String?
        var pushedAt: String? = nil
        var pushAttempts = 0
    }

    func inbox(recipient: String, after: Int64, limit: Int) throws -> [InboxRow] {
        try with { statement in
            let s = try statement(
                "SELECT id, exchange_id, sealed_payload, delivered_at, acknowledged_at FROM inbox WHERE recipient = ? AND id > ? AND acknowledged_at IS NULL ORDER BY id LIMIT ?")
            s.bind(1, recipient)
            s.bind(2, after)
            s.bind(3, Int64(limit))
            var rows: [InboxRow] = []
            while try s.step() {
                rows.append(InboxRow(id: s.int64(0), exchangeID: s.string(1) ?? "", sealed: s.blob(2), deliveredAt: s.string(3) ?? "", acknowledgedAt: s.string(4)))
            }
            s.reset()
            return rows
        }
    }

    struct PushRow {
        let id: Int64
        let exchangeID: String
        let recipient: String
        let sealed: [UInt8]
        let deliveredAt: String
        let attempts: Int
    }

    /// Items for recipients with an endpoint that are due for a push (not acknowledged, not pushed).
    func duePushes(recipients: [String], now: String, limit: Int) throws -> [PushRow] {
        guard !recipients.isEmpty else { return [] }
        return try with { statement in
            let marks = Array(repeating: "?", count: recipients.count).joined(separator: ", ")
            let s = try statement(
                "SELECT id, exchange_id, recipient, sealed_payload, delivered_at, push_attempts FROM inbox WHERE acknowledged_at IS NULL AND sealed_payload IS NOT NULL AND recipient IN (\(marks)) AND (next_push_at IS NULL OR next_push_at <= ?) ORDER BY id LIMIT ?")
            for (i, r) in recipients.enumerated() { s.bind(Int32(i + 1), r) }
            s.bind(Int32(recipients.count + 1), now)
            s.bind(Int32(recipients.count + 2), Int64(limit))
            var rows: [PushRow] = []
            while try s.step() {
                guard let sealed = s.blob(3) else { continue }
                rows.append(PushRow(id: s.int64(0), exchangeID: s.string(1) ?? "", recipient: s.string(2) ?? "", sealed: sealed, deliveredAt: s.string(4) ?? "", attempts: Int(s.int64(5))))
            }
            s.reset()
            return rows
        }
    }

    /// The partner's endpoint answered 2xx: that is its acknowledgement; the payload is erased.
    func markPushed(id: Int64, at time: String) throws {
        try with { statement in
            let s = try statement("UPDATE inbox SET pushed_at = ?, acknowledged_at = coalesce(acknowledged_at, ?), sealed_payload = NULL, push_error = NULL WHERE id = ?")
            s.bind(1, time)
            s.bind(2, time)
            s.bind(3, id)
            try s.step()
            s.reset()
        }
    }

    /// A failed push: the next attempt after the backoff; the reason names no data.
    func markPushFailed(id: Int64, attempts: Int, next: String, reason: String) throws {
        try with { statement in
            let s = try statement("UPDATE inbox SET push_attempts = ?, next_push_at = ?, push_error = ? WHERE id = ?")
            s.bind(1, Int64(attempts))
            s.bind(2, next)
            s.bind(3, reason)
            s.bind(4, id)
            try s.step()
            s.reset()
        }
    }

    func delivery(exchangeID: String) throws -> InboxRow? {
        try with { statement in
            let s = try statement("SELECT id, exchange_id, NULL, delivered_at, acknowledged_at, pushed_at, push_attempts FROM inbox WHERE exchange_id = ?")
            s.bind(1, exchangeID)
            defer { s.reset() }
            guard try s.step() else { return nil }
            return InboxRow(
                id: s.int64(0), exchangeID: s.string(1) ?? "", sealed: nil, deliveredAt: s.string(3) ?? "", acknowledgedAt: s.string(4), pushedAt: s.string(5),
                pushAttempts: Int(s.int64(6)))
        }
    }

    /// Marks an item acknowledged and erases its payload; `false` when it is not the caller's.
    func acknowledge(id: Int64, recipient: String, at time: String) throws -> Bool {
        try with { statement in
            let s = try statement(
                "UPDATE inbox SET acknowledged_at = coalesce(acknowledged_at, ?), sealed_payload = NULL WHERE id = ? AND recipient = ?")
            s.bind(1, time)
            s.bind(2, id)
            s.bind(3, recipient)
            try s.step()
            s.reset()
            let check = try statement("SELECT count(*) FROM inbox WHERE id = ? AND recipient = ?")
            check.bind(1, id)
            check.bind(2, recipient)
            defer { check.reset() }
            _ = try check.step()
            return check.int64(0) == 1
        }
    }
}
