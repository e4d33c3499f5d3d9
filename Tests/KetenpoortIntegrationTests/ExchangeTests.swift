import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// The exchange API end to end over real mutual TLS: consents, facts, decisions, the inbox,
/// reviews, idempotency and every problem code.
@Suite("Exchanges end to end", .serialized)
struct ExchangeTests {
    // Test-range BSNs (999990000–999999999, 11-check): a child and the parents.
    static let child = "999990019"
    static let mother = "999990020"
    static let father = "999990032"

    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let vt = PKIFixture.partner("veilig-thuis-zhz")
    let jgz = PKIFixture.partner("jgz-zhz")
    let officer = PKIFixture.officer("privacy-officer-zhz")

    /// An `Idempotency-Key` as the gateway stores it (its hash, never the key).
    static func storedKey(_ key: String) -> String { "sha256:" + Hex.encode(Crypto.sha256(Array(key.utf8))) }

    func post(_ client: TestHTTPSClient, _ path: String, _ body: String, headers: [(String, String)] = []) async throws -> TestResponse {
        try await client.request(path, method: .POST, headers: [("content-type", "application/json")] + headers, body: body)
    }

    static func consentBody(grantor: String, purpose: String = "meldcode-report", categories: String = #"["identity", "health"]"#) -> String {
        """
        {"caseTable": "mda-zhz", "subject": {"bsn": "\(child)", "age": 9},
         "grantor": {"capacity": "parent_with_custody", "bsn": "\(grantor)"},
         "purposes": ["\(purpose)"], "recipients": ["veilig-thuis-zhz"], "categories": \(categories)}
        """
    }

    static func exchangeBody(consents: [String], extraData: String = "") -> String {
        let ids = consents.map { "\"\($0)\"" }.joined(separator: ", ")
        return """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "consent", "consentIds": [\(ids)]},
             "subjects": [{"bsn": "\(child)", "role": "child", "age": 9}],
             "data": {"identity": {"bsn": "\(child)", "name": "Sanne Testkind"}, "health": {"summary": "astma, medicatie"},
                      "concern_signal": {"summary": "blauwe plekken op de armen"}\(extraData)}}
            """
    }

    /// Registers joint custody and both parents' consents; returns the consent ids.
    func consentOfBothParents(_ client: TestHTTPSClient) async throws -> [String] {
        let custody = try await post(client, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)", "\#(Self.father)"]}"#)
        #expect(custody.status == 201, "\(custody.body)")
        var ids: [String] = []
        for parent in [Self.mother, Self.father] {
            let r = try await post(client, "/v1/consents", Self.consentBody(grantor: parent))
            #expect(r.status == 201, "\(r.body)")
            ids.append(try #require(r.json?["consentId"]?.stringValue))
        }
        return ids
    }

    @Test("consent of both parents: 201, delivered sealed to Veilig Thuis only, acknowledged; withdrawal denies the next one; nothing personal in the database")
    func consentFlow() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)

        // One parent's consent is not enough for a child under 12 with joint custody.
        let half = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [ids[0]]))
        #expect(half.status == 403, "\(half.body)")
        #expect(half.json?["code"]?.stringValue == "exchange_denied")
        #expect((half.json?["reasons"]?.arrayValue ?? []).isEmpty == false)
        #expect(half.json?["logSequence"]?.intValue != nil)

        let sent = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(sent.status == 201, "\(sent.body)")
        let exchangeID = try #require(sent.json?["exchangeId"]?.stringValue)
        // A time-ordered id (UUID version 7, RFC 9562 variant), later than the refused one's.
        #expect(exchangeID.range(of: "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", options: .regularExpression) != nil, "\(exchangeID)")
        #expect(try #require(half.json?["exchangeId"]?.stringValue).prefix(13) <= exchangeID.prefix(13))
        #expect(sent.json?["released"] == ["health.summary", "identity.bsn", "identity.name"])
        #expect(sent.json?["withheld"] == ["concern_signal.summary"])
        #expect(sent.json?["review"]?.boolValue == false)
        let sequence = try #require(sent.json?["logSequence"]?.intValue)

        // The sender sees the state; nobody else learns the exchange exists.
        let state = try await team.request("/v1/exchanges/\(exchangeID)")
        #expect(state.status == 200)
        #expect(state.json?["delivery"]?["state"]?.stringValue == "delivered")
        let jgzClient = try await TestHTTPSClient.connect(port: gateway.port, cert: jgz.cert, key: jgz.key)
        #expect(try await jgzClient.request("/v1/exchanges/\(exchangeID)").status == 404)
        #expect(try await jgzClient.request("/v1/inbox").json?["items"]?.arrayValue?.isEmpty == true)

        // The recipient reads its inbox: what was released, transformed; then acknowledges.
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        let inbox = try await vtClient.request("/v1/inbox")
        let items = inbox.json?["items"]?.arrayValue ?? []
        #expect(items.count == 1)
        let item = try #require(items.first)
        #expect(item["exchangeId"]?.stringValue == exchangeID)
        #expect(item["data"]?["identity"]?["bsn"]?.stringValue == Self.child)
        #expect(item["data"]?["concern_signal"] == nil)
        #expect(item["subjects"]?.arrayValue?.first?["ref"]?.stringValue?.hasPrefix("ps1.") == true)
        let itemID = try #require(item["id"]?.stringValue)
        #expect(try await jgzClient.request("/v1/inbox/\(itemID)/ack", method: .POST).status == 404)
        #expect(try await vtClient.request("/v1/inbox/\(itemID)/ack", method: .POST).status == 200)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.isEmpty == true)
        #expect(try await team.request("/v1/exchanges/\(exchangeID)").json?["delivery"]?["state"]?.stringValue == "acknowledged")

        // The father withdraws (through the team that registered it): every later exchange is denied.
        #expect(try await jgzClient.request("/v1/consents/\(ids[1])/withdraw", method: .POST).status == 404)
        let withdrawn = try await team.request("/v1/consents/\(ids[1])/withdraw", method: .POST)
        #expect(withdrawn.status == 200, "\(withdrawn.body)")
        let after = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(after.status == 403, "\(after.body)")
        await team.close()
        await jgzClient.close()
        await vtClient.close()
        #expect(gateway.stop() == 0)

        // The log holds every decision, in order; the database holds no BSN, name or free text.
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db"])
        let kinds = export.stdout.split(separator: "\n").compactMap { try? JSONParser.parse(String($0))["kind"]?.stringValue }
        #expect(kinds == ["policy-reloaded", "fact-registered", "consent-registered", "consent-registered", "exchange-denied", "exchange-permitted", "consent-withdrawn", "exchange-denied"])
        #expect(kinds.count >= sequence)
        let inClear = textsInDatabase(gateway.directory + "/ketenpoort.db", [Self.child, Self.mother, Self.father, "Sanne", "astma", "blauwe plekken"])
        #expect(inClear.isEmpty, "in the database in clear: \(inClear.count) value(s)")
    }

    @Test("metrics: the inbox backlog per partner (items and the oldest's age) and the server certificate's expiry, labels from partners.yaml only")
    func backlogAndCertificateMetrics() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        func gauge(_ text: String, _ series: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        #expect(try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids)).status == 201)
        await team.close()
        // A scrape shows the last reading and starts the next one (at most once a second).
        func scrape(until series: String, is value: Double) async throws -> String {
            var text = ""
            for _ in 0..<40 {
                text = try operationsGet(port: gateway.operationsPort, path: "/metrics").body
                if gauge(text, series) == value { break }
                try await Task.sleep(for: .milliseconds(250))
            }
            return text
        }
        let metrics = try await scrape(until: #"ketenpoort_inbox_unacknowledged_items{partner="veilig-thuis-zhz"}"#, is: 1)
        #expect(gauge(metrics, #"ketenpoort_inbox_unacknowledged_items{partner="veilig-thuis-zhz"}"#) == 1, "\(metrics)")
        #expect(gauge(metrics, #"ketenpoort_inbox_unacknowledged_items{partner="jgz-zhz"}"#) == 0)
        let age = try #require(gauge(metrics, #"ketenpoort_inbox_oldest_unacknowledged_seconds{partner="veilig-thuis-zhz"}"#))
        #expect(age >= 0 && age < 60)
        let expiry = try #require(gauge(metrics, #"ketenpoort_certificate_expiry_timestamp_seconds{certificate="server"}"#))
        #expect(expiry > Date().timeIntervalSince1970 && expiry < Date().timeIntervalSince1970 + 20 * 365 * 86400)
        #expect(!metrics.contains(Self.child), "no BSN in a label")

        // Acknowledged: the backlog is empty at a following reading.
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        let item = try #require(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.first?["id"]?.stringValue)
        #expect(try await vtClient.request("/v1/inbox/\(item)/ack", method: .POST).status == 200)
        await vtClient.close()
        let after = try await scrape(until: #"ketenpoort_inbox_unacknowledged_items{partner="veilig-thuis-zhz"}"#, is: 0)
        #expect(gauge(after, #"ketenpoort_inbox_unacknowledged_items{partner="veilig-thuis-zhz"}"#) == 0, "\(after)")
    }

    @Test("Idempotency-Key: the same body replays the first answer; another body gets 409")
    func idempotency() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        let body = Self.exchangeBody(consents: ids)
        let first = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "k-1")])
        #expect(first.status == 201)
        // Same JSON, other formatting and member order: the same answer, not a second exchange.
        let reordered = try JSONParser.parse(body).objectValue!.reversed()
        let again = try await post(team, "/v1/exchanges", JSONValue.object(Array(reordered)).serialized(), headers: [("idempotency-key", "k-1")])
        #expect(again.status == 201)
        #expect(again.json?["exchangeId"] == first.json?["exchangeId"])
        #expect(again.json?["logSequence"] == first.json?["logSequence"])
        #expect(again.headers.first(name: "location") != nil && again.headers.first(name: "location") == first.headers.first(name: "location"))
        let conflict = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [ids[0]]), headers: [("idempotency-key", "k-1")])
        #expect(conflict.status == 409)
        #expect(conflict.json?["code"]?.stringValue == "idempotency_conflict")
        // Keys are per sender.
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        #expect(try await post(vtClient, "/v1/exchanges", body, headers: [("idempotency-key", "k-1")]).json?["exchangeId"] != first.json?["exchangeId"])
        let vtInbox = try await vtClient.request("/v1/inbox")
        #expect(vtInbox.json?["items"]?.arrayValue?.count == 1, "one delivery, not two")
        await team.close()
        await vtClient.close()
    }

    @Test("a certified institution acting as guardian consents in the parents' place; only it registers that consent, only while the guardianship is registered")
    func guardianConsent() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let institution = PKIFixture.partner("jeugdbescherming-west")
        let gi = try await TestHTTPSClient.connect(port: gateway.port, cert: institution.cert, key: institution.key)
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let guardianConsent = Self.consentBody(grantor: Self.mother)
            .replacingOccurrences(of: "\"capacity\": \"parent_with_custody\", \"bsn\": \"\(Self.mother)\"", with: "\"capacity\": \"guardian\"")
        // Only the institution itself registers its consent as guardian.
        let byTeam = try await post(team, "/v1/consents", guardianConsent)
        #expect(byTeam.status == 403, "\(byTeam.body)")
        let consent = try await post(gi, "/v1/consents", guardianConsent)
        #expect(consent.status == 201, "\(consent.body)")
        let id = try #require(consent.json?["consentId"]?.stringValue)
        // Without a registered guardianship the parents would have to consent: refused.
        let before = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [id]))
        #expect(before.status == 403, "\(before.body)")
        // Another institution cannot be named as guardian by a partner that is not entitled.
        let notEntitled = try await post(team, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "guardianship", "subject": "\#(Self.child)", "institution": "jeugdbescherming-west"}"#)
        #expect(notEntitled.status == 403)
        let fact = try await post(gi, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "guardianship", "subject": "\#(Self.child)", "institution": "jeugdbescherming-west"}"#)
        #expect(fact.status == 201, "\(fact.body)")
        let after = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [id]))
        #expect(after.status == 201, "\(after.body)")
        // A parent's consent does not count while a guardian is registered.
        let custody = try await post(team, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)"]}"#)
        #expect(custody.status == 201)
        let parent = try await post(team, "/v1/consents", Self.consentBody(grantor: Self.mother))
        let parentOnly = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [try #require(parent.json?["consentId"]?.stringValue)]))
        #expect(parentOnly.status == 403, "\(parentOnly.body)")
        await gi.close()
        await team.close()
    }

    /// A consent registration body for `subject` (the child unless given) with any grantor.
    static func consentBody(
        subject: String = child, age: Int, competent: Bool? = nil, capacity: String, grantorBSN: String?, recipients: String = #"["veilig-thuis-zhz"]"#,
        purposes: String = #"["meldcode-report"]"#, categories: String = #"["identity", "health"]"#, caseTable: String = "mda-zhz"
    ) -> String {
        let competence = competent.map { ", \"competent\": \($0)" } ?? ""
        let grantor = grantorBSN.map { ", \"bsn\": \"\($0)\"" } ?? ""
        return """
            {"caseTable": "\(caseTable)", "subject": {"bsn": "\(subject)", "age": \(age)\(competence)},
             "grantor": {"capacity": "\(capacity)"\(grantor)},
             "purposes": \(purposes), "recipients": \(recipients), "categories": \(categories)}
            """
    }

    @Test("a consent counts only for exchanges of the partner that registered it (it lifts that partner's secrecy); a guardian's own consent counts for the table")
    func consentOfAnotherPartner() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let dordrecht = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let gorinchemCert = PKIFixture.partner("wijkteam-gorinchem")
        let gorinchem = try await TestHTTPSClient.connect(port: gateway.port, cert: gorinchemCert.cert, key: gorinchemCert.key)
        let ids = try await consentOfBothParents(dordrecht)

        // Gorinchem cites the consents Dordrecht obtained: denied, and the reason says why.
        let borrowed = try await post(gorinchem, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(borrowed.status == 403 && borrowed.json?["code"]?.stringValue == "exchange_denied", "\(borrowed.body)")
        let explanations = (borrowed.json?["reasons"]?.arrayValue ?? []).compactMap { $0["explanation"]?.stringValue }.joined(separator: " | ")
        #expect(explanations.contains("registered by another partner"), "\(explanations)")
        for bsn in [Self.child, Self.mother, Self.father] { #expect(!borrowed.body.contains(bsn)) }
        // It cannot withdraw them either, and Dordrecht itself still relies on them.
        #expect(try await gorinchem.request("/v1/consents/\(ids[0])/withdraw", method: .POST).status == 404)
        let own = try await post(dordrecht, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(own.status == 201, "\(own.body)")
        // Mixing a consent of its own with one of another partner does not help either.
        let ownOfMother = try await post(gorinchem, "/v1/consents", Self.consentBody(grantor: Self.mother))
        #expect(ownOfMother.status == 201, "\(ownOfMother.body)")
        let mixed = try await post(gorinchem, "/v1/exchanges", Self.exchangeBody(consents: [try #require(ownOfMother.json?["consentId"]?.stringValue), ids[1]]))
        #expect(mixed.status == 403, "\(mixed.body)")

        // The guardian's own consent (registered by the institution acting as guardian) is the
        // guardian's declaration, not something a team obtained: it counts for every team.
        let institution = PKIFixture.partner("jeugdbescherming-west")
        let gi = try await TestHTTPSClient.connect(port: gateway.port, cert: institution.cert, key: institution.key)
        let fact = try await post(gi, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "guardianship", "subject": "\#(Self.child)", "institution": "jeugdbescherming-west"}"#)
        #expect(fact.status == 201, "\(fact.body)")
        let guardian = try await post(gi, "/v1/consents", Self.consentBody(age: 9, capacity: "guardian", grantorBSN: nil))
        #expect(guardian.status == 201, "\(guardian.body)")
        let guardianID = try #require(guardian.json?["consentId"]?.stringValue)
        for client in [dordrecht, gorinchem] {
            let sent = try await post(client, "/v1/exchanges", Self.exchangeBody(consents: [guardianID]))
            #expect(sent.status == 201, "\(sent.body)")
        }
        for client in [dordrecht, gorinchem, gi] { await client.close() }
    }

    @Test("the consent registry refuses consents that can never be valid (422, saying why, never echoing a BSN)")
    func impossibleConsents() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let adult = "999990044"  // test range, 11-check
        let cases: [(String, String, String, String)] = [
            // (what, body, expected code, a word the detail must hold)
            ("a parent without custody", Self.consentBody(age: 9, capacity: "parent_without_custody", grantorBSN: Self.father), "invalid_request", "without custody"),
            ("a representative for a competent adult", Self.consentBody(subject: adult, age: 40, capacity: "representative", grantorBSN: Self.mother), "invalid_request", "competent"),
            ("a parent with custody for an adult who cannot decide", Self.consentBody(subject: adult, age: 19, competent: false, capacity: "parent_with_custody", grantorBSN: Self.mother), "invalid_request", "adult"),
            ("a guardian for an adult", Self.consentBody(subject: adult, age: 19, competent: false, capacity: "guardian", grantorBSN: nil), "invalid_request", "adult"),
            ("a parent who is the child", Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: Self.child), "invalid_request", "subject"),
            ("a representative who is the adult", Self.consentBody(subject: adult, age: 40, competent: false, capacity: "representative", grantorBSN: adult), "invalid_request", "subject"),
            ("a self consent naming someone else", Self.consentBody(subject: adult, age: 40, capacity: "self", grantorBSN: Self.mother), "invalid_request", "subject"),
            ("a grantor BSN of five digits", Self.consentBody(subject: adult, age: 40, capacity: "self", grantorBSN: "12345"), "invalid_bsn", "grantor.bsn"),
            ("a grantor BSN failing the 11-check", Self.consentBody(subject: adult, age: 40, capacity: "self", grantorBSN: "999990018"), "invalid_bsn", "grantor.bsn"),
            ("a parent's BSN failing the 11-check", Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: "999990018"), "invalid_bsn", "grantor.bsn"),
        ]
        let institution = PKIFixture.partner("jeugdbescherming-west")
        let gi = try await TestHTTPSClient.connect(port: gateway.port, cert: institution.cert, key: institution.key)
        for (what, body, expected, word) in cases {
            let r = try await post(body.contains("\"guardian\"") ? gi : team, "/v1/consents", body)
            #expect(r.status == 422 && r.json?["code"]?.stringValue == expected, "\(what): \(r.status) \(r.body)")
            #expect(r.json?["detail"]?.stringValue?.contains(word) == true, "\(what): \(r.body)")
            for bsn in [Self.child, Self.mother, Self.father, adult, "12345", "999990018"] { #expect(!r.body.contains(bsn), "\(what) echoes a BSN: \(r.body)") }
        }
        // What may be valid still is: a representative for an adult who cannot decide, a
        // competent adult's own consent (with or without the grantor's BSN, which is theirs).
        for body in [
            Self.consentBody(subject: adult, age: 40, competent: false, capacity: "representative", grantorBSN: Self.mother),
            Self.consentBody(subject: adult, age: 40, capacity: "self", grantorBSN: nil),
            Self.consentBody(subject: adult, age: 40, capacity: "self", grantorBSN: adult),
            Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: Self.mother),
        ] {
            let r = try await post(team, "/v1/consents", body)
            #expect(r.status == 201, "\(body): \(r.body)")
        }
        await team.close()
        await gi.close()
    }

    @Test("consent recipients are partner ids or `kind:<kind>` with a kind of partners.yaml; anything else is refused before it is logged, never echoed")
    func consentRecipients() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        for recipients in [#"["kind:Piet Hein 999990123"]"#, #"["kind:"]"#, #"["kind:veilig thuis"]"#, #"["veilig-thuis-zhz", "Piet Hein 999990123"]"#] {
            let r = try await post(team, "/v1/consents", Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: Self.mother, recipients: recipients))
            #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(recipients): \(r.body)")
            #expect(r.json?["detail"]?.stringValue?.contains("veilig_thuis") == true, "the detail lists the kinds: \(r.body)")
            #expect(!r.body.contains("Piet") && !r.body.contains("999990123") && !r.body.contains("veilig thuis"), "\(r.body)")
        }
        for recipients in [#"["kind:veilig_thuis"]"#, #"["veilig-thuis-zhz", "kind:child_protection_board"]"#] {
            let r = try await post(team, "/v1/consents", Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: Self.mother, recipients: recipients))
            #expect(r.status == 201, "\(recipients): \(r.body)")
        }
        await team.close()
        #expect(gateway.stop() == 0)
        // Nothing of the refused values reached the log or the database.
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db"])
        #expect(!export.stdout.contains("Piet") && !export.stdout.contains("999990123"))
        #expect(export.stdout.contains("kind:veilig_thuis"))
        #expect(textsInDatabase(gateway.directory + "/ketenpoort.db", ["Piet Hein"]).isEmpty)
    }

    @Test("facts that can never be right are refused: custody without holders or held by the child, keep-apart from oneself (422, no BSN echoed)")
    func impossibleFacts() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        let five = [Self.mother, Self.father, "999990044", "999990056", "999990068"].map { "\"\($0)\"" }.joined(separator: ", ")
        let cases: [(TestHTTPSClient, String, String)] = [
            (team, "custody without holders", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": []}"#),
            (team, "custody with five holders", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": [\#(five)]}"#),
            (team, "custody held by the child", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)", "\#(Self.child)"]}"#),
            (team, "custody holder given twice", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)", "\#(Self.mother)"]}"#),
            (vtClient, "kept apart from the same person twice", #"{"caseTable": "mda-zhz", "type": "keep-apart", "subject": "\#(Self.child)", "from": ["\#(Self.father)", "\#(Self.father)"]}"#),
            (vtClient, "kept apart from oneself", #"{"caseTable": "mda-zhz", "type": "keep-apart", "subject": "\#(Self.child)", "from": ["\#(Self.father)", "\#(Self.child)"]}"#),
        ]
        for (client, what, body) in cases {
            let r = try await post(client, "/v1/facts", body)
            #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(what): \(r.status) \(r.body)")
            for bsn in [Self.child, Self.mother, Self.father] { #expect(!r.body.contains(bsn), "\(what): \(r.body)") }
        }
        #expect(try await post(team, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)"]}"#).status == 201)
        #expect(try await post(vtClient, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "keep-apart", "subject": "\#(Self.child)", "from": ["\#(Self.father)"]}"#).status == 201)
        await team.close()
        await vtClient.close()
    }

    @Test("refusals of consents, facts and withdrawals say what is wrong and what is valid, never repeating the caller's values")
    func refusalsDoNotEcho() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let name = "Jan Jansen"
        let consent = { (caseTable: String, purposes: String, categories: String) in
            Self.consentBody(age: 9, capacity: "parent_with_custody", grantorBSN: Self.mother, purposes: purposes, categories: categories, caseTable: caseTable)
        }
        let cases: [(String, String, String, String)] = [
            // (path, body, secret, a valid value the detail should list)
            ("/v1/consents", consent(Self.father, #"["meldcode-report"]"#, #"["identity"]"#), Self.father, "mda-zhz"),
            ("/v1/consents", consent("mda-zhz", #"["meldcode-report", "\#(name)"]"#, #"["identity"]"#), name, "meldcode-report"),
            ("/v1/consents", consent("mda-zhz", #"["meldcode-report"]"#, #"["identity", "\#(name)"]"#), name, "health"),
            ("/v1/facts", #"{"caseTable": "\#(Self.father)", "type": "custody", "subject": "\#(Self.child)", "holders": ["\#(Self.mother)"]}"#, Self.father, "mda-zhz"),
            ("/v1/facts", #"{"caseTable": "mda-zhz", "type": "\#(name)", "subject": "\#(Self.child)"}"#, name, "custody"),
        ]
        for (path, body, secret, valid) in cases {
            let r = try await post(team, path, body)
            #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(path): \(r.status) \(r.body)")
            #expect(!r.body.contains(secret), "\(path) echoes the caller's value: \(r.body)")
            #expect(r.json?["detail"]?.stringValue?.contains(valid) == true, "\(path): the detail lists the valid values: \(r.body)")
        }
        let withdraw = try await team.request("/v1/consents/piet-hein-999990123/withdraw", method: .POST)
        #expect(withdraw.status == 404, "\(withdraw.body)")
        #expect(!withdraw.body.contains("piet-hein") && !withdraw.body.contains("999990123"), "\(withdraw.body)")
        await team.close()
    }

    @Test("Idempotency-Key: a stale claim (its instance died mid-request) is taken over by the same body only; another body gets 409")
    func staleIdempotencyClaim() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        let body = Self.exchangeBody(consents: ids)
        let hash = Crypto.sha256(Array(try JSONParser.parse(body).serialized(sortedKeys: true).utf8))
        // Two claims left in progress long ago, as an instance that died holding them leaves them.
        let database = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        for key in ["stale-same", "stale-other"] {
            try database.rows(
                "INSERT INTO idempotency (sender, key, body_hash, status, answer, claimed_at) VALUES ('wijkteam-dordrecht', ?, ?, 0, '', '2020-01-01T00:00:00.000Z')",
                [.text(Self.storedKey(key)), .blob(hash)])
        }
        let other = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: [ids[0]]), headers: [("idempotency-key", "stale-other")])
        #expect(other.status == 409 && other.json?["code"]?.stringValue == "idempotency_conflict", "\(other.body)")
        let same = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "stale-same")])
        #expect(same.status == 201, "\(same.body)")
        let replay = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "stale-same")])
        #expect(replay.json?["exchangeId"] == same.json?["exchangeId"] && replay.headers.first(name: "idempotent-replayed") == "true")
        await team.close()
    }

    @Test("a safety-exception report enters the review queue; an officer reviews it (logged); partners cannot")
    func safetyExceptionAndReview() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = try await post(team, "/v1/exchanges", """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "kind vertelt over geweld thuis", "professional": "wt-17",
                       "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
             "subjects": [{"bsn": "\(Self.child)", "role": "child", "age": 9}],
             "data": {"identity": {"bsn": "\(Self.child)"}, "concern_signal": {"summary": "blauwe plekken"}, "health": {"diagnosis": "x"}}}
            """)
        #expect(report.status == 201, "\(report.body)")
        #expect(report.json?["review"]?.boolValue == true)
        #expect(report.json?["informSubjectBy"]?.stringValue?.count == 10)
        #expect(report.json?["withheld"] == ["health.diagnosis"])
        let id = try #require(report.json?["exchangeId"]?.stringValue)
        // The same ground towards the wrong recipient is refused.
        let wrong = try await post(team, "/v1/exchanges", """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "jeugdbescherming-west",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "j", "professional": "wt-17"},
             "subjects": [{"bsn": "\(Self.child)"}], "data": {"identity": {"bsn": "\(Self.child)"}}}
            """)
        #expect(wrong.status == 403)

        #expect(try await team.request("/v1/reviews").status == 403)
        let officerClient = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        let queue = try await officerClient.request("/v1/reviews")
        let items = queue.json?["items"]?.arrayValue ?? []
        #expect(items.map { $0["exchangeId"]?.stringValue } == [id])
        #expect(items.first?["texts"]?["justification"]?.stringValue == "kind vertelt over geweld thuis")
        #expect(try await post(officerClient, "/v1/reviews/\(id)", #"{"outcome": "maybe"}"#).status == 422)
        let reviewed = try await post(officerClient, "/v1/reviews/\(id)", #"{"outcome": "upheld", "comment": "meldcode gevolgd, grond klopt"}"#)
        #expect(reviewed.status == 200, "\(reviewed.body)")
        #expect(try await officerClient.request("/v1/reviews").json?["items"]?.arrayValue?.isEmpty == true)
        #expect(try await post(officerClient, "/v1/reviews/\(id)", #"{"outcome": "upheld"}"#).status == 404)
        // Officers do not send exchanges.
        #expect(try await post(officerClient, "/v1/exchanges", Self.exchangeBody(consents: ["x"])).status == 403)
        await team.close()
        await officerClient.close()
        #expect(gateway.stop() == 0)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "review"])
        #expect(export.stdout.contains("\"outcome\":\"upheld\""))
        #expect(!export.stdout.contains("grond klopt"), "the comment is sealed")
    }

    /// A safety-exception report from the local team to Veilig Thuis: it enters the review queue.
    static let safetyReport = """
        {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
         "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "kind vertelt over geweld thuis", "professional": "wt-17",
                   "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
         "subjects": [{"bsn": "\(child)", "role": "child", "age": 9}],
         "data": {"identity": {"bsn": "\(child)"}, "concern_signal": {"summary": "blauwe plekken"}}}
        """

    /// Sends `requests` at once while the gateway's database is locked for writing (as another
    /// writer would hold it), so that every one passes its checks before any group commit can
    /// start; lets go of the lock after `seconds` (well within the gateway's 5 s busy timeout)
    /// and returns every answer.
    static func racing(_ requests: [@Sendable () async throws -> TestResponse], database: String, seconds: Double = 2.5) async throws -> [TestResponse] {
        let lock = try SQLiteDatabase(path: database)
        try lock.execute("BEGIN IMMEDIATE")
        return try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for request in requests { group.addTask { try await request() } }
            try await Task.sleep(for: .seconds(seconds))
            try lock.execute("COMMIT")
            var answers: [TestResponse] = []
            for try await answer in group { answers.append(answer) }
            return answers
        }
    }

    @Test("racing reviews of one exchange (12 officers' posts at once, different outcomes): one is recorded and logged, every other gets 409 conflict; the exchange keeps the logged outcome")
    func racingReviews() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = try await post(team, "/v1/exchanges", Self.safetyReport)
        #expect(report.status == 201 && report.json?["review"]?.boolValue == true, "\(report.body)")
        let id = try #require(report.json?["exchangeId"]?.stringValue)
        await team.close()
        var officers: [TestHTTPSClient] = []
        for _ in 0..<12 { officers.append(try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)) }
        let outcomes = ["upheld", "not-upheld", "needs-follow-up"]
        let answers = try await Self.racing(
            officers.enumerated().map { i, client in
                { try await client.request("/v1/reviews/\(id)", method: .POST, headers: [("content-type", "application/json")], body: #"{"outcome": "\#(outcomes[i % 3])"}"#) }
            }, database: gateway.directory + "/ketenpoort.db")
        let recorded = answers.filter { $0.status == 200 }
        let refused = answers.filter { $0.status == 409 }
        #expect(recorded.count == 1 && refused.count == 11, "\(answers.map { "\($0.status) \($0.body)" })")
        for r in refused {
            #expect(r.headers.first(name: "content-type") == "application/problem+json")
            #expect(r.json?["code"]?.stringValue == "conflict" && r.json?["detail"]?.stringValue?.contains("reviewed meanwhile") == true, "\(r.body)")
        }
        let outcome = try #require(recorded.first?.json?["review"]?.stringValue)
        // Afterwards the exchange is no longer awaiting review: a late post is 404, as before.
        #expect(try await post(officers[0], "/v1/reviews/\(id)", #"{"outcome": "upheld"}"#).status == 404)
        for client in officers { await client.close() }
        #expect(gateway.stop() == 0)
        let database = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        #expect(try database.rows("SELECT review_state FROM exchanges WHERE id = ?", [.text(id)]).first?.string(0) == outcome)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "review"])
        let reviews = export.stdout.split(separator: "\n").compactMap { try? JSONParser.parse(String($0)) }
        #expect(reviews.count == 1, "one review in the log, not one per post: \(export.stdout)")
        #expect(reviews.first?["exchangeId"]?.stringValue == id && reviews.first?["outcome"]?.stringValue == outcome)
        #expect(reviews.first?["sequence"]?.intValue == recorded.first?.json?["logSequence"]?.intValue)
        let verified = try ketenpoort(["log", "verify", "--db", gateway.directory + "/ketenpoort.db", "--keys", gateway.directory + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
    }

    @Test("racing withdrawals of one consent: all answered 200 withdrawn, one logged (with its logSequence) and one history row")
    func racingWithdrawals() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let setup = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let consent = try await post(setup, "/v1/consents", Self.consentBody(grantor: Self.mother))
        let id = try #require(consent.json?["consentId"]?.stringValue, "\(consent.body)")
        await setup.close()
        var teams: [TestHTTPSClient] = []
        for _ in 0..<8 { teams.append(try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)) }
        let answers = try await Self.racing(
            teams.map { client in { try await client.request("/v1/consents/\(id)/withdraw", method: .POST) } }, database: gateway.directory + "/ketenpoort.db")
        #expect(answers.allSatisfy { $0.status == 200 && $0.json?["status"]?.stringValue == "withdrawn" }, "\(answers.map(\.body))")
        let logged = answers.compactMap { $0.json?["logSequence"]?.intValue }
        #expect(logged.count == 1, "\(answers.map(\.body))")
        for client in teams { await client.close() }
        #expect(gateway.stop() == 0)
        let database = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        #expect(try database.rows("SELECT log_sequence FROM consent_history WHERE consent_id = ? AND status = 'withdrawn'", [.text(id)]).map { Int($0.int64(0)) } == logged)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "consent-withdrawn"])
        #expect(export.stdout.split(separator: "\n").count == 1, "\(export.stdout)")
    }

    @Test("Idempotency-Key: a request whose claim was taken over while it was in progress carries out nothing (409); the retry that holds the key carries it out once")
    func idempotencyClaimTakenOver() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        let body = Self.exchangeBody(consents: ids)
        // As soon as the request claims its key, the claim is made to look as a retry's (taken over
        // after the request outlived the claim timeout): older than the timeout, another time.
        let database = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        try database.execute(
            "CREATE TRIGGER take_over AFTER INSERT ON idempotency WHEN NEW.key = '\(Self.storedKey("taken-over"))' BEGIN UPDATE idempotency SET claimed_at = '2020-01-01T00:00:00.000Z' WHERE sender = NEW.sender AND key = NEW.key; END"
        )
        let first = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "taken-over")])
        #expect(first.status == 409 && first.json?["code"]?.stringValue == "idempotency_conflict", "\(first.body)")
        #expect(first.json?["exchangeId"] == nil)
        #expect(try database.rows("SELECT count(*) FROM exchanges", []).first?.int64(0) == 0, "nothing decided was written")
        #expect(try database.rows("SELECT count(*) FROM inbox", []).first?.int64(0) == 0, "nothing delivered")
        try database.execute("DROP TRIGGER take_over")
        // The key is still claimed (by the retry that took it over, here long gone): the same body
        // takes the stale claim and is carried out, once.
        let retry = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "taken-over")])
        #expect(retry.status == 201, "\(retry.body)")
        let replay = try await post(team, "/v1/exchanges", body, headers: [("idempotency-key", "taken-over")])
        #expect(replay.json?["exchangeId"] == retry.json?["exchangeId"] && replay.headers.first(name: "idempotent-replayed") == "true")
        await team.close()
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.count == 1, "one delivery, not two")
        await vtClient.close()
        #expect(gateway.stop() == 0)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "exchange-permitted"])
        #expect(export.stdout.split(separator: "\n").count == 1, "\(export.stdout)")
    }

    @Test("every problem code of the exchange API, provoked")
    func problemCodes() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "limits:\n  max_body_bytes: 4096\n")
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        func code(_ r: TestResponse) -> String? { r.json?["code"]?.stringValue }
        let badJSON = try await post(team, "/v1/exchanges", "{\"caseTable\": ")
        #expect(badJSON.status == 400 && code(badJSON) == "invalid_json")
        let media = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "text/plain")], body: "x")
        #expect(media.status == 415 && code(media) == "unsupported_media_type")
        let unknown = try await post(team, "/v1/exchanges", #"{"caseTable": "mda-zhz", "colour": "blue"}"#)
        #expect(unknown.status == 422 && code(unknown) == "invalid_request")
        #expect(unknown.json?["detail"]?.stringValue?.contains("colour") == true)
        let badBSN = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["x"]).replacingOccurrences(of: "\"bsn\": \"\(Self.child)\", \"role\"", with: "\"bsn\": \"999990018\", \"role\""))
        #expect(badBSN.status == 422 && code(badBSN) == "invalid_bsn")
        #expect(!badBSN.body.contains("999990018"))
        // Values that would switch reporter protection or competence off silently are refused.
        for (member, path) in [
            (#""reporter": {"kind": "Bystander"}, "#, "reporter.kind"), (#""reporter": {"kind": "bystander", "protected": "true"}, "#, "reporter.protected"),
        ] {
            let r = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["x"]).replacingOccurrences(of: "\"subjects\":", with: member + "\"subjects\":"))
            #expect(r.status == 422 && code(r) == "invalid_request" && r.json?["detail"]?.stringValue?.contains(path) == true, "\(r.body)")
        }
        // Data naming the reporter without saying who the reporter is would skip reporter protection.
        let unnamedReporter = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["x"]).replacingOccurrences(of: "\"summary\": \"blauwe plekken op de armen\"", with: "\"summary\": \"blauwe plekken op de armen\", \"reporter\": \"de buurvrouw\""))
        #expect(unnamedReporter.status == 422 && unnamedReporter.json?["detail"]?.stringValue?.contains("`reporter`") == true, "\(unnamedReporter.body)")
        #expect(!unnamedReporter.body.contains("buurvrouw"))
        let quotedFlag = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["x"]).replacingOccurrences(of: "\"age\": 9}", with: "\"age\": 9, \"competent\": \"false\"}"))
        #expect(quotedFlag.status == 422 && quotedFlag.json?["detail"]?.stringValue?.contains("subjects[0].competent") == true, "\(quotedFlag.body)")
        let denied = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["no-such-consent"]))
        #expect(denied.status == 403 && code(denied) == "exchange_denied")
        #expect(try await team.request("/v1/exchanges/nope").status == 404)
        let method = try await team.request("/v1/consents", method: .GET)
        #expect(method.status == 405 && code(method) == "method_not_allowed")
        // Every resource knows its own methods: 405 with Allow for a known one (HEAD wherever
        // GET is), 404 for the rest.
        for (path, verb, allowed) in [("/v1/inbox", HTTPMethod.POST, "GET, HEAD"), ("/v1/inbox/5/ack", .GET, "POST"), ("/v1/exchanges/x", .POST, "GET, HEAD"), ("/v1/reviews/x", .GET, "POST")] {
            let r = try await team.request(path, method: verb, headers: [("content-type", "application/json")], body: verb == .POST ? "{}" : nil)
            #expect(r.status == 405 && r.headers.first(name: "allow") == allowed, "\(verb) \(path): \(r.status)")
        }
        #expect(try await team.request("/v1/inbox/5/other").status == 404)
        let tooYoung = try await post(team, "/v1/consents", Self.consentBody(grantor: Self.mother).replacingOccurrences(of: "parent_with_custody", with: "self"))
        #expect(tooYoung.status == 422 && tooYoung.json?["detail"]?.stringValue?.contains("under 12") == true)
        // A 14-year-old "not competent" given as text must not become a competent self-consent.
        let selfConsent = Self.consentBody(grantor: Self.mother).replacingOccurrences(of: "\"age\": 9}", with: "\"age\": 14, \"competent\": \"false\"}")
            .replacingOccurrences(of: "\"capacity\": \"parent_with_custody\", \"bsn\": \"\(Self.mother)\"", with: "\"capacity\": \"self\"")
        let quotedCompetence = try await post(team, "/v1/consents", selfConsent)
        #expect(quotedCompetence.status == 422 && quotedCompetence.json?["detail"]?.stringValue?.contains("subject.competent") == true, "\(quotedCompetence.body)")
        // A representative consents for an adult who cannot decide, not for a child.
        let representative = try await post(team, "/v1/consents", Self.consentBody(grantor: Self.mother)
            .replacingOccurrences(of: "\"capacity\": \"parent_with_custody\", \"bsn\": \"\(Self.mother)\"", with: "\"capacity\": \"representative\""))
        #expect(representative.status == 422 && representative.json?["detail"]?.stringValue?.contains("representative") == true, "\(representative.body)")
        // A validity date that is not a real day would move the period when compared as text.
        let notADay = try await post(team, "/v1/consents", Self.consentBody(grantor: Self.mother).replacingOccurrences(of: "\"categories\"", with: "\"validUntil\": \"2026-02-30\", \"categories\""))
        #expect(notADay.status == 422 && code(notADay) == "invalid_request" && notADay.json?["detail"]?.stringValue?.contains("validUntil") == true)
        let notEntitled = try await post(team, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "vt-investigation", "subject": "\#(Self.child)", "open": true}"#)
        #expect(notEntitled.status == 403 && code(notEntitled) == "forbidden")
        let key = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["a"]), headers: [("idempotency-key", "same")])
        #expect(key.status == 403)
        let conflict = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ["b"]), headers: [("idempotency-key", "same")])
        #expect(conflict.status == 409 && code(conflict) == "idempotency_conflict")
        await team.close()
        // Over the body limit: 413, and the connection is closed (so a connection of its own).
        let fresh = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let large = try await post(fresh, "/v1/exchanges", Self.exchangeBody(consents: ["x"], extraData: #", "note": {"text": "\#(String(repeating: "x", count: 5000))"}"#))
        #expect(large.status == 413 && code(large) == "payload_too_large")
        await fresh.close()
    }

    /// Another person than the child and the parents (test range, 11-check).
    static let otherPerson = "999990007"

    @Test("a BSN in `data` that is not among `subjects` is refused (422, never echoed), also inside a list, before anything is logged or delivered; listed, that person's closed case counts")
    func dataAboutSomeoneNotListed() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        // The other person's case is closed: nothing may flow about them any more.
        let closed = try await post(team, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "case-closed", "subject": "\#(Self.otherPerson)", "closed": true}"#)
        #expect(closed.status == 201, "\(closed.body)")
        // The consent for the child would carry another person's identity ...
        let body = Self.exchangeBody(consents: ids)
        let swapped = body.replacingOccurrences(of: "\"identity\": {\"bsn\": \"\(Self.child)\"", with: "\"identity\": {\"bsn\": \"\(Self.otherPerson)\"")
        #expect(swapped != body)
        // ... or a household member's, nested in a list.
        let member = Self.exchangeBody(consents: ids, extraData: #", "household": {"members": [{"relation": "broer", "bsn": "\#(Self.otherPerson)"}]}"#)
        for (name, refusedBody, key) in [("identity", swapped, nil), ("household", member, "k-1")] {
            let r = try await post(team, "/v1/exchanges", refusedBody, headers: key.map { [("idempotency-key", $0)] } ?? [])
            #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(name): \(r.body)")
            #expect(r.json?["detail"]?.stringValue?.contains("`subjects`") == true, "\(name): \(r.body)")
            #expect(!r.body.contains(Self.otherPerson) && r.json?["exchangeId"] == nil, "\(name): \(r.body)")
        }
        // Listed with a role, the person's own facts count (their case is closed: denied, logged),
        // and the refused request left its Idempotency-Key free.
        let listed = member.replacingOccurrences(of: "\"subjects\": [", with: "\"subjects\": [{\"bsn\": \"\(Self.otherPerson)\", \"role\": \"sibling\", \"age\": 11}, ")
        let denied = try await post(team, "/v1/exchanges", listed, headers: [("idempotency-key", "k-1")])
        #expect(denied.status == 403 && denied.json?["code"]?.stringValue == "exchange_denied", "\(denied.body)")
        #expect(denied.json?["reasons"]?.arrayValue?.contains { $0["rule"]?.stringValue == "closed-case" } == true, "\(denied.body)")
        await team.close()
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.isEmpty == true, "nothing delivered")
        await vtClient.close()
        #expect(gateway.stop() == 0)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db"])
        let kinds = export.stdout.split(separator: "\n").compactMap { try? JSONParser.parse(String($0))["kind"]?.stringValue }
        #expect(kinds == ["policy-reloaded", "fact-registered", "consent-registered", "consent-registered", "fact-registered", "exchange-denied"], "\(kinds)")
        let database = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        #expect(try database.rows("SELECT count(*) FROM exchanges", []).first?.int64(0) == 1, "only the listed request was decided")
        #expect(try database.rows("SELECT count(*) FROM inbox", []).first?.int64(0) == 0)
    }

    @Test("every member `bsn` in `data`, at any depth, passes the 11-check (never echoed) and is a listed subject's; a listed household member's report shows the exchange")
    func nestedBSNs() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        // The mother in the household list, listed as a subject: permitted under Wmo 5.2.6.
        let report = Self.safetyReport.replacingOccurrences(
            of: "\"concern_signal\":", with: "\"household\": {\"members\": [{\"relation\": \"moeder\", \"person\": {\"bsn\": \"\(Self.mother)\"}}]}, \"concern_signal\":")
        #expect(report != Self.safetyReport)
        let listed = report.replacingOccurrences(of: "\"subjects\": [", with: "\"subjects\": [{\"bsn\": \"\(Self.mother)\", \"role\": \"mother\"}, ")
        // Not listed: refused.
        let unlisted = try await post(team, "/v1/exchanges", report)
        #expect(unlisted.status == 422 && unlisted.json?["code"]?.stringValue == "invalid_request", "\(unlisted.body)")
        #expect(!unlisted.body.contains(Self.mother))
        // Not a BSN, deep in a list: refused as such, the value not echoed.
        for bad in ["999990018", "99999001", "not a bsn"] {
            let r = try await post(team, "/v1/exchanges", listed.replacingOccurrences(of: "{\"bsn\": \"\(Self.mother)\"}}", with: "{\"bsn\": \"\(bad)\"}}"))
            #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_bsn", "\(bad): \(r.body)")
            #expect(r.json?["detail"]?.stringValue?.contains("data.household.members") == true, "\(r.body)")
            #expect(!r.body.contains(bad))
        }
        let numeric = try await post(team, "/v1/exchanges", listed.replacingOccurrences(of: "{\"bsn\": \"\(Self.mother)\"}}", with: "{\"bsn\": 999990020}}"))
        #expect(numeric.status == 422 && numeric.json?["code"]?.stringValue == "invalid_bsn", "\(numeric.body)")
        let sent = try await post(team, "/v1/exchanges", listed)
        #expect(sent.status == 201, "\(sent.body)")
        #expect(sent.json?["released"]?.arrayValue?.contains("household.members") == true, "\(sent.body)")
        await team.close()
        #expect(gateway.stop() == 0)
        // The mother's access report shows the one exchange that carried her data.
        let keys = gateway.directory + "/keys"
        let mother = try ketenpoort(["log", "subject-report", "--db", gateway.directory + "/ketenpoort.db", "--keys", keys, "--json"], stdin: Self.mother + "\n")
        #expect(mother.status == 0, "\(mother.stderr)")
        let exchanges = try JSONParser.parse(mother.stdout)["exchanges"]?.arrayValue ?? []
        #expect(exchanges.map { $0["sequence"]?.intValue } == [sent.json?["logSequence"]?.intValue], "\(mother.stdout)")
    }

    @Test("a data category or field the field catalogue does not know is refused (422) without echoing its name, which never reaches the answer or the database")
    func unknownDataNames() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        let secrets = ["notities", "Marie de Vries", "999990111", "moeder", "huisarts_naam", "Dr. Jansen"]
        let unknownCategory = Self.exchangeBody(consents: ids, extraData: #", "notities": {"Marie de Vries 999990111": "moeder"}"#)
        let unknownField = Self.exchangeBody(consents: ids).replacingOccurrences(of: "\"health\": {", with: "\"health\": {\"huisarts_naam\": \"Dr. Jansen\", ")
        for (name, body, catalogue) in [("category", unknownCategory, "identity"), ("field", unknownField, "summary")] {
            for key in [nil, "k-\(name)"] {
                let r = try await post(team, "/v1/exchanges", body, headers: key.map { [("idempotency-key", $0)] } ?? [])
                #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(name): \(r.body)")
                #expect(r.json?["detail"]?.stringValue?.contains("field catalogue") == true, "\(name): \(r.body)")
                // The catalogue's own names help the integrator; the request's are not repeated.
                #expect(r.json?["detail"]?.stringValue?.contains(catalogue) == true, "\(name): \(r.body)")
                for secret in secrets { #expect(!r.body.contains(secret), "`\(secret)` in the answer to the unknown \(name): \(r.body)") }
            }
        }
        // A field the catalogue knows but the route does not release is still withheld by name.
        let known = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids).replacingOccurrences(of: "\"health\": {", with: "\"health\": {\"diagnosis\": \"x\", "))
        #expect(known.status == 201, "\(known.body)")
        #expect(known.json?["withheld"] == ["concern_signal.summary", "health.diagnosis"], "\(known.body)")
        await team.close()
        #expect(gateway.stop() == 0)
        let export = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db"])
        let kinds = export.stdout.split(separator: "\n").compactMap { try? JSONParser.parse(String($0))["kind"]?.stringValue }
        #expect(kinds.filter { $0.hasPrefix("exchange-") } == ["exchange-permitted"], "only the known names were decided: \(kinds)")
        #expect(textsInDatabase(gateway.directory + "/ketenpoort.db", secrets).isEmpty)
    }

    @Test("text over its limit is refused with a detail that names the limit")
    func longText() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let body = Self.exchangeBody(consents: ["x"]).replacingOccurrences(of: "\"basis\":", with: "\"caseRef\": \"\(String(repeating: "r", count: 4_097))\", \"basis\":")
        let r = try await post(team, "/v1/exchanges", body)
        #expect(r.status == 422 && r.json?["code"]?.stringValue == "invalid_request", "\(r.body)")
        #expect(r.json?["detail"]?.stringValue == "`caseRef` must be non-empty text of at most 4096 bytes", "\(r.body)")
        let fits = try await post(team, "/v1/exchanges", body.replacingOccurrences(of: String(repeating: "r", count: 4_097), with: String(repeating: "r", count: 4_096)))
        #expect(fits.status == 403, "at the limit the request is decided: \(fits.body)")
        await team.close()
    }

    @Test("a supervision order registered by the Board lets any partner inform the institution carrying it out (Jw 7.3.11-4)")
    func supervisionOrderFact() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let body = """
            {"caseTable": "mda-zhz", "purpose": "supervision-order-information", "recipient": "jeugdbescherming-west",
             "basis": {"type": "safety-exception", "ground": "jw-7.3.11-4", "justification": "informatie voor de uitvoering van de OTS", "professional": "wt-3"},
             "subjects": [{"bsn": "\(Self.child)", "role": "child", "age": 9}], "data": {"identity": {"bsn": "\(Self.child)"}}}
            """
        #expect(try await post(team, "/v1/exchanges", body).status == 403, "no order registered yet")
        let board = PKIFixture.partner("raad-kinderbescherming")
        let boardClient = try await TestHTTPSClient.connect(port: gateway.port, cert: board.cert, key: board.key)
        let fact = try await post(boardClient, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "supervision-order", "subject": "\#(Self.child)", "active": true, "institution": "jeugdbescherming-west"}"#)
        #expect(fact.status == 201, "\(fact.body)")
        let sent = try await post(team, "/v1/exchanges", body)
        #expect(sent.status == 201, "\(sent.body)")
        // A second child whose order another institution carries out: together, neither
        // institution carries out the order of both, so the ground does not hold for the pair.
        let sibling = "999990032"  // test range, 11-check
        let other = try await post(boardClient, "/v1/facts", #"{"caseTable": "mda-zhz", "type": "supervision-order", "subject": "\#(sibling)", "active": true, "institution": "william-schrikker"}"#)
        #expect(other.status == 201, "\(other.body)")
        let both = body.replacingOccurrences(of: "\"subjects\": [", with: "\"subjects\": [{\"bsn\": \"\(sibling)\", \"role\": \"child\", \"age\": 7}, ")
        let pair = try await post(team, "/v1/exchanges", both)
        #expect(pair.status == 403, "\(pair.body)")
        await team.close()
        await boardClient.close()
    }

    @Test("a second TLS stack (GnuTLS) sends an exchange and reads the answer")
    func gnutlsExchange() throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let body = Self.exchangeBody(consents: ["none"])
        let request = "POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        // gnutls-cli stops at the end of its input: keep it open until the answer (written to the log first) is back.
        let requestFile = gateway.directory + "/request.http"
        try write(request, to: requestFile)
        let command = "(cat '\(requestFile)'; sleep 3) | gnutls-cli --x509cafile '\(PKIFixture.path("ca.crt"))' --x509certfile '\(wijkteam.cert)' --x509keyfile '\(wijkteam.key)' --port \(gateway.port) --logfile /dev/null localhost"
        let r = try runProcess("/bin/bash", ["-c", command])
        #expect(r.stdout.contains("HTTP/1.1 403 Forbidden"), "\(r.stdout.suffix(600)) \(r.stderr.suffix(300))")
        #expect(r.stdout.contains("\"code\":\"exchange_denied\""))
    }

    @Test("a log that cannot be written refuses the exchange (503 audit_unavailable, nothing delivered) and the next one succeeds once it can")
    func logUnwritable() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        // Every write to a file now fails with EFBIG (a full disk): the entry cannot be committed.
        let limit = try runProcess("/usr/bin/prlimit", ["--pid", String(gateway.pid), "--fsize=1:unlimited"])
        #expect(limit.status == 0, "\(limit.stderr)")
        let refused = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(refused.status == 503, "\(refused.body)")
        #expect(refused.json?["code"]?.stringValue == "audit_unavailable")
        #expect(refused.json?["exchangeId"] == nil)
        _ = try runProcess("/usr/bin/prlimit", ["--pid", String(gateway.pid), "--fsize=unlimited:unlimited"])
        let sent = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids))
        #expect(sent.status == 201, "\(sent.body)")
        await team.close()
        // Only the accepted exchange reached the recipient.
        let vtClient = try await TestHTTPSClient.connect(port: gateway.port, cert: vt.cert, key: vt.key)
        let items = try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue ?? []
        #expect(items.compactMap { $0["exchangeId"]?.stringValue } == [try #require(sent.json?["exchangeId"]?.stringValue)])
        await vtClient.close()
    }

    @Test("a restart loses nothing accepted: the inbox and the exchange state survive")
    func survivesRestart() async throws {
        let gateway = try GatewayProcess()
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        var sent: [String] = []
        for _ in 0..<5 {
            let r = try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids))
            #expect(r.status == 201)
            if let id = r.json?["exchangeId"]?.stringValue { sent.append(id) }
        }
        await team.close()
        #expect(gateway.stop() == 0)
        let again = try GatewayProcess(directory: gateway.directory, configPath: gateway.configPath, arguments: ["serve", "--config", gateway.configPath])
        defer { again.stop() }
        let vtClient = try await TestHTTPSClient.connect(port: again.port, cert: vt.cert, key: vt.key)
        let items = try await vtClient.request("/v1/inbox?limit=3")
        #expect(items.json?["items"]?.arrayValue?.count == 3)
        let next = try #require(items.json?["next"]?.stringValue)
        let rest = try await vtClient.request("/v1/inbox?after=\(next)")
        let all = (items.json?["items"]?.arrayValue ?? []) + (rest.json?["items"]?.arrayValue ?? [])
        #expect(all.compactMap { $0["exchangeId"]?.stringValue } == sent)
        await vtClient.close()
    }

    @Test("retention: past its day an undelivered payload and the entry's details are erased; the log still verifies")
    func retentionErasesPayloads() async throws {
        let gateway = try GatewayProcess()
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(team)
        #expect(try await post(team, "/v1/exchanges", Self.exchangeBody(consents: ids)).status == 201)
        await team.close()
        #expect(gateway.stop() == 0)
        let db = gateway.directory + "/ketenpoort.db"
        // A day that does not exist is refused before anything is erased (exit 2, one line).
        let notADay = try ketenpoort(["log", "retention", "--db", db, "--keys", gateway.directory + "/keys", "--today", "2100-02-29"])
        #expect(notADay.status == 2 && notADay.stderr.contains("--today must be a real day"), "\(notADay.stderr)")
        let dry = try ketenpoort(["log", "retention", "--db", db, "--keys", gateway.directory + "/keys", "--today", "2100-01-01", "--dry-run"])
        #expect(dry.stdout.contains("1 entry has expired"), "\(dry.stdout)\(dry.stderr)")
        let run = try ketenpoort(["log", "retention", "--db", db, "--keys", gateway.directory + "/keys", "--today", "2100-01-01"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let verified = try ketenpoort(["log", "verify", "--db", db, "--keys", gateway.directory + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout)")
        #expect(verified.stdout.contains("1 erased at retention"))
        let again = try GatewayProcess(directory: gateway.directory, configPath: gateway.configPath, arguments: ["serve", "--config", gateway.configPath])
        defer { again.stop() }
        let vtClient = try await TestHTTPSClient.connect(port: again.port, cert: vt.cert, key: vt.key)
        #expect(try await vtClient.request("/v1/inbox").json?["items"]?.arrayValue?.isEmpty == true, "the payload is gone")
        await vtClient.close()
        // An item retention erased cannot be delivered any more: it is not counted as waiting.
        let series = #"ketenpoort_inbox_unacknowledged_items{partner="veilig-thuis-zhz"} "#
        var waiting: String?
        for _ in 0..<50 where waiting == nil {
            waiting = try operationsGet(port: again.operationsPort, path: "/metrics").body.split(separator: "\n").first { $0.hasPrefix(series) }.map(String.init)
            if waiting == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(waiting.flatMap { Double($0.split(separator: " ").last ?? "") } == 0, "\(waiting ?? "no series")")
    }

    @Test("the gateway killed (SIGKILL) under load loses no acknowledged exchange: every 201 is in the inbox and the log after a restart")
    func killedUnderLoad() async throws {
        let gateway = try GatewayProcess()
        let setup = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let ids = try await consentOfBothParents(setup)
        await setup.close()
        let body = Self.exchangeBody(consents: ids)
        let acknowledged = IDList()
        let port = gateway.port
        let cert = wijkteam
        // Eight senders in a loop until the gateway dies under them.
        let senders = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        guard let client = try? await TestHTTPSClient.connect(port: port, cert: cert.cert, key: cert.key) else { return }
                        while true {
                            guard let r = try? await client.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: body) else { return }
                            if r.status == 201, let id = r.json?["exchangeId"]?.stringValue { acknowledged.append(id) }
                        }
                    }
                }
            }
        }
        for _ in 0..<100 where acknowledged.count < 40 { try await Task.sleep(for: .milliseconds(50)) }
        gateway.signal(SIGKILL)
        _ = await senders.result
        let sent = acknowledged.all
        #expect(sent.count >= 40)
        let again = try GatewayProcess(directory: gateway.directory, configPath: gateway.configPath, arguments: ["serve", "--config", gateway.configPath])
        defer { again.stop() }
        let vtClient = try await TestHTTPSClient.connect(port: again.port, cert: vt.cert, key: vt.key)
        var delivered: Set<String> = []
        var cursor = "0"
        while true {
            let page = try await vtClient.request("/v1/inbox?after=\(cursor)&limit=500")
            let items = page.json?["items"]?.arrayValue ?? []
            if items.isEmpty { break }
            for item in items { if let id = item["exchangeId"]?.stringValue { delivered.insert(id) } }
            cursor = page.json?["next"]?.stringValue ?? cursor
        }
        await vtClient.close()
        let missing = sent.filter { !delivered.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) acknowledged exchanges lost")
        #expect(again.stop() == 0)
        let verified = try ketenpoort(["log", "verify", "--db", gateway.directory + "/ketenpoort.db", "--keys", gateway.directory + "/keys"])
        #expect(verified.status == 0, "\(verified.stdout)")
    }
}

/// Ids collected by concurrent tasks.
final class IDList: Sendable {
    private let ids = Mutex<[String]>([])
    func append(_ id: String) { ids.withLock { $0.append(id) } }
    var count: Int { ids.withLock { $0.count } }
    var all: [String] { ids.withLock { $0 } }
}
