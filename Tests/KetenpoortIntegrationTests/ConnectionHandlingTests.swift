import Foundation
import KetenpoortCore
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import KetenpoortServer

/// Answers nothing: the pipeline tests below never complete a request.
private struct SilentResponder: GatewayResponder {
    func respond(to request: GatewayRequest, on eventLoop: EventLoop) -> EventLoopFuture<GatewayResponse> {
        eventLoop.makePromise(of: GatewayResponse.self).futureResult
    }
}

@Suite("Connection handling: resources freed, pipelining, upgrades", .serialized)
struct ConnectionHandlingTests {
    let partner = PKIFixture.partner("wijkteam-dordrecht")

    @Test("a closed connection frees its handlers and clock (the request-timeout callback holds no cycle)")
    func handlersFreedOnClose() throws {
        weak var weakHandler: GatewayHTTPHandler?
        weak var weakClock: ConnectionClock?
        do {
            let channel = EmbeddedChannel()
            let limits = GatewayLimits()
            let metrics = GatewayMetrics()
            let clock = ConnectionClock(limits: limits, metrics: metrics)
            let handler = GatewayHTTPHandler(responder: SilentResponder(), limits: limits, metrics: metrics, clock: clock)
            weakHandler = handler
            weakClock = clock
            try channel.pipeline.syncOperations.addHandler(ByteActivityHandler(clock: clock))
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
            #expect(clock.onRequestTimeout != nil)
            _ = try channel.finish(acceptAlreadyClosed: true)
        }
        #expect(weakHandler == nil, "the handler outlived its connection")
        #expect(weakClock == nil, "the clock outlived its connection")
    }

    @Test("query strings: %XX and + decoded; a % without two hex digits kept as written, with what follows it")
    func queryDecoding() {
        #expect(GatewayRequest.parseQuery("a=x%20y&b=1+2&c=%C3%A9") == ["a": "x y", "b": "1 2", "c": "é"])
        #expect(GatewayRequest.parseQuery("a=%zz&b=%+f&c=50%&d=%4") == ["a": "%zz", "b": "% f", "c": "50%", "d": "%4"])
        #expect(GatewayRequest.parseQuery("cursor=%41%42&cursor=ignored") == ["cursor": "AB"])
    }

    @Test("bad bytes pipelined after a request still being answered: that request gets its own answer, then the connection ends")
    func malformedAfterPendingRequest() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        // A refused exchange (no such consent): decided, then logged, so its answer waits for
        // the log writer while the bad bytes behind it are parsed.
        let body = ExchangeTests.exchangeBody(consents: ["no-such-consent"])
        let response = try await client.startRequest(
            "/v1/exchanges", method: .POST, contentLength: body.utf8.count, headers: [("content-type", "application/json")])
        try await client.sendBody(String(body.dropLast()), end: false)
        // The body's last byte and the bad request in one write: one read on the server.
        try await client.writeRaw(String(body.suffix(1)) + "NOT HTTP AT ALL\r\n\r\n")
        let answer = try await response.get()
        #expect(answer.status == 403, "the pending request's own answer, not a 400: \(answer.status) \(answer.body)")
        #expect(answer.json?["code"]?.stringValue == "exchange_denied")
        #expect(answer.headers.first(name: "connection")?.lowercased() == "close")
        for _ in 0..<50 where client.isActive { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!client.isActive)
    }

    @Test("a request asking for a protocol upgrade is answered, then the connection is closed (nothing after it would be parsed)")
    func upgradeAnsweredThenClosed() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        let answer = try await client.request("/v1/whoami", headers: [("connection", "upgrade"), ("upgrade", "websocket")])
        #expect(answer.status == 200)
        #expect(answer.headers.first(name: "connection")?.lowercased() == "close")
        for _ in 0..<50 where client.isActive { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!client.isActive)
        // Without the upgrade the connection stays open for the next request.
        let plain = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await plain.request("/v1/whoami").status == 200)
        #expect(try await plain.request("/v1/whoami").status == 200)
        await plain.close()
    }
}
