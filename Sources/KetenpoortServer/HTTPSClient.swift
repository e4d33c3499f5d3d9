import Foundation
import KetenpoortCore
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal mutual-TLS HTTP/1.1 client on the project's OpenSSL handler: one request per
/// connection, the whole answer collected. Push delivery and the demo scenario use it.
public struct HTTPSClient: Sendable {
    public struct Response: Sendable {
        public let status: Int
        public let body: String
        public var json: JSONValue? { try? JSONParser.parse(body) }
    }

    let context: TLSContext
    let host: String
    let port: Int
    let group: EventLoopGroup

    let serverName: String

    public init(port: Int, certificate: String, key: String, ca: String, host: String = "127.0.0.1", serverName: String = "localhost", group: EventLoopGroup) throws {
        self.init(
            context: try TLSContext(configuration: .client(certificateChainPath: certificate, privateKeyPath: key, trustRootsPath: ca)), host: host,
            port: port, serverName: serverName, group: group)
    }

    public init(context: TLSContext, host: String, port: Int, serverName: String, group: EventLoopGroup) {
        self.context = context
        self.host = host
        self.port = port
        self.serverName = serverName
        self.group = group
    }

    public func request(_ method: HTTPMethod, _ path: String, json: String? = nil, timeout: TimeAmount = .seconds(10)) async throws -> Response {
        let loop = group.next()
        let done = loop.makePromise(of: Response.self)
        let collector = Collector(done: done)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { [context, serverName] channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(OpenSSLHandler(context: context, serverHostname: serverName))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(collector)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: host, port: port).get()
        } catch {
            // Never leave the promise unfulfilled.
            loop.execute { collector.finish(.failure(error)) }
            throw error
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: serverName)
        headers.add(name: "connection", value: "close")
        if let json {
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(json.utf8.count))
        } else if method == .POST {
            headers.add(name: "content-length", value: "0")
        }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let json { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: json))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let timer = loop.scheduleTask(in: timeout) { collector.finish(.failure(ChannelError.connectTimeout(timeout))) }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        return try await done.futureResult.get()
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let done: EventLoopPromise<Response>
        var status = 0
        var body = ""
        var finished = false
        init(done: EventLoopPromise<Response>) { self.done = done }

        func finish(_ result: Result<Response, Error>) {
            guard !finished else { return }
            finished = true
            done.completeWith(result)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): status = Int(h.status.code)
            case .body(let b): body += String(buffer: b)
            case .end: finish(.success(Response(status: status, body: body)))
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            finish(.failure(error))
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(ChannelError.eof))
        }
    }
}
