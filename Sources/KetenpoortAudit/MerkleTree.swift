import KetenpoortCrypto

/// RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing over SHA-256, with domain-
/// separated leaves (0x00) and nodes (0x01); tree heads, inclusion and consistency proofs.
public enum MerkleTree {
    public static func leafHash(_ data: [UInt8]) -> [UInt8] { Crypto.sha256([0x00] + data) }
    public static func nodeHash(_ left: [UInt8], _ right: [UInt8]) -> [UInt8] { Crypto.sha256([0x01] + left + right) }

    /// MTH over many leaves, bottom-up (no recursion), with one reusable hasher.
    public static func rootIteratively(_ leaves: [[UInt8]]) -> [UInt8] {
        guard !leaves.isEmpty else { return emptyRoot }
        // RFC 9162's split at the largest power of two equals pairing left to right level by
        // level and carrying an odd last node up unchanged.
        let hasher = SHA256Hasher()
        var level = leaves
        while level.count > 1 {
            var next: [[UInt8]] = []
            next.reserveCapacity((level.count + 1) / 2)
            var i = 0
            while i + 1 < level.count {
                next.append(hasher.hash([0x01], level[i], level[i + 1]))
                i += 2
            }
            if i < level.count { next.append(level[i]) }
            level = next
        }
        return level[0]
    }
    public static let emptyRoot = Crypto.sha256([])

    /// MTH(D[n]) over leaf hashes (RFC 9162 §2.1.1).
    public static func root(_ leaves: ArraySlice<[UInt8]>) -> [UInt8] {
        switch leaves.count {
        case 0: return emptyRoot
        case 1: return leaves[leaves.startIndex]
        default:
            let k = largestPowerOfTwo(below: leaves.count)
            return nodeHash(root(leaves.prefix(k)), root(leaves.dropFirst(k)))
        }
    }

    public static func root(_ leaves: [[UInt8]]) -> [UInt8] { root(leaves[...]) }

    /// The largest power of two smaller than n (n > 1).
    static func largestPowerOfTwo(below n: Int) -> Int {
        var k = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    /// PATH(m, D[n]): the inclusion proof of leaf `m` (RFC 9162 §2.1.3.1).
    public static func inclusionProof(index m: Int, leaves: ArraySlice<[UInt8]>) -> [[UInt8]] {
        let n = leaves.count
        guard n > 1 else { return [] }
        let k = largestPowerOfTwo(below: n)
        if m < k {
            return inclusionProof(index: m, leaves: leaves.prefix(k)) + [root(leaves.dropFirst(k))]
        }
        return inclusionProof(index: m - k, leaves: leaves.dropFirst(k)) + [root(leaves.prefix(k))]
    }

    /// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
    public static func verifyInclusion(leafHash: [UInt8], index: Int, treeSize: Int, proof: [[UInt8]], root expected: [UInt8]) -> Bool {
        guard index < treeSize else { return false }
        var fn = index
        var sn = treeSize - 1
        var r = leafHash
        for p in proof {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                r = nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                r = nodeHash(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 && r == expected
    }

    /// PROOF(m, D[n]): a consistency proof between sizes m and n (RFC 9162 §2.1.4.1).
    public static func consistencyProof(oldSize m: Int, leaves: ArraySlice<[UInt8]>) -> [[UInt8]] {
        guard m > 0, m < leaves.count else { return [] }
        return subproof(m, leaves, true)
    }

    static func subproof(_ m: Int, _ leaves: ArraySlice<[UInt8]>, _ complete: Bool) -> [[UInt8]] {
        let n = leaves.count
        if m == n { return complete ? [] : [root(leaves)] }
        let k = largestPowerOfTwo(below: n)
        if m <= k {
            return subproof(m, leaves.prefix(k), complete) + [root(leaves.dropFirst(k))]
        }
        return subproof(m - k, leaves.dropFirst(k), false) + [root(leaves.prefix(k))]
    }

    /// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
    public static func verifyConsistency(oldSize first: Int, oldRoot: [UInt8], newSize second: Int, newRoot: [UInt8], proof: [[UInt8]]) -> Bool {
        if first == second { return proof.isEmpty && oldRoot == newRoot }
        guard first > 0, first < second else { return first == 0 && proof.isEmpty }
        var path = proof
        if first & (first - 1) == 0 { path.insert(oldRoot, at: 0) }  // first is a power of two
        guard !path.isEmpty else { return false }
        var fn = first - 1
        var sn = second - 1
        while fn & 1 == 1 { fn >>= 1; sn >>= 1 }
        var fr = path[0]
        var sr = path[0]
        for c in path.dropFirst() {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                fr = nodeHash(c, fr)
                sr = nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                sr = nodeHash(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        return fr == oldRoot && sr == newRoot && sn == 0
    }
}
