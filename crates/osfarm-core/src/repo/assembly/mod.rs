//! The one engine behind every assembly of a new image in the repository, as desync has
//! one assembly engine fed by many sources. Two thin front ends decide where each block
//! comes from:
//!
//! - `assemble::Assembler`: the whole index is known up front (a pull, a local assemble);
//! - `stream::StreamAssembler`: the digests arrive while the sender is still hashing (a push).
//!
//! The engine owns everything they share: the data file (a private file in a workspace,
//! or a resumable `tmp/<stem>.partial` locked by the live assembly) sized to the image, so
//! unwritten ranges are holes, which is what all-zero blocks need; the record that lets a
//! later attempt resume (`journal`); which blocks are present; every write, each block
//! verified against its digest first (`verify`); copies from repository images; later
//! repeats of a block; re-verification of what an earlier attempt left; and the atomic
//! publish through `Repository::publish_new_image`.
//!
//! Files: `journal` (the `.have` and `.got` records), `verify` (all hashing of data),
//! `local` (copies from repository images).

mod journal;
mod local;
mod verify;

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::catalog::CatalogEntry;
use super::plan::Run;
use super::{AddOptions, ImageEntry, Repository, Workspace, IMAGE_FILE};
use crate::bail;
use crate::collision;
use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::hash::{self, HashAlg};
use crate::index::{block_count_for, Index};
use crate::lock::{self, FileLock, LockKind};
use journal::Journal;
pub(super) use local::{add_copy, CopyJob, Sources};

/// Largest single read or write while copying, reading a source file or re-verifying.
pub(super) const IO_CHUNK: u64 = 1 << 20;
/// Written bytes after which writeback is started, so `publish`'s fsync is short.
const WRITEBACK_KICK: u64 = 32 << 20;
/// How often a `.have` bitmap is saved: after this many bytes or this long.
const SAVE_BYTES: u64 = 64 << 20;
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// The shape of the image being assembled.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) alg: HashAlg,
    pub(super) block_size: u32,
    pub(super) image_len: u64,
    pub(super) block_count: u64,
}

impl Geometry {
    pub(super) fn new(alg: HashAlg, block_size: u32, image_len: u64) -> Result<Geometry> {
        let block_count = block_count_for(image_len, block_size);
        if block_count > u32::MAX as u64 {
            bail!(InvalidArgument, "images of more than 2^32 blocks are not supported");
        }
        Ok(Geometry { alg, block_size, image_len, block_count })
    }

    pub(super) fn of(index: &Index) -> Result<Geometry> {
        Geometry::new(index.alg(), index.block_size(), index.image_len())
    }

    pub(super) fn bs(&self) -> u64 {
        self.block_size as u64
    }

    /// Bytes of one digest.
    pub(super) fn dl(&self) -> usize {
        self.alg.len()
    }

    /// Bytes of blocks `first..first + count` (only the image's last block is short).
    pub(super) fn run_len(&self, first: u64, count: u64) -> u64 {
        ((first + count) * self.bs()).min(self.image_len).saturating_sub(first * self.bs())
    }
}

/// One bit per block, with the number set.
#[derive(Clone, Debug, Default)]
pub(super) struct Bitmap {
    words: Vec<u64>,
    count: u64,
}

impl Bitmap {
    pub(super) fn new(blocks: u64) -> Bitmap {
        Bitmap { words: vec![0; blocks.div_ceil(64) as usize], count: 0 }
    }

    pub(super) fn from_words(words: Vec<u64>) -> Bitmap {
        let count = words.iter().map(|w| w.count_ones() as u64).sum();
        Bitmap { words, count }
    }

    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    pub(super) fn count(&self) -> u64 {
        self.count
    }

    pub(super) fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; true if it was clear.
    pub(super) fn set(&mut self, i: u64) -> bool {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.count += new as u64;
        new
    }

    pub(super) fn clear(&mut self, i: u64) {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1 << (i % 64);
        self.count -= (*w & bit != 0) as u64;
        *w &= !bit;
    }
}

/// Where an assembly writes.
pub(super) enum Target<'a> {
    /// A private file in a workspace: discarded unless published.
    Private,
    /// `tmp/<stem>.partial` with a `.have` bitmap: the index is known, so the bitmap
    /// claims the index's digests.
    Bitmap { stem: String, index: &'a Index, busy: &'a str },
    /// `tmp/<stem>.partial` with a `.got` record of the digest of each block written.
    Record { stem: String, busy: &'a str },
}

/// What an earlier attempt left, re-verified.
struct Resumed {
    /// Blocks its record says were written, matching or not: they may hold stale data.
    claimed: Bitmap,
    /// Claimed blocks whose data matched the record when re-hashed.
    verified: Bitmap,
    /// A `.got` record's digests (with a `.have` bitmap the digests are the index's).
    record: Option<Vec<u8>>,
}

impl Resumed {
    /// True if block `i` holds, verified, the block with digest `d`.
    fn holds(&self, i: u64, d: &[u8]) -> bool {
        self.verified.get(i) && self.record.as_ref().is_none_or(|r| r[i as usize * d.len()..][..d.len()] == *d)
    }
}

/// What `settle` found for a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// All zeros: present as a hole.
    Zero,
    /// Kept from an earlier attempt.
    Resumed,
    /// Still to be copied or supplied.
    Needed,
}

struct Present {
    have: Bitmap,
    /// Bytes written since the `.have` bitmap was last saved.
    unsaved: u64,
    last_save: Instant,
}

/// Later blocks of the image that repeat an earlier one (its first occurrence).
#[derive(Default)]
struct Duplicates {
    later: HashMap<u64, Vec<u64>>,
    first: HashMap<u64, u64>,
}

/// An image being assembled; see the module documentation.
pub(super) struct Assembly {
    repo: Repository,
    geo: Geometry,
    /// Names the image in messages: "image <hex>", or what a push knows of it.
    label: String,
    /// The kind of workspace a resumable partial is published through ("asm", "push").
    kind: &'static str,
    /// The data file, locked by this assembly.
    data: FileLock,
    data_path: PathBuf,
    journal: Journal,
    resumed: Option<Resumed>,
    /// A private assembly's workspace (its directory holds `data_path`).
    workspace: Mutex<Option<Workspace>>,
    present: Mutex<Present>,
    dups: Mutex<Duplicates>,
    /// Published, aborted or closed: no more writes.
    done: AtomicBool,
    /// A write failed because the file system is full: the partial is not kept for a
    /// later attempt, so the space comes back as soon as the assembly ends.
    no_space: AtomicBool,
    unkicked: AtomicU64,
}

impl Assembly {
    /// Opens the data file (and, when resumable, what an earlier attempt left of it,
    /// re-verified). No block is present yet: the front end `settle`s the digests it knows.
    /// `needed` bounds the bytes of data the image will take (its non-zero blocks, or what
    /// a sender says): an image that cannot fit is refused before anything is created.
    pub(super) fn open(
        repo: &Repository,
        geo: Geometry,
        kind: &'static str,
        label: String,
        target: Target<'_>,
        needed: u64,
    ) -> Result<Assembly> {
        check_space(repo, &geo, &target, needed, &label)?;
        let (data, data_path, journal, workspace, resumed) = match target {
            Target::Private => {
                let (ws, data, path) = repo.private_image_file(kind, geo.image_len)?;
                (data, path, Journal::None, Some(ws), None)
            }
            Target::Bitmap { stem, index, busy } => {
                let (data, path, same_len) = open_partial(repo, &stem, busy, &geo)?;
                let (journal, claimed) = Journal::open_bitmap(repo.tmp_dir().join(format!("{stem}.have")), index);
                let resumed = match claimed.filter(|_| same_len) {
                    Some(claimed) => {
                        let want = |i| claimed.get(i).then(|| index.digest(i));
                        let verified = verify::reverify(data.file(), &path, &geo, want)?;
                        Some(Resumed { claimed, verified, record: None })
                    }
                    None => None,
                };
                (data, path, journal, None, resumed)
            }
            Target::Record { stem, busy } => {
                let (data, path, same_len) = open_partial(repo, &stem, busy, &geo)?;
                let (journal, record) =
                    Journal::open_record(repo.tmp_dir().join(format!("{stem}.got")), &geo, same_len)?;
                let resumed = match record {
                    Some(rec) => {
                        let dl = geo.dl();
                        let digest = |i: u64| &rec[i as usize * dl..(i as usize + 1) * dl];
                        let mut claimed = Bitmap::new(geo.block_count);
                        for i in (0..geo.block_count).filter(|&i| !hash::is_zero_digest(digest(i))) {
                            claimed.set(i);
                        }
                        let want = |i| claimed.get(i).then(|| digest(i));
                        let verified = verify::reverify(data.file(), &path, &geo, want)?;
                        Some(Resumed { claimed, verified, record: Some(rec) })
                    }
                    None => None,
                };
                (data, path, journal, None, resumed)
            }
        };
        if journal.is_resumable() {
            if resumed.is_none() {
                // No trustworthy record of what the file holds: start it afresh.
                data.file().set_len(0).map_err(|e| Error::io(&data_path, "cannot truncate", e))?;
            }
            data.file().set_len(geo.image_len).map_err(|e| Error::io(&data_path, "cannot size", e))?;
        }
        Ok(Assembly {
            repo: repo.clone(),
            geo,
            label,
            kind,
            data,
            data_path,
            journal,
            resumed,
            workspace: Mutex::new(workspace),
            present: Mutex::new(Present { have: Bitmap::new(geo.block_count), unsaved: 0, last_save: Instant::now() }),
            dups: Mutex::new(Duplicates::default()),
            done: AtomicBool::new(false),
            no_space: AtomicBool::new(false),
            unkicked: AtomicU64::new(0),
        })
    }

    pub(super) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// True if the data is kept for a later attempt when this one does not finish (not
    /// after the file system filled up).
    pub(super) fn is_resumable(&self) -> bool {
        self.journal.is_resumable() && !self.no_space.load(Ordering::Relaxed)
    }

    /// True if an earlier attempt's data was found (and re-verified).
    pub(super) fn is_resumed(&self) -> bool {
        self.resumed.is_some()
    }

    pub(super) fn is_live(&self) -> bool {
        !self.done.load(Ordering::Relaxed)
    }

    pub(super) fn check_live(&self) -> Result<()> {
        if !self.is_live() {
            bail!(InvalidArgument, "the assembly of {} is finished or aborted", self.label);
        }
        Ok(())
    }

    fn file(&self) -> &File {
        self.data.file()
    }

    pub(super) fn has(&self, i: u64) -> bool {
        self.present.lock().unwrap().have.get(i)
    }

    /// Blocks present so far (zero blocks included).
    pub(super) fn have_count(&self) -> u64 {
        self.present.lock().unwrap().have.count()
    }

    /// Learns the digests of blocks `first..`: all-zero blocks are present (zeroed first
    /// where an earlier attempt may have written something), blocks an earlier attempt
    /// left verified are kept, the others are `Needed`.
    pub(super) fn settle(&self, first: u64, digests: &[u8]) -> Result<Vec<Settled>> {
        self.check_live()?;
        let dl = self.geo.dl();
        let mut out = Vec::with_capacity(digests.len() / dl);
        for (k, d) in digests.chunks_exact(dl).enumerate() {
            let i = first + k as u64;
            let holds = self.resumed.as_ref().is_some_and(|r| r.holds(i, d));
            out.push(if hash::is_zero_digest(d) {
                if !holds && self.resumed.as_ref().is_some_and(|r| r.claimed.get(i)) {
                    let len = self.geo.run_len(i, 1);
                    super::copy::zero_range(self.file(), &self.data_path, i * self.geo.bs(), len)?;
                }
                Settled::Zero
            } else if holds {
                Settled::Resumed
            } else {
                Settled::Needed
            });
        }
        let mut p = self.present.lock().unwrap();
        for (k, s) in out.iter().enumerate() {
            if *s != Settled::Needed {
                p.have.set(first + k as u64);
            }
        }
        Ok(out)
    }

    /// Records that each `(later, first)` block repeats its first occurrence: it is
    /// written together with it, or copied from it when publishing.
    pub(super) fn add_duplicates(&self, pairs: impl IntoIterator<Item = (u64, u64)>) {
        let mut d = self.dups.lock().unwrap();
        for (later, first) in pairs {
            d.later.entry(first).or_default().push(later);
            d.first.insert(later, first);
        }
    }

    /// The blocks still to be supplied, coalesced into runs; repeats of an earlier block
    /// are not listed (they come with it).
    pub(super) fn missing(&self) -> Vec<Run> {
        let p = self.present.lock().unwrap();
        let d = self.dups.lock().unwrap();
        let blocks: Vec<u64> =
            (0..self.geo.block_count).filter(|&i| !p.have.get(i) && !d.first.contains_key(&i)).collect();
        runs_of(&blocks)
    }

    /// Verifies blocks `first..` in `data` (their concatenation; only the image's last
    /// block may be short) against `digests`, then writes those not yet present and the
    /// later blocks that repeat them. A wrong block is `DigestMismatch` and nothing is
    /// written. The caller checks that the blocks are inside the image. Returns how many
    /// were new.
    pub(super) fn put(&self, first: u64, data: &[u8], digests: &[u8]) -> Result<u64> {
        self.check_live()?;
        let bs = self.geo.bs();
        let dl = self.geo.dl();
        let count = (data.len() as u64).div_ceil(bs);
        if let Some(i) = verify::first_mismatch(&self.geo, first, data, digests) {
            bail!(
                DigestMismatch,
                "block {i} of {} does not match its digest (wrong data from the source); nothing was written",
                self.label
            );
        }
        if self.repo.detects_collisions() {
            if let Some(k) = collision::first_attack(data, bs as usize) {
                bail!(
                    DigestMismatch,
                    "block {} of {} carries a SHA-1 collision attack (sha1dc found its near-collision blocks); refused, nothing was written",
                    first + k as u64,
                    self.label
                );
            }
        }
        let fresh: Vec<u64> = {
            let p = self.present.lock().unwrap();
            (first..first + count).filter(|&i| !p.have.get(i)).collect()
        };
        let block = |i: u64| {
            let from = ((i - first) * bs) as usize;
            (&data[from..(from + bs as usize).min(data.len())], &digests[(i - first) as usize * dl..][..dl])
        };
        for r in runs_of(&fresh) {
            let from = ((r.first - first) * bs) as usize;
            let to = (from + (r.count * bs) as usize).min(data.len());
            let d = &digests[(r.first - first) as usize * dl..][..r.count as usize * dl];
            self.write_run(r.first, &data[from..to], d)?;
        }
        let copies: Vec<(u64, u64)> = {
            let d = self.dups.lock().unwrap();
            fresh.iter().flat_map(|&i| d.later.get(&i).into_iter().flatten().map(move |&j| (j, i))).collect()
        };
        for &(j, i) in &copies {
            let (b, d) = block(i);
            self.write_run(j, b, d)?;
        }
        let new = fresh.len() as u64;
        self.mark(fresh.into_iter().chain(copies.into_iter().map(|c| c.0)), data.len() as u64)?;
        Ok(new)
    }

    /// Fills later repeats whose first occurrence is present from it, reading it back
    /// and verifying it. Returns the first (later, first) pair whose first occurrence no
    /// longer matched: that block is cleared, to be supplied again.
    pub(super) fn fill_duplicates(&self, digests: &[u8]) -> Result<Option<(u64, u64)>> {
        let mut todo: Vec<(u64, u64)> = {
            let p = self.present.lock().unwrap();
            let d = self.dups.lock().unwrap();
            d.first.iter().filter(|&(&j, &f)| !p.have.get(j) && p.have.get(f)).map(|(&j, &f)| (j, f)).collect()
        };
        todo.sort_unstable();
        let dl = self.geo.dl();
        let mut buf = vec![0u8; self.geo.block_size as usize];
        let mut bad = None;
        for (j, f) in todo {
            if !self.has(f) {
                continue;
            }
            let n = self.geo.run_len(f, 1) as usize;
            self.file()
                .read_exact_at(&mut buf[..n], f * self.geo.bs())
                .map_err(|e| Error::io(&self.data_path, "cannot read", e))?;
            let d = &digests[f as usize * dl..][..dl];
            if verify::first_mismatch(&self.geo, f, &buf[..n], d).is_some() {
                self.present.lock().unwrap().have.clear(f);
                bad.get_or_insert((j, f));
                continue;
            }
            self.write_run(j, &buf[..n], d)?;
            self.mark(std::iter::once(j), n as u64)?;
        }
        Ok(bad)
    }

    /// After a resume with other content, all-zero blocks must read as zeros even where an
    /// earlier attempt wrote something it did not record.
    pub(super) fn zero_unrecorded(&self, index: &Index) -> Result<()> {
        let bs = self.geo.bs();
        let mut buf = vec![0u8; bs as usize];
        for i in (0..index.block_count()).filter(|&i| index.is_zero_block(i)) {
            let n = self.geo.run_len(i, 1);
            let b = &mut buf[..n as usize];
            self.file().read_exact_at(b, i * bs).map_err(|e| Error::io(&self.data_path, "cannot read", e))?;
            if !hash::is_zero(b) {
                super::copy::zero_range(self.file(), &self.data_path, i * bs, n)?;
            }
        }
        Ok(())
    }

    /// Writes verified blocks at `first`, records their digests for resumption, and
    /// starts writeback now and then.
    pub(super) fn write_run(&self, first: u64, data: &[u8], digests: &[u8]) -> Result<()> {
        self.file().write_all_at(data, first * self.geo.bs()).map_err(|e| self.write_failed(&self.data_path, e))?;
        self.journal.record(first, digests).map_err(|(path, e)| self.write_failed(path, e))?;
        let n = data.len() as u64;
        if self.unkicked.fetch_add(n, Ordering::Relaxed) + n >= WRITEBACK_KICK {
            self.unkicked.store(0, Ordering::Relaxed);
            // SAFETY: sync_file_range takes a descriptor we own and integers; it only
            // starts writeback of dirty pages, it does not wait.
            unsafe {
                libc::sync_file_range(self.file().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    /// The error of a failed write; a full file system also marks the partial as not worth
    /// keeping (see `no_space`).
    fn write_failed(&self, path: &std::path::Path, e: std::io::Error) -> Error {
        if !fsutil::is_no_space(&e) {
            return Error::io(path, "cannot write", e);
        }
        self.no_space.store(true, Ordering::Relaxed);
        Error::new(
            Code::Io,
            format!(
                "cannot write {}: the file system is full ({e}); the partial {} is discarded to give the space back",
                path.display(),
                self.label
            ),
        )
    }

    /// Records blocks as present and saves a `.have` bitmap now and then.
    pub(super) fn mark(&self, blocks: impl Iterator<Item = u64>, bytes: u64) -> Result<()> {
        let mut p = self.present.lock().unwrap();
        for i in blocks {
            p.have.set(i);
        }
        p.unsaved += bytes;
        if self.journal.saves_bitmap() && (p.unsaved >= SAVE_BYTES || p.last_save.elapsed() >= SAVE_INTERVAL) {
            self.save_locked(&mut p)?;
        }
        Ok(())
    }

    fn save_locked(&self, p: &mut Present) -> Result<()> {
        self.journal.save(self.file(), &self.data_path, &p.have)?;
        p.unsaved = 0;
        p.last_save = Instant::now();
        Ok(())
    }

    /// Makes a resumable assembly's progress durable now.
    pub(super) fn flush(&self) -> Result<()> {
        if !self.is_live() || !self.is_resumable() {
            return Ok(());
        }
        let mut p = self.present.lock().unwrap();
        self.save_locked(&mut p)
    }

    /// Fills repeated blocks, checks that every block is present, makes the data durable
    /// and publishes it with `index` (which the front end checked is the image's).
    pub(super) fn publish(&self, index: &Index, opts: &AddOptions) -> Result<ImageEntry> {
        self.check_live()?;
        if let Some((j, f)) = self.fill_duplicates(index.digests())? {
            bail!(
                BadRepository,
                "block {f} of {}, the first copy of block {j}, no longer matches its digest as read back from {}: \
                 the disk may be failing; nothing was published",
                self.label,
                self.data_path.display()
            );
        }
        {
            let p = self.present.lock().unwrap();
            if p.have.count() != self.geo.block_count {
                let first = (0..self.geo.block_count).find(|&i| !p.have.get(i)).unwrap_or(0);
                bail!(
                    InvalidArgument,
                    "cannot finish {}: {} blocks are still missing (the first is block {first})",
                    self.label,
                    self.geo.block_count - p.have.count()
                );
            }
        }
        self.file().sync_all().map_err(|e| Error::io(&self.data_path, "cannot sync", e))?;
        let ws = match self.workspace.lock().unwrap().take() {
            Some(ws) => ws,
            None => {
                let ws = self.repo.workspace(self.kind)?;
                fsutil::publish(&self.data_path, &ws.dir.join(IMAGE_FILE))?;
                self.journal.remove();
                ws
            }
        };
        self.done.store(true, Ordering::Relaxed);
        let format = opts.format.clone().unwrap_or_else(|| super::detect_format(&ws.dir.join(IMAGE_FILE)));
        let entry = CatalogEntry {
            slot: 0,
            digest: index.image_digest().to_vec(),
            image_len: index.image_len(),
            added_ms: super::now_ms(),
            tags: Vec::new(),
            original_name: opts.original_name.clone(),
            format,
            meta_json: opts.meta_json.clone(),
        };
        self.repo.publish_new_image(ws, index, entry, &opts.tags)
    }

    /// Ends an unfinished assembly: a private one's data goes; a resumable one's stays
    /// for the next attempt unless `discard`. The partial is unlocked at once, not when the
    /// last handle is dropped (for a binding, whenever its garbage collector runs), so the
    /// next attempt can resume at once: late writes of a put that passed its check before
    /// this write verified data, and a new attempt trusts nothing it did not re-hash.
    pub(super) fn abort(&self, discard: bool) {
        if self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        self.workspace.lock().unwrap().take();
        if (discard || !self.is_resumable()) && self.journal.is_resumable() {
            self.discard_partial();
        }
        // SAFETY: flock only takes a descriptor this assembly owns and an integer.
        unsafe { libc::flock(self.file().as_raw_fd(), libc::LOCK_UN) };
    }

    /// Stops writing and keeps what was written for a later attempt (a `.have` bitmap is
    /// saved); the partial stays locked until this assembly is dropped.
    pub(super) fn close(&self) {
        if self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.is_resumable() {
            let mut p = self.present.lock().unwrap();
            let _ = self.save_locked(&mut p);
        } else if self.journal.is_resumable() {
            self.discard_partial();
        }
    }

    fn discard_partial(&self) {
        self.journal.remove();
        let _ = fs::remove_file(&self.data_path);
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        // A private workspace removes itself when dropped.
        self.close();
    }
}

/// The image already in the repository, taking the `tags` given.
pub(super) fn existing_tagged(repo: &Repository, e: &ImageEntry, tags: &[String]) -> Result<ImageEntry> {
    if tags.iter().all(|t| e.tags.contains(t)) {
        Ok(e.clone())
    } else {
        repo.tag(&e.digest, tags)
    }
}

/// Refuses an image that cannot fit: `needed` bytes of data plus its record and the room
/// the repository needs to commit it (`commit_reserve`), against the
/// free space of the repository's file system and what a partial of an earlier attempt
/// already takes there. Issue 17: a push that fills the disk fails anyway, later, after
/// the whole transfer, and leaves the disk full for a moment.
fn check_space(repo: &Repository, geo: &Geometry, target: &Target<'_>, needed: u64, label: &str) -> Result<()> {
    let (stem, record) = match target {
        Target::Private => (None, 0),
        Target::Bitmap { stem, .. } => (Some(stem), 0),
        Target::Record { stem, .. } => (Some(stem), journal::record_bytes(geo)),
    };
    let held = stem.map_or(0, |s| {
        let taken = |ext: &str| fs::metadata(repo.tmp_dir().join(format!("{s}.{ext}"))).map_or(0, |m| m.blocks() * 512);
        taken("partial") + taken("got")
    });
    let needed = needed + record + repo.commit_reserve();
    let free = fsutil::free_bytes(repo.root())?;
    if needed > free + held {
        bail!(
            Io,
            "{label} needs {} of space in {} ({needed} bytes: its data, its resume record and room to \
             commit it), but its file system has only {} free ({free} bytes{}): free some space, or \
             receive it into a repository with room",
            mib(needed),
            repo.root().display(),
            mib(free),
            if held > 0 { format!(", plus {held} bytes an earlier attempt holds") } else { String::new() }
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Opens (creating it if needed, keeping its contents) and exclusively locks
/// `tmp/<stem>.partial`; `busy` is the OSFARM_LOCKED message when another process holds
/// it. Also says whether it already has the image's length.
fn open_partial(repo: &Repository, stem: &str, busy: &str, geo: &Geometry) -> Result<(FileLock, PathBuf, bool)> {
    let tmp = repo.tmp_dir();
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
    let path = tmp.join(format!("{stem}.partial"));
    let file = lock::open_keeping(&path).map_err(|e| Error::io(&path, "cannot open", e))?;
    let data = FileLock::on_file(file, LockKind::Exclusive, false)
        .map_err(|e| Error::io(&path, "cannot lock", e))?
        .ok_or_else(|| Error::new(Code::Locked, busy))?;
    let len = data.file().metadata().map_err(|e| Error::io(&path, "cannot stat", e))?.len();
    Ok((data, path, len == geo.image_len))
}

/// Sorted block numbers as runs of consecutive blocks.
fn runs_of(blocks: &[u64]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &i in blocks {
        match runs.last_mut() {
            Some(r) if r.first + r.count == i => r.count += 1,
            _ => runs.push(Run { first: i, count: 1 }),
        }
    }
    runs
}

// Front ends share an assembly between threads (rayon, a copier thread, a binding).
const _: fn() = || {
    fn f<T: Send + Sync>() {}
    f::<Assembly>();
};
