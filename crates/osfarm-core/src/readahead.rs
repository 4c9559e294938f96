//! Streaming a file into the page cache ahead of the code that hashes it.
//!
//! A thread reads the file sequentially — the access the kernel's read-ahead serves best,
//! like `dd` — at most `AHEAD_BYTES` ahead of what the consumer reports as done, and drops
//! the data: the consumer's own reads then come from the cache, and a consumer that
//! gets ahead of it waits (`wait_for`) rather than reading elsewhere on the disk itself.
//! Pieces already cached are skipped, so a warm file costs nothing. The reads are `sendfile` to
//! /dev/null, which fills the cache without copying the data out of it: 8 ms of CPU for
//! 256 MiB where read(2) into a buffer took 21 ms, and on a one-CPU sender that CPU is
//! hashing time (a delta-0 push of 256 MiB on one CPU: 0.160 s instead of 0.167 s, the
//! throwaway copy having been 5 % of its CPU profile). Measured on a cold virtio disk:
//! `POSIX_FADV_WILLNEED` hints from the hashing thread were ~2x slower, and readahead(2)
//! slower still (the kernel caps each call at its read-ahead window).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How far the reader may run ahead of the consumer, and its read size.
const AHEAD_BYTES: u64 = 64 << 20;
const READ_BYTES: usize = 4 << 20;

/// The reader thread; stopped and joined when dropped.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the reader and the consumers tell each other.
#[derive(Default)]
struct Shared {
    consumed: AtomicU64,
    stop: AtomicBool,
    loaded: Mutex<Loaded>,
    loaded_changed: Condvar,
}

#[derive(Default)]
struct Loaded {
    /// Everything before this offset is in the page cache (or was, when the reader passed).
    upto: u64,
    /// The reader has stopped, at the end, at an error or when asked to.
    finished: bool,
}

impl ReadAhead {
    /// Starts reading `file` (its first `len` bytes). Without a second descriptor or a
    /// thread the consumer just reads without help.
    pub(crate) fn start(file: &File, len: u64) -> ReadAhead {
        let shared = Arc::new(Shared::default());
        let thread = file.try_clone().ok().and_then(|f| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("osfarm-readahead".into())
                .spawn(move || {
                    read(&f, len, &s);
                    s.loaded.lock().unwrap().finished = true;
                    s.loaded_changed.notify_all();
                })
                .ok()
        });
        ReadAhead { shared, thread }
    }

    /// The consumer has got as far as `offset` (several workers may report out of order).
    pub(crate) fn consumed(&self, offset: u64) {
        self.shared.consumed.fetch_max(offset, Ordering::Relaxed);
    }

    /// Returns once the bytes `start..end` of `file` can be read from the page cache: at
    /// once if they are cached, else when the reader has read past them (or stopped).
    /// Consumers faster than the disk wait here instead of faulting the pages in
    /// themselves: several workers reading at several places would break the one
    /// sequential stream the disk serves fastest (two hashers cold: 1.0 s for 1 GiB
    /// where `dd` takes 0.8 s; docs/hashing.md).
    pub(crate) fn wait_for(&self, file: &File, start: u64, end: u64) {
        if self.thread.is_none() || start >= end {
            return;
        }
        let mut loaded = self.shared.loaded.lock().unwrap();
        if loaded.upto >= end || loaded.finished {
            return;
        }
        drop(loaded);
        if is_cached(file, start) && is_cached(file, end - 1) {
            return;
        }
        loaded = self.shared.loaded.lock().unwrap();
        while loaded.upto < end && !loaded.finished {
            loaded = self.shared.loaded_changed.wait(loaded).unwrap();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Errors end the reader quietly: the consumer's own reads report them.
fn read(file: &File, len: u64, shared: &Shared) {
    let mut sink = Sink::open();
    let mut offset = 0u64;
    while offset < len && !shared.stop.load(Ordering::Relaxed) {
        if offset >= shared.consumed.load(Ordering::Relaxed) + AHEAD_BYTES {
            std::thread::sleep(std::time::Duration::from_micros(200));
            continue;
        }
        let n = (len - offset).min(READ_BYTES as u64);
        let cached = is_cached(file, offset) && is_cached(file, offset + n - 1);
        if !(cached || sink.load(file, offset, n as usize)) {
            break;
        }
        offset += n;
        shared.loaded.lock().unwrap().upto = offset;
        shared.loaded_changed.notify_all();
    }
}

/// Where the data read ahead goes: /dev/null through `sendfile`, or a buffer where that
/// does not work (no /dev/null, or a file system without splice support).
enum Sink {
    Null(File),
    Buffer(Vec<u8>),
}

impl Sink {
    fn open() -> Sink {
        match std::fs::OpenOptions::new().write(true).open("/dev/null") {
            Ok(null) => Sink::Null(null),
            Err(_) => Sink::Buffer(vec![0u8; READ_BYTES]),
        }
    }

    /// Brings `n` bytes at `offset` into the page cache; false at an error or the end of the file.
    fn load(&mut self, file: &File, offset: u64, n: usize) -> bool {
        if let Sink::Null(null) = self {
            match send_to_null(null, file, offset, n) {
                Some(ok) => return ok,
                None => *self = Sink::Buffer(vec![0u8; READ_BYTES]),
            }
        }
        let Sink::Buffer(buf) = self else { return false };
        file.read_at(&mut buf[..n], offset).map(|k| k > 0).unwrap_or(false)
    }
}

/// `sendfile` of `n` bytes at `offset` to /dev/null: `Some(false)` at an error or the end
/// of the file, `None` if refused before anything moved (EINVAL: no splice here).
fn send_to_null(null: &File, file: &File, offset: u64, n: usize) -> Option<bool> {
    let end = offset + n as u64;
    let mut off = offset as libc::off_t;
    while (off as u64) < end {
        // SAFETY: two open descriptors and a live offset, which sendfile advances.
        let r = unsafe { libc::sendfile(null.as_raw_fd(), file.as_raw_fd(), &mut off, (end - off as u64) as usize) };
        if r == 0 {
            return Some(false);
        }
        if r < 0 {
            return if off as u64 == offset { None } else { Some(false) };
        }
    }
    Some(true)
}

/// Whether the page holding `offset` is in the page cache: a one-byte read that may not
/// wait for the disk (preadv2 with RWF_NOWAIT) succeeds. Where that flag is refused (a file
/// system without non-blocking buffered reads, a kernel before 4.14, qemu-user: EOPNOTSUPP,
/// EINVAL or ENOSYS rather than EAGAIN), mincore(2) on a one-page mapping answers instead.
fn is_cached(file: &File, offset: u64) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    // The system call, not libc's wrapper: musl has none before 1.2.5, and its dynamic
    // linker resolves every symbol at load, so the linux-x64-musl module would not load
    // on an older musl at all. Every argument a long (syscall is variadic), the offset as
    // low and high words, as libc passes it.
    // SAFETY: one iovec pointing at a live one-byte buffer.
    let n = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            file.as_raw_fd() as libc::c_long,
            &iov as *const libc::iovec,
            1 as libc::c_long,
            offset as libc::c_long,
            (offset >> 32) as libc::c_long,
            libc::RWF_NOWAIT as libc::c_long,
        )
    };
    match n {
        1 => true,
        0 => false, // the end of the file
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => is_resident(file, offset),
            _ => false, // EAGAIN: not cached
        },
    }
}

/// mincore(2)'s answer for the page holding `offset`: maps it without touching it.
fn is_resident(file: &File, offset: u64) -> bool {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let start = offset - offset % page;
    // SAFETY: a fresh one-page read-only mapping of an open descriptor, only passed to
    // mincore (never read, so no SIGBUS past the end of the file) and unmapped here.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            page as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start as libc::off_t,
        );
        if map == libc::MAP_FAILED {
            return false;
        }
        let mut vec = 0u8;
        let ok = libc::mincore(map, page as usize, &mut vec) == 0;
        libc::munmap(map, page as usize);
        ok && vec & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn evicted(file: &File, len: u64) -> bool {
        // SAFETY: an open descriptor; DONTNEED only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len as libc::off_t, libc::POSIX_FADV_DONTNEED) };
        !is_cached(file, 0) && !is_cached(file, len - 1)
    }

    #[test]
    fn both_sinks_bring_the_file_into_the_page_cache_and_stop_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 3 * READ_BYTES as u64 + 4096;
        let mut f = File::create(&path).unwrap();
        f.write_all(&crate::test_data::pseudo_random(len as usize, 7)).unwrap();
        f.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        assert!(matches!(Sink::open(), Sink::Null(_)), "sendfile to /dev/null is the normal way");
        for mut sink in [Sink::open(), Sink::Buffer(vec![0u8; READ_BYTES])] {
            if !evicted(&file, len) {
                // A file system that keeps everything in memory (tmpfs): nothing to observe.
                return;
            }
            let mut at = 0;
            while at < len {
                let n = (len - at).min(READ_BYTES as u64) as usize;
                assert!(sink.load(&file, at, n), "load at {at}");
                at += n as u64;
            }
            assert!(is_cached(&file, 0) && is_cached(&file, len / 2) && is_cached(&file, len - 1));
            assert!(!sink.load(&file, len, 4096), "nothing to read past the end");
        }
    }

    #[test]
    fn mincore_gives_the_answer_of_a_nowait_read() {
        // The fallback where RWF_NOWAIT is refused, checked against it where it is not.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 2 * READ_BYTES as u64;
        std::fs::write(&path, crate::test_data::pseudo_random(len as usize, 9)).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        if !evicted(&file, len) {
            return; // a file system that keeps everything in memory (tmpfs)
        }
        assert!(!is_resident(&file, 0) && !is_resident(&file, len - 1));
        assert!(Sink::open().load(&file, 0, READ_BYTES));
        assert!(is_resident(&file, 0) && is_resident(&file, READ_BYTES as u64 - 1));
        assert!(!is_resident(&file, 10 * len), "past the end");
    }

    #[test]
    fn a_consumer_waits_for_the_reader_to_pass_an_uncached_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 3 * READ_BYTES as u64 + 4096;
        let mut f = File::create(&path).unwrap();
        f.write_all(&crate::test_data::pseudo_random(len as usize, 8)).unwrap();
        f.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        if !evicted(&file, len) {
            return; // a file system that keeps everything in memory (tmpfs)
        }
        let ahead = ReadAhead::start(&file, len);
        let last = len - 4096;
        ahead.consumed(last);
        ahead.wait_for(&file, last, len);
        // Whether the reader got there or the kernel's own read-ahead did, the piece is
        // in the cache when the wait ends.
        assert!(is_cached(&file, last) && is_cached(&file, len - 1), "returned before the piece was cached");
        // Stopped readers release their waiters.
        drop(ahead);
        let idle = ReadAhead::start(&file, len);
        idle.shared.stop.store(true, Ordering::Relaxed);
        evicted(&file, len);
        idle.wait_for(&file, 0, len);
    }
}
