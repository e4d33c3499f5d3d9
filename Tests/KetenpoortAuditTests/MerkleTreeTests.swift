import Foundation
import Testing

@testable import KetenpoortAudit

func hexBytes(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        out.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return out
}

func hexOf(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// The test data of RFC 6962's reference implementation (certificate-transparency,
/// `merkle_tree_test`): eight leaves and the tree head after each.
let rfc6962Leaves: [[UInt8]] = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"].map(hexBytes)
let rfc6962Roots = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

@Suite("Merkle tree (RFC 9162 hashing)")
struct MerkleTreeTests {
    let leaves = rfc6962Leaves.map(MerkleTree.leafHash)

    @Test("tree heads match the RFC 6962 test data for every size 1...8; the empty tree is SHA-256 of nothing")
    func roots() {
        for size in 1...8 {
            #expect(hexOf(MerkleTree.root(Array(leaves.prefix(size)))) == rfc6962Roots[size - 1], "size \(size)")
        }
        #expect(hexOf(MerkleTree.root([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test("every inclusion proof verifies; a wrong leaf, index or root does not")
    func inclusion() {
        for size in 1...8 {
            let root = MerkleTree.root(Array(leaves.prefix(size)))
            for index in 0..<size {
                let proof = MerkleTree.inclusionProof(index: index, leaves: leaves.prefix(size))
                #expect(MerkleTree.verifyInclusion(leafHash: leaves[index], index: index, treeSize: size, proof: proof, root: root))
                #expect(!MerkleTree.verifyInclusion(leafHash: leaves[(index + 1) % 8], index: index, treeSize: size, proof: proof, root: root))
                if size > 1 {
                    #expect(!MerkleTree.verifyInclusion(leafHash: leaves[index], index: (index + 1) % size, treeSize: size, proof: proof, root: root))
                }
            }
        }
    }

    @Test("every consistency proof between two sizes verifies; a rewritten history does not")
    func consistency() {
        for newSize in 1...8 {
            let newRoot = MerkleTree.root(Array(leaves.prefix(newSize)))
            for oldSize in 1...newSize {
                let oldRoot = MerkleTree.root(Array(leaves.prefix(oldSize)))
                let proof = MerkleTree.consistencyProof(oldSize: oldSize, leaves: leaves.prefix(newSize))
                #expect(MerkleTree.verifyConsistency(oldSize: oldSize, oldRoot: oldRoot, newSize: newSize, newRoot: newRoot, proof: proof), "\(oldSize) -> \(newSize)")
                if oldSize < newSize {
                    var forged = leaves
                    forged[0] = MerkleTree.leafHash([0xff])
                    let forgedOld = MerkleTree.root(Array(forged.prefix(oldSize)))
                    #expect(!MerkleTree.verifyConsistency(oldSize: oldSize, oldRoot: forgedOld, newSize: newSize, newRoot: newRoot, proof: proof))
                }
            }
        }
    }
}

@Suite("Merkle tree, iterative")
struct MerkleIterativeTests {
    @Test("the bottom-up tree head equals RFC 9162's recursive definition for 0...130 leaves")
    func equivalence() {
        let leaves = (0..<130).map { MerkleTree.leafHash([UInt8(truncatingIfNeeded: $0), 7]) }
        for n in 0...130 {
            #expect(MerkleTree.rootIteratively(Array(leaves.prefix(n))) == MerkleTree.root(Array(leaves.prefix(n))), "n = \(n)")
        }
    }
}
