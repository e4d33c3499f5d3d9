import Foundation
import KetenpoortCore
import KetenpoortStore
import NIOCore
import Testing

/// The officers' console over real mutual TLS.
@Suite("Privacy officers' console")
struct ConsoleTests {
    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let officer = PKIFixture.officer("privacy-officer-zhz")

    @Test("officers get every page (no JavaScript, nothing personal); partners get 403; a review posted from the console is logged; a cross-site post is refused")
    func consolePages() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "het kind vertelt over geweld", "professional": "wt-9",
                       "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
             "subjects": [{"bsn": "999990019", "role": "child", "age": 9}], "data": {"identity": {"bsn": "999990019"}, "concern_signal": {"summary": "zorgen"}}}
            """)
        #expect(report.status == 201)
        let id = try #require(report.json?["exchangeId"]?.stringValue)
        let pages = ["/console/", "/console/log", "/console/log?kind=exchange-permitted", "/console/log/2", "/console/reviews", "/console/uninformed", "/console/integrity", "/console/routemap", "/console/subject-report"]
        for page in pages {
            let denied = try await team.request(page)
            #expect(denied.status == 403, "\(page) for a partner")
        }
        await team.close()
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        for page in pages {
            let r = try await client.request(page)
            #expect(r.status == 200, "\(page): \(r.status)")
            #expect(r.headers.first(name: "content-type")?.hasPrefix("text/html") == true)
            #expect(!r.body.contains("<script"))
            #expect(!r.body.contains("999990019"), "\(page) shows a BSN")
        }
        let entryPage = try await client.request("/console/log/2")
        #expect(entryPage.body.contains("local-team-reports-to-vt"), "the deciding rule and its explanation")
        let queue = try await client.request("/console/reviews")
        #expect(queue.body.contains("het kind vertelt over geweld"), "the officer reads the sealed justification")
        #expect(queue.body.contains("/console/reviews/\(id)"))
        let form = [("content-type", "application/x-www-form-urlencoded")]
        let crossSite = try await client.request("/console/reviews/\(id)", method: .POST, headers: form + [("sec-fetch-site", "cross-site")], body: "outcome=upheld&comment=x")
        #expect(crossSite.status == 403)
        // Same host, other scheme: not the console's own origin either.
        let plainOrigin = try await client.request(
            "/console/reviews/\(id)", method: .POST, headers: form + [("origin", "http://localhost")], body: "outcome=upheld&comment=x")
        #expect(plainOrigin.status == 403)
        let posted = try await client.request("/console/reviews/\(id)", method: .POST, headers: form, body: "outcome=upheld&comment=grond+en+meldcode+in+orde")
        #expect(posted.status == 303)
        #expect(try await client.request("/console/reviews").body.contains("Niets te toetsen"))
        // Overdue informing: the date is made to lie in the past, the officer records the informing.
        #expect(try await client.request("/console/uninformed").body.contains("Geen betrokkenen"))
        try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db").execute("UPDATE exchanges SET inform_subject_by = '2026-01-05', created_at = '2026-01-02T09:30:00.000Z'")
        let overdue = try await client.request("/console/uninformed")
        #expect(overdue.body.contains("2026-01-05") && overdue.body.contains("/console/uninformed/\(id)"))
        // Not a real day, in the future, not a date, or before the exchange was decided.
        for bad in ["date=2026-02-30", "date=2999-01-01", "date=4-1-2026", "date=2026-01-01"] {
            #expect(try await client.request("/console/uninformed/\(id)", method: .POST, headers: form, body: bad).status == 422, "\(bad)")
        }
        let informed = try await client.request("/console/uninformed/\(id)", method: .POST, headers: form, body: "date=2026-01-04")
        #expect(informed.status == 303)
        // Recorded once: a second post is refused and logs nothing.
        #expect(try await client.request("/console/uninformed/\(id)", method: .POST, headers: form, body: "date=2026-01-05").status == 404)
        #expect(try await client.request("/console/uninformed").body.contains("Geen betrokkenen"))
        let verify = try await client.request("/console/integrity/verify", method: .POST, headers: form, body: "")
        #expect(verify.body.contains("regels gecontroleerd"), "\(verify.body.suffix(300))")
        let subject = try await client.request("/console/subject-report", method: .POST, headers: form, body: "bsn=999990019")
        #expect(subject.status == 200)
        #expect(subject.body.contains("1 uitwisseling(en)"))
        #expect(!subject.body.contains("999990019"))
        let badBSN = try await client.request("/console/subject-report", method: .POST, headers: form, body: "bsn=999990018")
        #expect(badBSN.status == 422)
        await client.close()
        #expect(gateway.stop() == 0)
        let reviews = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "review"])
        #expect(reviews.stdout.contains("\"officer\":\"privacy-officer-zhz\""))
        let informedEntries = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "subject-informed"])
        #expect(informedEntries.stdout.contains("\"informedOn\":\"2026-01-04\""))
        #expect(informedEntries.stdout.split(separator: "\n").count == 1, "one record, not one per post")
        // The access report is logged: which officer looked up whom (a pseudonym, not the BSN).
        let lookups = try ketenpoort(["log", "export", "--db", gateway.directory + "/ketenpoort.db", "--kind", "subject-report"])
        let lookup = try #require(lookups.stdout.split(separator: "\n").first.map { try JSONParser.parse(String($0)) }, "\(lookups.stdout)")
        #expect(lookup["officer"]?.stringValue == "privacy-officer-zhz" && lookup["entries"]?.intValue == 1)
        #expect(lookup["subjects"]?.arrayValue?.first?.stringValue?.hasPrefix("ps1.") == true)
        #expect(!lookups.stdout.contains("999990019"))
    }

    @Test("racing console posts (officers at once): one review and one informing date are recorded and logged; every other post gets the 409 error page")
    func racingPosts() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: ExchangeTests.safetyReport)
        #expect(report.status == 201, "\(report.body)")
        let id = try #require(report.json?["exchangeId"]?.stringValue)
        await team.close()
        var officers: [TestHTTPSClient] = []
        for _ in 0..<8 { officers.append(try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)) }
        let database = gateway.directory + "/ketenpoort.db"
        try SQLiteDatabase(path: database).execute("UPDATE exchanges SET created_at = '2025-12-31T09:30:00.000Z'")
        func post(_ path: String, _ bodies: [String]) async throws -> [TestResponse] {
            try await ExchangeTests.racing(
                zip(officers, bodies).map { client, body in
                    { try await client.request(path, method: .POST, headers: [("content-type", "application/x-www-form-urlencoded")], body: body) }
                }, database: database)
        }
        let outcomes = ["upheld", "not-upheld", "needs-follow-up"]
        let reviews = try await post("/console/reviews/\(id)", (0..<8).map { "outcome=\(outcomes[$0 % 3])&comment=toetsing+\($0)" })
        #expect(reviews.filter { $0.status == 303 }.count == 1, "\(reviews.map(\.status))")
        #expect(reviews.filter { $0.status == 409 }.count == 7, "\(reviews.map(\.status))")
        for r in reviews where r.status == 409 {
            #expect(r.headers.first(name: "content-type")?.hasPrefix("text/html") == true && r.body.contains("reviewed meanwhile"), "\(r.body.suffix(300))")
        }
        let days = (1...8).map { "date=2026-01-0\($0)" }
        let informed = try await post("/console/uninformed/\(id)", days)
        #expect(informed.filter { $0.status == 303 }.count == 1, "\(informed.map(\.status))")
        #expect(informed.filter { $0.status == 409 }.count == 7, "\(informed.map(\.status))")
        #expect(informed.filter { $0.status == 409 }.allSatisfy { $0.body.contains("informed of exchange") && $0.body.contains("meanwhile") })
        for client in officers { await client.close() }
        #expect(gateway.stop() == 0)
        // The log and the exchange agree: one review, one date.
        let row = try #require(try SQLiteDatabase(path: database).rows("SELECT review_state, informed_at FROM exchanges WHERE id = ?", [.text(id)]).first)
        let reviewed = try ketenpoort(["log", "export", "--db", database, "--kind", "review"]).stdout.split(separator: "\n").map { try JSONParser.parse(String($0)) }
        #expect(reviewed.count == 1 && reviewed.first?["outcome"]?.stringValue == row.string(0))
        let dates = try ketenpoort(["log", "export", "--db", database, "--kind", "subject-informed"]).stdout.split(separator: "\n").map { try JSONParser.parse(String($0)) }
        #expect(dates.count == 1 && dates.first?["informedOn"]?.stringValue == row.string(1))
    }
}

/// A real browser (headless Chromium from Debian's packages) renders the console and the route map.
@Suite("Console in a browser")
struct ConsoleBrowserTests {
    let officer = PKIFixture.officer("privacy-officer-zhz")

    @Test("Chromium loads every console page and the route map (fetched over mutual TLS) without page errors; screenshots in .build/screenshots")
    func screenshots() async throws {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let browser = try #require(chromium, "make test installs chromium; run it through `make test`")
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        let folder = packageRoot + "/.build/screenshots"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, page) in [("console", "/console/"), ("log", "/console/log"), ("reviews", "/console/reviews"), ("integrity", "/console/integrity"), ("routemap", "/console/routemap")] {
            let response = try await client.request(page)
            #expect(response.status == 200)
            // The browser has no officer certificate: the page fetched over mutual TLS is rendered from a file.
            let html = folder + "/\(name).html"
            try write(response.body, to: html)
            let png = folder + "/\(name).png"
            try? FileManager.default.removeItem(atPath: png)
            let r = try runProcess(
                browser,
                ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--window-size=1280,1000", "--screenshot=\(png)", "file://\(html)"],
                timeout: 90)
            #expect(r.status == 0, "\(name): \(r.stderr.suffix(400))")
            // Page errors (uncaught exceptions, console errors) are logged as CONSOLE lines.
            let pageErrors = r.stderr.split(separator: "\n").filter { $0.contains("CONSOLE") || $0.contains("Uncaught") }
            #expect(pageErrors.isEmpty, "\(name): \(pageErrors)")
            let size = (try? FileManager.default.attributesOfItem(atPath: png)[.size] as? NSNumber)?.intValue ?? 0
            #expect(size > 5_000, "\(name): screenshot of \(size) bytes")
        }
        await client.close()
    }
}

/// `officer_listen`: officer endpoints on a listener of their own.
@Suite("Officers' listener")
struct OfficerListenerTests {
    @Test("with officer_listen the console moves to its own listener; the main listener no longer serves it, and the officers' listener serves nothing else")
    func separateListener() async throws {
        let gateway = try GatewayProcess(extraConfiguration: "officer_listen: 127.0.0.1:0\n")
        defer { gateway.stop() }
        for _ in 0..<50 where !gateway.stdout.contains("officers: ") { try await Task.sleep(for: .milliseconds(50)) }
        let officersPort = GatewayProcess.port(in: gateway.stdout, after: "officers: https://127.0.0.1:")
        #expect(officersPort > 0, "\(gateway.stdout)")
        let officer = PKIFixture.officer("privacy-officer-zhz")
        let partner = PKIFixture.partner("wijkteam-dordrecht")
        let onMain = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        #expect(try await onMain.request("/console/").status == 404)
        #expect(try await onMain.request("/v1/reviews").status == 404)
        #expect(try await onMain.request("/v1/whoami").status == 200)
        await onMain.close()
        let onOfficers = try await TestHTTPSClient.connect(port: officersPort, cert: officer.cert, key: officer.key)
        #expect(try await onOfficers.request("/console/").status == 200)
        #expect(try await onOfficers.request("/v1/reviews").status == 200)
        await onOfficers.close()
        let partnerOnOfficers = try await TestHTTPSClient.connect(port: officersPort, cert: partner.cert, key: partner.key)
        #expect(try await partnerOnOfficers.request("/v1/inbox").status == 404)
        #expect(try await partnerOnOfficers.request("/console/").status == 403)
        await partnerOnOfficers.close()
        let partnerOnMain = try await TestHTTPSClient.connect(port: gateway.port, cert: partner.cert, key: partner.key)
        #expect(try await partnerOnMain.request("/v1/inbox").status == 200)
        await partnerOnMain.close()
    }

    @Test("a damaged sealed text is shown as such; the rest of the review queue stays readable (API and console)")
    func damagedSealedText() async throws {
        let gateway = try GatewayProcess()
        defer { gateway.stop() }
        let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
        let officer = PKIFixture.officer("privacy-officer-zhz")
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        for justification in ["eerste melding", "tweede melding"] {
            let r = try await team.request(
                "/v1/exchanges", method: .POST, headers: [("content-type", "application/json")],
                body: ExchangeTests.safetyReport.replacingOccurrences(of: #""justification": "kind vertelt over geweld thuis""#, with: "\"justification\": \"\(justification)\""))
            #expect(r.status == 201, "\(r.body)")
        }
        await team.close()
        // The first report's sealed texts are overwritten with bytes that are not what the entry hashed.
        let db = try SQLiteDatabase(path: gateway.directory + "/ketenpoort.db")
        let first = try #require(try db.rows("SELECT min(sequence) FROM audit_texts", []).first?.int64(0))
        try db.execute("UPDATE audit_texts SET sealed = x'0011223344' WHERE sequence = \(first)")
        let client = try await TestHTTPSClient.connect(port: gateway.port, cert: officer.cert, key: officer.key)
        let queue = try await client.request("/v1/reviews")
        #expect(queue.status == 200, "\(queue.body)")
        let items = queue.json?["items"]?.arrayValue ?? []
        #expect(items.count == 2)
        #expect(items.contains { $0["texts"]?["justification"] == .null }, "\(queue.body)")
        #expect(items.contains { $0["texts"]?["justification"]?.stringValue == "tweede melding" }, "\(queue.body)")
        let page = try await client.request("/console/reviews")
        #expect(page.status == 200)
        #expect(page.body.contains("niet te openen") && page.body.contains("tweede melding"))
        await client.close()
    }
}
