//! Parallel block hashing of an image file into an `Index`.
//!
//! A reader thread (`readahead`) streams the file into the page cache ahead of the
//! hashers, so the disk works while the CPUs hash. The hashers take the file's pieces in
//! order, each worker the next one free (no barriers, and the reads stay one sequential
//! stream for the read-ahead), and hash each piece where the page cache holds it
//! (`mapped`), two blocks at a time (`HashAlg::block_digests`). docs/hashing.md has the
//! measurements behind each choice.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{self, HashAlg};
use crate::index::{block_count_for, Index};
use crate::mapped::PieceReader;
use crate::progress::{self, Progress};
use crate::readahead::ReadAhead;

/// Bytes per piece: one mapping, one task. Large enough that mapping it costs little and
/// that 2 MiB pages can back it, small enough that the last piece leaves the other
/// workers idle only briefly (~2 ms).
const PIECE_BYTES: u64 = 4 << 20;

#[derive(Clone, Copy, Debug)]
pub struct IndexOptions {
    pub alg: HashAlg,
    pub block_size: u32,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions { alg: HashAlg::Sha1, block_size: hash::DEFAULT_BLOCK_SIZE }
    }
}

/// Hashes every block of the file at `path`.
pub fn index_file(path: &Path, opts: IndexOptions, progress: &dyn Progress) -> Result<Index> {
    hash::block_size_log2(opts.block_size)?;
    let file = crate::fsutil::open_regular(path, "image")?;
    let meta = file.metadata().map_err(|e| Error::io(path, "cannot stat image", e))?;
    if meta.is_dir() {
        return Err(Error::io(path, "cannot index", std::io::Error::other("it is a directory: pack it first")));
    }
    let len = meta.len();
    progress.start(len);

    let mut digests = vec![0u8; block_count_for(len, opts.block_size) as usize * opts.alg.len()];

    let ahead = ReadAhead::start(&file, len);
    hash_range(&file, path, 0..len, opts, progress, &mut digests, &ahead)?;
    drop(ahead);
    // The file must not have changed length under us, or the index would lie.
    let now = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat image", e))?.len();
    if now != len {
        return Err(Error::io(path, "cannot index", std::io::Error::other("the file changed size while it was read")));
    }
    Index::from_digests(opts.alg, opts.block_size, len, digests)
}

/// Hashes the blocks of `range` of `file` (starting on a block boundary, ending on one
/// or at the end of the file) into `digests`, one digest per block. Every rayon worker
/// takes the next piece in file order until none is left; the read-ahead hears how far
/// they got, and a piece not yet cached waits for it. Cancelling through `progress` stops
/// them between pieces.
pub(crate) fn hash_range(
    file: &File,
    path: &Path,
    range: Range<u64>,
    opts: IndexOptions,
    progress: &dyn Progress,
    digests: &mut [u8],
    ahead: &ReadAhead,
) -> Result<()> {
    let dl = opts.alg.len();
    let bs = opts.block_size as u64;
    let piece = PIECE_BYTES.max(bs);
    // Each piece's digests, for the worker that takes it.
    let outs: Vec<Mutex<&mut [u8]>> = digests.chunks_mut((piece / bs) as usize * dl).map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None::<Error>);
    let work = || {
        let mut reader = PieceReader::new(file, path);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= outs.len() || failed.lock().unwrap().is_some() {
                return;
            }
            let offset = range.start + i as u64 * piece;
            ahead.consumed(offset);
            let n = (range.end - offset).min(piece) as usize;
            ahead.wait_for(file, offset, offset + n as u64);
            let mut out = outs[i].lock().unwrap();
            let done = progress::check(progress).and_then(|()| {
                reader.with_piece(offset, n, |bytes| opts.alg.block_digests(bytes, bs as usize, &mut out))
            });
            match done {
                Ok(()) => progress.advance(n as u64),
                Err(e) => {
                    failed.lock().unwrap().get_or_insert(e);
                    return;
                }
            }
        }
    };
    let workers = rayon::current_num_threads().min(outs.len());
    if workers <= 1 {
        work(); // one CPU: no hand-over to the pool
    } else {
        rayon::scope(|s| {
            for _ in 0..workers {
                s.spawn(|_| work());
            }
        });
    }
    ahead.consumed(range.end);
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Hashes a buffer already in memory (small images, tests, received data).
pub fn index_bytes(data: &[u8], opts: IndexOptions) -> Result<Index> {
    hash::block_size_log2(opts.block_size)?;
    let dlen = opts.alg.len();
    let bs = opts.block_size as usize;
    let mut digests = vec![0u8; block_count_for(data.len() as u64, opts.block_size) as usize * dlen];
    let per = (PIECE_BYTES as usize / bs).max(1);
    digests
        .par_chunks_mut(per * dlen)
        .zip(data.par_chunks(per * bs))
        .for_each(|(d, piece)| opts.alg.block_digests(piece, bs, d));
    Index::from_digests(opts.alg, opts.block_size, data.len() as u64, digests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Counter, Silent};
    use crate::test_data::pseudo_random;
    use std::sync::atomic::Ordering;

    #[test]
    fn file_and_memory_agree_and_blocks_are_independent() {
        let mut data = pseudo_random(3 * (1 << 20) + 5000, 42);
        data[8192..12288].fill(0); // block 2 is all zero
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, &data).unwrap();
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            for bs in [512, 4096, 1 << 20] {
                let opts = IndexOptions { alg, block_size: bs };
                let counter = Counter::default();
                let a = index_file(&p, opts, &counter).unwrap();
                assert_eq!(a, index_bytes(&data, opts).unwrap());
                assert_eq!(counter.done.load(Ordering::Relaxed), data.len() as u64);
                // Each digest is the digest of exactly its block.
                let last = a.block_count() - 1;
                let start = (last * bs as u64) as usize;
                let mut d = vec![0u8; alg.len()];
                alg.digest_into(&data[start..], &mut d);
                assert_eq!(a.digest(last), &d[..]);
            }
        }
        let a = index_file(&p, IndexOptions::default(), &Silent).unwrap();
        assert!(a.is_zero_block(2));
        assert!(!a.is_zero_block(1));
    }

    #[test]
    fn empty_file_has_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty");
        std::fs::write(&p, b"").unwrap();
        let a = index_file(&p, IndexOptions::default(), &Silent).unwrap();
        assert_eq!(a.block_count(), 0);
    }

    #[test]
    fn cancel_stops_work() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, pseudo_random(4 << 20, 1)).unwrap();
        let counter = Counter::default();
        counter.cancel.cancel();
        let err = index_file(&p, IndexOptions::default(), &counter).unwrap_err();
        assert_eq!(err.code, crate::error::Code::Aborted);
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = index_file(Path::new("/nonexistent/x"), IndexOptions::default(), &Silent).unwrap_err();
        assert_eq!(err.code, crate::error::Code::NotFound);
    }
}
