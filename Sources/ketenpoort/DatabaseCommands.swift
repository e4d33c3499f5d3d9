import ArgumentParser
import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortServer
import KetenpoortStore

/// `--config FILE` or `--db PATH-OR-URL`: which database a command works on.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "The gateway's configuration file (its `database:` and `database_password_file:`).") var config: String?
    @Option(help: "A SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE) instead of --config.") var db: String?

    func location() throws -> DatabaseLocation {
        switch (config, db) {
        case (let config?, nil): return try GatewayConfiguration.load(path: config).databaseLocation
        case (nil, let db?): return databaseLocation(db)
        default: throw KetenpoortError(.invalidInput, "give either --config FILE or --db PATH-OR-URL")
        }
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the database's schema (SQLite or PostgreSQL) to the version this ketenpoort knows; back up first.")
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Only show the schema version and the steps not yet applied.") var status = false
    @Option(help: "Stop at this version (default: the newest).") var to: Int?

    func run() throws {
        let location = try database.location()
        if case .sqlite(let path) = location, !FileManager.default.fileExists(atPath: path) {
            throw KetenpoortError(.fileUnreadable, "database `\(path)` does not exist (the gateway creates it at its first start)")
        }
        let connection = try location.connect()
        let state = try GatewaySchema.state(connection)
        let current = state.number
        let latest = GatewaySchema.latest
        print("database: \(location.description) (\(location.backend.rawValue))")
        print("schema version: \(state == .empty ? "none (empty database)" : state == .unversioned ? "from before schema versions" : String(current)); this ketenpoort: \(latest)")
        if status {
            for step in GatewaySchema.migrations where step.version > current { print("pending: \(step.version) \(step.description)") }
            if current > latest { throw KetenpoortError(.configuration, "the schema is newer than this ketenpoort knows: upgrade ketenpoort") }
            return
        }
        let applied = try SchemaMigrator.migrate(connection, migrations: GatewaySchema.migrations, to: to, now: AuditClock.timestamp())
        for step in applied { print("applied: \(step.version) \(step.description)") }
        print(applied.isEmpty ? "up to date" : "schema version: \(try GatewaySchema.state(connection).number)")
    }
}

struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "An online, consistent copy of a SQLite database (mode 0600); check it with `ketenpoort log verify --db COPY --checkpoint KEPT`.")
    @OptionGroup var database: DatabaseOptions
    @Option(help: "The copy to write (must not exist).") var out: String

    func run() throws {
        guard case .sqlite(let path) = try database.location() else {
            throw KetenpoortError(
                .invalidInput, "a PostgreSQL database is backed up with PostgreSQL's tools (pg_dump --format=custom, or base backups): see docs/operations.md")
        }
        guard FileManager.default.fileExists(atPath: path) else { throw KetenpoortError(.fileUnreadable, "database `\(path)` does not exist") }
        let bytes = try SQLiteDatabase.backup(from: path, to: out)
        print("backup: \(out) (\(bytes) bytes) from \(path)")
    }
}
