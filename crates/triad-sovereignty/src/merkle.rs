//! The Merkle tree of the chain of custody: RFC 9162 (Certificate Transparency v2) §2.1,
//! with leaf/node domain separation. A workflow's leaves are its events' exact Kafka value
//! bytes in log order; an inclusion proof lets a third party check one event against a root
//! with [`verify_inclusion`] (the algorithm of RFC 9162 §2.1.3.2, restated in
//! `docs/audit.md`).

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The Merkle tree hash of `leaves` (already leaf-hashed); `SHA-256("")` when empty.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 9162 `PATH(m, D[n])`), or `None` when out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path(leaves, index, &mut out);
    Some(out)
}

fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Whether `proof` shows the leaf hash `leaf` at `index` in a tree of `size` leaves with
/// root `root` (RFC 9162 §2.1.3.2). A root means something only together with its size, so
/// signed roots always carry both.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest (leftmost)
/// first — one per set bit of `size`, so O(log n) hashes. The processor keeps one per workflow
/// in its state to sign the root of every event before the terminal one without holding
/// the leaves (the root equals [`root`] over the same leaves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// A frontier from its parts, or None when `peaks` does not fit `size` (one per set bit).
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        (usize::try_from(size.count_ones()).ok() == Some(peaks.len()))
            .then_some(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends a leaf hash: equal-sized subtrees at the edge merge, as binary carries do.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut carry = self.size;
        while carry & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            hash = node_hash(&left, &hash);
            carry >>= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// The tree hash of the leaves pushed so far: the peaks folded from the right.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return root(&[]);
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{hex, unhex};

    /// The RFC 6962 / Certificate Transparency reference inputs and tree heads.
    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        INPUTS
            .iter()
            .map(|h| leaf_hash(&unhex(h).unwrap()))
            .collect()
    }

    fn h(s: &str) -> Hash {
        unhex(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn roots_match_the_reference_tree_heads_for_every_size() {
        let leaves = leaves();
        for n in 0..=8 {
            assert_eq!(hex(&root(&leaves[..n])), ROOTS[n], "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_paths() {
        let leaves = leaves();
        assert_eq!(
            inclusion_proof(&leaves, 0).unwrap(),
            [
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        assert_eq!(
            inclusion_proof(&leaves, 5).unwrap(),
            [
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ]
        );
    }

    #[test]
    fn every_proof_verifies_in_every_size_and_any_change_fails() {
        let leaves: Vec<Hash> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let r = root(tree);
            for i in 0..n {
                let proof = inclusion_proof(tree, i).unwrap();
                let (idx, size) = (i as u64, n as u64);
                assert!(verify_inclusion(&tree[i], idx, size, &proof, &r), "{i}/{n}");
                let other = leaves[(i + 1) % leaves.len()];
                assert!(!verify_inclusion(&other, idx, size, &proof, &r));
                assert!(!verify_inclusion(&tree[i], idx + 1, size, &proof, &r) || n == 1);
                // (Not asserted: another size may accept the same path — e.g. leaf 0 of 3 and
                // of 4 — which is why a root is only ever signed together with its size.)
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(&tree[i], idx, size, &bad, &r));
                    assert!(!verify_inclusion(&tree[i], idx, size, &proof[1..], &r));
                }
            }
            assert!(inclusion_proof(tree, n).is_none());
        }
    }

    #[test]
    fn a_frontier_has_the_root_of_its_leaves_at_every_size() {
        let leaves: Vec<Hash> = (0u32..130).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::default();
        assert_eq!(f.root(), root(&[]));
        for (n, leaf) in leaves.iter().enumerate() {
            f.push(*leaf);
            assert_eq!(f.root(), root(&leaves[..=n]), "size {}", n + 1);
            assert_eq!(f.peaks().len(), (n + 1).count_ones() as usize);
            let again = Frontier::from_parts(f.size(), f.peaks().to_vec()).unwrap();
            assert_eq!(again, f);
        }
        assert!(Frontier::from_parts(3, vec![leaves[0]]).is_none());
    }
}
