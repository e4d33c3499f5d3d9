import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy

/// The kinds of entry the log holds (the `kind` member; stable: reports and queries use them).
public enum AuditKind: String, Sendable, CaseIterable {
    case exchangePermitted = "exchange-permitted"
    case exchangeDenied = "exchange-denied"
    case consentRegistered = "consent-registered"
    case consentWithdrawn = "consent-withdrawn"
    case review
    case reidentification = "re-identification"
    case policyReloaded = "policy-reloaded"
    case keyRotated = "key-rotated"
    case retention
    case factRegistered = "fact-registered"
    case subjectInformed = "subject-informed"
    case subjectReport = "subject-report"
}

/// One exchange as the log records it, in clear only in memory: the recorder turns the BSNs
/// into log-domain pseudonyms and seals the free text.
public struct ExchangeEvent: Sendable {
    public var exchangeID: String
    public var request: DecisionRequest
    public var decision: Decision
    /// The people the exchange is about.
    public var subjects: [BSN]
    /// Free text officers read later (`justification`, `conflictOfDuties`, …): sealed.
    public var texts: [String: String]
    /// Consent ids, when the ground is consent.
    public var consentIDs: [String]
    /// The subjects' log pseudonyms when the caller already made them (they key the registry).
    public var subjectPseudonyms: [String]?

    public init(exchangeID: String, request: DecisionRequest, decision: Decision, subjects: [BSN], texts: [String: String] = [:], consentIDs: [String] = []) {
        self.exchangeID = exchangeID
        self.request = request
        self.decision = decision
        self.subjects = subjects
        self.texts = texts
        self.consentIDs = consentIDs
    }
}

/// Builds audit records. Everything personal is pseudonymised or sealed here, so nothing
/// personal reaches the store in clear.
public struct AuditRecorder: Sendable {
    public let keys: LogKeys
    let pseudonymiser: Pseudonymiser

    public init(keys: LogKeys) {
        self.keys = keys
        self.pseudonymiser = Pseudonymiser(keys: keys.keys)
    }

    public func subjectPseudonym(_ bsn: BSN) throws -> String {
        try pseudonymiser.pseudonym(of: bsn, domain: Pseudonymiser.logDomain)
    }

    func sealed(_ texts: [String: String]) throws -> [(name: String, sealed: [UInt8])] {
        try texts.sorted { $0.key < $1.key }.filter { !$0.value.isEmpty }.map { ($0.key, try keys.seal($0.value)) }
    }

    /// The entry for a decided exchange, permitted or denied.
    public func exchange(_ event: ExchangeEvent, registry: PartnerRegistry) throws -> AuditRecord {
        let request = event.request
        let decision = event.decision
        let obligations = decision.obligations
        var basis: [(String, JSONValue)] = [("type", .string(request.basis.type))]
        switch request.basis {
        case .consent(let ids): basis.append(("consentIds", .array((ids.isEmpty ? event.consentIDs : ids).map { .string($0) })))
        case .safetyException(let s): basis.append(("ground", .string(s.ground)))
        case .statutory(let article): basis.append(("article", .string(article)))
        }
        let released = obligations.releasedFields.map(\.path)
        let withheld = obligations.withheldFields.sorted()
        // The categories of field paths (`identity.bsn` → `identity`), each once, sorted; a
        // handful per exchange, so a list, not a set.
        func categories(_ paths: [String]) -> [String] {
            var result: [String] = []
            for path in paths {
                let category = path.firstIndex(of: ".").map { String(path[..<$0]) } ?? path
                if !result.contains(category) { result.append(category) }
            }
            return result.sorted()
        }
        let sender = registry.partner(id: request.sender)
        let recipient = registry.partner(id: request.recipient)
        // What a subject report must leave out or generalise, fixed when the entry is written.
        var protections: [(String, JSONValue)] = []
        if request.facts.reporterProtected || (request.facts.reporterKind == "bystander" && !request.facts.reporterConsented) {
            protections.append(("reporter", .bool(true)))
        }
        let shelterInvolved = recipient?.kind == "womens_shelter" || sender?.kind == "womens_shelter"
        if shelterInvolved || (!request.facts.keepApart.isEmpty && released.contains { $0.hasPrefix("location_protected.") }) {
            protections.append(("location", .bool(true)))
        }
        if sender?.kind == "police" { protections.append(("domain", .string("wpg"))) }
        var members: [(String, JSONValue)] = [
            ("exchangeId", .string(event.exchangeID)),
            ("caseTable", .string(request.caseTable)),
            ("sender", .string(request.sender)),
            ("recipient", .string(request.recipient)),
            ("purpose", .string(request.purpose)),
            ("basis", .object(basis)),
            ("decision", .string(decision.effect.rawValue)),
            ("rules", .array(decision.rules.map { .string($0) })),
            // The policy's own words for the decision (rule labels and reasons; subjects appear
            // only as the refs the request used, which are log pseudonyms in the gateway).
            ("explanation", .array(decision.explanation.map { .string($0) })),
            ("policyVersion", .string(decision.policyVersion)),
            ("released", .array(released.map { .string($0) })),
            ("withheld", .array(withheld.map { .string($0) })),
            ("categoriesReleased", .array(categories(released).map { .string($0) })),
            ("categoriesWithheld", .array(categories(withheld).map { .string($0) })),
            ("review", .string(decision.isPermit && obligations.review ? "pending" : "none")),
            ("informSubjectBy", obligations.informSubjectBy.map { .string($0) } ?? .null),
        ]
        if decision.isPermit {
            members.append(("lawfulBasis", .array(obligations.lawfulBasis.map { .object([("category", .string($0.category)), ("basis", .string($0.basis))]) })))
        }
        if !protections.isEmpty { members.append(("protections", .object(protections))) }
        let retain = obligations.retentionYears.map { AuditRecorder.date(request.facts.date, plusYears: $0) }
        return AuditRecord(
            kind: decision.isPermit ? AuditKind.exchangePermitted.rawValue : AuditKind.exchangeDenied.rawValue, members: members,
            subjects: Array(Set(try event.subjectPseudonyms ?? event.subjects.map(subjectPseudonym))).sorted(), texts: try sealed(event.texts),
            retainUntil: retain)
    }

    /// An officer looked up everything the log holds about one person (an access report): who,
    /// and about whom (as the log pseudonym, never the BSN).
    public func subjectReport(officer: String, subject: BSN, entries: Int) throws -> AuditRecord {
        AuditRecord(
            kind: AuditKind.subjectReport.rawValue, members: [("officer", .string(officer)), ("entries", .number(Double(entries)))],
            subjects: [try subjectPseudonym(subject)])
    }

    /// The entry for a re-identification (the value itself never; the subject as a pseudonym).
    public func reidentification(caseTable: String, partner: String, purpose: String, subjectPseudonym: String, policyVersion: String) -> AuditRecord {
        AuditRecord(
            kind: AuditKind.reidentification.rawValue,
            members: [
                ("caseTable", .string(caseTable)), ("sender", .string(partner)), ("purpose", .string(purpose)),
                ("policyVersion", .string(policyVersion)),
            ],
            subjects: [subjectPseudonym])
    }

    /// A policy set loaded or reloaded (`reason`: startup, sighup, watch).
    public func policyReloaded(version: String, previous: String?, reason: String) -> AuditRecord {
        AuditRecord(
            kind: AuditKind.policyReloaded.rawValue,
            members: [("policyVersion", .string(version)), ("previousPolicyVersion", previous.map { .string($0) } ?? .null), ("reason", .string(reason)), ("keyId", .string(keys.keys.currentKeyID))])
    }

    /// The master key changed: the new key id, and the public checkpoint key partners need.
    public func keyRotated(previous: String?) throws -> AuditRecord {
        AuditRecord(
            kind: AuditKind.keyRotated.rawValue,
            members: [
                ("keyId", .string(keys.keys.currentKeyID)), ("previousKeyId", previous.map { .string($0) } ?? .null),
                ("checkpointKey", .string(try keys.signer.verifierKey.text)),
            ])
    }

    /// An officer's review of a safety-exception exchange; the comment is sealed.
    public func review(exchangeID: String, officer: String, outcome: String, comment: String?) throws -> AuditRecord {
        AuditRecord(
            kind: AuditKind.review.rawValue,
            members: [("exchangeId", .string(exchangeID)), ("officer", .string(officer)), ("outcome", .string(outcome))],
            texts: try sealed(comment.map { ["comment": $0] } ?? [:]))
    }

    /// A consent registered or withdrawn, about `subject`.
    public func consent(_ kind: AuditKind, consentID: String, sender: String, subject: BSN, purposes: [String]) throws -> AuditRecord {
        AuditRecord(
            kind: kind.rawValue,
            members: [("consentId", .string(consentID)), ("sender", .string(sender)), ("purposes", .array(purposes.sorted().map { .string($0) }))],
            subjects: [try subjectPseudonym(subject)])
    }

    /// `date` (YYYY-MM-DD) plus whole years; 29 February becomes 28 February.
    public static func date(_ date: String, plusYears years: Int) -> String {
        // Digits read and written by hand: this runs for every logged exchange.
        let u = Array(date.utf8)
        func number(_ range: Range<Int>) -> Int? {
            var n = 0
            for i in range {
                guard u[i] >= 48, u[i] <= 57 else { return nil }
                n = n * 10 + Int(u[i] - 48)
            }
            return n
        }
        guard u.count == 10, u[4] == 45, u[7] == 45, let y = number(0..<4), let month = number(5..<7), var day = number(8..<10) else { return date }
        let year = y + years
        guard (0...9999).contains(year) else { return date }
        if month == 2, day == 29, !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) { day = 28 }
        var out = [UInt8](repeating: 48, count: 10)
        var v = year
        for i in stride(from: 3, through: 0, by: -1) {
            out[i] = UInt8(48 + v % 10)
            v /= 10
        }
        out[4] = 45
        out[5] = UInt8(48 + month / 10)
        out[6] = UInt8(48 + month % 10)
        out[7] = 45
        out[8] = UInt8(48 + day / 10)
        out[9] = UInt8(48 + day % 10)
        return String(decoding: out, as: UTF8.self)
    }
}

extension CheckpointSigner {
    public var verifierKey: LogVerifierKey { LogVerifierKey(name: origin, publicKey: key.publicKey) }
}
