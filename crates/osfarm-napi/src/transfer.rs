//! Content-based transfer: the sender's streaming source (digests from a background
//! hashing thread, runs of blocks read and compressed on request) and the receiving side
//! of a push (streamed digests; a pull uses the repository's `AssemblerHandle`). The
//! network is in TypeScript (src/transfer); every byte-heavy step runs here, off the JS
//! thread.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use osfarm_core::repo::stream::{StreamAssembler, StreamOptions, StreamStats};
use osfarm_core::repo::{self, AddOptions, Repository};
use osfarm_core::transfer::codec::{self, Encoding, StreamDecoder, StreamEncoder};
use osfarm_core::transfer::groups::Grouper;
use osfarm_core::transfer::source::{ImageSource, SourceOptions};
use osfarm_core::{HashAlg, Index};

use crate::task::{run, Run};
use crate::{js_err, Result};

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_digest(s: &str, what: &str) -> Result<Vec<u8>> {
    from_hex(s).ok_or_else(|| {
        js_err(osfarm_core::Error::new(osfarm_core::Code::InvalidArgument, format!("{what} '{s}' is not hex")))
    })
}

// ----- the sending side -----

#[napi(object)]
pub struct ImageSourceOptions {
    /// Hash the blocks with this algorithm (`sha1` or `sha256`): the receiver's.
    pub hash: Option<String>,
    /// Block size: the receiver's. Default 4096.
    pub block_size: Option<f64>,
    /// An `.osfi` index of the image: its digests are sent instead of hashing (the image
    /// is then expected to match it; the receiver verifies every block anyway).
    pub index: Option<String>,
}

/// A window of digests off the hashing thread: first block, count, digests.
type Window = (u64, u32, Vec<u8>);
/// A run read for sending: encoding, bytes, length before encoding.
type ReadRun = (Encoding, Vec<u8>, usize);

/// A window of block digests, as produced.
#[napi(object)]
pub struct DigestWindow {
    pub first_block: f64,
    pub count: u32,
    /// `count` digests, concatenated.
    pub digests: Buffer,
}

/// A run of blocks read for sending.
#[napi(object)]
pub struct BlockRun {
    /// 0 = raw, 1 = zstd (the wire's encoding ids).
    pub encoding: u32,
    pub data: Buffer,
    /// The length of the blocks before encoding.
    pub raw_length: u32,
}

/// An image being sent: `next()` yields its digests while a background thread hashes
/// it; `readRun()` reads (and compresses) runs the receiver asks for.
#[napi]
pub struct ImageSourceHandle {
    src: Arc<ImageSource>,
}

#[napi]
impl ImageSourceHandle {
    /// Opens an image and starts hashing it (or reading its index) in the background.
    #[napi(factory)]
    pub fn open(path: String, options: Option<ImageSourceOptions>) -> Result<ImageSourceHandle> {
        let o = options.unwrap_or(ImageSourceOptions { hash: None, block_size: None, index: None });
        let alg = match &o.hash {
            Some(h) => HashAlg::parse(h).map_err(js_err)?,
            None => HashAlg::Sha1,
        };
        let block_size = crate::block_size(o.block_size)?.unwrap_or(osfarm_core::hash::DEFAULT_BLOCK_SIZE);
        let src = match &o.index {
            Some(ix) => {
                let index = Index::load(Path::new(ix)).map_err(js_err)?;
                if index.alg() != alg || index.block_size() != block_size {
                    return Err(js_err(osfarm_core::Error::new(
                        osfarm_core::Code::Mismatch,
                        format!(
                            "the index {ix} uses {} at {}-byte blocks, the receiver {} at {block_size}-byte blocks",
                            index.alg().name(),
                            index.block_size(),
                            alg.name()
                        ),
                    )));
                }
                ImageSource::with_index(Path::new(&path), index)
            }
            None => ImageSource::hash_file(Path::new(&path), SourceOptions { alg, block_size }),
        }
        .map_err(js_err)?;
        Ok(ImageSourceHandle { src: Arc::new(src) })
    }

    #[napi(getter)]
    pub fn image_size(&self) -> f64 {
        self.src.image_len() as f64
    }
    #[napi(getter)]
    pub fn block_count(&self) -> f64 {
        self.src.block_count() as f64
    }
    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.src.block_size()
    }
    #[napi(getter)]
    pub fn hash(&self) -> String {
        self.src.alg().name().into()
    }
    /// True if the digests come from an index (no hashing).
    #[napi(getter, js_name = "fromIndex")]
    pub fn is_from_index(&self) -> bool {
        self.src.from_index()
    }

    /// The image digest (hex): known at once for an indexed image, else after the last window.
    #[napi]
    pub fn image_digest(&self) -> Option<String> {
        self.src.image_digest().map(|d| to_hex(&d))
    }

    /// The next window of digests, or null after the last one.
    #[napi(ts_return_type = "Promise<DigestWindow | null>")]
    pub fn next(&self, signal: Option<AbortSignal>) -> AsyncTask<Run<Option<Window>, Option<DigestWindow>>> {
        let src = self.src.clone();
        run(
            signal,
            |_, w| Ok(w.map(|(first, count, d)| DigestWindow { first_block: first as f64, count, digests: d.into() })),
            move || {
                let dl = src.alg().len();
                Ok(src.next_window()?.map(|w| (w.first_block, (w.digests.len() / dl) as u32, w.digests)))
            },
        )
    }

    /// Reads `count` blocks from `first`, zstd-compressed when `compress` and it pays.
    #[napi(ts_return_type = "Promise<BlockRun>")]
    pub fn read_run(&self, first: f64, count: u32, compress: bool) -> AsyncTask<Run<ReadRun, BlockRun>> {
        let src = self.src.clone();
        run(None, block_run, move || src.read_run(first as u64, count as u64, compress))
    }

    /// The synchronous twin of `readRun`.
    #[napi]
    pub fn read_run_sync(&self, first: f64, count: u32, compress: bool) -> Result<BlockRun> {
        let r = self.src.read_run(first as u64, count as u64, compress).map_err(js_err)?;
        Ok(BlockRun { encoding: r.0 as u32, data: r.1.into(), raw_length: r.2 as u32 })
    }

    /// Stops the background hashing.
    #[napi]
    pub fn cancel(&self) {
        self.src.cancel();
    }
}

/// Cuts a source's block digests into content-defined groups (protocol v2): `push` takes
/// digests as they are produced and returns the wire records (`u16le count || group
/// digest`) of the groups they complete; `finish` returns the last group's.
#[napi]
pub struct DigestGrouper {
    grouper: Grouper,
}

#[napi]
impl DigestGrouper {
    #[napi(constructor)]
    pub fn new(hash: String) -> Result<DigestGrouper> {
        Ok(DigestGrouper { grouper: Grouper::new(HashAlg::parse(&hash).map_err(js_err)?) })
    }

    /// Blocks covered by the records returned so far.
    #[napi(getter)]
    pub fn grouped(&self) -> f64 {
        self.grouper.grouped() as f64
    }

    #[napi]
    pub fn push(&mut self, digests: Buffer) -> Buffer {
        self.grouper.push(&digests).into()
    }

    #[napi]
    pub fn finish(&mut self) -> Buffer {
        self.grouper.finish().into()
    }
}

/// A run encoded for a BLOCKS frame.
#[napi(object)]
pub struct EncodedRun {
    /// 0 = raw, 2 = the next part of the zstd stream.
    pub encoding: u32,
    pub data: Buffer,
}

/// The sender's zstd stream across a v2 transfer's BLOCKS frames: `encode` runs in the
/// order their frames are sent (one call at a time), off the JS thread.
#[napi]
pub struct BlockStreamEncoder {
    enc: Arc<StreamEncoder>,
}

#[napi]
impl BlockStreamEncoder {
    #[napi(constructor)]
    pub fn new() -> Result<BlockStreamEncoder> {
        Ok(BlockStreamEncoder { enc: Arc::new(StreamEncoder::new().map_err(js_err)?) })
    }

    /// Encodes the next run at zstd `level` (clamped to 1..=9; the caller adapts it).
    #[napi(ts_return_type = "Promise<EncodedRun>")]
    pub fn encode(&self, data: Buffer, level: i32) -> AsyncTask<Run<(Encoding, Vec<u8>), EncodedRun>> {
        let enc = self.enc.clone();
        let data = data.to_vec();
        run(None, |_, (e, d)| Ok(EncodedRun { encoding: e as u32, data: d.into() }), move || enc.encode(data, level))
    }
}

fn block_run(_: Env, r: ReadRun) -> napi::Result<BlockRun> {
    Ok(BlockRun { encoding: r.0 as u32, data: r.1.into(), raw_length: r.2 as u32 })
}

// ----- the receiving side of a push -----

#[napi(object)]
pub struct PushAssemblyOptions {
    /// The image size the sender announced.
    pub image_size: f64,
    /// Names the image across attempts so an interrupted push resumes.
    pub resume_key: Option<String>,
    /// The image digest (hex) if the sender knows it: an image already held is not sent.
    pub expected_digest: Option<String>,
    /// Group the repository's indexes for a protocol v2 sender (`lookupGroups`).
    pub groups: Option<bool>,
    /// The tags the image will get: checked now, before any data is received.
    pub tags: Option<Vec<String>>,
    /// The sender's bound on the bytes of the image's non-zero blocks: an image that
    /// cannot fit in the repository's file system is refused now.
    pub data_bytes: Option<f64>,
}

/// One group of a v2 sender's GROUPS frame, resolved against the repository.
#[napi(object)]
pub struct GroupHit {
    pub count: u32,
    /// The group's block digests, if the repository holds the group; else null.
    pub digests: Option<Buffer>,
}

#[napi(object)]
pub struct TransferRun {
    pub first: f64,
    pub count: f64,
}

#[napi(object)]
pub struct PushStats {
    pub block_count: f64,
    pub offered: f64,
    pub zero_blocks: f64,
    pub local_blocks: f64,
    pub local_bytes: f64,
    pub resumed_blocks: f64,
    pub duplicate_blocks: f64,
    pub missing_blocks: f64,
    pub missing_bytes: f64,
    pub received_blocks: f64,
    pub received_bytes: f64,
    pub have_blocks: f64,
}

fn push_stats(s: StreamStats) -> PushStats {
    PushStats {
        block_count: s.block_count as f64,
        offered: s.offered as f64,
        zero_blocks: s.zero_blocks as f64,
        local_blocks: s.local_blocks as f64,
        local_bytes: s.local_bytes as f64,
        resumed_blocks: s.resumed_blocks as f64,
        duplicate_blocks: s.duplicate_blocks as f64,
        missing_blocks: s.missing_blocks as f64,
        missing_bytes: s.missing_bytes as f64,
        received_blocks: s.received_blocks as f64,
        received_bytes: s.received_bytes as f64,
        have_blocks: s.have_blocks as f64,
    }
}

#[napi(object)]
pub struct TransferImageOptions {
    pub tags: Option<Vec<String>>,
    pub original_name: Option<String>,
    pub format: Option<String>,
    /// JSON text.
    pub meta_json: Option<String>,
}

fn add_options(o: Option<TransferImageOptions>) -> AddOptions {
    match o {
        Some(o) => AddOptions {
            tags: o.tags.unwrap_or_default(),
            meta_json: o.meta_json,
            format: o.format,
            original_name: o.original_name,
        },
        None => AddOptions::default(),
    }
}

/// What was published.
#[napi(object)]
pub struct TransferredImage {
    pub digest: String,
    pub tags: Vec<String>,
    pub size: f64,
    pub block_count: f64,
    pub path: String,
}

fn transferred(e: repo::ImageEntry) -> TransferredImage {
    TransferredImage {
        digest: e.digest,
        tags: e.tags,
        size: e.size as f64,
        block_count: e.block_count as f64,
        path: e.path.to_string_lossy().into_owned(),
    }
}

/// The receiving side of a push: digests are offered as they arrive, the runs it returns
/// are requested from the sender, received runs are put (verified), then finish.
#[napi]
pub struct PushAssembly {
    held: Arc<Held>,
    hash: String,
    block_size: u32,
    block_count: u64,
    already_present: bool,
    /// The v2 zstd stream's decoder, made on first use.
    decoder: OnceLock<StreamDecoder>,
}

/// The assembly until it is published or aborted, then only its last counts: letting go
/// of it closes its files at once (once running tasks end), not when the garbage
/// collector finalizes this object, which an idle receiver may not do for hours. A
/// discarded partial held open would keep its disk space (issue 17).
struct Held {
    asm: Mutex<Option<Arc<StreamAssembler>>>,
    last: Mutex<StreamStats>,
}

impl Held {
    fn get(&self) -> Result<Arc<StreamAssembler>> {
        self.asm.lock().unwrap().clone().ok_or_else(|| {
            js_err(osfarm_core::Error::new(
                osfarm_core::Code::InvalidArgument,
                "this push assembly is finished or aborted: begin a new one",
            ))
        })
    }

    /// Keeps the counts and lets go of the assembly.
    fn release(&self) -> Option<Arc<StreamAssembler>> {
        let asm = self.asm.lock().unwrap().take();
        if let Some(a) = &asm {
            *self.last.lock().unwrap() = a.stats();
        }
        asm
    }

    fn stats(&self) -> StreamStats {
        match self.asm.lock().unwrap().as_ref() {
            Some(a) => a.stats(),
            None => *self.last.lock().unwrap(),
        }
    }
}

fn begin_push(repo_path: &str, o: &PushAssemblyOptions) -> osfarm_core::Result<(StreamAssembler, HashAlg, u32)> {
    repo::check_tags(o.tags.as_deref().unwrap_or_default())?;
    let repo = Repository::open(Path::new(repo_path))?;
    let expected_digest = match &o.expected_digest {
        Some(d) => Some(from_hex(d).ok_or_else(|| {
            osfarm_core::Error::new(osfarm_core::Code::InvalidArgument, format!("image digest '{d}' is not hex"))
        })?),
        None => None,
    };
    if !(o.image_size >= 0.0 && o.image_size <= (1u64 << 53) as f64 && o.image_size.fract() == 0.0) {
        return Err(osfarm_core::Error::new(
            osfarm_core::Code::InvalidArgument,
            format!("image size {} is not valid", o.image_size),
        ));
    }
    let asm = repo.begin_stream(StreamOptions {
        image_len: o.image_size as u64,
        resume_key: o.resume_key.clone(),
        expected_digest,
        data_bytes: o.data_bytes.filter(|d| *d >= 0.0).map(|d| d as u64),
    })?;
    if o.groups == Some(true) {
        asm.load_groups()?;
    }
    Ok((asm, repo.alg(), repo.block_size()))
}

impl PushAssembly {
    fn new(asm: StreamAssembler, alg: HashAlg, block_size: u32) -> PushAssembly {
        PushAssembly {
            hash: alg.name().into(),
            block_size,
            block_count: asm.block_count(),
            already_present: asm.is_complete_image(),
            held: Arc::new(Held { asm: Mutex::new(Some(Arc::new(asm))), last: Mutex::new(StreamStats::default()) }),
            decoder: OnceLock::new(),
        }
    }
}

#[napi]
impl PushAssembly {
    /// Starts receiving an image into the repository at `repoPath` (resuming the partial
    /// data of an earlier attempt with the same resume key, re-verified, off the JS thread).
    #[napi(ts_return_type = "Promise<PushAssembly>")]
    pub fn begin(
        repo_path: String,
        options: PushAssemblyOptions,
    ) -> AsyncTask<Run<(StreamAssembler, HashAlg, u32), PushAssembly>> {
        run(None, |_, (asm, alg, bs)| Ok(PushAssembly::new(asm, alg, bs)), move || begin_push(&repo_path, &options))
    }

    /// The synchronous twin of `begin`.
    #[napi]
    pub fn begin_sync(repo_path: String, options: PushAssemblyOptions) -> Result<PushAssembly> {
        let (asm, alg, bs) = begin_push(&repo_path, &options).map_err(js_err)?;
        Ok(PushAssembly::new(asm, alg, bs))
    }

    #[napi(getter)]
    pub fn hash(&self) -> String {
        self.hash.clone()
    }
    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    #[napi(getter)]
    pub fn block_count(&self) -> f64 {
        self.block_count as f64
    }
    /// The announced image is already in the repository: nothing to receive.
    #[napi(getter)]
    pub fn already_present(&self) -> bool {
        self.already_present
    }
    /// True while the data would be kept for a later attempt if this one ends unfinished.
    #[napi(getter)]
    pub fn resumable(&self) -> bool {
        self.held.asm.lock().unwrap().as_ref().is_some_and(|a| a.is_resumable())
    }
    /// The counts so far (after `finish` or `abort`: the final ones).
    #[napi(getter)]
    pub fn stats(&self) -> PushStats {
        push_stats(self.held.stats())
    }

    /// Takes the digests of the next blocks, from `first`; returns the runs to request.
    #[napi]
    pub fn offer(&self, first: f64, digests: Buffer) -> Result<Vec<TransferRun>> {
        let runs = self.held.get()?.offer(first as u64, &digests).map_err(js_err)?;
        Ok(runs.iter().map(|r| TransferRun { first: r.first as f64, count: r.count as f64 }).collect())
    }

    /// Resolves the group records of a GROUPS payload (after its block number): known
    /// groups come with their block digests, to `offer`; the others must be asked for.
    #[napi]
    pub fn lookup_groups(&self, records: Buffer) -> Result<Vec<GroupHit>> {
        let found = self.held.get()?.lookup_groups(&records).map_err(js_err)?;
        Ok(found.into_iter().map(|g| GroupHit { count: g.count, digests: g.digests.map(Buffer::from) }).collect())
    }

    /// Decodes the next part of the transfer's zstd stream (encoding 2) into the raw bytes
    /// of blocks `first..first+count`, to `put` raw. Call in frame order.
    #[napi]
    pub fn decode_stream(&self, first: f64, count: u32, data: Buffer) -> Result<Buffer> {
        let raw_len =
            run_len(&*self.held.get()?, first as u64, count as u64, self.block_size as u64).map_err(js_err)?;
        let dec = match self.decoder.get() {
            Some(d) => d,
            None => {
                let d = StreamDecoder::new().map_err(js_err)?;
                self.decoder.get_or_init(|| d)
            }
        };
        dec.decode(&data, raw_len as usize).map(Buffer::from).map_err(js_err)
    }

    /// Decodes (encoding 0 raw, 1 zstd), verifies and writes `count` blocks from `first`.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn put(&self, first: f64, count: u32, encoding: u32, data: Buffer) -> Result<AsyncTask<Run<u64, f64>>> {
        let asm = self.held.get()?;
        let bs = self.block_size as u64;
        let data = data.to_vec();
        Ok(run(None, |_, n| Ok(n as f64), move || put_run(&asm, first as u64, count as u64, bs, encoding, data)))
    }

    /// The synchronous twin of `put`.
    #[napi]
    pub fn put_sync(&self, first: f64, count: u32, encoding: u32, data: Buffer) -> Result<f64> {
        put_run(&*self.held.get()?, first as u64, count as u64, self.block_size as u64, encoding, data.to_vec())
            .map(|n| n as f64)
            .map_err(js_err)
    }

    /// Checks the announced image digest against the digests received, waits for local
    /// copies, and publishes the image atomically; then lets go of the assembly.
    #[napi(ts_return_type = "Promise<TransferredImage>")]
    pub fn finish(
        &self,
        image_digest: String,
        options: Option<TransferImageOptions>,
    ) -> Result<AsyncTask<Run<repo::ImageEntry, TransferredImage>>> {
        let asm = self.held.get()?;
        let held = self.held.clone();
        let d = hex_digest(&image_digest, "image digest")?;
        let opts = add_options(options);
        Ok(run(
            None,
            |_, e| Ok(transferred(e)),
            move || {
                let published = asm.finish(&d, &opts)?;
                held.release();
                Ok(published)
            },
        ))
    }

    /// Ends an unfinished push: with `discard`, its partial data is deleted; otherwise it
    /// stays for the next attempt with the same resume key. Its files are closed as soon
    /// as running tasks end. Idempotent.
    #[napi]
    pub fn abort(&self, discard: bool) {
        if let Some(asm) = self.held.release() {
            asm.abort(discard);
        }
    }
}

/// The bytes of blocks `first..first+count` of the image being received.
fn run_len(asm: &StreamAssembler, first: u64, count: u64, bs: u64) -> osfarm_core::Result<u64> {
    let end = first.checked_add(count).filter(|&e| count > 0 && e <= asm.block_count());
    if end.is_none() {
        return Err(osfarm_core::Error::new(
            osfarm_core::Code::InvalidArgument,
            format!("blocks {first}+{count} are outside the image of {} blocks", asm.block_count()),
        ));
    }
    Ok(((first + count) * bs).min(asm.image_len()) - first * bs)
}

fn put_run(
    asm: &StreamAssembler,
    first: u64,
    count: u64,
    bs: u64,
    encoding: u32,
    data: Vec<u8>,
) -> osfarm_core::Result<u64> {
    let enc = Encoding::from_id(encoding as u8).filter(|_| encoding < 256).ok_or_else(|| {
        osfarm_core::Error::new(osfarm_core::Code::InvalidArgument, format!("unknown block encoding {encoding}"))
    })?;
    let raw_len = run_len(asm, first, count, bs)?;
    let raw = codec::decode(enc, data, raw_len as usize)?;
    asm.put_blocks(first, &raw)
}
