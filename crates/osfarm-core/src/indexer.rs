//! Parallel block hashing of an image file into an `Index`.
//!
//! A reader thread streams the file sequentially into the page cache (what the kernel's
//! read-ahead serves best, like `dd`), a bounded distance ahead of the hashers, so the
//! disk works while the CPUs hash. The hashers walk the file in windows of a few MiB;
//! inside a window, rayon workers each take whole chunks with one positional read into
//! a reused per-thread buffer and hash the blocks in it. (`POSIX_FADV_WILLNEED` hints
//! from the hashing thread instead measured 2x slower on a cold virtio disk.)

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{self, HashAlg};
use crate::index::{block_count_for, Index};
use crate::progress::{self, Progress};

/// Bytes read per positional read: large enough to amortise the syscall,
/// small enough to stay in the core's cache while its blocks are hashed.
const CHUNK_BYTES: u64 = 1 << 20;
/// Bytes hashed between two read-ahead requests.
const WINDOW_BYTES: u64 = 16 << 20;
/// How far the read-ahead thread may run ahead of hashing, and its read size.
const READ_AHEAD_BYTES: u64 = 64 << 20;
const READ_BYTES: usize = 4 << 20;

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
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open image", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "cannot stat image", e))?;
    if meta.is_dir() {
        return Err(Error::io(path, "cannot index", std::io::Error::other("it is a directory: pack it first")));
    }
    let len = meta.len();
    progress.start(len);

    let mut digests = vec![0u8; block_count_for(len, opts.block_size) as usize * opts.alg.len()];

    // A reader thread streams the file into the page cache ahead of the hashers, the way
    // `dd` reads it (sequential reads the kernel's read-ahead follows), at most
    // READ_AHEAD_BYTES ahead; the hashers then pread from the cache.
    let hashed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| read_ahead(&file, len, &hashed, &stop));
        let r = hash_windows(&file, path, len, opts, progress, &mut digests, &hashed);
        stop.store(true, Ordering::Relaxed);
        r
    });
    result?;
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
    hashed: &AtomicU64,
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
        hashed.store(window_start + window, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads the file sequentially, staying at most READ_AHEAD_BYTES ahead of `hashed`; the
/// data is dropped, only the page cache keeps it. Pieces already cached are skipped, so a
/// warm file costs no copy. (readahead(2) instead measured slower: the kernel caps each
/// call at its read-ahead window.) Errors are left to the hashers.
fn read_ahead(file: &File, len: u64, hashed: &AtomicU64, stop: &AtomicBool) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut offset = 0u64;
    while offset < len && !stop.load(Ordering::Relaxed) {
        if offset >= hashed.load(Ordering::Relaxed) + READ_AHEAD_BYTES {
            std::thread::sleep(std::time::Duration::from_micros(200));
            continue;
        }
        let n = (len - offset).min(READ_BYTES as u64);
        if !(is_cached(file, offset) && is_cached(file, offset + n - 1)) && file.read_at(&mut buf, offset).is_err() {
            break;
        }
        offset += n;
    }
}

/// Whether the page holding `offset` is in the page cache: a one-byte read that may not
/// wait for the disk (preadv2 with RWF_NOWAIT) succeeds.
fn is_cached(file: &File, offset: u64) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    // SAFETY: one iovec pointing at a live one-byte buffer.
    unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) == 1 }
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
    use crate::test_data::pseudo_random;
    use crate::progress::{Counter, Silent};
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
