import KetenpoortCore
import Yams

/// The partner kinds of `domain.md` (closed vocabulary).
public let partnerKinds: Set<String> = [
    "local_team", "veilig_thuis", "child_protection_board", "certified_institution",
    "regional_safety_team", "youth_health_care", "adult_mental_health", "general_practice",
    "womens_shelter", "police", "public_prosecution", "probation", "care_safety_house", "school",
    "municipality",
]

/// Officer roles that may use the console and the officer endpoints.
public let officerRoles: Set<String> = ["privacy_officer", "information_manager"]

/// A partner organisation, identified by the OIN in its certificate.
public final class Partner: Sendable, Hashable, Identifiable {
    public let id: String
    public let name: String
    public let kind: String
    public let oin: OIN
    /// Optional pinned SHA-256 fingerprints (lowercase hex, no separators) of its certificates.
    public let certificateFingerprints: [String]
    /// Optional push-delivery endpoint (https URL).
    public let deliveryEndpoint: String?

    public init(
        id: String, name: String, kind: String, oin: OIN,
        certificateFingerprints: [String] = [], deliveryEndpoint: String? = nil
    ) {
        self.id = id
        self.name = name
        self.kind = kind
        self.oin = oin
        self.certificateFingerprints = certificateFingerprints
        self.deliveryEndpoint = deliveryEndpoint
    }

    public static func == (a: Partner, b: Partner) -> Bool {
        a.id == b.id && a.name == b.name && a.kind == b.kind && a.oin == b.oin && a.certificateFingerprints == b.certificateFingerprints
            && a.deliveryEndpoint == b.deliveryEndpoint
    }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
}

/// A privacy officer or information manager, identified by the subject serialNumber of an
/// officer certificate.
public struct Officer: Sendable, Hashable, Identifiable {
    public let id: String
    public let name: String
    public let role: String
    public let serialNumber: String
    public let certificateFingerprints: [String]

    public init(id: String, name: String, role: String, serialNumber: String, certificateFingerprints: [String] = []) {
        self.id = id
        self.name = name
        self.role = role
        self.serialNumber = serialNumber
        self.certificateFingerprints = certificateFingerprints
    }
}

/// The partner registry (`Policies/partners.yaml`).
public struct PartnerRegistry: Sendable {
    public let region: String
    public let partners: [Partner]
    public let officers: [Officer]
    private let partnersByOIN: [String: Partner]
    private let partnersByID: [String: Partner]
    private let officersBySerial: [String: Officer]

    public init(region: String, partners: [Partner], officers: [Officer]) {
        self.region = region
        self.partners = partners
        self.officers = officers
        self.partnersByOIN = Dictionary(partners.map { ($0.oin.value, $0) }, uniquingKeysWith: { first, _ in first })
        self.partnersByID = Dictionary(partners.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        self.officersBySerial = Dictionary(officers.map { ($0.serialNumber, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public func partner(oin: String) -> Partner? { partnersByOIN[oin] }
    public func partner(id: String) -> Partner? { partnersByID[id] }
    public func officer(serialNumber: String) -> Officer? { officersBySerial[serialNumber] }

    /// Parses `partners.yaml` text. Throws `configuration` with `file:line:col:` on the first problem.
    public static func parse(yaml text: String, file: String = "partners.yaml") throws -> PartnerRegistry {
        struct RawPartner: Decodable {
            var id: String
            var name: String
            var kind: String
            var oin: String
            var certificate_fingerprints: [String]?
            var delivery_endpoint: String?
        }
        struct RawOfficer: Decodable {
            var id: String
            var name: String
            var role: String
            var serial_number: String
            var certificate_fingerprints: [String]?
        }
        struct RawRegistry: Decodable {
            var version: Int?
            var region: String?
            var partners: [RawPartner]
            var officers: [RawOfficer]?
        }
        // A misspelt key would otherwise be dropped without a word: a `certificate_fingerprint:`
        // would leave the partner unpinned while `policy check` passes.
        try checkKeys(text, file: file)
        let raw: RawRegistry
        do {
            raw = try YAMLDecoder().decode(RawRegistry.self, from: text)
        } catch {
            throw KetenpoortError(.configuration, "\(file): not a valid partner registry: \(error)")
        }
        var partners: [Partner] = []
        for p in raw.partners {
            guard partnerKinds.contains(p.kind) else {
                throw KetenpoortError(.configuration, "\(file): partner `\(p.id)`: unknown kind `\(p.kind)`")
            }
            guard let oin = try? OIN(p.oin) else {
                throw KetenpoortError(.configuration, "\(file): partner `\(p.id)`: OIN must be 20 digits")
            }
            partners.append(Partner(
                id: p.id, name: p.name, kind: p.kind, oin: oin,
                certificateFingerprints: (p.certificate_fingerprints ?? []).map(normaliseFingerprint),
                deliveryEndpoint: p.delivery_endpoint))
        }
        let officers = try (raw.officers ?? []).map { o -> Officer in
            guard officerRoles.contains(o.role) else {
                throw KetenpoortError(.configuration, "\(file): officer `\(o.id)`: unknown role `\(o.role)`")
            }
            return Officer(id: o.id, name: o.name, role: o.role, serialNumber: o.serial_number,
                           certificateFingerprints: (o.certificate_fingerprints ?? []).map(normaliseFingerprint))
        }
        // Identity must be unambiguous: one partner per id and per OIN, and no officer serial
        // number that is also a partner's OIN.
        var ids = Set<String>()
        var oins = Set<String>()
        for p in partners {
            guard ids.insert(p.id).inserted else { throw KetenpoortError(.configuration, "\(file): duplicate partner id `\(p.id)`") }
            guard oins.insert(p.oin.value).inserted else {
                throw KetenpoortError(.configuration, "\(file): partner `\(p.id)`: OIN \(p.oin.value) is already registered for another partner")
            }
        }
        var officerIDs = Set<String>()
        var serials = Set<String>()
        for o in officers {
            guard officerIDs.insert(o.id).inserted, !ids.contains(o.id) else {
                throw KetenpoortError(.configuration, "\(file): duplicate id `\(o.id)`")
            }
            guard serials.insert(o.serialNumber).inserted, !oins.contains(o.serialNumber) else {
                throw KetenpoortError(.configuration, "\(file): officer `\(o.id)`: serial number \(o.serialNumber) is already registered")
            }
        }
        return PartnerRegistry(region: raw.region ?? "", partners: partners, officers: officers)
    }

    static let registryKeys: Set<String> = ["version", "region", "partners", "officers"]
    static let partnerKeys: Set<String> = ["id", "name", "kind", "oin", "certificate_fingerprints", "delivery_endpoint"]
    static let officerKeys: Set<String> = ["id", "name", "role", "serial_number", "certificate_fingerprints"]

    /// Refuses a key the registry does not know, as `file:line:col: unknown key …`.
    static func checkKeys(_ text: String, file: String) throws {
        guard let root = try? Yams.compose(yaml: text), let top = root.mapping else { return }  // the decoder says what is wrong
        func check(_ mapping: Node.Mapping, _ allowed: Set<String>, _ what: String) throws {
            for (key, _) in mapping {
                let name = key.string ?? ""
                guard allowed.contains(name) else {
                    throw KetenpoortError(
                        .configuration,
                        "\(file):\(key.mark?.line ?? 1):\(key.mark?.column ?? 1): unknown key `\(name.prefix(64))` in \(what); expected one of \(allowed.sorted().joined(separator: ", "))")
                }
            }
        }
        try check(top, registryKeys, "the partner registry")
        for (list, allowed, what) in [("partners", partnerKeys, "partner"), ("officers", officerKeys, "officer")] {
            for item in top[list]?.sequence ?? [] {
                guard let entry = item.mapping else { continue }
                try check(entry, allowed, entry["id"]?.string.map { "\(what) `\($0.prefix(64))`" } ?? "a \(what)")
            }
        }
    }
}

/// Lowercase hex without `:` separators, as `openssl x509 -fingerprint -sha256` prints it otherwise.
public func normaliseFingerprint(_ text: String) -> String {
    String(text.lowercased().filter { $0 != ":" && $0 != " " })
}
