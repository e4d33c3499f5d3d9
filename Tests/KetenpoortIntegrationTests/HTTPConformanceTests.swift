import Foundation
import KetenpoortCore
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

@testable import KetenpoortServer

/// HTTP/1.1 as RFC 9110 and 9112 ask it, byte for byte: HEAD, Host, Expect, request content
/// negotiation. The requests are written as raw bytes (over mutual TLS on the main listener,
/// plain TCP on the operations listener) and the answers split by hand, so a body where none
/// belongs shows up as a broken next response.
@Suite("HTTP conformance: HEAD, Host, Expect, content negotiation", .serialized)
struct HTTPConformanceTests {
    let partner = PKIFixture.partner("wijkteam-dordrecht")
    let officer = PKIFixture.officer("privacy-officer-zhz")

    // MARK: HEAD

    @Test("HEAD then GET on one keep-alive connection: the HEAD answer has GET's status and headers and no body")
    func headThenGet() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let c = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await c.send("HEAD /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let head = try await c.responses(1, headRequests: [0])
        #expect(head.first?.status == 200)
        // Nothing follows the header: a body here would be read as the next response.
        try await Task.sleep(for: .milliseconds(300))
        #expect(c.bytes.count == head.first?.headerBytes, "bytes after the HEAD answer's header: \(c.text)")
        try await c.send("GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let both = try await c.responses(2, headRequests: [0])
        let get = try #require(both.last)
        #expect(get.status == 200)
        #expect(get.json?["partner"]?["id"]?.stringValue == "wijkteam-dordrecht")
        #expect(both[0].header("content-length") == String(get.body.utf8.count), "HEAD tells GET's content-length")
        #expect(both[0].header("content-type") == get.header("content-type"))
        #expect(c.isActive)
        await c.close()
    }

    @Test("HEAD on a route without GET (405, Allow without HEAD) and on an unknown path (404): no body; GET routes list HEAD in Allow")
    func headRefusedWithoutBody() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let c = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        // Pipelined in one write: each answer must end exactly where the next begins.
        try await c.send(
            "HEAD /v1/exchanges HTTP/1.1\r\nHost: localhost\r\n\r\n" + "HEAD /v1/no-such-thing HTTP/1.1\r\nHost: localhost\r\n\r\n"
                + "HEAD /v1/inbox HTTP/1.1\r\nHost: localhost\r\n\r\n" + "POST /v1/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
                + "GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let r = try await c.responses(5, headRequests: [0, 1, 2])
        #expect(r.map(\.status) == [405, 404, 200, 405, 200])
        #expect(r[0].header("allow") == "POST")
        #expect(r[0].body.isEmpty && r[1].body.isEmpty && r[2].body.isEmpty)
        #expect(r[2].header("content-type") == "application/json")
        #expect(r[3].header("allow") == "GET, HEAD")
        #expect(r[3].json?["code"]?.stringValue == "method_not_allowed")
        #expect(r[4].json?["partner"]?["id"]?.stringValue == "wijkteam-dordrecht")
        #expect(c.leftover == 0)
        await c.close()
    }

    @Test("the operations listener answers HEAD like GET, without a body (404 too)")
    func operationsHead() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let c = try await RawHTTPConnection.plain(port: gateway.operationsPort)
        try await c.send(
            "HEAD /health HTTP/1.1\r\nHost: localhost\r\n\r\n" + "HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
                + "HEAD /nope HTTP/1.1\r\nHost: localhost\r\n\r\n" + "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let r = try await c.responses(4, headRequests: [0, 1, 2])
        #expect(r.map(\.status) == [200, 200, 404, 200])
        #expect(r[0].body.isEmpty && r[1].body.isEmpty && r[2].body.isEmpty)
        #expect(r[0].header("content-type") == "application/json")
        #expect(r[3].json?["status"]?.stringValue == "ready")
        #expect(c.leftover == 0)
        await c.close()
    }

    // MARK: Host

    @Test("an HTTP/1.1 request without Host, or with two, gets 400; HTTP/1.0 needs none")
    func hostRequired() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let missing = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await missing.send("GET /v1/whoami HTTP/1.1\r\n\r\n")
        let r = try #require(try await missing.responses(1).first)
        #expect(r.status == 400)
        #expect(r.header("content-type") == "application/problem+json")
        #expect(r.json?["code"]?.stringValue == "invalid_request")
        #expect(r.json?["detail"]?.stringValue?.contains("Host") == true, "\(r.body)")
        await missing.close()

        let twice = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await twice.send("GET /v1/whoami HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
        #expect(try await twice.responses(1).first?.status == 400)
        await twice.close()

        let old = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await old.send("GET /v1/whoami HTTP/1.0\r\n\r\n")
        #expect(try await old.responses(1).first?.status == 200)
        await old.close()

        let ops = try await RawHTTPConnection.plain(port: gateway.operationsPort)
        try await ops.send("GET /health/live HTTP/1.1\r\n\r\n")
        #expect(try await ops.responses(1).first?.status == 400)
        await ops.close()
    }

    // MARK: Expect

    @Test("Expect: 100-continue gets 100 Continue at once when the head passes, and the final answer after the body")
    func expectContinue() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let c = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        let body = ExchangeTests.exchangeBody(consents: ["no-such-consent"])
        let started = Date()
        try await c.send(
            "POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\n\r\n"
        )
        let interim = try await c.responses(1)
        #expect(interim.first?.status == 100)
        #expect(Date().timeIntervalSince(started) < 0.9, "100 Continue took \(Date().timeIntervalSince(started)) s")
        try await c.send(body)
        let r = try await c.responses(2)
        #expect(r[1].status == 403, "\(r[1].body)")
        #expect(r[1].json?["code"]?.stringValue == "exchange_denied")
        // The connection goes on.
        try await c.send("GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(try await c.responses(3).last?.status == 200)
        await c.close()
    }

    @Test("curl sends Expect: 100-continue for a larger body and goes on at the 100, not after its timeout")
    func curlExpectContinue() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let directory = temporaryDirectory("ketenpoort-expect")
        // Over 1024 bytes: curl 7.x asks Expect: 100-continue by itself (8.x from 1 MiB; the
        // header is given too so either does).
        let body = ExchangeTests.exchangeBody(consents: ["no-such-consent"], extraData: #", "safety_plan": {"summary": "\#(String(repeating: "x", count: 3000))"}"#)
        try write(body, to: directory + "/body.json")
        let r = try runProcess("curl", [
            "-s", "-v", "-o", "-", "-w", "\n%{http_code} %{time_total}", "--cacert", PKIFixture.path("ca.crt"), "--cert", partner.cert, "--key", partner.key,
            "--max-time", "20", "--expect100-timeout", "5", "-H", "content-type: application/json", "-H", "expect: 100-continue",
            "--data-binary", "@" + directory + "/body.json", "https://localhost:\(gateway.port)/v1/exchanges",
        ])
        let last = r.stdout.split(separator: "\n").last?.split(separator: " ") ?? []
        #expect(last.first == "403", "\(r.stdout.suffix(300))")
        #expect(r.stderr.contains("HTTP/1.1 100 Continue"), "\(r.stderr.suffix(600))")
        let seconds = Double(last.last ?? "") ?? 99
        #expect(seconds < 2.5, "curl took \(seconds) s: it waited for its 5 s expect timeout")
    }

    @Test("Expect: 100-continue on a head that is refused: the final status instead of 100, then the connection closes")
    func expectContinueRefused() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  max_body_bytes: 4096\n")
        defer { gateway.stop() }
        let cases: [(String, Int, String)] = [
            ("POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 415, "unsupported_media_type"),
            ("POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 415, "unsupported_media_type"),
            ("PUT /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 405, "method_not_allowed"),
            ("POST /v1/no-such-thing HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 404, "not_found"),
            ("POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", 413, "payload_too_large"),
            ("POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 200-ok\r\n\r\n", 417, "expectation_failed"),
        ]
        for (request, status, code) in cases {
            let c = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
            try await c.send(request)
            let r = try #require(try await c.responses(1).first)
            #expect(r.status == status, "\(request.prefix(40)): \(r.status) \(r.body)")
            #expect(r.json?["code"]?.stringValue == code)
            #expect(r.header("connection")?.lowercased() == "close")
            #expect(await c.closedByServer(), "\(request.prefix(40)): still open")
            #expect(!c.text.contains("100 Continue"))
            await c.close()
        }
        // An officer's certificate on a partners' endpoint: the role is checked with the body,
        // so the head passes and the answer is the final 403 after it.
        let o = try await RawHTTPConnection.tls(port: gateway.port, cert: officer.cert, key: officer.key)
        try await o.send(
            "POST /v1/consents HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        #expect(try await o.responses(1).first?.status == 100)
        try await o.send("{}")
        #expect(try await o.responses(2).last?.status == 403)
        await o.close()
    }

    @Test("Expect: 100-continue in an HTTP/1.0 request is ignored, and a bodyless request gets no 100")
    func expectIgnored() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let old = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await old.send("GET /v1/whoami HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
        let r = try await old.responses(1)
        #expect(r.first?.status == 200)
        await old.close()
        let empty = try await RawHTTPConnection.tls(port: gateway.port, cert: partner.cert, key: partner.key)
        try await empty.send("GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\r\n")
        #expect(try await empty.responses(1).first?.status == 200)
        await empty.close()
    }

    // MARK: content negotiation

    @Test("JSON bodies: media type and parameters parsed (OWS, case, quotes); a charset other than utf-8 or a content-coding gets 415")
    func contentNegotiation() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let body = ExchangeTests.exchangeBody(consents: ["no-such-consent"])
        for accepted in [
            "application/json", "application/json ; charset=utf-8", "Application/JSON;Charset=\"UTF-8\"", "application/json;charset=utf-8",
            "application/json\t;\tcharset=UTF-8 ; foo=bar", "application/json;;",
        ] {
            let r = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", accepted)], body: body)
            #expect(r.status == 403 && r.json?["code"]?.stringValue == "exchange_denied", "\(accepted): \(r.status) \(r.body)")
        }
        let identity = try await team.request(
            "/v1/exchanges", method: .POST, headers: [("content-type", "application/json"), ("content-encoding", "identity")], body: body)
        #expect(identity.status == 403, "\(identity.body)")
        for refused in [
            "application/json; charset=latin1", "application/json; charset=utf-16", "application/json; charset=\"iso-8859-1\"", "text/plain",
            "application/jsonx", "application/json; charset", "application/json charset=utf-8", "",
        ] {
            let r = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", refused)], body: body)
            #expect(r.status == 415, "\(refused): \(r.status) \(r.body)")
            #expect(r.json?["code"]?.stringValue == "unsupported_media_type")
            #expect(r.json?["detail"]?.stringValue?.contains("send UTF-8 JSON (application/json, charset utf-8 or none)") == true, "\(r.body)")
        }
        for coding in ["gzip", "deflate", "identity, gzip", "br"] {
            let r = try await team.request(
                "/v1/exchanges", method: .POST, headers: [("content-type", "application/json"), ("content-encoding", coding)], body: body)
            #expect(r.status == 415, "\(coding): \(r.status)")
            #expect(r.json?["detail"]?.stringValue == "content-encoding is not supported; send the body uncompressed", "\(r.body)")
        }
        // The same rules on every route that reads JSON; the connection stays usable after a 415.
        let reid = try await team.request("/v1/reidentifications", method: .POST, headers: [("content-type", "application/json; charset=latin1")], body: "{}")
        #expect(reid.status == 415)
        let reidOWS = try await team.request("/v1/reidentifications", method: .POST, headers: [("content-type", "application/json ; charset=utf-8")], body: "{}")
        #expect(reidOWS.status == 422, "\(reidOWS.body)")
        let consent = try await team.request("/v1/consents", method: .POST, headers: [("content-type", "application/json; charset=utf-16")], body: "{}")
        #expect(consent.status == 415)
        #expect(try await team.request("/v1/whoami").status == 200)
        await team.close()
        let o = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        let review = try await o.request("/v1/reviews/x", method: .POST, headers: [("content-type", "text/plain")], body: "upheld")
        #expect(review.status == 415 && review.json?["code"]?.stringValue == "unsupported_media_type")
        await o.close()
    }

    @Test("the media type parser follows RFC 9110 §8.3.1 and §5.6.6")
    func mediaTypeParser() {
        let json = MediaType("Application/JSON ; Charset=\"UTF-8\"")
        #expect(json?.type == "application/json")
        #expect(json?.parameter("charset") == "UTF-8")
        #expect(MediaType("application/json;a=\"x\\\"y\";b=z")?.parameter("a") == "x\"y")
        #expect(MediaType("application/json;")?.type == "application/json")
        #expect(MediaType("application/json ; ; charset=utf-8")?.parameter("charset") == "utf-8")
        for bad in ["", "application", "application/", "/json", "application/json charset=utf-8", "application/json; charset = utf-8", "application/json; =x",
            "application/json; charset=\"utf-8", "appl ication/json", "application/json; charset=utf 8"]
        {
            #expect(MediaType(bad) == nil, "\(bad)")
        }
    }
}

/// One HTTP response read off the wire by ``RawHTTPConnection``.
struct RawResponse {
    var status: Int
    var headers: [(String, String)]
    var body: String
    /// The length of the status line and header block, blank line included.
    var headerBytes: Int

    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    var json: JSONValue? { try? JSONParser.parse(body) }
}

/// A connection that writes raw request bytes and keeps every byte of the answers: TLS with
/// the project's OpenSSL handler, or plain TCP for the operations listener.
final class RawHTTPConnection: @unchecked Sendable {
    let channel: Channel
    private let collector: RawBytesCollector

    private init(channel: Channel, collector: RawBytesCollector) {
        self.channel = channel
        self.collector = collector
    }

    static func tls(port: Int, cert: String, key: String) async throws -> RawHTTPConnection {
        let context = try TLSContext(configuration: .client(certificateChainPath: cert, privateKeyPath: key, trustRootsPath: PKIFixture.path("ca.crt")))
        let loop = TestHTTPSClient.group.next()
        let handshake = loop.makePromise(of: Void.self)
        let collector = RawBytesCollector(handshake: handshake)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                do {
                    try channel.pipeline.syncOperations.addHandler(OpenSSLHandler(context: context, serverHostname: "127.0.0.1"))
                    try channel.pipeline.syncOperations.addHandler(collector)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await handshake.futureResult.get()
        return RawHTTPConnection(channel: channel, collector: collector)
    }

    static func plain(port: Int) async throws -> RawHTTPConnection {
        let loop = TestHTTPSClient.group.next()
        let collector = RawBytesCollector(handshake: nil)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawHTTPConnection(channel: channel, collector: collector)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
    }

    var bytes: [UInt8] { collector.bytes.withLock { $0 } }
    var text: String { String(decoding: bytes, as: UTF8.self) }
    var isActive: Bool { channel.isActive }
    /// Bytes received after the last complete response that ``responses(_:headRequests:)`` split.
    private(set) var leftover = 0

    /// Waits until `count` complete responses (1xx included) have arrived and returns them.
    /// `headRequests`: the indexes, among the final (non-1xx) responses, of answers to HEAD.
    func responses(_ count: Int, headRequests: Set<Int> = [], timeout: Double = 10) async throws -> [RawResponse] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let (parsed, rest) = RawHTTPConnection.split(bytes, headRequests: headRequests)
            if parsed.count >= count {
                leftover = rest
                return parsed
            }
            if Date() > deadline || (!channel.isActive && collector.closed.withLock({ $0 })) {
                throw GatewayProcessError(message: "\(parsed.count) of \(count) responses; received: \(text)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Whether the server closed the connection within `seconds`.
    func closedByServer(within seconds: Double = 5) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if collector.closed.withLock({ $0 }) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func close() async { try? await channel.close() }

    /// Complete responses at the start of `bytes`, and how many bytes follow the last one.
    static func split(_ bytes: [UInt8], headRequests: Set<Int>) -> ([RawResponse], Int) {
        var out: [RawResponse] = []
        var at = 0
        var finals = 0
        let blank: [UInt8] = Array("\r\n\r\n".utf8)
        while at < bytes.count {
            guard let end = (at...max(at, bytes.count - 4)).first(where: { bytes.count >= $0 + 4 && Array(bytes[$0..<$0 + 4]) == blank }) else { break }
            let head = String(decoding: bytes[at..<end], as: UTF8.self)
            var lines = head.components(separatedBy: "\r\n")
            let statusLine = lines.removeFirst().split(separator: " ")
            guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else { return (out, bytes.count - at) }
            let headers = lines.compactMap { line -> (String, String)? in
                guard let colon = line.firstIndex(of: ":") else { return nil }
                return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            }
            let headerBytes = end + 4 - at
            var length = 0
            if status >= 200 && !headRequests.contains(finals) {
                length = headers.first { $0.0.lowercased() == "content-length" }.flatMap { Int($0.1) } ?? 0
            }
            guard end + 4 + length <= bytes.count else { break }
            let body = String(decoding: bytes[(end + 4)..<(end + 4 + length)], as: UTF8.self)
            out.append(RawResponse(status: status, headers: headers, body: body, headerBytes: headerBytes))
            if status >= 200 { finals += 1 }
            at = end + 4 + length
        }
        return (out, bytes.count - at)
    }
}

final class RawBytesCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let bytes = Mutex<[UInt8]>([])
    let closed = Mutex(false)
    private var handshake: EventLoopPromise<Void>?

    init(handshake: EventLoopPromise<Void>?) { self.handshake = handshake }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytes.withLock { $0.append(contentsOf: buffer.readableBytesView) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            handshake?.succeed(())
            handshake = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed.withLock { $0 = true }
        handshake?.fail(ChannelError.eof)
        handshake = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        handshake?.fail(error)
        handshake = nil
        context.close(promise: nil)
    }
}
