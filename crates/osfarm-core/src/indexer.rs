//! Parallel block hashing of an image file into an `Index`.
//!
//! A reader thread (`readahead`) streams the file into the page cache ahead of the
//! hashers, so the disk works while the CPUs hash. The hashers walk the file in windows
//! of a few MiB; inside a window, rayon workers each take whole chunks with one
//! positional read into a reused per-thread buffer and hash the blocks in it.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{self, HashAlg};
use crate::index::{block_count_for, Index};
use crate::progress::{self, Progress};
use crate::readahead::ReadAhead;

/// Bytes read per positional read: large enough to amortise the syscall,
/// small enough to stay in the core's cache while its blocks are hashed.
const CHUNK_BYTES: u64 = 1 << 20;
/// Bytes hashed between two read-ahead requests.
const WINDOW_BYTES: u64 = 16 << 20;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

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
    hash_windows(&file, path, len, opts, progress, &mut digests, &ahead)?;
    drop(ahead);
    // The file must not have changed length under us, or the index would lie.
    let now = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat image", e))?.len();
    if now != len {
        return Err(Error::io(path, "cannot index", std::io::Error::other("the file changed size while it was read")));
    }
    Index::from_digests(opts.alg, opts.block_size, len, digests)
}

fn hash_windows(
    file: &File,
    path: &Path,
    len: u64,
    opts: IndexOptions,
    progress: &dyn Progress,
    digests: &mut [u8],
    ahead: &ReadAhead,
) -> Result<()> {
    let dlen = opts.alg.len();
    let bs = opts.block_size as u64;
    let chunk = CHUNK_BYTES.max(bs);
    let window = WINDOW_BYTES.max(chunk);
    for (w, window_digests) in digests.chunks_mut((window / bs) as usize * dlen).enumerate() {
        progress::check(progress)?;
        let window_start = w as u64 * window;
        window_digests.par_chunks_mut((chunk / bs) as usize * dlen).enumerate().try_for_each(
            |(i, out)| -> Result<()> {
                let offset = window_start + i as u64 * chunk;
                let n = (len - offset).min(chunk) as usize;
                BUFFER.with_borrow_mut(|buf| {
                    buf.resize(chunk as usize, 0);
                    file.read_exact_at(&mut buf[..n], offset).map_err(|e| Error::io(path, "cannot read image", e))?;
                    for (block, digest) in buf[..n].chunks(bs as usize).zip(out.chunks_exact_mut(dlen)) {
                        opts.alg.block_digest_into(block, digest);
                    }
                    Ok::<(), Error>(())
                })?;
                progress.advance(n as u64);
                Ok(())
            },
        )?;
        ahead.consumed(window_start + window);
    }
    Ok(())
}

/// Hashes a buffer already in memory (small images, tests, received data).
pub fn index_bytes(data: &[u8], opts: IndexOptions) -> Result<Index> {
    hash::block_size_log2(opts.block_size)?;
    let dlen = opts.alg.len();
    let mut digests = vec![0u8; block_count_for(data.len() as u64, opts.block_size) as usize * dlen];
    digests
        .par_chunks_mut(dlen)
        .zip(data.par_chunks(opts.block_size as usize))
        .for_each(|(d, block)| opts.alg.block_digest_into(block, d));
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
