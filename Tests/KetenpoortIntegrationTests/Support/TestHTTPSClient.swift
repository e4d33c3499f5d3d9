import Foundation
import KetenpoortCore
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A response as a test sees it.
struct TestResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: String

    var json: JSONValue? { try? JSONParser.parse(body) }
}

/// A small HTTPS client on the project's own OpenSSL handler, for tests that need to hold a
/// connection open, look at the server certificate, or control the bytes.
final class TestHTTPSClient: @unchecked Sendable {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    let channel: Channel
    let handshake: TLSConnectionInfo
    private let handler: ResponseCollector

    private init(channel: Channel, handshake: TLSConnectionInfo, handler: ResponseCollector) {
        self.channel = channel
        self.handshake = handshake
        self.handler = handler
    }

    /// Connects and completes the TLS handshake (in TLS 1.3 a refused client only learns of the
    /// refusal on its first read: use ``request`` to see it).
    static func connect(
        port: Int, cert: String?, key: String?, ca: String = PKIFixture.path("ca.crt"), host: String = "127.0.0.1",
        context existing: TLSContext? = nil, sessions: TLSClientSessionCache? = nil
    ) async throws -> TestHTTPSClient {
        let context = try existing ?? TLSContext(configuration: .client(certificateChainPath: cert, privateKeyPath: key, trustRootsPath: ca))
        let loop = group.next()
        let handshake = loop.makePromise(of: TLSConnectionInfo.self)
        let collector = ResponseCollector(handshake: handshake)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(OpenSSLHandler(context: context, serverHostname: host, sessionCache: sessions))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(collector)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let info = try await handshake.futureResult.get()
        return TestHTTPSClient(channel: channel, handshake: info, handler: collector)
    }

    func request(_ path: String, method: HTTPMethod = .GET, headers: [(String, String)] = [], body: String? = nil) async throws -> TestResponse {
        var h = HTTPHeaders()
        h.add(name: "host", value: "localhost")
        for (name, value) in headers { h.add(name: name, value: value) }
        if let body { h.replaceOrAdd(name: "content-length", value: String(body.utf8.count)) }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: h)
        let promise = channel.eventLoop.makePromise(of: TestResponse.self)
        let bodyBuffer = body.map { ByteBuffer(string: $0) }
        let collector = handler
        try await channel.eventLoop.submit {
            collector.enqueue(promise)
            collector.send(head: head, body: bodyBuffer)
        }.get()
        return try await promise.futureResult.get()
    }

    /// Writes raw plaintext bytes through TLS (for slow or malformed requests).
    func writeRaw(_ text: String) async throws {
        let channel = self.channel
        try await channel.eventLoop.flatSubmit {
            do {
                // Write below the HTTP encoder, straight into the TLS handler.
                let context = try channel.pipeline.syncOperations.context(handlerType: HTTPRequestEncoder.self)
                return context.writeAndFlush(NIOAny(ByteBuffer(string: text)))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    }

    var isActive: Bool { channel.isActive }

    /// When the last response ended, taken on the event loop.
    var lastResponseAt: Date { handler.lastResponseAt.withLock { $0 } }

    /// Sends a request head announcing `contentLength` body bytes and returns the future
    /// response; the body follows with ``sendBody(_:end:)``.
    func startRequest(_ path: String, method: HTTPMethod, contentLength: Int, headers: [(String, String)] = []) async throws -> EventLoopFuture<TestResponse> {
        var h = HTTPHeaders()
        h.add(name: "host", value: "localhost")
        for (name, value) in headers { h.add(name: name, value: value) }
        h.add(name: "content-length", value: String(contentLength))
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: h)
        let promise = channel.eventLoop.makePromise(of: TestResponse.self)
        let channel = self.channel
        let collector = handler
        try await channel.eventLoop.submit {
            collector.enqueue(promise)
        }.get()
        try await channel.writeAndFlush(HTTPClientRequestPart.head(head)).get()
        return promise.futureResult
    }

    /// Sends body bytes; with `end`, the request's end goes in the same flush (a server may
    /// answer and close as soon as the body is complete).
    func sendBody(_ text: String, end: Bool) async throws {
        let written = channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: text))))
        if end { channel.write(HTTPClientRequestPart.end(nil), promise: nil) }
        channel.flush()
        try await written.get()
    }

    func close() async {
        try? await channel.close()
    }
}

final class ResponseCollector: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let handshake: EventLoopPromise<TLSConnectionInfo>
    private var handshakeDone = false
    private var waiting: [EventLoopPromise<TestResponse>] = []
    private var head: HTTPResponseHead?
    private var body = ""
    private var context: ChannelHandlerContext?
    let lastResponseAt = Mutex(Date.distantPast)

    init(handshake: EventLoopPromise<TLSConnectionInfo>) { self.handshake = handshake }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// After the connection closed, a new request fails at once instead of waiting forever.
    private var closedError: Error?

    func enqueue(_ promise: EventLoopPromise<TestResponse>) {
        if let closedError {
            promise.fail(closedError)
            return
        }
        waiting.append(promise)
    }

    func send(head: HTTPRequestHead, body: ByteBuffer?) {
        guard let context else { return }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let info) = event as? TLSUserEvent, !handshakeDone {
            handshakeDone = true
            handshake.succeed(info)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = ""
        case .body(let buffer):
            body += String(buffer: buffer)
        case .end:
            lastResponseAt.withLock { $0 = Date() }
            guard let head, !waiting.isEmpty else { return }
            waiting.removeFirst().succeed(TestResponse(status: Int(head.status.code), headers: head.headers, body: body))
            self.head = nil
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(ChannelError.eof)
        context.fireChannelInactive()
    }

    private func fail(_ error: Error) {
        closedError = closedError ?? error
        if !handshakeDone {
            handshakeDone = true
            handshake.fail(error)
        }
        let pending = waiting
        waiting = []
        pending.forEach { $0.fail(error) }
    }
}
