import Foundation
import KetenpoortAudit
import KetenpoortCore
import NIOHTTP1

/// `GET /v1/audit/...`: the log for officers (entries, proofs); tree heads, consistency proofs
/// and the public key for partners too, so they can keep checkpoints and check the log grows
/// only by appending.
struct AuditAPI {
    let audit: GatewayAudit

    func respond(to request: GatewayRequest, caller: Caller) async -> GatewayResponse {
        let path = request.path
        let isOfficer: Bool
        if case .officer = caller { isOfficer = true } else { isOfficer = false }
        do {
            switch path {
            case "/v1/audit/checkpoint":
                guard let note = try audit.read({ try $0.checkpoints().last?.note }) else {
                    return .problem(.notFound, code: .notFound, title: "Not found", detail: "no checkpoint has been signed yet", route: "/v1/audit/checkpoint")
                }
                return text(note, route: "/v1/audit/checkpoint")
            case "/v1/audit/public-key":
                return text(try audit.keys.verifierKeys.map(\.text).joined(separator: "\n") + "\n", route: "/v1/audit/public-key")
            case "/v1/audit/consistency":
                return try consistency(request)
            default:
                break
            }
            guard isOfficer else {
                return .problem(.forbidden, code: .forbidden, title: "Forbidden", detail: "the audit log is for privacy officers", route: "/v1/audit")
            }
            if path == "/v1/audit/entries" { return try entries(request) }
            let parts = path.split(separator: "/")
            if parts.count == 5, parts[2] == "entries", parts[4] == "proof", let sequence = Int64(parts[3]), sequence > 0 {
                // An entry newer than the last tree head gets one signed now.
                let covered = try audit.read { store -> Bool in
                    let size = try store.checkpoints().last?.treeSize ?? 0
                    return size >= sequence
                }
                if !covered { _ = try await audit.log.checkpoint() }
                let bundle = try audit.read { try AuditProver.prove(sequence: sequence, store: $0) }
                return .json(bundle.json, route: "/v1/audit/entries/{sequence}/proof")
            }
            return .problem(.notFound, code: .notFound, title: "Not found", detail: "no such audit resource", route: "/v1/audit")
        } catch let error as KetenpoortError {
            return .problem(for: error, route: "/v1/audit")
        } catch {
            return .problem(.internalServerError, code: .internalError, title: "Internal error", detail: "the audit log could not be read", route: "/v1/audit")
        }
    }

    func text(_ body: String, route: String) -> GatewayResponse {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        return GatewayResponse(status: .ok, headers: headers, body: Array(body.utf8), route: route)
    }

    func number(_ request: GatewayRequest, _ name: String) throws -> Int64? {
        guard let text = request.query[name] else { return nil }
        guard let value = Int64(text), value >= 0 else {
            throw KetenpoortError(.invalidRequest, "query parameter `\(name)` must be a whole number")
        }
        return value
    }

    func consistency(_ request: GatewayRequest) throws -> GatewayResponse {
        guard let from = try number(request, "from"), let to = try number(request, "to"), from >= 1, from <= to else {
            throw KetenpoortError(.invalidRequest, "give `from` and `to` tree sizes, 1 ≤ from ≤ to")
        }
        let proof = try audit.read { store -> [[UInt8]] in
            guard to <= (try store.tail().size) else { throw KetenpoortError(.notFound, "the log has fewer than \(to) entries") }
            return try StoredTree(store: store).consistencyProof(oldSize: from, newSize: to)
        }
        return .json(
            ["from": .number(Double(from)), "to": .number(Double(to)), "proof": .array(proof.map { .string(Hex.encode($0)) })],
            route: "/v1/audit/consistency")
    }

    func entries(_ request: GatewayRequest) throws -> GatewayResponse {
        var query = AuditQuery()
        query.kind = request.query["kind"]
        if let kind = query.kind, AuditKind(rawValue: kind) == nil {
            throw KetenpoortError(.invalidRequest, "`kind` must be one of \(AuditKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        query.caseTable = request.query["caseTable"]
        query.sender = request.query["sender"]
        query.recipient = request.query["recipient"]
        query.purpose = request.query["purpose"]
        query.decision = request.query["decision"]
        if let d = query.decision, !["permit", "deny"].contains(d) { throw KetenpoortError(.invalidRequest, "`decision` must be permit or deny") }
        query.basisType = request.query["basisType"]
        if let b = query.basisType, !["consent", "safety-exception", "statutory"].contains(b) {
            throw KetenpoortError(.invalidRequest, "`basisType` must be consent, safety-exception or statutory")
        }
        query.from = request.query["from"]
        query.until = request.query["until"]
        for (name, value) in [("from", query.from), ("until", query.until)] {
            if let value, !AuditClock.isQueryBound(value) {
                throw KetenpoortError(.invalidRequest, "`\(name)` must be a day (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)")
            }
        }
        query.afterSequence = try number(request, "after")
        let limit = Int(try number(request, "limit") ?? 100)
        guard (1...1_000).contains(limit) else { throw KetenpoortError(.invalidRequest, "`limit` must be from 1 to 1000") }
        query.limit = limit
        var items: [JSONValue] = []
        var last: Int64?
        try audit.read { store in
            try store.entries(matching: query) { entry in
                items.append((try? JSONParser.parse(AuditExport.line(entry))) ?? .null)
                last = entry.sequence
                return true
            }
        }
        let next: JSONValue = items.count == limit ? .string(String(last ?? 0)) : .null
        return .json(["items": .array(items), "next": next], route: "/v1/audit/entries")
    }
}
