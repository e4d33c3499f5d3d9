import KetenpoortCore

/// What a decision obliges the gateway to do with a permitted exchange.
public struct Obligations: Sendable, Hashable {
    /// Released fields as catalogue ids (ascending), and the route whose transforms apply.
    var releasedIDs: [Int] = []
    var releasedBits = FieldBits()
    var withheldIDs: [Int] = []
    var withheldUnknown: [String] = []
    var route: Route?

    /// Released `category.field` paths with their transforms (pseudonymise/token domains are the
    /// recipient's), in catalogue order.
    public var releasedFields: [(path: String, transform: FieldTransform)] {
        guard let route else { return [] }
        let catalogue = FieldCatalogue.shared
        return releasedIDs.map { (catalogue.paths[$0], route.compiled.transforms[$0] ?? .drop) }
    }
    /// Withheld `category.field` paths.
    public var withheldFields: [String] {
        withheldIDs.map { FieldCatalogue.shared.paths[$0] } + withheldUnknown
    }
    /// Released `category.field` → transform.
    public var released: [String: FieldTransform] {
        Dictionary(releasedFields.map { ($0.path, $0.transform) }, uniquingKeysWith: { first, _ in first })
    }
    public var withheld: Set<String> { Set(withheldFields) }
    /// The lawful basis (DPV term) of each released category, in catalogue order.
    public var lawfulBasis: [(category: String, basis: String)] {
        guard let route else { return [] }
        let catalogue = FieldCatalogue.shared
        var result: [(category: String, basis: String)] = []
        for id in releasedIDs {
            let category = catalogue.categoryOf[id]
            if let basis = route.compiled.basis[category], result.last?.category != catalogue.categories[category] {
                result.append((catalogue.categories[category], basis))
            }
        }
        return result
    }

    public static func == (a: Obligations, b: Obligations) -> Bool {
        a.released == b.released && a.withheld == b.withheld && a.informSubjectBy == b.informSubjectBy && a.review == b.review
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(releasedIDs)
        hasher.combine(withheldIDs)
    }
    /// The date by which the subject must be informed (`nil`: no duty, or deferred).
    public var informSubjectBy: String?
    public var informDeferredGround: String?
    /// A safety-exception exchange: a privacy officer reviews it afterwards.
    public var review = false
    public var retentionYears: Int?
    public var confidentiality = Confidentiality()
    public var reidentificationAllowed = false
    public init() {}
}

/// One rule consulted for a decision, matched or not, and why.
public struct RuleTrace: Sendable, Hashable {
    public enum Kind: String, Sendable { case route, forbid, check }
    public let kind: Kind
    public let id: String
    public let label: String
    public let matched: Bool
    public let reason: String
}

/// A decision as a value: permit or deny, the deciding rules, the obligations, the explanation.
public struct Decision: Sendable {
    public enum Effect: String, Sendable { case permit, deny }
    public let effect: Effect
    private let denyingRules: [String]
    public let obligations: Obligations
    private let recordedTrace: [RuleTrace]
    public let policyVersion: String

    init(effect: Effect, rules: [String], obligations: Obligations, trace: [RuleTrace], policyVersion: String) {
        self.effect = effect
        self.denyingRules = rules
        self.obligations = obligations
        self.recordedTrace = trace
        self.policyVersion = policyVersion
    }

    /// A permit: the deciding route is in the obligations (nothing else is built on the hot path).
    init(permitting obligations: Obligations, trace: [RuleTrace], policyVersion: String) {
        self.effect = .permit
        self.denyingRules = []
        self.obligations = obligations
        self.recordedTrace = trace
        self.policyVersion = policyVersion
    }

    public var isPermit: Bool { effect == .permit }

    /// The deciding rule ids: the permitting route, or the forbids/checks that denied.
    public var rules: [String] {
        if effect == .permit, let route = obligations.route { return [route.id] }
        return denyingRules
    }

    /// Every rule consulted, in order (complete with `evaluate(_:explain: true)`; otherwise the
    /// deciding rules only).
    public var trace: [RuleTrace] {
        if effect == .permit, recordedTrace.isEmpty, let route = obligations.route {
            return [RuleTrace(kind: .route, id: route.id, label: route.label, matched: true, reason: "its ground holds for the released fields")]
        }
        return recordedTrace
    }

    /// The explanation in the policy's own words: the deciding rules' labels and reasons.
    public var explanation: [String] {
        let deciding = Set(rules)
        return trace.filter { deciding.contains($0.id) && ($0.matched == (effect == .permit) || $0.kind != .route) }
            .map { "\($0.id): \($0.label) — \($0.reason)" }
    }
}

extension PolicySet {
    /// Decides one exchange. Pure; default deny; a forbid overrides any permit; a route whose
    /// ground does not hold never permits. With `explain`, the trace holds every rule consulted
    /// (routes and forbids, matched or not); without it only the rules that decided, which
    /// keeps the hot path free of string building.
    public func evaluate(_ request: DecisionRequest, explain: Bool = false) -> Decision {
        var trace: [RuleTrace] = []
        func deny(_ id: String, _ label: String, _ reason: String) -> Decision {
            trace.append(RuleTrace(kind: .check, id: id, label: label, matched: true, reason: reason))
            return Decision(effect: .deny, rules: [id], obligations: Obligations(withheld: request.paths), trace: trace, policyVersion: version)
        }
        guard let table = tables[request.caseTable] else {
            return deny("unknown-case-table", "Onbekende casustafel", "no case table `\(request.caseTable)` is declared")
        }
        guard let sender = registry.partner(id: request.sender) else {
            return deny("unknown-sender", "Onbekende afzender", "sender `\(request.sender)` is not in partners.yaml")
        }
        guard let recipient = registry.partner(id: request.recipient) else {
            return deny("unknown-recipient", "Onbekende ontvanger", "recipient `\(request.recipient)` is not in partners.yaml")
        }
        guard table.purposes[request.purpose] != nil else {
            return deny("undeclared-purpose", "Doelbinding", "purpose `\(request.purpose)` is not declared for `\(table.id)`")
        }
        guard !request.fields.isEmpty else {
            return deny("nothing-requested", "Geen gegevens", "the exchange carries no fields")
        }
        let paths = request.paths

        // Permit: the first route that matches and whose ground holds.
        var permit: Obligations? = nil
        var failedRoutes: [RuleTrace] = []
        let candidates = table.candidateRoutes(from: sender, to: recipient, purpose: request.purpose)
        for index in candidates {
            let route = table.routes[index]
            switch evaluate(route: route, table: table, request: request, paths: paths, recipient: recipient) {
            case .success(let obligations):
                if explain {
                    trace.append(RuleTrace(kind: .route, id: route.id, label: route.label, matched: true, reason: "ground `\(request.basis.ground)` holds; releases \(obligations.releasedIDs.count) field(s)"))
                }
                if permit == nil { permit = obligations }
            case .failure(let why):
                let entry = RuleTrace(kind: .route, id: route.id, label: route.label, matched: false, reason: why.reason)
                failedRoutes.append(entry)
                if explain { trace.append(entry) }
            }
        }
        if candidates.isEmpty {
            let entry = RuleTrace(kind: .check, id: "no-route", label: "Geen route", matched: true, reason: "no route of `\(table.id)` goes from `\(sender.id)` to `\(recipient.id)` for `\(request.purpose)`")
            failedRoutes.append(entry)
            trace.append(entry)
        }

        // Forbids: they override any permit; with `explain` every one is listed.
        let releasedBits: FieldBits
        if let permit {
            releasedBits = permit.releasedBits
        } else {
            var bits = FieldBits()
            for id in paths.ids { bits.insert(id) }
            releasedBits = bits
        }
        let context = ForbidContext(table: table, sender: sender, recipient: recipient, route: permit?.route, released: releasedBits, registry: registry)
        var forbidding: [String] = []
        for rule in table.effectiveForbids {
            let matched = context.matches(rule, request)
            if matched { forbidding.append(rule.id) }
            if explain || matched {
                trace.append(RuleTrace(kind: .forbid, id: rule.id, label: rule.label, matched: matched, reason: matched ? "all its conditions hold" : context.whyNot(rule, request)))
            }
        }
        if !forbidding.isEmpty {
            return Decision(effect: .deny, rules: forbidding, obligations: Obligations(withheld: paths), trace: trace, policyVersion: version)
        }
        guard let permit else {
            if !explain { trace.append(contentsOf: failedRoutes.filter { $0.id != "no-route" }) }
            return Decision(effect: .deny, rules: failedRoutes.map(\.id), obligations: Obligations(withheld: paths), trace: trace, policyVersion: version)
        }
        return Decision(permitting: permit, trace: trace, policyVersion: version)
    }

    struct RouteFailure: Error { let reason: String }

    func evaluate(route: Route, table: CaseTable, request: DecisionRequest, paths: FieldPaths, recipient: Partner) -> Result<Obligations, RouteFailure> {
        for condition in route.conditions {
            let holds: Bool
            switch condition {
            case "supervision_order_active": holds = request.facts.supervisionOrderActive
            case "supervision_order_by_recipient": holds = request.facts.supervisionOrderActive && request.facts.supervisionOrderInstitution == recipient.id
            case "vt_investigation_open": holds = request.facts.vtInvestigationOpen
            case "no_vt_investigation": holds = !request.facts.vtInvestigationOpen
            default: holds = false  // an unknown condition never permits
            }
            if !holds { return .failure(RouteFailure(reason: "condition `\(condition)` does not hold")) }
        }
        guard request.subjects.count <= route.maxSubjects else {
            return .failure(RouteFailure(reason: "\(request.subjects.count) subjects exceed the route's maximum of \(route.maxSubjects)"))
        }
        let groundName = request.basis.ground
        guard let ground = route.grounds[groundName] else {
            return .failure(RouteFailure(reason: "the route does not accept ground `\(groundName)` (it accepts \(route.grounds.keys.sorted().joined(separator: ", ")))"))
        }
        // The ground itself.
        var consentCovers: UInt64? = nil
        switch request.basis {
        case .consent(let ids):
            switch consentCoverage(ids: ids, request: request, categories: paths.categories, recipient: recipient) {
            case .success(let covered): consentCovers = covered
            case .failure(let failure): return .failure(failure)
            }
        case .safetyException(let s):
            if let kind = Vocabulary.groundRecipientKind[s.ground], recipient.kind != kind {
                return .failure(RouteFailure(reason: "ground `\(s.ground)` is valid only towards a `\(kind)` recipient"))
            }
            if s.ground == "jw-7.3.11-4" && !(request.facts.supervisionOrderActive && request.facts.supervisionOrderInstitution == recipient.id) {
                return .failure(RouteFailure(reason: "ground `jw-7.3.11-4` needs an active supervision order carried out by `\(recipient.id)`"))
            }
            if s.ground == "conflict-of-duties" && !s.conflictJudgementComplete {
                return .failure(RouteFailure(reason: "conflict of duties needs the complete recorded judgement"))
            }
            if ground.requiresMeldcode && !s.meldcodeStepsRecorded {
                return .failure(RouteFailure(reason: "the meldcode steps must be recorded"))
            }
            if !s.hasJustification || !s.hasProfessional {
                return .failure(RouteFailure(reason: "a safety exception needs a justification and the professional's reference"))
            }
        case .statutory(let article):
            if let required = ground.article, required != article {
                return .failure(RouteFailure(reason: "the route's statutory duty is `\(required)`, not `\(article)`"))
            }
        }
        // What flows: requested ∩ carried by the route (not dropped) ∩ released by the ground ∩ covered by consent.
        var obligations = Obligations()
        let catalogue = FieldCatalogue.shared
        let compiled = route.compiled
        let release = ground.releaseBits
        let coveredBits = consentCovers
        obligations.withheldUnknown = paths.unknown
        obligations.route = route
        obligations.releasedIDs.reserveCapacity(paths.ids.count)
        for id in paths.ids {
            let category = catalogue.categoryOf[id]
            guard compiled.transforms[id] != nil, release.contains(id),
                coveredBits.map({ $0 & (1 << UInt64(category)) != 0 }) ?? true
            else {
                obligations.withheldIDs.append(id)
                continue
            }
            obligations.releasedIDs.append(id)
            obligations.releasedBits.insert(id)
        }
        guard !obligations.releasedIDs.isEmpty else {
            return .failure(RouteFailure(reason: "ground `\(groundName)` lets none of the requested fields through"))
        }
        let safety = Vocabulary.safetyExceptionGrounds.contains(groundName)
        obligations.review = safety
        if safety || groundName == "statutory" {
            switch route.inform {
            case .before: obligations.informSubjectBy = request.facts.date
            case .after(let days): obligations.informSubjectBy = DateText.adding(days: days, to: request.facts.date)
            case .deferred(let g): obligations.informDeferredGround = g
            case .notRequired: break
            }
        }
        obligations.retentionYears = route.retentionYears
        obligations.confidentiality = route.confidentiality
        obligations.reidentificationAllowed = route.allowReidentification
        return .success(obligations)
    }

    /// For each person whose data flows, a valid consent from someone with the capacity to give
    /// it (domain.md "Who may consent to sharing"). Returns the categories every needed consent covers.
    func consentCoverage(ids: [String], request: DecisionRequest, categories requested: Set<String>, recipient: Partner) -> Result<UInt64, RouteFailure> {
        let date = request.facts.date
        let requestedBits = request.paths.categoryBits
        let recipientKind = "kind:" + recipient.kind
        let consents = request.facts.consents
        var validIndices: [Int] = []
        validIndices.reserveCapacity(ids.count)
        for id in ids {
            guard let index = consents.firstIndex(where: { $0.id == id }) else {
                return .failure(RouteFailure(reason: "consent `\(id)` is not registered"))
            }
            let c = consents[index]
            // A consent lifts the secrecy of the partner that obtained and registered it, for
            // what it obtained: another partner cannot borrow it (a guardian's own consent is
            // the guardian's declaration and counts for every sender).
            guard c.counts(forSender: request.sender) else {
                return .failure(RouteFailure(reason: "consent `\(id)` was registered by another partner: a consent counts only for exchanges of the partner that obtained and registered it"))
            }
            if !c.withdrawn && (c.validFrom.map { $0 <= date } ?? true) && (c.validUntil.map { $0 >= date } ?? true)
                && c.purposes.contains(request.purpose) && (c.recipients.contains(recipient.id) || c.recipients.contains(recipientKind))
            {
                validIndices.append(index)
            }
        }
        let valid = validIndices.lazy.map { consents[$0] }
        guard !request.subjects.isEmpty else { return .failure(RouteFailure(reason: "a consent basis needs the subjects the data is about")) }
        var covered = requestedBits
        // Data no subject is said to be about needs a consent too: whose, is unknown, so it is
        // not covered (withheld) rather than let through unconsented.
        var claimed: UInt64 = 0
        for subject in request.subjects {
            let concerns = subject.categoryBits.map { $0 & requestedBits } ?? requestedBits
            claimed |= concerns
            if concerns == 0 { continue }
            // Who may consent depends on the age for someone not competent (a parent, a
            // guardian or a representative): without it there is no telling, so no consent.
            // Someone competent without an age counts as an adult: only their own consent counts.
            guard let age = subject.age ?? (subject.competent ? 18 : nil) else {
                return .failure(RouteFailure(reason: "the age of `\(subject.ref)` is needed: who consents for a person who is not competent depends on it"))
            }
            var grantedBits: UInt64 = 0
            var anyOfTheirs = false
            if !subject.competent || age < 12 {
                if let guardian = subject.guardian {
                    for c in valid where c.subject == subject.ref {
                        anyOfTheirs = true
                        if c.grantor == "guardian" && c.grantorRef == guardian { grantedBits |= c.categoryBits }
                    }
                } else if age >= 18 {
                    for c in valid where c.subject == subject.ref {
                        anyOfTheirs = true
                        if c.grantor == "representative" { grantedBits |= c.categoryBits }
                    }
                } else {
                    // Every parent with custody must consent (joint custody: both).
                    guard !subject.custodyHolders.isEmpty else {
                        return .failure(RouteFailure(reason: "subject `\(subject.ref)` cannot consent and no parent holds custody"))
                    }
                    var all: UInt64 = ~0
                    for holder in subject.custodyHolders {
                        var theirs: UInt64 = 0
                        var found = false
                        for c in valid where c.subject == subject.ref && c.grantor == "parent_with_custody" && c.grantorRef == holder {
                            theirs |= c.categoryBits
                            found = true
                        }
                        guard found else {
                            return .failure(RouteFailure(reason: "subject `\(subject.ref)` is under 12 or not competent: every parent with custody must consent, `\(holder)` did not"))
                        }
                        all &= theirs
                    }
                    let granted = concerns & all
                    if granted == 0 { return .failure(RouteFailure(reason: "the parents' consents cover none of the categories about `\(subject.ref)`")) }
                    covered &= ~(concerns & ~granted)
                    continue
                }
            } else {
                // From 12 the young person decides alone; parents neither co-consent nor veto.
                for c in valid where c.subject == subject.ref {
                    anyOfTheirs = true
                    if c.grantor == "self" { grantedBits |= c.categoryBits }
                }
            }
            if grantedBits == 0 {
                let reason = anyOfTheirs ? "the consent for `\(subject.ref)` was not given by someone with the capacity to give it" : "no valid consent of or for `\(subject.ref)`"
                return .failure(RouteFailure(reason: reason))
            }
            covered &= ~(concerns & ~grantedBits)
        }
        return .success(covered & claimed)
    }
}

/// The facts a forbid rule can test, computed once per decision.
struct ForbidContext {
    let table: CaseTable
    let sender: Partner
    let recipient: Partner
    let route: Route?
    let released: FieldBits
    let registry: PartnerRegistry
    let releasedCategories: UInt64

    init(table: CaseTable, sender: Partner, recipient: Partner, route: Route?, released: FieldBits, registry: PartnerRegistry) {
        self.table = table
        self.sender = sender
        self.recipient = recipient
        self.route = route
        self.released = released
        self.registry = registry
        var categories: UInt64 = 0
        let catalogue = FieldCatalogue.shared
        for id in 0..<catalogue.paths.count where released.contains(id) { categories |= 1 << UInt64(catalogue.categoryOf[id]) }
        releasedCategories = categories
    }

    func matches(_ rule: ForbidRule, _ request: DecisionRequest) -> Bool {
        if !rule.from.isEmpty && !rule.from.contains(where: { $0.matches(sender) }) { return false }
        if !rule.to.isEmpty && !rule.to.contains(where: { $0.matches(recipient) }) { return false }
        if !rule.purposes.isEmpty && !rule.purposes.contains(request.purpose) { return false }
        if !rule.grounds.isEmpty && !rule.grounds.contains(request.basis.ground) { return false }
        if !rule.categories.isEmpty && rule.compiled.categories & releasedCategories == 0 { return false }
        if !rule.fields.isEmpty && !rule.compiled.fields.intersects(released) { return false }
        for fact in rule.compiled.facts where !holds(fact, request) { return false }
        return true
    }

    /// Why a forbid rule does not match (for explanations).
    func whyNot(_ rule: ForbidRule, _ request: DecisionRequest) -> String {
        if !rule.from.isEmpty && !rule.from.contains(where: { $0.matches(sender) }) { return "the sender is not \(list(rule.from))" }
        if !rule.to.isEmpty && !rule.to.contains(where: { $0.matches(recipient) }) { return "the recipient is not \(list(rule.to))" }
        if !rule.purposes.isEmpty && !rule.purposes.contains(request.purpose) { return "the purpose is not \(rule.purposes.sorted().joined(separator: ", "))" }
        if !rule.grounds.isEmpty && !rule.grounds.contains(request.basis.ground) { return "the ground is not \(rule.grounds.sorted().joined(separator: ", "))" }
        if !rule.categories.isEmpty && rule.compiled.categories & releasedCategories == 0 { return "none of \(rule.categories.sorted().joined(separator: ", ")) would flow" }
        if !rule.fields.isEmpty && !rule.compiled.fields.intersects(released) { return "none of \(rule.fields.sorted().joined(separator: ", ")) would flow" }
        for fact in rule.compiled.facts where !holds(fact, request) { return "`\(fact.rawValue)` does not hold" }
        return "all its conditions hold"
    }

    func list(_ refs: [PartyRef]) -> String { refs.map(\.description).joined(separator: ", ") }

    func holds(_ fact: ForbidFact, _ request: DecisionRequest) -> Bool {
        switch fact {
        case .caseClosed: return request.facts.caseClosed
        case .senderNotMember: return !table.isMember(sender, on: request.facts.date)
        case .recipientNotMember: return !table.isMember(recipient, on: request.facts.date)
        case .statutoryGroundWrongRecipient:
            guard let kind = Vocabulary.groundRecipientKind[request.basis.ground] else { return false }
            if recipient.kind != kind { return true }
            if request.basis.ground == "jw-7.3.11-4" { return !(request.facts.supervisionOrderActive && request.facts.supervisionOrderInstitution == recipient.id) }
            return false
        case .safetyExceptionIncomplete:
            guard case .safetyException(let s) = request.basis else { return false }
            return !s.hasJustification || !s.hasProfessional || (s.ground == "conflict-of-duties" && !s.conflictJudgementComplete)
        case .bulk:
            return request.subjects.count > (route?.maxSubjects ?? 8)
        case .locationMayReachKeptApart:
            let refs = Set(request.subjects.map(\.ref))
            let keptApart = request.facts.keepApart.contains { refs.contains($0.0) }
            let discloses = route?.disclosesToFamily ?? true
            return keptApart && discloses
        case .bystanderReporterWithoutConsent:
            return request.facts.reporterKind == "bystander" && !request.facts.reporterConsented
        case .reporterProtected:
            return request.facts.reporterProtected
        case .consentWithoutCapacity:
            guard case .consent(let ids) = request.basis else { return false }
            let used = request.facts.consents.filter { ids.contains($0.id) }
            return !used.isEmpty && used.allSatisfy { $0.grantor == "parent_without_custody" }
        case .unknown:
            return true  // an unknown fact never lets a forbid fail open
        }
    }
}

/// ISO date arithmetic for the policies (the calendar itself is ``CalendarDate``'s).
enum DateText {
    static func adding(days: Int, to date: String) -> String { CalendarDate.adding(days: days, to: date) }
}

extension Obligations {
    init(withheld: Set<String>) {
        self.init()
        let paths = FieldPaths(withheld)
        withheldIDs = paths.ids
        withheldUnknown = paths.unknown
    }

    init(withheld paths: FieldPaths) {
        self.init()
        withheldIDs = paths.ids
        withheldUnknown = paths.unknown
    }
}

/// The requested `category.field` paths, numbered once per decision.
struct FieldPaths {
    /// Known fields: catalogue id; unknown paths are always withheld.
    let ids: [Int]
    let unknown: [String]
    let categoryBits: UInt64
    let categories: Set<String>

    init(_ fields: Set<String>) {
        let catalogue = FieldCatalogue.shared
        var ids: [Int] = []
        ids.reserveCapacity(fields.count)
        var unknown: [String] = []
        var bits: UInt64 = 0
        for path in fields {
            if let id = catalogue.id(ofPath: path) {
                ids.append(id)
                bits |= 1 << UInt64(catalogue.categoryOf[id])
            } else {
                unknown.append(path)
            }
        }
        ids.sort()
        self.ids = ids
        self.unknown = unknown
        self.categoryBits = bits
        var categories = Set<String>()
        var remaining = bits
        while remaining != 0 {
            let c = remaining.trailingZeroBitCount
            categories.insert(catalogue.categories[c])
            remaining &= remaining - 1
        }
        self.categories = categories
    }
}
