import KetenpoortCore
import KetenpoortStore
import KetenpoortTLS
import NIOCore
import NIOHTTP1

/// One complete request as the gateway's routes see it.
public struct GatewayRequest: Sendable {
    public var method: HTTPMethod
    /// The path without the query string.
    public var path: String
    /// Decoded query parameters (first value wins).
    public var query: [String: String]
    public var headers: HTTPHeaders
    public var body: ByteBuffer?
    /// The verified client certificate of the connection.
    public var peerCertificate: CertificateInfo?

    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer?, peerCertificate: CertificateInfo?) {
        self.method = method
        self.headers = headers
        self.body = body
        self.peerCertificate = peerCertificate
        if let q = uri.firstIndex(of: "?") {
            path = String(uri[..<q])
            query = GatewayRequest.parseQuery(String(uri[uri.index(after: q)...]))
        } else {
            path = uri
            query = [:]
        }
    }

    static func parseQuery(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(String(parts[0]))
            let value = parts.count > 1 ? percentDecode(String(parts[1])) : ""
            if result[key] == nil { result[key] = value }
        }
        return result
    }

    /// `%XX` (two hex digits) decoded, `+` as a space; a `%` not followed by two hex digits
    /// stays as it is, and so do the characters after it.
    static func percentDecode(_ text: String) -> String {
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        let input = Array(text.utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(input.count)
        var i = 0
        while i < input.count {
            let byte = input[i]
            if byte == UInt8(ascii: "%"), i + 2 < input.count, let h = hex(input[i + 1]), let l = hex(input[i + 2]) {
                bytes.append(h << 4 | l)
                i += 3
                continue
            }
            bytes.append(byte == UInt8(ascii: "+") ? 0x20 : byte)
            i += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A complete response. `route` is the route template used as a metric label (never a raw path).
public struct GatewayResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: [UInt8]
    public var route: String

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [], route: String) {
        self.status = status
        self.headers = headers
        self.body = body
        self.route = route
    }

    /// The complete response on the wire, for responses prepared once and served many times
    /// (without `connection: close`).
    var wire: [UInt8]?

    /// A response serialised once: served as is.
    static func prepared(status: HTTPResponseStatus, contentType: String, body: [UInt8], route: String) -> GatewayResponse {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        var response = GatewayResponse(status: status, headers: headers, body: body, route: route)
        response.wire = response.serialize(close: false)
        return response
    }

    /// HTTP/1.1 status line, headers (with content-length and the standard response headers),
    /// blank line, body — in one buffer, written with one TLS record.
    func serialize(close: Bool) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160 + body.count)
        out.append(contentsOf: "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n".utf8)
        for (name, value) in headers {
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: ": ".utf8)
            out.append(contentsOf: value.utf8)
            out.append(contentsOf: "\r\n".utf8)
        }
        out.append(contentsOf: "content-length: \(body.count)\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n".utf8)
        if close { out.append(contentsOf: "connection: close\r\n".utf8) }
        out.append(contentsOf: "\r\n".utf8)
        out.append(contentsOf: body)
        return out
    }

    /// A JSON answer.
    public static func json(_ value: JSONValue, status: HTTPResponseStatus = .ok, route: String) -> GatewayResponse {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        return GatewayResponse(status: status, headers: headers, body: Array(value.serialized().utf8), route: route)
    }

    /// An RFC 9457 problem with Ketenpoort's stable `code`. `extra` members are added as they are
    /// (they must never hold personal data).
    public static func problem(
        _ status: HTTPResponseStatus, code: KetenpoortError.Code, title: String, detail: String,
        extra: [(String, JSONValue)] = [], route: String
    ) -> GatewayResponse {
        var members: [(String, JSONValue)] = [
            ("type", .string("https://ketenpoort.nl/problems/\(code.rawValue)")),
            ("title", .string(title)),
            ("status", .number(Double(status.code))),
            ("detail", .string(detail)),
            ("code", .string(code.rawValue)),
        ]
        members.append(contentsOf: extra)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/problem+json")
        return GatewayResponse(status: status, headers: headers, body: Array(JSONValue.object(members).serialized().utf8), route: route)
    }

    /// The problem for a ``KetenpoortError`` raised while handling a request.
    public static func problem(for error: KetenpoortError, route: String) -> GatewayResponse {
        let told = publicForm(of: error)
        return problem(told.status, code: told.code, title: told.title, detail: told.detail, route: route)
    }

    /// How an error is told outside the gateway (the API and the console). Storage failures are
    /// told as what the caller can do about them; the database's own message (which names
    /// tables and servers) goes to the operator's log, not to partners or officers.
    static func publicForm(of error: KetenpoortError) -> (status: HTTPResponseStatus, code: KetenpoortError.Code, title: String, detail: String) {
        switch error.code {
        case .storageUnavailable:
            return (.serviceUnavailable, .serviceUnavailable, "Service unavailable", "the gateway's database cannot be reached; retry later")
        case .storage, .storageCorrupt, .storageConstraint:
            return (.internalServerError, .internalError, "Internal error", "the request failed")
        default:
            let (status, title) = problemStatus(for: error.code)
            return (status, error.code, title, error.message)
        }
    }

    static func problemStatus(for code: KetenpoortError.Code) -> (HTTPResponseStatus, String) {
        switch code {
        case .unknownPartner: return (.forbidden, "Unknown partner")
        case .forbidden: return (.forbidden, "Forbidden")
        case .notFound: return (.notFound, "Not found")
        case .invalidJSON: return (.badRequest, "Invalid JSON")
        case .invalidRequest: return (.unprocessableEntity, "Invalid request")
        case .invalidBSN: return (.unprocessableEntity, "Invalid BSN")
        case .unsupportedMediaType: return (.unsupportedMediaType, "Unsupported media type")
        case .payloadTooLarge: return (.payloadTooLarge, "Payload too large")
        case .exchangeDenied: return (.forbidden, "Exchange denied")
        case .idempotencyConflict: return (.conflict, "Idempotency conflict")
        case .conflict: return (.conflict, "Conflict")
        case .auditUnavailable: return (.serviceUnavailable, "Audit log unavailable")
        case .methodNotAllowed: return (.methodNotAllowed, "Method not allowed")
        case .requestTimeout: return (.requestTimeout, "Request timeout")
        case .headersTooLarge: return (.requestHeaderFieldsTooLarge, "Request header fields too large")
        case .serviceUnavailable: return (.serviceUnavailable, "Service unavailable")
        default: return (.internalServerError, "Internal error")
        }
    }
}
