import Foundation
import KetenpoortCore

/// The ground the sender gives to break professional secrecy.
public enum SecrecyBasis: Sendable, Hashable {
    case consent(ids: [String])
    case safetyException(SafetyException)
    case statutory(article: String)

    /// The ground name as policies write it (`consent`, `wmo-5.2.6`, …, `statutory`).
    public var ground: String {
        switch self {
        case .consent: return "consent"
        case .safetyException(let s): return s.ground
        case .statutory: return "statutory"
        }
    }

    public var type: String {
        switch self {
        case .consent: return "consent"
        case .safetyException: return "safety-exception"
        case .statutory: return "statutory"
        }
    }
}

public struct SafetyException: Sendable, Hashable {
    public var ground: String
    public var hasJustification: Bool
    public var hasProfessional: Bool
    public var meldcodeStepsRecorded: Bool
    /// Conflict of duties: every element of the recorded judgement is present and affirmative.
    public var conflictJudgementComplete: Bool

    public init(ground: String, hasJustification: Bool, hasProfessional: Bool, meldcodeStepsRecorded: Bool, conflictJudgementComplete: Bool) {
        self.ground = ground
        self.hasJustification = hasJustification
        self.hasProfessional = hasProfessional
        self.meldcodeStepsRecorded = meldcodeStepsRecorded
        self.conflictJudgementComplete = conflictJudgementComplete
    }
}

/// A person an exchange is about. `ref` is a pseudonymous key, never a BSN.
public struct Subject: Sendable, Hashable {
    public var ref: String
    public var role: String
    public var age: Int?
    public var competent: Bool
    /// Refs of the parents holding custody.
    public var custodyHolders: [String]
    /// A certified institution acting as guardian (voogd), which consents in the parents' place.
    public var guardian: String?
    /// The categories that concern this subject; `nil`: every category of the exchange.
    public var categories: Set<String>? { didSet { categoryBits = categories.map { FieldCatalogue.shared.categoryBits(of: $0) } } }
    /// `categories` numbered (see ``FieldCatalogue``).
    var categoryBits: UInt64?

    public init(ref: String, role: String, age: Int? = nil, competent: Bool = true, custodyHolders: [String] = [], guardian: String? = nil, categories: Set<String>? = nil) {
        self.ref = ref
        self.role = role
        self.age = age
        self.competent = competent
        self.custodyHolders = custodyHolders
        self.guardian = guardian
        self.categories = categories
        self.categoryBits = categories.map { FieldCatalogue.shared.categoryBits(of: $0) }
    }
}

/// A registered consent, as the registry hands it to the engine.
public struct ConsentFact: Sendable, Hashable {
    public var id: String
    /// The subject the consent is about.
    public var subject: String
    /// self, parent_with_custody, parent_without_custody, guardian, representative
    public var grantor: String
    /// Who gave it (for parents: the parent's ref), to check every custody holder consented.
    public var grantorRef: String?
    /// The partner that registered it. A consent lifts the professional secrecy of the partner
    /// that obtained it, so it counts only for that partner's exchanges — except a guardian's own
    /// consent (registered by the institution acting as guardian, `grantorRef`), which is the
    /// grantor's declaration to the table rather than something a sender obtained. `nil`: unknown,
    /// counts for nobody.
    public var registeredBy: String?
    public var purposes: Set<String>
    /// Recipient partner ids or `kind:<kind>`.
    public var recipients: Set<String>
    public var categories: Set<String> { didSet { categoryBits = FieldCatalogue.shared.categoryBits(of: categories) } }
    var categoryBits: UInt64
    public var validFrom: String?
    public var validUntil: String?
    public var withdrawn: Bool

    public init(
        id: String, subject: String, grantor: String, grantorRef: String? = nil, registeredBy: String?, purposes: Set<String>, recipients: Set<String>,
        categories: Set<String>, validFrom: String? = nil, validUntil: String? = nil, withdrawn: Bool = false
    ) {
        self.id = id
        self.subject = subject
        self.grantor = grantor
        self.grantorRef = grantorRef
        self.registeredBy = registeredBy
        self.purposes = purposes
        self.recipients = recipients
        self.categories = categories
        self.categoryBits = FieldCatalogue.shared.categoryBits(of: categories)
        self.validFrom = validFrom
        self.validUntil = validUntil
        self.withdrawn = withdrawn
    }

    /// Whether `sender` may rely on this consent: the partner that registered it may; a
    /// guardian's own consent counts for every sender (its other conditions still apply).
    public func counts(forSender sender: String) -> Bool {
        guard let registeredBy else { return false }
        return registeredBy == sender || (grantor == "guardian" && grantorRef == registeredBy)
    }
}

/// The case facts a decision needs (registered by the partners entitled to).
public struct CaseFacts: Sendable, Hashable {
    /// The decision date, ISO `YYYY-MM-DD`.
    public var date: String
    public var caseClosed = false
    public var supervisionOrderActive = false
    public var supervisionOrderInstitution: String?
    public var vtInvestigationOpen = false
    /// Pairs (protected subject ref, the ref they must be kept from).
    public var keepApart: [(String, String)] = []
    /// The reporter: "professional" or "bystander"; protected by Veilig Thuis; consented to be named.
    public var reporterKind: String?
    public var reporterProtected = false
    public var reporterConsented = false
    public var consents: [ConsentFact] = []

    public init(date: String) { self.date = date }

    public static func == (a: CaseFacts, b: CaseFacts) -> Bool {
        a.date == b.date && a.caseClosed == b.caseClosed && a.supervisionOrderActive == b.supervisionOrderActive
            && a.supervisionOrderInstitution == b.supervisionOrderInstitution && a.vtInvestigationOpen == b.vtInvestigationOpen
            && a.keepApart.map { "\($0.0)>\($0.1)" } == b.keepApart.map { "\($0.0)>\($0.1)" } && a.reporterKind == b.reporterKind
            && a.reporterProtected == b.reporterProtected && a.reporterConsented == b.reporterConsented && a.consents == b.consents
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(date)
        hasher.combine(consents)
    }
}

/// One exchange to decide: who sends what to whom, for what, on which ground, with the facts.
public struct DecisionRequest: Sendable {
    public var sender: String
    public var caseTable: String
    public var purpose: String
    public var recipient: String
    public var basis: SecrecyBasis
    public var subjects: [Subject]
    /// Requested `category.field` paths.
    public var fields: Set<String> { didSet { paths = FieldPaths(fields) } }
    /// `fields` numbered once, when the request is built.
    var paths: FieldPaths
    public var facts: CaseFacts

    public init(sender: String, caseTable: String, purpose: String, recipient: String, basis: SecrecyBasis, subjects: [Subject], fields: Set<String>, facts: CaseFacts) {
        self.sender = sender
        self.caseTable = caseTable
        self.purpose = purpose
        self.recipient = recipient
        self.basis = basis
        self.subjects = subjects
        self.fields = fields
        self.paths = FieldPaths(fields)
        self.facts = facts
    }

    /// The categories requested.
    public var categories: Set<String> {
        Set(fields.map { path in path.firstIndex(of: ".").map { String(path[..<$0]) } ?? path })
    }
}

extension DecisionRequest {
    /// Reads the JSON form shared by policy test files, `policy explain` request files and the
    /// server: the exchange request (contract.md) plus `sender`, `facts`, and either `data`
    /// (fields are derived from it) or `fields`. Subjects carry a `ref` (a pseudonym or test
    /// label), never a BSN. Throws `invalid_request` naming the member.
    public init(json: JSONValue) throws {
        func fail(_ message: String) -> KetenpoortError { KetenpoortError(.invalidRequest, message) }
        func text(_ v: JSONValue?, _ name: String) throws -> String {
            guard let s = v?.stringValue, !s.isEmpty else { throw fail("`\(name)` must be non-empty text") }
            return s
        }
        func texts(_ v: JSONValue?, _ name: String) throws -> [String] {
            guard let v else { return [] }
            guard let items = v.arrayValue else { throw fail("`\(name)` must be a list of text") }
            return try items.map { item in
                guard let s = item.stringValue else { throw fail("`\(name)` must be a list of text") }
                return s
            }
        }
        sender = try text(json["sender"], "sender")
        caseTable = try text(json["caseTable"], "caseTable")
        purpose = try text(json["purpose"], "purpose")
        recipient = try text(json["recipient"], "recipient")
        guard let basisJSON = json["basis"] else { throw fail("`basis` is required") }
        basis = try DecisionRequest.basis(basisJSON)
        var fields = Set<String>()
        if let data = json["data"] {
            guard let categories = data.objectValue else { throw fail("`data` must be an object of categories") }
            for (category, value) in categories {
                guard let members = value.objectValue else { throw fail("`data.\(category)` must be an object of fields") }
                for (field, _) in members { fields.insert("\(category).\(field)") }
            }
        }
        for path in try texts(json["fields"], "fields") { fields.insert(path) }
        self.fields = fields
        self.paths = FieldPaths(fields)
        var subjects: [Subject] = []
        for item in json["subjects"]?.arrayValue ?? [] {
            let ref = try text(item["ref"], "subjects[].ref")
            let role = item["role"]?.stringValue ?? "subject"
            let categories = try item["categories"].map { Set(try texts($0, "subjects[].categories")) }
            subjects.append(
                Subject(
                    ref: ref, role: role, age: item["age"]?.intValue, competent: item["competent"]?.boolValue ?? true,
                    custodyHolders: try texts(item["custody"], "subjects[].custody"), guardian: item["guardian"]?.stringValue,
                    categories: categories))
        }
        self.subjects = subjects
        let f = json["facts"] ?? .object([])
        var facts = CaseFacts(date: f["date"]?.stringValue ?? "2026-01-01")
        facts.caseClosed = f["caseClosed"]?.boolValue ?? false
        if let order = f["supervisionOrder"] {
            facts.supervisionOrderActive = order["active"]?.boolValue ?? false
            facts.supervisionOrderInstitution = order["institution"]?.stringValue
        }
        facts.vtInvestigationOpen = f["vtInvestigationOpen"]?.boolValue ?? false
        for pair in f["keepApart"]?.arrayValue ?? [] {
            facts.keepApart.append((try text(pair["protected"], "keepApart[].protected"), try text(pair["from"], "keepApart[].from")))
        }
        if let reporter = f["reporter"] {
            facts.reporterKind = reporter["kind"]?.stringValue
            facts.reporterProtected = reporter["protected"]?.boolValue ?? false
            facts.reporterConsented = reporter["consented"]?.boolValue ?? false
        }
        for c in f["consents"]?.arrayValue ?? [] {
            let grantor = try text(c["grantor"], "consents[].grantor")
            guard Vocabulary.grantors.contains(grantor) else { throw fail("`consents[].grantor` must be one of \(Vocabulary.grantors.sorted().joined(separator: ", "))") }
            facts.consents.append(
                ConsentFact(
                    id: try text(c["id"], "consents[].id"), subject: try text(c["subject"], "consents[].subject"), grantor: grantor,
                    grantorRef: c["grantorRef"]?.stringValue, registeredBy: c["registeredBy"]?.stringValue ?? sender, purposes: Set(try texts(c["purposes"], "consents[].purposes")),
                    recipients: Set(try texts(c["recipients"], "consents[].recipients")),
                    categories: Set(try texts(c["categories"], "consents[].categories")), validFrom: c["validFrom"]?.stringValue,
                    validUntil: c["validUntil"]?.stringValue, withdrawn: c["withdrawn"]?.boolValue ?? false))
        }
        self.facts = facts
    }

    /// Reads `basis` as contract.md defines it.
    public static func basis(_ json: JSONValue) throws -> SecrecyBasis {
        func fail(_ message: String) -> KetenpoortError { KetenpoortError(.invalidRequest, message) }
        switch json["type"]?.stringValue {
        case "consent":
            guard let ids = json["consentIds"]?.arrayValue?.compactMap(\.stringValue), !ids.isEmpty else {
                throw fail("`basis.consentIds` must list at least one consent")
            }
            return .consent(ids: ids)
        case "safety-exception":
            guard let ground = json["ground"]?.stringValue, Vocabulary.safetyExceptionGrounds.contains(ground) else {
                throw fail("`basis.ground` must be one of \(Vocabulary.safetyExceptionGrounds.sorted().joined(separator: ", "))")
            }
            // Text that is only spaces, tabs or line breaks says nothing: not a justification.
            func said(_ value: JSONValue?) -> Bool { !(value?.stringValue ?? "").trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }
            let justification = said(json["justification"])
            let professional = said(json["professional"])
            var meldcode = false
            if let steps = json["meldcode"] {
                // Each step taken (`true`, not merely present: "", 0 or "nee" is not a step),
                // and the decision it led to named.
                let taken = ["signalsMapped", "colleagueConsulted", "clientSpokenTo", "weighed"]
                meldcode = taken.allSatisfy { steps[$0]?.boolValue == true } && said(steps["decided"])
            }
            var judgement = false
            if let j = json["conflictOfDuties"] {
                let required = ["consentImpossibleOrRefused", "seriousHarm", "sharingAvertsHarm", "noOtherWay", "proportionate", "colleagueConsulted"]
                judgement = required.allSatisfy { j[$0]?.boolValue == true }
            }
            return .safetyException(
                SafetyException(ground: ground, hasJustification: justification, hasProfessional: professional, meldcodeStepsRecorded: meldcode, conflictJudgementComplete: judgement))
        case "statutory":
            guard let article = json["article"]?.stringValue, !article.isEmpty else { throw fail("`basis.article` is required for a statutory basis") }
            return .statutory(article: article)
        default:
            throw fail("`basis.type` must be consent, safety-exception or statutory")
        }
    }
}

