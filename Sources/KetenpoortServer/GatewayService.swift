import Logging
import ServiceLifecycle
import UnixSignals

/// The gateway as a swift-service-lifecycle `Service`: starts the listeners, reloads on SIGHUP,
/// and on graceful shutdown (SIGTERM) stops accepting and lets in-flight requests finish.
public struct GatewayService: Service {
    public let server: GatewayServer
    let onReady: @Sendable (GatewayAddresses) -> Void
    let onStopped: @Sendable () -> Void
    /// Work that runs while the gateway serves (push delivery), cancelled on shutdown.
    let background: [@Sendable () async -> Void]

    public init(
        server: GatewayServer, onReady: @escaping @Sendable (GatewayAddresses) -> Void, onStopped: @escaping @Sendable () -> Void = {},
        background: [@Sendable () async -> Void] = []
    ) {
        self.server = server
        self.onReady = onReady
        self.onStopped = onStopped
        self.background = background
    }

    public func run() async throws {
        // Trap SIGHUP before announcing readiness: its default action would end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let addresses = try await server.start()
        onReady(addresses)
        let server = self.server
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in hangups {
                    await server.reload()
                }
            }
            group.addTask {
                await PolicyDirectoryWatcher(directory: server.configuration.policyDirectory).watch {
                    await server.reloadPolicies()
                }
            }
            for work in background { group.addTask { await work() } }
            // Returns when graceful shutdown is triggered (or the task is cancelled).
            try? await gracefulShutdown()
            group.cancelAll()
        }
        await server.shutdown()
        onStopped()
    }
}
