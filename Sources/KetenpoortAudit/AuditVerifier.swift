import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore

#if canImport(Glibc)
import Glibc
#endif

/// `ketenpoort log verify`: re-derives every entry's hash, the chain, the tree head at every
/// stored checkpoint and its signature, and — given a checkpoint kept elsewhere — that the log
/// still extends it (the only way to notice a log cut off after its last checkpoint).
public enum AuditVerifier {
    public struct Report: Sendable {
        public var entries: Int64
        public var treeHead: [UInt8]
        public var checkpointsVerified = 0
        public var signaturesChecked = false
        public var erasedEntries: Int64 = 0
        /// The first entry that does not verify, and why (nil: all verify).
        public var firstBadEntry: Int64?
        public var problem: String?
        public var isValid: Bool { firstBadEntry == nil && problem == nil }
    }

    static let sequenceKey = Array("\"sequence\":".utf8)

    /// Whether a canonical entry carries `"sequence":N` for this N.
    static func carries(sequence: Int64, _ body: UnsafeRawBufferPointer) -> Bool {
        let keyCount = sequenceKey.count
        guard body.count > keyCount else { return false }
        var start = -1
        sequenceKey.withUnsafeBytes { key in
            let first = key[0]
            var i = 0
            while i <= body.count - keyCount {
                if body[i] == first && memcmp(body.baseAddress! + i, key.baseAddress!, keyCount) == 0 {
                    start = i
                    return
                }
                i += 1
            }
        }
        guard start >= 0 else { return false }
        var offset = start + keyCount
        var value: Int64 = 0
        var digits = 0
        while offset < body.count, body[offset] >= 48, body[offset] <= 57, digits < 19 {
            value = value * 10 + Int64(body[offset] - 48)
            offset += 1
            digits += 1
        }
        return digits > 0 && value == sequence
    }

    /// Verifies the log in `path`. With `keys`, every stored checkpoint's signature is checked
    /// and `external` (a checkpoint note kept elsewhere) can be checked; without, only roots.
    public static func verify(path: String, keys: [LogVerifierKey]? = nil, external: String? = nil) throws -> Report {
        let store = try SQLiteAuditStore(readingFrom: path)
        let db = store.database
        var externalCheckpoint: Checkpoint?
        if let external {
            guard let keys else { throw KetenpoortError(.invalidInput, "checking a checkpoint needs the log's public key (`--public-key` or `--keys`)") }
            externalCheckpoint = try Checkpoint.verify(note: external, keys: keys)
        }
        var checkpoints: [StoredCheckpoint] = []
        do { checkpoints = try store.checkpoints() } catch let error as KetenpoortError {
            return Report(entries: 0, treeHead: MerkleTree.emptyRoot, firstBadEntry: 1, problem: "the database is unreadable or corrupt: \(error.message)")
        }
        var report = Report(entries: 0, treeHead: MerkleTree.emptyRoot)
        report.signaturesChecked = keys != nil
        // Tree heads to compare, in order of size: stored checkpoints and the external one.
        var heads: [(size: Int64, root: [UInt8], what: String)] = []
        for c in checkpoints {
            if let keys {
                guard let parsed = try? Checkpoint.verify(note: c.note, keys: keys) else {
                    report.firstBadEntry = c.treeSize
                    report.problem = "the checkpoint at tree size \(c.treeSize) has no valid signature by the log's key"
                    return report
                }
                guard parsed.treeSize == c.treeSize, parsed.rootHash == c.rootHash else {
                    report.firstBadEntry = c.treeSize
                    report.problem = "the checkpoint at tree size \(c.treeSize) differs from its signed note"
                    return report
                }
            }
            heads.append((c.treeSize, c.rootHash, "the signed checkpoint at tree size \(c.treeSize)"))
        }
        if let e = externalCheckpoint { heads.append((e.treeSize, e.rootHash, "the checkpoint kept elsewhere (tree size \(e.treeSize))")) }
        heads.sort { $0.size < $1.size }
        var nextHead = 0

        let hasher = SHA256Hasher()
        var frontier: [(level: Int, hash: [UInt8])] = []
        var chain = [UInt8](repeating: 0, count: 32)
        var leaf = [UInt8](repeating: 0, count: 32)
        var next = [UInt8](repeating: 0, count: 32)
        var expected: Int64 = 1
        var erased: [Int64] = []
        var erasures: [ClosedRange<Int64>] = []
        let leafPrefix: [UInt8] = [0x00]
        let nodePrefix: [UInt8] = [0x01]
        func root() -> [UInt8] {
            guard var acc = frontier.last?.hash else { return MerkleTree.emptyRoot }
            for node in frontier.dropLast().reversed() { acc = hasher.hash(nodePrefix, node.hash, acc) }
            return acc
        }
        func bad(_ sequence: Int64, _ why: String) -> Report {
            report.entries = expected - 1
            report.treeHead = root()
            report.firstBadEntry = sequence
            report.problem = why
            return report
        }
        func checkHeads() -> Report? {
            while nextHead < heads.count, heads[nextHead].size == expected - 1 {
                guard root() == heads[nextHead].root else {
                    return bad(expected - 1, "the entries up to \(expected - 1) do not match \(heads[nextHead].what): history was rewritten")
                }
                report.checkpointsVerified += 1
                nextHead += 1
            }
            return nil
        }
        do {
            if let failed = checkHeads() { return failed }
            let rows = try db.prepare("SELECT sequence, body, leaf_hash, chain_hash, kind, erased_at FROM audit_entries ORDER BY sequence")
            while try rows.step() {
                let sequence = rows.int64(0)
                guard sequence == expected else {
                    return bad(expected, sequence > expected ? "entry \(expected) is missing" : "sequence out of order")
                }
                if rows.isNull(1) {
                    // Erased at retention: only its hashes stay; a later retention entry must say so.
                    guard !rows.isNull(5) else { return bad(sequence, "entry \(sequence) has no content and was not erased at retention") }
                    guard let stored = rows.blob(2), stored.count == 32 else { return bad(sequence, "entry \(sequence) has no leaf hash") }
                    leaf = stored
                    erased.append(sequence)
                } else {
                    // The body must carry its own sequence number: canonical JSON has `"sequence":N`
                    // exactly once (a quote inside a string value is always escaped).
                    let ownSequence = rows.withBytes(1) { body -> Bool in AuditVerifier.carries(sequence: sequence, body) }
                    rows.withBytes(1) { body in
                        leafPrefix.withUnsafeBytes { prefix in leaf.withUnsafeMutableBufferPointer { hasher.hash(prefix, body, into: $0.baseAddress!) } }
                    }
                    let leafMatches = rows.withBytes(2) { stored in stored.elementsEqual(leaf) }
                    guard leafMatches else { return bad(sequence, "entry \(sequence) was changed: its hash does not match its content") }
                    guard ownSequence else { return bad(sequence, "entry \(sequence) does not carry its own sequence number (moved or swapped)") }
                    if rows.string(4) == "retention", let body = rows.string(1), let ranges = (try? JSONParser.parse(body))?["erases"]?.arrayValue {
                        for r in ranges {
                            if let pair = r.arrayValue, pair.count == 2, let a = pair[0].intValue, let b = pair[1].intValue, a <= b {
                                erasures.append(Int64(a)...Int64(b))
                            }
                        }
                    }
                }
                chain.withUnsafeBytes { previous in
                    leaf.withUnsafeBytes { leafBytes in next.withUnsafeMutableBufferPointer { hasher.hash(previous, leafBytes, into: $0.baseAddress!) } }
                }
                swap(&chain, &next)
                let chainMatches = rows.withBytes(3) { stored in stored.elementsEqual(chain) }
                guard chainMatches else { return bad(sequence, "entry \(sequence) breaks the hash chain") }
                frontier.append((0, leaf))
                while frontier.count >= 2, frontier[frontier.count - 1].level == frontier[frontier.count - 2].level {
                    let right = frontier.removeLast()
                    let left = frontier.removeLast()
                    frontier.append((left.level + 1, hasher.hash(nodePrefix, left.hash, right.hash)))
                }
                expected += 1
                if nextHead < heads.count, heads[nextHead].size == sequence, let failed = checkHeads() { return failed }
            }
        } catch let error as KetenpoortError {
            return bad(expected, "the database is unreadable or corrupt: \(error.message)")
        }
        report.entries = expected - 1
        report.treeHead = root()
        report.erasedEntries = Int64(erased.count)
        if nextHead < heads.count {
            let head = heads[nextHead]
            report.firstBadEntry = report.entries + 1
            report.problem = "the log has \(report.entries) entries but \(head.what) covers \(head.size): the log was cut off"
            return report
        }
        for sequence in erased where !erasures.contains(where: { $0.contains(sequence) }) {
            report.firstBadEntry = sequence
            report.problem = "entry \(sequence) was erased without a retention entry that records it"
            return report
        }
        return report
    }
}
