//! Advisory `flock(2)` locks, a small safe wrapper: the repository lock (`<repo>/lock`),
//! the owner locks that mark temporary directories and partial assemblies as in use, and
//! (through the binding) the stage store's build and GC locks.
//!
//! A lock is released when its `FileLock` is dropped (the descriptor is closed) or when
//! the process dies, however it dies: that is what makes a killed process harmless.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Code, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Many readers at once (list, plan, reading blocks of local images).
    Shared,
    /// One writer, and no reader (add, remove, commit of an assembly, rebuild).
    Exclusive,
}

/// Opens `path` for reading and writing, creating it empty if absent and keeping its
/// contents otherwise (lock files, resumable partials and their records).
pub(crate) fn open_keeping(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

/// A held lock on an open file.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Locks `path` (created if absent). With `wait`, blocks until the lock is granted;
    /// without, fails at once with `Code::Locked` if another holder conflicts.
    pub fn acquire(path: &Path, kind: LockKind, wait: bool, what: &str) -> Result<FileLock> {
        let file = open_keeping(path).map_err(|e| Error::io(path, "cannot open lock file", e))?;
        match try_flock(&file, kind, wait) {
            Ok(true) => Ok(FileLock { file }),
            Ok(false) => Err(Error::new(
                Code::Locked,
                format!("{what} is locked by another process ({}); wait for it to finish or retry", path.display()),
            )),
            Err(e) => Err(Error::io(path, "cannot lock", e)),
        }
    }

    /// Locks `path` (created if absent) without waiting: `None` if another holder conflicts.
    pub fn try_acquire(path: &Path, kind: LockKind) -> Result<Option<FileLock>> {
        let file = open_keeping(path).map_err(|e| Error::io(path, "cannot open lock file", e))?;
        FileLock::on_file(file, kind, false).map_err(|e| Error::io(path, "cannot lock", e))
    }

    /// Locks an already open file.
    pub fn on_file(file: File, kind: LockKind, wait: bool) -> std::io::Result<Option<FileLock>> {
        Ok(if try_flock(&file, kind, wait)? { Some(FileLock { file }) } else { None })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Returns Ok(false) if the lock is held elsewhere and `wait` is false.
fn try_flock(file: &File, kind: LockKind, wait: bool) -> std::io::Result<bool> {
    let mut op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock only takes a descriptor we own and an integer.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// True if some live process holds a lock on `path`: tries a non-blocking exclusive lock
/// and releases it at once. A missing file counts as not held.
pub fn is_held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(try_flock(&f, LockKind::Exclusive, false), Ok(false)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped_and_shared_shares() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub.lock");
        let held = FileLock::try_acquire(&path, LockKind::Exclusive).unwrap().expect("free lock");
        // Another open file description conflicts, even in the same process.
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive).unwrap().is_none());
        assert!(FileLock::try_acquire(&path, LockKind::Shared).unwrap().is_none());
        assert!(is_held(&path));
        drop(held);
        assert!(!is_held(&path));
        let a = FileLock::try_acquire(&path, LockKind::Shared).unwrap().expect("shared");
        let b = FileLock::try_acquire(&path, LockKind::Shared).unwrap().expect("shared twice");
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive).unwrap().is_none());
        drop((a, b));
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive).unwrap().is_some());
    }

    #[test]
    fn a_lock_in_a_missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileLock::try_acquire(&dir.path().join("no/such/dir/x.lock"), LockKind::Exclusive).unwrap_err();
        assert_eq!(err.code, Code::NotFound);
    }
}
