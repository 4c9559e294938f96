//! Copies of blocks the repository already holds into the image being assembled. Each
//! job is one read of consecutive source blocks, verified block by block against the
//! digests the new image needs, then written. The write is where a reflink
//! (`FICLONERANGE`, when source and destination share a file system) would take its
//! place later, after the same check: a clone of a damaged block would be as wrong as a
//! copy.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use super::{verify, Assembly, Geometry, IO_CHUNK};
use crate::bail;
use crate::error::{Error, Result};
use crate::progress::{self, Progress};
use crate::repo::catalog::Catalog;
use crate::repo::{table, Repository, IMAGE_FILE};

/// A copy of consecutive blocks from a repository image.
pub(in crate::repo) struct CopyJob {
    pub(in crate::repo) slot: u32,
    pub(in crate::repo) src_block: u64,
    pub(in crate::repo) dst_block: u64,
    pub(in crate::repo) count: u64,
    /// The digests the copied blocks must have.
    pub(in crate::repo) digests: Vec<u8>,
}

/// Adds block `dst`, copied from block `src` of the image in `slot`, to the last job if
/// it continues both runs (up to `IO_CHUNK`), else as a new job.
pub(in crate::repo) fn add_copy(jobs: &mut Vec<CopyJob>, geo: &Geometry, slot: u32, src: u64, dst: u64, digest: &[u8]) {
    let continues = jobs.last().is_some_and(|j| {
        j.slot == slot
            && j.src_block + j.count == src
            && j.dst_block + j.count == dst
            && (j.count + 1) * geo.bs() <= IO_CHUNK
    });
    if !continues {
        jobs.push(CopyJob { slot, src_block: src, dst_block: dst, count: 0, digests: Vec::new() });
    }
    let j = jobs.last_mut().expect("a job was just pushed");
    j.count += 1;
    j.digests.extend_from_slice(digest);
}

/// Repository images open for copying from, by slot.
#[derive(Default)]
pub(in crate::repo) struct Sources(HashMap<u32, (File, String)>);

impl Sources {
    /// Opens the images of `slots` that are not open yet.
    pub(in crate::repo) fn open(
        &mut self,
        repo: &Repository,
        catalog: &Catalog,
        slots: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        for slot in slots {
            if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(slot) {
                let e = catalog.by_slot(slot).ok_or_else(|| table::inconsistent("unknown slot"))?;
                let p = repo.image_dir(&e.digest_hex()).join(IMAGE_FILE);
                let f = File::open(&p).map_err(|err| Error::io(&p, "cannot open repository image", err))?;
                v.insert((f, e.digest_hex()));
            }
        }
        Ok(())
    }
}

impl Assembly {
    /// Copies blocks from repository images in parallel, one read per job, verifying
    /// every block: a local block that does not match its digest is `BadRepository` (the
    /// image is damaged on disk), not the fault of whoever supplies the other blocks.
    pub(in crate::repo) fn copy(&self, jobs: &[CopyJob], sources: &Sources, progress: &dyn Progress) -> Result<()> {
        self.check_live()?;
        progress.start(jobs.iter().map(|j| self.geo.run_len(j.dst_block, j.count)).sum());
        jobs.par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, j| -> Result<()> {
            progress::check(progress)?;
            self.check_live()?;
            let (src, src_hex) = sources.0.get(&j.slot).ok_or_else(|| table::inconsistent("unknown slot"))?;
            let len = self.geo.run_len(j.dst_block, j.count);
            buf.resize(len as usize, 0);
            src.read_exact_at(buf, j.src_block * self.geo.bs())
                .map_err(|e| Error::io(Path::new(src_hex), "cannot read repository image", e))?;
            if let Some(bad) = verify::first_mismatch(&self.geo, j.dst_block, buf, &j.digests) {
                bail!(
                    BadRepository,
                    "block {} of repository image {src_hex} does not match its digest: the image is damaged on disk \
                     (run `osfarm repo verify`, then remove it and add it again); nothing was published",
                    j.src_block + (bad - j.dst_block)
                );
            }
            self.write_run(j.dst_block, buf, &j.digests)?;
            self.mark(j.dst_block..j.dst_block + j.count, len)?;
            progress.advance(len);
            Ok(())
        })
    }
}
