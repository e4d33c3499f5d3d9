import Foundation
import KetenpoortCore
import NIOHTTP1
import Testing

/// Free text a partner can put in an exchange's ids, its statutory article or its
/// `Idempotency-Key` never reaches the database in clear: the log is immutable, so whatever
/// lands there stays until retention.
@Suite("Log privacy: request values the policies do not declare")
struct LogPrivacyTests {
    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let police = PKIFixture.partner("politie-zhz")
    static let child = "999990019"

    func post(_ client: TestHTTPSClient, _ body: String, headers: [(String, String)] = []) async throws -> TestResponse {
        try await client.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")] + headers, body: body)
    }

    /// Which of `texts` the gateway's database files hold in clear (the WAL too: it still runs).
    func inDatabase(_ gateway: GatewayProcess, _ texts: [String]) -> [String] {
        textsInDatabase(gateway.directory + "/ketenpoort.db", texts)
    }

    func entries(_ gateway: GatewayProcess) throws -> [JSONValue] {
        let r = try ketenpoort(["log", "query", "--db", gateway.directory + "/ketenpoort.db", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        return try r.stdout.split(separator: "\n").map { try JSONParser.parse(String($0)) }
    }

    static func exchange(caseTable: String = "mda-zhz", purpose: String = "meldcode-report", recipient: String = "veilig-thuis-zhz") -> String {
        """
        {"caseTable": "\(caseTable)", "purpose": "\(purpose)", "recipient": "\(recipient)",
         "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1",
                   "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
         "subjects": [{"bsn": "\(child)", "role": "child", "age": 9}], "data": {"identity": {"bsn": "\(child)"}, "concern_signal": {"summary": "zorgen"}}}
        """
    }

    @Test("an undeclared case table, purpose or recipient is refused and logged as `(undeclared)`, never as given")
    func undeclaredIdsAreNotLogged() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        // Each passes the id pattern, and each is a test BSN: what a careless integration might send.
        let cases: [(String, String, String, String)] = [
            ("999990020", "meldcode-report", "veilig-thuis-zhz", "unknown-case-table"),
            ("mda-zhz", "999990032", "veilig-thuis-zhz", "undeclared-purpose"),
            ("mda-zhz", "meldcode-report", "999990007", "unknown-recipient"),
        ]
        for (caseTable, purpose, recipient, rule) in cases {
            let r = try await post(team, Self.exchange(caseTable: caseTable, purpose: purpose, recipient: recipient))
            #expect(r.status == 403, "\(r.body)")
            #expect(r.json?["reasons"]?.arrayValue?.compactMap { $0["rule"]?.stringValue } == [rule], "\(r.body)")
            #expect(!r.body.contains("99999000") && !r.body.contains("999990032"), "\(r.body)")
        }
        await team.close()
        let denied = try entries(gateway).filter { $0["kind"]?.stringValue == "exchange-denied" }
        #expect(denied.count == 3)
        #expect(denied.map { $0["caseTable"]?.stringValue } == ["(undeclared)", "mda-zhz", "mda-zhz"])
        // Without a declared table no purpose is declared either.
        #expect(denied.map { $0["purpose"]?.stringValue } == ["(undeclared)", "(undeclared)", "meldcode-report"])
        #expect(denied.map { $0["recipient"]?.stringValue } == ["veilig-thuis-zhz", "veilig-thuis-zhz", "(undeclared)"])
        #expect(inDatabase(gateway, ["999990020", "999990032", "999990007", Self.child]).isEmpty)
    }

    @Test("a consent id nobody registered for these subjects is refused and logged as `(unregistered)`, never as given")
    func unregisteredConsentIdsAreNotLogged() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let body = """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "consent", "consentIds": ["999990032"]},
             "subjects": [{"bsn": "\(Self.child)", "role": "child", "age": 9}], "data": {"identity": {"bsn": "\(Self.child)"}}}
            """
        let r = try await post(team, body)
        #expect(r.status == 403, "\(r.body)")
        #expect(!r.body.contains("999990032"), "\(r.body)")
        await team.close()
        let denied = try entries(gateway).filter { $0["kind"]?.stringValue == "exchange-denied" }
        #expect(denied.first?["basis"]?["consentIds"]?.arrayValue?.compactMap(\.stringValue) == ["(unregistered)"], "\(denied)")
        #expect(inDatabase(gateway, ["999990032"]).isEmpty)
    }

    @Test("a statutory article the policies do not name is refused before anything is logged; a named one is decided")
    func statutoryArticle() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: police.cert, key: police.key)
        func report(article: String) -> String {
            """
            {"caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "statutory", "article": "\(article)"},
             "subjects": [{"bsn": "\(Self.child)", "role": "child", "age": 9}],
             "data": {"identity": {"bsn": "\(Self.child)"}, "criminal": {"incident": "huiselijk geweld", "incidentDate": "2026-11-30"}}}
            """
        }
        let before = try entries(gateway).count
        let free = try await post(client, report(article: "melding over Jan Klaassen"))
        #expect(free.status == 422, "\(free.body)")
        #expect(free.json?["code"]?.stringValue == "invalid_request")
        #expect(free.json?["detail"]?.stringValue?.contains("Besluit politiegegevens art. 4:2") == true, "the detail lists the articles")
        #expect(!free.body.contains("Klaassen"))
        #expect(try entries(gateway).count == before, "nothing logged")
        #expect(inDatabase(gateway, ["Klaassen"]).isEmpty)
        let named = try await post(client, report(article: "Besluit politiegegevens art. 4:2"))
        #expect(named.status == 201, "\(named.body)")
        await client.close()
    }

    @Test("an Idempotency-Key is stored as its hash: a key that is a BSN is not in the database, and the retry still replays")
    func idempotencyKeyHashed() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let key = "999990032"
        let first = try await post(team, Self.exchange(), headers: [("idempotency-key", key)])
        #expect(first.status == 201, "\(first.body)")
        let again = try await post(team, Self.exchange(), headers: [("idempotency-key", key)])
        #expect(again.status == 201)
        #expect(again.json?["exchangeId"] == first.json?["exchangeId"])
        #expect(again.headers.first(name: "idempotent-replayed") == "true")
        let other = try await post(team, Self.exchange(recipient: "jgz-zhz"), headers: [("idempotency-key", key)])
        #expect(other.status == 409)
        await team.close()
        #expect(inDatabase(gateway, [key]).isEmpty)
    }

    @Test("error details never repeat what could be personal: an unknown member's name only when shaped like a name, path ids never")
    func detailsDoNotEcho() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let misspelt = try await post(team, #"{"caseTabel": "mda-zhz"}"#)
        #expect(misspelt.status == 422)
        #expect(misspelt.json?["detail"]?.stringValue?.contains("unknown member `caseTabel`") == true, "\(misspelt.body)")
        for name in ["999990019", "Marie de Vries"] {
            let r = try await post(team, "{\"\(name)\": {}}")
            #expect(r.status == 422)
            #expect(!r.body.contains(name) && r.body.contains("its name is not shown"), "\(r.body)")
        }
        let nested = try await post(team, Self.exchange().replacingOccurrences(of: #""basis": {"#, with: #""basis": {"Jan Jansen": 1, "#))
        #expect(nested.status == 422 && !nested.body.contains("Jansen") && nested.body.contains("in `basis`"), "\(nested.body)")
        for (path, method) in [("/v1/exchanges/999990019", HTTPMethod.GET), ("/v1/inbox/999990019/ack", .POST)] {
            let r = try await team.request(path, method: method)
            #expect(r.status == 404 && !r.body.contains("999990019"), "\(path): \(r.body)")
        }
        await team.close()
    }
}
