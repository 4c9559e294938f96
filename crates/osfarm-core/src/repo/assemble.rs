//! Assembling an image whose whole index is known up front (a pull, a local assemble):
//! the front end of the assembly engine (`assembly`) that plans from the complete index.
//!
//! `fill_from_repository` copies every block the repository holds, `missing` lists the
//! rest, `put_block(s)` accepts them from outside, `finish` publishes like `add`. Every
//! block is checked against its digest in the wanted index before it is written — blocks
//! copied from local images too, since disks rot — and the index's own digests were
//! checked against its image digest when it was parsed, so once every block is present
//! the file is exactly the image the digest names.
//!
//! Resumable assemblies (`AssemblyOptions::resumable`) use `tmp/<digest>.partial` and a
//! `tmp/<digest>.have` bitmap, saved (after an fdatasync of the data) every 64 MiB or 5 s
//! and when the assembler is dropped; a later assembly of the same digest re-verifies the
//! blocks the bitmap claims and continues from there.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::assembly::{self, Assembly, CopyJob, Geometry, Sources, Target, IO_CHUNK};
use super::lock::LockKind;
use super::plan::{self, Run};
use super::{AddOptions, ImageEntry, Repository};
use crate::bail;
use crate::digest_set::{DigestKey, DigestMap};
use crate::error::{Error, Result};
use crate::hash;
use crate::index::Index;
use crate::progress::{self, Progress};

#[derive(Clone, Debug, Default)]
pub struct AssemblyOptions {
    /// Keep `tmp/<digest>.partial` and its `.have` bitmap when the assembler is dropped
    /// unfinished, and continue from them (after re-verifying) on the next assembly.
    pub resumable: bool,
    /// Refuse an index whose image digest (hex) is not this one.
    pub expected_digest: Option<String>,
}

/// What `fill_from_repository` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillReport {
    pub blocks: u64,
    pub bytes: u64,
}

/// An assembly of one image from its index; see the module documentation.
pub struct Assembler {
    repo: Repository,
    index: Arc<Index>,
    hex: String,
    work: Work,
}

enum Work {
    /// The image is already in the repository: nothing to assemble.
    Present(ImageEntry),
    Assembling(Box<Assembly>),
}

impl Repository {
    /// Starts assembling the image `index` describes. If it is already in the repository,
    /// the assembler has nothing to do and `finish` returns the existing entry.
    pub fn begin_assembly(&self, index: Index, opts: AssemblyOptions) -> Result<Assembler> {
        self.check_params(&index)?;
        let hex = index.image_digest_hex();
        if let Some(want) = &opts.expected_digest {
            if !want.eq_ignore_ascii_case(&hex) {
                bail!(DigestMismatch, "the index describes image {hex}, not the expected {want}");
            }
        }
        let geo = Geometry::of(&index)?;
        let present = {
            let lock = self.lock(LockKind::Shared)?;
            let st = self.state(&lock)?;
            st.catalog.by_digest(index.image_digest()).map(|e| self.entry_of(e))
        };
        if let Some(e) = present {
            return Ok(Assembler { repo: self.clone(), index: Arc::new(index), hex, work: Work::Present(e) });
        }
        let busy = format!("another process is assembling image {hex}; wait for it or retry");
        let target = match opts.resumable {
            true => Target::Bitmap { stem: hex.clone(), index: &index, busy: &busy },
            false => Target::Private,
        };
        let needed = (0..geo.block_count).filter(|&i| !index.is_zero_block(i)).map(|i| geo.run_len(i, 1)).sum();
        let engine = Assembly::open(self, geo, "asm", format!("image {hex}"), target, needed)?;
        // Later blocks that repeat an earlier one are written with it.
        let mut first: DigestMap<'_, u64> = DigestMap::default();
        let mut dups = Vec::new();
        for (i, d) in index.iter().enumerate().filter(|(_, d)| !hash::is_zero_digest(d)) {
            let f = *first.entry(DigestKey(d)).or_insert(i as u64);
            if f != i as u64 {
                dups.push((i as u64, f));
            }
        }
        drop(first);
        engine.add_duplicates(dups);
        engine.settle(0, index.digests())?;
        Ok(Assembler { repo: self.clone(), index: Arc::new(index), hex, work: Work::Assembling(Box::new(engine)) })
    }

    /// Assembles an image from the repository's blocks plus the blocks of `source`, a file
    /// holding the image (only the missing ranges are read). Everything is verified.
    pub fn assemble_from_file(
        &self,
        index: Index,
        source: &Path,
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<ImageEntry> {
        let asm = self.begin_assembly(index, AssemblyOptions::default())?;
        if asm.is_complete_image() {
            return asm.finish(opts);
        }
        // Checked before any work: a FIFO would block the open forever.
        let src = crate::fsutil::open_regular(source, "image")?;
        let len = src.metadata().map_err(|e| Error::io(source, "cannot stat", e))?.len();
        if len != asm.index.image_len() {
            bail!(
                Mismatch,
                "{} has {len} bytes but the index describes an image of {} bytes",
                source.display(),
                asm.index.image_len()
            );
        }
        asm.fill_from_repository(progress)?;
        let bs = asm.index.block_size() as u64;
        let per = (IO_CHUNK / bs).max(1);
        let pieces: Vec<Run> = asm
            .missing()
            .into_iter()
            .flat_map(|r| {
                (0..r.count.div_ceil(per))
                    .map(move |k| Run { first: r.first + k * per, count: per.min(r.count - k * per) })
            })
            .collect();
        progress.start(pieces.iter().map(|r| r.count * bs).sum());
        pieces.par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, r| -> Result<()> {
            progress::check(progress)?;
            let start = r.first * bs;
            let n = ((r.first + r.count) * bs).min(len) - start;
            buf.resize(n as usize, 0);
            src.read_exact_at(buf, start).map_err(|e| Error::io(source, "cannot read", e))?;
            asm.put_blocks(r.first, buf)?;
            progress.advance(n);
            Ok(())
        })?;
        asm.finish(opts)
    }
}

impl Assembler {
    fn engine(&self) -> Option<&Assembly> {
        match &self.work {
            Work::Assembling(e) => Some(e),
            Work::Present(_) => None,
        }
    }
    pub fn index(&self) -> &Index {
        &self.index
    }
    pub fn digest_hex(&self) -> &str {
        &self.hex
    }
    /// True if the image was already in the repository when the assembly began.
    pub fn is_complete_image(&self) -> bool {
        matches!(self.work, Work::Present(_))
    }
    pub fn block_count(&self) -> u64 {
        self.index.block_count()
    }
    /// Blocks present so far (zero blocks included).
    pub fn have_blocks(&self) -> u64 {
        self.engine().map_or(self.block_count(), |e| e.have_count())
    }

    /// True if block `n` is recorded as present (always, for a complete image).
    pub fn has_block(&self, n: u64) -> bool {
        self.engine().is_none_or(|e| e.has(n))
    }

    /// Copies every block the repository holds (verifying each), in parallel, in reads of
    /// up to 1 MiB of consecutive source blocks. Holds the shared repository lock meanwhile.
    /// A local block that does not match its digest is a `BadRepository` error: the
    /// repository is damaged there (`osfarm repo verify`).
    pub fn fill_from_repository(&self, progress: &dyn Progress) -> Result<FillReport> {
        let Some(engine) = self.engine() else { return Ok(FillReport::default()) };
        let lock = self.repo.lock(LockKind::Shared)?;
        let st = self.repo.state(&lock)?;
        let located = plan::locate(&self.repo, &st, &self.index)?;
        // (slot, source block, destination block) for every block still wanted.
        let mut wanted: Vec<(u32, u32, u64)> = located
            .iter()
            .enumerate()
            .filter(|&(i, &loc)| loc < u64::MAX - 1 && !engine.has(i as u64))
            .map(|(i, &loc)| ((loc >> 32) as u32, loc as u32, i as u64))
            .collect();
        wanted.sort_unstable();
        let mut jobs: Vec<CopyJob> = Vec::new();
        for &(slot, src, dst) in &wanted {
            assembly::add_copy(&mut jobs, engine.geometry(), slot, src as u64, dst, self.index.digest(dst));
        }
        let mut sources = Sources::default();
        sources.open(&self.repo, &st.catalog, jobs.iter().map(|j| j.slot))?;
        engine.copy(&jobs, &sources, progress)?;
        drop(lock);
        // After a resume: repeats of a block present; one that no longer reads back right
        // is cleared and listed by `missing` again.
        engine.fill_duplicates(self.index.digests())?;
        let bytes = wanted.iter().map(|w| self.index.block_len(w.2) as u64).sum();
        Ok(FillReport { blocks: wanted.len() as u64, bytes })
    }

    /// The blocks still to be supplied, coalesced into runs. Blocks that repeat an earlier
    /// block of the image are not listed: they are written with their first occurrence.
    pub fn missing(&self) -> Vec<Run> {
        self.engine().map_or_else(Vec::new, |e| e.missing())
    }

    /// Verifies block `n` against its digest and writes it (and every later block with the
    /// same digest). Returns false if it was already present. A wrong block is a
    /// `DigestMismatch` error and changes nothing.
    pub fn put_block(&self, n: u64, data: &[u8]) -> Result<bool> {
        if n >= self.index.block_count() && !self.is_complete_image() {
            bail!(
                InvalidArgument,
                "block {n} is beyond the last block {} of image {}",
                self.index.block_count().saturating_sub(1),
                self.hex
            );
        }
        self.put_blocks(n, data).map(|added| added > 0)
    }

    /// Verifies and writes consecutive blocks starting at `first` (`data` is their
    /// concatenation; only the image's last block may be short). All are verified before
    /// any is written. Returns how many were new.
    pub fn put_blocks(&self, first: u64, data: &[u8]) -> Result<u64> {
        let Some(engine) = self.engine() else { return Ok(0) };
        let bs = self.index.block_size() as u64;
        let count = (data.len() as u64).div_ceil(bs);
        let Some(end) = first.checked_add(count).filter(|&e| e <= self.index.block_count()) else {
            bail!(InvalidArgument, "blocks {first}..{} are beyond the end of image {}", first + count, self.hex);
        };
        let dl = self.index.alg().len() as u64;
        engine.put(first, data, &self.index.digests()[(first * dl) as usize..(end * dl) as usize])
    }

    /// Writes the resumable bitmap now (no-op for non-resumable assemblies).
    pub fn flush(&self) -> Result<()> {
        self.engine().map_or(Ok(()), |e| e.flush())
    }

    /// Checks that every block is present, then publishes the image (data, index,
    /// metadata) into the repository and its block table, atomically.
    pub fn finish(&self, opts: &AddOptions) -> Result<ImageEntry> {
        super::check_tags(&opts.tags)?;
        super::check_meta(opts.meta_json.as_deref())?;
        match &self.work {
            Work::Present(e) => assembly::existing_tagged(&self.repo, e, &opts.tags),
            Work::Assembling(engine) => engine.publish(&self.index, opts),
        }
    }

    /// Gives up: discards the partial data, resumable or not.
    pub fn abort(&self) {
        if let Some(e) = self.engine() {
            e.abort(true);
        }
    }
}
