import Foundation
import KetenpoortCore

/// Retention per route: every exchange entry carries `retainUntil` (the decision date plus the
/// route's `retention_years`). Once that day has passed, the entry's details (its body, its
/// subject index rows and its sealed free text) are erased; its leaf and chain hashes stay, so
/// the chain, the tree heads and every proof still verify. The erasure itself is a `retention`
/// entry naming the erased sequences, written in the same transaction; `log verify` accepts an
/// entry without content only when such an entry records it.
public enum AuditRetention {
    public struct Result: Sendable {
        public var expired: Int
        public var logSequence: Int64?
    }

    /// At most this many entries are erased per retention entry (a long backlog takes several).
    public static let batchLimit = 50_000

    /// - Parameter alsoErase: statements run in the first retention transaction (the gateway's
    ///   undelivered payloads whose retention ended, for example).
    public static func run(log: AuditLog, store: AuditStore, today: String, dryRun: Bool = false, alsoErase: [SideWrite] = []) async throws -> Result {
        var result = Result(expired: 0, logSequence: nil)
        var expired = try store.expired(before: today)
        if dryRun { return Result(expired: expired.count, logSequence: nil) }
        var extra = alsoErase
        while !expired.isEmpty {
            let chunk = Array(expired.prefix(batchLimit))
            expired.removeFirst(chunk.count)
            var record = AuditRecord(
                kind: AuditKind.retention.rawValue, members: [("before", .string(today)), ("count", .number(Double(chunk.count)))], erases: chunk)
            record.sideWrites = extra
            extra = []
            result.logSequence = try await log.append(record)
            result.expired += chunk.count
        }
        return result
    }
}
