import Foundation
import KetenpoortCore
import Testing

@testable import KetenpoortPolicy

/// SplitMix64: a small seeded generator, so a failing case can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

let exampleRegion: PolicySet = {
    let result = PolicyLoader.load(directory: repositoryRoot + "/Policies")
    return result.policySet!
}()

/// Random requests over the example region's vocabulary.
func randomRequests(count: Int, seed: UInt64) -> [DecisionRequest] {
    var rng = SeededGenerator(seed: seed)
    let set = exampleRegion
    let partners = set.registry.partners.map(\.id)
    let tables = Array(set.tables.keys).sorted()
    let allPurposes = Array(Set(set.tables.values.flatMap { $0.purposes.keys })).sorted()
    let allFields = Vocabulary.fields.flatMap { category, fields in fields.map { "\(category).\($0)" } }.sorted()
    let grounds = ["consent", "wmo-5.2.6", "bw-1.240", "jw-7.3.11-4", "conflict-of-duties", "statutory"]
    var requests: [DecisionRequest] = []
    let routes = tables.flatMap { t in set.tables[t]!.routes.map { (t, $0) } }
    func concrete(_ refs: [PartyRef], _ rng: inout SeededGenerator) -> String {
        let candidates = set.registry.partners.filter { p in refs.contains { $0.matches(p) } }.map(\.id)
        return candidates.randomElement(using: &rng) ?? partners.randomElement(using: &rng)!
    }
    for i in 0..<count {
        // Two in three requests follow a declared route (then perturbed); the rest are random.
        let onRoute = Int.random(in: 0..<3, using: &rng) < 2
        let routePick = routes.randomElement(using: &rng)!
        let sender = onRoute ? concrete(routePick.1.from, &rng) : partners.randomElement(using: &rng)!
        let recipient = onRoute ? concrete(routePick.1.to, &rng) : partners.randomElement(using: &rng)!
        let ground = onRoute ? routePick.1.grounds.keys.sorted().randomElement(using: &rng)! : grounds.randomElement(using: &rng)!
        let basis: SecrecyBasis
        switch ground {
        case "consent": basis = .consent(ids: ["c\(i)"])
        case "statutory": basis = .statutory(article: (onRoute ? routePick.1.grounds["statutory"]?.article : nil) ?? ["Besluit politiegegevens art. 4:2", "WGS art. 2.1", "BW 1:238"].randomElement(using: &rng)!)
        default:
            basis = .safetyException(SafetyException(ground: ground, hasJustification: Int.random(in: 0..<4, using: &rng) > 0, hasProfessional: true, meldcodeStepsRecorded: Int.random(in: 0..<4, using: &rng) > 0, conflictJudgementComplete: Int.random(in: 0..<4, using: &rng) > 0))
        }
        let routeFields = routePick.1.categories.flatMap { c, rule in rule.fields.keys.map { "\(c).\($0)" } }.sorted()
        let fields = Set((0..<Int.random(in: 1...6, using: &rng)).map { _ in
            (onRoute && Bool.random(using: &rng) ? routeFields.randomElement(using: &rng) : nil) ?? allFields.randomElement(using: &rng)!
        })
        let age = Int.random(in: 3...60, using: &rng)
        var facts = CaseFacts(date: ["2023-02-01", "2025-06-01", "2026-05-01", "2026-05-01", "2026-08-01"].randomElement(using: &rng)!)
        facts.supervisionOrderActive = Bool.random(using: &rng)
        facts.supervisionOrderInstitution = ["jeugdbescherming-west", "william-schrikker", nil].randomElement(using: &rng)!
        facts.caseClosed = Int.random(in: 0..<10, using: &rng) == 0
        let purpose = onRoute ? routePick.1.purposes.randomElement(using: &rng)! : allPurposes.randomElement(using: &rng)!
        let grantor = ["self", "self", "parent_with_custody", "parent_without_custody", "guardian"].randomElement(using: &rng)!
        facts.consents = [
            ConsentFact(id: "c\(i)", subject: "s", grantor: grantor, grantorRef: "mother", registeredBy: sender, purposes: [purpose], recipients: [recipient],
                        categories: Set(fields.map { String($0.split(separator: ".")[0]) }), withdrawn: Int.random(in: 0..<5, using: &rng) == 0)
        ]
        requests.append(
            DecisionRequest(
                sender: sender, caseTable: onRoute ? routePick.0 : tables.randomElement(using: &rng)!, purpose: purpose, recipient: recipient, basis: basis,
                subjects: [Subject(ref: "s", role: "child", age: age, custodyHolders: ["mother"])], fields: fields, facts: facts))
    }
    return requests
}

@Suite("Evaluator properties (seeded)")
struct EvaluatorPropertyTests {
    static let requests = randomRequests(count: 4_000, seed: 20_261_122)

    @Test("the generator produces permits as well as denials (the properties below are not vacuous)")
    func generatorCoversBoth() {
        let decisions = Self.requests.map { exampleRegion.evaluate($0) }
        #expect(decisions.filter(\.isPermit).count >= 20)
        #expect(decisions.filter { !$0.isPermit }.count >= 1_000)
    }

    @Test("default deny: with no routes, nothing is permitted")
    func defaultDeny() {
        var empty = exampleRegion
        for table in empty.tables.values { for route in table.routes { empty = empty.removingRoute(route.id) } }
        for request in Self.requests { #expect(!empty.evaluate(request).isPermit) }
    }

    @Test("a forbid always wins")
    func forbidWins() {
        let allPurposes = Set(exampleRegion.tables.values.flatMap { $0.purposes.keys })
        let everything = exampleRegion.adding(forbid: ForbidRule(id: "everything", label: "Alles verboden", purposes: allPurposes))
        for request in Self.requests {
            let decision = everything.evaluate(request)
            #expect(!decision.isPermit)
            if exampleRegion.tables[request.caseTable]?.purposes[request.purpose] != nil, !request.fields.isEmpty,
                exampleRegion.registry.partner(id: request.recipient) != nil
            {
                #expect(decision.rules.contains("everything"))
            }
        }
    }

    @Test("removing a permit never grants more")
    func monotone() {
        let routeIDs = exampleRegion.tables.values.flatMap { $0.routes.map(\.id) }
        for routeID in routeIDs {
            let smaller = exampleRegion.removingRoute(routeID)
            for request in Self.requests.prefix(1_500) {
                let before = exampleRegion.evaluate(request)
                let after = smaller.evaluate(request)
                if after.isPermit {
                    #expect(before.isPermit, "removing \(routeID) granted a permit")
                    #expect(Set(after.obligations.released.keys).isSubset(of: Set(before.obligations.released.keys)))
                }
            }
        }
    }

    @Test("released ⊆ requested, and released ∪ withheld = requested")
    func releasedSubset() {
        for request in Self.requests {
            let decision = exampleRegion.evaluate(request)
            let released = Set(decision.obligations.released.keys)
            #expect(released.isSubset(of: request.fields))
            #expect(released.union(decision.obligations.withheld) == request.fields)
            #expect(released.isDisjoint(with: decision.obligations.withheld))
        }
    }

    @Test("a statutory ground never permits towards another recipient than the one it names")
    func statutoryBinding() {
        for request in Self.requests {
            guard case .safetyException(let s) = request.basis, let kind = Vocabulary.groundRecipientKind[s.ground] else { continue }
            let recipient = exampleRegion.registry.partner(id: request.recipient)!
            let decision = exampleRegion.evaluate(request)
            if recipient.kind != kind { #expect(!decision.isPermit) }
            if s.ground == "jw-7.3.11-4" && decision.isPermit {
                #expect(request.facts.supervisionOrderActive && request.facts.supervisionOrderInstitution == recipient.id)
            }
        }
    }

    @Test("a consent registered by another partner than the sender never permits (unless it is a guardian's own consent)")
    func consentOfAnotherPartner() {
        var permitsBefore = 0
        for var request in Self.requests {
            guard case .consent = request.basis else { continue }
            if exampleRegion.evaluate(request).isPermit { permitsBefore += 1 }
            request.facts.consents = request.facts.consents.map { c in
                var other = c
                other.registeredBy = "another-partner"
                return other
            }
            let decision = exampleRegion.evaluate(request)
            #expect(!decision.isPermit, "\(request.sender) relied on another partner's consent")
            // The guardian's own consent (grantor and registrar the same institution) still counts.
            request.facts.consents = request.facts.consents.map { c in
                var own = c
                own.grantor = "guardian"
                own.grantorRef = "jeugdbescherming-west"
                own.registeredBy = "jeugdbescherming-west"
                return own
            }
            request.subjects = request.subjects.map { s in
                var child = s
                child.guardian = "jeugdbescherming-west"
                child.competent = false
                return child
            }
            var senderRegistered = request
            senderRegistered.facts.consents = senderRegistered.facts.consents.map { c in
                var own = c
                own.registeredBy = request.sender
                return own
            }
            // The same as if the sender had registered it (the guardian's consent is not bound to a sender).
            #expect(exampleRegion.evaluate(request).isPermit == exampleRegion.evaluate(senderRegistered).isPermit)
        }
        #expect(permitsBefore > 0, "the property is not vacuous")
    }

    @Test("every permit carries the policy version and a deciding route")
    func permitsExplained() {
        for request in Self.requests {
            let decision = exampleRegion.evaluate(request)
            #expect(decision.policyVersion == exampleRegion.version)
            #expect(!decision.rules.isEmpty)
            if decision.isPermit { #expect(!decision.explanation.isEmpty) }
        }
    }
}
