//! Assembling a new image in the repository from blocks it already holds plus blocks
//! supplied from outside (a file, or the network), verifying every block.
//!
//! An `Assembler` writes into a private file sized to the image (unwritten ranges are
//! holes, which is exactly what all-zero blocks need) and keeps a "have" bitmap. Every
//! block is checked against its digest in the wanted index before it is written — blocks
//! copied from local images too, since disks rot — and the index's own digests were
//! checked against its image digest when it was parsed, so once every block is present
//! the file is exactly the image the digest names. `finish` then publishes it like `add`.
//!
//! Resumable assemblies (`AssemblyOptions::resumable`) use `tmp/<digest>.partial` and
//! `tmp/<digest>.have`; the bitmap is written (after an fdatasync of the data) every
//! 64 MiB or 5 s and when the assembler is dropped, and a later assembly of the same
//! digest re-verifies the blocks the bitmap claims and continues from there.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::catalog::CatalogEntry;
use super::checksum::checksum64;
use super::copy;
use super::lock::{FileLock, LockKind};
use super::plan::{self, Run};
use super::{AddOptions, ImageEntry, Repository, Workspace, IMAGE_FILE};
use crate::bail;
use crate::digest_set::{DigestKey, DigestMap};
use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::hash::{self, MAX_DIGEST_LEN};
use crate::index::Index;
use crate::progress::{self, Progress};

/// Largest single read or write while copying.
const IO_CHUNK: u64 = 1 << 20;
const FLUSH_BYTES: u64 = 64 << 20;
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
const HAVE_MAGIC: [u8; 8] = *b"\x89OSFH\r\n\x1a";
const HAVE_VERSION: u32 = 1;
const HAVE_HEADER_LEN: usize = 56;

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

struct Progressed {
    have: Vec<u64>,
    have_count: u64,
    dirty_bytes: u64,
    last_flush: Instant,
}

impl Progressed {
    fn has(&self, i: u64) -> bool {
        self.have[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) -> bool {
        let w = &mut self.have[(i / 64) as usize];
        let bit = 1 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.have_count += new as u64;
        new
    }
    fn clear(&mut self, i: u64) {
        let w = &mut self.have[(i / 64) as usize];
        let bit = 1 << (i % 64);
        self.have_count -= (*w & bit != 0) as u64;
        *w &= !bit;
    }
}

/// A streaming assembly of one image; see the module documentation.
pub struct Assembler {
    repo: Repository,
    index: Arc<Index>,
    hex: String,
    /// Set when the image is already in the repository: nothing to assemble.
    existing: Option<ImageEntry>,
    /// The data file, locked by this assembler.
    data: Option<FileLock>,
    data_path: PathBuf,
    have_path: Option<PathBuf>,
    /// Non-resumable assemblies live in a private tmp directory.
    workspace: Mutex<Option<Workspace>>,
    state: Mutex<Progressed>,
    /// First block of a digest -> later blocks with the same digest.
    dups: HashMap<u64, Vec<u64>>,
    /// Later block -> first block with its digest.
    dup_of: HashMap<u64, u64>,
    done: AtomicBool,
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
        if index.block_count() > u32::MAX as u64 {
            bail!(InvalidArgument, "images of more than 2^32 blocks are not supported");
        }
        let n = index.block_count();
        let mut state = Progressed {
            have: vec![0; n.div_ceil(64) as usize],
            have_count: 0,
            dirty_bytes: 0,
            last_flush: Instant::now(),
        };
        let mut asm = Assembler {
            repo: self.clone(),
            hex: hex.clone(),
            existing: None,
            data: None,
            data_path: PathBuf::new(),
            have_path: None,
            workspace: Mutex::new(None),
            state: Mutex::new(Progressed {
                have: Vec::new(),
                have_count: 0,
                dirty_bytes: 0,
                last_flush: Instant::now(),
            }),
            dups: HashMap::new(),
            dup_of: HashMap::new(),
            done: AtomicBool::new(false),
            index: Arc::new(index),
        };
        {
            let lock = self.lock(LockKind::Shared)?;
            let st = self.state(&lock)?;
            if let Some(e) = st.catalog.by_digest(asm.index.image_digest()) {
                asm.existing = Some(self.entry_of(e));
                asm.done.store(true, Ordering::Relaxed);
                return Ok(asm);
            }
            drop(lock);
        }
        let mut resumed = false;
        if opts.resumable {
            let tmp = self.tmp_dir();
            fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
            let path = tmp.join(format!("{hex}.partial"));
            let have_path = tmp.join(format!("{hex}.have"));
            let data =
                lock_partial(&path, &format!("another process is assembling image {hex}; wait for it or retry"))?;
            let len = data.file().metadata().map_err(|e| Error::io(&path, "cannot stat", e))?.len();
            if let Some(bits) = read_have(&have_path, &asm.index).filter(|_| len == asm.index.image_len()) {
                state.have_count = bits.iter().map(|w| w.count_ones() as u64).sum();
                state.have = bits;
                resumed = true;
            } else {
                // No trustworthy record of what the file holds: start it afresh.
                data.file().set_len(0).map_err(|e| Error::io(&path, "cannot truncate", e))?;
            }
            data.file().set_len(asm.index.image_len()).map_err(|e| Error::io(&path, "cannot size", e))?;
            asm.data = Some(data);
            asm.data_path = path;
            asm.have_path = Some(have_path);
        } else {
            let (ws, data, path) = self.private_image_file("asm", asm.index.image_len())?;
            asm.data = Some(data);
            asm.data_path = path;
            *asm.workspace.lock().unwrap() = Some(ws);
        }
        // Duplicate blocks within the wanted image.
        let mut first: DigestMap<'_, u64> = DigestMap::default();
        for (i, d) in asm.index.iter().enumerate() {
            let i = i as u64;
            if hash::is_zero_digest(d) {
                continue;
            }
            let f = *first.entry(DigestKey(d)).or_insert(i);
            if f != i {
                asm.dups.entry(f).or_default().push(i);
                asm.dup_of.insert(i, f);
            }
        }
        drop(first);
        if resumed {
            asm.reverify(&mut state)?;
        }
        // Zero blocks are holes: present from the start (re-checked above when resuming).
        for i in 0..n {
            if asm.index.is_zero_block(i) {
                state.set(i);
            }
        }
        state.dirty_bytes = 0;
        *asm.state.lock().unwrap() = state;
        Ok(asm)
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
        asm.fill_from_repository(progress)?;
        let src = File::open(source).map_err(|e| Error::io(source, "cannot open", e))?;
        let len = src.metadata().map_err(|e| Error::io(source, "cannot stat", e))?.len();
        if len != asm.index.image_len() {
            bail!(
                Mismatch,
                "{} has {len} bytes but the index describes an image of {} bytes",
                source.display(),
                asm.index.image_len()
            );
        }
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
    pub fn index(&self) -> &Index {
        &self.index
    }
    pub fn digest_hex(&self) -> &str {
        &self.hex
    }
    /// True if the image was already in the repository when the assembly began.
    pub fn is_complete_image(&self) -> bool {
        self.existing.is_some()
    }
    pub fn block_count(&self) -> u64 {
        self.index.block_count()
    }
    /// Blocks present so far (zero blocks included).
    pub fn have_blocks(&self) -> u64 {
        if self.existing.is_some() {
            return self.block_count();
        }
        self.state.lock().unwrap().have_count
    }

    fn file(&self) -> Result<&File> {
        match &self.data {
            Some(d) if !self.done.load(Ordering::Relaxed) => Ok(d.file()),
            _ => bail!(InvalidArgument, "the assembly of image {} is finished or aborted", self.hex),
        }
    }

    /// Copies every block the repository holds (verifying each), in parallel, in reads of
    /// up to 1 MiB of consecutive source blocks. Holds the shared repository lock meanwhile.
    /// A local block that does not match its digest is a `DigestMismatch` error: the
    /// repository is damaged there (`osfarm repo verify`).
    pub fn fill_from_repository(&self, progress: &dyn Progress) -> Result<FillReport> {
        if self.existing.is_some() {
            return Ok(FillReport::default());
        }
        let file = self.file()?;
        let lock = self.repo.lock(LockKind::Shared)?;
        let st = self.repo.state(&lock)?;
        let located = plan::locate(&self.repo, &st, &self.index)?;
        let bs = self.index.block_size() as u64;
        let per = (IO_CHUNK / bs).max(1);
        // (slot, source block, destination block) for every block still wanted.
        let mut wanted: Vec<(u32, u32, u64)> = {
            let s = self.state.lock().unwrap();
            located
                .iter()
                .enumerate()
                .filter(|&(i, &loc)| loc < u64::MAX - 1 && !s.has(i as u64))
                .map(|(i, &loc)| ((loc >> 32) as u32, loc as u32, i as u64))
                .collect()
        };
        wanted.sort_unstable();
        let mut jobs: Vec<&[(u32, u32, u64)]> = Vec::new();
        let mut start = 0;
        for k in 1..=wanted.len() {
            let cut = k == wanted.len()
                || wanted[k].0 != wanted[k - 1].0
                || wanted[k].1 != wanted[k - 1].1 + 1
                || (k - start) as u64 >= per;
            if cut {
                jobs.push(&wanted[start..k]);
                start = k;
            }
        }
        let mut sources: HashMap<u32, (File, u64, String)> = HashMap::new();
        for &(slot, _, _) in &wanted {
            if let std::collections::hash_map::Entry::Vacant(v) = sources.entry(slot) {
                let e = st.catalog.by_slot(slot).ok_or_else(|| super::table::inconsistent("unknown slot"))?;
                let p = self.repo.image_dir(&e.digest_hex()).join(IMAGE_FILE);
                let f = File::open(&p).map_err(|err| Error::io(&p, "cannot open repository image", err))?;
                v.insert((f, e.image_len, e.digest_hex()));
            }
        }
        let total: u64 = wanted.iter().map(|w| self.index.block_len(w.2) as u64).sum();
        progress.start(total);
        let dl = self.index.alg().len();
        jobs.par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, job| -> Result<()> {
            progress::check(progress)?;
            let (slot, b0, _) = job[0];
            let (src, src_len, src_hex) = &sources[&slot];
            let off = b0 as u64 * bs;
            let n = (job.len() as u64 * bs).min(src_len.saturating_sub(off));
            buf.resize(n as usize, 0);
            src.read_exact_at(buf, off).map_err(|e| Error::io(Path::new(src_hex), "cannot read repository image", e))?;
            let mut digest = [0u8; MAX_DIGEST_LEN];
            let mut bytes = 0;
            for (k, &(_, sb, dst)) in job.iter().enumerate() {
                let want_len = self.index.block_len(dst) as usize;
                let from = k * bs as usize;
                let block = buf.get(from..from + want_len).unwrap_or(&[]);
                if block.len() == want_len {
                    self.index.alg().block_digest_into(block, &mut digest[..dl]);
                }
                if block.len() != want_len || digest[..dl] != *self.index.digest(dst) {
                    bail!(
                        DigestMismatch,
                        "block {sb} of repository image {src_hex} does not match its digest: the image is damaged on disk \
                         (run `osfarm repo verify`, then remove it and add it again); nothing was published"
                    );
                }
                file.write_all_at(block, dst * bs).map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
                bytes += want_len as u64;
            }
            self.mark(job.iter().map(|j| j.2), bytes)?;
            progress.advance(bytes);
            Ok(())
        })?;
        drop(lock);
        self.fill_local_duplicates()?;
        Ok(FillReport { blocks: wanted.len() as u64, bytes: total })
    }

    /// The blocks still to be supplied, coalesced into runs. Blocks that repeat an earlier
    /// block of the image are not listed: they are written with their first occurrence.
    pub fn missing(&self) -> Vec<Run> {
        if self.existing.is_some() {
            return Vec::new();
        }
        let s = self.state.lock().unwrap();
        let mut runs: Vec<Run> = Vec::new();
        for i in 0..self.index.block_count() {
            if s.has(i) || self.dup_of.contains_key(&i) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.first + r.count == i => r.count += 1,
                _ => runs.push(Run { first: i, count: 1 }),
            }
        }
        runs
    }

    /// Verifies block `n` against its digest and writes it (and every later block with the
    /// same digest). Returns false if it was already present. A wrong block is a
    /// `DigestMismatch` error and changes nothing.
    pub fn put_block(&self, n: u64, data: &[u8]) -> Result<bool> {
        if n >= self.index.block_count() && self.existing.is_none() {
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
        if self.existing.is_some() {
            return Ok(0);
        }
        let file = self.file()?;
        let bs = self.index.block_size() as u64;
        let count = (data.len() as u64).div_ceil(bs);
        let end = first.checked_add(count).filter(|&e| e <= self.index.block_count());
        let Some(end) = end else {
            bail!(InvalidArgument, "blocks {first}..{} are beyond the end of image {}", first + count, self.hex);
        };
        let dl = self.index.alg().len();
        let bad: Option<u64> =
            data.par_chunks(bs as usize).with_min_len(16).enumerate().find_map_first(|(k, block)| {
                let i = first + k as u64;
                let mut d = [0u8; MAX_DIGEST_LEN];
                if block.len() != self.index.block_len(i) as usize {
                    return Some(i);
                }
                self.index.alg().block_digest_into(block, &mut d[..dl]);
                (d[..dl] != *self.index.digest(i)).then_some(i)
            });
        if let Some(i) = bad {
            bail!(
                DigestMismatch,
                "block {i} of image {} does not match its digest (wrong data from the source); it was not written",
                self.hex
            );
        }
        let fresh: Vec<u64> = {
            let s = self.state.lock().unwrap();
            (first..end).filter(|&i| !s.has(i)).collect()
        };
        if fresh.is_empty() {
            return Ok(0);
        }
        if fresh.len() as u64 == count {
            file.write_all_at(data, first * bs).map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
        } else {
            for &i in &fresh {
                let from = ((i - first) * bs) as usize;
                let to = (from + bs as usize).min(data.len());
                file.write_all_at(&data[from..to], i * bs)
                    .map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
            }
        }
        // Later blocks with the same digests.
        let mut copies = Vec::new();
        for &i in &fresh {
            if let Some(later) = self.dups.get(&i) {
                let from = ((i - first) * bs) as usize;
                let block = &data[from..(from + bs as usize).min(data.len())];
                for &j in later {
                    file.write_all_at(block, j * bs).map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
                    copies.push(j);
                }
            }
        }
        let new = fresh.len() as u64;
        self.mark(fresh.into_iter().chain(copies), data.len() as u64)?;
        Ok(new)
    }

    /// Records blocks as present and flushes the bitmap now and then (resumable only).
    fn mark(&self, blocks: impl Iterator<Item = u64>, bytes: u64) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        for i in blocks {
            s.set(i);
        }
        s.dirty_bytes += bytes;
        if self.have_path.is_some() && (s.dirty_bytes >= FLUSH_BYTES || s.last_flush.elapsed() >= FLUSH_INTERVAL) {
            self.flush_locked(&mut s)?;
        }
        Ok(())
    }

    /// Makes the written data durable, then records which blocks it holds.
    fn flush_locked(&self, s: &mut Progressed) -> Result<()> {
        let Some(have_path) = &self.have_path else { return Ok(()) };
        let Some(data) = &self.data else { return Ok(()) };
        data.file().sync_data().map_err(|e| Error::io(&self.data_path, "cannot sync", e))?;
        let bytes = encode_have(&self.index, &s.have);
        fsutil::write_atomic(have_path, |w| w.write_all(&bytes).map_err(|e| Error::io(have_path, "cannot write", e)))?;
        s.dirty_bytes = 0;
        s.last_flush = Instant::now();
        Ok(())
    }

    /// Writes the resumable bitmap now (no-op for non-resumable assemblies).
    pub fn flush(&self) -> Result<()> {
        if self.done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap();
        self.flush_locked(&mut s)
    }

    /// Later blocks whose first occurrence is present but they are not (after a resume):
    /// copied from the first occurrence within the file, verified.
    fn fill_local_duplicates(&self) -> Result<()> {
        let todo: Vec<(u64, u64)> = {
            let s = self.state.lock().unwrap();
            self.dup_of.iter().filter(|&(&j, &f)| !s.has(j) && s.has(f)).map(|(&j, &f)| (j, f)).collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let file = self.file()?;
        let bs = self.index.block_size() as u64;
        let mut buf = vec![0u8; bs as usize];
        for (j, f) in todo {
            let n = self.index.block_len(f) as usize;
            file.read_exact_at(&mut buf[..n], f * bs).map_err(|e| Error::io(&self.data_path, "cannot read", e))?;
            let mut d = [0u8; MAX_DIGEST_LEN];
            let dl = self.index.alg().len();
            self.index.alg().block_digest_into(&buf[..n], &mut d[..dl]);
            if d[..dl] != *self.index.digest(f) {
                self.state.lock().unwrap().clear(f);
                continue;
            }
            file.write_all_at(&buf[..n], j * bs).map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
            self.mark(std::iter::once(j), n as u64)?;
        }
        Ok(())
    }

    /// Re-checks the blocks a resumed bitmap claims; clears those that do not verify.
    fn reverify(&self, s: &mut Progressed) -> Result<()> {
        let file = self.data.as_ref().unwrap().file();
        let bs = self.index.block_size() as u64;
        let per = (IO_CHUNK / bs).max(1);
        let n = self.index.block_count();
        let chunks: Vec<u64> = (0..n.div_ceil(per)).collect();
        let have = &s.have;
        let has = |i: u64| have[(i / 64) as usize] & (1 << (i % 64)) != 0;
        let dl = self.index.alg().len();
        let bad: Vec<u64> = chunks
            .par_iter()
            .map_init(Vec::new, |buf: &mut Vec<u8>, &c| -> Result<Vec<u64>> {
                let b0 = c * per;
                let b1 = (b0 + per).min(n);
                if !(b0..b1).any(has) {
                    return Ok(Vec::new());
                }
                let len = (b1 * bs).min(self.index.image_len()) - b0 * bs;
                buf.resize(len as usize, 0);
                file.read_exact_at(buf, b0 * bs).map_err(|e| Error::io(&self.data_path, "cannot read", e))?;
                let mut out = Vec::new();
                for i in (b0..b1).filter(|&i| has(i)) {
                    let from = ((i - b0) * bs) as usize;
                    let block = &buf[from..from + self.index.block_len(i) as usize];
                    let mut d = [0u8; MAX_DIGEST_LEN];
                    self.index.alg().block_digest_into(block, &mut d[..dl]);
                    if d[..dl] != *self.index.digest(i) {
                        out.push(i);
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        for i in bad {
            if self.index.is_zero_block(i) {
                copy::zero_range(file, &self.data_path, i * bs, self.index.block_len(i) as u64)?;
            } else {
                s.clear(i);
            }
        }
        Ok(())
    }

    /// Checks that every block is present, then publishes the image (data, index,
    /// metadata) into the repository and its block table, atomically.
    pub fn finish(&self, opts: &AddOptions) -> Result<ImageEntry> {
        super::check_name(opts.name.as_deref())?;
        super::check_meta(opts.meta_json.as_deref())?;
        if let Some(e) = &self.existing {
            return match &opts.name {
                Some(n) if e.name.as_deref() != Some(n) => self.repo.set_name(&e.digest, Some(n)),
                _ => Ok(e.clone()),
            };
        }
        let file = self.file()?;
        self.fill_local_duplicates()?;
        {
            let s = self.state.lock().unwrap();
            if s.have_count != self.index.block_count() {
                let first = (0..self.index.block_count()).find(|&i| !s.has(i)).unwrap_or(0);
                bail!(
                    InvalidArgument,
                    "cannot finish image {}: {} blocks are still missing (the first is block {first})",
                    self.hex,
                    self.index.block_count() - s.have_count
                );
            }
        }
        file.sync_all().map_err(|e| Error::io(&self.data_path, "cannot sync", e))?;
        let ws = match self.workspace.lock().unwrap().take() {
            Some(ws) => ws,
            None => {
                let ws = self.repo.workspace("asm")?;
                fsutil::publish(&self.data_path, &ws.dir.join(IMAGE_FILE))?;
                if let Some(h) = &self.have_path {
                    let _ = fs::remove_file(h);
                }
                ws
            }
        };
        self.done.store(true, Ordering::Relaxed);
        let format = opts.format.clone().unwrap_or_else(|| super::detect_format(&ws.dir.join(IMAGE_FILE)));
        let entry = CatalogEntry {
            slot: 0,
            digest: self.index.image_digest().to_vec(),
            image_len: self.index.image_len(),
            added_ms: super::now_ms(),
            name: opts.name.clone(),
            original_name: opts.original_name.clone(),
            format,
            meta_json: opts.meta_json.clone(),
        };
        self.repo.publish_new_image(ws, &self.index, entry)
    }

    /// Gives up: discards the partial data, resumable or not.
    pub fn abort(&self) {
        if self.done.swap(true, Ordering::Relaxed) || self.existing.is_some() {
            return;
        }
        self.workspace.lock().unwrap().take();
        if let Some(h) = &self.have_path {
            let _ = fs::remove_file(h);
            let _ = fs::remove_file(&self.data_path);
        }
    }
}

impl Drop for Assembler {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) && self.have_path.is_some() {
            let mut s = self.state.lock().unwrap();
            let _ = self.flush_locked(&mut s);
        }
        // A non-resumable workspace removes itself when dropped.
    }
}

/// Opens (creating it if needed, keeping its contents) and exclusively locks a resumable
/// partial file; `busy` is the OSFARM_LOCKED message when another process holds it.
pub(super) fn lock_partial(path: &Path, busy: &str) -> Result<FileLock> {
    let file = super::lock::open_keeping(path).map_err(|e| Error::io(path, "cannot open", e))?;
    FileLock::on_file(file, LockKind::Exclusive, false)
        .map_err(|e| Error::io(path, "cannot lock", e))?
        .ok_or_else(|| Error::new(Code::Locked, busy))
}

fn encode_have(index: &Index, have: &[u64]) -> Vec<u8> {
    let n = index.block_count();
    let mut b = Vec::with_capacity(HAVE_HEADER_LEN + n.div_ceil(8) as usize + 8);
    b.extend_from_slice(&HAVE_MAGIC);
    b.extend_from_slice(&HAVE_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    let mut d = [0u8; 32];
    d[..index.image_digest().len()].copy_from_slice(index.image_digest());
    b.extend_from_slice(&d);
    for w in have {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.truncate(HAVE_HEADER_LEN + n.div_ceil(8) as usize);
    let sum = checksum64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// The bitmap of a `.have` file if it is intact and belongs to this index.
fn read_have(path: &Path, index: &Index) -> Option<Vec<u64>> {
    let b = fs::read(path).ok()?;
    let n = index.block_count();
    let bitmap_len = n.div_ceil(8) as usize;
    if b.len() != HAVE_HEADER_LEN + bitmap_len + 8 {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 8);
    if checksum64(body) != u64::from_le_bytes(sum.try_into().ok()?) || body[..8] != HAVE_MAGIC {
        return None;
    }
    let mut d = [0u8; 32];
    d[..index.image_digest().len()].copy_from_slice(index.image_digest());
    if body[8..12] != HAVE_VERSION.to_le_bytes() || body[16..24] != n.to_le_bytes() || body[24..56] != d {
        return None;
    }
    let mut have = vec![0u64; n.div_ceil(64) as usize];
    for (k, byte) in body[HAVE_HEADER_LEN..].iter().enumerate() {
        have[k / 8] |= (*byte as u64) << (8 * (k % 8));
    }
    Some(have)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Assembler>();
}
