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
    private let database: SQLDatabase
    private let lock = NSLock()

    /// The exchange tables at schema version 1; `blob` and `serial` name the backend's types.
    static func schemaV1(blob: String, serial: String, bigint: String) -> String {
        """
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
            log_sequence \(bigint) NOT NULL,
            created_at TEXT NOT NULL,
            informed_at TEXT
        );
        CREATE INDEX IF NOT EXISTS exchanges_review ON exchanges (review_state) WHERE review_state = 'pending';
        CREATE TABLE IF NOT EXISTS inbox (
            id \(serial),
            exchange_id TEXT NOT NULL UNIQUE,
            recipient TEXT NOT NULL,
            sealed_payload \(blob),
            delivered_at TEXT NOT NULL,
            acknowledged_at TEXT,
            retain_until TEXT,
            push_attempts INTEGER NOT NULL DEFAULT 0,
            next_push_at TEXT,
            pushed_at TEXT,
            push_error TEXT
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
            log_sequence \(bigint) NOT NULL
        );
        CREATE INDEX IF NOT EXISTS consents_subject ON consents (case_table, subject);
        CREATE TABLE IF NOT EXISTS consent_history (
            consent_id TEXT NOT NULL,
            status TEXT NOT NULL,
            by_partner TEXT NOT NULL,
            log_sequence \(bigint) NOT NULL
        );
        CREATE TABLE IF NOT EXISTS case_facts (
            case_table TEXT NOT NULL,
            subject TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            registered_by TEXT NOT NULL,
            log_sequence \(bigint) NOT NULL,
            PRIMARY KEY (case_table, subject, type)
        );
        CREATE TABLE IF NOT EXISTS idempotency (
            sender TEXT NOT NULL,
            key TEXT NOT NULL,
            body_hash \(blob) NOT NULL,
            status INTEGER NOT NULL,
            answer TEXT NOT NULL,
            PRIMARY KEY (sender, key)
        );
        """
    }

    /// Version 1 on an exchange database from before schema versions: the columns added since
    /// its first tables (push state, when the family was informed).
    static func addMissingColumnsV1(_ database: SQLDatabase) throws {
        let inbox = try database.columns(of: "inbox")
        for (column, type) in [("push_attempts", "INTEGER NOT NULL DEFAULT 0"), ("next_push_at", "TEXT"), ("pushed_at", "TEXT"), ("push_error", "TEXT")]
        where !inbox.contains(column) {
            try database.execute("ALTER TABLE inbox ADD COLUMN \(column) \(type)")
        }
        if !(try database.columns(of: "exchanges")).contains("informed_at") { try database.execute("ALTER TABLE exchanges ADD COLUMN informed_at TEXT") }
    }

    /// Version 2: an idempotency key is claimed in the database before the request is decided
    /// (`status` 0 while in progress), so two instances never both carry out one request; the
    /// answer's log position is kept in its own column.
    static let schemaV2 = """
        ALTER TABLE idempotency ADD COLUMN log_sequence BIGINT;
        ALTER TABLE idempotency ADD COLUMN claimed_at TEXT;
        """

    /// Readiness: `/health` reports `database: false` while the database cannot be reached.
    private let health: HealthRegistry?
    private var reachable = true
    static let healthCheck = "database"

    /// Version 3: unacknowledged items by recipient, for the backlog gauges (a partial index: it
    /// stays as small as the backlog, however many items were acknowledged).
    static let schemaV3 = """
        CREATE INDEX IF NOT EXISTS inbox_unacknowledged ON inbox (recipient, delivered_at) WHERE acknowledged_at IS NULL;
        """

    init(location: DatabaseLocation, health: HealthRegistry? = nil) throws {
        database = try location.connect()
        self.health = health
        health?.set(ExchangeRepository.healthCheck, ready: true)
    }

    /// Whether the database is in-process (SQLite): a read costs microseconds, not a round trip.
    var isLocal: Bool { database.backend == .sqlite }

    /// Runs `body` with the connection, one caller at a time.
    func with<T>(_ body: (SQLDatabase) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        do {
            let result = try body(database)
            if !reachable {
                reachable = true
                health?.set(ExchangeRepository.healthCheck, ready: true)
            }
            return result
        } catch let error as KetenpoortError where error.code == .storageUnavailable {
            reachable = false
            health?.set(ExchangeRepository.healthCheck, ready: false)
            throw error
        }
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

    // MARK: idempotency

    struct StoredAnswer {
        let bodyHash: [UInt8]
        let status: Int
        let answer: String
        let logSequence: Int64?
        /// When the key was claimed by a request still in progress (`status` 0).
        var claimedAt: String? = nil
        var inProgress: Bool { status == 0 }
    }

    func idempotentAnswer(sender: String, key: String) throws -> StoredAnswer? {
        try with { db in
            guard let r = try db.row("SELECT body_hash, status, answer, log_sequence, claimed_at FROM idempotency WHERE sender = ? AND key = ?", [.text(sender), .text(key)])
            else { return nil }
            return StoredAnswer(bodyHash: r.blob(0) ?? [], status: Int(r.int64(1)), answer: r.string(2) ?? "", logSequence: r.isNull(3) ? nil : r.int64(3), claimedAt: r.string(4))
        }
    }

    /// Claims an idempotency key for a request about to be decided: `true` when this caller now
    /// holds it. A claim older than `staleBefore` (its instance died mid-request) is taken over,
    /// but only by the same request body: another body gets the conflict as before. The claim
    /// is known by its `now`: only its holder completes or releases it.
    func claimIdempotencyKey(sender: String, key: String, bodyHash: [UInt8], now: String, staleBefore: String) throws -> Bool {
        try with { db in
            let inserted = try db.rows(
                "INSERT OR IGNORE INTO idempotency (sender, key, body_hash, status, answer, claimed_at) VALUES (?, ?, ?, 0, '', ?) RETURNING status",
                [.text(sender), .text(key), .blob(bodyHash), .text(now)])
            if !inserted.isEmpty { return true }
            let taken = try db.rows(
                "UPDATE idempotency SET claimed_at = ? WHERE sender = ? AND key = ? AND status = 0 AND claimed_at < ? AND body_hash = ? RETURNING status",
                [.text(now), .text(sender), .text(key), .text(staleBefore), .blob(bodyHash)])
            return !taken.isEmpty
        }
    }

    /// Gives a claim back (the request failed before anything was decided or logged).
    func releaseIdempotencyKey(sender: String, key: String, claimedAt: String) throws {
        try with { db in
            _ = try db.rows("DELETE FROM idempotency WHERE sender = ? AND key = ? AND status = 0 AND claimed_at = ?", [.text(sender), .text(key), .text(claimedAt)])
        }
    }

    /// Completes a claim with the answer, in the entry's transaction: the entry's precondition.
    /// A claim taken over meanwhile (this request outlived `idempotencyClaimTimeout` and a retry
    /// claimed the key anew) is no longer this request's: then neither its entry nor its delivery
    /// is written, so a key is carried out once, by the request that holds its claim when it
    /// commits.
    static func idempotentAnswer(sender: String, key: String, claimedAt: String, status: Int, answer: String) -> Precondition {
        Precondition(
            "UPDATE idempotency SET status = ?, answer = ? WHERE sender = ? AND key = ? AND status = 0 AND claimed_at = ?",
            [.integer(Int64(status)), .text(answer), .text(sender), .text(key), .text(claimedAt)],
            otherwise: KetenpoortError(
                .idempotencyConflict, "a retry with this Idempotency-Key took it over while this request was in progress; nothing was carried out by this request, retry it for the answer"))
    }

    /// The side write that binds the completed claim's answer to its log position.
    static func idempotentAnswerSequence(sender: String, key: String, claimedAt: String) -> SideWrite {
        SideWrite("UPDATE idempotency SET log_sequence = ? WHERE sender = ? AND key = ? AND claimed_at = ?", [.sequence, .text(sender), .text(key), .text(claimedAt)])
    }

    /// Records a review, in the entry's transaction: the entry's precondition, so that of two
    /// reviews of one exchange (two officers, a double post) only the one that changed it is
    /// logged.
    static func review(exchangeID: String, outcome: String) -> Precondition {
        Precondition(
            "UPDATE exchanges SET review_state = ? WHERE id = ? AND review_state = 'pending'", [.text(outcome), .text(exchangeID)],
            otherwise: KetenpoortError(.conflict, "exchange `\(exchangeID.prefix(64))` was reviewed meanwhile; this review was not recorded"))
    }

    /// Records the day the family was informed, in the entry's transaction: the entry's
    /// precondition, so only the first date recorded is logged.
    static func informed(exchangeID: String, on date: String) -> Precondition {
        Precondition(
            "UPDATE exchanges SET informed_at = ? WHERE id = ? AND informed_at IS NULL", [.text(date), .text(exchangeID)],
            otherwise: KetenpoortError(.conflict, "the family was recorded as informed of exchange `\(exchangeID.prefix(64))` meanwhile; this date was not recorded"))
    }

    // MARK: consents and facts

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

    static func consent(_ s: SQLRow) -> ConsentRow {
        ConsentRow(
            id: s.string(0) ?? "", subject: s.string(1) ?? "", grantor: s.string(2) ?? "", grantorRef: s.string(3),
            purposes: list(s.string(4)), recipients: list(s.string(5)), categories: list(s.string(6)), validFrom: s.string(7),
            validUntil: s.string(8), status: s.string(9) ?? "", registeredBy: s.string(10) ?? "", caseTable: s.string(11) ?? "")
    }

    /// Read from the database on every decision (no cache): a withdrawal registered through any
    /// instance holds for the next exchange decided by every instance.
    func consents(caseTable: String, subjects: [String]) throws -> [ConsentRow] {
        guard !subjects.isEmpty else { return [] }
        return try with { db in
            var rows: [ConsentRow] = []
            for subject in Set(subjects) {
                rows += try db.rows(
                    "SELECT \(ExchangeRepository.consentColumns) FROM consents WHERE case_table = ? AND subject = ?", [.text(caseTable), .text(subject)]
                ).map(ExchangeRepository.consent)
            }
            return rows
        }
    }

    func consent(id: String) throws -> ConsentRow? {
        try with { db in
            try db.row("SELECT \(ExchangeRepository.consentColumns) FROM consents WHERE id = ?", [.text(id)]).map(ExchangeRepository.consent)
        }
    }

    /// The newest fact of each type about each subject: subject → type → value.
    func facts(caseTable: String, subjects: [String]) throws -> [String: [String: JSONValue]] {
        guard !subjects.isEmpty else { return [:] }
        return try with { db in
            var result: [String: [String: JSONValue]] = [:]
            for subject in Set(subjects) {
                for r in try db.rows("SELECT type, value FROM case_facts WHERE case_table = ? AND subject = ?", [.text(caseTable), .text(subject)]) {
                    if let type = r.string(0), let value = r.string(1).flatMap({ try? JSONParser.parse($0) }) { result[subject, default: [:]][type] = value }
                }
            }
            return result
        }
    }

    // MARK: exchanges

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

    static func exchange(_ s: SQLRow) -> ExchangeRow {
        ExchangeRow(
            id: s.string(0) ?? "", sender: s.string(1) ?? "", recipient: s.string(2) ?? "", caseTable: s.string(3) ?? "", purpose: s.string(4) ?? "",
            decision: s.string(5) ?? "", answer: s.string(6) ?? "", reviewState: s.string(7) ?? "", ground: s.string(8) ?? "",
            informSubjectBy: s.string(9), logSequence: s.int64(10), createdAt: s.string(11) ?? "")
    }

    func exchange(id: String) throws -> ExchangeRow? {
        try with { db in
            try db.row("SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE id = ?", [.text(id)]).map(ExchangeRepository.exchange)
        }
    }

    /// When the family was recorded as informed of exchange `id` (nil: not yet).
    func informedAt(id: String) throws -> String? {
        try with { db in try db.row("SELECT informed_at FROM exchanges WHERE id = ?", [.text(id)])?.string(0) }
    }

    /// Permitted exchanges whose date to inform the subject has passed.
    func informOverdue(today: String, limit: Int) throws -> [ExchangeRow] {
        try with { db in
            try db.rows(
                "SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE decision = 'permit' AND inform_subject_by IS NOT NULL AND inform_subject_by < ? AND informed_at IS NULL ORDER BY inform_subject_by LIMIT ?",
                [.text(today), .integer(Int64(limit))]
            ).map(ExchangeRepository.exchange)
        }
    }

    func pendingReviews(limit: Int) throws -> [ExchangeRow] {
        try with { db in
            try db.rows(
                "SELECT \(ExchangeRepository.exchangeColumns) FROM exchanges WHERE review_state = 'pending' ORDER BY log_sequence LIMIT ?", [.integer(Int64(limit))]
            ).map(ExchangeRepository.exchange)
        }
    }

    // MARK: inbox and push delivery

    struct InboxRow {
        let id: Int64
        let exchangeID: String
        let sealed: [UInt8]?
        let deliveredAt: String
        let acknowledgedAt: String?
        var pushedAt: String? = nil
        var pushAttempts = 0
    }

    /// Inbox ids grow in commit order on both backends (the items are inserted inside the log's
    /// serialised group commit), so a cursor never skips an item committed later.
    func inbox(recipient: String, after: Int64, limit: Int) throws -> [InboxRow] {
        try with { db in
            try db.rows(
                "SELECT id, exchange_id, sealed_payload, delivered_at, acknowledged_at FROM inbox WHERE recipient = ? AND id > ? AND acknowledged_at IS NULL ORDER BY id LIMIT ?",
                [.text(recipient), .integer(after), .integer(Int64(limit))]
            ).map { r in InboxRow(id: r.int64(0), exchangeID: r.string(1) ?? "", sealed: r.blob(2), deliveredAt: r.string(3) ?? "", acknowledgedAt: r.string(4)) }
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

    /// Claims items due for a push (not acknowledged, for recipients with an endpoint) by moving
    /// their next attempt `lease` ahead: another instance skips them while this one pushes. On
    /// PostgreSQL rows another instance is claiming are skipped, not waited for.
    func claimDuePushes(recipients: [String], now: String, leaseUntil: String, limit: Int) throws -> [PushRow] {
        guard !recipients.isEmpty else { return [] }
        return try with { db in
            let marks = Array(repeating: "?", count: recipients.count).joined(separator: ", ")
            let skipLocked = db.backend == .postgresql ? " FOR UPDATE SKIP LOCKED" : ""
            let rows = try db.rows(
                """
                UPDATE inbox SET next_push_at = ? WHERE id IN (
                    SELECT id FROM inbox WHERE acknowledged_at IS NULL AND sealed_payload IS NOT NULL AND recipient IN (\(marks))
                    AND (next_push_at IS NULL OR next_push_at <= ?) ORDER BY id LIMIT ?\(skipLocked))
                RETURNING id, exchange_id, recipient, sealed_payload, delivered_at, push_attempts
                """,
                [.text(leaseUntil)] + recipients.map { .text($0) } + [.text(now), .integer(Int64(limit))])
            return rows.compactMap { r in
                guard let sealed = r.blob(3) else { return nil }
                return PushRow(id: r.int64(0), exchangeID: r.string(1) ?? "", recipient: r.string(2) ?? "", sealed: sealed, deliveredAt: r.string(4) ?? "", attempts: Int(r.int64(5)))
            }.sorted { $0.id < $1.id }
        }
    }

    /// The partner's endpoint answered 2xx: that is its acknowledgement; the payload is erased.
    func markPushed(id: Int64, at time: String) throws {
        try with { db in
            _ = try db.rows(
                "UPDATE inbox SET pushed_at = ?, acknowledged_at = coalesce(acknowledged_at, ?), sealed_payload = NULL, push_error = NULL WHERE id = ?",
                [.text(time), .text(time), .integer(id)])
        }
    }

    /// A failed push: the next attempt after the backoff; the reason names no data.
    func markPushFailed(id: Int64, attempts: Int, next: String, reason: String) throws {
        try with { db in
            _ = try db.rows(
                "UPDATE inbox SET push_attempts = ?, next_push_at = ?, push_error = ? WHERE id = ?", [.integer(Int64(attempts)), .text(next), .text(reason), .integer(id)])
        }
    }

    func delivery(exchangeID: String) throws -> InboxRow? {
        try with { db in
            guard let r = try db.row("SELECT id, exchange_id, delivered_at, acknowledged_at, pushed_at, push_attempts FROM inbox WHERE exchange_id = ?", [.text(exchangeID)])
            else { return nil }
            return InboxRow(
                id: r.int64(0), exchangeID: r.string(1) ?? "", sealed: nil, deliveredAt: r.string(2) ?? "", acknowledgedAt: r.string(3), pushedAt: r.string(4),
                pushAttempts: Int(r.int64(5)))
        }
    }

    /// Unacknowledged items per recipient: count and the oldest delivery time.
    func backlog() throws -> [(recipient: String, items: Int, oldest: String)] {
        try with { db in
            // An item whose payload retention erased can no longer be delivered: it is not waiting.
            try db.rows(
                "SELECT recipient, count(*), min(delivered_at) FROM inbox WHERE acknowledged_at IS NULL AND sealed_payload IS NOT NULL GROUP BY recipient", []
            ).map {
                ($0.string(0) ?? "", Int($0.int64(1)), $0.string(2) ?? "")
            }
        }
    }

    enum Acknowledgement: Equatable {
        /// This call acknowledged the item (its payload is erased).
        case acknowledged
        /// It was acknowledged before (by this or another instance): nothing changed.
        case alreadyAcknowledged
        /// No such item for this recipient.
        case notFound
    }

    /// Marks an item acknowledged and erases its payload, once: the guarded update succeeds for
    /// exactly one caller, whichever instance it reached.
    func acknowledge(id: Int64, recipient: String, at time: String) throws -> Acknowledgement {
        try with { db in
            let changed = try db.rows(
                "UPDATE inbox SET acknowledged_at = ?, sealed_payload = NULL WHERE id = ? AND recipient = ? AND acknowledged_at IS NULL RETURNING id",
                [.text(time), .integer(id), .text(recipient)])
            if !changed.isEmpty { return .acknowledged }
            let exists = try db.row("SELECT count(*) FROM inbox WHERE id = ? AND recipient = ?", [.integer(id), .text(recipient)])?.int64(0) ?? 0
            return exists == 1 ? .alreadyAcknowledged : .notFound
        }
    }
}
