import Foundation
import KetenpoortCore
import Testing

@testable import KetenpoortStore

@Suite("SQLite through the system libsqlite3")
struct SQLiteDatabaseTests {
    func temporaryPath() -> String {
        NSTemporaryDirectory() + "store-\(UUID().uuidString.prefix(8)).db"
    }

    @Test("WAL and synchronous=FULL; values round-trip through prepared statements")
    func roundTrip() throws {
        let db = try SQLiteDatabase(path: temporaryPath())
        let mode = try db.prepare("PRAGMA journal_mode")
        #expect(try mode.step())
        #expect(mode.string(0) == "wal")
        let sync = try db.prepare("PRAGMA synchronous")
        #expect(try sync.step())
        #expect(sync.int64(0) == 2)
        try db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
        let insert = try db.prepare("INSERT INTO t (name, data) VALUES (?, ?)")
        insert.bind(1, "één")
        insert.bind(2, [0, 1, 2, 255])
        try insert.step()
        #expect(db.lastInsertRowID == 1)
        let select = try db.prepare("SELECT name, data FROM t WHERE id = ?")
        select.bind(1, Int64(1))
        #expect(try select.step())
        #expect(select.string(0) == "één")
        #expect(select.blob(1) == [0, 1, 2, 255])
        #expect(try select.step() == false)
    }

    @Test("a new database and its WAL are owner-only (0600) whatever the umask")
    func ownerOnly() throws {
        let path = temporaryPath()
        let previous = umask(0o022)
        defer { umask(previous) }
        let db = try SQLiteDatabase(path: path)
        try db.execute("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)")
        for file in [path, path + "-wal"] {
            let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(file): \(String(mode ?? 0, radix: 8))")
        }
    }

    @Test("a transaction that throws leaves nothing behind")
    func rollback() throws {
        struct Abort: Error {}
        let db = try SQLiteDatabase(path: temporaryPath())
        try db.execute("CREATE TABLE t (v INTEGER)")
        #expect(throws: Abort.self) {
            try db.transaction {
                try db.execute("INSERT INTO t VALUES (1)")
                throw Abort()
            }
        }
        let count = try db.prepare("SELECT count(*) FROM t")
        #expect(try count.step())
        #expect(count.int64(0) == 0)
    }

    @Test("a full database is reported as storage_unavailable, and the error holds no bound value")
    func diskFull() throws {
        let db = try SQLiteDatabase(path: temporaryPath())
        try db.execute("CREATE TABLE t (v TEXT); PRAGMA max_page_count = 8")
        let insert = try db.prepare("INSERT INTO t VALUES (?)")
        var failure: KetenpoortError?
        for _ in 0..<200 {
            insert.reset()
            insert.bind(1, String(repeating: "999990019", count: 200))
            do { try insert.step() } catch let error as KetenpoortError { failure = error; break }
        }
        let error = try #require(failure)
        #expect(error.code == .storageUnavailable)
        #expect(!error.message.contains("999990019"))
    }

    @Test("a file that is not a database is refused")
    func notADatabase() throws {
        let path = temporaryPath()
        try String(repeating: "not a database ", count: 100).write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: KetenpoortError.self) {
            let db = try SQLiteDatabase(path: path)
            try db.execute("SELECT * FROM sqlite_master")
        }
    }
}
