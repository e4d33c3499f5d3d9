import KetenpoortCore

/// The two storage backends: SQLite (embedded, one gateway) and PostgreSQL (several gateways
/// sharing one database).
public enum SQLBackend: String, Sendable {
    case sqlite
    case postgresql
}

/// A value bound to a statement, for either backend.
public enum SQLParameter: Sendable, Equatable {
    case text(String)
    case integer(Int64)
    case blob([UInt8])
    case null

    public static func optional(_ value: String?) -> SQLParameter { value.map { .text($0) } ?? .null }
}

/// One column value of a row read through ``SQLDatabase/rows(_:_:)``.
public enum SQLField: Sendable, Equatable {
    case null
    case integer(Int64)
    case text(String)
    case blob([UInt8])
}

/// A row: columns by 0-based index.
public struct SQLRow: Sendable {
    public let fields: [SQLField]
    public init(fields: [SQLField]) { self.fields = fields }

    public func string(_ i: Int) -> String? {
        switch fields[i] {
        case .text(let t): return t
        case .integer(let n): return String(n)
        case .blob(let b): return String(decoding: b, as: UTF8.self)
        case .null: return nil
        }
    }

    public func int64(_ i: Int) -> Int64 {
        switch fields[i] {
        case .integer(let n): return n
        case .text(let t): return Int64(t) ?? 0
        default: return 0
        }
    }

    public func blob(_ i: Int) -> [UInt8]? {
        switch fields[i] {
        case .blob(let b): return b
        case .text(let t): return Array(t.utf8)
        default: return nil
        }
    }

    public func isNull(_ i: Int) -> Bool { fields[i] == .null }
}

/// A connection to either backend, used by one thread at a time. SQL is written once with `?`
/// placeholders and `INSERT OR IGNORE`; the PostgreSQL connection rewrites both (``PostgresSQL``).
/// Bound values never reach an error message.
public protocol SQLDatabase: AnyObject {
    var backend: SQLBackend { get }
    /// Runs statements without parameters (a schema).
    func execute(_ sql: String) throws
    /// Runs one statement and returns its rows (a `SELECT`, or a write with `RETURNING`).
    @discardableResult
    func rows(_ sql: String, _ parameters: [SQLParameter]) throws -> [SQLRow]
    /// Runs one `INSERT`, `UPDATE` or `DELETE` and returns how many rows it changed (a row that
    /// `OR IGNORE` or a `WHERE` left alone is not counted).
    @discardableResult
    func rowsChanged(by sql: String, _ parameters: [SQLParameter]) throws -> Int
    /// Runs `body` in a write transaction: committed when it returns, rolled back when it throws.
    func transaction<T>(_ body: () throws -> T) throws -> T
}

extension SQLDatabase {
    /// The first row, if any.
    public func row(_ sql: String, _ parameters: [SQLParameter]) throws -> SQLRow? {
        try rows(sql, parameters).first
    }
}

/// A forward-only cursor over a result, as the audit verifier reads it: the SQLite statement
/// itself, or pages of a PostgreSQL result. Column indexes are 0-based.
public protocol SQLCursor: AnyObject {
    func step() throws -> Bool
    func int64(_ column: Int32) -> Int64
    func isNull(_ column: Int32) -> Bool
    func string(_ column: Int32) -> String?
    func blob(_ column: Int32) -> [UInt8]?
    func withBytes<T>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T
}

extension SQLiteStatement: SQLCursor {}

extension SQLiteDatabase: SQLDatabase {
    public var backend: SQLBackend { .sqlite }

    @discardableResult
    public func rows(_ sql: String, _ parameters: [SQLParameter]) throws -> [SQLRow] {
        let statement = try cachedStatement(sql)
        defer { statement.reset() }
        for (index, value) in parameters.enumerated() {
            let i = Int32(index + 1)
            switch value {
            case .text(let t): statement.bind(i, t)
            case .integer(let n): statement.bind(i, n)
            case .blob(let b): statement.bind(i, b)
            case .null: statement.bind(i, nil as String?)
            }
        }
        var result: [SQLRow] = []
        while try statement.step() { result.append(statement.row()) }
        return result
    }

    @discardableResult
    public func rowsChanged(by sql: String, _ parameters: [SQLParameter]) throws -> Int {
        try rows(sql, parameters)
        return changes
    }
}
