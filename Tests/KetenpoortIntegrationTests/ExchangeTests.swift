import Foundation
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
        for suffix in ["", "-wal", "-shm"] {
            guard let data = FileManager.default.contents(atPath: gateway.directory + "/ketenpoort.db" + suffix) else { continue }
            for secret in [Self.child, Self.mother, Self.father, "Sanne", "astma", "blauwe plekken"] {
                #expect(data.range(of: Data(secret.utf8)) == nil, "`\(secret)` in ketenpoort.db\(suffix)")
            }
        }
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
                [.text(key), .blob(hash)])
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
            "CREATE TRIGGER take_over AFTER INSERT ON idempotency WHEN NEW.key = 'taken-over' BEGIN UPDATE idempotency SET claimed_at = '2020-01-01T00:00:00.000Z' WHERE sender = NEW.sender AND key = NEW.key; END"
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
