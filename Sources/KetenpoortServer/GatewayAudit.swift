import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import Logging

/// The gateway's side of the audit log: writes records before answers are sent, fails closed,
/// and reports the log's health (`/health` is not ready while the log cannot be written).
public final class GatewayAudit: Sendable {
    public let log: AuditLog
    public let recorder: AuditRecorder
    public let keys: LogKeys
    public let database: DatabaseLocation
    let health: HealthRegistry
    let logger: Logger
    let metrics: GatewayMetrics
    private let reader = NSLock()
    nonisolated(unsafe) private var readStore: AuditStore?

    public static let healthCheck = "audit_log"

    public init(configuration: GatewayConfiguration, health: HealthRegistry, metrics: GatewayMetrics, logger: Logger) throws {
        // `keys:` or KETENPOORT_KEYS, else the systemd credential `ketenpoort-master-key`.
        let keyPath: String
        do {
            keyPath = try MasterKeySource.resolve(path: configuration.masterKeyPath)
        } catch {
            throw KetenpoortError(
                .configuration,
                "the gateway needs a master key file for the audit log (`keys:`, KETENPOORT_KEYS or a `ketenpoort-master-key` systemd credential); create one with `ketenpoort keys init FILE`")
        }
        let ring = try KeyRing.load(path: keyPath)
        // A log file its owner may not write is a deliberate read-only log: refuse it, also when
        // running as root (which would bypass the mode).
        database = configuration.databaseLocation
        if let path = database.sqlitePath, let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let mode = (attributes[.posixPermissions] as? NSNumber)?.intValue, mode & 0o200 == 0
        {
            throw KetenpoortError(
                .configuration, "the audit log `\(configuration.databasePath)` is read-only (mode \(String(mode, radix: 8))); the gateway must be able to write it")
        }
        keys = try LogKeys(keys: ring, origin: configuration.audit.origin)
        recorder = AuditRecorder(keys: keys)
        do {
            // Readiness follows every commit and, after a failure, the writer's probes: an
            // instance taken out of service recovers without needing a request.
            log = try AuditLog(
                store: try AuditStores.writable(database), signer: try keys.signer,
                schedule: CheckpointSchedule(entries: configuration.audit.checkpointEntries, seconds: configuration.audit.checkpointSeconds),
                observer: { [health] written in health.set(GatewayAudit.healthCheck, ready: written) })
        } catch let error as KetenpoortError {
            throw KetenpoortError(.configuration, "the audit log in `\(database.description)` cannot be opened for writing: \(error.message)")
        }
        self.health = health
        self.metrics = metrics
        self.logger = logger
        health.set(GatewayAudit.healthCheck, ready: true)
    }

    /// Appends `record` durably; on failure marks the log unhealthy and throws
    /// `audit_unavailable` (the caller refuses the request).
    @discardableResult
    public func record(_ record: AuditRecord) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            self.record(record) { continuation.resume(with: $0) }
        }
    }

    /// Appends `record` durably and calls `completion` on the log's writer thread with its
    /// sequence number, or with `audit_unavailable` (the log is then marked unhealthy), or with
    /// the record's `precondition.failure` when its precondition changed no row (nothing was
    /// written; the log is fine).
    public func record(_ record: AuditRecord, completion: @escaping @Sendable (Result<Int64, KetenpoortError>) -> Void) {
        let kind = record.kind
        let refusal = record.precondition?.failure
        log.append(record) { [metrics, logger] result in
            switch result {
            case .success(let sequence):
                metrics.auditEntries.increment()
                completion(.success(sequence))
            case .failure(let error as KetenpoortError) where error.code == refusal?.code:
                // Another request changed the row first: this one's answer, not a write failure.
                completion(.failure(error))
            case .failure(let error):
                metrics.auditWriteFailures.increment()
                // The storage message names the failure (SQLite's text), never the entry.
                logger.error(
                    "audit log write failed; refusing requests that need it",
                    metadata: ["audit.kind": "\(kind)", "error": "\((error as? KetenpoortError)?.message ?? "storage error")"])
                completion(.failure(KetenpoortError(.auditUnavailable, "the audit log cannot be written; the request was not carried out")))
            }
        }
    }

    /// Runs `body` with a read-only view of the log (one at a time).
    /// The free texts an entry sealed (name → text), opened with the log key for an officer. A
    /// text whose stored bytes no longer match the hash in the (hashed) entry, or that the key
    /// ring cannot open, is `nil`: one damaged text must not hide the rest of a review queue.
    func openedTexts(of entry: StoredEntry) throws -> [(name: String, text: String?)] {
        guard let body = entry.body, let members = (try? JSONParser.parse(body))?["texts"]?.objectValue else { return [] }
        var result: [(name: String, text: String?)] = []
        for (name, hash) in members {
            guard let h = hash.stringValue.flatMap(Hex.decode) else {
                result.append((name, nil))
                continue
            }
            let sealed = try read { try $0.sealedText(sequence: entry.sequence, hash: h) }
            let opened = sealed.flatMap { Crypto.sha256($0) == h ? (try? keys.open($0)) : nil }
            if opened == nil { logger.error("a sealed text of an audit entry cannot be opened (damaged, or its key retired)", metadata: ["log.sequence": "\(entry.sequence)"]) }
            result.append((name, opened))
        }
        return result
    }

    public func read<T>(_ body: (AuditStore) throws -> T) throws -> T {
        reader.lock()
        defer { reader.unlock() }
        if readStore == nil { readStore = try AuditStores.reading(database) }
        do {
            return try body(readStore!)
        } catch let error as KetenpoortError where error.code == .storageUnavailable {
            readStore = nil  // reconnect next time
            throw error
        }
    }

    /// The entries written when the gateway starts: the policy set in force, and a key rotation
    /// when the current master key differs from the one the log last recorded.
    public func recordStartup(policyVersion: String) async throws {
        let lastKeyID = try read { store -> String? in
            // Every start writes a policy-reloaded entry with the key id in use.
            var query = AuditQuery()
            query.kind = AuditKind.policyReloaded.rawValue
            var found: String?
            try store.entries(matching: query) { entry in
                if let body = entry.body, let id = (try? JSONParser.parse(body))?["keyId"]?.stringValue { found = id }
                return true
            }
            return found
        }
        if let lastKeyID, lastKeyID != keys.keys.currentKeyID {
            try await record(try recorder.keyRotated(previous: lastKeyID))
        }
        try await record(recorder.policyReloaded(version: policyVersion, previous: nil, reason: "startup"))
    }

    public func close() { log.close() }
}
