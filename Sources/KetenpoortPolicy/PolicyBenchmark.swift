import Foundation

/// `ketenpoort bench policy`: decisions per second and the median decision time as the number
/// of case tables grows (the tables are copies of the example region's, under new ids).
public enum PolicyBenchmark {
    public struct Result: Sendable {
        public let caseTables: Int
        public let decisions: Int
        public let decisionsPerSecond: Double
        public let medianNanoseconds: Double
        public let permits: Int
    }

    /// A policy set with `count` case tables: the example region's tables repeated.
    public static func scaled(_ base: PolicySet, caseTables count: Int) -> PolicySet {
        let originals = base.tables.values.sorted { ($0.id == "mda-zhz" ? "" : $0.id) < ($1.id == "mda-zhz" ? "" : $1.id) }
        var tables: [String: CaseTable] = [:]
        for i in 0..<count {
            let t = originals[i % originals.count]
            let id = i < originals.count ? t.id : "\(t.id)-\(i)"
            tables[id] = CaseTable(
                id: id, name: t.name, kind: t.kind, controllers: t.controllers, jointControllers: t.jointControllers,
                contactPoint: t.contactPoint, members: t.members, purposes: t.purposes, purposeOrder: t.purposeOrder, routes: t.routes,
                forbids: t.forbids, file: t.file, registry: base.registry)
        }
        return PolicySet(version: base.version, registry: base.registry, tables: tables, regionForbids: base.regionForbids)
    }

    /// The requests of the benchmark: the shape of the demo's exchanges, spread over the tables.
    public static func requests(for set: PolicySet, count: Int) -> [DecisionRequest] {
        let ids = set.tables.keys.filter { $0.hasPrefix("mda-zhz") }.sorted()
        var result: [DecisionRequest] = []
        for i in 0..<count {
            var facts = CaseFacts(date: "2026-05-01")
            facts.consents = [
                ConsentFact(id: "c", subject: "child", grantor: "self", registeredBy: "wijkteam-dordrecht", purposes: ["safety-assessment"], recipients: ["veilig-thuis-zhz"],
                            categories: ["identity", "household", "concern_signal", "safety_assessment"])
            ]
            let table = ids[i % ids.count]
            if i % 4 == 3 {
                // A denial: Wmo 5.2.6 without the meldcode steps.
                result.append(
                    DecisionRequest(
                        sender: "wijkteam-dordrecht", caseTable: table, purpose: "meldcode-report", recipient: "veilig-thuis-zhz",
                        basis: .safetyException(SafetyException(ground: "wmo-5.2.6", hasJustification: true, hasProfessional: true, meldcodeStepsRecorded: false, conflictJudgementComplete: false)),
                        subjects: [Subject(ref: "child", role: "child", age: 14)], fields: ["identity.bsn", "concern_signal.summary"], facts: facts))
            } else {
                result.append(
                    DecisionRequest(
                        sender: "wijkteam-dordrecht", caseTable: table, purpose: "safety-assessment", recipient: "veilig-thuis-zhz",
                        basis: .consent(ids: ["c"]), subjects: [Subject(ref: "child", role: "child", age: 14)],
                        fields: ["identity.bsn", "identity.name", "identity.birthDate", "household.members", "concern_signal.summary"], facts: facts))
            }
        }
        return result
    }

    /// Runs `decisions` decisions against a set with `caseTables` tables.
    public static func run(base: PolicySet, caseTables: Int, decisions: Int = 200_000) -> Result {
        let set = scaled(base, caseTables: caseTables)
        let requests = requests(for: set, count: 1_000)
        // Warm up.
        var permits = 0
        for request in requests where set.evaluate(request).isPermit { permits += 1 }
        let batch = 100
        var batchTimes: [Double] = []
        let clock = ContinuousClock()
        let start = clock.now
        var done = 0
        permits = 0
        while done < decisions {
            let batchStart = clock.now
            for j in 0..<batch {
                if set.evaluate(requests[(done + j) % requests.count]).isPermit { permits += 1 }
            }
            let elapsed = clock.now - batchStart
            batchTimes.append(Double(elapsed.components.attoseconds) / 1e9 / Double(batch) + Double(elapsed.components.seconds) * 1e9 / Double(batch))
            done += batch
        }
        let total = clock.now - start
        let seconds = Double(total.components.seconds) + Double(total.components.attoseconds) / 1e18
        batchTimes.sort()
        return Result(
            caseTables: caseTables, decisions: done, decisionsPerSecond: Double(done) / seconds,
            medianNanoseconds: batchTimes[batchTimes.count / 2], permits: permits)
    }
}
