import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortStore

/// The schema versions of the gateway's database (audit log and exchange tables), on both
/// backends. `ketenpoort migrate` applies them; `serve` initialises an empty database and
/// refuses one at another version than it knows.
public enum GatewaySchema {
    public static let migrations: [SchemaMigration] = [
        SchemaMigration(version: 1, description: "audit log, exchanges, inbox, consents, case facts, idempotency keys") { db in
            switch db.backend {
            case .sqlite:
                try db.execute(SQLiteAuditStore.schema)
                try db.execute(ExchangeRepository.schemaV1(blob: "BLOB", serial: "INTEGER PRIMARY KEY AUTOINCREMENT", bigint: "INTEGER"))
            case .postgresql:
                try db.execute(PostgresAuditStore.schema)
                try db.execute(ExchangeRepository.schemaV1(blob: "BYTEA", serial: "BIGSERIAL PRIMARY KEY", bigint: "BIGINT"))
            }
            try ExchangeRepository.addMissingColumnsV1(db)
        },
        SchemaMigration(version: 2, description: "idempotency keys claimed in the database (shared by gateway instances)") { db in
            try db.execute(ExchangeRepository.schemaV2)
        },
        SchemaMigration(version: 3, description: "index of unacknowledged inbox items (the backlog metrics)") { db in
            try db.execute(ExchangeRepository.schemaV3)
        },
    ]

    public static var latest: Int { migrations.map(\.version).max() ?? 0 }

    public static func state(_ database: SQLDatabase) throws -> SchemaMigrator.State {
        try SchemaMigrator.state(database, markerTable: "audit_entries")
    }

    /// Before serving: an empty database (or one from before schema versions) is brought to the
    /// current version; a versioned one must be at exactly the current version.
    public static func prepareForServing(_ location: DatabaseLocation) throws {
        let database = try location.connect()
        switch try state(database) {
        case .empty, .unversioned:
            try SchemaMigrator.migrate(database, migrations: migrations, now: AuditClock.timestamp())
        case .version(let v) where v < latest:
            throw KetenpoortError(
                .configuration,
                "the database's schema is version \(v) and this gateway needs version \(latest): back it up, then run `ketenpoort migrate --config FILE`")
        case .version(let v) where v > latest:
            throw KetenpoortError(
                .configuration, "the database's schema is version \(v), newer than this gateway knows (\(latest)): run the newer ketenpoort, or restore a backup")
        case .version:
            break
        }
    }
}
