import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy
import KetenpoortServer
import Testing

@Suite("Re-identification is policy-gated and always logged")
struct ReidentificationTests {
    let policies = PolicyLoader.load(directory: packageRoot + "/Policies").policySet!
    let keys = try! KeyRing(keys: [("k1", Array(repeating: 9, count: 32))])

    /// A day on which mental-health care is still a member of the local table (it left on 2026-06-30).
    static let memberDay = "2026-03-01"

    /// The local team hands over to mental-health care with `bsn: token` and `reidentification: true`.
    func token() throws -> String {
        try Tokeniser(keys: keys).token(of: "999990019", domain: Pseudonymiser.recipientDomain(caseTable: "lokaal-dordrecht", recipient: "ggz-zhz"))
    }

    @Test("permitted for the route's recipient and purpose: the value comes back and a record was logged first")
    func permitted() throws {
        var records: [Reidentification.Record] = []
        let value = try Reidentification(keys: keys).reidentify(
            token: try token(), caseTable: "lokaal-dordrecht", partner: "ggz-zhz", purpose: "handover", policies: policies, date: Self.memberDay) { records.append($0) }
        #expect(value == "999990019")
        #expect(records.count == 1)
        #expect(records[0].subjectPseudonym.hasPrefix("ps1.k1."))
        #expect(!records[0].subjectPseudonym.contains("999990019"))
        #expect(records[0].policyVersion == policies.version)
    }

    @Test("refused for another partner, another purpose, or a route without re-identification")
    func refused() throws {
        var logged = 0
        for (table, partner, purpose) in [("lokaal-dordrecht", "wijkteam-dordrecht", "handover"), ("lokaal-dordrecht", "ggz-zhz", "safety-plan"), ("mda-zhz", "veilig-thuis-zhz", "meldcode-report")] {
            #expect(throws: KetenpoortError(.forbidden, "")) {
                _ = try Reidentification(keys: keys).reidentify(token: try token(), caseTable: table, partner: partner, purpose: purpose, policies: policies, date: Self.memberDay) { _ in logged += 1 }
            }
        }
        #expect(logged == 0)
    }

    @Test("refused for a partner that has left the table (or not yet joined it), though the route names it")
    func refusedOutsideMembership() throws {
        var logged = 0
        for day in ["2026-07-01", "2023-12-31"] {  // ggz-zhz is a member from 2024-01-01 until 2026-06-30
            #expect(throws: KetenpoortError(.forbidden, "")) {
                _ = try Reidentification(keys: keys).reidentify(
                    token: try token(), caseTable: "lokaal-dordrecht", partner: "ggz-zhz", purpose: "handover", policies: policies, date: day) { _ in logged += 1 }
            }
        }
        #expect(logged == 0)
    }

    @Test("no durable log record, no re-identification (fail closed)")
    func failClosed() throws {
        struct DiskFull: Error {}
        #expect(throws: KetenpoortError(.auditUnavailable, "")) {
            _ = try Reidentification(keys: keys).reidentify(token: try token(), caseTable: "lokaal-dordrecht", partner: "ggz-zhz", purpose: "handover", policies: policies, date: Self.memberDay) { _ in throw DiskFull() }
        }
    }
}
