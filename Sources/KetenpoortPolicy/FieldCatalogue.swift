import KetenpoortCore

/// Every `category.field` the language knows, numbered once, so a decision tests bits instead
/// of hashing strings. (The vocabulary is closed: see ``Vocabulary/fields``.)
public struct FieldCatalogue: Sendable {
    public static let shared = FieldCatalogue()

    public let paths: [String]
    public let categories: [String]
    let pathIDs: [String: Int]
    let categoryIDs: [String: Int]
    /// The category id of each field id.
    let categoryOf: [Int]
    let fieldNames: [String]
    let categoryNames: [String]

    init() {
        categories = Vocabulary.fields.keys.sorted()
        var categoryIDs: [String: Int] = [:]
        for (i, c) in categories.enumerated() { categoryIDs[c] = i }
        var paths: [String] = []
        var categoryOf: [Int] = []
        var fieldNames: [String] = []
        var categoryNames: [String] = []
        for c in categories {
            for f in Vocabulary.fields[c]!.sorted() {
                paths.append("\(c).\(f)")
                categoryOf.append(categoryIDs[c]!)
                fieldNames.append(f)
                categoryNames.append(c)
            }
        }
        precondition(paths.count <= 128 && categories.count <= 64, "FieldBits holds 128 fields and 64 categories")
        var pathIDs: [String: Int] = [:]
        for (i, p) in paths.enumerated() { pathIDs[p] = i }
        self.paths = paths
        self.pathIDs = pathIDs
        self.categoryIDs = categoryIDs
        self.categoryOf = categoryOf
        self.fieldNames = fieldNames
        self.categoryNames = categoryNames
    }

    func id(ofPath path: String) -> Int? { pathIDs[path] }
    func id(ofCategory category: String) -> Int? { categoryIDs[category] }

    /// The bits of a set of `category` or `category.field` items.
    func bits(of items: some Sequence<String>) -> FieldBits {
        var bits = FieldBits()
        for item in items {
            if let id = pathIDs[item] {
                bits.insert(id)
            } else if let c = categoryIDs[item] {
                for (i, owner) in categoryOf.enumerated() where owner == c { bits.insert(i) }
            }
        }
        return bits
    }

    func categoryBits(of items: some Sequence<String>) -> UInt64 {
        var bits: UInt64 = 0
        for item in items { if let c = categoryIDs[item] { bits |= 1 << UInt64(c) } }
        return bits
    }
}

/// A set of field ids (at most 128).
struct FieldBits: Sendable, Hashable {
    var low: UInt64 = 0
    var high: UInt64 = 0

    @inline(__always) mutating func insert(_ id: Int) {
        if id < 64 { low |= 1 << UInt64(id) } else { high |= 1 << UInt64(id - 64) }
    }

    @inline(__always) func contains(_ id: Int) -> Bool {
        id < 64 ? low & (1 << UInt64(id)) != 0 : high & (1 << UInt64(id - 64)) != 0
    }

    @inline(__always) func intersects(_ other: FieldBits) -> Bool { (low & other.low) | (high & other.high) != 0 }
    var isEmpty: Bool { low == 0 && high == 0 }
}

/// What a route carries, numbered: per field id its transform, per category id its basis.
struct CompiledRoute: Sendable {
    let transforms: [FieldTransform?]
    let basis: [String?]
    /// Per ground name: the field ids it releases.
    let release: [String: FieldBits]

    init(categories: [String: CategoryRule], grounds: [String: GroundRule]) {
        let catalogue = FieldCatalogue.shared
        var transforms = [FieldTransform?](repeating: nil, count: catalogue.paths.count)
        var basis = [String?](repeating: nil, count: catalogue.categories.count)
        for (category, rule) in categories {
            guard let c = catalogue.id(ofCategory: category) else { continue }
            basis[c] = rule.basis
            for (field, transform) in rule.fields where transform != .drop {
                if let id = catalogue.id(ofPath: "\(category).\(field)") { transforms[id] = transform }
            }
        }
        self.transforms = transforms
        self.basis = basis
        self.release = grounds.mapValues { catalogue.bits(of: $0.release) }
    }
}

/// What a forbid rule tests, numbered.
struct CompiledForbid: Sendable {
    let categories: UInt64
    let fields: FieldBits
    let facts: [ForbidFact]

    init(categories: Set<String>, fields: Set<String>, facts: [String]) {
        self.categories = FieldCatalogue.shared.categoryBits(of: categories)
        self.fields = FieldCatalogue.shared.bits(of: fields)
        // An unknown fact is `.unknown`, which always holds: a forbid never fails open.
        self.facts = facts.map { ForbidFact(rawValue: $0) ?? .unknown }
    }
}

/// The facts a forbid rule can test (``Vocabulary/forbidFacts``).
enum ForbidFact: String, Sendable {
    case caseClosed = "case_closed"
    case senderNotMember = "sender_not_member"
    case recipientNotMember = "recipient_not_member"
    case statutoryGroundWrongRecipient = "statutory_ground_wrong_recipient"
    case safetyExceptionIncomplete = "safety_exception_incomplete"
    case bulk
    case locationMayReachKeptApart = "location_may_reach_kept_apart"
    case bystanderReporterWithoutConsent = "bystander_reporter_without_consent"
    case reporterProtected = "reporter_protected"
    case consentWithoutCapacity = "consent_without_capacity"
    case unknown
}
