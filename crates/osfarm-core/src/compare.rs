//! Block commonality between two images: the seed's "common blocks" table.

use crate::bail;
use crate::digest_set::{DigestKey, DigestSet};
use crate::error::Result;
use crate::index::Index;

/// How much of each image's non-zero content the other already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    /// Non-zero blocks of B whose digest occurs in A: what a holder of A need not receive.
    pub b_blocks_in_a: u64,
    /// Non-zero blocks of A whose digest occurs in B.
    pub a_blocks_in_b: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub blocks: u64,
    pub zero_blocks: u64,
    pub distinct_blocks: u64,
}

impl Side {
    pub fn nonzero_blocks(&self) -> u64 {
        self.blocks - self.zero_blocks
    }
}

impl Comparison {
    /// Share (0..1) of B's non-zero blocks already in A.
    pub fn b_in_a(&self) -> f64 {
        ratio(self.b_blocks_in_a, self.b.nonzero_blocks())
    }
    /// Share (0..1) of A's non-zero blocks already in B.
    pub fn a_in_b(&self) -> f64 {
        ratio(self.a_blocks_in_b, self.a.nonzero_blocks())
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        1.0
    } else {
        n as f64 / d as f64
    }
}

fn nonzero_set(index: &Index) -> DigestSet<'_> {
    index.iter().filter(|d| !crate::hash::is_zero_digest(d)).map(DigestKey).collect()
}

fn count_in(index: &Index, set: &DigestSet<'_>) -> u64 {
    index.iter().filter(|d| !crate::hash::is_zero_digest(d) && set.contains(&DigestKey(d))).count() as u64
}

fn side(index: &Index, set: &DigestSet<'_>) -> Side {
    let zero_blocks = index.iter().filter(|d| crate::hash::is_zero_digest(d)).count() as u64;
    Side { blocks: index.block_count(), zero_blocks, distinct_blocks: set.len() as u64 }
}

pub fn compare(a: &Index, b: &Index) -> Result<Comparison> {
    if a.alg() != b.alg() || a.block_size() != b.block_size() {
        bail!(
            Mismatch,
            "cannot compare a {} index at {} B blocks with a {} index at {} B blocks: index both with the same --hash and --block-size",
            a.alg().name(),
            a.block_size(),
            b.alg().name(),
            b.block_size()
        );
    }
    let (sa, sb) = rayon::join(|| nonzero_set(a), || nonzero_set(b));
    let (b_blocks_in_a, a_blocks_in_b) = rayon::join(|| count_in(b, &sa), || count_in(a, &sb));
    Ok(Comparison { a: side(a, &sa), b: side(b, &sb), b_blocks_in_a, a_blocks_in_b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlg;
    use crate::indexer::{index_bytes, IndexOptions};

    #[test]
    fn counts_shared_blocks_both_ways() {
        let blk = |v: u8| vec![v; 4096];
        // A = [1,2,3,0], B = [1,1,4,0,0]
        let a: Vec<u8> = [blk(1), blk(2), blk(3), blk(0)].concat();
        let b: Vec<u8> = [blk(1), blk(1), blk(4), blk(0), blk(0)].concat();
        let o = IndexOptions::default();
        let c = compare(&index_bytes(&a, o).unwrap(), &index_bytes(&b, o).unwrap()).unwrap();
        assert_eq!(c.a, Side { blocks: 4, zero_blocks: 1, distinct_blocks: 3 });
        assert_eq!(c.b, Side { blocks: 5, zero_blocks: 2, distinct_blocks: 2 });
        assert_eq!(c.b_blocks_in_a, 2);
        assert_eq!(c.a_blocks_in_b, 1);
        assert!((c.b_in_a() - 2.0 / 3.0).abs() < 1e-9);
        assert!((c.a_in_b() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn refuses_different_parameters() {
        let data = vec![5u8; 8192];
        let a = index_bytes(&data, IndexOptions::default()).unwrap();
        let b = index_bytes(&data, IndexOptions { alg: HashAlg::Sha256, block_size: 4096 }).unwrap();
        assert_eq!(compare(&a, &b).unwrap_err().code, crate::error::Code::Mismatch);
    }
}
