//! The repository: images by digest, the persistent block table, plans and assembly.
//! Heavy operations are AsyncTasks (with progress and AbortSignal) and have `*Sync` twins.

use std::path::Path;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use osfarm_core::progress::{Progress, Silent};
use osfarm_core::repo::{self, AddOptions, AssemblyOptions, InitOptions, Repository};
use osfarm_core::{HashAlg, Index};

use crate::progress::ProgressCallback;
use crate::task::{job, Run};
use crate::{js_err, Result};

// ----- plain data crossing into JS -----

#[napi(object)]
pub struct RepoInitOptions {
    /// `sha1` (default) or `sha256`.
    pub hash: Option<String>,
    /// Block size in bytes, a power of two from 512 to 1 MiB; default 4096.
    pub block_size: Option<f64>,
    /// SHA-1 only: check every pushed or pulled block for SHA-1 collision attacks (sha1dc).
    pub detect_collisions: Option<bool>,
}

#[napi(object)]
pub struct RepoOpenOptions {
    /// Wait for another process's lock (default); with `false`, fail with OSFARM_LOCKED.
    pub wait_for_lock: Option<bool>,
}

/// An image in a repository.
#[napi(object)]
pub struct RepoImage {
    /// The image digest (hex), its name in the repository.
    pub digest: String,
    /// Its tags (names), in the order they were given.
    pub tags: Vec<String>,
    pub original_name: Option<String>,
    /// "tar", "raw", ...
    pub format: String,
    pub size: f64,
    pub block_count: f64,
    /// When it was added, in milliseconds since the epoch.
    pub added_ms: f64,
    /// Caller metadata as JSON text.
    pub meta_json: Option<String>,
    /// The image data (read-only).
    pub path: String,
    pub index_path: String,
}

pub(crate) fn image(e: repo::ImageEntry) -> RepoImage {
    RepoImage {
        digest: e.digest,
        tags: e.tags,
        original_name: e.original_name,
        format: e.format,
        size: e.size as f64,
        block_count: e.block_count as f64,
        added_ms: e.added_ms as f64,
        meta_json: e.meta_json,
        path: e.path.to_string_lossy().into_owned(),
        index_path: e.index_path.to_string_lossy().into_owned(),
    }
}

#[napi(object)]
pub struct RepoAddOptions {
    /// Tags (names) to give the image; a tag is on one image only, so this takes each
    /// from any other image.
    pub tags: Option<Vec<String>>,
    /// JSON text recorded with the image (must parse).
    pub meta_json: Option<String>,
    /// "tar", "raw", ...; detected when absent.
    pub format: Option<String>,
    /// Recorded as the original file name.
    pub original_name: Option<String>,
}

pub(crate) fn add_options(o: Option<RepoAddOptions>) -> AddOptions {
    o.map_or_else(AddOptions::default, |o| AddOptions {
        tags: o.tags.unwrap_or_default(),
        meta_json: o.meta_json,
        format: o.format,
        original_name: o.original_name,
    })
}

#[napi(object)]
#[derive(Clone, Copy)]
pub struct RepoRun {
    pub first: f64,
    pub count: f64,
}

/// How many blocks of a plan come from one repository image.
#[napi(object)]
pub struct RepoPlanSource {
    pub digest: String,
    pub blocks: f64,
}

#[napi(object)]
pub struct RepoPlan {
    pub digest: String,
    pub image_size: f64,
    pub block_size: u32,
    pub block_count: f64,
    /// The wanted image is already in the repository.
    pub already_present: bool,
    pub zero_blocks: f64,
    pub zero_bytes: f64,
    pub present_blocks: f64,
    pub present_bytes: f64,
    pub duplicate_blocks: f64,
    pub duplicate_bytes: f64,
    /// Distinct blocks to fetch, and their bytes.
    pub missing_blocks: f64,
    pub missing_bytes: f64,
    /// The blocks to fetch, coalesced into runs.
    pub missing_runs: Vec<RepoRun>,
    /// Repository images the present blocks come from.
    pub sources: Vec<RepoPlanSource>,
}

fn plan_result(p: repo::Plan) -> RepoPlan {
    let mut counts = vec![0u64; p.images.len()];
    for s in &p.sources {
        if let repo::BlockSource::Present { image, .. } = s {
            counts[*image as usize] += 1;
        }
    }
    let s = p.summary;
    RepoPlan {
        digest: p.image_digest,
        image_size: p.image_len as f64,
        block_size: p.block_size,
        block_count: s.blocks as f64,
        already_present: p.already_present,
        zero_blocks: s.zero_blocks as f64,
        zero_bytes: s.zero_bytes as f64,
        present_blocks: s.present_blocks as f64,
        present_bytes: s.present_bytes as f64,
        duplicate_blocks: s.duplicate_blocks as f64,
        duplicate_bytes: s.duplicate_bytes as f64,
        missing_blocks: s.missing_blocks as f64,
        missing_bytes: s.missing_bytes as f64,
        missing_runs: runs(&p.missing_runs),
        sources: p
            .images
            .into_iter()
            .zip(counts)
            .map(|(digest, n)| RepoPlanSource { digest, blocks: n as f64 })
            .collect(),
    }
}

pub(crate) fn runs(r: &[repo::Run]) -> Vec<RepoRun> {
    r.iter().map(|r| RepoRun { first: r.first as f64, count: r.count as f64 }).collect()
}

#[napi(object)]
pub struct RepoStats {
    pub hash: String,
    pub block_size: u32,
    pub images: f64,
    pub total_bytes: f64,
    pub disk_bytes: f64,
    pub distinct_blocks: f64,
    pub table_capacity: f64,
    pub table_memory_bytes: f64,
    pub table_file_bytes: f64,
    pub catalog_bytes: f64,
    pub partial_assemblies: f64,
    pub partial_bytes: f64,
}

/// What `dedup` did: blocks now shared by reference with the images that hold them.
#[napi(object)]
pub struct RepoDedupReport {
    pub images: f64,
    /// Images rewritten to share blocks.
    pub rewritten: f64,
    pub shared_bytes: f64,
    pub copied_bytes: f64,
    /// Why nothing could be shared (a file system without reflinks), if so.
    pub unsupported: Option<String>,
    pub ms: f64,
}

fn dedup_report(r: repo::DedupReport) -> RepoDedupReport {
    RepoDedupReport {
        images: r.images as f64,
        rewritten: r.rewritten as f64,
        shared_bytes: r.shared_bytes as f64,
        copied_bytes: r.copied_bytes as f64,
        unsupported: r.unsupported,
        ms: r.ms as f64,
    }
}

/// One image's share of the disk.
#[napi(object)]
pub struct RepoImageUsage {
    pub digest: String,
    pub logical_bytes: f64,
    /// Allocated to its file (shared extents included).
    pub allocated_bytes: f64,
    /// Of those, the bytes in extents shared with another file.
    pub shared_bytes: f64,
}

/// The images' logical size and what they take on the device.
#[napi(object)]
pub struct RepoDiskUsage {
    pub logical_bytes: f64,
    /// Sum of the files' allocations (a shared extent counts in each file).
    pub allocated_bytes: f64,
    /// Every extent counted once.
    pub physical_bytes: f64,
    pub images: Vec<RepoImageUsage>,
}

#[napi(object)]
pub struct RepoRebuildReport {
    pub images: f64,
    pub distinct_blocks: f64,
    pub recovered_catalog: bool,
    /// "digest: reason" for each image dropped.
    pub dropped: Vec<String>,
}

#[napi(object)]
pub struct RepoAssemblyOptions {
    /// Keep the partial image when abandoned and continue it next time.
    pub resumable: Option<bool>,
    /// Refuse an index that names another image.
    pub expected_digest: Option<String>,
}

#[napi(object)]
pub struct RepoFillReport {
    pub blocks: f64,
    pub bytes: f64,
}

/// An index given as an `.osfi` path, an image path (indexed with the repository's
/// parameters), or the bytes of an index.
pub(crate) enum IndexSource {
    Path(String),
    Bytes(Vec<u8>),
}

impl IndexSource {
    pub(crate) fn from_js(v: Either<String, Buffer>) -> IndexSource {
        match v {
            Either::A(p) => IndexSource::Path(p),
            Either::B(b) => IndexSource::Bytes(b.to_vec()),
        }
    }
    pub(crate) fn load(&self, repo: &Repository, progress: &dyn Progress) -> osfarm_core::Result<Index> {
        match self {
            IndexSource::Path(p) => crate::blocks::load_or_index(p, repo.index_options(), progress),
            IndexSource::Bytes(b) => Index::parse(b),
        }
    }
}

// ----- the repository -----

/// A repository handle (see `Repository` in src/repo for the documented API).
#[napi]
pub struct RepositoryHandle {
    pub(crate) repo: Repository,
}

#[napi]
impl RepositoryHandle {
    /// Creates a repository in a new or empty directory.
    #[napi(factory)]
    pub fn init(path: String, options: Option<RepoInitOptions>) -> Result<RepositoryHandle> {
        let mut o = InitOptions::default();
        if let Some(opts) = options {
            if let Some(h) = opts.hash {
                o.alg = HashAlg::parse(&h).map_err(js_err)?;
            }
            if let Some(bs) = crate::block_size(opts.block_size)? {
                o.block_size = bs;
            }
            o.detect_collisions = opts.detect_collisions.unwrap_or(false);
        }
        Ok(RepositoryHandle { repo: Repository::init(Path::new(&path), o).map_err(js_err)? })
    }

    /// Opens a repository, checking its catalog and block table.
    #[napi(factory)]
    pub fn open(path: String, options: Option<RepoOpenOptions>) -> Result<RepositoryHandle> {
        let wait = options.and_then(|o| o.wait_for_lock).unwrap_or(true);
        let repo = Repository::open_for_repair(Path::new(&path)).map_err(js_err)?;
        repo.set_wait_for_lock(wait);
        // Validate as `open` does, honouring the lock mode.
        repo.list().map_err(js_err)?;
        Ok(RepositoryHandle { repo })
    }

    /// Opens a repository reading only its format file, to run `rebuild` on a damaged one.
    #[napi(factory)]
    pub fn open_for_repair(path: String) -> Result<RepositoryHandle> {
        Ok(RepositoryHandle { repo: Repository::open_for_repair(Path::new(&path)).map_err(js_err)? })
    }

    #[napi(getter)]
    pub fn root(&self) -> String {
        self.repo.root().to_string_lossy().into_owned()
    }

    #[napi(getter)]
    pub fn hash(&self) -> String {
        self.repo.alg().name().to_string()
    }

    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.repo.block_size()
    }

    /// Whether pushed and pulled blocks are checked for SHA-1 collision attacks.
    #[napi(getter)]
    pub fn detects_collisions(&self) -> bool {
        self.repo.detects_collisions()
    }

    #[napi]
    pub fn set_wait_for_lock(&self, wait: bool) {
        self.repo.set_wait_for_lock(wait);
    }

    /// Frees the catalog and table cached in memory (operations still running keep theirs).
    #[napi]
    pub fn drop_cache(&self) {
        self.repo.drop_cache();
    }

    #[napi]
    pub fn list(&self) -> Result<Vec<RepoImage>> {
        Ok(self.repo.list().map_err(js_err)?.into_iter().map(image).collect())
    }

    /// By full digest, any of its tags, or unique digest prefix of at least 4 hex digits.
    #[napi]
    pub fn resolve(&self, reference: String) -> Result<RepoImage> {
        self.repo.resolve(&reference).map(image).map_err(js_err)
    }

    /// Gives an image tags, keeping its others; a tag another image had moves here.
    #[napi]
    pub fn tag(&self, reference: String, tags: Vec<String>) -> Result<RepoImage> {
        self.repo.tag(&reference, &tags).map(image).map_err(js_err)
    }

    /// Removes a tag; the image that carried it stays (returned).
    #[napi]
    pub fn untag(&self, tag: String) -> Result<RepoImage> {
        self.repo.untag(&tag).map(image).map_err(js_err)
    }

    #[napi]
    pub fn stats(&self) -> Result<RepoStats> {
        let s = self.repo.stats().map_err(js_err)?;
        Ok(RepoStats {
            hash: s.alg.name().to_string(),
            block_size: s.block_size,
            images: s.images as f64,
            total_bytes: s.total_bytes as f64,
            disk_bytes: s.disk_bytes as f64,
            distinct_blocks: s.distinct_blocks as f64,
            table_capacity: s.table_capacity as f64,
            table_memory_bytes: s.table_memory_bytes as f64,
            table_file_bytes: s.table_file_bytes as f64,
            catalog_bytes: s.catalog_bytes as f64,
            partial_assemblies: s.partial_assemblies as f64,
            partial_bytes: s.partial_bytes as f64,
        })
    }

    /// Adds an image file (copied in; reflinked where possible).
    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn add(
        &self,
        path: String,
        options: Option<RepoAddOptions>,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoImage, RepoImage>> {
        let repo = self.repo.clone();
        let opts = add_options(options);
        job(on_progress, signal, move |p| repo.add(Path::new(&path), &opts, p).map(image))
    }

    /// The synchronous twin of `add`.
    #[napi]
    pub fn add_sync(&self, path: String, options: Option<RepoAddOptions>) -> Result<RepoImage> {
        self.repo.add(Path::new(&path), &add_options(options), &Silent).map(image).map_err(js_err)
    }

    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn remove(&self, reference: String) -> AsyncTask<Run<RepoImage, RepoImage>> {
        let repo = self.repo.clone();
        job(None, None, move |_| repo.remove(&reference).map(image))
    }

    /// The synchronous twin of `remove`.
    #[napi]
    pub fn remove_sync(&self, reference: String) -> Result<RepoImage> {
        self.repo.remove(&reference).map(image).map_err(js_err)
    }

    /// Plans the assembly of an image given by an `.osfi` index path, an image path
    /// (indexed first), or index bytes.
    #[napi(ts_return_type = "Promise<RepoPlan>")]
    pub fn plan(
        &self,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoPlan, RepoPlan>> {
        let repo = self.repo.clone();
        let src = IndexSource::from_js(index);
        job(on_progress, signal, move |p| repo.plan(&src.load(&repo, p)?).map(plan_result))
    }

    /// The synchronous twin of `plan`.
    #[napi]
    pub fn plan_sync(
        &self,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
    ) -> Result<RepoPlan> {
        let src = IndexSource::from_js(index);
        let index = src.load(&self.repo, &Silent).map_err(js_err)?;
        self.repo.plan(&index).map(plan_result).map_err(js_err)
    }

    /// Assembles the image `index` describes from the repository's blocks plus the
    /// missing ones read from `from` (a file holding the image), verifying every block.
    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn assemble(
        &self,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
        from: String,
        options: Option<RepoAddOptions>,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoImage, RepoImage>> {
        let repo = self.repo.clone();
        let src = IndexSource::from_js(index);
        let opts = add_options(options);
        job(on_progress, signal, move |p| {
            let index = src.load(&repo, p)?;
            repo.assemble_from_file(index, Path::new(&from), &opts, p).map(image)
        })
    }

    /// The synchronous twin of `assemble`.
    #[napi]
    pub fn assemble_sync(
        &self,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
        from: String,
        options: Option<RepoAddOptions>,
    ) -> Result<RepoImage> {
        let index = IndexSource::from_js(index).load(&self.repo, &Silent).map_err(js_err)?;
        self.repo.assemble_from_file(index, Path::new(&from), &add_options(options), &Silent).map(image).map_err(js_err)
    }

    /// Re-hashes an image and compares it with its index (OSFARM_DIGEST_MISMATCH if damaged).
    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn verify(
        &self,
        reference: String,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoImage, RepoImage>> {
        let repo = self.repo.clone();
        job(on_progress, signal, move |p| repo.verify(&reference, p).map(image))
    }

    /// The synchronous twin of `verify`.
    #[napi]
    pub fn verify_sync(&self, reference: String) -> Result<RepoImage> {
        self.repo.verify(&reference, &Silent).map(image).map_err(js_err)
    }

    /// Shares an image's blocks (or every image's) with the images that already hold them,
    /// by reference (xfs, btrfs); on other file systems it changes nothing and says why.
    #[napi(ts_return_type = "Promise<RepoDedupReport>")]
    pub fn dedup(
        &self,
        reference: Option<String>,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoDedupReport, RepoDedupReport>> {
        let repo = self.repo.clone();
        job(on_progress, signal, move |p| repo.dedup(reference.as_deref(), p).map(dedup_report))
    }

    /// The images' logical size and what they take on the device (extents mapped with FIEMAP).
    #[napi]
    pub fn disk_usage(&self) -> Result<RepoDiskUsage> {
        let u = self.repo.disk_usage().map_err(js_err)?;
        Ok(RepoDiskUsage {
            logical_bytes: u.logical_bytes as f64,
            allocated_bytes: u.allocated_bytes as f64,
            physical_bytes: u.physical_bytes as f64,
            images: u
                .images
                .into_iter()
                .map(|i| RepoImageUsage {
                    digest: i.digest,
                    logical_bytes: i.logical_bytes as f64,
                    allocated_bytes: i.allocated_bytes as f64,
                    shared_bytes: i.shared_bytes as f64,
                })
                .collect(),
        })
    }

    /// Re-derives the block table (and, if needed, the catalog) from the images' indexes.
    #[napi(ts_return_type = "Promise<RepoRebuildReport>")]
    pub fn rebuild(
        &self,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> AsyncTask<Run<RepoRebuildReport, RepoRebuildReport>> {
        let repo = self.repo.clone();
        job(on_progress, signal, move |p| repo.rebuild_table(p).map(rebuild_report))
    }

    /// The synchronous twin of `rebuild`.
    #[napi]
    pub fn rebuild_sync(&self) -> Result<RepoRebuildReport> {
        self.repo.rebuild_table(&Silent).map(rebuild_report).map_err(js_err)
    }

    /// Starts a streaming assembly (for network transfers): see `AssemblerHandle`.
    #[napi]
    pub fn begin_assembly(
        &self,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
        options: Option<RepoAssemblyOptions>,
    ) -> Result<AssemblerHandle> {
        let index = IndexSource::from_js(index).load(&self.repo, &Silent).map_err(js_err)?;
        let opts = options.map_or_else(AssemblyOptions::default, |o| AssemblyOptions {
            resumable: o.resumable.unwrap_or(false),
            expected_digest: o.expected_digest,
        });
        let asm = self.repo.begin_assembly(index, opts).map_err(js_err)?;
        Ok(AssemblerHandle::new(asm))
    }
}

fn rebuild_report(r: repo::RebuildReport) -> RepoRebuildReport {
    RepoRebuildReport {
        images: r.images as f64,
        distinct_blocks: r.distinct_blocks as f64,
        recovered_catalog: r.recovered_catalog,
        dropped: r.dropped,
    }
}

// ----- streaming assembly -----

/// An image being assembled: fill from the repository, put the missing blocks, finish.
#[napi]
pub struct AssemblerHandle {
    /// None once released: the partial's lock goes with the last reference.
    asm: std::sync::Mutex<Option<Arc<repo::Assembler>>>,
}

impl AssemblerHandle {
    pub(crate) fn new(asm: repo::Assembler) -> Self {
        Self { asm: std::sync::Mutex::new(Some(Arc::new(asm))) }
    }

    fn get(&self) -> Result<Arc<repo::Assembler>> {
        self.asm.lock().unwrap().clone().ok_or_else(|| {
            js_err(osfarm_core::Error::new(
                osfarm_core::Code::InvalidArgument,
                "this assembly was released or aborted: begin a new one (a resumable one continues where it stopped)",
            ))
        })
    }
}

#[napi]
impl AssemblerHandle {
    #[napi(getter)]
    pub fn digest(&self) -> Result<String> {
        Ok(self.get()?.digest_hex().to_string())
    }

    #[napi(getter)]
    pub fn block_count(&self) -> Result<f64> {
        Ok(self.get()?.block_count() as f64)
    }

    #[napi(getter)]
    pub fn block_size(&self) -> Result<u32> {
        Ok(self.get()?.index().block_size())
    }

    #[napi(getter)]
    pub fn image_size(&self) -> Result<f64> {
        Ok(self.get()?.index().image_len() as f64)
    }

    /// Blocks present so far, zero blocks included.
    #[napi(getter)]
    pub fn have_blocks(&self) -> Result<f64> {
        Ok(self.get()?.have_blocks() as f64)
    }

    /// True if the image was already in the repository: nothing to do but `finish`.
    #[napi(getter)]
    pub fn already_present(&self) -> Result<bool> {
        Ok(self.get()?.is_complete_image())
    }

    /// Copies (verified, in parallel) every block the repository already holds.
    #[napi(ts_return_type = "Promise<RepoFillReport>")]
    pub fn fill_from_repository(
        &self,
        #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<
            ProgressCallback,
        >,
        signal: Option<AbortSignal>,
    ) -> Result<AsyncTask<Run<RepoFillReport, RepoFillReport>>> {
        let asm = self.get()?;
        Ok(job(on_progress, signal, move |p| {
            asm.fill_from_repository(p).map(|r| RepoFillReport { blocks: r.blocks as f64, bytes: r.bytes as f64 })
        }))
    }

    /// The synchronous twin of `fillFromRepository`.
    #[napi]
    pub fn fill_from_repository_sync(&self) -> Result<RepoFillReport> {
        let r = self.get()?.fill_from_repository(&Silent).map_err(js_err)?;
        Ok(RepoFillReport { blocks: r.blocks as f64, bytes: r.bytes as f64 })
    }

    /// The blocks still to supply, as runs (repeats of an earlier block are not listed).
    #[napi]
    pub fn missing(&self) -> Result<Vec<RepoRun>> {
        Ok(runs(&self.get()?.missing()))
    }

    /// Verifies and writes block `n`; false if it was already present.
    #[napi]
    pub fn put_block(&self, n: u32, data: Buffer) -> Result<bool> {
        self.get()?.put_block(n as u64, &data).map_err(js_err)
    }

    /// Verifies and writes consecutive blocks from `first`; returns how many were new.
    #[napi]
    pub fn put_blocks(&self, first: u32, data: Buffer) -> Result<f64> {
        self.get()?.put_blocks(first as u64, &data).map(|n| n as f64).map_err(js_err)
    }

    /// Makes the resumable state durable now.
    #[napi]
    pub fn flush(&self) -> Result<()> {
        self.get()?.flush().map_err(js_err)
    }

    /// Checks that every block is present and publishes the image.
    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn finish(&self, options: Option<RepoAddOptions>) -> Result<AsyncTask<Run<RepoImage, RepoImage>>> {
        let asm = self.get()?;
        let opts = add_options(options);
        Ok(job(None, None, move |_| asm.finish(&opts).map(image)))
    }

    /// The synchronous twin of `finish`.
    #[napi]
    pub fn finish_sync(&self, options: Option<RepoAddOptions>) -> Result<RepoImage> {
        self.get()?.finish(&add_options(options)).map(image).map_err(js_err)
    }

    /// Discards the partial image (resumable or not). Idempotent.
    #[napi]
    pub fn abort(&self) {
        if let Some(asm) = self.asm.lock().unwrap().take() {
            asm.abort();
        }
    }

    /// Stops without publishing or discarding: a resumable partial is flushed and unlocked
    /// for a later assembly of the same image (once running jobs end). Idempotent.
    #[napi]
    pub fn release(&self) {
        self.asm.lock().unwrap().take();
    }
}
