import Foundation
import Histogram
import KetenpoortCore
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What `ketenpoort bench` is asked to do.
public struct LoadOptions: Sendable {
    public var host: String
    public var port: Int
    public var path: String
    public var certificatePath: String?
    public var keyPath: String?
    public var caPath: String
    public var connections: Int = 16
    /// Run for this long (default 10 s) unless ``requests`` is set.
    public var duration: Duration? = nil
    public var requests: Int? = nil
    /// Fixed arrival rate in requests per second over all connections (open loop); latency is
    /// measured from each request's intended start, so a stalled server is not hidden.
    public var rate: Double? = nil
    public var method: HTTPMethod = .GET
    public var body: [UInt8]? = nil
    public var headers: [(String, String)] = []
    public var newConnectionPerRequest = false
    /// With a new connection per request: resume the TLS session instead of a full handshake.
    public var resumeSessions = false
    public var threads = 1
    /// Status codes that count as success (default 2xx).
    public var expectedStatus: ClosedRange<UInt> = 200...299

    public init(url: String, certificatePath: String?, keyPath: String?, caPath: String) throws {
        guard let components = URLComponents(string: url), components.scheme == "https", let host = components.host else {
            throw KetenpoortError(.invalidInput, "--url must be an https URL, for example https://127.0.0.1:8443/v1/whoami")
        }
        self.host = host
        self.port = components.port ?? 443
        var path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        if let query = components.percentEncodedQuery { path += "?" + query }
        self.path = path
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.caPath = caPath
    }
}

/// The outcome of a load run.
public struct LoadReport: Sendable {
    public var requests: Int
    public var elapsedSeconds: Double
    public var latencyMicroseconds: Histogram<UInt64>
    public var errors: [String: Int]
    public var connections: Int
    public var mode: String
    /// CPU time the server process used during the run, divided by requests (with `--server-pid`).
    public var serverCPUMicrosecondsPerRequest: Double?

    public var requestsPerSecond: Double { elapsedSeconds > 0 ? Double(requests) / elapsedSeconds : 0 }

    public func latencyMilliseconds(_ percentile: Double) -> Double {
        Double(latencyMicroseconds.valueAtPercentile(percentile)) / 1000
    }

    public var json: JSONValue {
        var errorMembers: [(String, JSONValue)] = []
        for (kind, count) in errors.sorted(by: { $0.key < $1.key }) { errorMembers.append((kind, .number(Double(count)))) }
        var members: [(String, JSONValue)] = [
            ("mode", .string(mode)),
            ("connections", .number(Double(connections))),
            ("requests", .number(Double(requests))),
            ("elapsed_seconds", .number(round3(elapsedSeconds))),
            ("requests_per_second", .number(round3(requestsPerSecond))),
            ("latency_p50_ms", .number(round3(latencyMilliseconds(50)))),
            ("latency_p90_ms", .number(round3(latencyMilliseconds(90)))),
            ("latency_p99_ms", .number(round3(latencyMilliseconds(99)))),
            ("latency_p999_ms", .number(round3(latencyMilliseconds(99.9)))),
            ("latency_max_ms", .number(round3(Double(latencyMicroseconds.max) / 1000))),
            ("errors", .object(errorMembers)),
        ]
        if let cpu = serverCPUMicrosecondsPerRequest {
            members.append(("server_cpu_us_per_request", .number(round3(cpu))))
        }
        return .object(members)
    }

    public var text: String {
        var lines: [String] = []
        lines.append("mode           \(mode), \(connections) connection(s)")
        lines.append("requests       \(requests) in \(String(format: "%.2f", elapsedSeconds)) s")
        lines.append("requests/s     \(String(format: "%.1f", requestsPerSecond))")
        lines.append(
            "latency (ms)   p50 \(fmt(latencyMilliseconds(50)))  p90 \(fmt(latencyMilliseconds(90)))  p99 \(fmt(latencyMilliseconds(99)))  p99.9 \(fmt(latencyMilliseconds(99.9)))  max \(fmt(Double(latencyMicroseconds.max) / 1000))"
        )
        if let cpu = serverCPUMicrosecondsPerRequest {
            lines.append("server CPU     \(String(format: "%.1f", cpu)) µs/request")
        }
        if errors.isEmpty {
            lines.append("errors         none")
        } else {
            lines.append("errors         " + errors.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        return lines.joined(separator: "\n")
    }

    private func fmt(_ value: Double) -> String { String(format: "%.3f", value) }
    private func round3(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }
}

/// Shared state of one run: the request budget, the deadline, and the results.
final class LoadRun: Sendable {
    let deadline: NIODeadline?
    private let remaining: Atomic<Int>
    private let results = Mutex<(histogram: Histogram<UInt64>, errors: [String: Int], completed: Int)>(
        (Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three), [:], 0))

    init(requests: Int?, deadline: NIODeadline?) {
        self.remaining = Atomic(requests ?? Int.max)
        self.deadline = deadline
    }

    /// Whether another request may be started.
    func claim() -> Bool {
        if let deadline, NIODeadline.now() >= deadline { return false }
        while true {
            let current = remaining.load(ordering: .relaxed)
            if current <= 0 { return false }
            if remaining.compareExchange(expected: current, desired: current - 1, ordering: .relaxed).exchanged { return true }
        }
    }

    func merge(histogram: Histogram<UInt64>, errors: [String: Int], completed: Int) {
        results.withLock { state in
            state.histogram.add(histogram)
            for (kind, count) in errors { state.errors[kind, default: 0] += count }
            state.completed += completed
        }
    }

    var snapshot: (histogram: Histogram<UInt64>, errors: [String: Int], completed: Int) { results.withLock { $0 } }
}

/// Drives one keep-alive connection: closed loop, or open loop at a fixed interval.
final class KeepAliveHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let run: LoadRun
    private let request: PreparedRequest
    private let interval: TimeAmount?
    private var nextIntended: NIODeadline
    private var intendedStart: NIODeadline = .now()
    private var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    private var errors: [String: Int] = [:]
    private var completed = 0
    private var statusOK = true
    private var inFlight = false
    private var finished = false
    let done: EventLoopPromise<Void>

    init(run: LoadRun, request: PreparedRequest, interval: TimeAmount?, firstStart: NIODeadline, done: EventLoopPromise<Void>) {
        self.run = run
        self.request = request
        self.interval = interval
        self.nextIntended = firstStart
        self.done = done
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            scheduleNext(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func scheduleNext(context: ChannelHandlerContext) {
        guard !finished else { return }
        if let interval {
            let now = NIODeadline.now()
            let due = nextIntended
            nextIntended = nextIntended + interval
            if let deadline = run.deadline, due >= deadline {
                finish(context: context)
                return
            }
            if due > now {
                context.eventLoop.assumeIsolated().scheduleTask(deadline: due) { [weak self] in
                    self?.send(context: context, intended: due)
                }
            } else {
                send(context: context, intended: due)
            }
        } else {
            send(context: context, intended: .now())
        }
    }

    private func send(context: ChannelHandlerContext, intended: NIODeadline) {
        guard !finished else { return }
        guard run.claim() else {
            finish(context: context)
            return
        }
        intendedStart = intended
        inFlight = true
        statusOK = true
        request.write(to: context, wrap: wrapOutboundOut)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            if !request.expectedStatus.contains(head.status.code) {
                statusOK = false
                errors["http_\(head.status.code)", default: 0] += 1
            }
        case .body:
            break
        case .end:
            inFlight = false
            let elapsed = NIODeadline.now() - intendedStart
            _ = histogram.record(UInt64(max(1, elapsed.nanoseconds / 1000)))
            if statusOK { completed += 1 }
            scheduleNext(context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        errors[LoadGenerator.kind(of: error), default: 0] += 1
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            if inFlight { errors["connection_closed", default: 0] += 1 }
            finished = true
            run.merge(histogram: histogram, errors: errors, completed: completed)
            done.succeed(())
        }
        context.fireChannelInactive()
    }

    private func finish(context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        run.merge(histogram: histogram, errors: errors, completed: completed)
        context.close(promise: nil)
        done.succeed(())
    }
}

/// One request on a fresh connection: the latency includes connect and handshake.
final class OneShotHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let request: PreparedRequest
    let result: EventLoopPromise<UInt>
    private var status: UInt = 0

    init(request: PreparedRequest, result: EventLoopPromise<UInt>) {
        self.request = request
        self.result = result
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            request.write(to: context, wrap: wrapOutboundOut)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = head.status.code
        case .body: break
        case .end:
            result.succeed(status)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        result.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        result.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}

/// The request every connection sends, prepared once.
struct PreparedRequest: Sendable {
    let head: HTTPRequestHead
    let body: ByteBuffer?
    let expectedStatus: ClosedRange<UInt>

    func write(to context: ChannelHandlerContext, wrap: (HTTPClientRequestPart) -> NIOAny) {
        context.write(wrap(.head(head)), promise: nil)
        if let body { context.write(wrap(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrap(.end(nil)), promise: nil)
    }
}

/// A load generator over mutual TLS on the project's own OpenSSL handler.
public enum LoadGenerator {
    public static func run(_ options: LoadOptions, serverPID: Int32? = nil) async throws -> LoadReport {
        let tls = try TLSContext(
            configuration: .client(certificateChainPath: options.certificatePath, privateKeyPath: options.keyPath, trustRootsPath: options.caPath))
        var headers = HTTPHeaders()
        headers.add(name: "host", value: options.port == 443 ? options.host : "\(options.host):\(options.port)")
        headers.add(name: "user-agent", value: "ketenpoort-bench")
        var body: ByteBuffer? = nil
        if let bytes = options.body {
            body = ByteBuffer(bytes: bytes)
            headers.add(name: "content-length", value: String(bytes.count))
            if !options.headers.contains(where: { $0.0.lowercased() == "content-type" }) {
                headers.add(name: "content-type", value: "application/json")
            }
        }
        for (name, value) in options.headers { headers.add(name: name, value: value) }
        if options.newConnectionPerRequest { headers.replaceOrAdd(name: "connection", value: "close") }
        let request = PreparedRequest(
            head: HTTPRequestHead(version: .http1_1, method: options.method, uri: options.path, headers: headers), body: body,
            expectedStatus: options.expectedStatus)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, options.threads))
        let duration = options.requests == nil ? (options.duration ?? .seconds(10)) : options.duration
        let cpuBefore = serverPID.flatMap(processCPUMicroseconds)
        let start = NIODeadline.now()
        let deadline = duration.map { start + .nanoseconds(Int64($0.components.seconds) * 1_000_000_000 + $0.components.attoseconds / 1_000_000_000) }
        let run = LoadRun(requests: options.requests, deadline: deadline)

        if options.newConnectionPerRequest {
            let sessions = options.resumeSessions ? TLSClientSessionCache() : nil
            await withTaskGroup(of: Void.self) { tasks in
                for _ in 0..<options.connections {
                    tasks.addTask {
                        await oneShotWorker(group: group, tls: tls, options: options, request: request, run: run, sessions: sessions)
                    }
                }
            }
        } else {
            var futures: [EventLoopFuture<Void>] = []
            let interval: TimeAmount? = options.rate.map { rate in
                .nanoseconds(Int64(Double(options.connections) / max(rate, 0.001) * 1e9))
            }
            for index in 0..<options.connections {
                let loop = group.next()
                let done = loop.makePromise(of: Void.self)
                let offset: TimeAmount = options.rate.map { .nanoseconds(Int64(Double(index) / max($0, 0.001) * 1e9)) } ?? .zero
                let firstStart = start + offset
                let connect = connection(on: loop, tls: tls, options: options, sessions: nil) {
                    KeepAliveHandler(run: run, request: request, interval: interval, firstStart: firstStart, done: done)
                }
                connect.whenFailure { error in
                    run.merge(histogram: Histogram(highestTrackableValue: 120_000_000), errors: [kind(of: error): 1], completed: 0)
                    done.succeed(())
                }
                futures.append(done.futureResult)
            }
            for future in futures { try? await future.get() }
        }
        let elapsed = NIODeadline.now() - start
        try? await group.shutdownGracefully()
        let snapshot = run.snapshot
        var cpuPerRequest: Double? = nil
        if let before = cpuBefore, let pid = serverPID, let after = processCPUMicroseconds(pid), snapshot.completed > 0 {
            cpuPerRequest = Double(after - before) / Double(snapshot.completed)
        }
        let mode =
            options.newConnectionPerRequest
            ? (options.resumeSessions ? "new connection per request (resumed)" : "new connection per request")
            : (options.rate.map { "keep-alive, fixed rate \(Int($0))/s" } ?? "keep-alive, closed loop")
        return LoadReport(
            requests: snapshot.completed, elapsedSeconds: Double(elapsed.nanoseconds) / 1e9, latencyMicroseconds: snapshot.histogram,
            errors: snapshot.errors, connections: options.connections, mode: mode, serverCPUMicrosecondsPerRequest: cpuPerRequest)
    }

    static func oneShotWorker(
        group: EventLoopGroup, tls: TLSContext, options: LoadOptions, request: PreparedRequest, run: LoadRun,
        sessions: TLSClientSessionCache?
    ) async {
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
        var errors: [String: Int] = [:]
        var completed = 0
        while run.claim() {
            let loop = group.next()
            let result = loop.makePromise(of: UInt.self)
            let started = NIODeadline.now()
            let connect = connection(on: loop, tls: tls, options: options, sessions: sessions) {
                OneShotHandler(request: request, result: result)
            }
            connect.whenFailure { result.fail($0) }
            do {
                let status = try await result.futureResult.get()
                _ = histogram.record(UInt64(max(1, (NIODeadline.now() - started).nanoseconds / 1000)))
                if options.expectedStatus.contains(status) {
                    completed += 1
                } else {
                    errors["http_\(status)", default: 0] += 1
                }
            } catch {
                errors[kind(of: error), default: 0] += 1
            }
            if let channel = try? await connect.get() { try? await channel.closeFuture.get() }
        }
        run.merge(histogram: histogram, errors: errors, completed: completed)
    }

    /// Connects one client channel: TLS (the project's OpenSSL handler), HTTP/1.1 client codec,
    /// then the handler that drives it.
    static func connection(
        on loop: EventLoop, tls: TLSContext, options: LoadOptions, sessions: TLSClientSessionCache?,
        driver: @escaping @Sendable () -> some ChannelInboundHandler
    ) -> EventLoopFuture<Channel> {
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(OpenSSLHandler(context: tls, serverHostname: options.host, sessionCache: sessions))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(driver())
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: options.host, port: options.port)
    }

    /// A short, closed label for an error.
    static func kind(of error: Error) -> String {
        if let tls = error as? TLSError {
            switch tls.kind {
            case .handshakeFailed(let reason): return "tls_\(reason.rawValue)"
            case .protocolError: return "tls_protocol"
            }
        }
        if error is ChannelError { return "connection" }
        if let io = error as? IOError { return "io_\(io.errnoCode)" }
        if error is NIOConnectionError { return "connect" }
        return "other"
    }

    /// User + system CPU time of a process, from /proc (Linux).
    public static func processCPUMicroseconds(_ pid: Int32) -> Int64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command name: state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 13, let user = Int64(fields[11]), let system = Int64(fields[12]) else { return nil }
        let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
        return (user + system) * 1_000_000 / max(ticks, 1)
    }
}
