//! Checking blocks against their digests. Every path by which an assembly accepts data —
//! a put, a copy from a repository image, a repeated block, what a resumed partial holds —
//! hashes it here, with `HashAlg::block_digests` (two blocks at once where the CPU allows,
//! docs/hashing.md).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use super::{Bitmap, Geometry, IO_CHUNK};
use crate::error::{Error, Result};

/// The first block of the run `first..` in `data` (their concatenation) that does not
/// match its digest in `digests` (one per block) or, being short, is not the image's last
/// block; `None` if all match. Hashes in parallel.
pub(super) fn first_mismatch(geo: &Geometry, first: u64, data: &[u8], digests: &[u8]) -> Option<u64> {
    let bs = geo.block_size as usize;
    let count = data.len().div_ceil(bs);
    debug_assert_eq!(digests.len(), count * geo.dl());
    match geo.alg.first_bad_block(data, bs, digests) {
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
                geo.alg.block_digests(
                    &buf[a..z],
                    bs as usize,
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
