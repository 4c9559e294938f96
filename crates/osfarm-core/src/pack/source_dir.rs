//! Directory input: a deterministic walk of a tree.
//!
//! Order: the root first, then each directory's entries sorted by the bytes of their
//! names, depth first (a directory right before its contents), which is what
//! `tar --sort=name -C dir .` gives. Hard links are found by (device, inode) among
//! non-directories with more than one link: the first in this order is stored as the
//! file, the later ones as links to it. Sockets are skipped and counted. The walk stays
//! on the root's file system (like `tar --one-file-system`): a mount point is stored as
//! a directory, without what is mounted on it, so a forgotten `/proc` or `/dev` bind
//! mount in a build chroot never ends up in an image. The holes of a sparse file are
//! found with `SEEK_DATA`/`SEEK_HOLE` and never read: they become holes of the archive.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, DirEntry, File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Code, Error, Result};
use crate::progress::{self, Progress};

use super::paths;
use super::writer::{AlignedWriter, Entry, Kind, Output, PaxRecords};
use super::COPY_BUFFER;

/// Packs the tree at `root` into `w`; returns the bytes of file data read.
pub fn pack_dir<W: Output>(root: &Path, w: &mut AlignedWriter<W>, progress: &dyn Progress) -> Result<u64> {
    let root = &fs::canonicalize(root).map_err(|e| Error::io(root, "cannot resolve", e))?;
    // A first, metadata-only walk gives the progress total: the bytes that will be read.
    let mut total = 0u64;
    let mut seen_inodes = std::collections::HashSet::new();
    walk(root, &mut |_, _, meta| {
        if meta.file_type().is_file() && (meta.nlink() == 1 || seen_inodes.insert((meta.dev(), meta.ino()))) {
            total += meta.len();
        }
        progress::check(progress)
    })?;
    progress.start(total);

    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut read = 0u64;
    walk(root, &mut |full, rel, meta| {
        progress::check(progress)?;
        let ft = meta.file_type();
        if ft.is_socket() {
            w.note_skipped();
            return Ok(());
        }
        let mut e = Entry {
            path: rel.to_vec(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid() as u64,
            gid: meta.gid() as u64,
            mtime: meta.mtime(),
            ..Default::default()
        };
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                e.kind = Kind::HardLink;
                e.link = first.clone();
                return w.begin(&e);
            }
            links.insert((meta.dev(), meta.ino()), rel.to_vec());
        }
        e.extra = read_xattrs(full)?;
        if ft.is_dir() {
            e.kind = Kind::Dir;
        } else if ft.is_symlink() {
            e.kind = Kind::Symlink;
            e.link = fs::read_link(full)
                .map_err(|err| Error::io(full, "cannot read symlink", err))?
                .into_os_string()
                .into_vec();
        } else if ft.is_char_device() || ft.is_block_device() {
            e.kind = if ft.is_char_device() { Kind::CharDevice } else { Kind::BlockDevice };
            e.dev_major = libc::major(meta.rdev());
            e.dev_minor = libc::minor(meta.rdev());
        } else if ft.is_fifo() {
            e.kind = Kind::Fifo;
        } else {
            e.kind = Kind::File;
            e.size = meta.len();
            // Open before writing the header, so an unreadable file fails cleanly.
            let file = if e.size > 0 { Some(open_nofollow(full)?) } else { None };
            w.begin(&e)?;
            if let Some(file) = file {
                // Fewer bytes allocated than the length: the file has holes.
                let sparse = meta.blocks() * 512 < meta.len();
                copy_file(&file, full, e.size, sparse, w, &mut buf, progress)?;
                read += e.size;
            }
            return Ok(());
        }
        w.begin(&e)
    })?;
    Ok(read)
}

/// Opens a regular file for reading without following a symlink swapped in after the walk.
fn open_nofollow(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(path, "cannot open", e))
}

/// Copies `size` bytes of `file` into the archive. For a `sparse` file only the data
/// extents are read; the holes between them go to the archive as zeros, which its file
/// leaves as holes, so a 20 GiB sparse disk image costs what its data costs.
fn copy_file<W: Output>(
    file: &File,
    path: &Path,
    size: u64,
    sparse: bool,
    w: &mut AlignedWriter<W>,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> Result<()> {
    let changed = |now: u64| {
        Error::new(Code::Io, format!("{} changed size from {size} to {now} bytes while it was packed", path.display()))
    };
    let mut at = 0;
    while at < size {
        let (data, end) = if sparse { extent(file, path, at)? } else { (at, u64::MAX) };
        let (data, end) = (data.min(size), end.min(size));
        if data > at {
            w.write_zero_data(data - at)?;
            progress.advance(data - at);
            at = data;
            progress::check(progress)?;
            continue;
        }
        if end <= at {
            return Err(changed(file.metadata().map_or(at, |m| m.len())));
        }
        while at < end {
            let want = (end - at).min(buf.len() as u64) as usize;
            let n = match file.read_at(&mut buf[..want], at) {
                Ok(0) => return Err(changed(at)),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(path, "cannot read", e)),
            };
            w.write_data(&buf[..n])?;
            at += n as u64;
            progress.advance(n as u64);
            if at < size {
                progress::check(progress)?;
            }
        }
    }
    if sparse {
        // Holes are not read, so a file that shrank would go unnoticed without this.
        let now = file.metadata().map_err(|e| Error::io(path, "cannot stat", e))?.len();
        if now != size {
            return Err(changed(now));
        }
    }
    Ok(())
}

/// The data extent at or after `at`: (its start, its end), or (end of file, end of file)
/// when only a hole is left.
fn extent(file: &File, path: &Path, at: u64) -> Result<(u64, u64)> {
    let seek = |whence: libc::c_int, from: u64| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; the offset only steers the next lseek.
        let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data (or no hole) at or after `from`: only the end of the file is left.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let err = |e| Error::io(path, "cannot find the data of", e);
    let Some(data) = seek(libc::SEEK_DATA, at).map_err(err)? else { return Ok((u64::MAX, u64::MAX)) };
    let hole = seek(libc::SEEK_HOLE, data).map_err(err)?.unwrap_or(data);
    Ok((data, hole))
}

/// What [`walk`] calls for each entry: full path, relative path, metadata (not followed).
type Visit<'a> = dyn FnMut(&Path, &[u8], &Metadata) -> Result<()> + 'a;

/// One directory's entries, sorted by name.
type Listing = Vec<(OsString, DirEntry)>;

/// Calls `f(full_path, relative_path, metadata)` for the root and every entry below it,
/// in the documented order. Symlinks are not followed (except `root` itself), and
/// directories on another file system than the root are not entered.
fn walk(root: &Path, f: &mut Visit<'_>) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| Error::io(root, "cannot read", e))?;
    f(root, b"", &meta)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let root_dev = meta.dev();
    let mut full: PathBuf = root.to_path_buf();
    let mut rel: Vec<u8> = Vec::new();
    // One sorted listing per open directory level, with the next index to visit.
    let mut stack: Vec<(Listing, usize, usize)> = vec![(list_sorted(&full)?, 0, 0)];
    while let Some((list, next, rel_len)) = stack.last_mut() {
        if *next == list.len() {
            let rel_len = *rel_len;
            stack.pop();
            full.pop();
            rel.truncate(rel_len);
            continue;
        }
        let (name, dirent) = &list[*next];
        *next += 1;
        let meta = dirent.metadata().map_err(|e| Error::io(&full.join(name), "cannot stat", e))?;
        let parent_len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        full.push(name);
        f(&full, &rel, &meta)?;
        if meta.is_dir() && meta.dev() == root_dev {
            let children = list_sorted(&full)?;
            stack.push((children, 0, parent_len));
        } else {
            full.pop();
            rel.truncate(parent_len);
        }
    }
    Ok(())
}

fn list_sorted(dir: &Path) -> Result<Listing> {
    let mut v = Vec::new();
    for d in fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list", e))? {
        let d = d.map_err(|e| Error::io(dir, "cannot list", e))?;
        v.push((d.file_name(), d));
    }
    v.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v)
}

/// The extended attributes of `path` (not following a symlink), as pax
/// `SCHILY.xattr.<name>` records, sorted by name.
pub(crate) fn read_xattrs(path: &Path) -> Result<PaxRecords> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new(Code::InvalidArgument, format!("{} contains a NUL byte", path.display())))?;
    let mut names = vec![0u8; 256];
    let len = loop {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => {
                // SAFETY: a null buffer with size 0 asks only for the needed size.
                let need = unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
                names.resize((need.max(0) as usize).max(names.len() * 2), 0);
            }
            Some(libc::ENOTSUP) | Some(libc::ENOSYS) => return Ok(Vec::new()),
            _ => return Err(Error::io(path, "cannot list extended attributes of", err)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.contains(&b'=') || name.contains(&b'%') || name.contains(&b'\n') {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "{}: extended attribute name '{}' cannot be stored in tar",
                    path.display(),
                    paths::display(name)
                ),
            ));
        }
        let value = get_xattr(&cpath, path, name)?;
        let Some(value) = value else { continue }; // removed since it was listed
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        out.push((key, value));
    }
    out.sort();
    Ok(out)
}

fn get_xattr(cpath: &CString, path: &Path, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let cname = CString::new(name).expect("split on NUL");
    let mut value = vec![0u8; 256];
    loop {
        // SAFETY: as above, the buffer is live and writable for its length.
        let n = unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if n >= 0 {
            value.truncate(n as usize);
            return Ok(Some(value));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => {
                // SAFETY: a null buffer with size 0 asks only for the needed size.
                let need = unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
                value.resize((need.max(0) as usize).max(value.len() * 2), 0);
            }
            Some(libc::ENODATA) => return Ok(None),
            _ => {
                return Err(Error::io(
                    path,
                    &format!("cannot read extended attribute {} of", paths::display(name)),
                    err,
                ))
            }
        }
    }
}
