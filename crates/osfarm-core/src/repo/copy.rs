//! Bringing an image file into the repository: reflink when the file system can
//! (`FICLONE`: instant, shares extents), otherwise one parallel pass that reads each
//! chunk once, hashes its blocks and writes the non-zero ones (all-zero blocks stay holes).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::hash;
use crate::index::{block_count_for, Index};
use crate::indexer::{self, IndexOptions};
use crate::progress::{self, Progress};

const CHUNK_BYTES: u64 = 1 << 20;

/// Copies `src` to the new file `dst` and returns the index of the copy (what was
/// written, not what `src` holds now). `dst` is fsynced.
pub(crate) fn copy_and_index(src: &Path, dst: &Path, opts: IndexOptions, progress: &dyn Progress) -> Result<Index> {
    let sfile = fsutil::open_regular(src, "image")?;
    let meta = sfile.metadata().map_err(|e| Error::io(src, "cannot stat image", e))?;
    let dfile = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io(dst, "cannot create", e))?;
    if reflink(&sfile, &dfile) {
        drop(sfile);
        dfile.sync_all().map_err(|e| Error::io(dst, "cannot sync", e))?;
        return indexer::index_file(dst, opts, progress);
    }
    let len = meta.len();
    dfile.set_len(len).map_err(|e| Error::io(dst, "cannot size", e))?;
    progress.start(len);
    let dlen = opts.alg.len();
    let bs = opts.block_size as u64;
    let chunk = CHUNK_BYTES.max(bs);
    let per_chunk = (chunk / bs) as usize;
    let mut digests = vec![0u8; block_count_for(len, opts.block_size) as usize * dlen];
    let half = len.div_ceil(chunk) / 2;
    digests.par_chunks_mut(per_chunk * dlen).enumerate().try_for_each_init(
        || vec![0u8; chunk as usize],
        |buf, (i, out)| -> Result<()> {
            progress::check(progress)?;
            let offset = i as u64 * chunk;
            let n = (len - offset).min(chunk) as usize;
            sfile.read_exact_at(&mut buf[..n], offset).map_err(|e| Error::io(src, "cannot read image", e))?;
            opts.alg.block_digests(&buf[..n], bs as usize, out);
            // Write maximal runs of non-zero blocks; zero blocks are left as holes.
            let mut run_start: Option<usize> = None;
            for (b, digest) in out.chunks_exact(dlen).enumerate() {
                let zero = hash::is_zero_digest(digest);
                match (zero, run_start) {
                    (false, None) => run_start = Some(b),
                    (true, Some(s)) => {
                        write_run(&dfile, dst, &buf[s * bs as usize..b * bs as usize], offset + s as u64 * bs)?;
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run_start {
                write_run(&dfile, dst, &buf[s * bs as usize..n], offset + s as u64 * bs)?;
            }
            progress.advance(n as u64);
            match i as u64 {
                0 => super::crash_point("add:copy-started"),
                x if x == half => super::crash_point("add:copy-half"),
                _ => {}
            }
            Ok(())
        },
    )?;
    let now = std::fs::metadata(src).map_err(|e| Error::io(src, "cannot stat image", e))?.len();
    if now != len {
        return Err(Error::io(src, "cannot add", std::io::Error::other("the file changed size while it was copied")));
    }
    dfile.sync_all().map_err(|e| Error::io(dst, "cannot sync", e))?;
    Index::from_digests(opts.alg, opts.block_size, len, digests)
}

fn write_run(f: &File, path: &Path, data: &[u8], offset: u64) -> Result<()> {
    f.write_all_at(data, offset).map_err(|e| Error::io(path, "cannot write", e))
}

/// Tries a copy-on-write clone of the whole file; false if the file system cannot.
pub(crate) fn reflink(src: &File, dst: &File) -> bool {
    // SAFETY: FICLONE takes two descriptors we own.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

/// Deallocates a byte range so it reads as zeros (for zero blocks); falls back to
/// writing zeros where the file system cannot punch holes.
pub(crate) fn zero_range(f: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    // SAFETY: fallocate takes a descriptor we own and integers.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at).map_err(|e| Error::io(path, "cannot write", e))?;
        at += n as u64;
    }
    Ok(())
}
