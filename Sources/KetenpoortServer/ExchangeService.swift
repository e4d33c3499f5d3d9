import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy
import NIOHTTP1
import Synchronization

/// `/v1/exchanges`, `/v1/consents`, `/v1/facts`, `/v1/inbox`, `/v1/reviews`: what partner systems
/// use every day. Every decision is taken by the compiled policy with the consents and case facts
/// registered here, and is in the audit log — together with the delivery record — before it is
/// answered.
final class ExchangeService: Sendable {
    let state: GatewayState
    let audit: GatewayAudit
    let repository: ExchangeRepository
    let applier: ObligationApplier

    init(state: GatewayState, audit: GatewayAudit, repository: ExchangeRepository) {
        self.state = state
        self.audit = audit
        self.repository = repository
        self.applier = ObligationApplier(keys: audit.keys.keys)
    }

    /// Each resource and its methods (`*` is one path segment, an id), so a known resource asked
    /// with another method gets 405 with `Allow`, and an unknown one 404.
    static let resources: [(template: [String], route: String, methods: [HTTPMethod])] = [
        (["v1", "exchanges"], "/v1/exchanges", [.POST]), (["v1", "exchanges", "*"], "/v1/exchanges/{id}", [.GET]),
        (["v1", "consents"], "/v1/consents", [.POST]), (["v1", "consents", "*", "withdraw"], "/v1/consents/{id}/withdraw", [.POST]),
        (["v1", "facts"], "/v1/facts", [.POST]),
        (["v1", "inbox"], "/v1/inbox", [.GET]), (["v1", "inbox", "*", "ack"], "/v1/inbox/{id}/ack", [.POST]),
        (["v1", "reviews"], "/v1/reviews", [.GET]), (["v1", "reviews", "*"], "/v1/reviews/{id}", [.POST]),
    ]

    /// The resource `path` names, if any.
    static func resource(_ path: String) -> (route: String, methods: [HTTPMethod])? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        for r in resources where r.template.count == parts.count {
            if zip(r.template, parts).allSatisfy({ $0 == "*" ? !$1.isEmpty : $0 == $1 }) { return (r.route, r.methods) }
        }
        return nil
    }

    /// The collections this service answers under (from the resource table).
    static let prefixes = Set(resources.map { "/" + $0.template[0] + "/" + $0.template[1] })

    static func handles(_ path: String) -> Bool {
        prefixes.contains { path == $0 || path.hasPrefix($0 + "/") }
    }

    func respond(to request: GatewayRequest, caller: Caller) async -> GatewayResponse {
        let parts = request.path.split(separator: "/").map(String.init)  // ["v1", "exchanges", ...]
        do {
            switch (request.method, parts.count, parts[1]) {
            case (.POST, 2, "exchanges"):
                return await withCheckedContinuation { continuation in submitExchange(request, caller: caller) { continuation.resume(returning: $0) } }
            case (.GET, 3, "exchanges"): return try getExchange(parts[2], caller: try partner(caller))
            case (.POST, 2, "consents"): return try await postConsent(request, caller: try partner(caller))
            case (.POST, 4, "consents") where parts[3] == "withdraw": return try await withdrawConsent(parts[2], caller: try partner(caller))
            case (.POST, 2, "facts"): return try await postFact(request, caller: try partner(caller))
            case (.GET, 2, "inbox"): return try inbox(request, caller: try partner(caller))
            case (.POST, 4, "inbox") where parts[3] == "ack": return try acknowledge(parts[2], caller: try partner(caller))
            case (.GET, 2, "reviews"): return try reviews(caller: try officer(caller))
            case (.POST, 3, "reviews"): return try await postReview(parts[2], request, caller: try officer(caller))
            default:
                return .problem(.notFound, code: .notFound, title: "Not found", detail: "no such resource", route: "unknown")
            }
        } catch let error as KetenpoortError {
            return .problem(for: error, route: "/v1/\(parts.count > 1 ? parts[1] : "")")
        } catch {
            return .problem(.internalServerError, code: .internalError, title: "Internal error", detail: "the request failed", route: "/v1")
        }
    }

    func partner(_ caller: Caller) throws -> Partner {
        guard case .partner(let p) = caller else { throw KetenpoortError(.forbidden, "this endpoint is for partners; officers use /v1/audit and /v1/reviews") }
        return p
    }

    func officer(_ caller: Caller) throws -> Officer {
        guard case .officer(let o) = caller else { throw KetenpoortError(.forbidden, "reviews are for privacy officers") }
        return o
    }

    // MARK: request bodies

    static let jsonLimits = JSONParser.Limits(maxDepth: 12, maxStringBytes: 64 * 1024, maxMembers: 2_000)

    func body(_ request: GatewayRequest) throws -> (JSONValue, [UInt8]) {
        if let refusal = request.jsonBodyRefusal { throw KetenpoortError(.unsupportedMediaType, refusal) }
        let bytes = request.body.map { Array($0.readableBytesView) } ?? []
        do {
            return (try JSONParser.parse(bytes: bytes, limits: ExchangeService.jsonLimits), bytes)
        } catch let error as KetenpoortError {
            throw KetenpoortError(.invalidJSON, "the body is not valid JSON: \(error.message)")
        }
    }

    static func only(_ value: JSONValue, _ allowed: Set<String>, at path: String) throws {
        guard let members = value.objectValue else { throw KetenpoortError(.invalidRequest, "`\(path)` must be an object") }
        for (key, _) in members where !allowed.contains(key) {
            throw KetenpoortError(.invalidRequest, "unknown member `\(path.isEmpty ? key : path + "." + key)`; expected one of \(allowed.sorted().joined(separator: ", "))")
        }
    }

    static func text(_ value: JSONValue?, _ path: String, required: Bool = true) throws -> String? {
        guard let value else {
            if required { throw KetenpoortError(.invalidRequest, "`\(path)` is required") }
            return nil
        }
        guard let s = value.stringValue, !s.isEmpty, s.utf8.count <= 4_096 else { throw KetenpoortError(.invalidRequest, "`\(path)` must be non-empty text") }
        return s
    }

    static func texts(_ value: JSONValue?, _ path: String) throws -> [String] {
        guard let items = value?.arrayValue, !items.isEmpty else { throw KetenpoortError(.invalidRequest, "`\(path)` must be a non-empty list of text") }
        return try items.map { item in
            guard let s = item.stringValue, !s.isEmpty else { throw KetenpoortError(.invalidRequest, "`\(path)` must be a list of text") }
            return s
        }
    }

    /// An optional boolean member: absent gives `default`; anything but `true` or `false` is
    /// refused (a `"false"` read as "not given" would quietly turn into the default).
    static func flag(_ value: JSONValue?, _ path: String, default fallback: Bool) throws -> Bool {
        guard let value else { return fallback }
        guard let b = value.boolValue else { throw KetenpoortError(.invalidRequest, "`\(path)` must be true or false") }
        return b
    }

    static let reporterKinds: Set<String> = ["professional", "bystander"]

    /// An id from the policies or the registry (case table, purpose, partner, consent): letters,
    /// digits and `._:-`, at most 128 bytes. Whatever a request names is logged, also when it is
    /// refused, so free text (a name typed in the wrong field) is refused before that.
    static func identifier(_ value: JSONValue?, _ path: String) throws -> String {
        let text = try ExchangeService.text(value, path)!
        let bytes = text.utf8
        guard bytes.count <= 128, let first = bytes.first, isIdentifierByte(first), first != UInt8(ascii: "."),
            bytes.allSatisfy({ isIdentifierByte($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: ":") })
        else {
            throw KetenpoortError(.invalidRequest, "`\(path)` must be an id (letters, digits, `.`, `_`, `:`, `-`; at most 128), as the policies and the registry give it")
        }
        return text
    }

    private static func isIdentifierByte(_ b: UInt8) -> Bool {
        (48...57).contains(b) || (65...90).contains(b) || (97...122).contains(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
    }

    static func bsn(_ value: JSONValue?, _ path: String) throws -> BSN {
        guard let text = value?.stringValue else { throw KetenpoortError(.invalidRequest, "`\(path)` is required (nine digits)") }
        do { return try BSN(text) } catch { throw KetenpoortError(.invalidBSN, "`\(path)` is not a valid BSN (nine digits passing the 11-check)") }
    }

    static func date(_ value: JSONValue?, _ path: String) throws -> String? {
        guard let value else { return nil }
        guard let s = value.stringValue, CalendarDate.isValid(s) else {
            throw KetenpoortError(.invalidRequest, "`\(path)` must be a date YYYY-MM-DD (a real day)")
        }
        return s
    }

    func logRef(_ bsn: BSN) throws -> String { try audit.recorder.subjectPseudonym(bsn) }

    static var today: String { String(AuditClock.timestamp().prefix(10)) }

    func sealPayload(_ payload: JSONValue, recipient: String, exchangeID: String) throws -> [UInt8] {
        let keys = audit.keys.keys
        let gcm = try AESGCM(key: try keys.derivedKey(use: "inbox", domain: recipient))
        return try gcm.seal(payload.serializedBytes(), associatedData: Array(exchangeID.utf8), after: Array(keys.currentKeyID.utf8) + [0])
    }

    func openPayload(_ sealed: [UInt8], recipient: String, exchangeID: String) throws -> JSONValue {
        guard let zero = sealed.firstIndex(of: 0) else { throw KetenpoortError(.crypto, "sealed payload without a key id") }
        let id = String(decoding: sealed[..<zero], as: UTF8.self)
        let gcm = try AESGCM(key: try audit.keys.keys.derivedKey(use: "inbox", domain: recipient, keyID: id))
        return try JSONParser.parse(bytes: try gcm.open(Array(sealed[(zero + 1)...]), associatedData: Array(exchangeID.utf8)))
    }

    // MARK: POST /v1/exchanges

    /// A UUIDv7-style id: 48 bits of milliseconds, then random bits. Ids sort by time, so new
    /// exchange rows land at the end of the table's index instead of on a random page (fewer
    /// pages in every commit's WAL write).
    static func timeOrderedID() -> String {
        var bytes = (try? Crypto.randomBytes(16)) ?? Array(UUID().uuidString.utf8.prefix(16))
        let millis = UInt64(Date().timeIntervalSince1970 * 1000)
        for i in 0..<6 { bytes[i] = UInt8((millis >> (40 - 8 * UInt64(i))) & 0xff) }
        bytes[6] = (bytes[6] & 0x0f) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80  // RFC 9562 variant
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (i, group) in [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].enumerated() {
            if i > 0 { out.append(UInt8(ascii: "-")) }
            Hex.append(bytes[group], to: &out)
        }
        return String(decoding: out, as: UTF8.self)
    }

    static let exchangeMembers: Set<String> = ["caseTable", "purpose", "recipient", "caseRef", "basis", "subjects", "data", "reporter"]

    /// Whether the exchange tables are local (SQLite): reads then take microseconds and
    /// `POST /v1/exchanges` runs on the connection's event loop. Over the network (PostgreSQL),
    /// and for a request whose Idempotency-Key must be claimed (a write), the synchronous part
    /// runs in a task instead, so an event loop never waits for a server or a lock.
    var readsAreLocal: Bool { repository.isLocal }

    /// `POST /v1/exchanges`: decides synchronously, then calls `answer` exactly once — at once
    /// for a refusal or a replay, otherwise from the log's writer thread when the entry and the
    /// delivery record are durable. No task and no continuation: one hop to the writer and one
    /// back to the event loop.
    func submitExchange(_ request: GatewayRequest, caller: Caller, answer: @escaping @Sendable (GatewayResponse) -> Void) {
        let route = "/v1/exchanges"
        do {
            try postExchange(request, caller: try partner(caller), answer: answer)
        } catch let error as KetenpoortError {
            answer(.problem(for: error, route: route))
        } catch {
            answer(.problem(.internalServerError, code: .internalError, title: "Internal error", detail: "the request failed", route: route))
        }
    }

    /// Throws for what is refused before the log is written; otherwise `answer` is called once.
    func postExchange(_ request: GatewayRequest, caller: Partner, answer: @escaping @Sendable (GatewayResponse) -> Void) throws {
        let (json, _) = try body(request)
        let idempotencyKey = request.headers.first(name: "idempotency-key")
        var canonicalHash: [UInt8] = []
        if let key = idempotencyKey {
            guard !key.isEmpty, key.utf8.count <= 200 else { throw KetenpoortError(.invalidRequest, "`Idempotency-Key` must be 1 to 200 characters") }
            canonicalHash = Crypto.sha256(Array(json.serialized(sortedKeys: true).utf8))
            // The key is claimed in the database before the request is decided, so two requests
            // with one key (also through two gateway instances) are never both carried out.
            let now = AuditClock.timestamp()
            let staleBefore = AuditClock.timestamp(Date().addingTimeInterval(-ExchangeService.idempotencyClaimTimeout))
            for _ in 0..<2 {
                if try repository.claimIdempotencyKey(sender: caller.id, key: key, bodyHash: canonicalHash, now: now, staleBefore: staleBefore) {
                    do {
                        try decide(json, caller: caller, idempotency: (key, canonicalHash, now), answer: answer)
                        return
                    } catch {
                        // Nothing was decided or logged: a retry may try again.
                        try? repository.releaseIdempotencyKey(sender: caller.id, key: key, claimedAt: now)
                        throw error
                    }
                }
                guard let stored = try repository.idempotentAnswer(sender: caller.id, key: key) else { continue }  // released meanwhile
                guard stored.bodyHash == canonicalHash else {
                    throw KetenpoortError(.idempotencyConflict, "this Idempotency-Key was used with another request body")
                }
                guard !stored.inProgress else {
                    throw KetenpoortError(.idempotencyConflict, "a request with this Idempotency-Key is in progress; retry it")
                }
                answer(replay(stored))
                return
            }
            throw KetenpoortError(.idempotencyConflict, "a request with this Idempotency-Key is in progress; retry it")
        }
        try decide(json, caller: caller, idempotency: nil, answer: answer)
    }

    /// A claim older than this is an instance that died mid-request: another may take it over.
    static let idempotencyClaimTimeout: TimeInterval = 60

    func replay(_ stored: ExchangeRepository.StoredAnswer) -> GatewayResponse {
        // The answer as first sent: its log position was its last member.
        let body = stored.logSequence.map { ExchangeService.answer(stored.answer, logSequence: $0) } ?? Array(stored.answer.utf8)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: stored.status == 201 ? "application/json" : "application/problem+json")
        if stored.status == 201, let id = (try? JSONParser.parse(stored.answer))?["exchangeId"]?.stringValue {
            headers.add(name: "location", value: "/v1/exchanges/\(id)")  // as the first answer had it
        }
        headers.add(name: "idempotent-replayed", value: "true")
        return GatewayResponse(status: HTTPResponseStatus(statusCode: stored.status), headers: headers, body: body, route: "/v1/exchanges")
    }

    /// An answer stored without its log position (a JSON object), with `logSequence` appended as
    /// its last member: the position is known only once the entry is numbered.
    static func answer(_ stored: String, logSequence: Int64) -> [UInt8] {
        var bytes = Array(stored.utf8)
        guard bytes.last == UInt8(ascii: "}") else { return bytes }
        bytes.removeLast()
        if bytes.last != UInt8(ascii: "{") { bytes.append(UInt8(ascii: ",")) }
        bytes.append(contentsOf: "\"logSequence\":\(logSequence)}".utf8)
        return bytes
    }

    func decide(
        _ json: JSONValue, caller: Partner, idempotency: (key: String, hash: [UInt8], claimedAt: String)?,
        answer: @escaping @Sendable (GatewayResponse) -> Void
    ) throws {
        try ExchangeService.only(json, ExchangeService.exchangeMembers, at: "")
        let caseTable = try ExchangeService.identifier(json["caseTable"], "caseTable")
        let purpose = try ExchangeService.identifier(json["purpose"], "purpose")
        let recipient = try ExchangeService.identifier(json["recipient"], "recipient")
        _ = try ExchangeService.text(json["caseRef"], "caseRef", required: false)
        guard let basis = json["basis"], basis.objectValue != nil else { throw KetenpoortError(.invalidRequest, "`basis` is required: an object with `type`") }
        try ExchangeService.only(
            basis, ["type", "consentIds", "ground", "justification", "professional", "meldcode", "conflictOfDuties", "article"], at: "basis")
        for (i, id) in (basis["consentIds"]?.arrayValue ?? []).enumerated() { _ = try ExchangeService.identifier(id, "basis.consentIds[\(i)]") }
        guard let subjectItems = json["subjects"]?.arrayValue, !subjectItems.isEmpty, subjectItems.count <= 20 else {
            throw KetenpoortError(.invalidRequest, "`subjects` must list 1 to 20 people the exchange is about")
        }
        guard let data = json["data"], let categories = data.objectValue, !categories.isEmpty else {
            throw KetenpoortError(.invalidRequest, "`data` must be an object of categories, each an object of fields")
        }
        for (category, value) in categories {
            guard value.objectValue != nil else { throw KetenpoortError(.invalidRequest, "`data.\(category)` must be an object of fields") }
        }
        let date = ExchangeService.today
        // Subjects: the BSN becomes the log pseudonym (the ref the registry and the policy use).
        var subjects: [(bsn: BSN, ref: String, role: String, age: Int?, competent: Bool)] = []
        for (i, item) in subjectItems.enumerated() {
            try ExchangeService.only(item, ["bsn", "role", "age", "competent"], at: "subjects[\(i)]")
            let bsn = try ExchangeService.bsn(item["bsn"], "subjects[\(i)].bsn")
            let role = try ExchangeService.text(item["role"], "subjects[\(i)].role", required: false) ?? "subject"
            if let age = item["age"], age.intValue.map({ (0...130).contains($0) }) != true {
                throw KetenpoortError(.invalidRequest, "`subjects[\(i)].age` must be a whole number of years")
            }
            let competent = try ExchangeService.flag(item["competent"], "subjects[\(i)].competent", default: true)
            subjects.append((bsn, try logRef(bsn), role, item["age"]?.intValue, competent))
        }
        let refs = subjects.map(\.ref)
        let facts = try repository.facts(caseTable: caseTable, subjects: refs)
        let consents = try repository.consents(caseTable: caseTable, subjects: refs)
        // The decision request, built directly (the same reading as DecisionRequest(json:), which
        // the policy tests use: consents and facts from the registry, reporter from the body).
        var caseFacts = CaseFacts(date: date)
        // Jw 7.3.11-4 lets data go to the institution carrying out *that* child's order: when the
        // subjects' orders name different institutions, none of them is that for every subject.
        var orderInstitutions = Set<String?>()
        for ref in refs {
            let f = facts[ref] ?? [:]
            if f["case-closed"]?["closed"]?.boolValue == true { caseFacts.caseClosed = true }
            if f["vt-investigation"]?["open"]?.boolValue == true { caseFacts.vtInvestigationOpen = true }
            if let o = f["supervision-order"], o["active"]?.boolValue == true {
                caseFacts.supervisionOrderActive = true
                orderInstitutions.insert(o["institution"]?.stringValue)
                caseFacts.supervisionOrderInstitution = orderInstitutions.count == 1 ? o["institution"]?.stringValue : nil
            }
            for from in f["keep-apart"]?["from"]?.arrayValue ?? [] {
                guard let other = from.stringValue, !other.isEmpty else { throw KetenpoortError(.invalidRequest, "a registered keep-apart fact is malformed") }
                caseFacts.keepApart.append((ref, other))
            }
        }
        if let reporter = json["reporter"] {
            // Reporter protection turns on exact values (a bystander, a protected reporter): a
            // misspelt kind or a quoted boolean would switch it off silently, so they are refused.
            try ExchangeService.only(reporter, ["kind", "protected", "consented"], at: "reporter")
            if let kind = reporter["kind"] {
                guard let k = kind.stringValue, ExchangeService.reporterKinds.contains(k) else {
                    throw KetenpoortError(.invalidRequest, "`reporter.kind` must be one of \(ExchangeService.reporterKinds.sorted().joined(separator: ", "))")
                }
                caseFacts.reporterKind = k
            }
            caseFacts.reporterProtected = try ExchangeService.flag(reporter["protected"], "reporter.protected", default: false)
            caseFacts.reporterConsented = try ExchangeService.flag(reporter["consented"], "reporter.consented", default: false)
        }
        for c in consents {
            guard Vocabulary.grantors.contains(c.grantor) else { throw KetenpoortError(.invalidRequest, "a registered consent has an unknown grantor") }
            caseFacts.consents.append(
                ConsentFact(
                    id: c.id, subject: c.subject, grantor: c.grantor, grantorRef: c.grantorRef, purposes: Set(c.purposes), recipients: Set(c.recipients),
                    categories: Set(c.categories), validFrom: c.validFrom, validUntil: c.validUntil, withdrawn: c.status != "active"))
        }
        var fields = Set<String>()
        for (category, value) in categories {
            for (field, fieldValue) in value.objectValue ?? [] {
                // Checked before the decision, so a refusal does not hide a malformed BSN.
                if field == "bsn", fieldValue.stringValue.map(BSN.isValid) != true {
                    throw KetenpoortError(.invalidBSN, "`data.\(category.prefix(64)).bsn` is not a valid BSN (nine digits passing the 11-check)")
                }
                fields.insert(category + "." + field)
            }
        }
        // Reporter protection turns on who the reporter is: data that names the reporter comes
        // with the `reporter` it names (a bystander or a professional), never without.
        if fields.contains("concern_signal.reporter") && caseFacts.reporterKind == nil {
            throw KetenpoortError(
                .invalidRequest, "`data.concern_signal.reporter` names the reporter: say who that is in `reporter` (`kind`: professional or bystander, `protected`, `consented`)")
        }
        let decisionRequest = DecisionRequest(
            sender: caller.id, caseTable: caseTable, purpose: purpose, recipient: recipient, basis: try DecisionRequest.basis(basis),
            subjects: subjects.map { s in
                Subject(
                    ref: s.ref, role: s.role, age: s.age, competent: s.competent,
                    custodyHolders: (facts[s.ref]?["custody"]?["holders"]?.arrayValue ?? []).compactMap(\.stringValue),
                    guardian: facts[s.ref]?["guardianship"]?["institution"]?.stringValue)
            },
            fields: fields, facts: caseFacts)
        let snapshot = state.snapshot
        let decision = snapshot.policySet.evaluate(decisionRequest)
        let exchangeID = ExchangeService.timeOrderedID()
        var texts: [String: String] = [:]
        if let j = basis["justification"]?.stringValue { texts["justification"] = j }
        if let c = basis["conflictOfDuties"] { texts["conflictOfDuties"] = c.serialized(sortedKeys: true) }
        if let p = basis["professional"]?.stringValue { texts["professional"] = p }
        var event = ExchangeEvent(exchangeID: exchangeID, request: decisionRequest, decision: decision, subjects: subjects.map(\.bsn), texts: texts)
        event.subjectPseudonyms = refs  // made above from the same BSNs; not computed twice
        var record = try audit.recorder.exchange(event, registry: snapshot.registry)
        let obligations = decision.obligations
        let now = AuditClock.timestamp()
        let status: Int
        var answerMembers: [(String, JSONValue)]
        if decision.isPermit {
            let domain = Pseudonymiser.recipientDomain(caseTable: caseTable, recipient: recipient)
            let output = try applier.apply(data: data, released: obligations.released, domain: domain, referenceDate: date)
            var payload: [(String, JSONValue)] = [
                ("exchangeId", .string(exchangeID)), ("sender", .string(caller.id)), ("caseTable", .string(caseTable)), ("purpose", .string(purpose)),
                ("basis", .string(decisionRequest.basis.type)),
                ("subjects", .array(try subjects.map { .object([("ref", .string(try applier.pseudonymiser.pseudonym(of: $0.bsn, domain: domain))), ("role", .string($0.role))]) })),
                ("data", output.data), ("released", .array(output.released.map { .string($0) })), ("withheld", .array(output.withheld.map { .string($0) })),
                ("informSubjectBy", obligations.informSubjectBy.map { .string($0) } ?? .null),
            ]
            if let caseRef = json["caseRef"] { payload.append(("caseRef", caseRef)) }
            let sealed = try sealPayload(.object(payload), recipient: recipient, exchangeID: exchangeID)
            record.sideWrites.append(
                ExchangeRepository.inboxRow(exchangeID: exchangeID, recipient: recipient, sealed: sealed, deliveredAt: now, retainUntil: record.retainUntil))
            status = 201
            answerMembers = [
                ("exchangeId", .string(exchangeID)), ("decision", "permit"), ("released", .array(output.released.map { .string($0) })),
                ("withheld", .array(output.withheld.map { .string($0) })), ("review", .bool(obligations.review)),
                ("informSubjectBy", obligations.informSubjectBy.map { .string($0) } ?? .null),
            ]
        } else {
            status = 403
            let reasons: [JSONValue] = decision.trace.filter { decision.rules.contains($0.id) }.map {
                .object([("rule", .string($0.id)), ("explanation", .string("\($0.label) — \($0.reason)"))])
            }
            answerMembers = [
                ("type", .string("https://ketenpoort.nl/problems/exchange_denied")), ("title", "Exchange denied"), ("status", 403),
                ("detail", .string("the policy of `\(caseTable)` does not permit this exchange")), ("code", "exchange_denied"),
                ("exchangeId", .string(exchangeID)), ("reasons", .array(reasons)),
            ]
        }
        // The answer is stored with the exchange (its log position is bound in the same row).
        let answerWithoutSequence = JSONValue.object(answerMembers).serialized()
        record.sideWrites.append(
            ExchangeRepository.exchangeRow(
                id: exchangeID, sender: caller.id, recipient: recipient, caseTable: caseTable, purpose: purpose, decision: decision.effect.rawValue,
                answer: answerWithoutSequence, review: decision.isPermit && obligations.review ? "pending" : "none", ground: decisionRequest.basis.ground,
                informSubjectBy: obligations.informSubjectBy, createdAt: now))
        // The claimed key gets the answer — only while the claim is still this request's; the
        // log position, known only once the entry is numbered, is bound as the entry's sequence.
        if let idempotency {
            record.precondition = ExchangeRepository.idempotentAnswer(
                sender: caller.id, key: idempotency.key, claimedAt: idempotency.claimedAt, status: status, answer: answerWithoutSequence)
            record.sideWrites.append(ExchangeRepository.idempotentAnswerSequence(sender: caller.id, key: idempotency.key, claimedAt: idempotency.claimedAt))
        }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: status == 201 ? "application/json" : "application/problem+json")
        if status == 201 { headers.add(name: "location", value: "/v1/exchanges/\(exchangeID)") }
        // The answer was serialised once, above; the log position is appended as its last member
        // (as for a replayed answer).
        let repository = self.repository
        let responseHeaders = headers
        audit.record(record) { result in
            switch result {
            case .success(let sequence):
                answer(
                    GatewayResponse(
                        status: status == 201 ? .created : .forbidden, headers: responseHeaders, body: ExchangeService.answer(answerWithoutSequence, logSequence: sequence),
                        route: "/v1/exchanges"))
            case .failure(let error):
                // Nothing was logged or delivered: a retry with the same key may try again. (The
                // release matches this request's own claim only: one taken over meanwhile stays.)
                let refusal = GatewayResponse.problem(for: error, route: "/v1/exchanges")
                guard let idempotency else { return answer(refusal) }
                // This runs on the log's writer thread: the database write that gives the key
                // back goes elsewhere, so the writer never waits on the repository.
                DispatchQueue.global().async {
                    try? repository.releaseIdempotencyKey(sender: caller.id, key: idempotency.key, claimedAt: idempotency.claimedAt)
                    answer(refusal)
                }
            }
        }
    }

    // MARK: GET /v1/exchanges/{id}

    func getExchange(_ id: String, caller: Partner) throws -> GatewayResponse {
        // Existence is not revealed to anyone but the sender.
        guard let row = try repository.exchange(id: id), row.sender == caller.id else {
            throw KetenpoortError(.notFound, "no exchange `\(id.prefix(64))` of yours")
        }
        var members: [(String, JSONValue)] = [
            ("exchangeId", .string(row.id)), ("decision", .string(row.decision)), ("caseTable", .string(row.caseTable)), ("purpose", .string(row.purpose)),
            ("recipient", .string(row.recipient)), ("logSequence", .number(Double(row.logSequence))), ("decidedAt", .string(row.createdAt)),
            ("review", .string(row.reviewState)),
        ]
        if let answer = try? JSONParser.parse(row.answer) {
            for key in ["released", "withheld", "informSubjectBy", "reasons"] { if let v = answer[key] { members.append((key, v)) } }
        }
        if row.decision == "permit", let delivery = try repository.delivery(exchangeID: row.id) {
            members.append(
                ("delivery", .object([
                    ("state", .string(delivery.acknowledgedAt == nil ? "delivered" : "acknowledged")), ("deliveredAt", .string(delivery.deliveredAt)),
                    ("acknowledgedAt", delivery.acknowledgedAt.map { .string($0) } ?? .null),
                    ("pushedAt", delivery.pushedAt.map { .string($0) } ?? .null), ("pushAttempts", .number(Double(delivery.pushAttempts))),
                ])))
        } else {
            members.append(("delivery", .object([("state", "none")])))
        }
        return .json(.object(members), route: "/v1/exchanges/{id}")
    }

    // MARK: consents

    static let capacities: Set<String> = ["self", "parent_with_custody", "parent_without_custody", "guardian", "representative"]

    func postConsent(_ request: GatewayRequest, caller: Partner) async throws -> GatewayResponse {
        let (json, _) = try body(request)
        try ExchangeService.only(
            json, ["caseTable", "subject", "grantor", "purposes", "recipients", "categories", "validFrom", "validUntil", "evidenceRef"], at: "")
        let caseTable = try ExchangeService.text(json["caseTable"], "caseTable")!
        let snapshot = state.snapshot
        guard let table = snapshot.policySet.tables[caseTable] else {
            throw KetenpoortError(.invalidRequest, "`caseTable`: no case table `\(caseTable.prefix(64))` is declared")
        }
        guard table.isMember(caller, on: ExchangeService.today) else {
            throw KetenpoortError(.forbidden, "only members of `\(caseTable)` register consents for it")
        }
        guard let subject = json["subject"] else { throw KetenpoortError(.invalidRequest, "`subject` is required: {bsn, age, competent}") }
        try ExchangeService.only(subject, ["bsn", "age", "competent"], at: "subject")
        let subjectBSN = try ExchangeService.bsn(subject["bsn"], "subject.bsn")
        guard let age = subject["age"]?.intValue, (0...130).contains(age) else {
            throw KetenpoortError(.invalidRequest, "`subject.age` (whole years) is required: who may consent depends on it")
        }
        let competent = try ExchangeService.flag(subject["competent"], "subject.competent", default: true)
        guard let grantor = json["grantor"] else { throw KetenpoortError(.invalidRequest, "`grantor` is required: {capacity, bsn}") }
        try ExchangeService.only(grantor, ["capacity", "bsn"], at: "grantor")
        let capacity = try ExchangeService.text(grantor["capacity"], "grantor.capacity")!
        guard ExchangeService.capacities.contains(capacity) else {
            throw KetenpoortError(.invalidRequest, "`grantor.capacity` must be one of \(ExchangeService.capacities.sorted().joined(separator: ", "))")
        }
        // Who may consent (domain.md): the person from 12 when competent; below 12 or not
        // competent, every parent with custody (each registers their own consent).
        if capacity == "self" && (age < 12 || !competent) {
            throw KetenpoortError(.invalidRequest, "a person under 12 or not competent cannot consent; every parent with custody consents instead")
        }
        if capacity == "parent_with_custody" && age >= 12 && competent {
            throw KetenpoortError(.invalidRequest, "from 12, a competent young person consents alone; parents neither co-consent nor veto")
        }
        if capacity == "representative" && age < 18 {
            throw KetenpoortError(.invalidRequest, "a representative consents for an adult who cannot decide; for a minor, the parents with custody or a guardian do")
        }
        var grantorRef: String?
        if capacity == "guardian" {
            // A certified institution acting as guardian (voogd) consents in the parents' place
            // (domain.md); it registers that consent itself, so the grantor is the caller.
            guard caller.kind == "certified_institution" else {
                throw KetenpoortError(.forbidden, "a guardian's consent is registered by the certified institution acting as guardian itself")
            }
            guard age < 12 || !competent else {
                throw KetenpoortError(.invalidRequest, "from 12, a competent young person consents alone; a guardian does not consent for them")
            }
            guard grantor["bsn"] == nil else {
                throw KetenpoortError(.invalidRequest, "`grantor.bsn` does not belong to a guardian's consent: the registering institution is the grantor")
            }
            grantorRef = caller.id
        } else if capacity != "self" {
            guard grantor["bsn"] != nil || capacity == "representative" else {
                throw KetenpoortError(.invalidRequest, "`grantor.bsn` is required for a \(capacity)")
            }
            if grantor["bsn"] != nil { grantorRef = try logRef(try ExchangeService.bsn(grantor["bsn"], "grantor.bsn")) }
        }
        let purposes = try ExchangeService.texts(json["purposes"], "purposes")
        for p in purposes where table.purposes[p] == nil {
            throw KetenpoortError(.invalidRequest, "`purposes`: `\(p.prefix(64))` is not a purpose of `\(caseTable)`")
        }
        let recipients = try ExchangeService.texts(json["recipients"], "recipients")
        for r in recipients where snapshot.registry.partner(id: r) == nil && !(r.hasPrefix("kind:")) {
            throw KetenpoortError(.invalidRequest, "`recipients`: `\(r.prefix(64))` is not a partner (or `kind:<kind>`)")
        }
        let categories = try ExchangeService.texts(json["categories"], "categories")
        for c in categories where Vocabulary.fields[c] == nil {
            throw KetenpoortError(.invalidRequest, "`categories`: `\(c.prefix(64))` is not a data category")
        }
        let validFrom = try ExchangeService.date(json["validFrom"], "validFrom")
        let validUntil = try ExchangeService.date(json["validUntil"], "validUntil")
        if let f = validFrom, let u = validUntil, u < f { throw KetenpoortError(.invalidRequest, "`validUntil` is before `validFrom`") }
        let evidence = try ExchangeService.text(json["evidenceRef"], "evidenceRef", required: false)
        let consentID = "c-" + UUID().uuidString.lowercased()
        func list(_ items: [String]) -> String { JSONValue.array(items.map { .string($0) }).serialized() }
        var record = try audit.recorder.consent(.consentRegistered, consentID: consentID, sender: caller.id, subject: subjectBSN, purposes: purposes)
        record.members.append(("caseTable", .string(caseTable)))
        record.members.append(("grantor", .string(capacity)))
        record.members.append(("categories", .array(categories.sorted().map { .string($0) })))
        record.members.append(("recipients", .array(recipients.sorted().map { .string($0) })))
        if let evidence { record.texts.append(("evidenceRef", try audit.keys.seal(evidence))) }
        record.sideWrites.append(
            SideWrite(
                "INSERT INTO consents (id, case_table, subject, grantor, grantor_ref, purposes, recipients, categories, valid_from, valid_until, evidence_ref, registered_by, status, log_sequence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 'active', ?)",
                [
                    .text(consentID), .text(caseTable), .text(try logRef(subjectBSN)), .text(capacity), grantorRef.map { .text($0) } ?? .null,
                    .text(list(purposes)), .text(list(recipients)), .text(list(categories)), validFrom.map { .text($0) } ?? .null,
                    validUntil.map { .text($0) } ?? .null, .text(caller.id), .sequence,
                ]))
        record.sideWrites.append(
            SideWrite("INSERT INTO consent_history (consent_id, status, by_partner, log_sequence) VALUES (?, 'active', ?, ?)", [.text(consentID), .text(caller.id), .sequence]))
        let sequence = try await audit.record(record)
        return .json(["consentId": .string(consentID), "logSequence": .number(Double(sequence))], status: .created, route: "/v1/consents")
    }

    func withdrawConsent(_ id: String, caller: Partner) async throws -> GatewayResponse {
        guard let consent = try repository.consent(id: id), consent.registeredBy == caller.id else {
            throw KetenpoortError(.notFound, "no consent `\(id.prefix(64))` registered by you")
        }
        let withdrawnBefore = GatewayResponse.json(["consentId": .string(id), "status": "withdrawn"], route: "/v1/consents/{id}/withdraw")
        if consent.status == "withdrawn" { return withdrawnBefore }
        var record = AuditRecord(
            kind: AuditKind.consentWithdrawn.rawValue,
            members: [("consentId", .string(id)), ("sender", .string(caller.id)), ("caseTable", .string(consent.caseTable))], subjects: [consent.subject])
        // Logged only by the withdrawal that changes the consent: one racing this one (a retry,
        // another instance) gets the answer of a repeated withdrawal.
        record.precondition = Precondition(
            "UPDATE consents SET status = 'withdrawn' WHERE id = ? AND status <> 'withdrawn'", [.text(id)],
            otherwise: KetenpoortError(.conflict, "consent `\(id.prefix(64))` was withdrawn meanwhile"))
        record.sideWrites.append(
            SideWrite("INSERT INTO consent_history (consent_id, status, by_partner, log_sequence) VALUES (?, 'withdrawn', ?, ?)", [.text(id), .text(caller.id), .sequence]))
        let sequence: Int64
        do {
            sequence = try await audit.record(record)
        } catch let error as KetenpoortError where error.code == .conflict {
            return withdrawnBefore
        }
        return .json(["consentId": .string(id), "status": "withdrawn", "logSequence": .number(Double(sequence))], route: "/v1/consents/{id}/withdraw")
    }

    // MARK: case facts

    /// Fact types and the partner kinds entitled to register them.
    static let factTypes: [String: (members: Set<String>, kinds: Set<String>)] = [
        "supervision-order": (["active", "institution"], ["child_protection_board", "certified_institution"]),
        "vt-investigation": (["open"], ["veilig_thuis"]),
        "keep-apart": (["from"], ["veilig_thuis", "police", "womens_shelter"]),
        "custody": (["holders"], ["local_team", "veilig_thuis", "child_protection_board", "certified_institution"]),
        "case-closed": (["closed"], ["local_team", "veilig_thuis", "child_protection_board", "certified_institution", "care_safety_house"]),
        // The certified institution acting as guardian (voogd): its consent stands in for the
        // parents' (see the consent registry).
        "guardianship": (["institution"], ["child_protection_board", "certified_institution"]),
    ]

    func postFact(_ request: GatewayRequest, caller: Partner) async throws -> GatewayResponse {
        let (json, _) = try body(request)
        try ExchangeService.only(json, ["caseTable", "type", "subject", "active", "institution", "open", "from", "holders", "closed"], at: "")
        let caseTable = try ExchangeService.text(json["caseTable"], "caseTable")!
        guard let table = state.snapshot.policySet.tables[caseTable] else {
            throw KetenpoortError(.invalidRequest, "`caseTable`: no case table `\(caseTable.prefix(64))` is declared")
        }
        let type = try ExchangeService.text(json["type"], "type")!
        guard let spec = ExchangeService.factTypes[type] else {
            throw KetenpoortError(.invalidRequest, "`type` must be one of \(ExchangeService.factTypes.keys.sorted().joined(separator: ", "))")
        }
        guard spec.kinds.contains(caller.kind), table.isMember(caller, on: ExchangeService.today) else {
            throw KetenpoortError(.forbidden, "a \(caller.kind) may not register `\(type)` facts for `\(caseTable)`")
        }
        let subject = try logRef(try ExchangeService.bsn(json["subject"], "subject"))
        for (key, _) in json.objectValue ?? [] where !["caseTable", "type", "subject"].contains(key) && !spec.members.contains(key) {
            throw KetenpoortError(.invalidRequest, "`\(key)` does not belong to a `\(type)` fact; expected \(spec.members.sorted().joined(separator: ", "))")
        }
        var value: [(String, JSONValue)] = []
        switch type {
        case "supervision-order":
            guard let active = json["active"]?.boolValue else { throw KetenpoortError(.invalidRequest, "`active` (true or false) is required") }
            value.append(("active", .bool(active)))
            if active {
                let institution = try ExchangeService.text(json["institution"], "institution")!
                guard state.snapshot.registry.partner(id: institution)?.kind == "certified_institution" else {
                    throw KetenpoortError(.invalidRequest, "`institution` must be a certified institution in partners.yaml")
                }
                value.append(("institution", .string(institution)))
            }
        case "vt-investigation":
            guard let open = json["open"]?.boolValue else { throw KetenpoortError(.invalidRequest, "`open` (true or false) is required") }
            value.append(("open", .bool(open)))
        case "keep-apart":
            guard let items = json["from"]?.arrayValue, !items.isEmpty else { throw KetenpoortError(.invalidRequest, "`from` must list the BSNs the subject is kept from") }
            value.append(("from", .array(try items.enumerated().map { .string(try logRef(try ExchangeService.bsn($1, "from[\($0)]"))) })))
        case "guardianship":
            let institution = try ExchangeService.text(json["institution"], "institution")!
            guard state.snapshot.registry.partner(id: institution)?.kind == "certified_institution" else {
                throw KetenpoortError(.invalidRequest, "`institution` must be a certified institution in partners.yaml")
            }
            value.append(("institution", .string(institution)))
        case "custody":
            guard let items = json["holders"]?.arrayValue, items.count <= 4 else { throw KetenpoortError(.invalidRequest, "`holders` must list the BSNs of the parents with custody") }
            value.append(("holders", .array(try items.enumerated().map { .string(try logRef(try ExchangeService.bsn($1, "holders[\($0)]"))) })))
        default:
            guard let closed = json["closed"]?.boolValue else { throw KetenpoortError(.invalidRequest, "`closed` (true or false) is required") }
            value.append(("closed", .bool(closed)))
        }
        let factValue = JSONValue.object(value)
        var record = AuditRecord(
            kind: AuditKind.factRegistered.rawValue,
            members: [("caseTable", .string(caseTable)), ("sender", .string(caller.id)), ("fact", .string(type)), ("value", factValue)], subjects: [subject])
        record.sideWrites.append(
            SideWrite(
                "INSERT INTO case_facts (case_table, subject, type, value, registered_by, log_sequence) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (case_table, subject, type) DO UPDATE SET value = excluded.value, registered_by = excluded.registered_by, log_sequence = excluded.log_sequence",
                [.text(caseTable), .text(subject), .text(type), .text(factValue.serialized()), .text(caller.id), .sequence]))
        let sequence = try await audit.record(record)
        return .json(["type": .string(type), "logSequence": .number(Double(sequence))], status: .created, route: "/v1/facts")
    }

    // MARK: inbox

    func inbox(_ request: GatewayRequest, caller: Partner) throws -> GatewayResponse {
        let after = try request.query["after"].map { text -> Int64 in
            guard let n = Int64(text), n >= 0 else { throw KetenpoortError(.invalidRequest, "`after` must be a cursor from `next`") }
            return n
        } ?? 0
        let limit = try request.query["limit"].map { text -> Int in
            guard let n = Int(text), (1...500).contains(n) else { throw KetenpoortError(.invalidRequest, "`limit` must be from 1 to 500") }
            return n
        } ?? 50
        let rows = try repository.inbox(recipient: caller.id, after: after, limit: limit)
        var items: [JSONValue] = []
        for row in rows {
            guard let sealed = row.sealed else { continue }
            var payload = try openPayload(sealed, recipient: caller.id, exchangeID: row.exchangeID)
            if case .object(var members) = payload {
                members.insert(("id", .string(String(row.id))), at: 0)
                members.append(("deliveredAt", .string(row.deliveredAt)))
                payload = .object(members)
            }
            items.append(payload)
        }
        let next: JSONValue = rows.last.map { .string(String($0.id)) } ?? (after > 0 ? .string(String(after)) : .null)
        return .json(["items": .array(items), "next": next], route: "/v1/inbox")
    }

    func acknowledge(_ id: String, caller: Partner) throws -> GatewayResponse {
        let outcome = try Int64(id).flatMap { $0 > 0 ? $0 : nil }.map { try repository.acknowledge(id: $0, recipient: caller.id, at: AuditClock.timestamp()) }
        guard let outcome, outcome != .notFound else {
            throw KetenpoortError(.notFound, "no inbox item `\(id.prefix(32))` of yours")
        }
        // A repeated acknowledgement (a retry, or one through another instance) changes nothing.
        return .json(
            ["id": .string(id), "state": "acknowledged", "acknowledgedBefore": .bool(outcome == .alreadyAcknowledged)], route: "/v1/inbox/{id}/ack")
    }

    // MARK: reviews

    func reviews(caller: Officer) throws -> GatewayResponse {
        let rows = try repository.pendingReviews(limit: 200)
        var items: [JSONValue] = []
        for row in rows {
            var members: [(String, JSONValue)] = [
                ("exchangeId", .string(row.id)), ("caseTable", .string(row.caseTable)), ("sender", .string(row.sender)), ("recipient", .string(row.recipient)),
                ("purpose", .string(row.purpose)), ("ground", .string(row.ground)), ("decidedAt", .string(row.createdAt)),
                ("informSubjectBy", row.informSubjectBy.map { .string($0) } ?? .null), ("logSequence", .number(Double(row.logSequence))),
            ]
            // The officer reads the sealed justification (opened with the log key).
            if let entry = try audit.read({ try $0.entry(sequence: row.logSequence) }), let body = entry.body,
                let texts = (try? JSONParser.parse(body))?["texts"]?.objectValue
            {
                var opened: [(String, JSONValue)] = []
                for (name, hash) in texts {
                    if let h = hash.stringValue.flatMap(Hex.decode), let sealed = try audit.read({ try $0.sealedText(sequence: row.logSequence, hash: h) }) {
                        opened.append((name, .string(try audit.keys.open(sealed))))
                    }
                }
                members.append(("texts", .object(opened)))
            }
            items.append(.object(members))
        }
        return .json(["items": .array(items)], route: "/v1/reviews")
    }

    static let outcomes: Set<String> = ["upheld", "not-upheld", "needs-follow-up"]

    func postReview(_ id: String, _ request: GatewayRequest, caller: Officer) async throws -> GatewayResponse {
        let (json, _) = try body(request)
        try ExchangeService.only(json, ["outcome", "comment"], at: "")
        let outcome = try ExchangeService.text(json["outcome"], "outcome")!
        guard ExchangeService.outcomes.contains(outcome) else {
            throw KetenpoortError(.invalidRequest, "`outcome` must be one of \(ExchangeService.outcomes.sorted().joined(separator: ", "))")
        }
        let comment = try ExchangeService.text(json["comment"], "comment", required: false)
        guard let row = try repository.exchange(id: id), row.reviewState == "pending" else {
            throw KetenpoortError(.notFound, "no exchange `\(id.prefix(64))` awaiting review")
        }
        var record = try audit.recorder.review(exchangeID: id, officer: caller.id, outcome: outcome, comment: comment)
        // A review racing this one passed the check above too: 409 for whichever commits second.
        record.precondition = ExchangeRepository.review(exchangeID: id, outcome: outcome)
        let sequence = try await audit.record(record)
        return .json(["exchangeId": .string(id), "review": .string(outcome), "logSequence": .number(Double(sequence))], route: "/v1/reviews/{id}")
    }
}
