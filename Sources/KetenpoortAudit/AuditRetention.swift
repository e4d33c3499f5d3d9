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

    /// Entries erased per transaction and per retention entry. A transaction of this size holds
    /// the log's write lock for tens of milliseconds, so a gateway writing to the same database
    /// is not kept waiting past its busy timeout by a long backlog.
    public static let defaultBatchSize = 1_000

    /// The pause between two transactions, so a writer waiting for the lock gets it. SQLite's
    /// busy handler retries a waiting writer at most every 100 ms: a pause longer than that lets
    /// it in (on PostgreSQL the advisory lock queues fairly; the pause costs little there).
    public static let defaultPause: Duration = .milliseconds(120)

    /// - Parameters:
    ///   - alsoErase: statements run in the first retention transaction (the gateway's
    ///     undelivered payloads whose retention ended, for example).
    ///   - batchSize: entries erased per transaction (each recorded by a retention entry of its own).
    ///   - progress: called after each transaction with the entries erased so far and the total.
    public static func run(
        log: AuditLog, store: AuditStore, today: String, dryRun: Bool = false, alsoErase: [SideWrite] = [],
        batchSize: Int = defaultBatchSize, pause: Duration = defaultPause, progress: (@Sendable (Int, Int) -> Void)? = nil
    ) async throws -> Result {
        precondition(batchSize > 0, "a retention batch holds at least one entry")
        var result = Result(expired: 0, logSequence: nil)
        let expired = try store.expired(before: today)
        if dryRun { return Result(expired: expired.count, logSequence: nil) }
        var extra = alsoErase
        var start = 0
        while start < expired.count {
            if start > 0 { try await Task.sleep(for: pause) }
            let chunk = Array(expired[start..<min(expired.count, start + batchSize)])
            start += chunk.count
            var record = AuditRecord(
                kind: AuditKind.retention.rawValue, members: [("before", .string(today)), ("count", .number(Double(chunk.count)))], erases: chunk)
            record.sideWrites = extra
            extra = []
            result.logSequence = try await log.append(record)
            result.expired += chunk.count
            progress?(result.expired, expired.count)
        }
        return result
    }
}
