import Foundation
import CSQLite
import KetenpoortCore

/// A connection to a SQLite database through the system libsqlite3.
///
/// One connection is used by one thread at a time (the caller serialises; the audit log keeps a
/// single writer). Bound values never reach error messages or logs: errors name the statement's
/// purpose and SQLite's message, never the data (compare GRDB's `publicStatementArguments`).
public final class SQLiteDatabase {
    public enum Synchronous: String, Sendable { case off = "OFF", normal = "NORMAL", full = "FULL" }

    let handle: OpaquePointer
    public let path: String
    /// Statements prepared once and kept by their SQL (``rows(_:_:)`` and ``cachedStatement(_:)``).
    private var statementCache: [String: SQLiteStatement] = [:]

    /// A statement prepared once for this connection and reset before each reuse (a statement
    /// prepared once serves every later call). One user at a time, like the connection.
    public func cachedStatement(_ sql: String) throws -> SQLiteStatement {
        if let cached = statementCache[sql] {
            cached.reset()
            return cached
        }
        let statement = try prepare(sql)
        statementCache[sql] = statement
        return statement
    }

    /// Opens (or creates) the database, in WAL mode with the given durability.
    public init(path: String, synchronous: Synchronous = .full, readOnly: Bool = false) throws {
        var db: OpaquePointer?
        if !readOnly && path != ":memory:" {
            // A new database is created owner-only (0600); SQLite gives its -wal and -shm the
            // database's mode. The process umask may be looser (a container, the command line),
            // and the file holds pseudonymised personal data.
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            if fd >= 0 { close(fd) }
        }
        let flags = readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
        let rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let db { sqlite3_close_v2(db) }
            throw KetenpoortError(.fileUnreadable, "database `\(path)` cannot be opened: \(message)")
        }
        handle = db
        self.path = path
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, 5_000)
        if !readOnly {
            try execute("PRAGMA journal_mode=WAL")
            try execute("PRAGMA synchronous=\(synchronous.rawValue)")
        }
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit {
        statementCache.removeAll()
        sqlite3_close_v2(handle)
    }

    /// Runs one or more statements without parameters.
    public func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle))
            sqlite3_free(message)
            throw SQLiteDatabase.error(rc, text)
        }
    }

    /// Prepares a statement.
    public func prepare(_ sql: String) throws -> SQLiteStatement {
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard rc == SQLITE_OK, let statement else {
            throw SQLiteDatabase.error(rc, String(cString: sqlite3_errmsg(handle)))
        }
        return SQLiteStatement(statement: statement, database: self)
    }

    /// Runs `body` in a transaction (`BEGIN IMMEDIATE`): committed when it returns, rolled back
    /// when it throws.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// How many rows the last `INSERT`, `UPDATE` or `DELETE` on this connection changed.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// Writes a consistent copy of the database at `source` to `destination` while writers go on
    /// (`VACUUM INTO` reads one snapshot). The copy is created with mode 0600; an existing file is
    /// refused. Returns its size.
    public static func backup(from source: String, to destination: String) throws -> Int {
        guard !FileManager.default.fileExists(atPath: destination) else {
            throw KetenpoortError(.invalidInput, "`\(destination)` exists; choose a new file for the backup")
        }
        // Created with mode 0600 from the start (the command's own umask), never readable by others.
        let previous = umask(0o077)
        defer { umask(previous) }
        do {
            let database = try SQLiteDatabase(path: source, readOnly: true)
            let statement = try database.prepare("VACUUM INTO ?")
            statement.bind(1, destination)
            try statement.step()
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: destination)
        } catch {
            try? FileManager.default.removeItem(atPath: destination)
            throw error
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: destination)[.size] as? NSNumber)?.intValue ?? 0
        return size
    }

    static func error(_ rc: Int32, _ message: String) -> KetenpoortError {
        let primary = rc & 0xff
        let code: KetenpoortError.Code
        switch primary {
        case SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM: code = .storageUnavailable
        case SQLITE_CORRUPT, SQLITE_NOTADB: code = .storageCorrupt
        case SQLITE_CONSTRAINT: code = .storageConstraint
        default: code = .storage
        }
        return KetenpoortError(code, "sqlite error \(rc): \(message)")
    }
}

/// A prepared statement. Bind by 1-based index, step, read columns.
public final class SQLiteStatement {
    let statement: OpaquePointer
    unowned let database: SQLiteDatabase

    init(statement: OpaquePointer, database: SQLiteDatabase) {
        self.statement = statement
        self.database = database
    }

    deinit { sqlite3_finalize(statement) }

    public func reset() {
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
    }

    public func bind(_ index: Int32, _ value: Int64) { sqlite3_bind_int64(statement, index, value) }
    public func bind(_ index: Int32, _ value: String?) {
        guard let value else { sqlite3_bind_null(statement, index); return }
        sqlite3_bind_text(statement, index, value, -1, kp_sqlite_transient())
    }
    public func bind(_ index: Int32, _ value: [UInt8]?) {
        guard let value else { sqlite3_bind_null(statement, index); return }
        _ = value.withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32($0.count), kp_sqlite_transient()) }
    }

    /// Steps once: `true` when a row is available, `false` when done.
    @discardableResult
    public func step() throws -> Bool {
        let rc = sqlite3_step(statement)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw SQLiteDatabase.error(rc, String(cString: sqlite3_errmsg(database.handle)))
        }
    }

    public func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }
    public func string(_ column: Int32) -> String? {
        guard let text = sqlite3_column_text(statement, column) else { return nil }
        return String(cString: text)
    }
    /// The column's bytes without copying them (valid only inside `body`).
    public func withBytes<T>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let pointer = sqlite3_column_blob(statement, column)
        let count = Int(sqlite3_column_bytes(statement, column))
        return try body(UnsafeRawBufferPointer(start: pointer, count: pointer == nil ? 0 : count))
    }

    public func blob(_ column: Int32) -> [UInt8]? {
        let count = Int(sqlite3_column_bytes(statement, column))
        guard let pointer = sqlite3_column_blob(statement, column) else { return isNull(column) ? nil : [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// The current row, every column by its stored type.
    public func row() -> SQLRow {
        let count = sqlite3_column_count(statement)
        var fields: [SQLField] = []
        fields.reserveCapacity(Int(count))
        for i in 0..<count {
            switch sqlite3_column_type(statement, i) {
            case SQLITE_NULL: fields.append(.null)
            case SQLITE_INTEGER: fields.append(.integer(int64(i)))
            case SQLITE_BLOB: fields.append(.blob(blob(i) ?? []))
            default: fields.append(.text(string(i) ?? ""))
            }
        }
        return SQLRow(fields: fields)
    }
}

extension KetenpoortError.Code {
    /// The store cannot be written (disk full, I/O error, read-only): requests must be refused.
    public static let storageUnavailable = KetenpoortError.Code("storage_unavailable")
    public static let storageCorrupt = KetenpoortError.Code("storage_corrupt")
    public static let storageConstraint = KetenpoortError.Code("storage_constraint")
    public static let storage = KetenpoortError.Code("storage")
}
