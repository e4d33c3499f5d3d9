import Foundation
import KetenpoortCore
import KetenpoortTLS
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Readiness checks reported by `/health` (name → ready).
public final class HealthRegistry: Sendable {
    private let checks = Mutex<[String: Bool]>([:])
    private let info = Mutex<[String: String]>([:])
    public init() {}
    public func set(_ name: String, ready: Bool) { checks.withLock { $0[name] = ready } }
    /// Facts shown beside the checks (the policy version), never personal data.
    public func setInfo(_ name: String, _ value: String) { info.withLock { $0[name] = value } }
    public var allInfo: [String: String] { info.withLock { $0 } }
    public var all: [String: Bool] { checks.withLock { $0 } }
    public var isReady: Bool { checks.withLock { $0.values.allSatisfy { $0 } } }
}

/// The addresses the gateway listens on once started.
public struct GatewayAddresses: Sendable {
    public let main: SocketAddress
    public let operations: SocketAddress
    public var officers: SocketAddress? = nil

    /// `https://HOST:PORT` of the main listener.
    public var mainURL: String {
        let host = main.ipAddress ?? "127.0.0.1"
        let shown = host.contains(":") ? "[\(host)]" : host
        return "https://\(shown):\(main.port ?? 0)"
    }

    /// `http://HOST:PORT` of the operations listener.
    public var operationsURL: String {
        let host = operations.ipAddress ?? "127.0.0.1"
        let shown = host.contains(":") ? "[\(host)]" : host
        return "http://\(shown):\(operations.port ?? 0)"
    }
}

/// The listeners of the gateway: mutual TLS on the main address, plain HTTP on the loopback
/// operations address. Owns connection accounting, reload and graceful shutdown.
public final class GatewayServer: Sendable {
    public let configuration: GatewayConfiguration
    public let metrics: GatewayMetrics
    public let health: HealthRegistry
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let tls: TLSContextBox
    /// The push client's context (`client_tls`), reloaded with the server's on SIGHUP.
    let clientTLS: TLSContextBox?
    let responder: GatewayResponder
    /// Serves the officer listener when one is configured.
    let officerResponder: GatewayResponder?
    let reloadSnapshot: @Sendable () async throws -> Void
    private let openConnections = Atomic<Int>(0)
    /// The operations listener (health, metrics) has its own small limit: scrapers and probes
    /// need a few connections, and it must not use up the descriptors the main listener needs.
    private let operationsConnections = Atomic<Int>(0)
    static let maxOperationsConnections = 64
    private let connections = Mutex<[ObjectIdentifier: Channel]>([:])
    private let listeners = Mutex<[Channel]>([])

    /// - Parameters:
    ///   - reloadSnapshot: rebuilds what requests are decided with (partners, policies); called on
    ///     SIGHUP and when the policy directory changes. Throws to keep the old one.
    public init(
        configuration: GatewayConfiguration, responder: GatewayResponder, officerResponder: GatewayResponder? = nil, metrics: GatewayMetrics,
        health: HealthRegistry, logger: Logger, reloadSnapshot: @escaping @Sendable () async throws -> Void = {}
    ) throws {
        self.officerResponder = officerResponder
        self.configuration = configuration
        self.metrics = metrics
        self.health = health
        self.logger = logger
        self.responder = responder
        self.reloadSnapshot = reloadSnapshot
        let context = try TLSContext(configuration: configuration.serverTLS)
        self.tls = TLSContextBox(context)
        metrics.certificateExpires("server", at: context.certificate?.notAfter)
        if let client = configuration.clientTLS {
            let clientContext = try TLSContext(configuration: client)
            self.clientTLS = TLSContextBox(clientContext)
            metrics.certificateExpires("client", at: clientContext.certificate?.notAfter)
        } else {
            self.clientTLS = nil
        }
        if configuration.crlPath == nil {
            logger.warning("no CRL configured (`tls.crl`): a revoked partner certificate is not refused until it expires")
        }
        let threads = configuration.eventLoopThreads > 0 ? configuration.eventLoopThreads : System.coreCount
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    }

    /// Binds both listeners. Throws with a one-line message when an address cannot be bound.
    public func start() async throws -> GatewayAddresses {
        let main: Channel
        do {
            main = try await mainBootstrap(responder: responder).bind(host: configuration.listen.host, port: configuration.listen.port).get()
        } catch {
            throw KetenpoortError(.configuration, "cannot listen on \(configuration.listen): \(error)")
        }
        let ops: Channel
        do {
            ops = try await operationsBootstrap().bind(
                host: configuration.operationsListen.host, port: configuration.operationsListen.port
            ).get()
        } catch {
            try? await main.close()
            throw KetenpoortError(.configuration, "cannot listen on \(configuration.operationsListen) (operations): \(error)")
        }
        var channels = [main, ops]
        var addresses = GatewayAddresses(main: main.localAddress!, operations: ops.localAddress!)
        if let officerAddress = configuration.officerListen, let officerResponder {
            do {
                let officers = try await mainBootstrap(responder: officerResponder).bind(host: officerAddress.host, port: officerAddress.port).get()
                channels.append(officers)
                addresses.officers = officers.localAddress
            } catch {
                try? await main.close()
                try? await ops.close()
                throw KetenpoortError(.configuration, "cannot listen on \(officerAddress) (officers): \(error)")
            }
        }
        listeners.withLock { $0 = channels }
        health.set("listener", ready: true)
        return addresses
    }

    private func mainBootstrap(responder: GatewayResponder) -> ServerBootstrap {
        let limits = configuration.limits
        let handshakeTimeout = TimeAmount.nanoseconds(
            Int64(limits.handshakeTimeout.components.seconds) * 1_000_000_000
                + limits.handshakeTimeout.components.attoseconds / 1_000_000_000)
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { [self] channel in
                let count = self.openConnections.wrappingAdd(1, ordering: .relaxed).newValue
                if count > limits.maxConnections {
                    self.openConnections.wrappingSubtract(1, ordering: .relaxed)
                    self.metrics.rejectedConnections.increment()
                    return channel.close()
                }
                self.metrics.openConnections.record(count)
                let id = ObjectIdentifier(channel)
                self.connections.withLock { $0[id] = channel }
                channel.closeFuture.whenComplete { [self] _ in
                    let now = self.openConnections.wrappingSubtract(1, ordering: .relaxed).newValue
                    self.metrics.openConnections.record(now)
                    self.connections.withLock { _ = $0.removeValue(forKey: id) }
                }
                do {
                    let metrics = self.metrics
                    let logger = self.logger
                    let clock = ConnectionClock(limits: limits, metrics: metrics)
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(
                        OpenSSLHandler(
                            context: self.tls.context, handshakeTimeout: handshakeTimeout,
                            onHandshakeFailure: { reason in
                                metrics.handshakeFailed(reason)
                                logger.debug("tls handshake refused", metadata: ["tls.failure": "\(reason.rawValue)"])
                            }))
                    try sync.addHandler(ByteActivityHandler(clock: clock))
                    // Only the request decoder: GatewayHTTPHandler writes whole responses itself (one
                    // buffer, one TLS record), handles pipelining and answers parse errors.
                    try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
                    try sync.addHandler(
                        GatewayHTTPHandler(responder: responder, limits: limits, metrics: metrics, clock: clock))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    private func operationsBootstrap() -> ServerBootstrap {
        let idle = ConnectionClock.amount(configuration.limits.idleTimeout)
        return ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                if self.operationsConnections.wrappingAdd(1, ordering: .relaxed).newValue > GatewayServer.maxOperationsConnections {
                    self.operationsConnections.wrappingSubtract(1, ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { [self] _ in self.operationsConnections.wrappingSubtract(1, ordering: .relaxed) }
                do {
                    let sync = channel.pipeline.syncOperations
                    // A connection that sends nothing for the idle timeout is closed.
                    try sync.addHandler(IdleStateHandler(allTimeout: idle))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(OperationsHandler(metrics: self.metrics, health: self.health))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    /// Rebuilds the TLS contexts from the configured files and swaps them in: the listener's and,
    /// with `client_tls`, push delivery's. A bad new file keeps that side's old context and counts
    /// the reload as failed. Then reloads the snapshot (partners, policies) the same way.
    public func reload() async {
        var failed = false
        do {
            let context = try TLSContext(configuration: configuration.serverTLS)
            tls.replace(with: context)
            metrics.certificateExpires("server", at: context.certificate?.notAfter)
            logger.notice("tls context reloaded", metadata: ["tls.certificate.sha256": "\(context.certificate?.fingerprintSHA256 ?? "")"])
        } catch {
            failed = true
            logger.error("tls reload failed; keeping the previous context", metadata: ["error": "\(error)"])
        }
        if let clientTLS, let client = configuration.clientTLS {
            do {
                let context = try TLSContext(configuration: client)
                clientTLS.replace(with: context)
                metrics.certificateExpires("client", at: context.certificate?.notAfter)
                logger.notice("push client tls context reloaded", metadata: ["tls.certificate.sha256": "\(context.certificate?.fingerprintSHA256 ?? "")"])
            } catch {
                failed = true
                logger.error("push client tls reload failed; keeping the previous context", metadata: ["error": "\(error)"])
            }
        }
        if failed { metrics.tlsReloadsFailed.increment() } else { metrics.tlsReloadsSucceeded.increment() }
        await reloadPolicies()
    }

    /// Reloads the snapshot only (policy directory changed).
    public func reloadPolicies() async {
        do {
            try await reloadSnapshot()
            metrics.policyReloadsSucceeded.increment()
        } catch {
            metrics.policyReloadsFailed.increment()
            logger.error("policy reload failed; keeping the previous policy set", metadata: ["error": "\(error)"])
        }
    }

    /// The number of open client connections on the main listener.
    public var openConnectionCount: Int { openConnections.load(ordering: .relaxed) }

    /// Stops accepting, lets in-flight requests finish within the grace period, then closes
    /// what is left and stops the event loops.
    public func shutdown() async {
        health.set("listener", ready: false)
        let servers = listeners.withLock { $0 }
        for server in servers { try? await server.close() }
        let open = connections.withLock { Array($0.values) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(QuiesceEvent())
        }
        let grace = configuration.limits.shutdownGrace
        let deadline = ContinuousClock.now.advanced(by: grace)
        while openConnections.load(ordering: .relaxed) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        let left = connections.withLock { Array($0.values) }
        if !left.isEmpty {
            logger.warning("closing connections still open after the shutdown grace period", metadata: ["count": "\(left.count)"])
            for channel in left { channel.close(promise: nil) }
        }
        try? await group.shutdownGracefully()
    }
}

/// `/health` and `/metrics` on the operations listener (plain HTTP, loopback by default).
final class OperationsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: GatewayMetrics
    private let health: HealthRegistry
    private var head: HTTPRequestHead?

    init(metrics: GatewayMetrics, health: HealthRegistry) {
        self.metrics = metrics
        self.health = health
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            // HEAD is answered as GET, without the body (RFC 9110 §9.3.2).
            let isHead = head.method == .HEAD
            let method = isHead ? .GET : head.method
            let status: HTTPResponseStatus
            let contentType: String
            let body: [UInt8]
            switch (method, path) {
            case _ where GatewayHTTPHandler.hostRefusal(for: head) != nil:
                // RFC 9112 §3.2: HTTP/1.1 without Host (or with two) is 400, here too.
                let refusal = GatewayHTTPHandler.hostRefusal(for: head)!
                (status, contentType, body) = (refusal.status, "application/problem+json", refusal.body)
            case (.GET, "/metrics"):
                status = .ok
                contentType = "text/plain; version=0.0.4"
                body = metrics.exposition()
            case (.GET, "/health"), (.GET, "/health/ready"):
                let checks = health.all
                let ready = checks.values.allSatisfy { $0 }
                status = ready ? .ok : .serviceUnavailable
                contentType = "application/json"
                let members = checks.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.bool($0.value)) }
                var object: [(String, JSONValue)] = [("status", .string(ready ? "ready" : "not_ready")), ("checks", .object(members))]
                for (key, value) in health.allInfo.sorted(by: { $0.key < $1.key }) { object.append((key, .string(value))) }
                body = Array(JSONValue.object(object).serialized().utf8)
            case (.GET, "/health/live"):
                status = .ok
                contentType = "application/json"
                body = Array(#"{"status":"alive"}"#.utf8)
            default:
                status = .notFound
                contentType = "application/problem+json"
                body = Array(
                    #"{"type":"https://ketenpoort.nl/problems/not_found","title":"Not found","status":404,"detail":"the operations listener serves /health and /metrics","code":"not_found"}"#
                        .utf8)
            }
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: contentType)
            headers.add(name: "content-length", value: String(body.count))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            if !isHead {
                var buffer = context.channel.allocator.buffer(capacity: body.count)
                buffer.writeBytes(body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
