//! File-system helpers: atomic publication (temp file, fsync, rename, fsync directory),
//! and opening the files osfarm reads as images or indexes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bail;
use crate::error::{Error, Result};

/// Opens a file osfarm reads as `what` ("image", "index"), refusing anything but a
/// regular file before reading a byte: a FIFO blocks the open or the reads forever, and a
/// device reads as empty or endless. The open itself does not block (`O_NONBLOCK`, which
/// is cleared again before the file is returned).
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, &format!("cannot open {what}"), e))?;
    let ft = file.metadata().map_err(|e| Error::io(path, &format!("cannot stat {what}"), e))?.file_type();
    if !ft.is_file() {
        let (kind, hint) = match () {
            _ if ft.is_dir() => ("a directory", " (osfarm pack makes an image of a directory)"),
            _ if ft.is_fifo() => ("a FIFO", ""),
            _ if ft.is_char_device() => ("a character device", ""),
            _ if ft.is_block_device() => ("a block device", " (copy it into a file first)"),
            _ => ("a special file", ""),
        };
        bail!(
            InvalidArgument,
            "{} is {kind}, not a regular file: osfarm reads {what}s from regular files{hint}",
            path.display()
        );
    }
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let cleared = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(Error::io(path, &format!("cannot open {what}"), std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// A temporary path next to `path`, unique within this process and across processes.
pub fn temp_path_for(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{seq}", std::process::id()))
}

/// Flushes a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "cannot sync directory", e))
}

/// Writes a file so that readers see either the old content or the complete new one,
/// never a partial file, even if the process is killed or the machine crashes.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    create_atomic(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        w.into_inner().map_err(|e| Error::io(path, "cannot write", e.into_error()))
    })
}

/// [`write_atomic`] for writers that need the file itself (to write at offsets and leave
/// holes): `write` gets the new, empty temp file and gives it back complete.
pub fn create_atomic(path: &Path, write: impl FnOnce(File) -> Result<File>) -> Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, "cannot create", e))?;
        let file = write(file)?;
        file.sync_all().map_err(|e| Error::io(&tmp, "cannot sync", e))?;
        publish(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Bytes free for unprivileged writers on the file system holding `path` (what `df`
/// shows as available).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::new(crate::error::Code::InvalidArgument, format!("{} has a NUL byte", path.display())))?;
    // SAFETY: statvfs reads a NUL-terminated path and fills the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(path, "cannot read the free space of", std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// True for a write that failed because the file system (or a quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Renames a finished temp file or directory into place and makes the rename durable.
pub fn publish(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| Error::io(path, "cannot publish", e))?;
    sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn only_regular_files_open_as_images() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO without a writer would block a plain open forever.
        for (path, kind) in [
            (&fifo, "a FIFO"),
            (&PathBuf::from("/dev/zero"), "a character device"),
            (&dir.path().to_path_buf(), "a directory"),
        ] {
            let err = open_regular(path, "image").unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{err}");
            assert!(err.message.contains(kind) && err.message.contains("not a regular file"), "{err}");
        }
        let file = dir.path().join("f");
        fs::write(&file, b"data").unwrap();
        let f = open_regular(&file, "image").unwrap();
        // SAFETY: fcntl on a descriptor we own.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK, 0, "blocking again");
        assert_eq!(open_regular(&dir.path().join("missing"), "index").unwrap_err().code, Code::NotFound);
    }
}
