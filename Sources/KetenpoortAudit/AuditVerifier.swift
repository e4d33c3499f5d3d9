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
    static let retentionKind = Array(AuditKind.retention.rawValue.utf8)

    static func equal32(_ stored: UnsafeRawBufferPointer, _ hash: [UInt8]) -> Bool {
        stored.count == 32 && hash.count == 32 && hash.withUnsafeBytes { memcmp(stored.baseAddress!, $0.baseAddress!, 32) == 0 }
    }

    static func equal(_ stored: UnsafeRawBufferPointer, _ bytes: [UInt8]) -> Bool {
        stored.count == bytes.count && bytes.withUnsafeBytes { stored.count == 0 || memcmp(stored.baseAddress!, $0.baseAddress!, bytes.count) == 0 }
    }

    /// Whether a canonical entry carries `"sequence":N` for this N.
    /// Where the bytes after the last occurrence of `key` (at least two bytes) start in `body`,
    /// searched from the end as ``carries(sequence:_:)`` does: the log's own members sort late in
    /// the canonical form.
    static func endOf(_ key: [UInt8], in body: UnsafeRawBufferPointer) -> Int? {
        guard let b = body.baseAddress, key.count >= 2, body.count >= key.count else { return nil }
        let k0 = key[0], k1 = key[1]
        return key.withUnsafeBytes { k -> Int? in
            var i = body.count - key.count
            while i >= 0 {
                if body[i] == k0 && body[i + 1] == k1 && memcmp(b + i, k.baseAddress!, key.count) == 0 { return i + key.count }
                i -= 1
            }
            return nil
        }
    }

    static func carries(sequence: Int64, _ body: UnsafeRawBufferPointer) -> Bool {
        let keyCount = sequenceKey.count
        guard body.count > keyCount, let base = body.baseAddress else { return false }
        // From the end: keys are sorted, so `sequence` comes after most of them.
        var start = -1
        sequenceKey.withUnsafeBytes { key in
            var i = body.count - keyCount
            while i >= 0 {
                if body[i] == 0x22 && body[i + 1] == 0x73 && memcmp(base + i, key.baseAddress!, keyCount) == 0 {
                    start = i
                    return
                }
                i -= 1
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
    /// A large log is checked in two halves on two threads: the chain is split at a power of two
    /// (the second half starts from the stored chain hash the first half verifies) and the tree
    /// heads above the split are `H(root of the first half, root of the rest)` (RFC 9162).
    public static func verify(path: String, keys: [LogVerifierKey]? = nil, external: String? = nil, splitFrom: Int64 = 1 << 16) throws -> Report {
        try verify(location: .sqlite(path: path), keys: keys, external: external, splitFrom: splitFrom)
    }

    /// Verifies the log wherever it is (a SQLite file or a PostgreSQL database).
    public static func verify(location: DatabaseLocation, keys: [LogVerifierKey]? = nil, external: String? = nil, splitFrom: Int64 = 1 << 16) throws -> Report {
        var report = Report(entries: 0, treeHead: MerkleTree.emptyRoot)
        // A database that is there but holds no readable log (emptied, a table dropped, a
        // corrupt file) is a failed check, not bad input; a missing file or server is.
        let store: AuditStore
        do {
            store = try AuditStores.reading(location)
        } catch let error as KetenpoortError where error.code == .invalidInput || error.code == .storageCorrupt {
            report.firstBadEntry = 1
            report.problem = "no readable audit log: \(error.message)"
            return report
        }
        var externalCheckpoint: Checkpoint?
        if let external {
            guard let keys else { throw KetenpoortError(.invalidInput, "checking a checkpoint needs the log's public key (`--public-key` or `--keys`)") }
            do {
                externalCheckpoint = try Checkpoint.verify(note: external, keys: keys)
            } catch let error as KetenpoortError where error.code == .signatureInvalid {
                // A kept checkpoint that does not verify is what this check exists to find.
                report.problem = "the checkpoint kept elsewhere does not verify: \(error.message)"
                return report
            }
        }
        report.signaturesChecked = keys != nil
        var checkpoints: [StoredCheckpoint] = []
        var lastSequence: Int64 = 0
        do {
            checkpoints = try store.checkpoints()
            lastSequence = try store.lastSequence()
        } catch let error as KetenpoortError {
            report.firstBadEntry = 1
            report.problem = "the database is unreadable or corrupt: \(error.message)"
            return report
        }
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

        // Split at the largest power of two below the size, for logs worth two threads.
        var split: Int64 = 0
        if lastSequence >= max(2, splitFrom) {
            split = 1
            while split << 1 < lastSequence { split <<= 1 }
        }
        let sizes = heads.map(\.size)
        let first = RangeScan(location: location, from: 1, through: split > 0 ? split : nil, previousChain: [UInt8](repeating: 0, count: 32), rootsAt: sizes)
        var second: RangeScan?
        if split > 0 {
            let chainAtSplit = ((try? store.chainHash(sequence: split)) ?? nil) ?? []
            second = RangeScan(location: location, from: split + 1, through: nil, previousChain: chainAtSplit, rootsAt: sizes)
        }
        if let second {
            let thread = Thread { second.run() }
            thread.start()
            first.run()
            second.done.wait()
        } else {
            first.run()
        }

        var problems: [(Int64, String)] = []
        if let b = first.bad { problems.append(b) }
        if split > 0, first.bad == nil, first.last != split {
            problems.append((first.last + 1, "entry \(first.last + 1) is missing"))
        }
        if let second, let b = second.bad { problems.append(b) }
        let total = second.map { $0.last } ?? first.last
        let firstRoot = first.root()
        func root(at size: Int64) -> [UInt8]? {
            if size == 0 { return MerkleTree.emptyRoot }
            if size == total {
                guard let second, split > 0 else { return first.root() }
                return second.last > split ? MerkleTree.nodeHash(firstRoot, second.root()) : firstRoot
            }
            if split == 0 || size <= split { return first.roots[size] }
            guard let rest = second?.roots[size] else { return nil }
            return MerkleTree.nodeHash(firstRoot, rest)
        }
        for head in heads {
            if head.size > total {
                problems.append((total + 1, "the log has \(total) entries but \(head.what) covers \(head.size): the log was cut off"))
                break
            }
            guard let computed = root(at: head.size), computed == head.root else {
                problems.append((head.size, "the entries up to \(head.size) do not match \(head.what): history was rewritten"))
                break
            }
            report.checkpointsVerified += 1
        }
        let erased = first.erased + (second?.erased ?? [])
        let erasures = first.erasures + (second?.erasures ?? [])
        for sequence in erased where !erasures.contains(where: { $0.contains(sequence) }) {
            problems.append((sequence, "entry \(sequence) was erased without a retention entry that records it"))
            break
        }
        // A gateway's log starts with the entry of its first policy set, so a log without entries
        // was emptied (entries and checkpoints deleted together): nothing is left to vouch for it.
        if total == 0 && problems.isEmpty {
            problems.append((1, "the log holds no entries: a gateway's log starts with its first policy-reloaded entry, so it was emptied or never written"))
        }
        report.entries = total
        report.treeHead = root(at: total) ?? MerkleTree.emptyRoot
        report.erasedEntries = Int64(erased.count)
        if let earliest = problems.min(by: { $0.0 < $1.0 }) {
            report.firstBadEntry = earliest.0
            report.problem = earliest.1
            report.entries = max(0, earliest.0 - 1)
            report.checkpointsVerified = heads.filter { $0.size < earliest.0 }.count
        }
        return report
    }
}

/// One pass over the entries from `from` (through `through`, or to the end): leaf hashes,
/// own sequence numbers, the chain from `previousChain`, the tree of this range as a binary
/// counter, and its roots at the requested sizes.
final class RangeScan: @unchecked Sendable {
    let location: DatabaseLocation
    let from: Int64
    let through: Int64?
    let previousChain: [UInt8]
    let rootsAt: Set<Int64>
    let done = DispatchSemaphore(value: 0)
    var bad: (Int64, String)?
    var erased: [Int64] = []
    var erasures: [ClosedRange<Int64>] = []
    var last: Int64
    var roots: [Int64: [UInt8]] = [:]
    private let hasher = SHA256Hasher()
    private var levels = [[UInt8]](repeating: [UInt8](repeating: 0, count: 32), count: 64)
    private var occupied: UInt64 = 0
    private static let nodePrefix: [UInt8] = [0x01]
    private static let kindKey = Array(#""kind":""#.utf8)
    private static let timeKey = Array(#""time":""#.utf8)
    private static let retainKey = Array(#""retainUntil":""#.utf8)

    /// Whether the body holds the row's `kind`, `time` and `retain_until` columns as its members.
    /// A byte search, not a parse: in canonical JSON a quote inside a string is always escaped,
    /// so `"kind":"X"` in the bytes is a member `kind` with the value X, and entries hold no
    /// other members of these names.
    private func columnsMatch(_ rows: SQLCursor) -> Bool {
        rows.withBytes(1) { body in
            func holds(_ key: [UInt8], column: Int32) -> Bool {
                guard let start = AuditVerifier.endOf(key, in: body) else { return false }
                return rows.withBytes(column) { value in
                    let end = start + value.count
                    guard end < body.count, body[end] == 0x22 else { return false }
                    return value.count == 0 || memcmp(body.baseAddress! + start, value.baseAddress!, value.count) == 0
                }
            }
            guard holds(RangeScan.kindKey, column: 4), holds(RangeScan.timeKey, column: 6) else { return false }
            return rows.isNull(7) ? AuditVerifier.endOf(RangeScan.retainKey, in: body) == nil : holds(RangeScan.retainKey, column: 7)
        }
    }

    init(location: DatabaseLocation, from: Int64, through: Int64?, previousChain: [UInt8], rootsAt: [Int64]) {
        self.location = location
        self.from = from
        self.through = through
        self.previousChain = previousChain
        self.rootsAt = Set(rootsAt)
        self.last = from - 1
    }

    /// The root of this range's tree so far (RFC 9162 MTH of the range).
    func root() -> [UInt8] {
        guard occupied != 0 else { return MerkleTree.emptyRoot }
        var acc: [UInt8]? = nil
        for level in 0..<64 where occupied & (1 << UInt64(level)) != 0 {
            acc = acc.map { hasher.hash(RangeScan.nodePrefix, levels[level], $0) } ?? levels[level]
        }
        return acc!
    }

    func run() {
        defer { done.signal() }
        var chain = previousChain
        var leaf = [UInt8](repeating: 0, count: 32)
        var next = [UInt8](repeating: 0, count: 32)
        var carry = [UInt8](repeating: 0, count: 32)
        var scratch = [UInt8](repeating: 0, count: 32)
        let leafPrefix: [UInt8] = [0x00]
        var expected = from
        do {
            let store = try AuditStores.reading(location)
            // The cursor reads through the store's connection: keep it until the scan ends.
            defer { withExtendedLifetime(store) {} }
            let rows = try store.scan(from: from, through: through)
            while try rows.step() {
                let sequence = rows.int64(0)
                guard sequence == expected else {
                    bad = (expected, sequence > expected ? "entry \(expected) is missing" : "sequence out of order")
                    return
                }
                if rows.isNull(1) {
                    // Erased at retention: only its hashes stay; a later retention entry must say so.
                    guard !rows.isNull(5) else { bad = (sequence, "entry \(sequence) has no content and was not erased at retention"); return }
                    guard let stored = rows.blob(2), stored.count == 32 else { bad = (sequence, "entry \(sequence) has no leaf hash"); return }
                    leaf = stored
                    erased.append(sequence)
                } else {
                    // The body must carry its own sequence number: canonical JSON has `"sequence":N`
                    // exactly once (a quote inside a string value is always escaped).
                    let ownSequence = rows.withBytes(1) { body -> Bool in AuditVerifier.carries(sequence: sequence, body) }
                    rows.withBytes(1) { body in
                        leafPrefix.withUnsafeBytes { prefix in leaf.withUnsafeMutableBufferPointer { hasher.hash(prefix, body, into: $0.baseAddress!) } }
                    }
                    let leafMatches = rows.withBytes(2) { stored in AuditVerifier.equal32(stored, leaf) }
                    guard leafMatches else { bad = (sequence, "entry \(sequence) was changed: its hash does not match its content"); return }
                    guard ownSequence else { bad = (sequence, "entry \(sequence) does not carry its own sequence number (moved or swapped)"); return }
                    // Only the body is hashed; its kind, time and retention day are also kept in
                    // columns that filters, listings and retention use. A column changed to hide
                    // an entry from a filter, or to have it erased early, is tampering too.
                    guard columnsMatch(rows) else {
                        bad = (sequence, "entry \(sequence) was changed: its kind, time or retention column differs from its content")
                        return
                    }
                    if rows.withBytes(4, { AuditVerifier.equal($0, AuditVerifier.retentionKind) }), let body = rows.string(1),
                        let ranges = (try? JSONParser.parse(body))?["erases"]?.arrayValue
                    {
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
                let chainMatches = rows.withBytes(3) { stored in AuditVerifier.equal32(stored, chain) }
                guard chainMatches else { bad = (sequence, "entry \(sequence) breaks the hash chain"); return }
                // The tree as a binary counter: `levels[l]` holds the root of a complete subtree of
                // 2^l leaves while bit l of the count is set (no allocation per entry).
                carry.withUnsafeMutableBytes { c in leaf.withUnsafeBytes { c.copyMemory(from: $0) } }
                var level = 0
                while occupied & (1 << UInt64(level)) != 0 {
                    RangeScan.nodePrefix.withUnsafeBytes { prefix in
                        levels[level].withUnsafeBytes { left in
                            carry.withUnsafeBytes { right in scratch.withUnsafeMutableBufferPointer { hasher.hash(prefix, left, right, into: $0.baseAddress!) } }
                        }
                    }
                    swap(&carry, &scratch)
                    occupied &= ~(1 << UInt64(level))
                    level += 1
                }
                levels[level].withUnsafeMutableBytes { l in carry.withUnsafeBytes { l.copyMemory(from: $0) } }
                occupied |= 1 << UInt64(level)
                last = sequence
                expected += 1
                if rootsAt.contains(sequence) { roots[sequence] = root() }
            }
        } catch let error as KetenpoortError {
            bad = (expected, "the database is unreadable or corrupt: \(error.message)")
        } catch {
            bad = (expected, "the database is unreadable or corrupt")
        }
    }
}
