import Foundation
import KetenpoortCore
import KetenpoortPolicy
import Logging
import ServiceLifecycle

/// Wires a configuration into a running gateway: snapshot, application, server, service.
/// The executable only calls this.
public enum Gateway {
    /// Loads what requests are decided with from the policy directory.
    public static func loadSnapshot(policyDirectory: String) throws -> GatewaySnapshot {
        let path = (policyDirectory as NSString).appendingPathComponent("partners.yaml")
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KetenpoortError(.fileUnreadable, "partner registry `\(path)` does not exist or cannot be read")
        }
        let registry = try PartnerRegistry.parse(yaml: text, file: path)
        return GatewaySnapshot(registry: registry, policyVersion: "")
    }

    /// Builds the service for `configuration`. `onReady` is called once the listeners accept.
    public static func makeService(
        configuration: GatewayConfiguration, logger: Logger, metrics: GatewayMetrics = GatewayMetrics(),
        onReady: @escaping @Sendable (GatewayAddresses) -> Void
    ) throws -> GatewayService {
        try configuration.validate()
        let state = GatewayState(try loadSnapshot(policyDirectory: configuration.policyDirectory))
        let application = GatewayApplication(state: state)
        let health = HealthRegistry()
        let policyDirectory = configuration.policyDirectory
        let server = try GatewayServer(
            configuration: configuration, responder: application, metrics: metrics, health: health, logger: logger,
            reloadSnapshot: {
                let snapshot = try loadSnapshot(policyDirectory: policyDirectory)
                state.replace(with: snapshot)
                logger.notice("policy set reloaded", metadata: ["policy.version": "\(snapshot.policyVersion)"])
            })
        return GatewayService(server: server, onReady: onReady)
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    public static func run(configuration: GatewayConfiguration, logger: Logger, onReady: @escaping @Sendable (GatewayAddresses) -> Void) async throws {
        let service = try makeService(configuration: configuration, logger: logger, onReady: onReady)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
