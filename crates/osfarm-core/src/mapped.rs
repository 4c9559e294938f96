//! Image bytes without a copy: a piece of a file mapped into memory, hashed where the
//! page cache holds it.
//!
//! Reading a cached file with pread(2) copies every byte from the page cache into a
//! buffer before the hash reads it again; on this project's machines that copy was 15 % of
//! a one-CPU index run, and 39 % on another host (docs/hashing.md). A mapping hands the
//! hasher the cached pages themselves: the kernel's only work is mapping them, and a file
//! read into the cache through the read path sits in large folios that it maps 2 MiB at
//! a time.
//!
//! A mapped file that shrinks under its reader makes the next access to a page past the
//! new end raise SIGBUS, which would kill the whole process (the Node server with it).
//! So every mapping is registered in a small table while it is read, and a SIGBUS
//! handler turns a fault inside a registered mapping into zero pages plus a mark; the
//! reader then reports that the file changed instead of returning digests of the zeros.
//! Faults anywhere else go to the handler that was there before (or kill as before).
//!
//! Where mapping is not possible (a file system without mmap, no free table slot) the
//! piece is read with pread(2) into the worker's reused buffer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// How a worker reads pieces of one file: mapped, or into its own buffer.
pub(crate) struct PieceReader<'a> {
    file: &'a File,
    path: &'a Path,
    buffer: Vec<u8>,
    map: bool,
}

impl<'a> PieceReader<'a> {
    pub(crate) fn new(file: &'a File, path: &'a Path) -> PieceReader<'a> {
        PieceReader { file, path, buffer: Vec::new(), map: true }
    }

    /// Calls `f` with the `n` bytes of the file at `offset` (all inside the file).
    pub(crate) fn with_piece<R>(&mut self, offset: u64, n: usize, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if self.map && n > 0 {
            match Mapping::new(self.file, offset, n) {
                Some(m) => {
                    let r = f(m.bytes());
                    if m.faulted() {
                        let e = std::io::Error::other("it shrank while it was read; run the command again");
                        return Err(Error::io(self.path, "cannot read", e));
                    }
                    return Ok(r);
                }
                // Unmappable here: this reader reads from now on.
                None => self.map = false,
            }
        }
        if self.buffer.len() < n {
            self.buffer.resize(n, 0);
        }
        let buf = &mut self.buffer[..n];
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io(self.path, "cannot read", e))?;
        Ok(f(buf))
    }
}

/// A read-only shared mapping of part of a file, registered with the SIGBUS guard.
struct Mapping {
    /// Start of the mapping (page-aligned) and its length.
    base: *mut libc::c_void,
    len: usize,
    /// Where the asked-for bytes start inside it.
    lead: usize,
    slot: &'static Slot,
}

impl Mapping {
    /// Maps `n` bytes at `offset`; `None` if the file cannot be mapped or the guard has
    /// no free slot.
    fn new(file: &File, offset: u64, n: usize) -> Option<Mapping> {
        let page = page_size();
        let lead = (offset % page as u64) as usize;
        let len = lead + n;
        // SAFETY: a fresh read-only mapping of an open file; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                (offset - lead as u64) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // The hashers read each piece once, front to back: let a fault on a page not yet
        // cached read well ahead, as the read path would.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base, len, libc::MADV_SEQUENTIAL) };
        match Slot::claim(base as usize, len) {
            Some(slot) => Some(Mapping { base, len, lead, slot }),
            None => {
                // SAFETY: unmapping the mapping just made, never handed out.
                unsafe { libc::munmap(base, len) };
                None
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes from `base` for as long as `self` lives; the guard
        // turns a page lost to truncation into zeros rather than a fault.
        unsafe { std::slice::from_raw_parts((self.base as *const u8).add(self.lead), self.len - self.lead) }
    }

    /// True if a read hit a page past the end of the file (it read zeros there).
    fn faulted(&self) -> bool {
        self.slot.faulted.load(Ordering::SeqCst)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Release the slot first: once unmapped, the range may be mapped again by someone else.
        self.slot.release();
        // SAFETY: the mapping made in `new`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// A registered mapping: [start, end) while in use, start 0 when free.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

/// Mappings read at the same time, all threads and operations together; more wait
/// their turn by reading with pread(2).
const SLOTS: usize = 64;

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { start: AtomicUsize::new(0), end: AtomicUsize::new(0), faulted: AtomicBool::new(false) };
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

impl Slot {
    /// Takes a free slot for [start, start + len): `end` goes from 0 to a placeholder
    /// first, so two threads cannot take the same slot.
    fn claim(start: usize, len: usize) -> Option<&'static Slot> {
        let slot = TABLE
            .iter()
            .find(|s| s.end.compare_exchange(0, usize::MAX, Ordering::SeqCst, Ordering::Relaxed).is_ok())?;
        slot.faulted.store(false, Ordering::SeqCst);
        slot.end.store(start + len, Ordering::SeqCst);
        slot.start.store(start, Ordering::SeqCst);
        Some(slot)
    }

    fn release(&self) {
        self.start.store(0, Ordering::SeqCst);
        self.end.store(0, Ordering::SeqCst);
    }
}

/// The page size, what the SIGBUS handler replaced, read by the handler.
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static PREVIOUS: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREVIOUS_FLAGS: AtomicUsize = AtomicUsize::new(0);

/// Installs the SIGBUS handler, once per process; returns the page size.
fn page_size() -> usize {
    static INSTALLED: OnceLock<usize> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf and sigaction with valid pointers; the statics the handler reads
        // are set before it is installed.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            PAGE.store(page, Ordering::SeqCst);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous);
            PREVIOUS.store(previous.sa_sigaction, Ordering::SeqCst);
            PREVIOUS_FLAGS.store(previous.sa_flags as usize, Ordering::SeqCst);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
            page
        }
    })
}

/// A fault in a registered mapping: map zeros over the rest of it and mark it, so the
/// read completes and its reader reports the change. Anything else: the previous handler.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::SeqCst);
    for slot in &TABLE {
        let start = slot.start.load(Ordering::SeqCst);
        let end = slot.end.load(Ordering::SeqCst);
        if start != 0 && addr >= start && addr < end {
            let from = addr & !(page - 1);
            // SAFETY: replaces pages of the registered mapping only (async-signal-safe mmap).
            let r = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    // SAFETY: forwarding to what was installed before, with the arguments we were given.
    unsafe { previous_handler(sig, info, ctx) }
}

/// Hands a SIGBUS that is not ours to what was installed before.
unsafe fn previous_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let previous = PREVIOUS.load(Ordering::SeqCst);
    let flags = PREVIOUS_FLAGS.load(Ordering::SeqCst) as libc::c_int;
    if previous == libc::SIG_DFL || previous == libc::SIG_IGN {
        // Restore the default action and let it happen: a fault re-raises when the
        // access is retried; a signal sent by someone is raised again.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        if (*info).si_code <= 0 {
            libc::raise(sig);
        }
    } else if flags & libc::SA_SIGINFO != 0 {
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(previous);
        f(sig, info, ctx);
    } else {
        let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous);
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::pseudo_random;

    #[test]
    fn pieces_are_the_file_mapped_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pseudo_random(3 << 20, 3);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut r = PieceReader::new(&file, &path);
        for (offset, n) in [(0, 4096), (4096, 1 << 20), (512, 1000), ((3 << 20) - 10, 10)] {
            let got = r.with_piece(offset, n, |b| b.to_vec()).unwrap();
            assert_eq!(got, &data[offset as usize..offset as usize + n]);
            assert!(r.map, "mapped");
        }
        r.map = false;
        assert_eq!(r.with_piece(512, 1000, |b| b.to_vec()).unwrap(), &data[512..1512]);
        assert!(r.with_piece(3 << 20, 10, |b| b.len()).is_err(), "past the end");
    }

    #[test]
    fn a_file_that_shrinks_under_its_mapping_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, pseudo_random(8 << 20, 4)).unwrap();
        let file = File::open(&path).unwrap();
        let mut r = PieceReader::new(&file, &path);
        let err = r
            .with_piece(1 << 20, 6 << 20, |b| {
                // Someone truncates the image while it is hashed.
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(2 << 20).unwrap();
                crate::hash::HashAlg::Sha1.digest_parts(&[b])
            })
            .unwrap_err();
        assert_eq!(err.code, crate::error::Code::Io);
        assert!(err.message.contains("shrank"), "{}", err.message);
        // The slot is free again and the next piece (inside the file) reads normally.
        assert_eq!(r.with_piece(0, 4096, |b| b.len()).unwrap(), 4096);
    }
}
