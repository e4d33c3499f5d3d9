import KetenpoortCore
import KetenpoortTLS
import NIOCore
import Metrics
import NIOHTTP1

/// Asks a connection to finish its current request and close (graceful shutdown).
public struct QuiesceEvent: Sendable {}

/// The per-connection timeouts: idle between requests, header (slow senders), and request.
/// Shared by ``ByteActivityHandler`` (which sees raw bytes) and ``GatewayHTTPHandler`` (which
/// sees parsed requests). Event-loop bound: used only from the connection's event loop.
///
/// Phase changes only record a timestamp; one repeating tick per connection checks the
/// deadline, so a request costs no timer scheduling.
final class ConnectionClock {
    enum Phase { case awaitingHandshake, idle, receivingHead, handling }

    private(set) var phase: Phase = .awaitingHandshake
    private var phaseStarted = NIODeadline.now()
    private var ticker: Scheduled<Void>?
    private var stopped = false
    private let idleTimeout: TimeAmount
    private let headerTimeout: TimeAmount
    private let requestTimeout: TimeAmount
    private let tick: TimeAmount
    private let metrics: GatewayMetrics
    /// Called when the request timeout passes while a request is being handled.
    var onRequestTimeout: (() -> Void)?

    init(limits: GatewayLimits, metrics: GatewayMetrics) {
        self.metrics = metrics
        idleTimeout = ConnectionClock.amount(limits.idleTimeout)
        headerTimeout = ConnectionClock.amount(limits.headerTimeout)
        requestTimeout = ConnectionClock.amount(limits.requestTimeout)
        let shortest = min(idleTimeout, headerTimeout, requestTimeout)
        tick = max(.milliseconds(100), min(.seconds(1), .nanoseconds(shortest.nanoseconds / 5)))
    }

    static func amount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    func handshakeCompleted(context: ChannelHandlerContext) {
        guard phase == .awaitingHandshake else { return }
        enter(.idle)
        scheduleTick(context: context)
    }

    private func scheduleTick(context: ChannelHandlerContext) {
        guard !stopped else { return }
        ticker = context.eventLoop.assumeIsolated().scheduleTask(in: tick) { [weak self] in
            guard let self, !self.stopped else { return }
            self.check(context: context)
            self.scheduleTick(context: context)
        }
    }

    @inline(__always) func bytesArrived() {
        if phase == .idle { enter(.receivingHead) }
    }

    func headReceived() { enter(.handling) }

    func responseCompleted() { enter(.idle) }

    /// Stops the clock for good and lets go of the timeout callback (which holds the
    /// connection's context: kept, it would keep the whole pipeline alive after the close).
    func cancel() {
        stopped = true
        ticker?.cancel()
        ticker = nil
        onRequestTimeout = nil
    }

    private func enter(_ next: Phase) {
        phase = next
        phaseStarted = .now()
    }

    private func check(context: ChannelHandlerContext) {
        let elapsed = NIODeadline.now() - phaseStarted
        switch phase {
        case .awaitingHandshake:
            break
        case .idle:
            if elapsed >= idleTimeout { context.close(promise: nil) }
        case .receivingHead:
            if elapsed >= headerTimeout {
                // A client that trickles its header is dropped.
                metrics.droppedSlowClients.increment()
                cancel()
                context.close(promise: nil)
            }
        case .handling:
            if elapsed >= requestTimeout {
                let timedOut = onRequestTimeout
                cancel()
                if let timedOut { timedOut() } else { context.close(promise: nil) }
            }
        }
    }
}

/// Sits between TLS and the HTTP decoder: notices the first bytes of each request.
final class ByteActivityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let clock: ConnectionClock

    init(clock: ConnectionClock) { self.clock = clock }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clock.bytesArrived()
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            clock.handshakeCompleted(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        clock.cancel()
        context.fireChannelInactive()
    }
}

/// Routes a complete request to a response. Implemented by ``GatewayApplication``.
public protocol GatewayResponder: Sendable {
    /// Requests answered without I/O are answered here, on the event loop (no future).
    func respondImmediately(to request: GatewayRequest) -> GatewayResponse?
    /// Everything else (storage, fsync) completes a future.
    func respond(to request: GatewayRequest, on eventLoop: EventLoop) -> EventLoopFuture<GatewayResponse>
    /// The refusal that the request head alone decides (the request has no body yet), or `nil`
    /// to read the body: asked before `100 Continue` is sent for `Expect: 100-continue`.
    func refusal(forHead request: GatewayRequest) -> GatewayResponse?
}

extension GatewayResponder {
    public func respondImmediately(to request: GatewayRequest) -> GatewayResponse? { nil }
    public func refusal(forHead request: GatewayRequest) -> GatewayResponse? { nil }
}

/// Assembles requests within the limits, hands them to the responder and writes the answers.
final class GatewayHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer?)
        /// The request was refused before its body was read; the rest of it is ignored.
        case discarding
        case responding
        /// The answer is written but the client is not reading it (the channel is not
        /// writable): what arrives meanwhile waits, bounded, until it reads again.
        case awaitingWritability
    }

    private let responder: GatewayResponder
    private let limits: GatewayLimits
    private let metrics: GatewayMetrics
    private let clock: ConnectionClock
    private var state: State = .idle
    private var peerCertificate: CertificateInfo?
    private var closeAfterResponse = false
    private var responseStarted = false
    /// The request being answered is a HEAD: it is handled as GET and answered without the body
    /// (RFC 9110 §9.3.2); a body would be read as the next response on a keep-alive connection.
    private var answeringHead = false
    // The last request counter used, so a keep-alive connection asks the registry once.
    private var lastRoute = ""
    private var lastStatus: UInt = 0
    private var lastCounter: Counter?

    init(responder: GatewayResponder, limits: GatewayLimits, metrics: GatewayMetrics, clock: ConnectionClock) {
        self.responder = responder
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        clock.onRequestTimeout = nil
    }

    func handlerAdded(context: ChannelHandlerContext) {
        clock.onRequestTimeout = { [weak self] in
            guard let self else { return }
            if !self.responseStarted {
                self.closeAfterResponse = true
                self.write(
                    context: context,
                    GatewayResponse.problem(
                        .requestTimeout, code: .requestTimeout, title: "Request timeout",
                        detail: "the request was not completed in time", route: "timeout"))
            } else {
                context.close(promise: nil)
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let info) = event as? TLSUserEvent {
            peerCertificate = info.peerCertificate
        } else if event is QuiesceEvent {
            closeAfterResponse = true
            if case .idle = state { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch state {
        case .responding, .awaitingWritability:
            queuePipelined(part, context: context)
            return
        default:
            break
        }
        if !pipelined.isEmpty {
            queuePipelined(part, context: context)
            return
        }
        handle(part, context: context)
    }

    /// HTTP/1.1 pipelining: parts of the next request wait until the current response is sent.
    private var pipelined: [HTTPServerRequestPart] = []
    private var pipelinedBytes = 0

    private func queuePipelined(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        if case .body(let chunk) = part { pipelinedBytes += chunk.readableBytes }
        pipelined.append(part)
        if pipelined.count > 1_024 || pipelinedBytes > limits.maxBodyBytes {
            // A client that pipelines without reading answers is cut off.
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .awaitingWritability = state, context.channel.isWritable {
            state = .idle
            clock.responseCompleted()
            drainPipelined(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    private func drainPipelined(context: ChannelHandlerContext) {
        while !pipelined.isEmpty {
            switch state {
            case .responding, .awaitingWritability: return
            default: break
            }
            let part = pipelined.removeFirst()
            if case .body(let chunk) = part { pipelinedBytes -= chunk.readableBytes }
            handle(part, context: context)
        }
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(var head):
            clock.headReceived()
            responseStarted = false
            answeringHead = head.method == .HEAD
            if answeringHead { head.method = .GET }
            if !head.isKeepAlive { closeAfterResponse = true }
            // After a protocol upgrade or CONNECT the HTTP parser stops: nothing more on this
            // connection would be read as a request. Answer this one, then close.
            if head.method == .CONNECT || head.headers.contains(name: "upgrade") { closeAfterResponse = true }
            if let refusal = refusal(for: head) ?? expectationRefusal(for: head) {
                state = .discarding
                closeAfterResponse = true
                write(context: context, refusal)
                return
            }
            state = .receiving(head, nil)
            if expectsContinue(head) { sendContinue(context: context) }
        case .body(var chunk):
            guard case .receiving(let head, var body) = state else { return }
            let received = (body?.readableBytes ?? 0) + chunk.readableBytes
            if received > limits.maxBodyBytes {
                state = .discarding
                closeAfterResponse = true
                write(context: context, tooLarge())
                return
            }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            state = .receiving(head, body)
        case .end:
            switch state {
            case .receiving(let head, let body):
                state = .responding
                let request = GatewayRequest(
                    method: head.method, uri: head.uri, headers: head.headers, body: body, peerCertificate: peerCertificate)
                if let immediate = responder.respondImmediately(to: request) {
                    write(context: context, immediate)
                    return
                }
                let future = responder.respond(to: request, on: context.eventLoop)
                future.assumeIsolated().whenComplete { [weak self] result in
                    // A request timeout may already have answered (408).
                    guard let self, !self.responseStarted else { return }
                    switch result {
                    case .success(let response):
                        self.write(context: context, response)
                    case .failure:
                        self.write(
                            context: context,
                            GatewayResponse.problem(
                                .internalServerError, code: .internalError, title: "Internal error",
                                detail: "the gateway could not complete the request", route: "error"))
                    }
                }
            case .discarding:
                break  // the refusal was written when the head or the body arrived
            case .idle, .responding, .awaitingWritability:
                break
            }
        }
    }

    private func refusal(for head: HTTPRequestHead) -> GatewayResponse? {
        var headerBytes = head.uri.utf8.count
        for (name, value) in head.headers { headerBytes += name.utf8.count + value.utf8.count + 4 }
        if headerBytes > limits.maxHeaderBytes {
            return GatewayResponse.problem(
                .requestHeaderFieldsTooLarge, code: .headersTooLarge, title: "Request header fields too large",
                detail: "the request header is larger than \(limits.maxHeaderBytes) bytes", route: "limits")
        }
        if let missing = GatewayHTTPHandler.hostRefusal(for: head) { return missing }
        if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > limits.maxBodyBytes {
            return tooLarge()
        }
        return nil
    }

    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with more than one, gets 400
    /// (HTTP/1.0 needs none, but may not have two).
    static func hostRefusal(for head: HTTPRequestHead) -> GatewayResponse? {
        let hosts = head.headers["host"].count
        let required = head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1)
        guard hosts > 1 || (required && hosts == 0) else { return nil }
        return GatewayResponse.problem(
            .badRequest, code: .invalidRequest, title: "Bad request",
            detail: hosts == 0 ? "an HTTP/1.1 request must have a Host header" : "a request must have exactly one Host header, not \(hosts)",
            route: "malformed")
    }

    /// The members of the request's `Expect` (RFC 9110 §10.1.1), lowercased; an HTTP/1.0
    /// request's are ignored (a 1.0 client cannot read a 100).
    private func expectations(_ head: HTTPRequestHead) -> [String] {
        guard head.headers.contains(name: "expect"), head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1) else { return [] }
        return head.headers["expect"].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            .filter { !$0.isEmpty }
    }

    /// 417 for an expectation other than `100-continue`; for `100-continue`, what the responder
    /// refuses on the head alone (identity, route and method, media type): that final answer is
    /// sent instead of `100 Continue` and the connection closes (the client may or may not send
    /// the body it announced, so nothing after it could be read as a request).
    private func expectationRefusal(for head: HTTPRequestHead) -> GatewayResponse? {
        let expected = expectations(head)
        if expected.isEmpty { return nil }
        if expected.contains(where: { $0 != "100-continue" }) {
            return GatewayResponse.problem(
                .expectationFailed, code: .expectationFailed, title: "Expectation failed",
                detail: "the only expectation supported is 100-continue", route: "malformed")
        }
        let request = GatewayRequest(method: head.method, uri: head.uri, headers: head.headers, body: nil, peerCertificate: peerCertificate)
        return responder.refusal(forHead: request)
    }

    /// Whether `100 Continue` is owed: the request expects it and announces a body.
    private func expectsContinue(_ head: HTTPRequestHead) -> Bool {
        guard expectations(head).contains("100-continue") else { return false }
        if head.headers.contains(name: "transfer-encoding") { return true }
        return head.headers.first(name: "content-length").flatMap { Int($0) }.map { $0 > 0 } ?? false
    }

    /// The interim `100 Continue`: the head passed, send the body. Not the response (a 408 or
    /// the final answer still follows).
    private func sendContinue(context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        var buffer = context.channel.allocator.buffer(capacity: 25)
        buffer.writeString("HTTP/1.1 100 Continue\r\n\r\n")
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private func tooLarge() -> GatewayResponse {
        GatewayResponse.problem(
            .payloadTooLarge, code: .payloadTooLarge, title: "Payload too large",
            detail: "the request body is larger than \(limits.maxBodyBytes) bytes", route: "limits")
    }

    private func write(context: ChannelHandlerContext, _ response: GatewayResponse) {
        guard context.channel.isActive else { return }
        responseStarted = true
        let status = response.status.code
        if let counter = lastCounter, status == lastStatus, response.route == lastRoute {
            counter.increment()
        } else {
            let counter = metrics.requestCounter(route: response.route, status: status)
            counter.increment()
            lastCounter = counter
            lastRoute = response.route
            lastStatus = status
        }
        let bytes: [UInt8]
        if answeringHead {
            bytes = response.serialize(close: closeAfterResponse, body: false)
        } else if let wire = response.wire, !closeAfterResponse {
            bytes = wire
        } else {
            bytes = response.serialize(close: closeAfterResponse)
        }
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        if closeAfterResponse {
            // A client that does not read its last answer is not waited for beyond the header
            // timeout: the write may never complete, and the clock has stopped.
            let backstop = context.eventLoop.assumeIsolated().scheduleTask(in: ConnectionClock.amount(limits.headerTimeout)) {
                if context.channel.isActive { context.close(promise: nil) }
            }
            context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in
                backstop.cancel()
                context.close(promise: nil)
            }
            return
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        if case .discarding = state { return }
        guard context.channel.isWritable else {
            // Answers pile up unread: take no new request until the client reads.
            state = .awaitingWritability
            return
        }
        // The response is queued in order: the next pipelined request may start.
        state = .idle
        clock.responseCompleted()
        drainPipelined(context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed request gets 400 and the connection ends; TLS failures are counted by the
        // TLS handler and end the connection too.
        if error is HTTPParserError, context.channel.isActive, case .responding = state {
            // The bad bytes follow a request still being answered: that request gets its own
            // answer, then the connection ends (nothing after the bad bytes is read).
            closeAfterResponse = true
            pipelined.removeAll()
            pipelinedBytes = 0
            return
        }
        if error is HTTPParserError, context.channel.isActive, !responseStarted || isIdle || isAwaitingWritability {
            // Bytes after an answered request are a new request, not known to be a HEAD.
            if isIdle || isAwaitingWritability { answeringHead = false }
            closeAfterResponse = true
            state = .discarding
            write(
                context: context,
                GatewayResponse.problem(
                    .badRequest, code: .invalidRequest, title: "Bad request", detail: "the request is not valid HTTP/1.1", route: "malformed"))
            return
        }
        context.close(promise: nil)
    }

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    private var isAwaitingWritability: Bool {
        if case .awaitingWritability = state { return true }
        return false
    }
}
