import KetenpoortCore

/// A problem found in a policy file: `file:line:col: error: message` (1-based).
public struct Diagnostic: Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }
    public let file: String
    public let line: Int
    public let column: Int
    public let severity: Severity
    public let message: String

    public init(file: String, line: Int, column: Int, severity: Severity, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.severity = severity
        self.message = message
    }

    public var description: String { "\(file):\(line):\(column): \(severity.rawValue): \(message)" }
}

/// A partner by id, or every partner of a kind (`kind:local_team`).
public enum PartyRef: Sendable, Hashable, CustomStringConvertible {
    case partner(String)
    case kind(String)

    public init(parsing text: String) {
        if text.hasPrefix("kind:") { self = .kind(String(text.dropFirst(5))) } else { self = .partner(text) }
    }

    public func matches(_ partner: Partner) -> Bool {
        switch self {
        case .partner(let id): return partner.id == id
        case .kind(let kind): return partner.kind == kind
        }
    }

    public var description: String {
        switch self {
        case .partner(let id): return id
        case .kind(let kind): return "kind:\(kind)"
        }
    }
}

/// Where in a file a rule was written (for explanations and diagnostics).
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public var description: String { "\(file):\(line)" }
}

/// A data category on a route: its lawful basis and what happens to each field.
public struct CategoryRule: Sendable {
    public let category: String
    /// The GDPR art. 6 basis as a DPV term (e.g. `dpv:PublicTask`).
    public let basis: String
    /// The law that makes the task or obligation (e.g. "Wmo 2015 art. 5.2.6").
    public let basisReference: String?
    /// Special categories: the art. 9(2) exception and the UAVG article.
    public let specialException: String?
    public let specialUAVG: String?
    /// Criminal data: the UAVG art. 31–33 basis.
    public let criminalBasis: String?
    /// Police data: the Wpg basis.
    public let wpgBasis: String?
    /// Field → transform; fields not listed are withheld.
    public let fields: [String: FieldTransform]
}

/// A ground to break professional secrecy that a route accepts, and what it lets through.
public struct GroundRule: Sendable {
    public let ground: String
    /// `category` or `category.field` items this ground releases.
    public let release: Set<String>
    /// For `statutory`: the article.
    public let article: String?
    /// Safety exception: meldcode steps must be recorded (Wmo 5.2.6 reports).
    public let requiresMeldcode: Bool
    /// `release`, numbered.
    let releaseBits: FieldBits

    public init(ground: String, release: Set<String>, article: String?, requiresMeldcode: Bool) {
        self.ground = ground
        self.release = release
        self.article = article
        self.requiresMeldcode = requiresMeldcode
        self.releaseBits = FieldCatalogue.shared.bits(of: release)
    }

    public func releases(_ path: String) -> Bool {
        if release.contains(path) { return true }
        guard let dot = path.firstIndex(of: ".") else { return false }
        return release.contains(String(path[..<dot]))
    }
}

/// When the subject must be informed of an exchange without consent.
public enum InformRule: Sendable, Hashable {
    case notRequired
    case before
    case after(days: Int)
    case deferred(ground: String)
}

/// Confidentiality that access reports must respect.
public struct Confidentiality: Sendable, Hashable {
    /// The reporter's identity is protected (Wmo 5.3.2 lid 4, UAVG art. 41).
    public var reporterProtected = false
    /// The recipient's identity reveals a protected location (a shelter).
    public var revealsLocation = false
    /// Police-domain entry (Wpg, not part of a GDPR art. 15 report).
    public var policeDomain = false
    public init() {}
}

/// A declared route: who may send what to whom, for which purposes, on which grounds.
public final class Route: Sendable {
    public let id: String
    public let label: String
    public let from: [PartyRef]
    public let to: [PartyRef]
    public let purposes: [String]
    public let categories: [String: CategoryRule]
    public let grounds: [String: GroundRule]
    public let conditions: [String]
    public let inform: InformRule
    public let retentionYears: Int?
    public let confidentiality: Confidentiality
    /// The recipient works with the family directly (can reach a kept-apart party).
    public let disclosesToFamily: Bool
    /// The most subjects one exchange may concern.
    public let maxSubjects: Int
    /// Whether the route permits re-identification of tokens by the gateway for the recipient.
    public let allowReidentification: Bool
    public let location: SourceLocation
    /// The same, numbered for the evaluator.
    let compiled: CompiledRoute

    init(
        id: String, label: String, from: [PartyRef], to: [PartyRef], purposes: [String], categories: [String: CategoryRule],
        grounds: [String: GroundRule], conditions: [String], inform: InformRule, retentionYears: Int?, confidentiality: Confidentiality,
        disclosesToFamily: Bool, maxSubjects: Int, allowReidentification: Bool, location: SourceLocation
    ) {
        self.id = id
        self.label = label
        self.from = from
        self.to = to
        self.purposes = purposes
        self.categories = categories
        self.grounds = grounds
        self.conditions = conditions
        self.inform = inform
        self.retentionYears = retentionYears
        self.confidentiality = confidentiality
        self.disclosesToFamily = disclosesToFamily
        self.maxSubjects = maxSubjects
        self.allowReidentification = allowReidentification
        self.location = location
        self.compiled = CompiledRoute(categories: categories, grounds: grounds)
    }
}

/// A rule that overrides any permit when all its conditions hold.
public final class ForbidRule: Sendable {
    public let id: String
    public let label: String
    public let from: [PartyRef]
    public let to: [PartyRef]
    public let purposes: Set<String>
    public let categories: Set<String>
    public let fields: Set<String>
    public let grounds: Set<String>
    public let facts: [String]
    public let location: SourceLocation
    let compiled: CompiledForbid

    init(
        id: String, label: String, from: [PartyRef], to: [PartyRef], purposes: Set<String>, categories: Set<String>, fields: Set<String>,
        grounds: Set<String>, facts: [String], location: SourceLocation
    ) {
        self.id = id
        self.label = label
        self.from = from
        self.to = to
        self.purposes = purposes
        self.categories = categories
        self.fields = fields
        self.grounds = grounds
        self.facts = facts
        self.location = location
        self.compiled = CompiledForbid(categories: categories, fields: fields, facts: facts)
    }
}

/// A table member and the dates of its membership (ISO `YYYY-MM-DD`; compared as text).
public struct Membership: Sendable {
    public let party: PartyRef
    public let since: String?
    public let until: String?

    public func covers(_ partner: Partner, on date: String) -> Bool {
        guard party.matches(partner) else { return false }
        if let since, date < since { return false }
        if let until, date > until { return false }
        return true
    }
}

/// One case table (casustafel), compiled.
public final class CaseTable: Sendable {
    public let id: String
    public let name: String
    public let kind: String
    public let controllers: [String]
    public let jointControllers: Bool
    public let contactPoint: String
    public let members: [Membership]
    /// Purpose id → label (Dutch labels are normal).
    public let purposes: [String: String]
    public let purposeOrder: [String]
    public let routes: [Route]
    public let forbids: [ForbidRule]
    public let file: String
    /// purpose → sender partner id → recipient partner id → route indices (kinds expanded to
    /// the registry's partners when the set is built): three lookups per decision.
    let expandedIndex: [String: [ObjectIdentifier: [ObjectIdentifier: [Int]]]]
    /// This table's forbids followed by the region's (set when the policy set is built).
    let effectiveForbids: [ForbidRule]

    init(
        id: String, name: String, kind: String, controllers: [String], jointControllers: Bool, contactPoint: String,
        members: [Membership], purposes: [String: String], purposeOrder: [String], routes: [Route], forbids: [ForbidRule], file: String,
        registry: PartnerRegistry, regionForbids: [ForbidRule] = []
    ) {
        self.effectiveForbids = forbids + regionForbids
        self.id = id
        self.name = name
        self.kind = kind
        self.controllers = controllers
        self.jointControllers = jointControllers
        self.contactPoint = contactPoint
        self.members = members
        self.purposes = purposes
        self.purposeOrder = purposeOrder
        self.routes = routes
        self.forbids = forbids
        self.file = file
        var expanded: [String: [ObjectIdentifier: [ObjectIdentifier: [Int]]]] = [:]
        do {
            for (i, route) in routes.enumerated() {
                let senders = registry.partners.filter { p in route.from.contains { $0.matches(p) } }
                let recipients = registry.partners.filter { p in route.to.contains { $0.matches(p) } }
                for purpose in route.purposes {
                    for sender in senders {
                        for recipient in recipients {
                            expanded[purpose, default: [:]][ObjectIdentifier(sender), default: [:]][ObjectIdentifier(recipient), default: []].append(i)
                        }
                    }
                }
            }
        }
        self.expandedIndex = expanded
    }

    public func isMember(_ partner: Partner, on date: String) -> Bool {
        members.contains { $0.covers(partner, on: date) }
    }

    /// The candidate routes for a sender, recipient and purpose: four dictionary lookups.
    func candidateRoutes(from sender: Partner, to recipient: Partner, purpose: String) -> [Int] {
        // Keyed by the registry's own Partner objects (the set re-indexes its tables with its
        // registry): no string hashing.
        expandedIndex[purpose]?[ObjectIdentifier(sender)]?[ObjectIdentifier(recipient)] ?? []
    }
}

/// A compiled, immutable set of policies. `version` is a content hash of the files.
public struct PolicySet: Sendable {
    public let version: String
    public let registry: PartnerRegistry
    public let tables: [String: CaseTable]
    public let regionForbids: [ForbidRule]

    /// Builds the set. Route indexes are keyed by the registry's own partner objects, so the
    /// tables are re-indexed here with `registry` and given the region's forbids.
    public init(version: String, registry: PartnerRegistry, tables: [String: CaseTable], regionForbids: [ForbidRule]) {
        self.version = version
        self.registry = registry
        self.regionForbids = regionForbids
        self.tables = tables.mapValues { t in
            CaseTable(
                id: t.id, name: t.name, kind: t.kind, controllers: t.controllers, jointControllers: t.jointControllers,
                contactPoint: t.contactPoint, members: t.members, purposes: t.purposes, purposeOrder: t.purposeOrder, routes: t.routes,
                forbids: t.forbids, file: t.file, registry: registry, regionForbids: regionForbids)
        }
    }
}

extension CaseTable {
    /// The same table without one route (index rebuilt): for "what does removing it change".
    public func removingRoute(_ routeID: String, registry: PartnerRegistry) -> CaseTable {
        CaseTable(
            id: id, name: name, kind: kind, controllers: controllers, jointControllers: jointControllers, contactPoint: contactPoint,
            members: members, purposes: purposes, purposeOrder: purposeOrder, routes: routes.filter { $0.id != routeID }, forbids: forbids,
            file: file, registry: registry)
    }
}

extension PolicySet {
    /// The statutory articles the routes name (`basis.article` of a statutory exchange must be one
    /// of them: anything else is free text that would be logged).
    public var declaredArticles: Set<String> {
        var articles = Set<String>()
        for table in tables.values {
            for route in table.routes {
                for ground in route.grounds.values { if let article = ground.article { articles.insert(article) } }
            }
        }
        return articles
    }

    /// The same set without one route.
    public func removingRoute(_ routeID: String) -> PolicySet {
        PolicySet(version: version + "-" + routeID, registry: registry, tables: tables.mapValues { $0.removingRoute(routeID, registry: registry) }, regionForbids: regionForbids)
    }

    /// The same set with an extra region-wide forbid rule.
    public func adding(forbid rule: ForbidRule) -> PolicySet {
        PolicySet(version: version + "+" + rule.id, registry: registry, tables: tables, regionForbids: regionForbids + [rule])
    }
}

extension ForbidRule {
    public convenience init(id: String, label: String, purposes: Set<String> = [], categories: Set<String> = [], facts: [String] = []) {
        self.init(id: id, label: label, from: [], to: [], purposes: purposes, categories: categories, fields: [], grounds: [], facts: facts, location: SourceLocation(file: "generated", line: 1))
    }
}

extension PolicySet {
    /// Whether a route of `caseTable` lets the gateway re-identify tokens for `partner` (as the
    /// route's recipient) and `purpose` on `date`: the route must say `reidentification: true`,
    /// and the partner must be a member of the table on that day (one that has left the table,
    /// or not yet joined it, gets nothing back, as it would receive nothing).
    public func permitsReidentification(caseTable: String, partner partnerID: String, purpose: String, on date: String) -> Bool {
        guard let table = tables[caseTable], let partner = registry.partner(id: partnerID), table.isMember(partner, on: date) else { return false }
        return table.routes.contains { route in
            route.allowReidentification && route.purposes.contains(purpose) && route.to.contains { $0.matches(partner) }
        }
    }
}
