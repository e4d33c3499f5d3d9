import Foundation
import KetenpoortCore
import NIOCore
import Testing

/// `ketenpoort routemap` over a log the gateway wrote: declared routes and observed counts.
@Suite("DPIA route map")
struct RouteMapTests {
    let wijkteam = PKIFixture.partner("wijkteam-dordrecht")
    let jgz = PKIFixture.partner("jgz-zhz")

    /// The attributes of the edge for one pair in one case table's SVG.
    func edge(_ html: String, table: String, pair: String) -> [String: String]? {
        guard let section = html.range(of: "data-case-table=\"\(table)\"") else { return nil }
        let rest = html[section.upperBound...]
        let end = rest.range(of: "</svg>")?.lowerBound ?? rest.endIndex
        let svg = rest[..<end]
        guard let start = svg.range(of: "data-pair=\"\(pair.replacingOccurrences(of: ">", with: "&gt;"))\"") else { return nil }
        let tagStart = svg[..<start.lowerBound].range(of: "<g class=\"", options: .backwards)!.lowerBound
        let tag = svg[tagStart...].prefix { $0 != ">" }
        var attributes: [String: String] = [:]
        let pattern = try! NSRegularExpression(pattern: #"([a-z-]+)="([^"]*)""#)
        let text = String(tag)
        for m in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            attributes[String(text[Range(m.range(at: 1), in: text)!])] = String(text[Range(m.range(at: 2), in: text)!])
        }
        return attributes
    }

    @Test("every declared route and observed flow is drawn with the right counts; register as CSV and JSON; dot and mermaid")
    func routeMapOfALog() async throws {
        let gateway = try GatewayProcess()
        let team = try await TestHTTPSClient.connect(port: gateway.port, cert: wijkteam.cert, key: wijkteam.key)
        let report = """
            {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
             "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "zorgen", "professional": "wt-1",
                       "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
             "subjects": [{"bsn": "999990019", "role": "child", "age": 9}], "data": {"identity": {"bsn": "999990019"}}}
            """
        for _ in 0..<3 { #expect(try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: report).status == 201) }
        let incomplete = report.replacingOccurrences(of: "\"justification\": \"zorgen\", ", with: "")
        #expect(try await team.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: incomplete).status == 403)
        let outside = try await TestHTTPSClient.connect(port: gateway.port, cert: jgz.cert, key: jgz.key)
        for _ in 0..<2 { #expect(try await outside.request("/v1/exchanges", method: .POST, headers: [("content-type", "application/json")], body: report).status == 403) }
        await team.close()
        await outside.close()
        #expect(gateway.stop() == 0)

        let out = gateway.directory + "/routemap.html"
        let r = try ketenpoort(["routemap", "--policies", packageRoot + "/Policies", "--db", gateway.directory + "/ketenpoort.db", "--out", out])
        #expect(r.status == 0, "\(r.stderr)")
        let html = try String(contentsOfFile: out, encoding: .utf8)
        // Declared routes: every route of every table has a row, and an edge for each expanded pair.
        let policyText = try String(contentsOfFile: packageRoot + "/Policies/mda-zhz.yaml", encoding: .utf8)
        let routeIDs = policyText.split(separator: "\n").compactMap { line -> String? in
            let t = line.trimmingCharacters(in: .whitespaces)
            return t.hasPrefix("- id: ") ? String(t.dropFirst(6)) : nil
        }
        #expect(routeIDs.count >= 8)
        for id in routeIDs { #expect(html.contains("data-route=\"\(id)\""), "route \(id) missing") }
        let used = try #require(edge(html, table: "mda-zhz", pair: "wijkteam-dordrecht>veilig-thuis-zhz"))
        #expect(used["data-permits"] == "3")
        #expect(used["data-denials"] == "1")
        #expect(used["data-safety-exception"] == "3")
        #expect(used["class"] == "edge safety-exception")
        let denied = try #require(edge(html, table: "mda-zhz", pair: "jgz-zhz>veilig-thuis-zhz"))
        #expect(denied["class"] == "edge outside-route")
        #expect(denied["data-denials"] == "2")
        let unused = try #require(edge(html, table: "mda-zhz", pair: "politie-zhz>veilig-thuis-zhz"))
        #expect(unused["class"] == "edge declared-unused")
        // Self-contained, nothing personal.
        #expect(!html.contains("<script"))
        #expect(html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").range(of: #"(src|href)="https?:"#, options: .regularExpression) == nil)
        #expect(!html.contains("999990019"))
        let csv = try String(contentsOfFile: gateway.directory + "/routemap-register.csv", encoding: .utf8)
        #expect(csv.hasPrefix("case_table,controllers,route,purpose"))
        #expect(csv.contains("mda-zhz,") && csv.contains("local-team-reports-to-vt"))
        let json = try JSONParser.parse(try String(contentsOfFile: gateway.directory + "/routemap-register.json", encoding: .utf8))
        #expect((json["records"]?.arrayValue?.count ?? 0) == csv.split(separator: "\n").count - 1)
        for format in ["dot", "mermaid"] {
            let file = gateway.directory + "/routemap.\(format)"
            #expect(try ketenpoort(["routemap", "--policies", packageRoot + "/Policies", "--db", gateway.directory + "/ketenpoort.db", "--out", file, "--format", format]).status == 0)
            let text = try String(contentsOfFile: file, encoding: .utf8)
            #expect(text.contains(format == "dot" ? "digraph" : "flowchart"))
            #expect(text.contains("✓3 ✗1"))
        }
        // The period is checked, not compared as text: a word, or a time with an offset, would
        // silently select the wrong flows.
        for bad in ["banana", "2026-12-01T06:00:00+01:00", "2026-02-30"] {
            let r = try ketenpoort(["routemap", "--policies", packageRoot + "/Policies", "--db", gateway.directory + "/ketenpoort.db", "--out", out, "--from", bad])
            #expect(r.status == 2, "\(bad): \(r.stderr)")
            #expect(r.stderr.contains("--from must be a day (YYYY-MM-DD) or a UTC time"), "\(r.stderr)")
        }
        let future = try ketenpoort(["routemap", "--policies", packageRoot + "/Policies", "--db", gateway.directory + "/ketenpoort.db", "--out", out, "--from", "2999-01-01"])
        #expect(future.status == 0)
        #expect(future.stdout.contains("(4 case tables, 0 logged exchanges)"), "\(future.stdout)")
    }
}
