import Foundation
import KetenpoortCore
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal mutual-TLS HTTP/1.1 client on the project's OpenSSL handler: one request per
/// connection, the whole answer collected. For the demo scenario and operators' scripts, not
/// for load (see ``LoadGenerator``).
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

    public init(port: Int, certificate: String, key: String, ca: String, host: String = "127.0.0.1", group: EventLoopGroup) throws {
        self.context = try TLSContext(configuration: .client(certificateChainPath: certificate, privateKeyPath: key, trustRootsPath: ca))
        self.host = host
        self.port = port
        self.group = group
    }

    public func request(_ method: HTTPMethod, _ path: String, json: String? = nil, timeout: TimeAmount = .seconds(10)) async throws -> Response {
        let loop = group.next()
        let done = loop.makePromise(of: Response.self)
        let collector = Collector(done: done)
        let channel = try await ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { [context] channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(OpenSSLHandler(context: context, serverHostname: "localhost"))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(collector)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: host, port: port).get()
        var headers = HTTPHeaders()
        headers.add(name: "host", value: "localhost")
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
