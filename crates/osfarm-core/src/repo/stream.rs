//! Assembling an image whose digests arrive as a stream (a push): the receiving half of
//! content-based transfer, and the front end of the assembly engine (`assembly`) that
//! learns the image window by window while the sender is still hashing.
//!
//! For each window, `offer` looks every digest up in the repository's hash table: blocks
//! the repository holds are queued for a background copier (the engine verifies each
//! against its digest while copying), blocks an earlier, interrupted attempt left are
//! kept, and the rest come back as coalesced runs for the caller to request from the
//! sender. `put_blocks` verifies each received block against the digest the sender
//! announced before writing it. `finish` checks the announced image digest against the
//! digests received (so every block is bound to the image's name), waits for the copier,
//! and publishes atomically.
//!
//! Resume: with a resume key (chosen by the sender, e.g. from the file's identity), the
//! data goes to `tmp/push-<key hash>.partial` and a record `tmp/push-<key hash>.got`
//! holds, per block, the digest of what was written there. Nothing in the record is
//! trusted: a new attempt re-hashes every block it claims and keeps those that match,
//! so a torn record or a crash between data and record costs a re-send, never a wrong
//! image. Both files are locked by the live assembly and never visible as an image.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use super::assembly::{self, Assembly, CopyJob, Geometry, Settled, Sources, Target};
use super::lock::LockKind;
use super::plan::Run;
use super::{AddOptions, Holders, ImageEntry, Repository, State};
use crate::bail;
use crate::digest_set::{prefix64, PrefixHasher};
use crate::error::{Code, Error, Result};
use crate::hash::{HashAlg, MAX_DIGEST_LEN};
use crate::index::Index;
use crate::progress::Silent;
use crate::transfer::groups::{GroupLookup, GroupTable};

/// Bytes the copier takes per batch (its jobs run in parallel).
const COPY_BATCH: u64 = 8 << 20;

/// What the sender announces before its digests.
#[derive(Clone, Debug, Default)]
pub struct StreamOptions {
    pub image_len: u64,
    /// Names the image across attempts so an interrupted transfer resumes; `None` makes
    /// the assembly private (discarded if it does not finish).
    pub resume_key: Option<String>,
    /// The image digest, when the sender knows it in advance (an image of its repository).
    pub expected_digest: Option<Vec<u8>>,
    /// A bound the sender gives on the bytes of the image's non-zero blocks (the space its
    /// file takes): an image that cannot fit is refused at once. Default: the image length.
    pub data_bytes: Option<u64>,
}

/// Counts of what happened to the blocks offered so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub block_count: u64,
    /// Digests received so far.
    pub offered: u64,
    pub zero_blocks: u64,
    /// Copied (or being copied) from images of the repository.
    pub local_blocks: u64,
    pub local_bytes: u64,
    /// Kept from an earlier, interrupted attempt.
    pub resumed_blocks: u64,
    /// Repeats of an earlier block of the same image: copied within the file.
    pub duplicate_blocks: u64,
    /// Blocks asked from the sender.
    pub missing_blocks: u64,
    pub missing_bytes: u64,
    /// Blocks received and verified.
    pub received_blocks: u64,
    pub received_bytes: u64,
    /// Blocks present in the file so far.
    pub have_blocks: u64,
}

/// A digest as a map key, hashing to its first eight bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u8; MAX_DIGEST_LEN]);
impl Key {
    fn of(d: &[u8]) -> Key {
        let mut k = [0u8; MAX_DIGEST_LEN];
        k[..d.len()].copy_from_slice(d);
        Key(k)
    }
}
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(prefix64(&self.0));
    }
}

enum CopyMsg {
    Jobs(Vec<CopyJob>),
    Barrier(SyncSender<()>),
}

/// What the sender has told so far, and where its blocks come from.
struct Inner {
    digests: Vec<u8>,
    offered: u64,
    /// The first block with each digest that is received or kept (not copied locally).
    first_of: HashMap<Key, u64, BuildHasherDefault<PrefixHasher>>,
    stats: StreamStats,
    /// Digests of repository slots, for confirming table matches.
    slot_digests: HashMap<u32, Arc<Vec<u8>>>,
    /// Whether the image so far is, block for block, one repository image of the same
    /// length; while it may be, its local copies wait in `deferred` (see `offer`).
    identity: Identity,
    deferred: Vec<CopyJob>,
}

/// A sender that streams a file learns its image digest only at the end, so an image the
/// receiver already holds would be copied whole before that is known. While every block
/// found locally sits at the same place in one repository image of the same length, the
/// copies are held back. The first block that breaks this sends them all to the copier
/// (still overlapping the transfer); if it lasts to the end and the digests agree,
/// `finish` answers with that image without copying anything.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    Undecided,
    Slot(u32),
    Broken,
}

/// A stream assembly with blocks to receive.
struct Live {
    engine: Arc<Assembly>,
    /// The repository's catalog and table when the assembly began.
    st: Arc<State>,
    inner: Mutex<Inner>,
    copier_tx: Mutex<Option<Sender<CopyMsg>>>,
    copier: Mutex<Option<JoinHandle<()>>>,
    copy_error: Arc<Mutex<Option<Error>>>,
}

enum Work {
    /// The announced image is already in the repository: nothing to receive.
    Present(ImageEntry),
    Receiving(Live),
}

/// A streaming assembly; see the module documentation.
pub struct StreamAssembler {
    repo: Repository,
    work: Work,
    block_count: u64,
    image_len: u64,
    /// The repository's digest groups (protocol v2), once `load_groups` has run.
    groups: OnceLock<GroupTable>,
}

fn key_file_stem(key: &str) -> String {
    let d = HashAlg::Sha256.digest_parts(&[b"osfarm push resume key\0", key.as_bytes()]);
    format!("push-{}", &hex::encode(d)[..40])
}

impl Repository {
    /// Starts assembling an image whose digests will arrive as a stream (see the module
    /// documentation). If the sender named an image the repository already holds, the
    /// assembly has nothing to do (`is_complete_image`).
    pub fn begin_stream(&self, opts: StreamOptions) -> Result<StreamAssembler> {
        let geo = Geometry::new(self.alg(), self.block_size(), opts.image_len)?;
        if let Some(d) = &opts.expected_digest {
            if d.len() != geo.dl() {
                bail!(
                    InvalidArgument,
                    "an image digest of {} bytes was announced; this repository uses {}",
                    d.len(),
                    geo.alg.name()
                );
            }
        }
        let st = {
            let lock = self.lock(LockKind::Shared)?;
            self.state(&lock)?
        };
        let asm = |work| StreamAssembler {
            repo: self.clone(),
            work,
            block_count: geo.block_count,
            image_len: opts.image_len,
            groups: OnceLock::new(),
        };
        if let Some(e) = opts.expected_digest.as_ref().and_then(|d| st.catalog.by_digest(d)) {
            let e = self.entry_of(e);
            if e.size != opts.image_len {
                bail!(Mismatch, "image {} has {} bytes, not the {} announced", e.digest, e.size, opts.image_len);
            }
            return Ok(asm(Work::Present(e)));
        }
        let label = match &opts.expected_digest {
            Some(d) => format!("image {}", hex::encode(d)),
            None => "the image being received".to_string(),
        };
        let busy = "this image is already being received by another transfer; wait for it or retry";
        let target = match &opts.resume_key {
            Some(key) if key.is_empty() || key.len() > 512 => {
                bail!(InvalidArgument, "a resume key must be 1 to 512 bytes")
            }
            Some(key) => Target::Record { stem: key_file_stem(key), busy },
            None => Target::Private,
        };
        let needed = opts.data_bytes.map_or(opts.image_len, |d| d.min(opts.image_len));
        let engine = Arc::new(Assembly::open(self, geo, "push", label, target, needed)?);
        let inner = Inner {
            digests: Vec::with_capacity(geo.block_count as usize * geo.dl()),
            offered: 0,
            first_of: HashMap::default(),
            stats: StreamStats { block_count: geo.block_count, ..Default::default() },
            slot_digests: HashMap::new(),
            identity: Identity::Undecided,
            deferred: Vec::new(),
        };
        let copy_error = Arc::new(Mutex::new(None));
        let (tx, rx) = channel();
        let copier = {
            let (engine, st, repo, error) = (engine.clone(), st.clone(), self.clone(), copy_error.clone());
            std::thread::Builder::new()
                .name("osfarm-copy".into())
                .spawn(move || copier(&engine, &repo, &st, &error, rx))
                .map_err(|e| Error::new(Code::Io, format!("cannot start the copy thread: {e}")))?
        };
        Ok(asm(Work::Receiving(Live {
            engine,
            st,
            inner: Mutex::new(inner),
            copier_tx: Mutex::new(Some(tx)),
            copier: Mutex::new(Some(copier)),
            copy_error,
        })))
    }
}

impl Live {
    fn slot_digests(&self, repo: &Repository, inner: &mut Inner, slot: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = inner.slot_digests.get(&slot) {
            return Ok(d.clone());
        }
        let d = Arc::new(Holders::new(repo, &self.st.catalog).digests(slot)?.to_vec());
        inner.slot_digests.insert(slot, d.clone());
        Ok(d)
    }

    fn send_copies(&self, jobs: Vec<CopyJob>) {
        if !jobs.is_empty() {
            if let Some(tx) = self.copier_tx.lock().unwrap().as_ref() {
                let _ = tx.send(CopyMsg::Jobs(jobs));
            }
        }
    }

    /// Waits until every local copy queued so far is done; returns the copier's error.
    fn wait_for_copies(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        let sent = self.copier_tx.lock().unwrap().as_ref().map(|c| c.send(CopyMsg::Barrier(tx)).is_ok());
        if sent == Some(true) {
            let _ = rx.recv();
        }
        match self.copy_error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop_copier(&self) {
        self.copier_tx.lock().unwrap().take();
        if let Some(h) = self.copier.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

impl StreamAssembler {
    /// True if the announced image is already in the repository: nothing to receive.
    pub fn is_complete_image(&self) -> bool {
        matches!(self.work, Work::Present(_))
    }

    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// True if the data is kept for a later attempt when this one does not finish.
    pub fn is_resumable(&self) -> bool {
        matches!(&self.work, Work::Receiving(l) if l.engine.is_resumable())
    }

    pub fn stats(&self) -> StreamStats {
        match &self.work {
            Work::Receiving(l) => StreamStats { have_blocks: l.engine.have_count(), ..l.inner.lock().unwrap().stats },
            Work::Present(_) => StreamStats {
                block_count: self.block_count,
                offered: self.block_count,
                have_blocks: self.block_count,
                ..Default::default()
            },
        }
    }

    /// The live assembly, or None if the image is already present.
    fn live(&self) -> Result<Option<&Live>> {
        match &self.work {
            Work::Present(_) => Ok(None),
            Work::Receiving(l) => l.engine.check_live().map(|_| Some(l)),
        }
    }

    /// Takes the digests of blocks `first..` (the next ones in order). Returns the runs of
    /// blocks to request from the sender; blocks the repository holds are copied in the
    /// background, blocks kept from an earlier attempt and zero blocks need nothing.
    pub fn offer(&self, first: u64, digests: &[u8]) -> Result<Vec<Run>> {
        let Some(l) = self.live()? else { return Ok(Vec::new()) };
        let geo = *l.engine.geometry();
        let dl = geo.dl();
        let mut inner = l.inner.lock().unwrap();
        if first != inner.offered {
            bail!(InvalidArgument, "digests of block {first} arrived where block {} was next", inner.offered);
        }
        if !digests.len().is_multiple_of(dl) {
            bail!(InvalidArgument, "{} bytes of digests are not a whole number of {}-byte digests", digests.len(), dl);
        }
        let count = (digests.len() / dl) as u64;
        if first + count > geo.block_count {
            bail!(
                InvalidArgument,
                "digests of blocks up to {} were sent for an image of {} blocks",
                first + count,
                geo.block_count
            );
        }
        let settled = l.engine.settle(first, digests)?;
        inner.digests.extend_from_slice(digests);
        let mut runs: Vec<Run> = Vec::new();
        let mut jobs: Vec<CopyJob> = Vec::new();
        let mut dups = Vec::new();
        let table = l.st.table.clone();
        for (k, d) in digests.chunks_exact(dl).enumerate() {
            let i = first + k as u64;
            let len = geo.run_len(i, 1);
            match settled[k] {
                Settled::Zero => {
                    inner.stats.zero_blocks += 1;
                    continue;
                }
                Settled::Resumed => {
                    inner.stats.resumed_blocks += 1;
                    inner.first_of.entry(Key::of(d)).or_insert(i);
                    continue;
                }
                Settled::Needed => {}
            }
            let found = {
                let inner_ref = &mut *inner;
                table.find(d, |e| {
                    let sd = l.slot_digests(&self.repo, inner_ref, e.slot)?;
                    let at = e.block as usize * dl;
                    Ok(sd.get(at..at + dl) == Some(d))
                })?
            };
            if let Some(ix) = found {
                let e = *table.entry(ix);
                let same_len = l.st.catalog.by_slot(e.slot).map(|c| c.image_len) == Some(geo.image_len);
                inner.identity = match inner.identity {
                    Identity::Undecided if e.block as u64 == i && same_len => Identity::Slot(e.slot),
                    Identity::Slot(x) if x == e.slot && e.block as u64 == i => Identity::Slot(x),
                    _ => Identity::Broken,
                };
                inner.stats.local_blocks += 1;
                inner.stats.local_bytes += len;
                assembly::add_copy(&mut jobs, &geo, e.slot, e.block as u64, i, d);
                continue;
            }
            inner.identity = Identity::Broken;
            match inner.first_of.get(&Key::of(d)) {
                Some(&f) => {
                    inner.stats.duplicate_blocks += 1;
                    dups.push((i, f));
                }
                None => {
                    inner.first_of.insert(Key::of(d), i);
                    inner.stats.missing_blocks += 1;
                    inner.stats.missing_bytes += len;
                    match runs.last_mut() {
                        Some(r) if r.first + r.count == i => r.count += 1,
                        _ => runs.push(Run { first: i, count: 1 }),
                    }
                }
            }
        }
        l.engine.add_duplicates(dups);
        inner.offered += count;
        inner.stats.offered = inner.offered;
        if inner.identity != Identity::Broken {
            inner.deferred.append(&mut jobs);
        } else if !inner.deferred.is_empty() {
            jobs.splice(0..0, std::mem::take(&mut inner.deferred));
        }
        drop(inner);
        l.send_copies(jobs);
        Ok(runs)
    }

    /// Groups the block digests of every image of the repository (see
    /// `transfer::groups`) so `lookup_groups` can resolve a v2 sender's groups. Reads the
    /// images' indexes one at a time (keeping only the groups' locations); returns the
    /// number of distinct groups.
    pub fn load_groups(&self) -> Result<usize> {
        let Work::Receiving(l) = &self.work else { return Ok(0) };
        let mut table = GroupTable::new(self.repo.alg());
        for e in &l.st.catalog.images {
            // A fresh `Holders` per image: its digests are dropped once grouped.
            table.insert_image(e.slot, Holders::new(&self.repo, &l.st.catalog).digests(e.slot)?);
        }
        let n = table.len();
        let _ = self.groups.set(table);
        Ok(n)
    }

    /// Resolves a v2 sender's group records against the repository's groups (after
    /// `load_groups`): each known group comes back with its block digests (from its
    /// image's index), to `offer`.
    pub fn lookup_groups(&self, records: &[u8]) -> Result<Vec<GroupLookup>> {
        let Some(table) = self.groups.get() else {
            bail!(InvalidArgument, "this assembly has not loaded the repository's groups");
        };
        let found = table.lookup(records)?;
        let Some(l) = self.live()? else { bail!(InvalidArgument, "this assembly has nothing to receive") };
        let dl = l.engine.geometry().dl();
        let mut inner = l.inner.lock().unwrap();
        found
            .into_iter()
            .map(|(count, loc)| {
                let digests = match loc {
                    Some(g) => {
                        let d = l.slot_digests(&self.repo, &mut inner, g.image)?;
                        let at = g.first as usize * dl;
                        Some(d[at..at + g.count as usize * dl].to_vec())
                    }
                    None => None,
                };
                Ok(GroupLookup { count, digests })
            })
            .collect()
    }

    /// Verifies the blocks `first..` in `data` (their concatenation; only the image's last
    /// block may be short) against the digests offered for them, then writes them. A
    /// block that does not match is a `DigestMismatch` error and nothing is written.
    pub fn put_blocks(&self, first: u64, data: &[u8]) -> Result<u64> {
        let Some(l) = self.live()? else { return Ok(0) };
        let dl = l.engine.geometry().dl() as u64;
        let count = (data.len() as u64).div_ceil(l.engine.geometry().bs());
        let digests = {
            let inner = l.inner.lock().unwrap();
            let end = first.checked_add(count).filter(|&e| count > 0 && e <= inner.offered);
            let Some(end) = end else {
                bail!(
                    InvalidArgument,
                    "blocks {first}..{} were sent before their digests (digests of {} blocks received)",
                    first.saturating_add(count),
                    inner.offered
                );
            };
            inner.digests[(first * dl) as usize..(end * dl) as usize].to_vec()
        };
        l.engine.put(first, data, &digests)?;
        let mut inner = l.inner.lock().unwrap();
        inner.stats.received_blocks += count;
        inner.stats.received_bytes += data.len() as u64;
        Ok(count)
    }

    /// Waits until every local copy queued so far is done; returns the copier's error.
    pub fn wait_for_copies(&self) -> Result<()> {
        match &self.work {
            Work::Receiving(l) => l.wait_for_copies(),
            Work::Present(_) => Ok(()),
        }
    }

    /// Checks the announced image digest against every digest received, waits for the
    /// local copies, and publishes the image through the engine (which fills repeated
    /// blocks, checks that every block is present and makes the data durable first).
    pub fn finish(&self, image_digest: &[u8], opts: &AddOptions) -> Result<ImageEntry> {
        super::check_tags(&opts.tags)?;
        super::check_meta(opts.meta_json.as_deref())?;
        let l = match &self.work {
            Work::Present(e) => {
                if e.digest != hex::encode(image_digest) {
                    bail!(
                        DigestMismatch,
                        "the sender announced image {} but finished with {}",
                        e.digest,
                        hex::encode(image_digest)
                    );
                }
                return assembly::existing_tagged(&self.repo, e, &opts.tags);
            }
            Work::Receiving(l) => l,
        };
        l.engine.check_live()?;
        let geo = *l.engine.geometry();
        let index = {
            let inner = l.inner.lock().unwrap();
            if inner.offered != geo.block_count {
                bail!(
                    InvalidArgument,
                    "the sender finished after the digests of {} of {} blocks",
                    inner.offered,
                    geo.block_count
                );
            }
            Index::from_digests(geo.alg, geo.block_size, geo.image_len, inner.digests.clone())?
        };
        if index.image_digest() != image_digest {
            bail!(
                DigestMismatch,
                "the block digests received make image {}, not the {} the sender announced; nothing was published",
                index.image_digest_hex(),
                hex::encode(image_digest)
            );
        }
        let (identity, deferred) = {
            let mut inner = l.inner.lock().unwrap();
            (inner.identity, std::mem::take(&mut inner.deferred))
        };
        if let Identity::Slot(slot) = identity {
            if let Some(e) = l.st.catalog.by_slot(slot).filter(|e| e.digest == image_digest) {
                let hex = hex::encode(&e.digest);
                self.abort(true);
                return if opts.tags.is_empty() { self.repo.resolve(&hex) } else { self.repo.tag(&hex, &opts.tags) };
            }
        }
        l.send_copies(deferred);
        l.wait_for_copies()?;
        if l.engine.is_resumed() {
            l.engine.zero_unrecorded(&index)?;
        }
        let entry = l.engine.publish(&index, opts)?;
        l.stop_copier();
        Ok(entry)
    }

    /// Ends an unfinished assembly. With `discard` (or when it is not resumable) its data
    /// is deleted; otherwise it stays for the next attempt with the same resume key, and
    /// is unlocked at once.
    pub fn abort(&self, discard: bool) {
        if let Work::Receiving(l) = &self.work {
            l.engine.abort(discard);
            l.stop_copier();
        }
    }
}

impl Drop for StreamAssembler {
    fn drop(&mut self) {
        // Unfinished: stop copying; a resumable partial stays, a private one goes with
        // the engine's workspace.
        if let Work::Receiving(l) = &self.work {
            l.engine.close();
            l.stop_copier();
        }
    }
}

/// The background copier: takes jobs in batches and runs each batch's jobs in parallel
/// through the engine, which reads them from repository images, verifies every block
/// and writes it into the new image. The first error is kept for `wait_for_copies`.
fn copier(engine: &Assembly, repo: &Repository, st: &State, error: &Mutex<Option<Error>>, rx: Receiver<CopyMsg>) {
    let mut sources = Sources::default();
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut batch: Vec<CopyJob> = Vec::new();
        let mut barriers: Vec<SyncSender<()>> = Vec::new();
        let mut bytes = 0u64;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                CopyMsg::Jobs(j) => {
                    bytes += j.iter().map(|j| j.count * engine.geometry().bs()).sum::<u64>();
                    batch.extend(j);
                }
                // Everything queued before a barrier is in this batch: stop here.
                CopyMsg::Barrier(b) => {
                    barriers.push(b);
                    break;
                }
            }
            if bytes < COPY_BATCH {
                msg = rx.try_recv().ok();
            }
        }
        if engine.is_live() && error.lock().unwrap().is_none() && !batch.is_empty() {
            let copied = sources
                .open(repo, &st.catalog, batch.iter().map(|j| j.slot))
                .and_then(|_| engine.copy(&batch, &sources, &Silent));
            if let Err(e) = copied {
                error.lock().unwrap().get_or_insert(e);
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::indexer::{index_bytes, IndexOptions};
    use crate::repo::InitOptions;
    use crate::test_data::{block, image};
    use crate::transfer::source::{ImageSource, SourceOptions};

    /// Sends `data` through a stream assembly the way the network does; returns the
    /// entry and the blocks that had to be sent.
    fn push(repo: &Repository, data: &[u8], key: Option<&str>, stop_after: Option<u64>) -> (Option<ImageEntry>, u64) {
        let idx = index_bytes(data, IndexOptions::default()).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: data.len() as u64,
                resume_key: key.map(str::to_string),
                expected_digest: None,
                data_bytes: None,
            })
            .unwrap();
        let mut sent = 0;
        for (w, chunk) in idx.digests().chunks(20 * 3).enumerate() {
            let first = w as u64 * 3;
            for r in asm.offer(first, chunk).unwrap() {
                if stop_after.is_some_and(|s| sent >= s) {
                    asm.abort(false);
                    return (None, sent);
                }
                let a = (r.first * 4096) as usize;
                let b = (((r.first + r.count) * 4096) as usize).min(data.len());
                asm.put_blocks(r.first, &data[a..b]).unwrap();
                sent += r.count;
            }
        }
        if stop_after.is_some() {
            asm.abort(false);
            return (None, sent);
        }
        (Some(asm.finish(idx.image_digest(), &AddOptions::default()).unwrap()), sent)
    }

    fn new_repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("r"), InitOptions::default()).unwrap();
        (dir, repo)
    }

    #[test]
    fn sends_only_what_the_repository_lacks() {
        let (dir, repo) = new_repo();
        let a = image(&[1, 2, 3, 4, 0, 5, 6]);
        let p = dir.path().join("a.img");
        fs::write(&p, &a).unwrap();
        repo.add(&p, &AddOptions::default(), &crate::progress::Silent).unwrap();
        // B shares 1, 2, 5, 6, repeats 9 three times, and has a zero block and a short tail.
        let mut b = image(&[1, 9, 2, 0, 9, 7, 5, 6, 9, 8]);
        b.extend_from_slice(&block(10)[..100]);
        let (e, sent) = push(&repo, &b, None, None);
        let e = e.unwrap();
        assert_eq!(sent, 4, "9 once, 7, 8 and the short tail");
        assert_eq!(fs::read(&e.path).unwrap(), b);
        assert_eq!(e.digest, index_bytes(&b, IndexOptions::default()).unwrap().image_digest_hex());
        assert_eq!(repo.list().unwrap().len(), 2);
        repo.verify(&e.digest, &crate::progress::Silent).unwrap();
        // Nothing left in tmp.
        assert_eq!(fs::read_dir(repo.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn wrong_blocks_and_wrong_image_digest_are_refused() {
        let (_dir, repo) = new_repo();
        let b = image(&[1, 2, 3]);
        let idx = index_bytes(&b, IndexOptions::default()).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: b.len() as u64,
                resume_key: Some("k".into()),
                expected_digest: None,
                data_bytes: None,
            })
            .unwrap();
        let runs = asm.offer(0, idx.digests()).unwrap();
        assert_eq!(runs, vec![Run { first: 0, count: 3 }]);
        let mut bad = b.clone();
        bad[5000] ^= 1;
        let err = asm.put_blocks(0, &bad).unwrap_err();
        assert_eq!(err.code, Code::DigestMismatch);
        assert!(err.message.contains("block 1"), "{}", err.message);
        assert_eq!(asm.stats().received_blocks, 0);
        assert!(asm.put_blocks(3, &b[..4096]).is_err(), "beyond the offered digests");
        asm.put_blocks(0, &b).unwrap();
        let err = asm.finish(&[7u8; 20], &AddOptions::default()).unwrap_err();
        assert_eq!(err.code, Code::DigestMismatch);
        asm.abort(true);
        assert!(repo.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(repo.tmp_dir()).unwrap().count(), 0, "discarded");
    }

    #[test]
    fn a_rotten_local_block_is_the_repository_s_fault_not_the_sender_s() {
        let (dir, repo) = new_repo();
        let p = dir.path().join("a.img");
        fs::write(&p, image(&[1, 2, 3])).unwrap();
        let held = repo.add(&p, &AddOptions::default(), &crate::progress::Silent).unwrap();
        fs::OpenOptions::new().write(true).open(&held.path).unwrap().write_all_at(&[0xAA], 4096 + 17).unwrap();
        let data = image(&[2, 9]);
        let idx = index_bytes(&data, IndexOptions::default()).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: data.len() as u64,
                resume_key: None,
                expected_digest: None,
                data_bytes: None,
            })
            .unwrap();
        let runs = asm.offer(0, idx.digests()).unwrap();
        assert_eq!(runs, vec![Run { first: 1, count: 1 }], "block 2 is held locally");
        asm.put_blocks(1, &data[4096..]).unwrap();
        let err = asm.finish(idx.image_digest(), &AddOptions::default()).unwrap_err();
        assert_eq!(err.code, Code::BadRepository, "{}", err.message);
        assert!(err.message.contains(&held.digest), "{}", err.message);
        assert_eq!(repo.list().unwrap().len(), 1);
    }

    #[test]
    fn resumes_from_an_interrupted_attempt() {
        let (_dir, repo) = new_repo();
        let data = image(&(1..=40).collect::<Vec<_>>());
        let (e, sent) = push(&repo, &data, Some("img-1"), Some(10));
        assert!(e.is_none());
        assert!((10..40).contains(&sent));
        // A second attempt receives only the rest.
        let (e, sent2) = push(&repo, &data, Some("img-1"), None);
        assert_eq!(sent2, 40 - sent, "the blocks of the first attempt were kept");
        assert_eq!(fs::read(&e.unwrap().path).unwrap(), data);
        // A corrupted partial is not trusted: the damaged block is sent again.
        let data2 = image(&(100..=120).collect::<Vec<_>>());
        let (_, s1) = push(&repo, &data2, Some("img-2"), Some(8));
        let stem = key_file_stem("img-2");
        let partial = repo.tmp_dir().join(format!("{stem}.partial"));
        let f = fs::OpenOptions::new().write(true).open(&partial).unwrap();
        f.write_all_at(b"rot", 3 * 4096 + 17).unwrap();
        let (e, s2) = push(&repo, &data2, Some("img-2"), None);
        assert_eq!(s2, 21 - s1 + 1);
        assert_eq!(fs::read(&e.unwrap().path).unwrap(), data2);
        // The same key with different content: stale blocks are replaced, zero blocks zeroed.
        let (_, s1) = push(&repo, &image(&[50, 51, 52, 53, 54]), Some("img-3"), Some(5));
        assert_eq!(s1, 5);
        let data3 = image(&[50, 0, 0, 201, 202]);
        let (e, s2) = push(&repo, &data3, Some("img-3"), None);
        assert_eq!(s2, 2);
        assert_eq!(fs::read(&e.unwrap().path).unwrap(), data3);
    }

    #[test]
    fn concurrent_attempts_with_one_key_are_refused() {
        let (_dir, repo) = new_repo();
        let o =
            StreamOptions { image_len: 8192, resume_key: Some("same".into()), expected_digest: None, data_bytes: None };
        let a = repo.begin_stream(o.clone()).unwrap();
        let err = repo.begin_stream(o.clone()).err().unwrap();
        assert_eq!(err.code, Code::Locked);
        drop(a);
        let b = repo.begin_stream(o.clone()).unwrap();
        // An aborted attempt frees the key at once, even while its handle is still alive.
        b.abort(false);
        repo.begin_stream(o).unwrap();
        drop(b);
    }

    #[test]
    fn an_unannounced_image_already_held_is_answered_without_copying() {
        let (dir, repo) = new_repo();
        let seeds: Vec<u32> = (1..=40).map(|i| if i % 7 == 0 { 0 } else { i }).collect();
        let a = image(&seeds);
        let p = dir.path().join("a.img");
        fs::write(&p, &a).unwrap();
        let held = repo.add(&p, &AddOptions::default(), &crate::progress::Silent).unwrap();
        let idx = index_bytes(&a, IndexOptions::default()).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: a.len() as u64,
                resume_key: None,
                expected_digest: None,
                data_bytes: None,
            })
            .unwrap();
        for (w, chunk) in idx.digests().chunks(20 * 3).enumerate() {
            assert!(asm.offer(w as u64 * 3, chunk).unwrap().is_empty());
        }
        asm.wait_for_copies().unwrap();
        assert_eq!(asm.stats().have_blocks, 5, "only the zero blocks: no local block was copied");
        let e =
            asm.finish(idx.image_digest(), &AddOptions { tags: vec!["same".into()], ..Default::default() }).unwrap();
        assert_eq!((e.digest.as_str(), &e.tags[..]), (held.digest.as_str(), &["same".to_string()][..]));
        assert_eq!(repo.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(repo.tmp_dir()).unwrap().count(), 0);

        // The same blocks in the same places but one last block changed: the held-back
        // copies are made after all, and the new image is complete and verified.
        let mut b = a.clone();
        b[a.len() - 1] ^= 1;
        let (e, sent) = push(&repo, &b, None, None);
        let e = e.unwrap();
        assert_eq!(sent, 1);
        assert_eq!(fs::read(&e.path).unwrap(), b);
        repo.verify(&e.digest, &crate::progress::Silent).unwrap();
    }

    #[test]
    fn an_announced_image_already_present_needs_nothing() {
        let (dir, repo) = new_repo();
        let a = image(&[1, 2, 3]);
        let p = dir.path().join("a.img");
        fs::write(&p, &a).unwrap();
        let e = repo.add(&p, &AddOptions::default(), &crate::progress::Silent).unwrap();
        let d = hex::decode(&e.digest).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: a.len() as u64,
                resume_key: None,
                expected_digest: Some(d.clone()),
                data_bytes: None,
            })
            .unwrap();
        assert!(asm.is_complete_image());
        assert!(asm.offer(0, &[1u8; 60]).unwrap().is_empty());
        let named = asm.finish(&d, &AddOptions { tags: vec!["x".into()], ..Default::default() }).unwrap();
        assert_eq!(named.tags, ["x"]);
    }

    #[test]
    fn streams_from_a_hashing_source() {
        let (dir, repo) = new_repo();
        let base: Vec<u32> = (1..=3000).collect();
        let p = dir.path().join("a.img");
        fs::write(&p, image(&base)).unwrap();
        repo.add(&p, &AddOptions::default(), &crate::progress::Silent).unwrap();
        let mut changed = base.clone();
        for i in (0..changed.len()).step_by(10) {
            changed[i] += 100_000;
        }
        let data = image(&changed);
        let q = dir.path().join("b.img");
        fs::write(&q, &data).unwrap();
        let src = ImageSource::hash_file(&q, SourceOptions { alg: HashAlg::Sha1, block_size: 4096 }).unwrap();
        let asm = repo
            .begin_stream(StreamOptions {
                image_len: data.len() as u64,
                resume_key: Some("q".into()),
                expected_digest: None,
                data_bytes: None,
            })
            .unwrap();
        let mut sent = 0;
        while let Some(w) = src.next_window().unwrap() {
            for r in asm.offer(w.first_block, &w.digests).unwrap() {
                let (_, bytes, _) = src.read_run(r.first, r.count, true).unwrap();
                asm.put_blocks(r.first, &bytes).unwrap();
                sent += r.count;
            }
        }
        assert_eq!(sent, 300);
        let e = asm.finish(&src.image_digest().unwrap(), &AddOptions::default()).unwrap();
        assert_eq!(fs::read(&e.path).unwrap(), data);
        let st = asm.stats();
        assert_eq!(st.local_blocks, 2700);
        assert_eq!(st.received_blocks, 300);
    }
}
