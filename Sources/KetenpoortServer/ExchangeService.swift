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
            // The name is repeated only when it is shaped like a member name: a request can put
            // anything in a name, a BSN or a person's name too, and a detail never holds those.
            let shown = ExchangeService.looksLikeMemberName(key) ? "`\(path.isEmpty ? key : path + "." + key)`" : (path.isEmpty ? "(its name is not shown)" : "in `\(path)` (its name is not shown)")
            throw KetenpoortError(.invalidRequest, "unknown member \(shown); expected one of \(allowed.sorted().joined(separator: ", "))")
        }
    }

    /// An ASCII letter, then letters, digits or `_`; at most 64: what a misspelt member looks like
    /// (never a BSN, a date or a sentence).
    static func looksLikeMemberName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 64, (65...90).contains(first) || (97...122).contains(first) else { return false }
        return bytes.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == UInt8(ascii: "_") }
    }

    /// The most bytes (UTF-8) a text member may have.
    static let textLimit = 4_096

    static func text(_ value: JSONValue?, _ path: String, required: Bool = true) throws -> String? {
        guard let value else {
            if required { throw KetenpoortError(.invalidRequest, "`\(path)` is required") }
            return nil
        }
        guard let s = value.stringValue, !s.isEmpty, s.utf8.count <= textLimit else {
            throw KetenpoortError(.invalidRequest, "`\(path)` must be non-empty text of at most \(textLimit) bytes")
        }
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
    /// The index of the first item that equals an earlier one.
    static func firstRepeat(in items: [BSN]) -> Int? {
        var seen = Set<BSN>()
        for (i, item) in items.enumerated() where !seen.insert(item).inserted { return i }
        return nil
    }

    /// What an undeclared case table, purpose or recipient is decided and logged as (not an id:
    /// no policy can declare it).
    static let undeclared = "(undeclared)"
    /// What a consent id not registered for the exchange's subjects is decided and logged as.
    static let unregistered = "(unregistered)"

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

    /// Today as a Dutch calendar day: consents, memberships and the date to inform a family run
    /// to the end of the day in the Netherlands, not in UTC.
    static var today: String { CalendarDate.dutchDay() }

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
        if let given = idempotencyKey {
            guard !given.isEmpty, given.utf8.count <= 200 else { throw KetenpoortError(.invalidRequest, "`Idempotency-Key` must be 1 to 200 characters") }
            // Stored as its hash: the key is the client's choice of text (a BSN or a case number
            // can be used as one), and only equality is needed.
            let key = "sha256:" + Hex.encode(Crypto.sha256(Array(given.utf8)))
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

    /// The `category.field` paths `data` carries, checked before anything is decided or logged:
    /// - every category, and every field of it, is a name of the field catalogue: whatever else a
    ///   request put there (a name, a BSN typed as a key) would reach the log's `withheld` lists
    ///   in clear, for good;
    /// - every member `bsn`, at any depth (`data.identity.bsn`, `data.household.members[].bsn`),
    ///   is a valid BSN of a person listed in `subjects` (the BSNs' digits): consent coverage,
    ///   the forbid rules (a closed case) and the log's subject index see only `subjects`, so a
    ///   person whose data flows must be among them. Checked also for an exchange that would be
    ///   refused, so that a refusal does not hide a malformed BSN.
    /// No name or value of the request is echoed; the catalogue's own names are.
    static func dataFields(_ categories: [(String, JSONValue)], subjects: Set<String>) throws -> Set<String> {
        var fields = Set<String>()
        for (category, value) in categories {
            guard let known = Vocabulary.fields[category] else {
                throw KetenpoortError(
                    .invalidRequest, "`data` holds a category that is not in the field catalogue; the categories are \(FieldCatalogue.shared.categories.joined(separator: ", "))")
            }
            guard let members = value.objectValue else { throw KetenpoortError(.invalidRequest, "`data.\(category)` must be an object of fields") }
            for (field, fieldValue) in members {
                guard known.contains(field) else {
                    throw KetenpoortError(
                        .invalidRequest,
                        "`data.\(category)` holds a field that the field catalogue does not know for `\(category)`; its fields are \(known.sorted().joined(separator: ", "))")
                }
                let path = category + "." + field
                if field == "bsn" {
                    try subjectBSN(fieldValue, "`data.\(path)`", subjects: subjects)
                } else {
                    try nestedBSNs(fieldValue, in: path, subjects: subjects)
                }
                fields.insert(path)
            }
        }
        return fields
    }

    /// Every member `bsn` inside the value of the field at `path`, at any depth. (The member
    /// names inside a field's value are the request's: only the field's path is named.)
    static func nestedBSNs(_ value: JSONValue, in path: String, subjects: Set<String>) throws {
        switch value {
        case .object(let members):
            for (key, member) in members {
                if key == "bsn" { try subjectBSN(member, "a `bsn` in `data.\(path)`", subjects: subjects) } else { try nestedBSNs(member, in: path, subjects: subjects) }
            }
        case .array(let items):
            for item in items { try nestedBSNs(item, in: path, subjects: subjects) }
        default:
            return
        }
    }

    /// A BSN in `data` (described by `what`): valid, and one of the subjects' (the value never echoed).
    static func subjectBSN(_ value: JSONValue, _ what: String, subjects: Set<String>) throws {
        guard let text = value.stringValue, BSN.isValid(text) else {
            throw KetenpoortError(.invalidBSN, "\(what) is not a valid BSN (nine digits passing the 11-check)")
        }
        guard subjects.contains(text) else {
            throw KetenpoortError(
                .invalidRequest,
                "`data` holds the BSN of a person who is not among `subjects` (\(what)): list every person whose data flows in `subjects`, with their role")
        }
    }

    func decide(
        _ json: JSONValue, caller: Partner, idempotency: (key: String, hash: [UInt8], claimedAt: String)?,
        answer: @escaping @Sendable (GatewayResponse) -> Void
    ) throws {
        try ExchangeService.only(json, ExchangeService.exchangeMembers, at: "")
        let givenCaseTable = try ExchangeService.identifier(json["caseTable"], "caseTable")
        let givenPurpose = try ExchangeService.identifier(json["purpose"], "purpose")
        let givenRecipient = try ExchangeService.identifier(json["recipient"], "recipient")
        // A case table, purpose or recipient the policies do not declare is decided (refused)
        // and logged as `(undeclared)`, never as given: a BSN or a name typed into one of them
        // would otherwise stay in the immutable log, the exchange row and the stored answer.
        let snapshot = state.snapshot
        let policies = snapshot.policySet
        let declaredTable = policies.tables[givenCaseTable]
        let caseTable = declaredTable != nil ? givenCaseTable : ExchangeService.undeclared
        let purpose = declaredTable?.purposes[givenPurpose] != nil ? givenPurpose : ExchangeService.undeclared
        let recipient = policies.registry.partner(id: givenRecipient) != nil ? givenRecipient : ExchangeService.undeclared
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
        // Checked before anything is read, decided or logged (see `dataFields`).
        let fields = try ExchangeService.dataFields(categories, subjects: Set(subjects.map(\.bsn.digits)))
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
                    id: c.id, subject: c.subject, grantor: c.grantor, grantorRef: c.grantorRef, registeredBy: c.registeredBy, purposes: Set(c.purposes), recipients: Set(c.recipients),
                    categories: Set(c.categories), validFrom: c.validFrom, validUntil: c.validUntil, withdrawn: c.status != "active"))
        }
        // Reporter protection turns on who the reporter is: data that names the reporter comes
        // with the `reporter` it names (a bystander or a professional), never without.
        if fields.contains("concern_signal.reporter") && caseFacts.reporterKind == nil {
            throw KetenpoortError(
                .invalidRequest, "`data.concern_signal.reporter` names the reporter: say who that is in `reporter` (`kind`: professional or bystander, `protected`, `consented`)")
        }
        var decidedBasis = try DecisionRequest.basis(basis)
        // A consent id that is not registered for these subjects in this table is decided
        // (refused) and logged as `(unregistered)`, never as given: any id-shaped text, a BSN
        // too, would otherwise stay in the log.
        if case .consent(let ids) = decidedBasis {
            let registered = Set(consents.map(\.id))
            decidedBasis = .consent(ids: ids.map { registered.contains($0) ? $0 : ExchangeService.unregistered })
        }
        // The article is free text in the request: only one the policies name is taken (and so
        // logged); the list is the region's own words.
        if case .statutory(let article) = decidedBasis, !policies.declaredArticles.contains(article) {
            throw KetenpoortError(
                .invalidRequest,
                "`basis.article` must be a statutory article the region's policies name, word for word: \(policies.declaredArticles.sorted().joined(separator: "; "))")
        }
        let decisionRequest = DecisionRequest(
            sender: caller.id, caseTable: caseTable, purpose: purpose, recipient: recipient, basis: decidedBasis,
            subjects: subjects.map { s in
                Subject(
                    ref: s.ref, role: s.role, age: s.age, competent: s.competent,
                    custodyHolders: (facts[s.ref]?["custody"]?["holders"]?.arrayValue ?? []).compactMap(\.stringValue),
                    guardian: facts[s.ref]?["guardianship"]?["institution"]?.stringValue)
            },
            fields: fields, facts: caseFacts)
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
            throw KetenpoortError(.notFound, "you sent no exchange with this id")
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

    /// The capacities in which someone can consent (a parent without custody cannot: domain.md).
    static let capacities: Set<String> = ["self", "parent_with_custody", "guardian", "representative"]

    func postConsent(_ request: GatewayRequest, caller: Partner) async throws -> GatewayResponse {
        let (json, _) = try body(request)
        try ExchangeService.only(
            json, ["caseTable", "subject", "grantor", "purposes", "recipients", "categories", "validFrom", "validUntil", "evidenceRef"], at: "")
        let caseTable = try ExchangeService.text(json["caseTable"], "caseTable")!
        let snapshot = state.snapshot
        // Refusals never repeat what the caller sent (a BSN or a name in the wrong member would
        // end up in their logs and ours); they say what is wrong and what is valid.
        guard let table = snapshot.policySet.tables[caseTable] else {
            throw ExchangeService.unknownCaseTable(snapshot.policySet, caller: caller)
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
        // The registry refuses what can never be valid, saying why (exchanges.md).
        if capacity == "parent_without_custody" {
            throw KetenpoortError(
                .invalidRequest, "a parent without custody cannot consent (`grantor.capacity`); for a child under 12 or not competent, every parent with custody consents (`parent_with_custody`)")
        }
        guard ExchangeService.capacities.contains(capacity) else {
            throw KetenpoortError(.invalidRequest, "`grantor.capacity` must be one of \(ExchangeService.capacities.sorted().joined(separator: ", "))")
        }
        // Checked before anything else about the grantor, so a malformed one is never compared
        // or stored (and never echoed: `invalid_bsn`).
        let grantorBSN = try grantor["bsn"].map { try ExchangeService.bsn($0, "grantor.bsn") }
        // Who may consent (domain.md): the person from 12 when competent; below 12 or not
        // competent, every parent with custody (each registers their own consent); a guardian
        // in the parents' place; a representative for an adult who cannot decide.
        if capacity == "self" && (age < 12 || !competent) {
            throw KetenpoortError(.invalidRequest, "a person under 12 or not competent cannot consent; every parent with custody consents instead")
        }
        if capacity == "self", let grantorBSN, grantorBSN != subjectBSN {
            throw KetenpoortError(.invalidRequest, "a `self` consent is the subject's own: `grantor.bsn`, when given, is the subject's BSN; someone consenting for the subject gives their own capacity")
        }
        if capacity == "parent_with_custody" && age >= 18 {
            throw KetenpoortError(
                .invalidRequest, "parents do not hold custody of an adult (18 or over): a competent adult consents themself (`self`), a representative for an adult who cannot decide")
        }
        if capacity == "parent_with_custody" && age >= 12 && competent {
            throw KetenpoortError(.invalidRequest, "from 12, a competent young person consents alone; parents neither co-consent nor veto")
        }
        if capacity == "representative" && age < 18 {
            throw KetenpoortError(.invalidRequest, "a representative consents for an adult who cannot decide; for a minor, the parents with custody or a guardian do")
        }
        if capacity == "representative" && competent {
            throw KetenpoortError(
                .invalidRequest, "a representative consents only for an adult who is not competent (`subject.competent`: false); a competent adult consents themself (`self`)")
        }
        if capacity != "self", let grantorBSN, grantorBSN == subjectBSN {
            throw KetenpoortError(
                .invalidRequest, "`grantor.bsn` is the subject's own BSN: a \(capacity) consents for someone else; a person consenting for themself is `self`")
        }
        var grantorRef: String?
        if capacity == "guardian" {
            // A certified institution acting as guardian (voogd) consents in the parents' place
            // (domain.md); it registers that consent itself, so the grantor is the caller.
            guard caller.kind == "certified_institution" else {
                throw KetenpoortError(.forbidden, "a guardian's consent is registered by the certified institution acting as guardian itself")
            }
            guard age < 18 else {
                throw KetenpoortError(.invalidRequest, "a guardian (voogd) acts for a minor; for an adult who cannot decide, a representative consents")
            }
            guard age < 12 || !competent else {
                throw KetenpoortError(.invalidRequest, "from 12, a competent young person consents alone; a guardian does not consent for them")
            }
            guard grantorBSN == nil else {
                throw KetenpoortError(.invalidRequest, "`grantor.bsn` does not belong to a guardian's consent: the registering institution is the grantor")
            }
            grantorRef = caller.id
        } else if capacity != "self" {
            guard grantorBSN != nil || capacity == "representative" else {
                throw KetenpoortError(.invalidRequest, "`grantor.bsn` is required for a \(capacity)")
            }
            if let grantorBSN { grantorRef = try logRef(grantorBSN) }
        }
        let purposes = try ExchangeService.texts(json["purposes"], "purposes")
        for (i, p) in purposes.enumerated() where table.purposes[p] == nil {
            throw KetenpoortError(
                .invalidRequest, "`purposes[\(i)]` is not a purpose of `\(caseTable)`; its purposes: \(table.purposes.keys.sorted().joined(separator: ", "))")
        }
        // Recipients are stored and logged as given (the entry is immutable): only partner ids
        // and `kind:<kind>` with a kind of domain.md, never free text.
        let recipients = try ExchangeService.texts(json["recipients"], "recipients")
        for (i, r) in recipients.enumerated() {
            let known = r.hasPrefix("kind:") ? partnerKinds.contains(String(r.dropFirst(5))) : snapshot.registry.partner(id: r) != nil
            guard known else {
                throw KetenpoortError(
                    .invalidRequest,
                    "`recipients[\(i)]` must be a partner id of partners.yaml or `kind:<kind>` with one of the kinds \(partnerKinds.sorted().joined(separator: ", "))")
            }
        }
        let categories = try ExchangeService.texts(json["categories"], "categories")
        for (i, c) in categories.enumerated() where Vocabulary.fields[c] == nil {
            throw KetenpoortError(.invalidRequest, "`categories[\(i)]` is not a data category; the categories: \(Vocabulary.fields.keys.sorted().joined(separator: ", "))")
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
            throw KetenpoortError(.notFound, "no consent with this id registered by you")
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
            otherwise: KetenpoortError(.conflict, "the consent was withdrawn meanwhile"))
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
            throw ExchangeService.unknownCaseTable(state.snapshot.policySet, caller: caller)
        }
        let type = try ExchangeService.text(json["type"], "type")!
        guard let spec = ExchangeService.factTypes[type] else {
            throw KetenpoortError(.invalidRequest, "`type` must be one of \(ExchangeService.factTypes.keys.sorted().joined(separator: ", "))")
        }
        guard spec.kinds.contains(caller.kind), table.isMember(caller, on: ExchangeService.today) else {
            throw KetenpoortError(.forbidden, "a \(caller.kind) may not register `\(type)` facts for `\(caseTable)`")
        }
        let subjectBSN = try ExchangeService.bsn(json["subject"], "subject")
        let subject = try logRef(subjectBSN)
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
            let from = try items.enumerated().map { try ExchangeService.bsn($1, "from[\($0)]") }
            if let i = from.firstIndex(of: subjectBSN) {
                throw KetenpoortError(.invalidRequest, "`from[\(i)]` is the subject: a person is kept apart from others, not from themself")
            }
            if let i = ExchangeService.firstRepeat(in: from) {
                throw KetenpoortError(.invalidRequest, "`from[\(i)]` repeats an earlier BSN: list each person once")
            }
            value.append(("from", .array(try from.map { .string(try logRef($0)) })))
        case "guardianship":
            let institution = try ExchangeService.text(json["institution"], "institution")!
            guard state.snapshot.registry.partner(id: institution)?.kind == "certified_institution" else {
                throw KetenpoortError(.invalidRequest, "`institution` must be a certified institution in partners.yaml")
            }
            value.append(("institution", .string(institution)))
        case "custody":
            // Nobody holding custody would leave a child under 12 without anyone who may consent.
            guard let items = json["holders"]?.arrayValue, (1...4).contains(items.count) else {
                throw KetenpoortError(.invalidRequest, "`holders` must list the BSNs of the parents with custody: 1 to 4")
            }
            let holders = try items.enumerated().map { try ExchangeService.bsn($1, "holders[\($0)]") }
            if let i = holders.firstIndex(of: subjectBSN) {
                throw KetenpoortError(.invalidRequest, "`holders[\(i)]` is the subject: custody is held by a parent, not by the person themself")
            }
            // A BSN given twice is a typo that leaves the other parent out, and with it the
            // consent that parent must give.
            if let i = ExchangeService.firstRepeat(in: holders) {
                throw KetenpoortError(.invalidRequest, "`holders[\(i)]` repeats an earlier BSN: list each parent with custody once")
            }
            value.append(("holders", .array(try holders.map { .string(try logRef($0)) })))
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

    /// The refusal of a case table the policies do not declare: it names the tables the caller
    /// is a member of, never the value sent (it may be anything, a BSN included).
    static func unknownCaseTable(_ policySet: PolicySet, caller: Partner) -> KetenpoortError {
        let yours = policySet.tables.values.filter { $0.isMember(caller, on: today) }.map(\.id).sorted()
        return KetenpoortError(
            .invalidRequest, "`caseTable` is not a case table of the policies; yours: \(yours.isEmpty ? "none" : yours.joined(separator: ", "))")
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
            throw KetenpoortError(.notFound, "your inbox holds no item with this id")
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
            // A text that cannot be opened is `null` (logged for the operator), not a failed queue.
            if let entry = try audit.read({ try $0.entry(sequence: row.logSequence) }) {
                members.append(("texts", .object(try audit.openedTexts(of: entry).map { ($0.name, $0.text.map(JSONValue.string) ?? .null) })))
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
            throw KetenpoortError(.notFound, "no exchange with this id is awaiting review")
        }
        var record = try audit.recorder.review(exchangeID: id, officer: caller.id, outcome: outcome, comment: comment)
        // A review racing this one passed the check above too: 409 for whichever commits second.
        record.precondition = ExchangeRepository.review(exchangeID: id, outcome: outcome)
        let sequence = try await audit.record(record)
        return .json(["exchangeId": .string(id), "review": .string(outcome), "logSequence": .number(Double(sequence))], route: "/v1/reviews/{id}")
    }
}
