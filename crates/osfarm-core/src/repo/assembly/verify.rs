//! Checking blocks against their digests. Every path by which an assembly accepts data —
//! a put, a copy from a repository image, a repeated block, what a resumed partial holds —
//! hashes it here, through `hash_blocks`: the one place to make that hashing faster.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use super::{Bitmap, Geometry, IO_CHUNK};
use crate::error::{Error, Result};
use crate::hash::{HashAlg, MAX_DIGEST_LEN};

/// Blocks hashed per parallel piece of a run: enough to amortise the scheduling.
const PIECE_BLOCKS: usize = 16;

/// Hashes the consecutive blocks of `data` (the last may be short) into `out`, one
/// digest per block, with the index's convention that an all-zero block has the all-zero
/// digest.
fn hash_blocks(alg: HashAlg, block_size: usize, data: &[u8], out: &mut [u8]) {
    for (block, d) in data.chunks(block_size).zip(out.chunks_exact_mut(alg.len())) {
        alg.block_digest_into(block, d);
    }
}

/// The first block of the run `first..` in `data` (their concatenation) that does not
/// match its digest in `digests` (one per block) or, being short, is not the image's last
/// block; `None` if all match. Hashes in parallel.
pub(super) fn first_mismatch(geo: &Geometry, first: u64, data: &[u8], digests: &[u8]) -> Option<u64> {
    let bs = geo.block_size as usize;
    let dl = geo.dl();
    let count = data.len().div_ceil(bs);
    debug_assert_eq!(digests.len(), count * dl);
    let bad = data.par_chunks(bs * PIECE_BLOCKS).enumerate().find_map_first(|(p, piece)| {
        let n = piece.len().div_ceil(bs);
        let mut got = [0u8; MAX_DIGEST_LEN * PIECE_BLOCKS];
        hash_blocks(geo.alg, bs, piece, &mut got[..n * dl]);
        let want = &digests[p * PIECE_BLOCKS * dl..][..n * dl];
        (0..n).find(|&k| got[k * dl..(k + 1) * dl] != want[k * dl..(k + 1) * dl]).map(|k| p * PIECE_BLOCKS + k)
    });
    match bad {
        Some(k) => Some(first + k as u64),
        None if data.len() as u64 != geo.run_len(first, count as u64) => Some(first + count as u64 - 1),
        None => None,
    }
}

/// Re-hashes, in parallel reads of up to `IO_CHUNK`, the blocks of `file` that a record
/// claims (`want(i)`: the digest block `i` should hold, or `None`); returns those that
/// match.
pub(super) fn reverify<'a>(
    file: &File,
    path: &Path,
    geo: &Geometry,
    want: impl Fn(u64) -> Option<&'a [u8]> + Sync,
) -> Result<Bitmap> {
    let bs = geo.bs();
    let dl = geo.dl();
    let per = (IO_CHUNK / bs).max(1);
    let n = geo.block_count;
    let good: Vec<Vec<u64>> = (0..n.div_ceil(per))
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<u8>, c| -> Result<Vec<u64>> {
            let b0 = c * per;
            let b1 = (b0 + per).min(n);
            if !(b0..b1).any(|i| want(i).is_some()) {
                return Ok(Vec::new());
            }
            buf.resize(geo.run_len(b0, b1 - b0) as usize, 0);
            file.read_exact_at(buf, b0 * bs).map_err(|e| Error::io(path, "cannot read", e))?;
            // Hash only the claimed blocks, a run of consecutive ones at a time.
            let mut got = vec![0u8; (b1 - b0) as usize * dl];
            let mut i = b0;
            while i < b1 {
                if want(i).is_none() {
                    i += 1;
                    continue;
                }
                let end = (i..b1).find(|&j| want(j).is_none()).unwrap_or(b1);
                let (a, z) = (((i - b0) * bs) as usize, (((end - b0) * bs) as usize).min(buf.len()));
                hash_blocks(
                    geo.alg,
                    bs as usize,
                    &buf[a..z],
                    &mut got[(i - b0) as usize * dl..(end - b0) as usize * dl],
                );
                i = end;
            }
            Ok((b0..b1).filter(|&i| want(i).is_some_and(|w| got[(i - b0) as usize * dl..][..dl] == *w)).collect())
        })
        .collect::<Result<_>>()?;
    let mut verified = Bitmap::new(n);
    for i in good.into_iter().flatten() {
        verified.set(i);
    }
    Ok(verified)
}
