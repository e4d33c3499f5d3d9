import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortPolicy
import KetenpoortStore
import KetenpoortTLS
import Logging
import ServiceLifecycle
import Synchronization

/// Wires a configuration into a running gateway: snapshot, application, server, service.
/// The executable only calls this.
public enum Gateway {
    /// Loads what requests are decided with from the policy directory.
    /// Validates and compiles the policy directory; any error keeps the caller's current set.
    public static func loadSnapshot(policyDirectory: String) throws -> GatewaySnapshot {
        let result = PolicyLoader.load(directory: policyDirectory)
        guard let set = result.policySet else {
            let errors = result.errors
            let first = errors.first.map { " (first: \($0))" } ?? ""
            throw KetenpoortError(.configuration, "the policies in `\(policyDirectory)` have \(errors.count) error(s)\(first); run `ketenpoort policy check \(policyDirectory)`")
        }
        return GatewaySnapshot(policySet: set)
    }

    /// Builds the service for `configuration`. `onReady` is called once the listeners accept.
    public static func makeService(
        configuration: GatewayConfiguration, logger: Logger, metrics: GatewayMetrics = GatewayMetrics(),
        onReady: @escaping @Sendable (GatewayAddresses) -> Void
    ) async throws -> GatewayService {
        try configuration.validate()
        let state = GatewayState(try loadSnapshot(policyDirectory: configuration.policyDirectory))
        let health = HealthRegistry()
        health.setInfo("policy_version", state.snapshot.policyVersion)
        let database = configuration.databaseLocation
        do {
            try GatewaySchema.prepareForServing(database)
        } catch let error as KetenpoortError where error.code != .configuration {
            throw KetenpoortError(
                .configuration, "the database \(database.description) (audit log and exchanges) cannot be prepared (read-only file, full disk, database down?): \(error.message)")
        }
        // The log is written before anything is answered: a log that cannot be opened or written
        // stops the start (fail closed).
        let audit = try GatewayAudit(configuration: configuration, health: health, metrics: metrics, logger: logger)
        do {
            try await audit.recordStartup(policyVersion: state.snapshot.policyVersion)
        } catch {
            audit.close()
            throw KetenpoortError(.configuration, "the audit log in `\(database.description)` cannot be written (read-only file, full disk, database down?); not starting")
        }
        let repository: ExchangeRepository
        do {
            repository = try ExchangeRepository(location: database, health: health)
        } catch let error as KetenpoortError {
            audit.close()
            throw KetenpoortError(.configuration, "the exchange tables in `\(database.description)` cannot be opened: \(error.message)")
        }
        let split = configuration.officerListen != nil
        let application = GatewayApplication(state: state, audit: audit, repository: repository, listener: split ? .partners : .all)
        let officerApplication = split ? GatewayApplication(sharing: application, listener: .officers) : nil
        let policyDirectory = configuration.policyDirectory
        let server: GatewayServer
        do {
            server = try GatewayServer(
                configuration: configuration, responder: application, officerResponder: officerApplication, metrics: metrics, health: health, logger: logger,
                reloadSnapshot: {
                    let snapshot = try loadSnapshot(policyDirectory: policyDirectory)
                    let previous = state.snapshot.policyVersion
                    guard snapshot.policyVersion != previous else { return }
                    // A new policy set is in force only once the log says so.
                    try await audit.record(audit.recorder.policyReloaded(version: snapshot.policyVersion, previous: previous, reason: "reload"))
                    state.replace(with: snapshot)
                    health.setInfo("policy_version", snapshot.policyVersion)
                    logger.notice("policy set reloaded", metadata: ["policy.version": "\(snapshot.policyVersion)"])
                })
        } catch {
            audit.close()
            throw error
        }
        var background: [@Sendable () async -> Void] = []
        // The inbox backlog per partner, for alerts on items nobody collects. A scrape answers
        // with the last reading at once and, at most once a second, starts a new reading off the
        // event loops: a slow database must not stall the connections that share them.
        let backlogReading = BacklogReading()
        let readBacklog: @Sendable () -> Void = {
            let now = Date()
            guard let rows = try? repository.backlog() else { return }
            var seen = Set<String>()
            for row in rows {
                seen.insert(row.recipient)
                let oldest = AuditClock.parse(row.oldest).map { now.timeIntervalSince($0) } ?? 0
                metrics.inboxBacklog(partner: row.recipient, items: row.items, oldestSeconds: max(0, oldest))
            }
            for partner in state.snapshot.registry.partners.map(\.id) where !seen.contains(partner) {
                metrics.inboxBacklog(partner: partner, items: 0, oldestSeconds: 0)
            }
        }
        readBacklog()
        metrics.onScrape {
            let now = Date()
            let start = backlogReading.state.withLock { reading in
                guard !reading.running, now.timeIntervalSince(reading.last) >= 1 else { return false }
                reading = (now, true)
                return true
            }
            guard start else { return }
            Task.detached {
                readBacklog()
                backlogReading.state.withLock { $0.running = false }
            }
        }
        if let context = server.clientTLS {
            // Push delivery to partners with a `delivery_endpoint`, with the gateway's client
            // certificate (`client_tls`; the server built it and swaps it on SIGHUP).
            let push = PushDelivery(
                repository: repository, service: application.exchanges, state: state, context: context, logger: logger, group: server.group)
            background.append { await push.run() }
        }
        return GatewayService(server: server, onReady: onReady, onStopped: { audit.close() }, background: background)
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    public static func run(configuration: GatewayConfiguration, logger: Logger, onReady: @escaping @Sendable (GatewayAddresses) -> Void) async throws {
        // A file-size limit (RLIMIT_FSIZE) must fail a write (EFBIG), not end the process: the log
        // then refuses requests (fail closed) and /health reports it.
        signal(SIGXFSZ, SIG_IGN)
        let service = try await makeService(configuration: configuration, logger: logger, onReady: onReady)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// When the inbox backlog was last read, and whether a reading is under way.
private final class BacklogReading: Sendable {
    let state = Mutex<(last: Date, running: Bool)>((.distantPast, false))
}
