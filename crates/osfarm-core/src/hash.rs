//! Block digests: the hash algorithms, block-size rules and all-zero detection.

use rayon::prelude::*;
use sha1::Digest as _;

use crate::bail;
use crate::error::Result;
use crate::sha1_pair;

/// Smallest block size: one tar record.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// The default: a page, a file-system block, and what the block-aligned tar aligns to.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// The longest digest of any algorithm (SHA-256).
pub const MAX_DIGEST_LEN: usize = 32;

/// The hash algorithm of an index. The numeric ids are part of the index format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1 = 1,
    Sha256 = 2,
}

impl HashAlg {
    pub fn from_id(id: u8) -> Option<HashAlg> {
        match id {
            1 => Some(HashAlg::Sha1),
            2 => Some(HashAlg::Sha256),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
        }
    }

    pub fn parse(name: &str) -> Result<HashAlg> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" | "sha-1" => Ok(HashAlg::Sha1),
            "sha256" | "sha-256" => Ok(HashAlg::Sha256),
            _ => bail!(InvalidArgument, "unknown hash '{name}': use sha1 or sha256"),
        }
    }

    /// Digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // a digest is never empty
    pub fn len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }

    /// Writes the digest of `data` into `out` (exactly `self.len()` bytes).
    pub fn digest_into(self, data: &[u8], out: &mut [u8]) {
        match self {
            HashAlg::Sha1 => out.copy_from_slice(&sha1::Sha1::digest(data)),
            HashAlg::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(data)),
        }
    }

    /// The digest of a sequence of byte strings, as one message.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                let mut h = sha1::Sha1::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            HashAlg::Sha256 => {
                let mut h = sha2::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }

    /// The digest of one block as stored in an index: all-zero blocks get the
    /// reserved all-zero digest, so sparse regions are recognisable without data.
    pub fn block_digest_into(self, block: &[u8], out: &mut [u8]) {
        if is_zero(block) {
            out.fill(0);
        } else {
            self.digest_into(block, out);
        }
    }

    /// The block digests (as `block_digest_into`) of consecutive blocks: `data` cut into
    /// `block_size` pieces, the last one possibly shorter; `out` holds one digest per piece.
    /// The fast way to hash many blocks: SHA-1 runs two blocks at once on CPUs with the
    /// SHA extensions (see `sha1_pair`), with no allocation.
    pub fn block_digests(self, data: &[u8], block_size: usize, out: &mut [u8]) {
        let dl = self.len();
        assert_eq!(out.len(), data.len().div_ceil(block_size) * dl, "one digest per block");
        let pairs = self == HashAlg::Sha1 && block_size.is_multiple_of(64) && sha1_pair::available();
        let mut waiting: Option<(&[u8], &mut [u8])> = None;
        for (block, digest) in data.chunks(block_size).zip(out.chunks_exact_mut(dl)) {
            if is_zero(block) {
                digest.fill(0);
            } else if !pairs || block.len() != block_size {
                self.digest_into(block, digest);
            } else if let Some((first, first_digest)) = waiting.take() {
                sha1_pair::digest_pair(first, block, first_digest, digest);
            } else {
                waiting = Some((block, digest));
            }
        }
        if let Some((block, digest)) = waiting {
            self.digest_into(block, digest);
        }
    }

    /// Checks consecutive blocks (cut as in `block_digests`) against their expected
    /// digests, hashing in parallel for large `data`: `ok[k]` says whether block `k`
    /// matches. `expected` holds one digest per block, `ok` one flag.
    pub fn check_blocks(self, data: &[u8], block_size: usize, expected: &[u8], ok: &mut [bool]) {
        let dl = self.len();
        let n = data.len().div_ceil(block_size);
        assert!(expected.len() == n * dl && ok.len() == n, "one expected digest and one flag per block");
        // A batch: enough blocks to pair up and to be worth a rayon task, few enough for
        // the stack.
        const BATCH: usize = 64;
        let check = |k: usize, batch: &[u8], ok: &mut [bool]| {
            let mut digests = [0u8; BATCH * MAX_DIGEST_LEN];
            let digests = &mut digests[..ok.len() * dl];
            self.block_digests(batch, block_size, digests);
            let want = &expected[k * BATCH * dl..][..digests.len()];
            for ((o, d), w) in ok.iter_mut().zip(digests.chunks_exact(dl)).zip(want.chunks_exact(dl)) {
                *o = d == w;
            }
        };
        if n <= BATCH {
            return check(0, data, ok);
        }
        data.par_chunks(BATCH * block_size)
            .zip(ok.par_chunks_mut(BATCH))
            .enumerate()
            .for_each(|(k, (batch, ok))| check(k, batch, ok));
    }

    /// The position of the first of consecutive blocks (as in `check_blocks`) that does
    /// not match its expected digest, `None` if all match. Assembly verifies received and
    /// copied blocks with this.
    pub fn first_bad_block(self, data: &[u8], block_size: usize, expected: &[u8]) -> Option<usize> {
        let mut ok = vec![false; data.len().div_ceil(block_size)];
        self.check_blocks(data, block_size, expected, &mut ok);
        ok.iter().position(|&o| !o)
    }
}

/// Checks a block size and returns its base-2 logarithm.
pub fn block_size_log2(block_size: u32) -> Result<u8> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        bail!(
            InvalidArgument,
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        );
    }
    Ok(block_size.trailing_zeros() as u8)
}

/// True if every byte is zero. Works 64 bytes at a time so the compiler vectorises it;
/// real data nearly always fails in the first few bytes.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// True if `digest` is the reserved marker of an all-zero block.
pub fn is_zero_digest(digest: &[u8]) -> bool {
    digest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_vector() {
        let mut out = [0u8; 20];
        HashAlg::Sha1.digest_into(b"abc", &mut out);
        assert_eq!(hex::encode(out), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn sha256_matches_known_vector() {
        let mut out = [0u8; 32];
        HashAlg::Sha256.digest_into(b"abc", &mut out);
        assert_eq!(hex::encode(out), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn block_sizes_are_checked() {
        assert_eq!(block_size_log2(4096).unwrap(), 12);
        assert_eq!(block_size_log2(512).unwrap(), 9);
        assert_eq!(block_size_log2(1 << 20).unwrap(), 20);
        for bad in [0, 256, 1000, 3 << 10, 2 << 20] {
            assert!(block_size_log2(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 4096];
        assert!(is_zero(&b));
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[0] = 1;
        assert!(!is_zero(&b));
        let mut d = [1u8; 20];
        HashAlg::Sha1.block_digest_into(&[0u8; 100], &mut d);
        assert!(is_zero_digest(&d));
    }

    #[test]
    fn block_digests_equal_one_block_at_a_time() {
        let mut data = crate::test_data::pseudo_random(300 * 1024 + 100, 5);
        data[4096..8192].fill(0); // a zero block between two that pair up
        data[40 * 1024..41 * 1024].fill(0);
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            for bs in [512, 1024, 4096, 65536] {
                for len in [0, 100, bs, 2 * bs, 3 * bs + 1, data.len()] {
                    let part = &data[..len];
                    let dl = alg.len();
                    let mut want = vec![0u8; len.div_ceil(bs) * dl];
                    for (b, d) in part.chunks(bs).zip(want.chunks_exact_mut(dl)) {
                        alg.block_digest_into(b, d);
                    }
                    let mut got = vec![1u8; want.len()];
                    alg.block_digests(part, bs, &mut got);
                    assert_eq!(got, want, "{} bs {bs} len {len}", alg.name());
                    assert_eq!(alg.first_bad_block(part, bs, &want), None);
                    if let Some(last) = want.len().checked_sub(1) {
                        let mut wrong = want.clone();
                        wrong[last] ^= 1;
                        assert_eq!(alg.first_bad_block(part, bs, &wrong), Some(len.div_ceil(bs) - 1));
                        let mut ok = vec![false; len.div_ceil(bs)];
                        alg.check_blocks(part, bs, &wrong, &mut ok);
                        assert!(
                            ok[..ok.len() - 1].iter().all(|&o| o) && !ok[ok.len() - 1],
                            "{} bs {bs} len {len}",
                            alg.name()
                        );
                        wrong[dl / 2] ^= 1;
                        assert_eq!(alg.first_bad_block(part, bs, &wrong), Some(0));
                    }
                }
            }
        }
    }

    #[test]
    fn hash_names_parse() {
        assert_eq!(HashAlg::parse("SHA256").unwrap(), HashAlg::Sha256);
        assert!(HashAlg::parse("md5").is_err());
    }
}
