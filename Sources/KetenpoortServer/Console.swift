import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortPolicy
import KetenpoortReports
import NIOHTTP1

/// `/console/`: the privacy officers' console, server-rendered HTML that works without
/// JavaScript. Officer certificates only. The log (filters, paging, one entry), the review queue
/// (reviews are logged), subjects not yet informed past their date, integrity (the newest
/// checkpoint, verify now), the route map, and a subject access report (the BSN goes in a POST
/// body, never in a URL). Nothing personal is shown: subjects appear as log pseudonyms.
struct Console {
    let state: GatewayState
    let audit: GatewayAudit
    let exchanges: ExchangeService

    static func escape(_ text: String) -> String { RouteMap.escapeHTML(text) }

    func page(_ title: String, _ body: String, route: String, status: HTTPResponseStatus = .ok) -> GatewayResponse {
        let html = """
            <!DOCTYPE html><html lang="nl"><head><meta charset="utf-8"><title>\(Console.escape(title)) — Ketenpoort</title>
            <style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1300px}nav a{margin-right:1em}
            table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
            th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}form.inline{display:inline}.bad{color:#b00}.ok{color:#070}</style></head>
            <body><nav><a href="/console/">Console</a><a href="/console/log">Log</a><a href="/console/reviews">Toetsing</a>
            <a href="/console/uninformed">Niet geïnformeerd</a><a href="/console/integrity">Integriteit</a><a href="/console/routemap">Routekaart</a>
            <a href="/console/subject-report">Inzageverzoek</a></nav><h1>\(Console.escape(title))</h1>\(body)</body></html>
            """
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/html; charset=utf-8")
        headers.add(name: "content-security-policy", value: "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'")
        return GatewayResponse(status: status, headers: headers, body: Array(html.utf8), route: route)
    }

    func redirect(_ location: String, route: String) -> GatewayResponse {
        var headers = HTTPHeaders()
        headers.add(name: "location", value: location)
        return GatewayResponse(status: .seeOther, headers: headers, body: [], route: route)
    }

    /// `application/x-www-form-urlencoded` → name → value.
    static func form(_ request: GatewayRequest) -> [String: String] {
        let text = request.body.map { String(buffer: $0) } ?? ""
        var result: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "" }
            if let name = parts.first { result[name] = parts.count > 1 ? parts[1] : "" }
        }
        return result
    }

    func respond(to request: GatewayRequest, caller: Caller) async -> GatewayResponse {
        guard case .officer(let officer) = caller else {
            return .problem(.forbidden, code: .forbidden, title: "Forbidden", detail: "the console is for privacy officers", route: "/console")
        }
        if request.method == .POST {
            // A form may only be posted from the console itself (no cross-site requests).
            if request.headers.first(name: "sec-fetch-site").map({ $0 != "same-origin" && $0 != "none" }) == true
                || request.headers.first(name: "origin").map({ $0.lowercased() != "https://" + (request.headers.first(name: "host") ?? "").lowercased() }) == true
            {
                return page("Geweigerd", "<p class=\"bad\">Formulieren worden alleen vanuit de console zelf verstuurd.</p>", route: "/console", status: .forbidden)
            }
        }
        let path = request.path
        do {
            switch (request.method, path) {
            case (.GET, "/console"), (.GET, "/console/"): return index(officer)
            case (.GET, "/console/log"): return try log(request)
            case (.GET, _) where path.hasPrefix("/console/log/"): return try entry(String(path.dropFirst("/console/log/".count)))
            case (.GET, "/console/reviews"): return try reviews()
            case (.POST, _) where path.hasPrefix("/console/reviews/"): return try await review(String(path.dropFirst("/console/reviews/".count)), request, officer)
            case (.GET, "/console/uninformed"): return try uninformed()
            case (.POST, _) where path.hasPrefix("/console/uninformed/"): return try await informed(String(path.dropFirst("/console/uninformed/".count)), request, officer)
            case (.GET, "/console/integrity"): return try integrity(verified: nil)
            case (.POST, "/console/integrity/verify"): return try integrity(verified: try AuditVerifier.verify(location: audit.database, keys: try audit.keys.verifierKeys))
            case (.GET, "/console/routemap"): return try routemap()
            case (.GET, "/console/subject-report"): return subjectReportForm()
            case (.POST, "/console/subject-report"): return try await subjectReport(request, officer)
            default: return page("Niet gevonden", "<p>Deze pagina bestaat niet.</p>", route: "/console", status: .notFound)
            }
        } catch let error as KetenpoortError {
            // The API's public wording: storage messages (tables, servers) are not shown.
            let told = GatewayResponse.publicForm(of: error)
            return page("Fout", "<p class=\"bad\">\(Console.escape(told.detail))</p>", route: "/console", status: told.status)
        } catch {
            return page("Fout", "<p class=\"bad\">De pagina kon niet worden gemaakt.</p>", route: "/console", status: .internalServerError)
        }
    }

    func index(_ officer: Officer) -> GatewayResponse {
        let pending = (try? exchanges.repository.pendingReviews(limit: 1000).count) ?? 0
        let size = (try? audit.read { try $0.tail().size }) ?? 0
        return page(
            "Console", """
            <p>Ingelogd als \(Console.escape(officer.name)) (\(Console.escape(officer.role))). Het log telt \(size) regels; \(pending) uitwisseling(en) wachten op toetsing.</p>
            <ul><li><a href="/console/log">Het log doorzoeken</a></li><li><a href="/console/reviews">Toetsing van veiligheidsuitzonderingen</a></li>
            <li><a href="/console/uninformed">Betrokkenen die nog geïnformeerd moeten worden</a></li><li><a href="/console/integrity">Integriteit van het log</a></li>
            <li><a href="/console/routemap">Routekaart</a></li><li><a href="/console/subject-report">Inzageverzoek (art. 15 AVG)</a></li></ul>
            """, route: "/console")
    }

    func log(_ request: GatewayRequest) throws -> GatewayResponse {
        var query = AuditQuery()
        let q = request.query
        query.kind = q["kind"].flatMap { $0.isEmpty ? nil : $0 }
        if let kind = query.kind, AuditKind(rawValue: kind) == nil { throw KetenpoortError(.invalidRequest, "unknown kind `\(kind.prefix(40))`") }
        query.caseTable = q["caseTable"].flatMap { $0.isEmpty ? nil : $0 }
        query.sender = q["sender"].flatMap { $0.isEmpty ? nil : $0 }
        query.recipient = q["recipient"].flatMap { $0.isEmpty ? nil : $0 }
        query.decision = q["decision"].flatMap { $0.isEmpty ? nil : $0 }
        query.afterSequence = q["after"].flatMap { Int64($0) }
        query.limit = 50
        var rows = ""
        var last: Int64?
        var count = 0
        try audit.read { store in
            try store.entries(matching: query) { e in
                let body = e.body.flatMap { try? JSONParser.parse($0) }
                func f(_ name: String) -> String { Console.escape(body?[name]?.stringValue ?? "") }
                rows += "<tr><td><a href=\"/console/log/\(e.sequence)\">\(e.sequence)</a></td><td>\(Console.escape(e.time))</td><td>\(Console.escape(e.kind))\(e.body == nil ? " (gewist)" : "")</td><td>\(f("caseTable"))</td><td>\(f("sender"))</td><td>\(f("recipient"))</td><td>\(f("purpose"))</td><td>\(f("decision"))</td><td>\(Console.escape(body?["basis"]?["type"]?.stringValue ?? ""))</td></tr>"
                last = e.sequence
                count += 1
                return true
            }
        }
        func option(_ value: String, _ selected: String?) -> String { "<option\(value == selected ? " selected" : "")>\(Console.escape(value))</option>" }
        var form = "<form method=\"get\" action=\"/console/log\">soort <select name=\"kind\"><option value=\"\">alle</option>"
        for kind in AuditKind.allCases { form += option(kind.rawValue, query.kind) }
        form += "</select> casustafel <input name=\"caseTable\" value=\"\(Console.escape(query.caseTable ?? ""))\"> afzender <input name=\"sender\" value=\"\(Console.escape(query.sender ?? ""))\"> ontvanger <input name=\"recipient\" value=\"\(Console.escape(query.recipient ?? ""))\"> besluit <select name=\"decision\"><option value=\"\">alle</option>\(option("permit", query.decision))\(option("deny", query.decision))</select> <button>Zoeken</button></form>"
        var next = ""
        if count == 50, let last {
            var items = q.filter { $0.key != "after" }.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }
            items.append("after=\(last)")
            next = "<p><a href=\"/console/log?\(Console.escape(items.joined(separator: "&")))\">Volgende 50 →</a></p>"
        }
        return page(
            "Log", form + "<table><tr><th>#</th><th>tijd</th><th>soort</th><th>casustafel</th><th>afzender</th><th>ontvanger</th><th>doel</th><th>besluit</th><th>grond</th></tr>\(rows)</table>\(next)",
            route: "/console/log")
    }

    func entry(_ text: String) throws -> GatewayResponse {
        guard let sequence = Int64(text), sequence > 0, let e = try audit.read({ try $0.entry(sequence: sequence) }) else {
            throw KetenpoortError(.notFound, "no log entry `\(text.prefix(20))`")
        }
        var explanation = ""
        if let body = e.body, let json = try? JSONParser.parse(body) {
            let table = json["caseTable"]?.stringValue.flatMap { state.snapshot.policySet.tables[$0] }
            let reasons = json["explanation"]?.arrayValue?.compactMap(\.stringValue) ?? []
            if !reasons.isEmpty {
                for reason in reasons { explanation += "<li>\(Console.escape(reason))</li>" }
            } else {
                for rule in json["rules"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                    let label = table?.routes.first { $0.id == rule }?.label ?? table?.forbids.first { $0.id == rule }?.label ?? ""
                    explanation += "<li><code>\(Console.escape(rule))</code> \(Console.escape(label))</li>"
                }
            }
        }
        let pretty = e.body.flatMap { try? JSONParser.parse($0) }.map { Console.pretty($0) } ?? "(gewist bij het verstrijken van de bewaartermijn; de hash blijft: \(Hex.encode(e.leafHash)))"
        return page(
            "Logregel \(sequence)", """
            <p>\(Console.escape(e.kind)) op \(Console.escape(e.time)). Bewijs van opname: <a href="/v1/audit/entries/\(sequence)/proof">inclusiebewijs</a>.</p>
            <h2>Beslissende regels</h2><ul>\(explanation.isEmpty ? "<li>—</li>" : explanation)</ul><h2>De regel zelf</h2><pre>\(Console.escape(pretty))</pre>
            """, route: "/console/log/{sequence}")
    }

    static func pretty(_ value: JSONValue, indent: String = "") -> String {
        switch value {
        case .object(let members):
            if members.isEmpty { return "{}" }
            return "{\n" + members.map { "\(indent)  \($0.0): \(pretty($0.1, indent: indent + "  "))" }.joined(separator: "\n") + "\n\(indent)}"
        case .array(let items):
            return "[" + items.map { pretty($0, indent: indent) }.joined(separator: ", ") + "]"
        default:
            return value.serialized()
        }
    }

    func reviews() throws -> GatewayResponse {
        let rows = try exchanges.repository.pendingReviews(limit: 200)
        var html = rows.isEmpty ? "<p class=\"ok\">Niets te toetsen.</p>" : ""
        for row in rows {
            var texts = ""
            if let entry = try audit.read({ try $0.entry(sequence: row.logSequence) }) {
                for (name, text) in try audit.openedTexts(of: entry) {
                    let shown = text.map(Console.escape) ?? "<span class=\"bad\">niet te openen: beschadigd, of de sleutel is ingetrokken (zie het log van de gateway)</span>"
                    texts += "<dt>\(Console.escape(name))</dt><dd>\(shown)</dd>"
                }
            }
            html += """
                <section><h2>\(Console.escape(row.sender)) → \(Console.escape(row.recipient)) · \(Console.escape(row.ground))</h2>
                <p>\(Console.escape(row.caseTable)), doel \(Console.escape(row.purpose)), besloten \(Console.escape(row.createdAt)), informeren uiterlijk \(Console.escape(row.informSubjectBy ?? "—")), <a href="/console/log/\(row.logSequence)">logregel \(row.logSequence)</a></p>
                <dl>\(texts)</dl>
                <form method="post" action="/console/reviews/\(Console.escape(row.id))">
                <select name="outcome"><option value="upheld">terecht</option><option value="not-upheld">niet terecht</option><option value="needs-follow-up">vervolg nodig</option></select>
                <input name="comment" size="60" placeholder="toelichting"> <button>Toetsing vastleggen</button></form></section>
                """
        }
        return page("Toetsing van veiligheidsuitzonderingen", html, route: "/console/reviews")
    }

    func review(_ id: String, _ request: GatewayRequest, _ officer: Officer) async throws -> GatewayResponse {
        let form = Console.form(request)
        guard let outcome = form["outcome"], ExchangeService.outcomes.contains(outcome) else {
            throw KetenpoortError(.invalidRequest, "choose an outcome")
        }
        guard let row = try exchanges.repository.exchange(id: id), row.reviewState == "pending" else {
            throw KetenpoortError(.notFound, "no exchange awaiting review with this id")
        }
        let comment = form["comment"].flatMap { $0.isEmpty ? nil : $0 }
        var record = try audit.recorder.review(exchangeID: row.id, officer: officer.id, outcome: outcome, comment: comment)
        // A review racing this one (another officer, the API) is refused with 409, not logged.
        record.precondition = ExchangeRepository.review(exchangeID: row.id, outcome: outcome)
        _ = try await audit.record(record)
        return redirect("/console/reviews", route: "/console/reviews/{id}")
    }

    func uninformed() throws -> GatewayResponse {
        let today = ExchangeService.today
        let rows = try exchanges.repository.informOverdue(today: today, limit: 500)
        var html = rows.isEmpty ? "<p class=\"ok\">Geen betrokkenen over hun datum.</p>" : "<table><tr><th>uiterlijk</th><th>casustafel</th><th>afzender</th><th>ontvanger</th><th>doel</th><th>grond</th><th>log</th><th></th></tr>"
        for row in rows {
            html += "<tr><td class=\"bad\">\(Console.escape(row.informSubjectBy ?? ""))</td><td>\(Console.escape(row.caseTable))</td><td>\(Console.escape(row.sender))</td><td>\(Console.escape(row.recipient))</td><td>\(Console.escape(row.purpose))</td><td>\(Console.escape(row.ground))</td><td><a href=\"/console/log/\(row.logSequence)\">\(row.logSequence)</a></td>"
            html += "<td><form class=\"inline\" method=\"post\" action=\"/console/uninformed/\(Console.escape(row.id))\">geïnformeerd op <input name=\"date\" type=\"date\" value=\"\(Console.escape(today))\"> <button>Vastleggen</button></form></td></tr>"
        }
        if !rows.isEmpty { html += "</table>" }
        return page("Betrokkenen niet geïnformeerd na hun datum (\(Console.escape(today)))", html, route: "/console/uninformed")
    }

    /// Records that the family was informed (logged; the exchange leaves the overdue list).
    func informed(_ id: String, _ request: GatewayRequest, _ officer: Officer) async throws -> GatewayResponse {
        let date = Console.form(request)["date"] ?? ""
        guard CalendarDate.isValid(date), date <= ExchangeService.today else {
            throw KetenpoortError(.invalidRequest, "give the day the family was informed (YYYY-MM-DD, a real day, not in the future)")
        }
        guard let row = try exchanges.repository.exchange(id: id), row.decision == "permit", row.informSubjectBy != nil else {
            throw KetenpoortError(.notFound, "no permitted exchange with this id whose subject must be informed")
        }
        // The family cannot have been told of an exchange before it was decided.
        let decided = String(row.createdAt.prefix(10))
        guard date >= decided else {
            throw KetenpoortError(.invalidRequest, "the family cannot have been informed before the exchange was decided (\(decided)); give the day they were told")
        }
        // Recorded once: a second post (a double click, a second officer) would log a date the
        // database does not keep. Refused here when seen; when racing, by the precondition (409).
        if let already = try exchanges.repository.informedAt(id: id) {
            throw KetenpoortError(.notFound, "the family was already recorded as informed of this exchange, on \(already)")
        }
        var record = AuditRecord(
            kind: AuditKind.subjectInformed.rawValue,
            members: [("exchangeId", .string(row.id)), ("officer", .string(officer.id)), ("informedOn", .string(date)), ("informSubjectBy", row.informSubjectBy.map { .string($0) } ?? .null)])
        record.precondition = ExchangeRepository.informed(exchangeID: row.id, on: date)
        _ = try await audit.record(record)
        return redirect("/console/uninformed", route: "/console/uninformed/{id}")
    }

    func integrity(verified: AuditVerifier.Report?) throws -> GatewayResponse {
        let checkpoint = try audit.read { try $0.checkpoints().last }
        var html = "<h2>Laatste ondertekende boomkop</h2><pre>\(Console.escape(checkpoint?.note ?? "nog geen"))</pre>"
        html += "<h2>Publieke sleutel</h2><pre>\(Console.escape(try audit.keys.verifierKeys.map(\.text).joined(separator: "\n")))</pre>"
        if let report = verified {
            html += report.isValid
                ? "<p class=\"ok\">\(report.entries) regels gecontroleerd; \(report.checkpointsVerified) boomkop(pen) kloppen; handtekeningen gecontroleerd.</p>"
                : "<p class=\"bad\">Controle mislukt bij regel \(report.firstBadEntry ?? 0): \(Console.escape(report.problem ?? ""))</p>"
        }
        html += "<form method=\"post\" action=\"/console/integrity/verify\"><button>Nu controleren</button></form>"
        return page("Integriteit van het log", html, route: "/console/integrity")
    }

    func routemap() throws -> GatewayResponse {
        let flows = try audit.read { try $0.observedFlows(from: nil, until: nil) }
        let map = RouteMap(policies: state.snapshot.policySet, flows: flows, period: "het hele log")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/html; charset=utf-8")
        headers.add(name: "content-security-policy", value: "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        return GatewayResponse(status: .ok, headers: headers, body: Array(map.html().utf8), route: "/console/routemap")
    }

    func subjectReportForm() -> GatewayResponse {
        page(
            "Inzageverzoek (art. 15 AVG)", """
            <p>Het BSN gaat alleen in het formulier (nooit in een adres) en wordt in het geheugen omgezet naar het pseudoniem van het log; het wordt niet opgeslagen.</p>
            <form method="post" action="/console/subject-report"><label>BSN <input name="bsn" inputmode="numeric" autocomplete="off" maxlength="9"></label> <button>Rapport maken</button></form>
            """, route: "/console/subject-report")
    }

    func subjectReport(_ request: GatewayRequest, _ officer: Officer) async throws -> GatewayResponse {
        guard let text = Console.form(request)["bsn"], let bsn = try? BSN(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw KetenpoortError(.invalidBSN, "that is not a valid BSN (nine digits passing the 11-check)")
        }
        let report = try audit.read { try SubjectReport.build(store: $0, pseudonyms: try audit.keys.subjectPseudonyms(bsn)) }
        // Looking up a person is itself logged, before the report is shown (fail closed).
        try await audit.record(try audit.recorder.subjectReport(officer: officer.id, subject: bsn, entries: report.items.count))
        var html = "<p>\(report.items.count) uitwisseling(en) over deze persoon.</p><table><tr><th>#</th><th>datum</th><th>casustafel</th><th>afzender</th><th>ontvanger</th><th>doel</th><th>grond</th><th>gegevens</th><th>bewijs</th></tr>"
        for item in report.items {
            html += "<tr><td>\(item.sequence)</td><td>\(Console.escape(String(item.time.prefix(10))))</td><td>\(Console.escape(item.caseTable))</td><td>\(Console.escape(item.sender))</td><td>\(Console.escape(item.recipient))</td><td>\(Console.escape(item.purpose))</td><td>\(Console.escape(item.basis))</td><td>\(Console.escape(item.categories.joined(separator: ", ")))</td><td>\(item.proof == nil ? "nog geen boomkop" : "\(item.proof!.path.count) hashes")</td></tr>"
        }
        html += "</table>"
        for (reason, count) in report.leftOut.sorted(by: { $0.key < $1.key }) { html += "<p>Weggelaten: \(count) — \(Console.escape(reason))</p>" }
        for (reason, count) in report.generalised.sorted(by: { $0.key < $1.key }) { html += "<p>Algemener gemaakt: \(count) — \(Console.escape(reason))</p>" }
        return page("Inzagerapport", html, route: "/console/subject-report")
    }
}
