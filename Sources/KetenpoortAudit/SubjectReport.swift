import Foundation
import KetenpoortCore

/// GDPR art. 15 for one person: every recipient, date, purpose and basis of the exchanges about
/// them that the log still holds, each with its inclusion proof against a signed checkpoint.
/// What the policy protects is left out or generalised, and the officer sees how much and why.
public struct SubjectReport: Sendable {
    public struct Item: Sendable {
        public let sequence: Int64
        public let time: String
        public let caseTable: String
        /// The sender, or a generalisation where reporter protection applies.
        public let sender: String
        public let recipient: String
        public let purpose: String
        /// consent, safety-exception (with its ground) or statutory (with its article).
        public let basis: String
        public let categories: [String]
        public let proof: ProofBundle?
    }

    public static let reporterProtected = "the reporter's identity is protected (Veilig Thuis reporter protection)"
    public static let protectedLocation = "the recipient would reveal a protected location (a shelter) to the person the subject is kept from"
    public static let policeDomain = "police data under the Wpg, not covered by GDPR art. 15 (ask the police)"

    public var items: [Item] = []
    /// Reason → entries left out.
    public var leftOut: [String: Int] = [:]
    /// Reason → entries shown with a detail generalised.
    public var generalised: [String: Int] = [:]
    /// The checkpoint the proofs lead to.
    public var checkpoint: String?
    /// Entries about the person whose details were already erased at retention are not indexed
    /// any more; their number is not known per person.
    public init() {}

    /// Builds the report for the person whose log-domain pseudonyms (one per key in the ring)
    /// are `pseudonyms`.
    public static func build(store: AuditStore, pseudonyms: [String]) throws -> SubjectReport {
        var report = SubjectReport()
        var query = AuditQuery()
        query.subjects = pseudonyms
        query.kind = AuditKind.exchangePermitted.rawValue
        let checkpoint = try store.checkpoints().last
        report.checkpoint = checkpoint?.note
        let tree = StoredTree(store: store)
        try store.entries(matching: query) { entry in
            guard let body = entry.body, let json = try? JSONParser.parse(body) else { return true }
            let protections = json["protections"]
            if protections?["domain"]?.stringValue == "wpg" {
                report.leftOut[policeDomain, default: 0] += 1
                return true
            }
            if protections?["location"]?.boolValue == true {
                report.leftOut[protectedLocation, default: 0] += 1
                return true
            }
            var sender = json["sender"]?.stringValue ?? ""
            if protections?["reporter"]?.boolValue == true {
                sender = "a reporter whose identity is protected"
                report.generalised[reporterProtected, default: 0] += 1
            }
            let basis = json["basis"]
            var basisText = basis?["type"]?.stringValue ?? ""
            if let ground = basis?["ground"]?.stringValue { basisText += " (\(ground))" }
            if let article = basis?["article"]?.stringValue { basisText += " (\(article))" }
            var proof: ProofBundle?
            if let checkpoint, checkpoint.treeSize >= entry.sequence {
                let path = try tree.inclusionProof(index: entry.sequence - 1, treeSize: checkpoint.treeSize)
                proof = ProofBundle(sequence: entry.sequence, entry: body, leafHash: entry.leafHash, treeSize: checkpoint.treeSize, path: path, checkpoint: checkpoint.note)
            }
            report.items.append(
                Item(
                    sequence: entry.sequence, time: entry.time, caseTable: json["caseTable"]?.stringValue ?? "", sender: sender,
                    recipient: json["recipient"]?.stringValue ?? "", purpose: json["purpose"]?.stringValue ?? "", basis: basisText,
                    categories: json["categoriesReleased"]?.arrayValue?.compactMap(\.stringValue) ?? [], proof: proof))
            return true
        }
        return report
    }

    /// The report as JSON. Proofs carry only hashes and the signed checkpoint; the entries
    /// themselves are not included (they could hold what was generalised).
    public var json: JSONValue {
        func counts(_ d: [String: Int]) -> JSONValue {
            .array(d.sorted { $0.key < $1.key }.map { .object([("reason", .string($0.key)), ("count", .number(Double($0.value)))]) })
        }
        let items: [JSONValue] = items.map { item in
            var members: [(String, JSONValue)] = [
                ("sequence", .number(Double(item.sequence))), ("date", .string(item.time)), ("caseTable", .string(item.caseTable)),
                ("sender", .string(item.sender)), ("recipient", .string(item.recipient)), ("purpose", .string(item.purpose)),
                ("basis", .string(item.basis)), ("categories", .array(item.categories.map { .string($0) })),
            ]
            if let proof = item.proof {
                members.append(
                    ("proof", .object([
                        ("leafHash", .string(Hex.encode(proof.leafHash))), ("treeSize", .number(Double(proof.treeSize))),
                        ("path", .array(proof.path.map { .string(Hex.encode($0)) })),
                    ])))
            }
            return .object(members)
        }
        return .object([
            ("exchanges", .array(items)), ("leftOut", counts(leftOut)), ("generalised", counts(generalised)),
            ("checkpoint", checkpoint.map { .string($0) } ?? .null),
        ])
    }

    /// The report for reading.
    public var text: String {
        var lines: [String] = []
        lines.append("GDPR art. 15 access report: \(items.count) exchange(s) about this person")
        for item in items {
            let day = String(item.time.prefix(10))
            lines.append("  #\(item.sequence) \(day)  \(item.sender) → \(item.recipient)  case table \(item.caseTable), purpose \(item.purpose), basis \(item.basis)")
            lines.append("      data: \(item.categories.joined(separator: ", "))  proof: \(item.proof == nil ? "none yet (no checkpoint covers it)" : "\(item.proof!.path.count) hashes to tree size \(item.proof!.treeSize)")")
        }
        for (reason, count) in leftOut.sorted(by: { $0.key < $1.key }) { lines.append("left out: \(count) — \(reason)") }
        for (reason, count) in generalised.sorted(by: { $0.key < $1.key }) { lines.append("generalised: \(count) — \(reason)") }
        if leftOut.isEmpty && generalised.isEmpty { lines.append("nothing left out or generalised") }
        return lines.joined(separator: "\n")
    }
}

/// Entries as JSON lines: the canonical body, or for an erased entry what remains of it.
public enum AuditExport {
    public static func line(_ entry: StoredEntry) -> String {
        if let body = entry.body { return body }
        let value: JSONValue = .object([
            ("sequence", .number(Double(entry.sequence))), ("time", .string(entry.time)), ("kind", .string(entry.kind)),
            ("erased", .string(entry.erasedAt ?? "")), ("leafHash", .string(Hex.encode(entry.leafHash))),
        ])
        return value.serialized(sortedKeys: true)
    }
}
