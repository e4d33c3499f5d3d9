import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy
import KetenpoortTLS
import NIOCore
import NIOHTTP1
import Synchronization

/// Who is calling, derived only from the verified client certificate.
public enum Caller: Sendable {
    case partner(Partner)
    case officer(Officer)
}

/// The outcome of identifying a caller: who, or the refusal to send.
public enum Identification: Sendable {
    case caller(Caller)
    case refused(GatewayResponse)
}

/// What the gateway decides with; immutable, swapped as a whole on reload.
public final class GatewaySnapshot: Sendable {
    public let policySet: PolicySet
    public var registry: PartnerRegistry { policySet.registry }
    /// Content hash of the policy set the snapshot was built from.
    public var policyVersion: String { policySet.version }
    /// `/v1/whoami` answers, serialised once per caller.
    let whoamiResponses: [String: GatewayResponse]

    public init(policySet: PolicySet) {
        self.policySet = policySet
        let registry = policySet.registry
        var bodies: [String: GatewayResponse] = [:]
        for p in registry.partners {
            let value: JSONValue = ["partner": ["id": .string(p.id), "name": .string(p.name), "kind": .string(p.kind), "oin": .string(p.oin.value)]]
            bodies["partner:" + p.id] = .prepared(status: .ok, contentType: "application/json", body: Array(value.serialized().utf8), route: "/v1/whoami")
        }
        for o in registry.officers {
            let value: JSONValue = ["officer": ["id": .string(o.id), "name": .string(o.name), "role": .string(o.role)]]
            bodies["officer:" + o.id] = .prepared(status: .ok, contentType: "application/json", body: Array(value.serialized().utf8), route: "/v1/whoami")
        }
        whoamiResponses = bodies
    }
}

/// The current snapshot, read per request and replaced atomically.
public final class GatewayState: Sendable {
    private let current: Mutex<GatewaySnapshot>
    public init(_ snapshot: GatewaySnapshot) { current = Mutex(snapshot) }
    public var snapshot: GatewaySnapshot { current.withLock { $0 } }
    public func replace(with snapshot: GatewaySnapshot) { current.withLock { $0 = snapshot } }
}

/// The HTTP API of the gateway (`/v1/...`).
public struct GatewayApplication: GatewayResponder {
    public let state: GatewayState
    public let audit: GatewayAudit
    let exchanges: ExchangeService
    let repository: ExchangeRepository
    /// Which endpoints this listener serves: all (the default), or split between a partners'
    /// and an officers' listener.
    enum Listener { case all, partners, officers }
    let listener: Listener

    init(state: GatewayState, audit: GatewayAudit, repository: ExchangeRepository, listener: Listener = .all) {
        self.state = state
        self.audit = audit
        self.exchanges = ExchangeService(state: state, audit: audit, repository: repository)
        self.repository = repository
        self.listener = listener
    }

    init(sharing other: GatewayApplication, listener: Listener) {
        self.state = other.state
        self.audit = other.audit
        self.exchanges = other.exchanges
        self.repository = other.repository
        self.listener = listener
    }

    /// Officer-only endpoints (the console, the log's entries and proofs, the review queue).
    static func isOfficerEndpoint(_ path: String) -> Bool {
        path == "/console" || path.hasPrefix("/console/") || path.hasPrefix("/v1/audit/entries") || path == "/v1/reviews" || path.hasPrefix("/v1/reviews/")
    }

    /// The routes that read a JSON body (POST): their requests must send UTF-8 JSON, uncoded.
    static let jsonBodyRoutes: Set<String> = ["/v1/exchanges", "/v1/consents", "/v1/facts", "/v1/reviews/{id}", "/v1/reidentifications"]

    /// What the head of a request decides: who calls, or the answer that refuses it.
    enum HeadCheck {
        case accepted(Caller)
        case refused(GatewayResponse)
    }

    /// What can be decided from the request head alone, before its body is read: who is calling,
    /// whether this listener serves the path, the route and its methods (404, 405), and for a
    /// route that reads a body, its media type and coding (415). The role a route needs (partner
    /// or officer) is checked with the request.
    func check(head request: GatewayRequest) -> HeadCheck {
        let caller: Caller
        switch identify(request) {
        case .caller(let c): caller = c
        case .refused(let response): return .refused(response)
        }
        if listener != .all, (listener == .officers) != GatewayApplication.isOfficerEndpoint(request.path), request.path != "/v1/whoami" {
            return .refused(
                GatewayResponse.problem(
                    .notFound, code: .notFound, title: "Not found",
                    detail: listener == .partners ? "officer endpoints are served on the officers' listener" : "this listener serves officer endpoints only",
                    route: "unknown"))
        }
        let route: String
        switch (request.method, request.path) {
        case (.GET, "/v1/whoami"):
            return .accepted(caller)
        case (_, "/v1/whoami"):
            return .refused(methodNotAllowed(route: "/v1/whoami", allowed: [.GET]))
        case (.POST, "/v1/reidentifications"):
            route = "/v1/reidentifications"
        case (_, "/v1/reidentifications"):
            return .refused(methodNotAllowed(route: "/v1/reidentifications", allowed: [.POST]))
        case (.GET, let path) where path.hasPrefix("/v1/audit/"):
            return .accepted(caller)
        case (.GET, let path) where path == "/console" || path.hasPrefix("/console/"):
            return .accepted(caller)
        case (.POST, let path) where path.hasPrefix("/console/"):
            // Forms (application/x-www-form-urlencoded), read as they come; a coded body cannot be.
            if request.hasContent, let refusal = request.contentEncodingRefusal {
                return .refused(unsupportedMediaType(refusal, route: "/console"))
            }
            return .accepted(caller)
        case (_, let path) where path == "/console" || path.hasPrefix("/console/"):
            return .refused(methodNotAllowed(route: "/console", allowed: [.GET, .POST]))
        case (let method, let path) where ExchangeService.handles(path):
            guard let resource = ExchangeService.resource(path) else {
                return .refused(GatewayResponse.problem(.notFound, code: .notFound, title: "Not found", detail: "no such resource", route: "unknown"))
            }
            if !resource.methods.contains(method) {
                return .refused(methodNotAllowed(route: resource.route, allowed: resource.methods))
            }
            route = resource.route
        case (_, let path) where path.hasPrefix("/v1/audit/"):
            return .refused(methodNotAllowed(route: "/v1/audit", allowed: [.GET]))
        default:
            return .refused(GatewayResponse.problem(.notFound, code: .notFound, title: "Not found", detail: "no such resource", route: "unknown"))
        }
        if request.method == .POST, GatewayApplication.jsonBodyRoutes.contains(route), let refusal = request.jsonBodyRefusal {
            return .refused(unsupportedMediaType(refusal, route: route))
        }
        return .accepted(caller)
    }

    public func refusal(forHead request: GatewayRequest) -> GatewayResponse? {
        if case .refused(let response) = check(head: request) { return response }
        return nil
    }

    /// Answers what needs neither the log nor the disk on the event loop; `nil` for the rest.
    public func respondImmediately(to request: GatewayRequest) -> GatewayResponse? {
        switch check(head: request) {
        case .refused(let response):
            return response
        case .accepted(let caller):
            if request.method == .GET, request.path == "/v1/whoami" { return whoami(caller, snapshot: state.snapshot) }
            return nil
        }
    }

    public func respond(to request: GatewayRequest, on eventLoop: EventLoop) -> EventLoopFuture<GatewayResponse> {
        if let immediate = respondImmediately(to: request) { return eventLoop.makeSucceededFuture(immediate) }
        guard case .caller(let caller) = identify(request) else {
            return eventLoop.makeSucceededFuture(GatewayResponse.problem(.forbidden, code: .forbidden, title: "Forbidden", detail: "unidentified caller", route: "identity"))
        }
        let promise = eventLoop.makePromise(of: GatewayResponse.self)
        if request.method == .POST, request.path == "/v1/exchanges" {
            // The busiest route: decided here and answered from the log's writer thread.
            // Only reads happen before the log is written, unless an Idempotency-Key is claimed:
            // that is a write which may wait for the log writer's commit, so it runs in a task.
            let exchanges = self.exchanges
            if exchanges.readsAreLocal, !request.headers.contains(name: "idempotency-key") {
                exchanges.submitExchange(request, caller: caller) { promise.succeed($0) }
            } else {
                Task { exchanges.submitExchange(request, caller: caller) { promise.succeed($0) } }
            }
            return promise.futureResult
        }
        promise.completeWithTask {
            if request.path == "/v1/reidentifications" { return await reidentify(request, caller: caller) }
            if ExchangeService.handles(request.path) { return await exchanges.respond(to: request, caller: caller) }
            if request.path == "/console" || request.path.hasPrefix("/console/") {
                return await Console(state: state, audit: audit, exchanges: exchanges).respond(to: request, caller: caller)
            }
            return await AuditAPI(audit: audit).respond(to: request, caller: caller)
        }
        return promise.futureResult
    }

    /// `POST /v1/reidentifications` `{"caseTable", "purpose", "token"}`: the value behind a
    /// token, only where the policy permits it for the calling partner and purpose, and only
    /// after the log holds the record (503 `audit_unavailable` otherwise).
    func reidentify(_ request: GatewayRequest, caller: Caller) async -> GatewayResponse {
        let route = "/v1/reidentifications"
        guard case .partner(let partner) = caller else {
            return .problem(.forbidden, code: .forbidden, title: "Forbidden", detail: "only partners re-identify their tokens", route: route)
        }
        if let refusal = request.jsonBodyRefusal { return unsupportedMediaType(refusal, route: route) }
        let body: JSONValue
        do {
            body = try JSONParser.parse(bytes: request.body.map { Array($0.readableBytesView) } ?? [])
        } catch {
            return .problem(.badRequest, code: .invalidJSON, title: "Invalid JSON", detail: "the body is not valid JSON", route: route)
        }
        guard let members = body.objectValue, Set(members.map(\.0)).isSubset(of: ["caseTable", "purpose", "token"]),
            let caseTable = body["caseTable"]?.stringValue, let purpose = body["purpose"]?.stringValue, let token = body["token"]?.stringValue
        else {
            return .problem(
                .unprocessableEntity, code: .invalidRequest, title: "Invalid request",
                detail: "expected an object with exactly `caseTable`, `purpose` and `token` (strings)", route: route)
        }
        let snapshot = state.snapshot
        let audit = self.audit
        do {
            var pending: Reidentification.Record?
            let value = try Reidentification(keys: audit.keys.keys).reidentify(
                token: token, caseTable: caseTable, partner: partner.id, purpose: purpose, policies: snapshot.policySet, date: ExchangeService.today
            ) { record in pending = record }
            guard let record = pending else { throw KetenpoortError(.internalError, "re-identification produced no log record") }
            let sequence = try await audit.record(
                audit.recorder.reidentification(
                    caseTable: record.caseTable, partner: record.partner, purpose: record.purpose, subjectPseudonym: record.subjectPseudonym,
                    policyVersion: record.policyVersion))
            return .json(["value": .string(value), "logSequence": .number(Double(sequence))], route: route)
        } catch let error as KetenpoortError {
            if error.code == .crypto {
                return .problem(.unprocessableEntity, code: .invalidRequest, title: "Invalid request", detail: "the token is not one this gateway issued for this case table and partner", route: route)
            }
            return .problem(for: error, route: route)
        } catch {
            return .problem(.internalServerError, code: .internalError, title: "Internal error", detail: "the request failed", route: route)
        }
    }

    /// Maps the verified certificate to a registered partner or officer.
    func identify(_ request: GatewayRequest) -> Identification {
        guard let certificate = request.peerCertificate else {
            return .refused(
                GatewayResponse.problem(
                    .forbidden, code: .forbidden, title: "Forbidden", detail: "a client certificate is required", route: "identity"))
        }
        let snapshot = state.snapshot
        let registry = snapshot.registry
        if let serial = certificate.subjectSerialNumber {
            if let partner = registry.partner(oin: serial) {
                guard pinned(partner.certificateFingerprints, certificate) else {
                    return .refused(notPinned())
                }
                return .caller(.partner(partner))
            }
            if let officer = registry.officer(serialNumber: serial) {
                guard pinned(officer.certificateFingerprints, certificate) else {
                    return .refused(notPinned())
                }
                return .caller(.officer(officer))
            }
        }
        return .refused(
            GatewayResponse.problem(
                .forbidden, code: .unknownPartner, title: "Unknown partner",
                detail: "the certificate is valid but its subject serialNumber (OIN) is not registered in partners.yaml",
                route: "identity"))
    }

    private func pinned(_ fingerprints: [String], _ certificate: CertificateInfo) -> Bool {
        fingerprints.isEmpty || fingerprints.contains(certificate.fingerprintSHA256)
    }

    private func notPinned() -> GatewayResponse {
        GatewayResponse.problem(
            .forbidden, code: .certificateNotPinned, title: "Certificate not pinned",
            detail: "the partner pins its certificate fingerprints and this certificate is not one of them", route: "identity")
    }

    func whoami(_ caller: Caller, snapshot: GatewaySnapshot) -> GatewayResponse {
        let key: String
        switch caller {
        case .partner(let p): key = "partner:" + p.id
        case .officer(let o): key = "officer:" + o.id
        }
        if let response = snapshot.whoamiResponses[key] { return response }
        switch caller {
        case .partner(let p):
            return .json(
                ["partner": ["id": .string(p.id), "name": .string(p.name), "kind": .string(p.kind), "oin": .string(p.oin.value)]],
                route: "/v1/whoami")
        case .officer(let o):
            return .json(["officer": ["id": .string(o.id), "name": .string(o.name), "role": .string(o.role)]], route: "/v1/whoami")
        }
    }

    /// 405 with `Allow`: the route's methods, and HEAD wherever GET is (the connection handler
    /// answers HEAD as GET without the body).
    func methodNotAllowed(route: String, allowed methods: [HTTPMethod]) -> GatewayResponse {
        var names = methods.map(\.rawValue)
        if methods.contains(.GET), !methods.contains(.HEAD), let get = names.firstIndex(of: "GET") { names.insert("HEAD", at: get + 1) }
        let allowed = names.joined(separator: ", ")
        var response = GatewayResponse.problem(
            .methodNotAllowed, code: .methodNotAllowed, title: "Method not allowed", detail: "use \(allowed)", route: route)
        response.headers.add(name: "allow", value: allowed)
        return response
    }

    func unsupportedMediaType(_ detail: String, route: String) -> GatewayResponse {
        .problem(.unsupportedMediaType, code: .unsupportedMediaType, title: "Unsupported media type", detail: detail, route: route)
    }
}

extension KetenpoortError.Code {
    public static let certificateNotPinned = KetenpoortError.Code("certificate_not_pinned")
}
