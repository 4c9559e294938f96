//! A lazily present image: what the NBD server reads from.
//!
//! A block is looked for, in order, (1) in the export's own data file (the resumable
//! partial, or the image if the repository holds it whole), (2) in any other image of the
//! local repository that holds the same digest (the plan made when the export opened),
//! (3) from the `Fetcher` (in the binding: JavaScript, with `pull`'s HTTP code). Every
//! block is hashed and compared with its digest in the image's index before it is served
//! or stored; a block that does not match is never served (the read fails, an `Event`
//! says which block and where it came from). Blocks from (2) and (3) are stored in the
//! partial, so each arrives once, and the image is published when complete.
//!
//! Concurrency: the blocks being copied or fetched are in an in-flight table; a reader
//! that needs one of them waits for that job instead of starting another (coalescing),
//! while misses on other blocks start their own jobs (several in flight). Fetched bytes
//! are verified and stored by the first waiting reader, never on the fetcher's thread.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::store::Store;
use crate::bail;
use crate::error::{Code, Error, Result};
use crate::hash::MAX_DIGEST_LEN;
use crate::repo::{AddOptions, BlockSource, ImageEntry, Repository, Run};
use crate::Index;

/// One request to the fetcher: blocks `[first, first + count)`, i.e. bytes
/// `[offset, offset + length)` of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub first: u64,
    pub count: u64,
    pub offset: u64,
    pub length: u64,
    /// A guest read waits for it (else it is prefetch): fetchers should serve these first.
    pub urgent: bool,
}

/// Gets missing blocks from elsewhere. `fetch` must return quickly and answer later
/// (from any thread) through `reply`; a reply dropped unanswered fails the request.
pub trait Fetcher: Send + Sync {
    fn fetch(&self, request: FetchRequest, reply: FetchReply);
}

/// The answer slot of one `FetchRequest`.
pub struct FetchReply {
    job: Option<Arc<Job>>,
}

impl FetchReply {
    /// Hands over the requested bytes (exactly `length` of them), or why they could not
    /// be had. They are verified before anything uses them.
    pub fn complete(mut self, result: std::result::Result<Vec<u8>, String>) {
        if let Some(job) = self.job.take() {
            job.arrive(result);
        }
    }
}

impl Drop for FetchReply {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.arrive(Err("the fetcher dropped the request without an answer".into()));
        }
    }
}

/// Where a block that failed verification came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The export's own data file (the partial, or the complete image).
    Store,
    /// Another image of the local repository.
    Local,
    /// The fetcher.
    Fetched,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Store => "store",
            Origin::Local => "local",
            Origin::Fetched => "fetched",
        }
    }
}

/// Something the owner should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Block `block` did not match its digest; it was neither served nor stored. A local
    /// copy that fails is fetched instead; a fetched one fails the reads that wanted it.
    BadBlock { block: u64, origin: Origin, message: String },
    /// The fetcher could not deliver blocks `[first, first + count)`; the reads that
    /// wanted them failed, and the next read asks again.
    FetchFailed { first: u64, count: u64, message: String },
}

pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Clone, Default)]
pub struct LazyOptions {
    /// Refuse an index whose image digest (hex) is not this one.
    pub expected_digest: Option<String>,
    /// Where missing blocks come from; without one, reads of missing blocks fail.
    pub fetcher: Option<Arc<dyn Fetcher>>,
    pub events: Option<EventSink>,
    /// Largest request made of the fetcher and largest step of `ensure` (0: 8 MiB worth).
    pub max_fetch_blocks: u64,
}

/// Counters since the export was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyStats {
    pub block_count: u64,
    /// Blocks present in the data file (zero blocks included).
    pub have_blocks: u64,
    /// NBD reads served, and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
    /// Blocks copied from other images of the local repository.
    pub local_blocks: u64,
    /// Requests made of the fetcher, blocks they delivered that verified, bytes delivered.
    pub fetch_requests: u64,
    pub fetched_blocks: u64,
    pub fetched_bytes: u64,
    /// Times a reader waited for a copy or fetch another reader had started.
    pub coalesced: u64,
    /// Blocks that failed verification (local copies and fetched blocks).
    pub bad_blocks: u64,
}

/// What `ensure` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Blocks that became present while it ran (reads running at the same time count too).
    pub blocks: u64,
}

/// What happened to one block of a job.
#[derive(Clone, Debug)]
enum BlockStatus {
    Ok,
    /// Verification or storage failed: the readers fail with this error.
    Failed(Code, String),
    /// A local copy was bad: the block now comes from the fetcher; read again.
    Retry,
}

struct Outcome {
    data: Vec<u8>,
    status: Vec<BlockStatus>,
}

enum JobState {
    Waiting,
    Arrived(std::result::Result<Vec<u8>, String>),
    Processing,
    Done(Arc<Outcome>),
}

/// A copy or fetch of consecutive blocks `[first, first + count)` of the image.
pub(super) struct Job {
    first: u64,
    count: u64,
    state: Mutex<JobState>,
    cv: Condvar,
}

impl Job {
    fn new(first: u64, count: u64) -> Arc<Job> {
        Arc::new(Job { first, count, state: Mutex::new(JobState::Waiting), cv: Condvar::new() })
    }

    fn arrive(&self, result: std::result::Result<Vec<u8>, String>) {
        let mut st = self.state.lock().unwrap();
        if matches!(*st, JobState::Waiting) {
            *st = JobState::Arrived(result);
            self.cv.notify_all();
        }
    }
}

/// A repository image holding some of the wanted blocks: its digest (for messages) and
/// an open descriptor (which stays valid if the image is removed meanwhile).
struct LocalImage {
    digest: String,
    file: File,
}

/// One bit per block, settable from any thread.
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }
    /// Sets the bit; returns true if it was clear.
    fn set(&self, i: u64) -> bool {
        let bit = 1 << (i % 64);
        self.0[(i / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    local_blocks: AtomicU64,
    fetch_requests: AtomicU64,
    fetched_blocks: AtomicU64,
    fetched_bytes: AtomicU64,
    coalesced: AtomicU64,
    bad_blocks: AtomicU64,
}

/// A block that must be copied or fetched, and the key of the job that brings it.
#[derive(Clone, Copy)]
enum Need {
    /// Copy from block `block` of local image `image`; the job key is the block itself.
    Local { image: u32, block: u64 },
    /// Fetch block `key` (the block itself, or the first missing block with its digest).
    Fetch { key: u64 },
}

pub struct LazyImage {
    store: Store,
    bs: u64,
    /// From the plan, one per block; empty when the image is complete.
    sources: Vec<BlockSource>,
    images: Vec<LocalImage>,
    /// Blocks whose local copy failed verification: fetched instead.
    broken_local: Mutex<HashSet<u64>>,
    fetcher: Option<Arc<dyn Fetcher>>,
    events: Option<EventSink>,
    max_fetch: u64,
    /// Blocks verified in the data file during this session (a hint that saves a probe
    /// of a block a racing reader just stored; every read is verified anyway).
    present: Bits,
    inflight: Mutex<HashMap<u64, Arc<Job>>>,
    closed: AtomicBool,
    /// Blocks read by the client at least once, and the order of first reads.
    seen: Bits,
    profile: Mutex<Vec<Run>>,
    counters: Counters,
}

impl LazyImage {
    /// Opens the image `index` describes for lazy serving: starts (or resumes) its
    /// resumable assembly in `repo` and plans which blocks other local images hold.
    pub fn open(repo: &Repository, index: Index, opts: LazyOptions) -> Result<LazyImage> {
        let store = Store::open(repo, index, opts.expected_digest)?;
        let (sources, images) = if store.is_complete_image() {
            (Vec::new(), Vec::new())
        } else {
            let plan = repo.plan(store.index())?;
            let mut images = Vec::new();
            for digest in plan.images {
                let path = repo.image_path(&digest)?;
                let file = File::open(&path).map_err(|e| Error::io(&path, "cannot open repository image", e))?;
                images.push(LocalImage { digest, file });
            }
            (plan.sources, images)
        };
        let bs = store.index().block_size() as u64;
        let n = store.index().block_count();
        let max_fetch = if opts.max_fetch_blocks > 0 { opts.max_fetch_blocks } else { ((8 << 20) / bs).max(1) };
        Ok(LazyImage {
            store,
            bs,
            sources,
            images,
            broken_local: Mutex::new(HashSet::new()),
            fetcher: opts.fetcher,
            events: opts.events,
            max_fetch,
            present: Bits::new(n),
            inflight: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            seen: Bits::new(n),
            profile: Mutex::new(Vec::new()),
            counters: Counters::default(),
        })
    }

    pub fn index(&self) -> &Index {
        self.store.index()
    }
    pub fn digest_hex(&self) -> String {
        self.index().image_digest_hex()
    }
    pub fn size(&self) -> u64 {
        self.index().image_len()
    }
    pub fn block_size(&self) -> u32 {
        self.bs as u32
    }

    pub fn stats(&self) -> LazyStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LazyStats {
            block_count: self.index().block_count(),
            have_blocks: self.store.have_blocks(),
            reads: l(&c.reads),
            read_bytes: l(&c.read_bytes),
            local_blocks: l(&c.local_blocks),
            fetch_requests: l(&c.fetch_requests),
            fetched_blocks: l(&c.fetched_blocks),
            fetched_bytes: l(&c.fetched_bytes),
            coalesced: l(&c.coalesced),
            bad_blocks: l(&c.bad_blocks),
        }
    }

    /// The boot profile: runs of blocks in the order the client first read them (each
    /// block once). Zero blocks are included: it is the access order, not a fetch list.
    pub fn profile(&self) -> Vec<Run> {
        self.profile.lock().unwrap().clone()
    }

    /// Blocks not yet in the data file, as runs (repeats of an earlier block are not
    /// listed: they are written with it). Local blocks count as missing until copied.
    pub fn missing(&self) -> Vec<Run> {
        self.store.missing()
    }

    /// Makes the blocks received so far durable and records them for a later resume.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Publishes the image into the repository once every block is present (as `pull`
    /// does). Reads keep working afterwards.
    pub fn publish(&self, opts: &AddOptions) -> Result<ImageEntry> {
        self.store.finish(opts)
    }

    /// Fails every copy or fetch in progress and every later miss: for shutting down
    /// while a fetcher may never answer. Blocks already present are still served.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let jobs: Vec<Arc<Job>> = self.inflight.lock().unwrap().values().cloned().collect();
        for j in jobs {
            j.arrive(Err("the export was closed".into()));
        }
    }

    /// Bytes of blocks `[first, end)`.
    fn span(&self, first: u64, end: u64) -> usize {
        ((end * self.bs).min(self.size()) - first * self.bs) as usize
    }

    fn verify(&self, block: u64, data: &[u8]) -> bool {
        let dl = self.index().alg().len();
        let mut d = [0u8; MAX_DIGEST_LEN];
        self.index().alg().block_digest_into(data, &mut d[..dl]);
        data.len() == self.index().block_len(block) as usize && d[..dl] == *self.index().digest(block)
    }

    /// Whether each block of `data`, the run of whole blocks from `first` (only the
    /// image's last one short), matches its digest: `verify` for a run, hashing two blocks
    /// at once and long runs in parallel.
    fn verify_run(&self, first: u64, data: &[u8]) -> Vec<bool> {
        let (alg, bs) = (self.index().alg(), self.bs as usize);
        let n = data.len().div_ceil(bs);
        debug_assert_eq!(data.len(), self.span(first, first + n as u64));
        let mut ok = vec![false; n];
        alg.check_blocks(data, bs, &self.index().digests()[first as usize * alg.len()..][..n * alg.len()], &mut ok);
        ok
    }

    fn event(&self, e: Event) {
        if let Some(sink) = &self.events {
            sink(e);
        }
    }

    /// Serves an NBD read: `out.len()` bytes at `offset`, every block verified.
    // `u64::is_multiple_of` needs Rust 1.87; the workspace supports 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(out.len() as u64).filter(|&e| e <= self.size());
        let Some(end) = end else {
            bail!(
                InvalidArgument,
                "read of {} bytes at {offset} is beyond the image's {} bytes",
                out.len(),
                self.size()
            );
        };
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        if out.is_empty() {
            return Ok(());
        }
        let first = offset / self.bs;
        let last = end.div_ceil(self.bs);
        self.note_first_reads(first, last);
        if offset % self.bs == 0 && (end % self.bs == 0 || end == self.size()) {
            return self.fill(first, out, true);
        }
        let mut buf = vec![0u8; self.span(first, last)];
        self.fill(first, &mut buf, true)?;
        let from = (offset - first * self.bs) as usize;
        out.copy_from_slice(&buf[from..from + out.len()]);
        Ok(())
    }

    /// Makes blocks `[first, first + count)` present in the data file (copied from the
    /// repository or fetched as needed, coalesced with reads), in steps of at most
    /// `max_fetch_blocks`: the background prefetch, driven from outside.
    pub fn ensure(&self, first: u64, count: u64) -> Result<EnsureReport> {
        let n = self.index().block_count();
        let end = first.checked_add(count).filter(|&e| e <= n);
        let Some(end) = end else {
            bail!(InvalidArgument, "blocks {first}..{} are beyond the image's {n} blocks", first.saturating_add(count));
        };
        let before = self.store.have_blocks();
        let mut buf = Vec::new();
        let mut at = first;
        while at < end {
            let step = (end - at).min(self.max_fetch);
            buf.resize(self.span(at, at + step), 0);
            self.fill(at, &mut buf, false)?;
            at += step;
        }
        Ok(EnsureReport { blocks: self.store.have_blocks().saturating_sub(before) })
    }

    fn note_first_reads(&self, first: u64, end: u64) {
        let fresh: Vec<u64> = (first..end).filter(|&i| self.seen.set(i)).collect();
        if fresh.is_empty() {
            return;
        }
        let mut p = self.profile.lock().unwrap();
        for i in fresh {
            match p.last_mut() {
                Some(r) if r.first + r.count == i => r.count += 1,
                _ => p.push(Run { first: i, count: 1 }),
            }
        }
    }

    /// Fills `buf` with the verified blocks starting at `first` (all whole blocks, the
    /// image's last one possibly short).
    fn fill(&self, first: u64, buf: &mut [u8], urgent: bool) -> Result<()> {
        let bs = self.bs as usize;
        let count = buf.len().div_ceil(bs) as u64;
        // Which blocks were verified before this read: only those can have gone bad. (A
        // block stored by a racing job after the read is simply probed again below.)
        let known: Vec<bool> = (first..first + count).map(|i| self.present.get(i)).collect();
        self.store.read(first, buf)?;
        let ok = self.verify_run(first, buf);
        let mut need: Vec<u64> = Vec::new();
        for (k, block) in buf.chunks_mut(bs).enumerate() {
            let i = first + k as u64;
            if self.index().is_zero_block(i) {
                block.fill(0);
            } else if ok[k] {
                // A block in the file that the bitmap does not record (stored after its
                // last save by a process that was killed) is recorded now, or `missing`
                // would list it for ever.
                if !known[k] && !self.store.has(i) {
                    self.store.put(i, block)?;
                }
                self.present.set(i);
            } else if known[k] || self.store.is_complete_image() {
                // Verified before (or published whole): the data file went bad under us.
                self.counters.bad_blocks.fetch_add(1, Ordering::Relaxed);
                let message = format!("block {i} of image {} no longer matches its digest on disk", self.digest_hex());
                self.event(Event::BadBlock { block: i, origin: Origin::Store, message: message.clone() });
                return Err(Error::new(Code::DigestMismatch, message));
            } else {
                need.push(i);
            }
        }
        // Blocks to try again are probed in the file once more: stored meanwhile by a
        // racing job, or (a bad local copy) now to be fetched, so two rounds suffice.
        for _ in 0..3 {
            if need.is_empty() {
                return Ok(());
            }
            let mut again = Vec::new();
            for i in self.obtain(&need, first, buf, urgent)? {
                let range = self.block_range(first, i);
                self.store.read(i, &mut buf[range.clone()])?;
                if !self.verify(i, &buf[range]) {
                    again.push(i);
                }
            }
            need = again;
        }
        bail!(Io, "blocks {need:?} of image {} could not be obtained", self.digest_hex())
    }

    fn need_of(&self, i: u64) -> Need {
        match self.sources.get(i as usize) {
            Some(BlockSource::Present { image, block }) if !self.broken_local.lock().unwrap().contains(&i) => {
                Need::Local { image: *image, block: *block }
            }
            Some(BlockSource::Duplicate { of }) => Need::Fetch { key: *of },
            _ => Need::Fetch { key: i },
        }
    }

    /// Gets the blocks `need` (absent from the data file) into their places in `buf`
    /// (which starts at block `first`). Returns the blocks to try again.
    fn obtain(&self, need: &[u64], first: u64, buf: &mut [u8], urgent: bool) -> Result<Vec<u64>> {
        if self.closed.load(Ordering::Acquire) {
            bail!(Io, "the export of image {} was closed", self.digest_hex());
        }
        let mut retry = Vec::new();
        // (block, job key, job) for every block a job brings.
        let mut waits: Vec<(u64, u64, Arc<Job>)> = Vec::new();
        let mut local_jobs: Vec<(Arc<Job>, u32, u64)> = Vec::new();
        let mut fetch_jobs: Vec<Arc<Job>> = Vec::new();
        // (stored block, block with the same digest to fill from it).
        let mut copies: Vec<(u64, u64)> = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap();
            let mut new_local: Vec<(u32, u64, u64)> = Vec::new();
            let mut new_fetch: Vec<u64> = Vec::new();
            let mut pending: Vec<(u64, u64)> = Vec::new();
            for &i in need {
                if self.present.get(i) {
                    // Stored by a job that finished after this reader probed the file.
                    retry.push(i);
                    continue;
                }
                let (key, local) = match self.need_of(i) {
                    Need::Local { image, block } => (i, Some((image, block))),
                    Need::Fetch { key } => (key, None),
                };
                if key != i && self.present.get(key) {
                    copies.push((key, i));
                    continue;
                }
                if let Some(job) = inflight.get(&key) {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    waits.push((i, key, job.clone()));
                    continue;
                }
                match local {
                    Some((image, block)) => new_local.push((image, block, i)),
                    None => new_fetch.push(key),
                }
                pending.push((i, key));
            }
            new_fetch.sort_unstable();
            new_fetch.dedup();
            // Local copies: consecutive destinations from consecutive source blocks.
            new_local.sort_unstable();
            let mut k = 0;
            while k < new_local.len() {
                let (image, src, dst) = new_local[k];
                let mut n = 1;
                while k + (n as usize) < new_local.len()
                    && n < self.max_fetch
                    && new_local[k + n as usize] == (image, src + n, dst + n)
                {
                    n += 1;
                }
                let job = Job::new(dst, n);
                for d in dst..dst + n {
                    inflight.insert(d, job.clone());
                }
                local_jobs.push((job, image, src));
                k += n as usize;
            }
            // Fetches: consecutive keys, at most max_fetch blocks each.
            new_fetch.sort_unstable();
            let mut k = 0;
            while k < new_fetch.len() {
                let start = new_fetch[k];
                let mut n = 1;
                while k + (n as usize) < new_fetch.len() && n < self.max_fetch && new_fetch[k + n as usize] == start + n
                {
                    n += 1;
                }
                let job = Job::new(start, n);
                for key in start..start + n {
                    inflight.insert(key, job.clone());
                }
                fetch_jobs.push(job);
                k += n as usize;
            }
            for (i, key) in pending {
                waits.push((i, key, inflight[&key].clone()));
            }
        }
        for job in &fetch_jobs {
            self.start_fetch(job, urgent);
        }
        for (job, image, src) in &local_jobs {
            let outcome = Arc::new(self.copy_local(job, *image, *src));
            self.finish_job(job, outcome);
        }
        // Every job is waited for even after a failure, so each is stored promptly.
        let mut failure = None;
        for (from, to) in copies {
            if let Err(e) = self.copy_within(from, to, &mut buf[self.block_range(first, to)]) {
                failure.get_or_insert(e);
            }
        }
        for (i, key, job) in waits {
            let outcome = self.wait(&job);
            let k = (key - job.first) as usize;
            match &outcome.status[k] {
                BlockStatus::Ok => {
                    let from = k * self.bs as usize;
                    let len = self.index().block_len(i) as usize;
                    let range = self.block_range(first, i);
                    buf[range].copy_from_slice(&outcome.data[from..from + len]);
                }
                BlockStatus::Retry => retry.push(i),
                BlockStatus::Failed(code, msg) => {
                    failure.get_or_insert_with(|| Error::new(*code, msg.clone()));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(retry),
        }
    }

    /// The bytes of block `i` inside a buffer that starts at block `first`.
    fn block_range(&self, first: u64, i: u64) -> std::ops::Range<usize> {
        let from = ((i - first) * self.bs) as usize;
        from..from + self.index().block_len(i) as usize
    }

    /// Block `to` has the same digest as the stored block `from`: copy and store it.
    fn copy_within(&self, from: u64, to: u64, out: &mut [u8]) -> Result<()> {
        self.store.read(from, out)?;
        if !self.verify(to, out) {
            bail!(DigestMismatch, "block {from} of image {} no longer matches its digest on disk", self.digest_hex());
        }
        self.store.put(to, out)?;
        self.present.set(to);
        Ok(())
    }

    fn start_fetch(&self, job: &Arc<Job>, urgent: bool) {
        let offset = job.first * self.bs;
        let request = FetchRequest {
            first: job.first,
            count: job.count,
            offset,
            length: self.span(job.first, job.first + job.count) as u64,
            urgent,
        };
        self.counters.fetch_requests.fetch_add(1, Ordering::Relaxed);
        let reply = FetchReply { job: Some(job.clone()) };
        match &self.fetcher {
            Some(f) => f.fetch(request, reply),
            None => reply.complete(Err("no fetcher: the block is neither stored nor in the local repository".into())),
        }
        // A close that raced with this job's creation must still fail it.
        if self.closed.load(Ordering::Acquire) {
            job.arrive(Err("the export was closed".into()));
        }
    }

    /// Waits for a job; the first waiter to see fetched bytes verifies and stores them.
    fn wait(&self, job: &Arc<Job>) -> Arc<Outcome> {
        let mut st = job.state.lock().unwrap();
        loop {
            match std::mem::replace(&mut *st, JobState::Processing) {
                JobState::Done(o) => {
                    *st = JobState::Done(o.clone());
                    return o;
                }
                JobState::Arrived(result) => {
                    drop(st);
                    let outcome = Arc::new(self.take_fetched(job, result));
                    self.finish_job(job, outcome.clone());
                    return outcome;
                }
                other => {
                    *st = other;
                    st = job.cv.wait(st).unwrap();
                }
            }
        }
    }

    fn finish_job(&self, job: &Arc<Job>, outcome: Arc<Outcome>) {
        {
            let mut st = job.state.lock().unwrap();
            *st = JobState::Done(outcome);
            job.cv.notify_all();
        }
        let mut inflight = self.inflight.lock().unwrap();
        for key in job.first..job.first + job.count {
            if inflight.get(&key).is_some_and(|j| Arc::ptr_eq(j, job)) {
                inflight.remove(&key);
            }
        }
    }

    /// Verifies a fetcher's answer block by block and stores the good blocks.
    fn take_fetched(&self, job: &Job, result: std::result::Result<Vec<u8>, String>) -> Outcome {
        let n = job.count as usize;
        let want = self.span(job.first, job.first + job.count);
        let fail_all = |message: String| {
            self.event(Event::FetchFailed { first: job.first, count: job.count, message: message.clone() });
            let msg = format!(
                "blocks {}..{} of image {} could not be fetched: {message}",
                job.first,
                job.first + job.count,
                self.digest_hex()
            );
            Outcome { data: Vec::new(), status: vec![BlockStatus::Failed(Code::Io, msg); n] }
        };
        let data = match result {
            Err(message) => return fail_all(message),
            Ok(d) if d.len() != want => return fail_all(format!("{} bytes delivered for {want}", d.len())),
            Ok(d) => d,
        };
        self.counters.fetched_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let good = self.verify_run(job.first, &data);
        let mut status = Vec::with_capacity(n);
        for (k, &ok) in good.iter().enumerate() {
            let i = job.first + k as u64;
            if ok {
                status.push(BlockStatus::Ok);
                continue;
            }
            self.counters.bad_blocks.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "block {i} of image {} from the fetcher does not match its digest (wrong data from the server or a cache); \
                 it was not served or stored",
                self.digest_hex()
            );
            self.event(Event::BadBlock { block: i, origin: Origin::Fetched, message: message.clone() });
            status.push(BlockStatus::Failed(Code::DigestMismatch, message));
        }
        self.store_good(job.first, &data, &mut status);
        let stored = status.iter().filter(|s| matches!(s, BlockStatus::Ok)).count() as u64;
        self.counters.fetched_blocks.fetch_add(stored, Ordering::Relaxed);
        Outcome { data, status }
    }

    /// Copies a run of blocks from a local image, verifying each; bad ones are marked to
    /// be fetched instead.
    fn copy_local(&self, job: &Job, image: u32, src: u64) -> Outcome {
        let n = job.count as usize;
        let img = &self.images[image as usize];
        let mut data = vec![0u8; self.span(job.first, job.first + job.count)];
        let read = img.file.read_exact_at(&mut data, src * self.bs);
        let good = if read.is_ok() { self.verify_run(job.first, &data) } else { vec![false; n] };
        let mut status = Vec::with_capacity(n);
        for (k, &ok) in good.iter().enumerate() {
            let i = job.first + k as u64;
            if ok {
                status.push(BlockStatus::Ok);
                continue;
            }
            self.counters.bad_blocks.fetch_add(1, Ordering::Relaxed);
            self.broken_local.lock().unwrap().insert(i);
            let why = match &read {
                Err(e) => format!("cannot be read ({e})"),
                Ok(()) => "does not match its digest".into(),
            };
            let message = format!(
                "block {} of repository image {} {why}: the image is damaged on disk (run `osfarm repo verify`); \
                 block {i} is fetched instead",
                src + k as u64,
                img.digest
            );
            self.event(Event::BadBlock { block: i, origin: Origin::Local, message });
            status.push(BlockStatus::Retry);
        }
        self.store_good(job.first, &data, &mut status);
        let stored = status.iter().filter(|s| matches!(s, BlockStatus::Ok)).count() as u64;
        self.counters.local_blocks.fetch_add(stored, Ordering::Relaxed);
        Outcome { data, status }
    }

    /// Stores the runs of verified blocks and marks them present; a block that cannot be
    /// stored fails its readers (serving it unstored would hide a full disk).
    fn store_good(&self, first: u64, data: &[u8], status: &mut [BlockStatus]) {
        let bs = self.bs as usize;
        let mut k = 0;
        while k < status.len() {
            if !matches!(status[k], BlockStatus::Ok) {
                k += 1;
                continue;
            }
            let mut e = k + 1;
            while e < status.len() && matches!(status[e], BlockStatus::Ok) {
                e += 1;
            }
            let bytes = &data[k * bs..(e * bs).min(data.len())];
            match self.store.put(first + k as u64, bytes) {
                Ok(_) => (k..e).for_each(|j| {
                    self.present.set(first + j as u64);
                }),
                Err(err) => status[k..e].fill(BlockStatus::Failed(err.code, err.message)),
            }
            k = e;
        }
    }
}
