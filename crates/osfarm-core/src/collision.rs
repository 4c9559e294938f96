//! SHA-1 collision detection for repositories that take images from pushers they do not
//! trust (docs/trust.md). With SHA-1 block digests, a pusher able to make a colliding pair
//! could plant one half under the digest of a popular block, and every later image that
//! deduplicates against it would be assembled with the planted data. sha1dc's
//! counter-cryptanalysis (Stevens and Shumow, what git and GitHub run) recognizes, from one
//! message alone, the near-collision blocks that the known attacks need (SHAttered's
//! identical prefix, SHAmbles' chosen prefix), so either half of a pair is refused before it
//! enters the repository. Ordinary data never trips it (false positives below 2^-90).

use rayon::prelude::*;
use sha1_checked::{Builder, CollisionResult, Digest as _};

/// Whether `block` contains the near-collision blocks of a SHA-1 collision attack.
pub fn is_attack(block: &[u8]) -> bool {
    // Without the "safe hash" the digest stays plain SHA-1; only the verdict matters here.
    let mut h = Builder::default().safe_hash(false).build();
    h.update(block);
    !matches!(h.try_finalize(), CollisionResult::Ok(_))
}

/// The first of the consecutive blocks of `data` (cut every `block_size` bytes) that
/// carries an attack, `None` if none does. Checks the blocks in parallel.
pub fn first_attack(data: &[u8], block_size: usize) -> Option<usize> {
    data.par_chunks(block_size).position_first(is_attack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::shattered_prefixes;

    #[test]
    fn the_shattered_pair_is_detected_and_ordinary_blocks_are_not() {
        let (a, b) = shattered_prefixes();
        assert_ne!(a, b);
        // The pair collides under plain SHA-1 (so the fixture is the real one)…
        assert_eq!(sha1::Sha1::digest(&a), sha1::Sha1::digest(&b));
        // …and each half is recognized, also inside a 4 KiB block with any common tail.
        for half in [&a, &b] {
            assert!(is_attack(half));
            let mut block = half.to_vec();
            block.resize(4096, 0x5a);
            assert!(is_attack(&block));
        }
        let mut data = vec![0x11u8; 4096 * 3];
        data.extend_from_slice(&{
            let mut v = b.clone();
            v.resize(4096, 0);
            v
        });
        assert_eq!(first_attack(&data, 4096), Some(3));
        assert_eq!(first_attack(&data[..4096 * 3], 4096), None);
        assert!(!is_attack(&[0u8; 4096]));
    }
}
