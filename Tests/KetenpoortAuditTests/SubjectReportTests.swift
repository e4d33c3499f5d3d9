import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy
import Testing

@testable import KetenpoortAudit

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

@Suite("Audit log: exchange entries, subject reports (GDPR art. 15), queries")
struct SubjectReportTests {
    static let policies: PolicySet = PolicyLoader.load(directory: packageRoot + "/Policies").policySet!

    // Test-range BSNs (999990000–999999999, 11-check).
    static let child = try! BSN("999990019")
    static let mother = try! BSN("999990020")
    static let other = try! BSN("999990032")

    func request(_ json: String) throws -> DecisionRequest { try DecisionRequest(json: try JSONParser.parse(json)) }

    static let meldcode = #"{"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}"#
    static let childSubject = #"[{"ref": "child", "role": "child", "age": 9, "custody": ["mother", "father"]}]"#

    /// Decides, records and appends one exchange; returns its sequence.
    func log(_ log: AuditLog, _ recorder: AuditRecorder, _ json: String, subjects: [BSN], texts: [String: String] = [:]) async throws -> (Int64, Decision) {
        let r = try request(json)
        let decision = Self.policies.evaluate(r)
        let record = try recorder.exchange(
            ExchangeEvent(exchangeID: UUID().uuidString, request: r, decision: decision, subjects: subjects, texts: texts), registry: Self.policies.registry)
        return (try await log.append(record), decision)
    }

    /// A log of six exchanges about the child (one denied), one about someone else.
    func scenario(keys: LogKeys, path: String) async throws -> [Int64] {
        let recorder = AuditRecorder(keys: keys)
        let log = try AuditLog(path: path, signer: try keys.signer)
        defer { log.close() }
        var sequences: [Int64] = []
        // 1. A local team reports to Veilig Thuis; the reporter is protected.
        let (s1, d1) = try await self.log(log, recorder, """
            {"sender": "wijkteam-dordrecht", "caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1", "meldcode": \(Self.meldcode)},
             "subjects": \(Self.childSubject), "fields": ["identity.bsn", "concern_signal.summary"],
             "facts": {"date": "2026-05-01", "reporter": {"kind": "professional", "protected": true}}}
            """, subjects: [Self.child], texts: ["justification": "Kind van 9 vertelt over geweld thuis, zegt juf Pietersen"])
        #expect(d1.isPermit)
        sequences.append(s1)
        // 2. The police inform Veilig Thuis (Wpg: not in an art. 15 report).
        let (s2, d2) = try await self.log(log, recorder, """
            {"sender": "politie-zhz", "caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "statutory", "article": "Besluit politiegegevens art. 4:2"}, "subjects": \(Self.childSubject),
             "fields": ["identity.bsn", "criminal.incident"], "facts": {"date": "2026-05-02"}}
            """, subjects: [Self.child])
        #expect(d2.isPermit)
        sequences.append(s2)
        // 3. The shelter tells Veilig Thuis the mother and child are safely housed.
        let (s3, d3) = try await self.log(log, recorder, """
            {"sender": "vrouwenopvang-zhz", "caseTable": "mda-zhz", "purpose": "safety-plan", "recipient": "veilig-thuis-zhz",
             "subjects": [{"ref": "mother", "role": "parent", "age": 34}], "basis": {"type": "consent", "consentIds": ["c-mother"]},
             "fields": ["identity.bsn", "location_protected.safelyHoused"],
             "facts": {"date": "2026-05-03", "keepApart": [{"protected": "mother", "from": "father"}],
                       "consents": [{"id": "c-mother", "subject": "mother", "grantor": "self", "purposes": ["safety-plan"], "recipients": ["veilig-thuis-zhz"], "categories": ["identity", "location_protected"]}]}}
            """, subjects: [Self.mother, Self.child])
        #expect(d3.isPermit)
        sequences.append(s3)
        // 4. Veilig Thuis informs the Child Protection Board (BW 1:240): shown as it is.
        let (s4, d4) = try await self.log(log, recorder, """
            {"sender": "veilig-thuis-zhz", "caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "raad-kinderbescherming",
             "basis": {"type": "safety-exception", "ground": "bw-1.240", "justification": "verzoek tot onderzoek", "professional": "vt-2"},
             "subjects": \(Self.childSubject), "fields": ["identity.bsn", "safety_assessment.summary"], "facts": {"date": "2026-05-04"}}
            """, subjects: [Self.child])
        #expect(d4.isPermit)
        sequences.append(s4)
        // 5. Denied: no data flowed, so not in the report.
        let (s5, d5) = try await self.log(log, recorder, """
            {"sender": "wijkteam-dordrecht", "caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "professional": "wt-1", "meldcode": \(Self.meldcode)},
             "subjects": \(Self.childSubject), "fields": ["identity.bsn"], "facts": {"date": "2026-05-05"}}
            """, subjects: [Self.child])
        #expect(!d5.isPermit)
        sequences.append(s5)
        // 6. About someone else.
        let (s6, _) = try await self.log(log, recorder, """
            {"sender": "veilig-thuis-zhz", "caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "raad-kinderbescherming",
             "basis": {"type": "safety-exception", "ground": "bw-1.240", "justification": "x", "professional": "vt-2"},
             "subjects": \(Self.childSubject), "fields": ["identity.bsn"], "facts": {"date": "2026-05-06"}}
            """, subjects: [Self.other])
        sequences.append(s6)
        _ = try await log.checkpoint()
        return sequences
    }

    @Test("an art. 15 report lists recipients with proofs, leaves out police and shelter entries, generalises a protected reporter")
    func subjectReport() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let sequences = try await scenario(keys: keys, path: path)
        let store = try SQLiteAuditStore(readingFrom: path)
        let report = try SubjectReport.build(store: store, pseudonyms: try keys.subjectPseudonyms(Self.child))
        #expect(report.items.map(\.sequence) == [sequences[0], sequences[3]])
        #expect(report.items[0].sender == "a reporter whose identity is protected")
        #expect(report.items[0].recipient == "veilig-thuis-zhz")
        #expect(report.items[0].basis == "safety-exception (wmo-5.2.6)")
        #expect(report.items[1].sender == "veilig-thuis-zhz")
        #expect(report.items[1].recipient == "raad-kinderbescherming")
        #expect(report.items[1].purpose == "safety-assessment")
        #expect(report.leftOut == [SubjectReport.policeDomain: 1, SubjectReport.protectedLocation: 1])
        #expect(report.generalised == [SubjectReport.reporterProtected: 1])
        for item in report.items {
            let proof = try #require(item.proof)
            #expect(try proof.verify(keys: try keys.verifierKeys).treeSize == 6)
        }
        let json = report.json.serialized()
        #expect(!json.contains("wijkteam-dordrecht"))
        #expect(!json.contains("vrouwenopvang"))
        #expect(!json.contains(Self.child.digits))
        // The mother's report holds nothing: her one exchange went through the shelter.
        let motherReport = try SubjectReport.build(store: store, pseudonyms: try keys.subjectPseudonyms(Self.mother))
        #expect(motherReport.items.isEmpty)
        #expect(motherReport.leftOut == [SubjectReport.protectedLocation: 1])
    }

    @Test("entries written before a key rotation are still found for the person")
    func afterRotation() async throws {
        let path = temporaryLogPath()
        _ = try await scenario(keys: try testLogKeys(["k1"]), path: path)
        let rotated = try testLogKeys(["k2", "k1"])
        let recorder = AuditRecorder(keys: rotated)
        let log = try AuditLog(path: path, signer: try rotated.signer)
        _ = try await self.log(log, recorder, """
            {"sender": "veilig-thuis-zhz", "caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "raad-kinderbescherming",
             "basis": {"type": "safety-exception", "ground": "bw-1.240", "justification": "x", "professional": "vt-2"},
             "subjects": \(Self.childSubject), "fields": ["identity.bsn"], "facts": {"date": "2026-06-01"}}
            """, subjects: [Self.child])
        _ = try await log.checkpoint()
        log.close()
        let store = try SQLiteAuditStore(readingFrom: path)
        let report = try SubjectReport.build(store: store, pseudonyms: try rotated.subjectPseudonyms(Self.child))
        #expect(report.items.count == 3)
        for item in report.items { #expect(try item.proof?.verify(keys: try rotated.verifierKeys) != nil) }
        #expect(try AuditVerifier.verify(path: path, keys: try rotated.verifierKeys).isValid)
    }

    @Test("exchange entries hold pseudonyms, rule ids, fields, basis and dates; queries filter on them")
    func entriesAndQueries() async throws {
        let keys = try testLogKeys()
        let path = temporaryLogPath()
        let sequences = try await scenario(keys: keys, path: path)
        let store = try SQLiteAuditStore(readingFrom: path)
        let first = try JSONParser.parse(try #require(try store.entry(sequence: sequences[0])?.body))
        #expect(first["kind"]?.stringValue == "exchange-permitted")
        #expect(first["rules"] == ["local-team-reports-to-vt"])
        #expect(first["basis"]?["ground"]?.stringValue == "wmo-5.2.6")
        #expect(first["review"]?.stringValue == "pending")
        #expect(first["informSubjectBy"]?.stringValue == "2026-05-29")
        #expect(first["retainUntil"]?.stringValue == "2046-05-01")
        #expect(first["subjects"] == .array([.string(try AuditRecorder(keys: keys).subjectPseudonym(Self.child))]))
        #expect(first["texts"]?["justification"]?.stringValue?.count == 64)
        #expect(first["policyVersion"]?.stringValue == Self.policies.version)
        let denied = try JSONParser.parse(try #require(try store.entry(sequence: sequences[4])?.body))
        #expect(denied["kind"]?.stringValue == "exchange-denied")
        #expect(denied["decision"]?.stringValue == "deny")

        func matching(_ configure: (inout AuditQuery) throws -> Void) throws -> [Int64] {
            var q = AuditQuery()
            try configure(&q)
            var found: [Int64] = []
            try store.entries(matching: q) { found.append($0.sequence); return true }
            return found
        }
        #expect(try matching { $0.recipient = "raad-kinderbescherming" } == [sequences[3], sequences[5]])
        #expect(try matching { $0.decision = "deny" } == [sequences[4]])
        #expect(try matching { $0.basisType = "statutory" } == [sequences[1]])
        #expect(try matching { $0.sender = "politie-zhz"; $0.purpose = "safety-assessment" } == [sequences[1]])
        #expect(try matching { $0.subjects = try keys.subjectPseudonyms(Self.other) } == [sequences[5]])
        #expect(try matching { $0.subjects = try keys.subjectPseudonyms(Self.mother) } == [sequences[2]])
        #expect(try matching { $0.afterSequence = sequences[4]; $0.kind = "exchange-permitted" } == [sequences[5]])
        #expect(try matching { $0.from = "2000-01-01"; $0.limit = 2 } == [sequences[0], sequences[1]])
        #expect(try matching { $0.until = "2000-01-01" }.isEmpty)

        // No BSN and no free text anywhere in the database files.
        let raw = try Data(contentsOf: URL(fileURLWithPath: path)) + ((try? Data(contentsOf: URL(fileURLWithPath: path + "-wal"))) ?? Data())
        for bsn in [Self.child, Self.mother, Self.other] { #expect(raw.range(of: Data(bsn.digits.utf8)) == nil) }
        #expect(raw.range(of: Data("Pietersen".utf8)) == nil)
    }
}
