import CPostgres
import Foundation
import KetenpoortCore

/// Where a PostgreSQL database is and how to log in: a libpq connection URI
/// (`postgresql://user@host:port/db?sslmode=verify-full`) and, apart from it, the file holding
/// the password (never in the URI, never in a log line).
public struct PostgresSettings: Sendable, Equatable {
    public var url: String
    public var passwordFile: String?

    public init(url: String, passwordFile: String? = nil) {
        self.url = url
        self.passwordFile = passwordFile
    }

    public static func isPostgresURL(_ text: String) -> Bool {
        text.hasPrefix("postgresql://") || text.hasPrefix("postgres://")
    }

    /// The URI without any user information (for messages).
    public var redacted: String {
        guard let schemeEnd = url.range(of: "://") else { return "postgresql://…" }
        var rest = url[schemeEnd.upperBound...]
        if let at = rest.firstIndex(of: "@"), rest[..<at].firstIndex(of: "/") == nil { rest = rest[rest.index(after: at)...] }
        return String(url[..<schemeEnd.upperBound]) + rest
    }

    /// A URI with a password in it is refused: passwords belong in `database_password_file`.
    public func validate() throws {
        guard let schemeEnd = url.range(of: "://") else {
            throw KetenpoortError(.configuration, "the database URL must start with postgresql://")
        }
        let rest = url[schemeEnd.upperBound...]
        if let at = rest.firstIndex(of: "@"), rest[..<at].contains(":") {
            throw KetenpoortError(
                .configuration, "the database URL holds a password: remove it and put the password in a file named by `database_password_file`")
        }
        if url.contains("password=") {
            throw KetenpoortError(
                .configuration, "the database URL holds a password parameter: put the password in a file named by `database_password_file`")
        }
    }
}

/// A connection to PostgreSQL through the system libpq (PostgreSQL's own client library).
///
/// Synchronous, like the SQLite connection: the audit writer and the repositories call it from
/// their own threads, one caller at a time. Statements are prepared once per connection and run
/// with bound parameters; results come back in text form (`bytea` decoded from hex). A lost
/// connection is re-established before the next statement outside a transaction.
public final class PostgresDatabase: SQLDatabase {
    public var backend: SQLBackend { .postgresql }
    public let settings: PostgresSettings
    private var connection: OpaquePointer
    private var prepared: [String: (name: String, count: Int)] = [:]
    private var inTransaction = false

    public init(settings: PostgresSettings, applicationName: String = "ketenpoort") throws {
        try settings.validate()
        self.settings = settings
        var password: String?
        if let file = settings.passwordFile {
            try SecretFile.checkPermissions(path: file, what: "database password file")
            guard let data = FileManager.default.contents(atPath: file) else {
                throw KetenpoortError(.fileUnreadable, "database password file `\(file)` cannot be read")
            }
            password = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Defaults first, so that the URL (expanded at `dbname`) may override them. Keepalives on
        // both ends and the session timeouts bound what a vanished peer can hold: a writer that
        // dropped mid-transaction would otherwise keep the log's advisory lock for hours, and
        // every other instance's commits would wait behind it.
        var keys = ["connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "options", "application_name", "dbname"]
        var values = ["5", "1", "30", "10", "3", PostgresDatabase.sessionOptions, applicationName, settings.url]
        if let password {
            keys.append("password")
            values.append(password)
        }
        connection = PostgresDatabase.connect(keys: keys, values: values)
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = PostgresDatabase.connectionMessage(connection)
            // Every property is set: `deinit` runs on this throw and finishes the connection.
            throw KetenpoortError(.storageUnavailable, "PostgreSQL at \(settings.redacted) cannot be reached: \(message)")
        }
        // Notices (e.g. "relation already exists, skipping") are not ours to print.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
    }

    deinit { PQfinish(connection) }

    /// Session settings for every connection: a lock wait (the log's advisory lock included)
    /// fails after a minute instead of hanging; a session left idle inside a transaction (its
    /// client gone) is ended, releasing its locks; the server probes idle connections too.
    static let sessionOptions =
        "-c lock_timeout=60s -c idle_in_transaction_session_timeout=120s -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"

    private static func connect(keys: [String], values: [String]) -> OpaquePointer {
        let k = keys.map { strdup($0) }
        let v = values.map { strdup($0) }
        defer {
            k.forEach { free($0) }
            v.forEach { free($0) }
        }
        var kp: [UnsafePointer<CChar>?] = k.map { UnsafePointer($0) } + [nil]
        var vp: [UnsafePointer<CChar>?] = v.map { UnsafePointer($0) } + [nil]
        return PQconnectdbParams(&kp, &vp, 1)!
    }

    private static func connectionMessage(_ connection: OpaquePointer?) -> String {
        guard let connection, let text = PQerrorMessage(connection) else { return "no answer" }
        return String(cString: text).trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "\n", with: " ")
    }

    /// Re-establishes a connection lost between statements (never inside a transaction).
    private func ensureConnected() throws {
        guard PQstatus(connection) != CONNECTION_OK else { return }
        guard !inTransaction else { throw KetenpoortError(.storageUnavailable, "the connection to PostgreSQL was lost during a transaction") }
        prepared.removeAll()
        PQreset(connection)
        guard PQstatus(connection) == CONNECTION_OK else {
            throw KetenpoortError(.storageUnavailable, "PostgreSQL at \(settings.redacted) cannot be reached: \(PostgresDatabase.connectionMessage(connection))")
        }
    }

    public func execute(_ sql: String) throws {
        try ensureConnected()
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        try check(result)
    }

    @discardableResult
    public func rows(_ sql: String, _ parameters: [SQLParameter]) throws -> [SQLRow] {
        try run(sql, parameters) { PostgresDatabase.read($0) }
    }

    @discardableResult
    public func rowsChanged(by sql: String, _ parameters: [SQLParameter]) throws -> Int {
        try run(sql, parameters) { PostgresDatabase.rowsChanged($0) }
    }

    /// Runs one prepared statement and reads its result with `read`.
    private func run<T>(_ sql: String, _ parameters: [SQLParameter], _ read: (OpaquePointer) -> T) throws -> T {
        try ensureConnected()
        let statement = try prepare(sql)
        guard statement.count == parameters.count else {
            throw KetenpoortError(.storage, "a statement expects \(statement.count) values, \(parameters.count) given")
        }
        let bound = BoundParameters(parameters)
        defer { bound.free() }
        let result = PQexecPrepared(connection, statement.name, Int32(parameters.count), bound.pointers, bound.lengths, bound.formats, 0)
        defer { PQclear(result) }
        try check(result)
        return read(result!)
    }

    /// The rows a successful `INSERT`, `UPDATE` or `DELETE` changed (libpq's `PQcmdTuples`;
    /// 0 for a command that reports none).
    private static func rowsChanged(_ result: OpaquePointer) -> Int {
        guard let text = PQcmdTuples(result) else { return 0 }
        return Int(String(cString: text)) ?? 0
    }

    /// Runs statements that return no rows in as few round trips as possible (libpq's pipeline
    /// mode: sent together, then their results read); returns how many rows each changed, in
    /// order. Inside a transaction a failure aborts it; the first failure is thrown.
    @discardableResult
    public func pipeline(_ statements: [(sql: String, parameters: [SQLParameter])]) throws -> [Int] {
        guard !statements.isEmpty else { return [] }
        var changed: [Int] = []
        changed.reserveCapacity(statements.count)
        try ensureConnected()
        // Prepared (synchronously, once per connection) before the pipeline starts.
        let names = try statements.map { statement -> String in
            let prepared = try prepare(statement.sql)
            guard prepared.count == statement.parameters.count else {
                throw KetenpoortError(.storage, "a statement expects \(prepared.count) values, \(statement.parameters.count) given")
            }
            return prepared.name
        }
        // In chunks, so that neither side's socket buffer can fill while the other is still writing.
        var start = 0
        while start < statements.count {
            let end = min(statements.count, start + 128)
            guard PQenterPipelineMode(connection) == 1 else {
                throw KetenpoortError(.storage, "postgresql: pipeline mode is not available: \(PostgresDatabase.connectionMessage(connection))")
            }
            var firstError: Error?
            var sent = 0
            for i in start..<end {
                let bound = BoundParameters(statements[i].parameters)
                let ok = PQsendQueryPrepared(connection, names[i], Int32(statements[i].parameters.count), bound.pointers, bound.lengths, bound.formats, 0)
                bound.free()
                guard ok == 1 else {
                    firstError = KetenpoortError(.storageUnavailable, "postgresql: a statement could not be sent: \(PostgresDatabase.connectionMessage(connection))")
                    break
                }
                sent += 1
            }
            PQpipelineSync(connection)
            for _ in 0..<sent {
                var count = 0
                while let result = PQgetResult(connection) {
                    if firstError == nil, PQresultStatus(result) != PGRES_PIPELINE_ABORTED {
                        do {
                            try check(result)
                            count = PostgresDatabase.rowsChanged(result)
                        } catch { firstError = error }
                    }
                    PQclear(result)
                }
                changed.append(count)
            }
            // The synchronisation point's own result, then idle.
            while let result = PQgetResult(connection) {
                let done = PQresultStatus(result) == PGRES_PIPELINE_SYNC
                PQclear(result)
                if done { break }
            }
            PQexitPipelineMode(connection)
            if let firstError { throw firstError }
            start = end
        }
        return changed
    }

    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN")
        inTransaction = true
        defer { inTransaction = false }
        do {
            let value = try body()
            try execute("COMMIT")
            return value
        } catch {
            if PQstatus(connection) == CONNECTION_OK { try? execute("ROLLBACK") }
            throw error
        }
    }

    private func prepare(_ sql: String) throws -> (name: String, count: Int) {
        if let known = prepared[sql] { return known }
        let (text, count) = PostgresSQL.translate(sql)
        let name = "k\(prepared.count + 1)"
        let result = PQprepare(connection, name, text, Int32(count), nil)
        defer { PQclear(result) }
        try check(result)
        prepared[sql] = (name, count)
        return (name, count)
    }

    /// Maps a failed result to the project's storage errors by SQLSTATE class. The message is
    /// PostgreSQL's primary text only: its detail line can quote the values involved.
    private func check(_ result: OpaquePointer?) throws {
        let status = result.map { PQresultStatus($0) } ?? PGRES_FATAL_ERROR
        if status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY { return }
        let state = result.flatMap { PQresultErrorField($0, Int32(UInt8(ascii: "C"))) }.map { String(cString: $0) } ?? ""
        let primary = result.flatMap { PQresultErrorField($0, Int32(UInt8(ascii: "M"))) }.map { String(cString: $0) }
            ?? PostgresDatabase.connectionMessage(connection)
        let code: KetenpoortError.Code
        if PQstatus(connection) != CONNECTION_OK {
            code = .storageUnavailable
        } else {
            // 08 connection, 53 resources (disk full), 57 operator intervention (shutdown),
            // 58 system error, 25006 read-only transaction (a standby): the store cannot be written.
            switch state.prefix(2) {
            case _ where state == "25006": code = .storageUnavailable
            case "08", "53", "57", "58": code = .storageUnavailable
            case "23": code = .storageConstraint
            case "XX": code = .storageCorrupt
            default: code = .storage
            }
        }
        throw KetenpoortError(code, "postgresql error \(state.isEmpty ? "(no state)" : state): \(primary)")
    }

    private static func read(_ result: OpaquePointer) -> [SQLRow] {
        let rowCount = PQntuples(result)
        let columnCount = PQnfields(result)
        guard rowCount > 0 else { return [] }
        let types = (0..<columnCount).map { PQftype(result, $0) }
        var rows: [SQLRow] = []
        rows.reserveCapacity(Int(rowCount))
        for r in 0..<rowCount {
            var fields: [SQLField] = []
            fields.reserveCapacity(Int(columnCount))
            for c in 0..<columnCount {
                if PQgetisnull(result, r, c) == 1 {
                    fields.append(.null)
                    continue
                }
                let length = Int(PQgetlength(result, r, c))
                let value = PQgetvalue(result, r, c)!
                switch types[Int(c)] {
                case 20, 21, 23:  // int8, int2, int4
                    fields.append(.integer(Int64(String(cString: value)) ?? 0))
                case 17:  // bytea, text form `\x…`
                    fields.append(.blob(PostgresSQL.decodeHex(UnsafeRawBufferPointer(start: value, count: length))))
                default:
                    fields.append(.text(String(decoding: UnsafeRawBufferPointer(start: value, count: length), as: UTF8.self)))
                }
            }
            rows.append(SQLRow(fields: fields))
        }
        return rows
    }
}

/// Parameters as libpq takes them: text as C strings, blobs in binary form (the server knows
/// each parameter's type from the prepared statement).
struct BoundParameters {
    var buffers: [UnsafeMutablePointer<CChar>?] = []
    var lengths: [Int32] = []
    var formats: [Int32] = []

    init(_ parameters: [SQLParameter]) {
        for value in parameters {
            switch value {
            case .null:
                buffers.append(nil); lengths.append(0); formats.append(0)
            case .text(let t):
                buffers.append(strdup(t)); lengths.append(0); formats.append(0)
            case .integer(let n):
                buffers.append(strdup(String(n))); lengths.append(0); formats.append(0)
            case .blob(let b):
                let memory = malloc(max(b.count, 1))!.assumingMemoryBound(to: CChar.self)
                b.withUnsafeBytes { raw in if let base = raw.baseAddress { memcpy(memory, base, b.count) } }
                buffers.append(memory); lengths.append(Int32(b.count)); formats.append(1)
            }
        }
    }

    var pointers: [UnsafePointer<CChar>?] { buffers.map { $0.map { UnsafePointer($0) } } }

    func free() { buffers.forEach { Foundation.free($0) } }
}

/// The project's SQL (written with `?` and SQLite's `INSERT OR IGNORE`) in PostgreSQL's dialect.
public enum PostgresSQL {
    /// `?` → `$1, $2, …` outside quoted text; `INSERT OR IGNORE INTO …` → `INSERT INTO … ON
    /// CONFLICT DO NOTHING`. Returns the text and the number of parameters.
    public static func translate(_ sql: String) -> (String, Int) {
        var output = ""
        var count = 0
        var quoted = false
        for character in sql {
            if character == "'" { quoted.toggle() }
            if character == "?" && !quoted {
                count += 1
                output += "$\(count)"
            } else {
                output.append(character)
            }
        }
        if let range = output.range(of: "INSERT OR IGNORE INTO") {
            output.replaceSubrange(range, with: "INSERT INTO")
            if let returning = output.range(of: " RETURNING ") {
                output.insert(contentsOf: " ON CONFLICT DO NOTHING", at: returning.lowerBound)
            } else {
                output += " ON CONFLICT DO NOTHING"
            }
        }
        return (output, count)
    }

    /// Decodes PostgreSQL's hex form of `bytea` (`\x0a1b…`).
    public static func decodeHex(_ text: UnsafeRawBufferPointer) -> [UInt8] {
        guard text.count >= 2, text[0] == UInt8(ascii: "\\"), text[1] == UInt8(ascii: "x") else { return Array(text) }
        func nibble(_ c: UInt8) -> UInt8 {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return 0
            }
        }
        let count = (text.count - 2) / 2
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            for i in 0..<count { buffer[i] = nibble(text[2 + 2 * i]) << 4 | nibble(text[3 + 2 * i]) }
            initialized = count
        }
    }
}

/// A cursor over a result read page by page (PostgreSQL rows for the verifier): `fetch` is called
/// with the number of rows read so far and returns the next page, empty at the end.
public final class PagedCursor: SQLCursor {
    private let fetch: (Int) throws -> [SQLRow]
    private var page: [SQLRow] = []
    private var index = -1
    private var read = 0
    private var finished = false

    public init(fetch: @escaping (Int) throws -> [SQLRow]) { self.fetch = fetch }

    public func step() throws -> Bool {
        index += 1
        if index < page.count {
            read += 1
            return true
        }
        guard !finished else { return false }
        page = try fetch(read)
        index = 0
        if page.isEmpty {
            finished = true
            return false
        }
        read += 1
        return true
    }

    private var current: SQLRow { page[index] }
    public func int64(_ column: Int32) -> Int64 { current.int64(Int(column)) }
    public func isNull(_ column: Int32) -> Bool { current.isNull(Int(column)) }
    public func string(_ column: Int32) -> String? { current.string(Int(column)) }
    public func blob(_ column: Int32) -> [UInt8]? { current.blob(Int(column)) }
    public func withBytes<T>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        switch current.fields[Int(column)] {
        case .blob(let b): return try b.withUnsafeBytes(body)
        case .text(let t):
            var t = t
            return try t.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
        default: return try body(UnsafeRawBufferPointer(start: nil, count: 0))
        }
    }
}

/// Where the gateway's database is: a SQLite file or a PostgreSQL database.
public enum DatabaseLocation: Sendable, Equatable {
    case sqlite(path: String)
    case postgresql(PostgresSettings)

    /// A `postgresql://` URL or a file path.
    public init(_ text: String, passwordFile: String? = nil) {
        self = PostgresSettings.isPostgresURL(text) ? .postgresql(PostgresSettings(url: text, passwordFile: passwordFile)) : .sqlite(path: text)
    }

    public var backend: SQLBackend {
        switch self {
        case .sqlite: return .sqlite
        case .postgresql: return .postgresql
        }
    }

    /// For messages: the path, or the URL without user information.
    public var description: String {
        switch self {
        case .sqlite(let path): return path
        case .postgresql(let settings): return settings.redacted
        }
    }

    public var sqlitePath: String? {
        if case .sqlite(let path) = self { return path }
        return nil
    }

    /// A new connection (SQLite: read-write, WAL, synchronous FULL).
    public func connect() throws -> SQLDatabase {
        switch self {
        case .sqlite(let path): return try SQLiteDatabase(path: path)
        case .postgresql(let settings): return try PostgresDatabase(settings: settings)
        }
    }
}
