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
    /// blank line, body — in one buffer, written with one TLS record. Without `body` (the
    /// answer to HEAD) the header still tells the body's length, as GET would have.
    func serialize(close: Bool, body includeBody: Bool = true) -> [UInt8] {
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
        if includeBody { out.append(contentsOf: body) }
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
        case .expectationFailed: return (.expectationFailed, "Expectation failed")
        case .serviceUnavailable: return (.serviceUnavailable, "Service unavailable")
        default: return (.internalServerError, "Internal error")
        }
    }
}

/// A media type as RFC 9110 §8.3.1 writes it: `type/subtype` and `;`-separated parameters, with
/// optional whitespace around the `;` (§5.6.6), case-insensitive type and parameter names, and
/// values as tokens or quoted strings. Anything else does not parse.
struct MediaType: Sendable, Equatable {
    /// `type/subtype`, lowercased.
    var type: String
    /// Parameters in order: the name lowercased, the value as given (quotes and escapes removed).
    var parameters: [(name: String, value: String)]

    static func == (a: MediaType, b: MediaType) -> Bool {
        a.type == b.type && a.parameters.map(\.name) == b.parameters.map(\.name) && a.parameters.map(\.value) == b.parameters.map(\.value)
    }

    /// The value of the first parameter `name` (case-insensitive).
    func parameter(_ name: String) -> String? {
        let name = name.lowercased()
        return parameters.first { $0.name == name }?.value
    }

    init?(_ text: String) {
        let bytes = Array(text.utf8)
        var i = 0
        func isTokenByte(_ b: UInt8) -> Bool {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): return true
            default: return Array("!#$%&'*+-.^_`|~".utf8).contains(b)
            }
        }
        func skipOWS() { while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 { i += 1 } }
        func token() -> String? {
            let start = i
            while i < bytes.count, isTokenByte(bytes[i]) { i += 1 }
            return i > start ? String(decoding: bytes[start..<i], as: UTF8.self) : nil
        }
        func quoted() -> String? {
            // At the opening quote.
            i += 1
            var value: [UInt8] = []
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "\"") {
                    i += 1
                    return String(decoding: value, as: UTF8.self)
                }
                if b == UInt8(ascii: "\\") {
                    i += 1
                    guard i < bytes.count, bytes[i] == 0x09 || (0x20...0x7e).contains(bytes[i]) || bytes[i] >= 0x80 else { return nil }
                    value.append(bytes[i])
                } else if b == 0x09 || b == 0x20 || b == 0x21 || (0x23...0x5b).contains(b) || (0x5d...0x7e).contains(b) || b >= 0x80 {
                    value.append(b)
                } else {
                    return nil
                }
                i += 1
            }
            return nil  // no closing quote
        }
        skipOWS()
        guard let major = token(), i < bytes.count, bytes[i] == UInt8(ascii: "/") else { return nil }
        i += 1
        guard let minor = token() else { return nil }
        type = (major + "/" + minor).lowercased()
        parameters = []
        while true {
            skipOWS()
            if i == bytes.count { return }
            guard bytes[i] == UInt8(ascii: ";") else { return nil }
            i += 1
            skipOWS()
            // An empty parameter (`;;`, a trailing `;`) is allowed.
            if i == bytes.count || bytes[i] == UInt8(ascii: ";") { continue }
            guard let name = token(), i < bytes.count, bytes[i] == UInt8(ascii: "=") else { return nil }
            i += 1
            guard i < bytes.count else { return nil }
            let value: String
            if bytes[i] == UInt8(ascii: "\"") {
                guard let q = quoted() else { return nil }
                value = q
            } else {
                guard let t = token() else { return nil }
                value = t
            }
            parameters.append((name.lowercased(), value))
        }
    }
}

extension GatewayRequest {
    /// Whether the request carries content (a positive `Content-Length`, or `Transfer-Encoding`).
    var hasContent: Bool {
        if headers.contains(name: "transfer-encoding") { return true }
        return headers["content-length"].contains { Int($0.trimmingCharacters(in: .whitespaces)).map { $0 > 0 } ?? true }
    }

    static let jsonBodyAdvice = "send UTF-8 JSON (application/json, charset utf-8 or none)"
    static let contentEncodingRefusal = "content-encoding is not supported; send the body uncompressed"

    /// Why a body cannot be read as coded: a `Content-Encoding` other than `identity` (the
    /// gateway decodes none), or `nil`.
    var contentEncodingRefusal: String? {
        for value in headers["content-encoding"] {
            for coding in value.split(separator: ",") {
                let name = coding.trimmingCharacters(in: .whitespaces).lowercased()
                if !name.isEmpty, name != "identity" { return GatewayRequest.contentEncodingRefusal }
            }
        }
        return nil
    }

    /// Why the body cannot be read as JSON (the `detail` of a 415), or `nil`: the content must
    /// be uncoded, exactly one `Content-Type`, `application/json` with no charset or `utf-8`
    /// (RFC 8259 §8.1: JSON exchanged between systems is UTF-8).
    var jsonBodyRefusal: String? {
        if let coding = contentEncodingRefusal { return coding }
        let types = headers["content-type"]
        guard types.count == 1, let media = MediaType(types[0]) else {
            return types.isEmpty ? "no content-type; \(GatewayRequest.jsonBodyAdvice)" : "the content-type is not a valid media type; \(GatewayRequest.jsonBodyAdvice)"
        }
        guard media.type == "application/json" else { return "the content-type is not application/json; \(GatewayRequest.jsonBodyAdvice)" }
        for (name, value) in media.parameters where name == "charset" && value.lowercased() != "utf-8" {
            return "the charset is not utf-8; \(GatewayRequest.jsonBodyAdvice)"
        }
        return nil
    }
}
