//! Streaming a file into the page cache ahead of the code that hashes it.
//!
//! A thread reads the file sequentially — the access the kernel's read-ahead serves best,
//! like `dd` — at most `AHEAD_BYTES` ahead of what the consumer reports as done, and drops
//! the data: the consumer's own positional reads then come from the cache. Pieces already
//! cached are skipped, so a warm file costs no copy. Measured on a cold virtio disk:
//! `POSIX_FADV_WILLNEED` hints from the hashing thread were ~2x slower, and readahead(2)
//! slower still (the kernel caps each call at its read-ahead window).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How far the reader may run ahead of the consumer, and its read size.
const AHEAD_BYTES: u64 = 64 << 20;
const READ_BYTES: usize = 4 << 20;

/// The reader thread; stopped and joined when dropped.
pub(crate) struct ReadAhead {
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts reading `file` (its first `len` bytes). Without a second descriptor or a
    /// thread the consumer just reads without help.
    pub(crate) fn start(file: &File, len: u64) -> ReadAhead {
        let consumed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = file.try_clone().ok().and_then(|f| {
            let (c, s) = (consumed.clone(), stop.clone());
            std::thread::Builder::new().name("osfarm-readahead".into()).spawn(move || read(&f, len, &c, &s)).ok()
        });
        ReadAhead { consumed, stop, thread }
    }

    /// The consumer is done with everything before `offset`.
    pub(crate) fn consumed(&self, offset: u64) {
        self.consumed.store(offset, Ordering::Relaxed);
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Errors end the reader quietly: the consumer's own reads report them.
fn read(file: &File, len: u64, consumed: &AtomicU64, stop: &AtomicBool) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut offset = 0u64;
    while offset < len && !stop.load(Ordering::Relaxed) {
        if offset >= consumed.load(Ordering::Relaxed) + AHEAD_BYTES {
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
