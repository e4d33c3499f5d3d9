import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortPolicy

/// The DPIA route map: per case table, what the policies allow (declared routes) beside what the
/// log shows happened (observed flows), as one self-contained HTML file with inline SVG, or as
/// Graphviz `dot` / Mermaid text; and the register of processing activities (GDPR art. 30).
/// No personal data: the log is read only as counts per partner pair, purpose and basis.
public struct RouteMap {
    public let policies: PolicySet
    public let flows: [ObservedFlow]
    public let period: String

    public init(policies: PolicySet, flows: [ObservedFlow], period: String) {
        self.policies = policies
        self.flows = flows
        self.period = period
    }

    /// A partner pair of one case table: the declared routes between them and what was observed.
    struct Edge {
        let sender: String
        let recipient: String
        var routes: [Route] = []
        var permits = 0
        var denials = 0
        var safetyExceptionUses = 0
    }

    var tables: [CaseTable] { policies.tables.values.sorted { $0.id < $1.id } }

    func edges(of table: CaseTable) -> [Edge] {
        let registry = policies.registry
        var edges: [String: Edge] = [:]
        for route in table.routes {
            let senders = registry.partners.filter { p in route.from.contains { $0.matches(p) } }
            let recipients = registry.partners.filter { p in route.to.contains { $0.matches(p) } }
            for s in senders {
                for r in recipients where s.id != r.id {
                    edges["\(s.id)>\(r.id)", default: Edge(sender: s.id, recipient: r.id)].routes.append(route)
                }
            }
        }
        for flow in flows where flow.caseTable == table.id {
            var edge = edges["\(flow.sender)>\(flow.recipient)", default: Edge(sender: flow.sender, recipient: flow.recipient)]
            if flow.decision == "permit" {
                edge.permits += flow.count
                if flow.basisType == "safety-exception" { edge.safetyExceptionUses += flow.count }
            } else {
                edge.denials += flow.count
            }
            edges["\(flow.sender)>\(flow.recipient)"] = edge
        }
        return edges.values.sorted { ($0.sender, $0.recipient) < ($1.sender, $1.recipient) }
    }

    /// Members and every partner on an edge, ordered by kind then id (the layout groups kinds).
    func nodes(of table: CaseTable, edges: [Edge]) -> [Partner] {
        let registry = policies.registry
        var ids = Set(edges.flatMap { [$0.sender, $0.recipient] })
        for p in registry.partners where table.members.contains(where: { $0.party.matches(p) }) { ids.insert(p.id) }
        return ids.compactMap { registry.partner(id: $0) }.sorted { ($0.kind, $0.id) < ($1.kind, $1.id) }
    }

    /// HTML text and attribute escaping.
    public static func escapeHTML(_ text: String) -> String { escape(text) }

    static func escape(_ text: String) -> String {
        var out = ""
        for c in text {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    static let kindColours: [String: String] = [
        "local_team": "#2b7bb9", "veilig_thuis": "#c0392b", "child_protection_board": "#8e44ad", "certified_institution": "#16a085",
        "youth_health_care": "#27ae60", "adult_mental_health": "#d35400", "police": "#2c3e50", "public_prosecution": "#7f8c8d",
        "care_safety_house": "#b9770e", "womens_shelter": "#c2185b", "school": "#5d6d7e", "municipality": "#566573",
    ]

    /// The graph of one case table: partners on a circle grouped by kind, one curved edge per
    /// ordered pair (a pair in both directions bends apart).
    func svg(_ table: CaseTable) -> String {
        let edges = edges(of: table)
        let nodes = nodes(of: table, edges: edges)
        let n = max(nodes.count, 1)
        let radius = Double(max(160, 26 * n))
        let size = 2 * radius + 260
        let centre = size / 2
        var position: [String: (x: Double, y: Double)] = [:]
        for (i, p) in nodes.enumerated() {
            let angle = 2 * Double.pi * Double(i) / Double(n) - Double.pi / 2
            position[p.id] = (centre + radius * cos(angle), centre + radius * sin(angle))
        }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"routemap\" data-case-table=\"\(RouteMap.escape(table.id))\" viewBox=\"0 0 \(Int(size)) \(Int(size))\" width=\"\(Int(size))\" height=\"\(Int(size))\" role=\"img\" aria-label=\"route map \(RouteMap.escape(table.id))\">"
        out += "<defs><marker id=\"arrow-\(RouteMap.escape(table.id))\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>"
        for edge in edges {
            guard let a = position[edge.sender], let b = position[edge.recipient] else { continue }
            let declared = !edge.routes.isEmpty
            let observed = edge.permits + edge.denials > 0
            let kind: String
            if declared && !observed { kind = "declared-unused" }
            else if !declared { kind = "outside-route" }
            else if edge.safetyExceptionUses > 0 { kind = "safety-exception" }
            else { kind = "declared-used" }
            // Bend to the right of the direction of travel, so A→B and B→A do not overlap.
            let mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2
            let dx = b.x - a.x, dy = b.y - a.y
            let length = max(1, (dx * dx + dy * dy).squareRoot())
            let cx = mx - dy / length * 30, cy = my + dx / length * 30
            // Stop short of the node circle.
            let ex = b.x - dx / length * 24, ey = b.y - dy / length * 24
            let routeIDs = edge.routes.map(\.id).joined(separator: " ")
            let purposes = Set(edge.routes.flatMap(\.purposes)).sorted().joined(separator: ", ")
            var title = "\(edge.sender) → \(edge.recipient)"
            if declared { title += "\nroutes: \(routeIDs)\npurposes: \(purposes)" } else { title += "\nno declared route" }
            title += "\npermitted \(edge.permits), denied \(edge.denials), safety exception \(edge.safetyExceptionUses)"
            out += "<g class=\"edge \(kind)\" data-pair=\"\(RouteMap.escape(edge.sender))&gt;\(RouteMap.escape(edge.recipient))\" data-routes=\"\(RouteMap.escape(routeIDs))\" data-permits=\"\(edge.permits)\" data-denials=\"\(edge.denials)\" data-safety-exception=\"\(edge.safetyExceptionUses)\">"
            out += "<title>\(RouteMap.escape(title))</title>"
            out += String(format: "<path d=\"M%.1f,%.1f Q%.1f,%.1f %.1f,%.1f\" marker-end=\"url(#arrow-%@)\"/>", a.x, a.y, cx, cy, ex, ey, RouteMap.escape(table.id))
            if observed {
                // On the curve itself: a quadratic Bézier's midpoint is ¼ start + ½ control + ¼ end.
                let tx = 0.25 * a.x + 0.5 * cx + 0.25 * ex, ty = 0.25 * a.y + 0.5 * cy + 0.25 * ey
                out += String(format: "<text x=\"%.1f\" y=\"%.1f\" class=\"count\">✓%d ✗%d</text>", tx, ty - 4, edge.permits, edge.denials)
            }
            out += "</g>"
        }
        for p in nodes {
            guard let at = position[p.id] else { continue }
            let colour = RouteMap.kindColours[p.kind] ?? "#444"
            let anchor = at.x < centre - 5 ? "end" : at.x > centre + 5 ? "start" : "middle"
            let lx = at.x + (at.x < centre - 5 ? -26 : at.x > centre + 5 ? 26 : 0)
            let ly = at.y + (abs(at.x - centre) <= 5 ? (at.y < centre ? -26 : 34) : 5)
            out += "<g class=\"node\" data-partner=\"\(RouteMap.escape(p.id))\" data-kind=\"\(RouteMap.escape(p.kind))\"><title>\(RouteMap.escape(p.name)) (\(RouteMap.escape(p.kind)))</title>"
            out += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"18\" fill=\"%@\"/>", at.x, at.y, colour)
            out += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%@\">%@</text></g>", lx, ly, anchor, RouteMap.escape(p.id))
        }
        out += "</svg>"
        return out
    }

    static let css = """
        body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
        h1{font-size:1.6em}h2{margin-top:2em;border-bottom:2px solid #ddd}
        table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
        th{background:#f3f3f3}.special{color:#b00;font-weight:bold}
        svg.routemap{border:1px solid #eee;background:#fcfcfc;max-width:100%;height:auto}
        .edge path{fill:none;stroke-width:2}.declared-used path{stroke:#2c7}.declared-unused path{stroke:#aaa;stroke-dasharray:6 4}
        .safety-exception path{stroke:#e67e22;stroke-width:3}.outside-route path{stroke:#c0392b;stroke-dasharray:3 3}
        .count{font-size:11px;fill:#333}.node text{font-size:12px}
        .legend span{display:inline-block;margin-right:1.5em}.swatch{display:inline-block;width:2em;height:0;border-top:3px solid;vertical-align:middle;margin-right:.4em}
        """

    /// The whole report: one file, nothing loaded from the network.
    public func html() -> String {
        var out = "<!DOCTYPE html><html lang=\"nl\"><head><meta charset=\"utf-8\"><title>Routekaart — \(RouteMap.escape(policies.registry.region))</title><style>\(RouteMap.css)</style></head><body>"
        out += "<h1>Routekaart en systematische beschrijving (DPIA, art. 35 lid 7 sub a AVG)</h1>"
        out += "<p>Regio \(RouteMap.escape(policies.registry.region)); beleid \(RouteMap.escape(policies.version)); waargenomen: \(RouteMap.escape(period)). Tellingen uit het auditlog, zonder persoonsgegevens.</p>"
        out += "<p class=\"legend\"><span><i class=\"swatch\" style=\"border-color:#2c7\"></i>route gebruikt</span><span><i class=\"swatch\" style=\"border-color:#aaa;border-top-style:dashed\"></i>route nooit gebruikt</span><span><i class=\"swatch\" style=\"border-color:#e67e22\"></i>veiligheidsuitzondering gebruikt</span><span><i class=\"swatch\" style=\"border-color:#c0392b;border-top-style:dotted\"></i>geweigerd, buiten elke route</span></p>"
        for table in tables {
            out += "<section class=\"case-table\" id=\"\(RouteMap.escape(table.id))\"><h2>\(RouteMap.escape(table.name)) (\(RouteMap.escape(table.id)))</h2>"
            out += svg(table)
            out += "<h3>Doelen</h3><table><tr><th>doel</th><th>omschrijving</th></tr>"
            for p in table.purposeOrder { out += "<tr><td>\(RouteMap.escape(p))</td><td>\(RouteMap.escape(table.purposes[p] ?? ""))</td></tr>" }
            out += "</table><h3>Routes</h3><table class=\"routes\"><tr><th>route</th><th>van → naar</th><th>doelen</th><th>categorieën en grondslag</th><th>doorbreking beroepsgeheim</th><th>bewaartermijn</th><th>waarborgen</th></tr>"
            for route in table.routes {
                let categories = route.categories.keys.sorted().map { name -> String in
                    let rule = route.categories[name]!
                    let special = Vocabulary.specialCategories.contains(name) || rule.specialException != nil
                    let criminal = rule.criminalBasis != nil || rule.wpgBasis != nil
                    var text = "\(RouteMap.escape(name)): \(RouteMap.escape(rule.basis))"
                    if special { text = "<span class=\"special\">\(text) (bijzonder: \(RouteMap.escape(rule.specialException ?? "art. 9")))</span>" }
                    if criminal { text += " (strafrechtelijk: \(RouteMap.escape(rule.criminalBasis ?? rule.wpgBasis ?? "")))" }
                    return text
                }.joined(separator: "<br>")
                out += "<tr data-route=\"\(RouteMap.escape(route.id))\"><td>\(RouteMap.escape(route.id))<br><small>\(RouteMap.escape(route.label))</small></td>"
                out += "<td>\(RouteMap.escape(route.from.map(\.description).joined(separator: ", "))) → \(RouteMap.escape(route.to.map(\.description).joined(separator: ", ")))</td>"
                out += "<td>\(RouteMap.escape(route.purposes.joined(separator: ", ")))</td><td>\(categories)</td>"
                out += "<td>\(RouteMap.escape(route.grounds.keys.sorted().joined(separator: ", ")))</td>"
                out += "<td>\(route.retentionYears.map { "\($0) jaar" } ?? "—")</td><td>\(RouteMap.escape(RouteMap.safeguards(route).joined(separator: "; ")))</td></tr>"
            }
            out += "</table></section>"
        }
        out += "</body></html>"
        return out
    }

    static func name(_ transform: FieldTransform) -> String {
        switch transform {
        case .keep: return "keep"
        case .drop: return "drop"
        case .pseudonymise: return "pseudonymise"
        case .token: return "token"
        case .generalise(let g): return g.rawValue
        }
    }

    /// What protects the data on a route, in words.
    static func safeguards(_ route: Route) -> [String] {
        var items: [String] = []
        var transforms: [String: [String]] = [:]
        for (category, rule) in route.categories {
            for (field, transform) in rule.fields where transform != .keep {
                transforms[RouteMap.name(transform), default: []].append("\(category).\(field)")
            }
        }
        for (transform, fields) in transforms.sorted(by: { $0.key < $1.key }) { items.append("\(transform): \(fields.sorted().joined(separator: ", "))") }
        switch route.inform {
        case .notRequired: break
        case .before: items.append("informeren vooraf")
        case .after(let days): items.append("informeren binnen \(days) dagen")
        case .deferred(let ground): items.append("informeren uitgesteld (\(ground))")
        }
        if route.grounds.keys.contains(where: { Vocabulary.safetyExceptionGrounds.contains($0) }) { items.append("toetsing achteraf door de privacy officer") }
        items.append("pseudoniemen per ontvanger, auditlog met bewijs")
        return items
    }

    /// Graphviz `dot`: one cluster per case table.
    public func dot() -> String {
        var out = "digraph routekaart {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n"
        for table in tables {
            out += "  subgraph \"cluster_\(table.id)\" {\n    label=\"\(table.id)\";\n"
            for edge in edges(of: table) {
                let style = edge.routes.isEmpty ? "dashed, color=red" : edge.permits + edge.denials == 0 ? "dashed, color=gray" : edge.safetyExceptionUses > 0 ? "bold, color=orange" : "solid"
                out += "    \"\(table.id)/\(edge.sender)\" -> \"\(table.id)/\(edge.recipient)\" [label=\"\(edge.routes.map(\.id).joined(separator: ",")) ✓\(edge.permits) ✗\(edge.denials)\", style=\"\(style)\"];\n"
            }
            out += "  }\n"
        }
        return out + "}\n"
    }

    /// Mermaid flowchart: one subgraph per case table.
    public func mermaid() -> String {
        var out = "flowchart LR\n"
        for table in tables {
            out += "  subgraph \(table.id.replacingOccurrences(of: "-", with: "_"))[\"\(table.id)\"]\n"
            for edge in edges(of: table) {
                let a = "\(table.id)_\(edge.sender)".replacingOccurrences(of: "-", with: "_")
                let b = "\(table.id)_\(edge.recipient)".replacingOccurrences(of: "-", with: "_")
                let arrow = edge.routes.isEmpty || edge.permits + edge.denials == 0 ? "-.->" : "-->"
                out += "    \(a)[\"\(edge.sender)\"] \(arrow)|\"✓\(edge.permits) ✗\(edge.denials)\"| \(b)[\"\(edge.recipient)\"]\n"
            }
            out += "  end\n"
        }
        return out
    }

    /// The register of processing activities (art. 30): one record per route and purpose.
    public func register() -> (csv: String, json: JSONValue) {
        let header = ["case_table", "controllers", "route", "purpose", "purpose_label", "categories", "special_categories", "legal_bases", "recipients", "senders", "retention_years", "safeguards"]
        func csvField(_ s: String) -> String { s.contains(where: { ",\"\n".contains($0) }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
        var lines = [header.joined(separator: ",")]
        var records: [JSONValue] = []
        for table in tables {
            for route in table.routes {
                for purpose in route.purposes {
                    let categories = route.categories.keys.sorted()
                    let special = categories.filter { Vocabulary.specialCategories.contains($0) || route.categories[$0]?.specialException != nil }
                    let bases = categories.map { "\($0):\(route.categories[$0]!.basis)" }
                    let values: [String] = [
                        table.id, table.controllers.joined(separator: " "), route.id, purpose, table.purposes[purpose] ?? "", categories.joined(separator: " "),
                        special.joined(separator: " "), bases.joined(separator: " "), route.to.map(\.description).joined(separator: " "),
                        route.from.map(\.description).joined(separator: " "), route.retentionYears.map(String.init) ?? "",
                        RouteMap.safeguards(route).joined(separator: "; "),
                    ]
                    lines.append(values.map(csvField).joined(separator: ","))
                    records.append(.object(zip(header, values).map { ($0, JSONValue.string($1)) }))
                }
            }
        }
        return (lines.joined(separator: "\n") + "\n", .object([("region", .string(policies.registry.region)), ("policyVersion", .string(policies.version)), ("records", .array(records))]))
    }
}
