import Foundation
import KetenpoortCore
import Yams

/// Reads a policy directory: `partners.yaml`, optional `forbid.yaml` (region-wide forbids), and
/// one file per case table. Validates everything it can and compiles when there is no error.
public enum PolicyLoader {
    /// The result of loading: the compiled set (only when there are no errors) and every diagnostic.
    public struct Result: Sendable {
        public let policySet: PolicySet?
        public let diagnostics: [Diagnostic]
        public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    }

    /// Loads every policy file of `directory` (file names in diagnostics are relative to it).
    public static func load(directory: String) -> Result {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory) else {
            return Result(policySet: nil, diagnostics: [Diagnostic(file: directory, line: 1, column: 1, severity: .error, message: "policy directory does not exist or cannot be read")])
        }
        var files: [(name: String, text: String)] = []
        for name in names.sorted() where name.hasSuffix(".yaml") || name.hasSuffix(".yml") {
            let path = (directory as NSString).appendingPathComponent(name)
            guard let data = fm.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                return Result(policySet: nil, diagnostics: [Diagnostic(file: name, line: 1, column: 1, severity: .error, message: "cannot be read as UTF-8 text")])
            }
            files.append((name, text))
        }
        return load(files: files)
    }

    /// Loads policy texts (name → YAML). Pure: used by tests and by ``load(directory:)``.
    public static func load(files: [(name: String, text: String)]) -> Result {
        var diagnostics: [Diagnostic] = []
        var hashInput: [UInt8] = []
        for file in files.sorted(by: { $0.name < $1.name }) {
            hashInput += Array(file.name.utf8) + [0] + Array(file.text.utf8) + [0]
        }
        let version = "sha256:" + SHA256Digest.hex(SHA256Digest.hash(hashInput)).prefix(16)

        guard let partnersFile = files.first(where: { $0.name == "partners.yaml" }) else {
            return Result(policySet: nil, diagnostics: [Diagnostic(file: "partners.yaml", line: 1, column: 1, severity: .error, message: "the partner registry `partners.yaml` is missing")])
        }
        let registry: PartnerRegistry
        do {
            registry = try PartnerRegistry.parse(yaml: partnersFile.text, file: partnersFile.name)
        } catch let error as KetenpoortError {
            return Result(policySet: nil, diagnostics: [diagnostic(fromRegistryError: error.message, file: partnersFile.name)])
        } catch {
            return Result(policySet: nil, diagnostics: [Diagnostic(file: partnersFile.name, line: 1, column: 1, severity: .error, message: "\(error)")])
        }

        var tables: [String: CaseTable] = [:]
        var regionForbids: [ForbidRule] = []
        var forbidIDs: [String: SourceLocation] = [:]
        for file in files where file.name != "partners.yaml" {
            let reader = PolicyFileReader(file: file.name, registry: registry)
            guard let root = reader.compose(file.text) else {
                diagnostics += reader.diagnostics
                continue
            }
            if file.name == "forbid.yaml" || file.name == "forbid.yml" {
                regionForbids += reader.readRegionForbids(root, seen: &forbidIDs)
                diagnostics += reader.diagnostics
                continue
            }
            if let table = reader.readCaseTable(root, forbidIDs: &forbidIDs) {
                if let existing = tables[table.id] {
                    reader.error(root, "case table `\(table.id)` is also defined in \(existing.file)")
                } else {
                    tables[table.id] = table
                }
            }
            diagnostics += reader.diagnostics
        }
        let hasErrors = diagnostics.contains { $0.severity == .error }
        let set = hasErrors ? nil : PolicySet(version: version, registry: registry, tables: tables, regionForbids: regionForbids)
        return Result(policySet: set, diagnostics: diagnostics.sorted { ($0.file, $0.line, $0.column) < ($1.file, $1.line, $1.column) })
    }

    static func diagnostic(fromRegistryError message: String, file: String) -> Diagnostic {
        // Registry errors start with `file:line:col: ` when the location is known.
        let parts = message.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
        if parts.count == 4, let line = Int(parts[1]), let column = Int(parts[2]) {
            return Diagnostic(file: file, line: line, column: column, severity: .error, message: parts[3].trimmingCharacters(in: .whitespaces))
        }
        let stripped = message.hasPrefix(file + ": ") ? String(message.dropFirst(file.count + 2)) : message
        return Diagnostic(file: file, line: 1, column: 1, severity: .error, message: stripped)
    }
}

/// Reads one policy file, collecting diagnostics with positions.
final class PolicyFileReader {
    let file: String
    let registry: PartnerRegistry
    private(set) var diagnostics: [Diagnostic] = []

    init(file: String, registry: PartnerRegistry) {
        self.file = file
        self.registry = registry
    }

    func compose(_ text: String) -> Node? {
        do {
            guard let node = try Yams.compose(yaml: text) else {
                diagnostics.append(Diagnostic(file: file, line: 1, column: 1, severity: .error, message: "the file is empty"))
                return nil
            }
            return node
        } catch let error as YamlError {
            var line = 1, column = 1
            let text = "\(error)"
            if case .parser(_, _, let mark, _) = error { line = mark.line; column = mark.column }
            if case .scanner(_, _, let mark, _) = error { line = mark.line; column = mark.column }
            if case .composer(_, _, let mark, _) = error { line = mark.line; column = mark.column }
            var summary = text.split(separator: "\n").first.map(String.init) ?? text
            // Yams repeats the position and the word error: keep the problem only.
            if let range = summary.range(of: "error: ") { summary = String(summary[range.upperBound...]) }
            if summary.hasSuffix(":") { summary.removeLast() }
            diagnostics.append(Diagnostic(file: file, line: line, column: column, severity: .error, message: "not valid YAML: \(summary)"))
            return nil
        } catch {
            diagnostics.append(Diagnostic(file: file, line: 1, column: 1, severity: .error, message: "not valid YAML: \(error)"))
            return nil
        }
    }

    // MARK: Diagnostics

    func error(_ node: Node?, _ message: String) { add(node, .error, message) }
    func warning(_ node: Node?, _ message: String) { add(node, .warning, message) }

    private func add(_ node: Node?, _ severity: Diagnostic.Severity, _ message: String) {
        let mark = node?.mark
        diagnostics.append(Diagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, severity: severity, message: message))
    }

    func location(_ node: Node) -> SourceLocation { SourceLocation(file: file, line: node.mark?.line ?? 1) }

    // MARK: Typed access

    func mapping(_ node: Node, _ what: String) -> Node.Mapping? {
        guard let mapping = node.mapping else {
            error(node, "\(what) must be a mapping")
            return nil
        }
        return mapping
    }

    func checkKeys(_ mapping: Node.Mapping, allowed: Set<String>, in what: String) {
        for (key, _) in mapping {
            let name = key.string ?? ""
            if !allowed.contains(name) {
                error(key, "unknown key `\(name)` in \(what); expected one of \(allowed.sorted().joined(separator: ", "))")
            }
        }
    }

    func string(_ mapping: Node.Mapping, _ key: String, in what: String, required: Bool = true) -> String? {
        guard let node = mapping[key] else {
            if required { error(mapping.first?.key, "\(what) needs `\(key)`") }
            return nil
        }
        guard let scalar = node.scalar, !scalar.string.isEmpty else {
            error(node, "`\(key)` must be text")
            return nil
        }
        return scalar.string
    }

    func strings(_ node: Node?, _ key: String) -> [(String, Node)] {
        guard let node else { return [] }
        if let scalar = node.scalar { return [(scalar.string, node)] }
        guard let sequence = node.sequence else {
            error(node, "`\(key)` must be a list")
            return []
        }
        var result: [(String, Node)] = []
        for item in sequence {
            if let scalar = item.scalar { result.append((scalar.string, item)) } else { error(item, "items of `\(key)` must be text") }
        }
        return result
    }

    func date(_ node: Node?, _ key: String) -> String? {
        guard let node else { return nil }
        guard let text = node.scalar?.string, CalendarDate.isValid(text) else {
            error(node, "`\(key)` must be a date YYYY-MM-DD (a real day)")
            return nil
        }
        return text
    }

    /// Checks a party reference: a registered partner id or `kind:<kind>`.
    func party(_ text: String, _ node: Node) -> PartyRef? {
        let ref = PartyRef(parsing: text)
        switch ref {
        case .partner(let id):
            guard registry.partner(id: id) != nil else {
                error(node, "unknown partner `\(id)` (not in partners.yaml)")
                return nil
            }
        case .kind(let kind):
            guard partnerKinds.contains(kind) else {
                error(node, "unknown partner kind `\(kind)`")
                return nil
            }
        }
        return ref
    }

    // MARK: Case tables

    func readCaseTable(_ root: Node, forbidIDs: inout [String: SourceLocation]) -> CaseTable? {
        guard let map = mapping(root, "a case table file") else { return nil }
        checkKeys(
            map,
            allowed: ["case_table", "name", "kind", "controllers", "joint_controllers", "contact_point", "members", "purposes", "routes", "forbid", "description"],
            in: "a case table")
        guard let id = string(map, "case_table", in: "a case table") else { return nil }
        let name = string(map, "name", in: "case table `\(id)`") ?? id
        let kind = string(map, "kind", in: "case table `\(id)`", required: false) ?? ""
        var controllers: [String] = []
        for (text, node) in strings(map["controllers"], "controllers") where party(text, node) != nil { controllers.append(text) }
        if controllers.isEmpty { error(map["controllers"] ?? root, "case table `\(id)` needs at least one controller") }
        let joint = map["joint_controllers"]?.bool ?? false
        let contactPoint = string(map, "contact_point", in: "case table `\(id)`") ?? ""
        if !contactPoint.isEmpty, registry.partner(id: contactPoint) == nil {
            error(map["contact_point"], "unknown partner `\(contactPoint)` as contact point")
        }

        // Members.
        var members: [Membership] = []
        var memberNodes: [(Membership, Node)] = []
        if let list = map["members"]?.sequence {
            for item in list {
                guard let m = mapping(item, "a member") else { continue }
                checkKeys(m, allowed: ["partner", "kind", "since", "until"], in: "a member")
                let ref: PartyRef?
                if let p = m["partner"]?.string {
                    ref = party(p, m["partner"]!)
                } else if let k = m["kind"]?.string {
                    ref = party("kind:" + k, m["kind"]!)
                } else {
                    error(item, "a member needs `partner` or `kind`")
                    ref = nil
                }
                guard let ref else { continue }
                let since = date(m["since"], "since")
                let until = date(m["until"], "until")
                if let since, let until, until < since { error(m["until"], "member `\(ref)` leaves before it joins") }
                let membership = Membership(party: ref, since: since, until: until)
                members.append(membership)
                memberNodes.append((membership, item))
            }
        } else {
            error(map["members"] ?? root, "case table `\(id)` needs a list of `members`")
        }

        // Purposes.
        var purposes: [String: String] = [:]
        var purposeOrder: [String] = []
        if let pmap = map["purposes"]?.mapping {
            for (key, value) in pmap {
                let pid = key.string ?? ""
                if purposes[pid] != nil { error(key, "duplicate purpose `\(pid)`") }
                guard let label = value.string ?? value.mapping?["label"]?.string else {
                    error(value, "purpose `\(pid)` needs a label")
                    continue
                }
                purposes[pid] = label
                purposeOrder.append(pid)
            }
        } else {
            error(map["purposes"] ?? root, "case table `\(id)` needs `purposes` (id: label)")
        }

        // Routes.
        var routes: [Route] = []
        var routeIDs: [String: Node] = [:]
        if let list = map["routes"]?.sequence {
            for item in list {
                guard let route = readRoute(item, table: id, purposes: purposes, members: members) else { continue }
                if routeIDs[route.id] != nil {
                    error(item.mapping?["id"] ?? item, "duplicate route id `\(route.id)`")
                    continue
                }
                routeIDs[route.id] = item
                routes.append(route)
            }
        } else {
            error(map["routes"] ?? root, "case table `\(id)` needs a list of `routes`")
        }

        // A member in no route.
        for (membership, node) in memberNodes {
            let inSomeRoute = routes.contains { route in
                (route.from + route.to).contains { ref in overlaps(ref, membership.party) }
            }
            if !inSomeRoute { warning(node, "member `\(membership.party)` is in no route") }
        }

        let forbids = readForbids(map["forbid"], seen: &forbidIDs)
        return CaseTable(
            id: id, name: name, kind: kind, controllers: controllers, jointControllers: joint, contactPoint: contactPoint,
            members: members, purposes: purposes, purposeOrder: purposeOrder, routes: routes, forbids: forbids, file: file,
            registry: registry)
    }

    /// Whether two references can denote the same partner.
    func overlaps(_ a: PartyRef, _ b: PartyRef) -> Bool {
        switch (a, b) {
        case let (.partner(x), .partner(y)): return x == y
        case let (.kind(x), .kind(y)): return x == y
        case let (.partner(x), .kind(k)), let (.kind(k), .partner(x)): return registry.partner(id: x)?.kind == k
        }
    }

    func readRoute(_ node: Node, table: String, purposes: [String: String], members: [Membership]) -> Route? {
        guard let m = mapping(node, "a route") else { return nil }
        checkKeys(
            m,
            allowed: [
                "id", "label", "from", "to", "purposes", "categories", "grounds", "conditions", "inform_subject", "retention_years",
                "confidentiality", "discloses_to_family", "max_subjects", "reidentification",
            ], in: "a route")
        guard let id = string(m, "id", in: "a route") else { return nil }
        let label = string(m, "label", in: "route `\(id)`") ?? id
        var ok = true
        var from: [PartyRef] = []
        for (text, n) in strings(m["from"], "from") { if let r = party(text, n) { from.append(r) } else { ok = false } }
        var to: [PartyRef] = []
        for (text, n) in strings(m["to"], "to") { if let r = party(text, n) { to.append(r) } else { ok = false } }
        if from.isEmpty || to.isEmpty { error(node, "route `\(id)` needs `from` and `to`"); ok = false }
        // A rule that can never match: sender or recipient not a member of the table.
        for (ref, n) in zip(from, strings(m["from"], "from").map(\.1)) where !members.contains(where: { overlaps($0.party, ref) }) {
            error(n, "route `\(id)` can never match: sender `\(ref)` is not a member of `\(table)`")
            ok = false
        }
        for (ref, n) in zip(to, strings(m["to"], "to").map(\.1)) where !members.contains(where: { overlaps($0.party, ref) }) {
            error(n, "route `\(id)` can never match: recipient `\(ref)` is not a member of `\(table)`")
            ok = false
        }
        var routePurposes: [String] = []
        for (p, n) in strings(m["purposes"], "purposes") {
            if purposes[p] == nil { error(n, "unknown purpose `\(p)` (declare it under `purposes`)"); ok = false } else { routePurposes.append(p) }
        }
        if routePurposes.isEmpty && m["purposes"] == nil { error(node, "route `\(id)` needs `purposes`"); ok = false }

        // Categories.
        var categories: [String: CategoryRule] = [:]
        let fromPolice = from.contains { ref in
            if case .kind(let k) = ref { return k == "police" }
            if case .partner(let p) = ref { return registry.partner(id: p)?.kind == "police" }
            return false
        }
        if let cmap = m["categories"]?.mapping {
            for (key, value) in cmap {
                let category = key.string ?? ""
                guard let known = Vocabulary.fields[category] else {
                    error(key, "unknown data category `\(category)`"); ok = false; continue
                }
                guard let c = mapping(value, "category `\(category)`") else { ok = false; continue }
                checkKeys(c, allowed: ["basis", "basis_ref", "special", "criminal_basis", "wpg", "fields"], in: "category `\(category)`")
                var basis = ""
                if let b = c["basis"]?.string {
                    if let dpv = Vocabulary.lawfulBases[b] { basis = dpv } else if b.hasPrefix("dpv:") { basis = b } else {
                        error(c["basis"], "unknown lawful basis `\(b)`; use one of \(Vocabulary.lawfulBases.keys.sorted().joined(separator: ", "))"); ok = false
                    }
                } else if !fromPolice {
                    error(key, "category `\(category)` on route `\(id)` has no lawful basis (`basis`)"); ok = false
                }
                var specialException: String? = nil
                var specialUAVG: String? = nil
                if let s = c["special"]?.mapping {
                    specialException = s["exception"]?.string
                    specialUAVG = s["uavg"]?.string
                    if specialException == nil || specialUAVG == nil { error(c["special"], "`special` needs `exception` (art. 9(2)) and `uavg`"); ok = false }
                }
                if Vocabulary.specialCategories.contains(category) && specialException == nil {
                    error(key, "special category `\(category)` on route `\(id)` has no art. 9(2) exception (`special`)"); ok = false
                }
                let criminal = c["criminal_basis"]?.string
                let wpg = c["wpg"]?.string
                if Vocabulary.criminalCategories.contains(category) && criminal == nil && wpg == nil {
                    error(key, "criminal data `\(category)` on route `\(id)` has no UAVG art. 31–33 basis (`criminal_basis`)"); ok = false
                }
                if fromPolice && wpg == nil {
                    error(key, "police data `\(category)` on route `\(id)` needs its Wpg basis (`wpg`)"); ok = false
                }
                var fields: [String: FieldTransform] = [:]
                if let fmap = c["fields"]?.mapping {
                    for (fk, fv) in fmap {
                        let field = fk.string ?? ""
                        if !known.contains(field) { error(fk, "unknown field `\(category).\(field)`"); ok = false; continue }
                        guard let t = fv.string, let transform = Self.transform(t, table: table, route: id) else {
                            error(fv, "unknown transform for `\(category).\(field)`; use one of \(Vocabulary.transforms.sorted().joined(separator: ", "))"); ok = false; continue
                        }
                        fields[field] = transform
                    }
                } else {
                    error(key, "category `\(category)` on route `\(id)` needs `fields`"); ok = false
                }
                categories[category] = CategoryRule(
                    category: category, basis: basis.isEmpty ? "wpg" : basis, basisReference: c["basis_ref"]?.string, specialException: specialException,
                    specialUAVG: specialUAVG, criminalBasis: criminal, wpgBasis: wpg, fields: fields)
            }
        } else {
            error(node, "route `\(id)` needs `categories`"); ok = false
        }

        // Grounds.
        var grounds: [String: GroundRule] = [:]
        if let list = m["grounds"]?.sequence {
            for g in list {
                guard let gm = mapping(g, "a ground") else { ok = false; continue }
                checkKeys(gm, allowed: ["ground", "release", "article", "requires_meldcode"], in: "a ground")
                guard let ground = gm["ground"]?.string else { error(g, "a ground needs `ground`"); ok = false; continue }
                guard Vocabulary.grounds.contains(ground) else {
                    error(gm["ground"], "unknown ground `\(ground)`; use one of \(Vocabulary.grounds.sorted().joined(separator: ", "))"); ok = false; continue
                }
                if grounds[ground] != nil { error(gm["ground"], "duplicate ground `\(ground)` on route `\(id)`"); ok = false }
                // A statutory ground is valid only towards the recipient it names.
                if let kind = Vocabulary.groundRecipientKind[ground] {
                    for ref in to {
                        let recipientKind: String?
                        switch ref {
                        case .kind(let k): recipientKind = k
                        case .partner(let p): recipientKind = registry.partner(id: p)?.kind
                        }
                        if recipientKind != kind {
                            error(gm["ground"], "ground `\(ground)` is valid only towards a `\(kind)` recipient, not `\(ref)`"); ok = false
                        }
                    }
                }
                if ground == "statutory" && gm["article"]?.string == nil { error(g, "ground `statutory` needs the `article`"); ok = false }
                var release = Set<String>()
                for (item, n) in strings(gm["release"], "release") {
                    let parts = item.split(separator: ".", maxSplits: 1).map(String.init)
                    guard let rule = categories[parts[0]] else {
                        error(n, "ground `\(ground)` releases `\(item)`, which route `\(id)` does not carry"); ok = false; continue
                    }
                    if parts.count == 2 && rule.fields[parts[1]] == nil {
                        error(n, "ground `\(ground)` releases `\(item)`, which route `\(id)` does not carry"); ok = false; continue
                    }
                    release.insert(item)
                }
                if release.isEmpty { error(g, "ground `\(ground)` on route `\(id)` can never match: it releases nothing (`release`)"); ok = false }
                grounds[ground] = GroundRule(ground: ground, release: release, article: gm["article"]?.string, requiresMeldcode: gm["requires_meldcode"]?.bool ?? false)
            }
        }
        if grounds.isEmpty { error(node, "route `\(id)` accepts no ground to break secrecy (`grounds`)"); ok = false }

        var conditions: [String] = []
        for (c, n) in strings(m["conditions"], "conditions") {
            if Vocabulary.conditions.contains(c) { conditions.append(c) } else {
                error(n, "unknown condition `\(c)`; use one of \(Vocabulary.conditions.sorted().joined(separator: ", "))"); ok = false
            }
        }
        if grounds["jw-7.3.11-4"] != nil && !conditions.contains("supervision_order_by_recipient") {
            conditions.append("supervision_order_by_recipient")
        }

        var inform = InformRule.notRequired
        if let i = m["inform_subject"]?.mapping {
            switch i["when"]?.string {
            case "before": inform = .before
            case "after":
                guard let days = i["days"]?.int, days > 0 else { error(m["inform_subject"], "`inform_subject` after needs `days`"); ok = false; break }
                inform = .after(days: days)
            case "deferred":
                guard let ground = i["ground"]?.string else { error(m["inform_subject"], "a deferred `inform_subject` needs its `ground`"); ok = false; break }
                inform = .deferred(ground: ground)
            case "never-required", "not_required":
                inform = .notRequired
                // Without consent is not without knowing (domain.md): a safety exception informs
                // the subject, before, after, or deferred on a stated ground.
                if grounds.keys.contains(where: { Vocabulary.safetyExceptionGrounds.contains($0) }) {
                    error(m["inform_subject"], "route `\(id)` allows a safety exception: the subject must be informed (`before`, `after` with `days`, or `deferred` with its `ground`)")
                    ok = false
                }
            default: error(m["inform_subject"], "`inform_subject.when` must be before, after or deferred"); ok = false
            }
        } else if grounds.keys.contains(where: { Vocabulary.safetyExceptionGrounds.contains($0) }) {
            error(node, "route `\(id)` allows a safety exception but says nothing of informing the subject (`inform_subject`)"); ok = false
        }

        var confidentiality = Confidentiality()
        if let c = m["confidentiality"]?.mapping {
            checkKeys(c, allowed: ["reporter_protected", "reveals_location", "police_domain"], in: "confidentiality")
            confidentiality.reporterProtected = c["reporter_protected"]?.bool ?? false
            confidentiality.revealsLocation = c["reveals_location"]?.bool ?? false
            confidentiality.policeDomain = c["police_domain"]?.bool ?? false
        }
        let discloses = m["discloses_to_family"]?.bool ?? false
        if discloses && categories["location_protected"] != nil {
            error(m["discloses_to_family"], "route `\(id)` carries `location_protected` to a recipient that works with the family: it can reach a kept-apart party"); ok = false
        }
        guard ok else { return nil }
        return Route(
            id: id, label: label, from: from, to: to, purposes: routePurposes, categories: categories, grounds: grounds,
            conditions: conditions, inform: inform, retentionYears: m["retention_years"]?.int, confidentiality: confidentiality,
            disclosesToFamily: discloses, maxSubjects: m["max_subjects"]?.int ?? 8, allowReidentification: m["reidentification"]?.bool ?? false,
            location: location(node))
    }

    static func transform(_ text: String, table: String, route: String) -> FieldTransform? {
        switch text {
        case "keep": return .keep
        case "drop": return .drop
        case "pseudonymise": return .pseudonymise(domain: "recipient")
        case "token": return .token(domain: "recipient")
        case "year": return .generalise(.year)
        case "year_month": return .generalise(.yearMonth)
        case "postcode4": return .generalise(.postcode4)
        case "age_band": return .generalise(.ageBand)
        default: return nil
        }
    }

    // MARK: Forbids

    func readRegionForbids(_ root: Node, seen: inout [String: SourceLocation]) -> [ForbidRule] {
        guard let map = mapping(root, "forbid.yaml") else { return [] }
        checkKeys(map, allowed: ["forbid", "description"], in: "forbid.yaml")
        return readForbids(map["forbid"], seen: &seen)
    }

    func readForbids(_ node: Node?, seen: inout [String: SourceLocation]) -> [ForbidRule] {
        guard let node else { return [] }
        guard let list = node.sequence else { error(node, "`forbid` must be a list"); return [] }
        var result: [ForbidRule] = []
        for item in list {
            guard let m = mapping(item, "a forbid rule") else { continue }
            checkKeys(m, allowed: ["id", "label", "when"], in: "a forbid rule")
            guard let id = string(m, "id", in: "a forbid rule") else { continue }
            if let previous = seen[id] { error(m["id"], "duplicate forbid id `\(id)` (also at \(previous))"); continue }
            seen[id] = location(item)
            let label = string(m, "label", in: "forbid `\(id)`") ?? id
            guard let when = m["when"]?.mapping, !when.isEmpty else { error(item, "forbid `\(id)` needs `when` conditions"); continue }
            checkKeys(when, allowed: ["from", "to", "purposes", "categories", "fields", "grounds", "facts"], in: "forbid `\(id)`")
            var ok = true
            var from: [PartyRef] = []
            for (t, n) in strings(when["from"], "from") { if let r = party(t, n) { from.append(r) } else { ok = false } }
            var to: [PartyRef] = []
            for (t, n) in strings(when["to"], "to") { if let r = party(t, n) { to.append(r) } else { ok = false } }
            var categories = Set<String>()
            for (c, n) in strings(when["categories"], "categories") {
                if Vocabulary.fields[c] == nil { error(n, "unknown data category `\(c)`"); ok = false } else { categories.insert(c) }
            }
            var fields = Set<String>()
            for (f, n) in strings(when["fields"], "fields") {
                let parts = f.split(separator: ".", maxSplits: 1).map(String.init)
                if parts.count != 2 || Vocabulary.fields[parts[0]]?.contains(parts[1]) != true { error(n, "unknown field `\(f)`"); ok = false } else { fields.insert(f) }
            }
            var grounds = Set<String>()
            for (g, n) in strings(when["grounds"], "grounds") {
                if Vocabulary.grounds.contains(g) { grounds.insert(g) } else { error(n, "unknown ground `\(g)`"); ok = false }
            }
            var facts: [String] = []
            for (f, n) in strings(when["facts"], "facts") {
                if Vocabulary.forbidFacts.contains(f) { facts.append(f) } else {
                    error(n, "unknown fact `\(f)`; use one of \(Vocabulary.forbidFacts.sorted().joined(separator: ", "))"); ok = false
                }
            }
            let purposes = Set(strings(when["purposes"], "purposes").map(\.0))
            guard ok else { continue }
            result.append(
                ForbidRule(
                    id: id, label: label, from: from, to: to, purposes: purposes, categories: categories, fields: fields, grounds: grounds,
                    facts: facts, location: location(item)))
        }
        return result
    }
}
