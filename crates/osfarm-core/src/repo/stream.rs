//! Assembly of an image whose digests arrive as a stream (a push): the receiving half
//! of content-based transfer.
//!
//! Unlike `Assembler`, which starts from a complete index, a `StreamAssembler` learns the
//! image's block digests window by window while the sender is still hashing. For each
//! window, `offer` looks every digest up in the repository's hash table: blocks the
//! repository holds are queued for a background copier (which verifies each against its
//! digest while copying), blocks already received by an earlier, interrupted attempt are
//! kept, and the rest come back as coalesced runs for the caller to request from the
//! sender. `put_blocks` verifies each received block against the digest the sender
//! announced before writing it. `finish` checks the announced image digest against the
//! digests received (so every block is bound to the image's name), waits for the copier,
//! and publishes atomically through `Repository::publish_new_image`.
//!
//! Resume: with a resume key (chosen by the sender, e.g. from the file's identity), the
//! data goes to `tmp/push-<key hash>.partial` and a record `tmp/push-<key hash>.got`
//! holds, per block, the digest of what was written there. Nothing in the record is
//! trusted: a new attempt re-hashes every block it claims and keeps those that match,
//! so a torn record or a crash between data and record costs a re-send, never a wrong
//! image. Both files are locked by the live assembly and never visible as an image.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::catalog::CatalogEntry;
use super::lock::{FileLock, LockKind};
use super::plan::Run;
use super::{AddOptions, Holders, ImageEntry, Repository, State, Workspace, IMAGE_FILE};
use crate::bail;
use crate::digest_set::{prefix64, PrefixHasher};
use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::hash::{self, HashAlg, MAX_DIGEST_LEN};
use crate::index::{block_count_for, Index};
use crate::transfer::groups::{GroupLookup, GroupTable};

const GOT_MAGIC: [u8; 8] = *b"\x89OSFG\r\n\x1a";
const GOT_VERSION: u32 = 1;
const GOT_HEADER_LEN: u64 = 64;
/// Largest read or write of the copier.
const IO_CHUNK: u64 = 1 << 20;
/// Bytes the copier takes per batch (its jobs run in parallel).
const COPY_BATCH: u64 = 8 << 20;
/// Written bytes after which writeback is started, so `finish`'s fsync is short.
const WRITEBACK_KICK: u64 = 32 << 20;

/// What the sender announces before its digests.
#[derive(Clone, Debug, Default)]
pub struct StreamOptions {
    pub image_len: u64,
    /// Names the image across attempts so an interrupted transfer resumes; `None` makes
    /// the assembly private (discarded if it does not finish).
    pub resume_key: Option<String>,
    /// The image digest, when the sender knows it in advance (an image of its repository).
    pub expected_digest: Option<Vec<u8>>,
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

struct CopyJob {
    slot: u32,
    src_block: u64,
    dst_block: u64,
    count: u64,
    /// The digests the copied blocks must have.
    digests: Vec<u8>,
}

enum CopyMsg {
    Jobs(Vec<CopyJob>),
    Barrier(SyncSender<()>),
}

struct Inner {
    digests: Vec<u8>,
    offered: u64,
    have: Vec<u64>,
    /// Digests of blocks verified in the partial file of an earlier attempt (zero: none).
    resumed: Vec<u8>,
    /// Blocks an earlier attempt may have written (a record exists, verified or not).
    dirty: Vec<u64>,
    first_of: HashMap<Key, u64, BuildHasherDefault<PrefixHasher>>,
    /// (later block, first block) pairs filled from the first when finishing.
    dups: Vec<(u64, u64)>,
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

fn bit(v: &[u64], i: u64) -> bool {
    v[(i / 64) as usize] & (1 << (i % 64)) != 0
}

impl Inner {
    fn set_have(&mut self, i: u64) {
        let w = &mut self.have[(i / 64) as usize];
        let b = 1 << (i % 64);
        if *w & b == 0 {
            *w |= b;
            self.stats.have_blocks += 1;
        }
    }
}

struct Shared {
    repo: Repository,
    st: Arc<State>,
    alg: HashAlg,
    block_size: u32,
    image_len: u64,
    block_count: u64,
    data: FileLock,
    data_path: PathBuf,
    got: Option<(File, PathBuf)>,
    inner: Mutex<Inner>,
    copy_error: Mutex<Option<Error>>,
    unkicked: AtomicU64,
    done: AtomicBool,
}

/// A streaming assembly; see the module documentation.
pub struct StreamAssembler {
    repo: Repository,
    shared: Option<Arc<Shared>>,
    existing: Option<ImageEntry>,
    block_count: u64,
    image_len: u64,
    copier_tx: Mutex<Option<Sender<CopyMsg>>>,
    copier: Mutex<Option<JoinHandle<()>>>,
    workspace: Mutex<Option<Workspace>>,
    resumable: bool,
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
        let alg = self.alg();
        let block_size = self.block_size();
        let block_count = block_count_for(opts.image_len, block_size);
        if block_count > u32::MAX as u64 {
            bail!(InvalidArgument, "images of more than 2^32 blocks are not supported");
        }
        if let Some(d) = &opts.expected_digest {
            if d.len() != alg.len() {
                bail!(
                    InvalidArgument,
                    "an image digest of {} bytes was announced; this repository uses {}",
                    d.len(),
                    alg.name()
                );
            }
        }
        let st = {
            let lock = self.lock(LockKind::Shared)?;
            self.state(&lock)?
        };
        if let Some(d) = &opts.expected_digest {
            if let Some(e) = st.catalog.by_digest(d) {
                let e = self.entry_of(e);
                if e.size != opts.image_len {
                    bail!(Mismatch, "image {} has {} bytes, not the {} announced", e.digest, e.size, opts.image_len);
                }
                return Ok(StreamAssembler {
                    repo: self.clone(),
                    shared: None,
                    existing: Some(e),
                    block_count,
                    image_len: opts.image_len,
                    copier_tx: Mutex::new(None),
                    copier: Mutex::new(None),
                    workspace: Mutex::new(None),
                    resumable: false,
                    groups: OnceLock::new(),
                });
            }
        }
        let words = block_count.div_ceil(64) as usize;
        let dl = alg.len();
        let mut resumed = Vec::new();
        let mut dirty = Vec::new();
        let (data, data_path, got, workspace) = match &opts.resume_key {
            Some(key) => {
                if key.is_empty() || key.len() > 512 {
                    bail!(InvalidArgument, "a resume key must be 1 to 512 bytes");
                }
                let tmp = self.tmp_dir();
                fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
                let stem = key_file_stem(key);
                let path = tmp.join(format!("{stem}.partial"));
                let got_path = tmp.join(format!("{stem}.got"));
                let data = super::assemble::lock_partial(
                    &path,
                    "this image is already being received by another transfer; wait for it or retry",
                )?;
                let got = super::lock::open_keeping(&got_path).map_err(|e| Error::io(&got_path, "cannot open", e))?;
                let len = data.file().metadata().map_err(|e| Error::io(&path, "cannot stat", e))?.len();
                let header = got_header(alg, block_size, opts.image_len);
                let mut h = [0u8; GOT_HEADER_LEN as usize];
                let record_ok = len == opts.image_len
                    && got.read_exact_at(&mut h, 0).is_ok()
                    && h == header
                    && got.metadata().map(|m| m.len()).unwrap_or(0) == GOT_HEADER_LEN + block_count * dl as u64;
                if record_ok {
                    let mut rec = vec![0u8; (block_count * dl as u64) as usize];
                    got.read_exact_at(&mut rec, GOT_HEADER_LEN).map_err(|e| Error::io(&got_path, "cannot read", e))?;
                    let (r, d) = reverify(data.file(), &path, alg, block_size, opts.image_len, &rec)?;
                    resumed = r;
                    dirty = d;
                } else {
                    data.file().set_len(0).map_err(|e| Error::io(&path, "cannot truncate", e))?;
                    got.set_len(0).map_err(|e| Error::io(&got_path, "cannot truncate", e))?;
                    got.write_all_at(&header, 0).map_err(|e| Error::io(&got_path, "cannot write", e))?;
                    got.set_len(GOT_HEADER_LEN + block_count * dl as u64)
                        .map_err(|e| Error::io(&got_path, "cannot size", e))?;
                }
                data.file().set_len(opts.image_len).map_err(|e| Error::io(&path, "cannot size", e))?;
                (data, path, Some((got, got_path)), None)
            }
            None => {
                let (ws, data, path) = self.private_image_file("push", opts.image_len)?;
                (data, path, None, Some(ws))
            }
        };
        if resumed.is_empty() {
            resumed = Vec::new();
        }
        if dirty.is_empty() {
            dirty = vec![0; words];
        }
        let inner = Inner {
            digests: Vec::with_capacity((block_count * dl as u64) as usize),
            offered: 0,
            have: vec![0; words],
            resumed,
            dirty,
            first_of: HashMap::default(),
            dups: Vec::new(),
            stats: StreamStats { block_count, ..Default::default() },
            slot_digests: HashMap::new(),
            identity: Identity::Undecided,
            deferred: Vec::new(),
        };
        let resumable = got.is_some();
        let shared = Arc::new(Shared {
            repo: self.clone(),
            st,
            alg,
            block_size,
            image_len: opts.image_len,
            block_count,
            data,
            data_path,
            got,
            inner: Mutex::new(inner),
            copy_error: Mutex::new(None),
            unkicked: AtomicU64::new(0),
            done: AtomicBool::new(false),
        });
        let (tx, rx) = channel();
        let copier = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("osfarm-copy".into())
                .spawn(move || copier(shared, rx))
                .map_err(|e| Error::new(Code::Io, format!("cannot start the copy thread: {e}")))?
        };
        Ok(StreamAssembler {
            repo: self.clone(),
            shared: Some(shared),
            existing: None,
            block_count,
            image_len: opts.image_len,
            copier_tx: Mutex::new(Some(tx)),
            copier: Mutex::new(Some(copier)),
            workspace: Mutex::new(workspace),
            groups: OnceLock::new(),
            resumable,
        })
    }
}

fn got_header(alg: HashAlg, block_size: u32, image_len: u64) -> [u8; GOT_HEADER_LEN as usize] {
    let mut h = [0u8; GOT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&GOT_MAGIC);
    h[8..12].copy_from_slice(&GOT_VERSION.to_le_bytes());
    h[12] = alg.id();
    h[13] = block_size.trailing_zeros() as u8;
    h[16..24].copy_from_slice(&image_len.to_le_bytes());
    h
}

/// Re-hashes the blocks a record claims. Returns (verified digests, dirty bitmap).
fn reverify(
    file: &File,
    path: &Path,
    alg: HashAlg,
    block_size: u32,
    image_len: u64,
    rec: &[u8],
) -> Result<(Vec<u8>, Vec<u64>)> {
    let dl = alg.len();
    let n = block_count_for(image_len, block_size);
    let bs = block_size as u64;
    let per = (IO_CHUNK / bs).max(1);
    let mut out = vec![0u8; rec.len()];
    let claimed = |i: u64| !hash::is_zero_digest(&rec[i as usize * dl..(i as usize + 1) * dl]);
    let mut dirty = vec![0u64; n.div_ceil(64) as usize];
    for i in (0..n).filter(|&i| claimed(i)) {
        dirty[(i / 64) as usize] |= 1 << (i % 64);
    }
    out.par_chunks_mut(per as usize * dl).enumerate().try_for_each_init(
        Vec::new,
        |buf: &mut Vec<u8>, (c, o)| -> Result<()> {
            let b0 = c as u64 * per;
            let b1 = (b0 + per).min(n);
            if !(b0..b1).any(claimed) {
                return Ok(());
            }
            let len = (b1 * bs).min(image_len) - b0 * bs;
            buf.resize(len as usize, 0);
            file.read_exact_at(buf, b0 * bs).map_err(|e| Error::io(path, "cannot read", e))?;
            let mut d = [0u8; MAX_DIGEST_LEN];
            for i in (b0..b1).filter(|&i| claimed(i)) {
                let from = ((i - b0) * bs) as usize;
                let to = (from + bs as usize).min(buf.len());
                alg.block_digest_into(&buf[from..to], &mut d[..dl]);
                let want = &rec[i as usize * dl..(i as usize + 1) * dl];
                if d[..dl] == *want {
                    o[(i - b0) as usize * dl..(i - b0 + 1) as usize * dl].copy_from_slice(want);
                }
            }
            Ok(())
        },
    )?;
    Ok((out, dirty))
}

impl Shared {
    /// The length of the repository image in `slot`.
    fn slot_len(&self, slot: u32) -> Option<u64> {
        self.st.catalog.by_slot(slot).map(|e| e.image_len)
    }

    fn block_len(&self, i: u64) -> usize {
        (self.image_len - i * self.block_size as u64).min(self.block_size as u64) as usize
    }

    fn file(&self) -> &File {
        self.data.file()
    }

    /// Writes data at block `first`, records it for resume and starts writeback now and then.
    fn write_blocks(&self, first: u64, data: &[u8], digests: &[u8]) -> Result<()> {
        self.file()
            .write_all_at(data, first * self.block_size as u64)
            .map_err(|e| Error::io(&self.data_path, "cannot write", e))?;
        if let Some((got, got_path)) = &self.got {
            got.write_all_at(digests, GOT_HEADER_LEN + first * self.alg.len() as u64)
                .map_err(|e| Error::io(got_path, "cannot write", e))?;
        }
        if self.unkicked.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64 >= WRITEBACK_KICK {
            self.unkicked.store(0, Ordering::Relaxed);
            // SAFETY: sync_file_range takes a descriptor we own and integers; it only
            // starts writeback of dirty pages, it does not wait.
            unsafe {
                libc::sync_file_range(self.file().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    /// Verifies each block of `data` against `digests`; returns the first bad block.
    fn verify(&self, first: u64, data: &[u8], digests: &[u8]) -> Option<u64> {
        let dl = self.alg.len();
        let bs = self.block_size as usize;
        data.par_chunks(bs).with_min_len(16).enumerate().find_map_first(|(k, block)| {
            let i = first + k as u64;
            if block.len() != self.block_len(i) {
                return Some(i);
            }
            let mut d = [0u8; MAX_DIGEST_LEN];
            self.alg.block_digest_into(block, &mut d[..dl]);
            (d[..dl] != digests[k * dl..(k + 1) * dl]).then_some(i)
        })
    }

    fn slot_digests(&self, inner: &mut Inner, slot: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = inner.slot_digests.get(&slot) {
            return Ok(d.clone());
        }
        let d = Arc::new(Holders::new(&self.repo, &self.st.catalog).digests(slot)?.to_vec());
        inner.slot_digests.insert(slot, d.clone());
        Ok(d)
    }
}

impl StreamAssembler {
    /// True if the announced image is already in the repository: nothing to receive.
    pub fn is_complete_image(&self) -> bool {
        self.existing.is_some()
    }

    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// True if the data is kept for a later attempt when this one does not finish.
    pub fn is_resumable(&self) -> bool {
        self.resumable
    }

    pub fn stats(&self) -> StreamStats {
        match &self.shared {
            Some(s) => s.inner.lock().unwrap().stats,
            None => StreamStats {
                block_count: self.block_count,
                offered: self.block_count,
                have_blocks: self.block_count,
                ..Default::default()
            },
        }
    }

    fn shared(&self) -> Result<&Arc<Shared>> {
        match &self.shared {
            Some(s) if !s.done.load(Ordering::Relaxed) => Ok(s),
            _ => bail!(InvalidArgument, "this assembly is finished or aborted"),
        }
    }

    /// Takes the digests of blocks `first..` (the next ones in order). Returns the runs of
    /// blocks to request from the sender; blocks the repository holds are copied in the
    /// background, blocks kept from an earlier attempt and zero blocks need nothing.
    pub fn offer(&self, first: u64, digests: &[u8]) -> Result<Vec<Run>> {
        if self.existing.is_some() {
            return Ok(Vec::new());
        }
        let s = self.shared()?;
        let dl = s.alg.len();
        let bs = s.block_size as u64;
        let mut inner = s.inner.lock().unwrap();
        if first != inner.offered {
            bail!(InvalidArgument, "digests of block {first} arrived where block {} was next", inner.offered);
        }
        if digests.len() % dl != 0 {
            bail!(InvalidArgument, "{} bytes of digests are not a whole number of {}-byte digests", digests.len(), dl);
        }
        let count = (digests.len() / dl) as u64;
        if first + count > s.block_count {
            bail!(
                InvalidArgument,
                "digests of blocks up to {} were sent for an image of {} blocks",
                first + count,
                s.block_count
            );
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut jobs: Vec<CopyJob> = Vec::new();
        let table = s.st.table.clone();
        for (k, d) in digests.chunks_exact(dl).enumerate() {
            let i = first + k as u64;
            inner.digests.extend_from_slice(d);
            let len = s.block_len(i) as u64;
            if hash::is_zero_digest(d) {
                inner.stats.zero_blocks += 1;
                if bit(&inner.dirty, i) {
                    super::copy::zero_range(s.file(), &s.data_path, i * bs, len)?;
                }
                inner.set_have(i);
                continue;
            }
            if !inner.resumed.is_empty() && inner.resumed[i as usize * dl..(i as usize + 1) * dl] == *d {
                inner.stats.resumed_blocks += 1;
                inner.set_have(i);
                inner.first_of.entry(Key::of(d)).or_insert(i);
                continue;
            }
            let found = {
                let inner_ref = &mut *inner;
                table.find(d, |e| {
                    let sd = s.slot_digests(inner_ref, e.slot)?;
                    let at = e.block as usize * dl;
                    Ok(sd.get(at..at + dl) == Some(d))
                })?
            };
            if let Some(ix) = found {
                let e = *table.entry(ix);
                inner.identity = match inner.identity {
                    Identity::Undecided if e.block as u64 == i && s.slot_len(e.slot) == Some(s.image_len) => {
                        Identity::Slot(e.slot)
                    }
                    Identity::Slot(x) if x == e.slot && e.block as u64 == i => Identity::Slot(x),
                    _ => Identity::Broken,
                };
                inner.stats.local_blocks += 1;
                inner.stats.local_bytes += len;
                let extend = jobs.last_mut().filter(|j| {
                    j.slot == e.slot
                        && j.src_block + j.count == e.block as u64
                        && j.dst_block + j.count == i
                        && (j.count + 1) * bs <= IO_CHUNK
                });
                match extend {
                    Some(j) => {
                        j.count += 1;
                        j.digests.extend_from_slice(d);
                    }
                    None => jobs.push(CopyJob {
                        slot: e.slot,
                        src_block: e.block as u64,
                        dst_block: i,
                        count: 1,
                        digests: d.to_vec(),
                    }),
                }
                continue;
            }
            inner.identity = Identity::Broken;
            match inner.first_of.get(&Key::of(d)) {
                Some(&f) => {
                    inner.stats.duplicate_blocks += 1;
                    inner.dups.push((i, f));
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
        inner.offered += count;
        inner.stats.offered = inner.offered;
        if inner.identity != Identity::Broken {
            inner.deferred.append(&mut jobs);
        } else if !inner.deferred.is_empty() {
            jobs.splice(0..0, std::mem::take(&mut inner.deferred));
        }
        drop(inner);
        self.send_copies(jobs);
        Ok(runs)
    }

    /// Groups the block digests of every image of the repository (see
    /// `transfer::groups`) so `lookup_groups` can resolve a v2 sender's groups. Reads the
    /// images' indexes one at a time (keeping only the groups' locations); returns the
    /// number of distinct groups.
    pub fn load_groups(&self) -> Result<usize> {
        let Some(s) = &self.shared else { return Ok(0) };
        let mut table = GroupTable::new(s.alg);
        for e in &s.st.catalog.images {
            // A fresh `Holders` per image: its digests are dropped once grouped.
            table.insert_image(e.slot, Holders::new(&s.repo, &s.st.catalog).digests(e.slot)?);
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
        let s = self.shared()?;
        let dl = s.alg.len();
        let mut inner = s.inner.lock().unwrap();
        found
            .into_iter()
            .map(|(count, loc)| {
                let digests = match loc {
                    Some(l) => {
                        let d = s.slot_digests(&mut inner, l.image)?;
                        let at = l.first as usize * dl;
                        Some(d[at..at + l.count as usize * dl].to_vec())
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
        if self.existing.is_some() {
            return Ok(0);
        }
        let s = self.shared()?;
        let dl = s.alg.len();
        let bs = s.block_size as u64;
        let count = (data.len() as u64).div_ceil(bs);
        let digests = {
            let inner = s.inner.lock().unwrap();
            let end = first.checked_add(count).filter(|&e| count > 0 && e <= inner.offered);
            if end.is_none() {
                bail!(
                    InvalidArgument,
                    "blocks {first}..{} were sent before their digests (digests of {} blocks received)",
                    first.saturating_add(count),
                    inner.offered
                );
            }
            inner.digests[(first * dl as u64) as usize..((first + count) * dl as u64) as usize].to_vec()
        };
        if let Some(i) = s.verify(first, data, &digests) {
            bail!(
                DigestMismatch,
                "block {i} does not match the digest the sender announced for it; nothing was written"
            );
        }
        s.write_blocks(first, data, &digests)?;
        let mut inner = s.inner.lock().unwrap();
        for i in first..first + count {
            inner.set_have(i);
        }
        inner.stats.received_blocks += count;
        inner.stats.received_bytes += data.len() as u64;
        Ok(count)
    }

    fn send_copies(&self, jobs: Vec<CopyJob>) {
        if !jobs.is_empty() {
            if let Some(tx) = self.copier_tx.lock().unwrap().as_ref() {
                let _ = tx.send(CopyMsg::Jobs(jobs));
            }
        }
    }

    /// Waits until every local copy queued so far is done; returns the copier's error.
    pub fn wait_for_copies(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        let sent = self.copier_tx.lock().unwrap().as_ref().map(|c| c.send(CopyMsg::Barrier(tx)).is_ok());
        if sent == Some(true) {
            let _ = rx.recv();
        }
        if let Some(s) = &self.shared {
            if let Some(e) = s.copy_error.lock().unwrap().take() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Checks the announced image digest against every digest received, waits for the
    /// local copies, fills repeated blocks, checks that every block is present, makes the
    /// data durable and publishes the image into the repository.
    pub fn finish(&self, image_digest: &[u8], opts: &AddOptions) -> Result<ImageEntry> {
        super::check_name(opts.name.as_deref())?;
        super::check_meta(opts.meta_json.as_deref())?;
        if let Some(e) = &self.existing {
            if e.digest != hex::encode(image_digest) {
                bail!(
                    DigestMismatch,
                    "the sender announced image {} but finished with {}",
                    e.digest,
                    hex::encode(image_digest)
                );
            }
            return match &opts.name {
                Some(n) if e.name.as_deref() != Some(n) => self.repo.set_name(&e.digest, Some(n)),
                _ => Ok(e.clone()),
            };
        }
        let s = self.shared()?.clone();
        let index = {
            let inner = s.inner.lock().unwrap();
            if inner.offered != s.block_count {
                bail!(
                    InvalidArgument,
                    "the sender finished after the digests of {} of {} blocks",
                    inner.offered,
                    s.block_count
                );
            }
            Index::from_digests(s.alg, s.block_size, s.image_len, inner.digests.clone())?
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
            let mut inner = s.inner.lock().unwrap();
            (inner.identity, std::mem::take(&mut inner.deferred))
        };
        if let Identity::Slot(slot) = identity {
            if let Some(e) = s.st.catalog.by_slot(slot).filter(|e| e.digest == image_digest) {
                let hex = hex::encode(&e.digest);
                self.abort(true);
                return match &opts.name {
                    Some(n) => self.repo.set_name(&hex, Some(n)),
                    None => self.repo.resolve(&hex),
                };
            }
        }
        self.send_copies(deferred);
        self.wait_for_copies()?;
        self.fill_duplicates(&s)?;
        if !s.inner.lock().unwrap().resumed.is_empty() {
            check_zero_blocks(&s, &index)?;
        }
        {
            let inner = s.inner.lock().unwrap();
            if inner.stats.have_blocks != s.block_count {
                let first = (0..s.block_count).find(|&i| !bit(&inner.have, i)).unwrap_or(0);
                bail!(
                    InvalidArgument,
                    "cannot finish: {} blocks are still missing (the first is block {first})",
                    s.block_count - inner.stats.have_blocks
                );
            }
        }
        s.file().sync_all().map_err(|e| Error::io(&s.data_path, "cannot sync", e))?;
        let ws = match self.workspace.lock().unwrap().take() {
            Some(ws) => ws,
            None => {
                let ws = s.repo.workspace("push")?;
                fsutil::publish(&s.data_path, &ws.dir.join(IMAGE_FILE))?;
                if let Some((_, p)) = &s.got {
                    let _ = fs::remove_file(p);
                }
                ws
            }
        };
        s.done.store(true, Ordering::Relaxed);
        self.stop_copier();
        let format = opts.format.clone().unwrap_or_else(|| super::detect_format(&ws.dir.join(IMAGE_FILE)));
        let entry = CatalogEntry {
            slot: 0,
            digest: index.image_digest().to_vec(),
            image_len: index.image_len(),
            added_ms: super::now_ms(),
            name: opts.name.clone(),
            original_name: opts.original_name.clone(),
            format,
            meta_json: opts.meta_json.clone(),
        };
        s.repo.publish_new_image(ws, &index, entry)
    }

    /// Copies repeated blocks from their first occurrence in the file, verified.
    fn fill_duplicates(&self, s: &Shared) -> Result<()> {
        let (todo, digests) = {
            let inner = s.inner.lock().unwrap();
            let todo: Vec<(u64, u64)> = inner.dups.iter().copied().filter(|&(j, _)| !bit(&inner.have, j)).collect();
            (todo, inner.digests.clone())
        };
        let dl = s.alg.len();
        let bs = s.block_size as u64;
        let mut buf = vec![0u8; bs as usize];
        let mut d = [0u8; MAX_DIGEST_LEN];
        for (j, f) in todo {
            let n = s.block_len(f);
            s.file().read_exact_at(&mut buf[..n], f * bs).map_err(|e| Error::io(&s.data_path, "cannot read", e))?;
            s.alg.block_digest_into(&buf[..n], &mut d[..dl]);
            let want = &digests[j as usize * dl..(j as usize + 1) * dl];
            if d[..dl] != *want {
                bail!(
                    DigestMismatch,
                    "block {f}, the first copy of block {j}, does not match its digest; nothing was published"
                );
            }
            s.write_blocks(j, &buf[..n], want)?;
            let mut inner = s.inner.lock().unwrap();
            inner.set_have(j);
        }
        Ok(())
    }

    fn stop_copier(&self) {
        self.copier_tx.lock().unwrap().take();
        if let Some(h) = self.copier.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    /// Ends an unfinished assembly. With `discard` (or when it is not resumable) its data
    /// is deleted; otherwise it stays for the next attempt with the same resume key.
    pub fn abort(&self, discard: bool) {
        let Some(s) = &self.shared else { return };
        if s.done.swap(true, Ordering::Relaxed) {
            return;
        }
        self.stop_copier();
        self.workspace.lock().unwrap().take();
        if discard {
            if let Some((_, got_path)) = &s.got {
                let _ = fs::remove_file(got_path);
                let _ = fs::remove_file(&s.data_path);
            }
        }
        // Release the partial's lock now, not when the last handle is dropped (for a
        // binding, whenever its garbage collector runs): the next attempt with the same
        // resume key must be able to resume at once. Late writes of a put that passed
        // its check before `done` write verified data, and a new attempt trusts nothing
        // it did not re-hash.
        // SAFETY: flock only takes a descriptor this assembly owns and an integer.
        unsafe { libc::flock(s.data.file().as_raw_fd(), libc::LOCK_UN) };
    }
}

/// After a resume, all-zero blocks must read as zeros even where an earlier attempt
/// wrote something unrecorded.
fn check_zero_blocks(s: &Shared, index: &Index) -> Result<()> {
    let bs = s.block_size as u64;
    let mut buf = vec![0u8; bs as usize];
    for i in (0..index.block_count()).filter(|&i| index.is_zero_block(i)) {
        let n = s.block_len(i);
        s.file().read_exact_at(&mut buf[..n], i * bs).map_err(|e| Error::io(&s.data_path, "cannot read", e))?;
        if !hash::is_zero(&buf[..n]) {
            super::copy::zero_range(s.file(), &s.data_path, i * bs, n as u64)?;
        }
    }
    Ok(())
}

impl Drop for StreamAssembler {
    fn drop(&mut self) {
        // Unfinished: stop copying; a resumable partial stays, a private one goes with its workspace.
        if let Some(s) = &self.shared {
            s.done.store(true, Ordering::Relaxed);
        }
        self.stop_copier();
    }
}

/// The background copier: takes jobs in batches and runs each batch's jobs in parallel,
/// reading from repository images, verifying every block, writing into the new image.
fn copier(s: Arc<Shared>, rx: Receiver<CopyMsg>) {
    let mut files: HashMap<u32, Arc<(File, PathBuf)>> = HashMap::new();
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut batch: Vec<CopyJob> = Vec::new();
        let mut barriers: Vec<SyncSender<()>> = Vec::new();
        let mut bytes = 0u64;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                CopyMsg::Jobs(j) => {
                    bytes += j.iter().map(|j| j.count * s.block_size as u64).sum::<u64>();
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
        if !s.done.load(Ordering::Relaxed) && s.copy_error.lock().unwrap().is_none() && !batch.is_empty() {
            if let Err(e) = run_batch(&s, &mut files, batch) {
                let mut ce = s.copy_error.lock().unwrap();
                if ce.is_none() {
                    *ce = Some(e);
                }
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

fn run_batch(s: &Shared, files: &mut HashMap<u32, Arc<(File, PathBuf)>>, batch: Vec<CopyJob>) -> Result<()> {
    for j in &batch {
        if let std::collections::hash_map::Entry::Vacant(v) = files.entry(j.slot) {
            let e = s.st.catalog.by_slot(j.slot).ok_or_else(|| super::table::inconsistent("unknown slot"))?;
            let p = s.repo.image_dir(&e.digest_hex()).join(IMAGE_FILE);
            let f = File::open(&p).map_err(|err| Error::io(&p, "cannot open repository image", err))?;
            v.insert(Arc::new((f, p)));
        }
    }
    let bs = s.block_size as u64;
    batch.par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, j| -> Result<()> {
        let src = &files[&j.slot];
        let len = ((j.dst_block + j.count) * bs).min(s.image_len) - j.dst_block * bs;
        buf.resize(len as usize, 0);
        src.0.read_exact_at(buf, j.src_block * bs).map_err(|e| Error::io(&src.1, "cannot read repository image", e))?;
        if let Some(bad) = s.verify(j.dst_block, buf, &j.digests) {
            bail!(
                DigestMismatch,
                "block {} of repository image {} does not match its digest: the image is damaged on disk \
                 (run `osfarm repo verify`, then remove it and add it again); nothing was published",
                j.src_block + (bad - j.dst_block),
                src.1.display()
            );
        }
        s.write_blocks(j.dst_block, buf, &j.digests)?;
        let mut inner = s.inner.lock().unwrap();
        for i in j.dst_block..j.dst_block + j.count {
            inner.set_have(i);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
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
        let o = StreamOptions { image_len: 8192, resume_key: Some("same".into()), expected_digest: None };
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
            .begin_stream(StreamOptions { image_len: a.len() as u64, resume_key: None, expected_digest: None })
            .unwrap();
        for (w, chunk) in idx.digests().chunks(20 * 3).enumerate() {
            assert!(asm.offer(w as u64 * 3, chunk).unwrap().is_empty());
        }
        asm.wait_for_copies().unwrap();
        assert_eq!(asm.stats().have_blocks, 5, "only the zero blocks: no local block was copied");
        let e =
            asm.finish(idx.image_digest(), &AddOptions { name: Some("same".into()), ..Default::default() }).unwrap();
        assert_eq!((e.digest.as_str(), e.name.as_deref()), (held.digest.as_str(), Some("same")));
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
            })
            .unwrap();
        assert!(asm.is_complete_image());
        assert!(asm.offer(0, &[1u8; 60]).unwrap().is_empty());
        let named = asm.finish(&d, &AddOptions { name: Some("x".into()), ..Default::default() }).unwrap();
        assert_eq!(named.name.as_deref(), Some("x"));
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
