import Foundation
import KetenpoortCore

/// RFC 9162 proofs from the stored tree: every hash a proof needs is the root of a perfect
/// subtree (stored as it completed) or is folded from a few of them, so a proof costs
/// O(log² n) lookups and no rebuild.
public final class StoredTree {
    let store: AuditStore
    /// Subtree roots already looked up or folded: proofs of many entries against one tree head
    /// share most of them (the right edge above all).
    private var cache: [Int64: [Int64: [UInt8]]] = [:]

    public init(store: AuditStore) { self.store = store }

    /// MTH(D[start ..< start+size]) for a subtree that begins on a boundary RFC 9162 splits at.
    public func root(start: Int64, size: Int64) throws -> [UInt8] {
        precondition(size > 0)
        if let hit = cache[start]?[size] { return hit }
        let hash: [UInt8]
        if size & (size - 1) == 0, start % size == 0 {
            hash = try store.node(level: size.trailingZeroBitCount, position: start / size)
        } else {
            let k = StoredTree.largestPowerOfTwo(below: size)
            hash = MerkleTree.nodeHash(try root(start: start, size: k), try root(start: start + k, size: size - k))
        }
        cache[start, default: [:]][size] = hash
        return hash
    }

    static func largestPowerOfTwo(below n: Int64) -> Int64 {
        var k: Int64 = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    /// PATH(m, D[n]) for the leaf at index `m` (0-based) in the tree of the first `n` entries.
    public func inclusionProof(index m: Int64, treeSize n: Int64) throws -> [[UInt8]] {
        precondition(m < n)
        return try path(m, start: 0, size: n)
    }

    private func path(_ m: Int64, start: Int64, size n: Int64) throws -> [[UInt8]] {
        guard n > 1 else { return [] }
        let k = StoredTree.largestPowerOfTwo(below: n)
        if m < k { return try path(m, start: start, size: k) + [try root(start: start + k, size: n - k)] }
        return try path(m - k, start: start + k, size: n - k) + [try root(start: start, size: k)]
    }

    /// PROOF(m, D[n]): consistency between the trees of the first `m` and `n` entries.
    public func consistencyProof(oldSize m: Int64, newSize n: Int64) throws -> [[UInt8]] {
        guard m > 0, m < n else { return [] }
        return try subproof(m, start: 0, size: n, complete: true)
    }

    private func subproof(_ m: Int64, start: Int64, size n: Int64, complete: Bool) throws -> [[UInt8]] {
        if m == n { return complete ? [] : [try root(start: start, size: n)] }
        let k = StoredTree.largestPowerOfTwo(below: n)
        if m <= k { return try subproof(m, start: start, size: k, complete: complete) + [try root(start: start + k, size: n - k)] }
        return try subproof(m - k, start: start + k, size: n - k, complete: false) + [try root(start: start, size: k)]
    }
}

/// A self-contained inclusion proof of one entry: the entry (or, once erased, only its leaf
/// hash), the path, and the signed checkpoint it is proven against. Verifying it needs only the
/// log's public key (``ProofBundle/verify(keys:)``).
public struct ProofBundle: Sendable {
    public let sequence: Int64
    /// The entry's canonical JSON; `nil` when its details were erased at retention.
    public let entry: String?
    public let leafHash: [UInt8]
    public let treeSize: Int64
    public let path: [[UInt8]]
    public let checkpoint: String

    public init(sequence: Int64, entry: String?, leafHash: [UInt8], treeSize: Int64, path: [[UInt8]], checkpoint: String) {
        self.sequence = sequence
        self.entry = entry
        self.leafHash = leafHash
        self.treeSize = treeSize
        self.path = path
        self.checkpoint = checkpoint
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("format", "ketenpoort-inclusion-proof-v1"),
            ("sequence", .number(Double(sequence))),
            ("leafIndex", .number(Double(sequence - 1))),
            ("leafHash", .string(Hex.encode(leafHash))),
            ("treeSize", .number(Double(treeSize))),
            ("path", .array(path.map { .string(Hex.encode($0)) })),
            ("checkpoint", .string(checkpoint)),
        ]
        if let entry { members.insert(("entry", .string(entry)), at: 1) }
        return .object(members)
    }

    public init(json: JSONValue) throws {
        func fail(_ what: String) -> KetenpoortError { KetenpoortError(.invalidInput, "not an inclusion proof: \(what)") }
        guard json["format"]?.stringValue == "ketenpoort-inclusion-proof-v1" else { throw fail("`format` must be ketenpoort-inclusion-proof-v1") }
        guard let sequence = json["sequence"]?.intValue, sequence >= 1 else { throw fail("`sequence` must be a whole number from 1") }
        guard let size = json["treeSize"]?.intValue, size >= sequence else { throw fail("`treeSize` must be at least `sequence`") }
        guard let leaf = json["leafHash"]?.stringValue.flatMap(Hex.decode), leaf.count == 32 else { throw fail("`leafHash` must be 64 hex digits") }
        guard let items = json["path"]?.arrayValue else { throw fail("`path` must be a list") }
        var path: [[UInt8]] = []
        for item in items {
            guard let hash = item.stringValue.flatMap(Hex.decode), hash.count == 32 else { throw fail("every `path` item must be 64 hex digits") }
            path.append(hash)
        }
        guard let note = json["checkpoint"]?.stringValue else { throw fail("`checkpoint` (the signed note) is missing") }
        self.init(sequence: Int64(sequence), entry: json["entry"]?.stringValue, leafHash: leaf, treeSize: Int64(size), path: path, checkpoint: note)
    }

    /// Checks the checkpoint's signature, that the entry hashes to the leaf, and the path to the
    /// checkpoint's root. Returns the checkpoint; throws saying what does not hold.
    @discardableResult
    public func verify(keys: [LogVerifierKey]) throws -> Checkpoint {
        let checkpoint = try Checkpoint.verify(note: self.checkpoint, keys: keys)
        try verifyInclusion(in: checkpoint)
        return checkpoint
    }

    /// The checks after the signature: for many proofs against one checkpoint whose signature
    /// was verified once (`checkpoint` must come from ``Checkpoint/verify(note:keys:)``).
    public func verifyInclusion(in checkpoint: Checkpoint) throws {
        guard Checkpoint.sameBody(self.checkpoint, as: checkpoint) else {
            throw KetenpoortError(.invalidInput, "the proof is against another checkpoint")
        }
        guard checkpoint.treeSize == treeSize else {
            throw KetenpoortError(.invalidInput, "the proof is for tree size \(treeSize) but its checkpoint is for \(checkpoint.treeSize)")
        }
        if let entry {
            guard MerkleTree.leafHash(Array(entry.utf8)) == leafHash else {
                throw KetenpoortError(.invalidInput, "the entry does not hash to the proof's leaf hash (changed)")
            }
            guard let parsed = try? JSONParser.parse(entry), parsed["sequence"]?.intValue.map(Int64.init) == sequence else {
                throw KetenpoortError(.invalidInput, "the entry does not carry sequence \(sequence)")
            }
        }
        guard MerkleTree.verifyInclusion(leafHash: leafHash, index: Int(sequence - 1), treeSize: Int(treeSize), proof: path, root: checkpoint.rootHash) else {
            throw KetenpoortError(.invalidInput, "the inclusion path does not lead to the checkpoint's root hash")
        }
    }
}

/// Proofs for the commands and the officers' API.
public enum AuditProver {
    /// The inclusion proof of entry `sequence` against the newest checkpoint that covers it.
    public static func prove(sequence: Int64, store: AuditStore) throws -> ProofBundle {
        guard let entry = try store.entry(sequence: sequence) else {
            throw KetenpoortError(.notFound, "the log has no entry \(sequence)")
        }
        guard let checkpoint = try store.checkpoints().last, checkpoint.treeSize >= sequence else {
            throw KetenpoortError(
                .notFound, "no signed checkpoint covers entry \(sequence) yet; run `ketenpoort log checkpoint` or wait for the next one")
        }
        let path = try StoredTree(store: store).inclusionProof(index: sequence - 1, treeSize: checkpoint.treeSize)
        return ProofBundle(sequence: sequence, entry: entry.body, leafHash: entry.leafHash, treeSize: checkpoint.treeSize, path: path, checkpoint: checkpoint.note)
    }
}
