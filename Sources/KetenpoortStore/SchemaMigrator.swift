import Foundation
import KetenpoortCore

/// One step of a database's schema. Steps are applied in order, each in its own transaction, and
/// recorded in `schema_migrations`; a database never goes back a version (restore a backup).
public struct SchemaMigration: Sendable {
    public let version: Int
    public let description: String
    public let apply: @Sendable (SQLDatabase) throws -> Void

    public init(version: Int, description: String, apply: @escaping @Sendable (SQLDatabase) throws -> Void) {
        self.version = version
        self.description = description
        self.apply = apply
    }
}

/// Reads and advances a database's schema version, on either backend.
public enum SchemaMigrator {
    /// What a database holds: nothing yet, tables from before versioning, or a recorded version.
    public enum State: Equatable, Sendable {
        case empty
        case unversioned
        case version(Int)

        public var number: Int {
            if case .version(let n) = self { return n }
            return 0
        }
    }

    /// The advisory lock PostgreSQL migrations hold, so two instances starting together on an
    /// empty database do not both create it.
    static let migrationLock: Int64 = 0x4B50_4D49_4752

    public static func state(_ database: SQLDatabase, markerTable: String) throws -> State {
        guard try database.hasTable("schema_migrations") else {
            return try database.hasTable(markerTable) ? .unversioned : .empty
        }
        let version = try database.row("SELECT coalesce(max(version), 0) FROM schema_migrations", [])?.int64(0) ?? 0
        return .version(Int(version))
    }

    /// The versions recorded, with when they were applied.
    public static func history(_ database: SQLDatabase) throws -> [(version: Int, description: String, appliedAt: String)] {
        guard try database.hasTable("schema_migrations") else { return [] }
        return try database.rows("SELECT version, description, applied_at FROM schema_migrations ORDER BY version", []).map {
            (Int($0.int64(0)), $0.string(1) ?? "", $0.string(2) ?? "")
        }
    }

    /// Applies the migrations above the database's version up to `target` (default: the last).
    /// Returns those applied. Refuses a database newer than `migrations` knows and a target below
    /// the current version.
    @discardableResult
    public static func migrate(_ database: SQLDatabase, migrations: [SchemaMigration], to target: Int? = nil, now: String) throws -> [SchemaMigration] {
        let latest = migrations.map(\.version).max() ?? 0
        let goal = target ?? latest
        guard goal >= 0, goal <= latest else {
            throw KetenpoortError(.invalidInput, "schema version \(goal) does not exist: this version of ketenpoort knows versions 1 to \(latest)")
        }
        var applied: [SchemaMigration] = []
        for migration in migrations.sorted(by: { $0.version < $1.version }) where migration.version <= goal {
            let done = try database.transaction { () throws -> Bool in
                if database.backend == .postgresql {
                    try database.rows("SELECT pg_advisory_xact_lock(?)", [.integer(migrationLock)])
                }
                try database.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)")
                let current = Int(try database.row("SELECT coalesce(max(version), 0) FROM schema_migrations", [])?.int64(0) ?? 0)
                if current > latest {
                    throw KetenpoortError(
                        .configuration, "the database's schema is version \(current), newer than this version of ketenpoort knows (\(latest)): upgrade ketenpoort")
                }
                if current > goal {
                    throw KetenpoortError(.invalidInput, "the database's schema is version \(current); going back to \(goal) is not supported: restore a backup instead")
                }
                guard migration.version > current else { return false }
                try migration.apply(database)
                try database.rows(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    [.integer(Int64(migration.version)), .text(migration.description), .text(now)])
                return true
            }
            if done { applied.append(migration) }
        }
        if applied.isEmpty {
            // Nothing to do still checks the version is one we know.
            let current = try state(database, markerTable: "schema_migrations").number
            if current > latest {
                throw KetenpoortError(
                    .configuration, "the database's schema is version \(current), newer than this version of ketenpoort knows (\(latest)): upgrade ketenpoort")
            }
        }
        return applied
    }
}

extension SQLDatabase {
    /// Whether a table of this name exists (in the connection's schema).
    public func hasTable(_ name: String) throws -> Bool {
        switch backend {
        case .sqlite:
            return (try row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", [.text(name)])?.int64(0) ?? 0) > 0
        case .postgresql:
            return (try row("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?", [.text(name)])?.int64(0) ?? 0) > 0
        }
    }

    /// The names of a table's columns.
    public func columns(of table: String) throws -> Set<String> {
        switch backend {
        case .sqlite:
            return Set(try rows("SELECT name FROM pragma_table_info(?)", [.text(table)]).compactMap { $0.string(0) })
        case .postgresql:
            return Set(
                try rows("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?", [.text(table)])
                    .compactMap { $0.string(0) })
        }
    }
}
