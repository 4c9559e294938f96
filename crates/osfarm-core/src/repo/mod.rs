//! The repository: a directory of images named by digest, one persistent hash table over
//! every block of every image, and the operations that keep them consistent under crashes
//! and concurrent processes. The on-disk format and the reasoning behind the write order
//! are in docs/repository-format.md; keep the two in step.
//!
//! ```text
//! <repo>/osfarm-repo.json       format file: format name, version, hash, block size
//! <repo>/lock                   flock: shared for readers, exclusive for writers
//! <repo>/catalog.osfc           the list of images + the record of the current table (commit point)
//! <repo>/table-<gen>.osft       the block hash table the catalog names
//! <repo>/images/<digest>/       image, index.osfi, meta.json
//! <repo>/tmp/                   work in progress: <kind>-….d/ directories, <digest>.partial/.have, push-….partial/.got
//! ```

pub mod assemble;
mod assembly;
pub mod catalog;
pub mod checksum;
mod copy;
mod dedup;
pub mod json;
pub mod plan;
pub mod stream;
pub mod table;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::bail;
use crate::digest_set::{DigestKey, DigestMap, DigestSet};
use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::hash::{self, HashAlg};
use crate::index::{self, Index};
use crate::indexer::{self, IndexOptions};
use crate::progress::{self, Progress};

use crate::lock::{self, FileLock, LockKind};
pub use assemble::{Assembler, AssemblyOptions};
use catalog::{Catalog, CatalogEntry};
pub use dedup::{DedupReport, DiskUsage, ImageUsage};
pub use plan::{BlockSource, Plan, PlanSummary, Run};
use table::{BlockTable, Entry, TableHeader};

pub const FORMAT_FILE: &str = "osfarm-repo.json";
pub const FORMAT_NAME: &str = "osfarm-repo";
pub const FORMAT_VERSION: u64 = 1;
pub const CATALOG_FILE: &str = "catalog.osfc";
pub const LOCK_FILE: &str = "lock";
pub const IMAGES_DIR: &str = "images";
pub const TMP_DIR: &str = "tmp";
pub const IMAGE_FILE: &str = "image";
pub const INDEX_FILE: &str = "index.osfi";
pub const META_FILE: &str = "meta.json";
const OWNER_FILE: &str = ".owner";
/// Names are labels for people; keep them printable and short.
const MAX_NAME_LEN: usize = 255;

fn table_file_name(generation: u64) -> String {
    format!("table-{generation:016x}.osft")
}

fn parse_table_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("table-")?.strip_suffix(".osft")?;
    u64::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 16)
}

/// Parameters fixed when a repository is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitOptions {
    pub alg: HashAlg,
    pub block_size: u32,
    /// SHA-1 with collision detection: every block received by a push or pull is checked
    /// for the traces of a SHA-1 collision attack (crate::collision, docs/trust.md).
    pub detect_collisions: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { alg: HashAlg::Sha1, block_size: hash::DEFAULT_BLOCK_SIZE, detect_collisions: false }
    }
}

/// What `add` records besides the data.
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Tags (names) for the image, added to any it has; a tag is on one image only, so
    /// giving one takes it from any other image.
    pub tags: Vec<String>,
    /// Arbitrary JSON text (must parse), e.g. the build spec that produced the image.
    pub meta_json: Option<String>,
    /// "tar", "raw", ...; detected from the data when absent.
    pub format: Option<String>,
    /// Recorded as the original file name; defaults to the source path's file name.
    pub original_name: Option<String>,
}

/// An image in the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    /// The image digest in hex: `Index::image_digest_hex()` at the repository's parameters.
    pub digest: String,
    /// Its tags (names), in the order they were given.
    pub tags: Vec<String>,
    pub original_name: Option<String>,
    pub format: String,
    pub size: u64,
    pub block_count: u64,
    /// Milliseconds since the Unix epoch.
    pub added_ms: u64,
    pub meta_json: Option<String>,
    /// The image data file.
    pub path: PathBuf,
    /// Its index file.
    pub index_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoStats {
    pub alg: HashAlg,
    pub block_size: u32,
    pub images: u64,
    /// Sum of the images' sizes.
    pub total_bytes: u64,
    /// Bytes the image files occupy on disk (holes and reflinks make this smaller).
    pub disk_bytes: u64,
    pub distinct_blocks: u64,
    pub table_capacity: u64,
    pub table_memory_bytes: u64,
    pub table_file_bytes: u64,
    pub catalog_bytes: u64,
    /// Resumable assemblies waiting in tmp/.
    pub partial_assemblies: u64,
    pub partial_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    pub images: u64,
    pub distinct_blocks: u64,
    /// True if the catalog was unreadable and was recovered from the image directories.
    pub recovered_catalog: bool,
    /// Images that were dropped, with the reason.
    pub dropped: Vec<String>,
}

/// A handle on a repository. Cheap to clone; every operation takes the repository lock
/// for its own duration, so handles in several threads or processes may coexist.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.inner.root)
            .field("hash", &self.inner.alg.name())
            .field("block_size", &self.inner.block_size)
            .finish()
    }
}

struct Inner {
    root: PathBuf,
    alg: HashAlg,
    block_size: u32,
    detect_collisions: bool,
    wait_for_lock: AtomicBool,
    /// The last catalog and table read, reused while the catalog on disk is unchanged.
    cache: Mutex<Option<Arc<State>>>,
}

/// A consistent snapshot: a catalog and the table it names.
#[derive(Clone)]
pub(crate) struct State {
    pub(crate) catalog: Catalog,
    catalog_sum: u64,
    pub(crate) table: Arc<BlockTable>,
}

fn bad_repo(root: &Path, msg: impl std::fmt::Display) -> Error {
    Error::new(Code::BadRepository, format!("{}: {msg}", root.display()))
}

/// Fault injection for crash tests: if `$OSFARM_CRASH_AT` names this point, the process
/// SIGKILLs itself here, exactly as a kill at the worst moment would. Points:
/// `add:copy-started` and `add:copy-half` (a chunk of the copy written), `add:placed`
/// (image directory renamed in, nothing committed), `commit:table-written` (new table on
/// disk, catalog not yet), `commit:catalog-written` (committed; old table, leftovers and,
/// for a removal, the image directory not yet deleted).
pub(crate) fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var("OSFARM_CRASH_AT").ok()).as_deref() == Some(point) {
        // SAFETY: kill(2) on our own pid with a constant signal.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The stage store's default home inside a repository directory (src/stages; not part of
/// the repository format, which never reads it).
const STAGES_DIR: &str = "stages";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Repository {
    // ----- creation and opening -----

    /// Creates a repository at `path` (the directory may exist if it is empty).
    pub fn init(path: &Path, opts: InitOptions) -> Result<Repository> {
        hash::block_size_log2(opts.block_size)?;
        if opts.detect_collisions && opts.alg != HashAlg::Sha1 {
            bail!(InvalidArgument, "collision detection is for SHA-1 repositories; {} needs none", opts.alg.name());
        }
        if opts.block_size as u64 * u32::MAX as u64 > 1 << 62 {
            bail!(InvalidArgument, "block size {} is too large for a repository", opts.block_size);
        }
        if path.join(FORMAT_FILE).exists() {
            bail!(InvalidArgument, "{} is already an osfarm repository", path.display());
        }
        fs::create_dir_all(path).map_err(|e| Error::io(path, "cannot create repository directory", e))?;
        if let Some(name) = foreign_entry(path)? {
            bail!(
                InvalidArgument,
                "{} is not empty (it holds {:?}): create the repository in a new or empty directory",
                path.display(),
                name
            );
        }
        for d in [IMAGES_DIR, TMP_DIR] {
            let p = path.join(d);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, "cannot create", e))?;
        }
        let _lock = FileLock::acquire(&path.join(LOCK_FILE), LockKind::Exclusive, true, "the repository")?;
        let table = BlockTable::new();
        let generation = 1;
        let table_path = path.join(table_file_name(generation));
        let mut header = None;
        fsutil::write_atomic(&table_path, |w| {
            header = Some(table.write_to(w, generation).map_err(|e| Error::io(&table_path, "cannot write", e))?);
            Ok(())
        })?;
        let catalog = Catalog { table: header.unwrap(), images: Vec::new() };
        let cat_path = path.join(CATALOG_FILE);
        let bytes = catalog.encode();
        fsutil::write_atomic(&cat_path, |w| w.write_all(&bytes).map_err(|e| Error::io(&cat_path, "cannot write", e)))?;
        let format = format!(
            "{{\n  \"format\": {},\n  \"version\": {FORMAT_VERSION},\n  \"hash\": {},\n  \"blockSize\": {},{}\n  \"created\": {}\n}}\n",
            json::quote(FORMAT_NAME),
            json::quote(opts.alg.name()),
            opts.block_size,
            if opts.detect_collisions { "\n  \"collisionDetection\": true," } else { "" },
            now_ms()
        );
        let fpath = path.join(FORMAT_FILE);
        fsutil::write_atomic(&fpath, |w| {
            w.write_all(format.as_bytes()).map_err(|e| Error::io(&fpath, "cannot write", e))
        })?;
        drop(_lock);
        Repository::open(path)
    }

    /// Opens a repository and checks its catalog and block table.
    pub fn open(path: &Path) -> Result<Repository> {
        let repo = Repository::open_for_repair(path)?;
        let lock = repo.lock(LockKind::Shared)?;
        repo.state(&lock)?;
        Ok(repo)
    }

    /// Opens a repository reading only its format file: for `rebuild_table` when the
    /// catalog or table is damaged.
    pub fn open_for_repair(path: &Path) -> Result<Repository> {
        let fpath = path.join(FORMAT_FILE);
        let hint = format!("run `osfarm repo init {}` to create one", path.display());
        let text = match fs::read(&fpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !path.is_dir() {
                    return Err(bad_repo(path, format!("does not exist; {hint}")));
                }
                // `repo init` refuses a directory holding other things: say so instead of suggesting it.
                return Err(bad_repo(
                    path,
                    match foreign_entry(path)? {
                        None => format!("is not an osfarm repository yet (no {FORMAT_FILE}); {hint}"),
                        Some(name) => format!(
                            "is not an osfarm repository (no {FORMAT_FILE}; it holds {name:?}): give the repository with --repo DIR \
                             or $OSFARM_REPO, or create one in a new or empty directory with `osfarm repo init DIR`"
                        ),
                    },
                ));
            }
            Err(e) => return Err(Error::io(&fpath, "cannot read", e)),
        };
        let v = std::str::from_utf8(&text)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(json::parse)
            .map_err(|e| bad_repo(path, format!("{FORMAT_FILE} is damaged ({e}); {hint}")))?;
        if v.get("format").and_then(|v| v.as_str()) != Some(FORMAT_NAME) {
            return Err(bad_repo(path, format!("{FORMAT_FILE} is not an osfarm repository format file; {hint}")));
        }
        match v.get("version").and_then(|v| v.as_u64()) {
            Some(FORMAT_VERSION) => {}
            other => {
                return Err(bad_repo(
                    path,
                    format!(
                        "repository format version {} is not supported (this osfarm reads version {FORMAT_VERSION}); \
                         use a matching osfarm, or run `osfarm repo init` on a new directory",
                        other.map_or("?".into(), |v| v.to_string())
                    ),
                ))
            }
        }
        let alg = v
            .get("hash")
            .and_then(|v| v.as_str())
            .and_then(|h| HashAlg::parse(h).ok())
            .ok_or_else(|| bad_repo(path, format!("{FORMAT_FILE} names no known hash")))?;
        let block_size =
            v.get("blockSize")
                .and_then(|v| v.as_u64())
                .filter(|&b| b <= u32::MAX as u64 && hash::block_size_log2(b as u32).is_ok())
                .ok_or_else(|| bad_repo(path, format!("{FORMAT_FILE} has no valid blockSize")))? as u32;
        let detect_collisions = match v.get("collisionDetection") {
            None | Some(json::Value::Bool(false)) => false,
            Some(json::Value::Bool(true)) if alg == HashAlg::Sha1 => true,
            Some(_) => {
                return Err(bad_repo(
                    path,
                    format!("{FORMAT_FILE} has an invalid collisionDetection (true, for sha1 only)"),
                ))
            }
        };
        Ok(Repository {
            inner: Arc::new(Inner {
                root: path.to_path_buf(),
                alg,
                block_size,
                detect_collisions,
                wait_for_lock: AtomicBool::new(true),
                cache: Mutex::new(None),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Space a new image must leave free: its commit writes a new block table next to the
    /// old one (plus the catalog), and removing an image later does the same. Without it a
    /// transfer could fill the disk to the last byte, fail at publish, and leave a
    /// repository from which no image can be removed to make room.
    pub(crate) fn commit_reserve(&self) -> u64 {
        let tables: u64 = fs::read_dir(&self.inner.root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| parse_table_file_name(&e.file_name().to_string_lossy()).is_some())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        2 * tables + (1 << 20)
    }
    pub fn alg(&self) -> HashAlg {
        self.inner.alg
    }
    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    /// Whether received blocks are checked for SHA-1 collision attacks (`InitOptions`).
    pub fn detects_collisions(&self) -> bool {
        self.inner.detect_collisions
    }
    pub fn index_options(&self) -> IndexOptions {
        IndexOptions { alg: self.inner.alg, block_size: self.inner.block_size }
    }

    /// With `false`, operations fail with `Code::Locked` instead of waiting for another
    /// process's lock.
    pub fn set_wait_for_lock(&self, wait: bool) {
        self.inner.wait_for_lock.store(wait, Ordering::Relaxed);
    }

    /// Drops the catalog and table kept in memory between operations (the next one rereads
    /// them from disk): what closing a handle frees at once rather than when it is dropped.
    pub fn drop_cache(&self) {
        *self.inner.cache.lock().unwrap() = None;
    }

    pub(crate) fn lock(&self, kind: LockKind) -> Result<FileLock> {
        FileLock::acquire(
            &self.inner.root.join(LOCK_FILE),
            kind,
            self.inner.wait_for_lock.load(Ordering::Relaxed),
            &format!("repository {}", self.inner.root.display()),
        )
    }

    fn images_dir(&self) -> PathBuf {
        self.inner.root.join(IMAGES_DIR)
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join(TMP_DIR)
    }
    pub(crate) fn image_dir(&self, digest_hex: &str) -> PathBuf {
        self.images_dir().join(digest_hex)
    }

    /// Checks that an index was made with this repository's hash and block size.
    pub fn check_params(&self, index: &Index) -> Result<()> {
        if index.alg() != self.alg() || index.block_size() != self.block_size() {
            bail!(
                Mismatch,
                "the index uses {} at {}-byte blocks but repository {} uses {} at {}-byte blocks: \
                 index the image with --hash {} --block-size {}",
                index.alg().name(),
                index.block_size(),
                self.root().display(),
                self.alg().name(),
                self.block_size(),
                self.alg().name(),
                self.block_size()
            );
        }
        Ok(())
    }

    // ----- state: catalog + table -----

    /// The current catalog and table; the caller holds the repository lock.
    pub(crate) fn state(&self, _lock: &FileLock) -> Result<Arc<State>> {
        let path = self.inner.root.join(CATALOG_FILE);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad_repo(
                &self.inner.root,
                format!("the catalog {CATALOG_FILE} is missing; run `osfarm repo rebuild` to recover it from the image directories"),
            ),
            _ => Error::io(&path, "cannot read catalog", e),
        })?;
        let sum = bytes.len().checked_sub(8).map_or(0, |n| u64::from_le_bytes(bytes[n..].try_into().unwrap()));
        let cached = self.inner.cache.lock().unwrap().clone();
        if let Some(c) = &cached {
            if c.catalog_sum == sum && c.catalog.encode() == bytes {
                return Ok(c.clone());
            }
        }
        let catalog = Catalog::decode(&bytes, self.alg().len(), &path)?;
        let table = match &cached {
            Some(c) if c.catalog.table == catalog.table => c.table.clone(),
            _ => {
                let tpath = self.inner.root.join(table_file_name(catalog.table.generation));
                let t = BlockTable::load(&tpath, &catalog.table)?;
                check_table_against_catalog(&t, &catalog, self.block_size()).map_err(|m| {
                    bad_repo(
                        &self.inner.root,
                        format!(
                            "block table {} does not match the catalog ({m}); run `osfarm repo rebuild`",
                            tpath.display()
                        ),
                    )
                })?;
                Arc::new(t)
            }
        };
        let st = Arc::new(State { catalog, catalog_sum: sum, table });
        *self.inner.cache.lock().unwrap() = Some(st.clone());
        Ok(st)
    }

    /// The current state, owned, for a writer to change and pass to `commit`.
    /// The cache is emptied, so a failed write makes the next operation reread the disk.
    fn state_for_write(&self, lock: &FileLock) -> Result<State> {
        let st = self.state(lock)?;
        *self.inner.cache.lock().unwrap() = None;
        Ok(Arc::try_unwrap(st).unwrap_or_else(|a| (*a).clone()))
    }

    /// Makes `st` the repository's state. With `table_changed`, first writes the table as a
    /// new generation (temp + fsync + rename); then the catalog naming it (the commit
    /// point); then deletes the previous table and sweeps leftovers. A crash before the
    /// catalog rename leaves the old state intact, after it the new one.
    fn commit(&self, lock: &FileLock, mut st: State, table_changed: bool) -> Result<Arc<State>> {
        let old_generation = st.catalog.table.generation;
        if table_changed {
            let generation = self.next_generation(old_generation);
            let tpath = self.inner.root.join(table_file_name(generation));
            let mut header = None;
            fsutil::write_atomic(&tpath, |w| {
                header = Some(st.table.write_to(w, generation).map_err(|e| Error::io(&tpath, "cannot write", e))?);
                Ok(())
            })?;
            st.catalog.table = header.unwrap();
            crash_point("commit:table-written");
        }
        let bytes = st.catalog.encode();
        let cpath = self.inner.root.join(CATALOG_FILE);
        fsutil::write_atomic(&cpath, |w| w.write_all(&bytes).map_err(|e| Error::io(&cpath, "cannot write", e)))?;
        st.catalog_sum = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap());
        crash_point("commit:catalog-written");
        let st = Arc::new(st);
        *self.inner.cache.lock().unwrap() = Some(st.clone());
        self.sweep(lock, &st);
        Ok(st)
    }

    /// A table generation above any present on disk (so a leftover file is never reused).
    fn next_generation(&self, current: u64) -> u64 {
        let mut g = current;
        if let Ok(rd) = fs::read_dir(&self.inner.root) {
            for e in rd.flatten() {
                if let Some(n) = parse_table_file_name(&e.file_name().to_string_lossy()) {
                    g = g.max(n);
                }
            }
        }
        g + 1
    }

    /// Removes what crashed or finished writers left behind. Runs under the exclusive lock
    /// (writers only create leftovers under it or under an owner lock), best effort.
    fn sweep(&self, _lock: &FileLock, st: &State) {
        let root = &self.inner.root;
        if let Ok(rd) = fs::read_dir(root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stale_table = parse_table_file_name(&name).is_some_and(|g| g != st.catalog.table.generation);
                if stale_table || (name.starts_with('.') && name.contains(".tmp-")) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let listed: std::collections::HashSet<String> = st.catalog.images.iter().map(|e| e.digest_hex()).collect();
        if let Ok(rd) = fs::read_dir(self.images_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !listed.contains(&name) {
                    let p = e.path();
                    let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".d") && !lock::is_held(&e.path().join(OWNER_FILE)) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    // ----- temporary work directories -----

    /// A private directory under tmp/ marked as in use by an owner lock; removed on drop
    /// unless published, and swept if its process dies.
    pub(crate) fn workspace(&self, kind: &str) -> Result<Workspace> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // Created under the shared lock so a sweep (exclusive) never sees it without its owner lock.
        let _shared = self.lock(LockKind::Shared)?;
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot create", e))?;
        let dir =
            tmp.join(format!("{kind}-{}-{}-{}.d", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed), now_ms()));
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, "cannot create", e))?;
        let owner = FileLock::acquire(&dir.join(OWNER_FILE), LockKind::Exclusive, false, "a temporary directory");
        match owner {
            Ok(owner) => Ok(Workspace { dir, owner: Some(owner), armed: true }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// A new workspace holding an image file of `len` bytes (sparse), locked by this
    /// process: where an assembly that nobody can resume writes its image.
    pub(crate) fn private_image_file(&self, kind: &str, len: u64) -> Result<(Workspace, FileLock, PathBuf)> {
        let ws = self.workspace(kind)?;
        let path = ws.dir.join(IMAGE_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot create", e))?;
        file.set_len(len).map_err(|e| Error::io(&path, "cannot size", e))?;
        let data = FileLock::on_file(file, LockKind::Exclusive, false)
            .map_err(|e| Error::io(&path, "cannot lock", e))?
            .ok_or_else(|| Error::new(Code::Locked, "a private assembly file is locked"))?;
        Ok((ws, data, path))
    }

    // ----- adding -----

    /// Adds an image file: copies it in (reflink when the file system can, else one
    /// parallel pass that reads, hashes and writes, leaving all-zero blocks as holes),
    /// indexes the copy, and publishes it. Adding an image already present only adds the
    /// tags given (if any) and returns the existing entry.
    pub fn add(&self, image: &Path, opts: &AddOptions, progress: &dyn Progress) -> Result<ImageEntry> {
        check_tags(&opts.tags)?;
        check_meta(opts.meta_json.as_deref())?;
        let ws = self.workspace("add")?;
        let data = ws.dir.join(IMAGE_FILE);
        let index = copy::copy_and_index(image, &data, self.index_options(), progress)?;
        let format = match &opts.format {
            Some(f) => f.clone(),
            None => detect_format(&data),
        };
        let original_name =
            opts.original_name.clone().or_else(|| image.file_name().map(|n| n.to_string_lossy().into_owned()));
        let entry = CatalogEntry {
            slot: 0,
            digest: index.image_digest().to_vec(),
            image_len: index.image_len(),
            added_ms: now_ms(),
            tags: Vec::new(),
            original_name,
            format,
            meta_json: opts.meta_json.clone(),
        };
        self.publish_new_image(ws, &index, entry, &opts.tags)
    }

    /// Writes the index and meta.json next to `ws/image` (which must already be durable),
    /// then moves the directory under images/ and commits it to the catalog and table.
    pub(crate) fn publish_new_image(
        &self,
        mut ws: Workspace,
        index: &Index,
        mut entry: CatalogEntry,
        tags: &[String],
    ) -> Result<ImageEntry> {
        index.save(&ws.dir.join(INDEX_FILE))?;
        let mut first_tags: Vec<String> = Vec::new();
        for t in tags {
            if !first_tags.contains(t) {
                first_tags.push(t.clone());
            }
        }
        self.write_meta(&ws.dir, index, &CatalogEntry { tags: first_tags, ..entry.clone() })?;
        fsutil::sync_dir(&ws.dir)?;

        let lock = self.lock(LockKind::Exclusive)?;
        let mut st = self.state_for_write(&lock)?;
        let hex = index.image_digest_hex();
        if let Some(pos) = st.catalog.images.iter().position(|e| e.digest == entry.digest) {
            // Already here: keep the existing data; only new tags change anything.
            drop(ws);
            return self.commit_tags(&lock, st, pos, tags);
        }
        let slot = st.catalog.free_slot();
        if slot >= catalog::MAX_SLOTS {
            bail!(InvalidArgument, "the repository holds {slot} images, the most it can: remove some first");
        }
        let dest = self.image_dir(&hex);
        if dest.exists() {
            // An unreferenced leftover of a crashed add or remove: replace it.
            fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, "cannot remove stale", e))?;
        }
        // Under the exclusive lock, so no sweep can see the directory without its owner file.
        let _ = fs::remove_file(ws.dir.join(OWNER_FILE));
        fsutil::publish(&ws.dir, &dest)?;
        ws.armed = false;
        drop(ws);
        crash_point("add:placed");

        entry.slot = slot;
        {
            let table = Arc::make_mut(&mut st.table);
            let holders = Holders::new(self, &st.catalog);
            holders.preload(slot, index.digests().to_vec());
            insert_image(table, &holders, index, slot)?;
            table.fit();
        }
        st.catalog.images.push(entry);
        let pos = st.catalog.images.len() - 1;
        let losers = give_tags(&mut st.catalog, pos, tags)?;
        let st = self.commit(&lock, st, true)?;
        let published = self.entry(&st.catalog.images[pos], index.block_count());
        // The image's own meta.json was written with its tags before the commit; the images
        // that lost a tag to it get theirs rewritten (served, and read by pulls).
        self.rewrite_meta(&st, &losers);
        drop(lock);
        // Committed: now share its blocks with the images that hold them (xfs, btrfs). Best
        // effort: the image is complete either way, and `osfarm repo dedup` can redo this.
        let _ = self.dedup(Some(&published.digest), &progress::Silent);
        Ok(published)
    }

    fn write_meta(&self, dir: &Path, index: &Index, e: &CatalogEntry) -> Result<()> {
        let text = format!(
            "{{\n  \"digest\": {},\n  \"name\": {},\n  \"tags\": [{}],\n  \"originalName\": {},\n  \"format\": {},\n  \"size\": {},\n  \
             \"blockCount\": {},\n  \"hash\": {},\n  \"blockSize\": {},\n  \"added\": {},\n  \"metaJson\": {}\n}}\n",
            json::quote(&index.image_digest_hex()),
            json::quote_opt(e.tags.first().map(String::as_str)),
            e.tags.iter().map(|t| json::quote(t)).collect::<Vec<_>>().join(", "),
            json::quote_opt(e.original_name.as_deref()),
            json::quote(&e.format),
            index.image_len(),
            index.block_count(),
            json::quote(index.alg().name()),
            index.block_size(),
            e.added_ms,
            json::quote_opt(e.meta_json.as_deref()),
        );
        let p = dir.join(META_FILE);
        fsutil::write_atomic(&p, |w| w.write_all(text.as_bytes()).map_err(|e| Error::io(&p, "cannot write", e)))
    }

    fn entry(&self, e: &CatalogEntry, block_count: u64) -> ImageEntry {
        let hex = e.digest_hex();
        let dir = self.image_dir(&hex);
        ImageEntry {
            digest: hex,
            tags: e.tags.clone(),
            original_name: e.original_name.clone(),
            format: e.format.clone(),
            size: e.image_len,
            block_count,
            added_ms: e.added_ms,
            meta_json: e.meta_json.clone(),
            path: dir.join(IMAGE_FILE),
            index_path: dir.join(INDEX_FILE),
        }
    }

    fn entry_of(&self, e: &CatalogEntry) -> ImageEntry {
        self.entry(e, index::block_count_for(e.image_len, self.block_size()))
    }

    // ----- reading -----

    /// Every image, in the order they were added.
    pub fn list(&self) -> Result<Vec<ImageEntry>> {
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        Ok(st.catalog.images.iter().map(|e| self.entry_of(e)).collect())
    }

    /// Finds an image by full digest, name, or unique digest prefix of at least 4 hex
    /// digits (in that order of precedence).
    pub fn resolve(&self, reference: &str) -> Result<ImageEntry> {
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        Ok(self.entry_of(resolve_in(&st.catalog, reference)?))
    }

    /// The verified index of an image.
    pub fn index_of(&self, reference: &str) -> Result<Index> {
        let e = self.resolve(reference)?;
        let index = Index::load(&e.index_path)?;
        if index.image_digest_hex() != e.digest {
            bail!(
                BadRepository,
                "the index of image {} does not match its digest; run `osfarm repo rebuild`",
                e.digest
            );
        }
        Ok(index)
    }

    /// Where the data of an image lies (read-only: images are immutable).
    pub fn image_path(&self, reference: &str) -> Result<PathBuf> {
        Ok(self.resolve(reference)?.path)
    }

    /// Re-hashes an image's data and compares it with its index: `DigestMismatch` names
    /// the first bad block.
    pub fn verify(&self, reference: &str, progress: &dyn Progress) -> Result<ImageEntry> {
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        let e = self.entry_of(resolve_in(&st.catalog, reference)?);
        let stored = Index::load(&e.index_path)?;
        if stored.image_digest_hex() != e.digest {
            bail!(DigestMismatch, "the index of image {} does not match its digest", e.digest);
        }
        let actual = indexer::index_file(&e.path, self.index_options(), progress)?;
        if actual != stored {
            let first = (0..stored.block_count().min(actual.block_count()))
                .find(|&i| stored.digest(i) != actual.digest(i))
                .unwrap_or(stored.block_count().min(actual.block_count()));
            bail!(
                DigestMismatch,
                "image {} is damaged on disk: block {first} does not match its index; remove it and add it again",
                e.digest
            );
        }
        Ok(e)
    }

    pub fn stats(&self) -> Result<RepoStats> {
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        let root = &self.inner.root;
        let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
        let mut disk_bytes = 0;
        for e in &st.catalog.images {
            use std::os::unix::fs::MetadataExt;
            disk_bytes +=
                fs::metadata(self.image_dir(&e.digest_hex()).join(IMAGE_FILE)).map_or(0, |m| m.blocks() * 512);
        }
        let (mut partial_assemblies, mut partial_bytes) = (0, 0);
        if let Ok(rd) = fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".partial") {
                    use std::os::unix::fs::MetadataExt;
                    partial_assemblies += 1;
                    partial_bytes += e.metadata().map_or(0, |m| m.blocks() * 512);
                }
            }
        }
        Ok(RepoStats {
            alg: self.alg(),
            block_size: self.block_size(),
            images: st.catalog.images.len() as u64,
            total_bytes: st.catalog.images.iter().map(|e| e.image_len).sum(),
            disk_bytes,
            distinct_blocks: st.table.len() as u64,
            table_capacity: st.table.capacity() as u64,
            table_memory_bytes: st.table.allocated_bytes() as u64,
            table_file_bytes: size(&root.join(table_file_name(st.catalog.table.generation))),
            catalog_bytes: size(&root.join(CATALOG_FILE)),
            partial_assemblies,
            partial_bytes,
        })
    }

    // ----- changing -----

    /// Gives an image tags, keeping those it has; a tag another image carries moves to
    /// this one (one catalog commit for all of them).
    pub fn tag(&self, reference: &str, tags: &[String]) -> Result<ImageEntry> {
        check_tags(tags)?;
        let lock = self.lock(LockKind::Exclusive)?;
        let st = self.state_for_write(&lock)?;
        let digest = resolve_in(&st.catalog, reference)?.digest.clone();
        let pos = st.catalog.images.iter().position(|e| e.digest == digest).unwrap();
        self.commit_tags(&lock, st, pos, tags)
    }

    /// Removes a tag and returns the image that carried it. The image stays, addressable
    /// by its digest and its other tags, like an image added without a name (`remove`
    /// deletes images).
    pub fn untag(&self, tag: &str) -> Result<ImageEntry> {
        let lock = self.lock(LockKind::Exclusive)?;
        let mut st = self.state_for_write(&lock)?;
        let Some(pos) = st.catalog.images.iter().position(|e| e.tags.iter().any(|t| t == tag)) else {
            bail!(NotFound, "no image has the tag '{tag}'; `osfarm repo ls` shows the tags");
        };
        st.catalog.images[pos].tags.retain(|t| t != tag);
        let st = self.commit(&lock, st, false)?;
        self.rewrite_meta(&st, &[pos]);
        Ok(self.entry_of(&st.catalog.images[pos]))
    }

    /// Commits `tags` on the image at `pos` if that changes anything, rewriting the
    /// meta.json of every image whose tags changed.
    fn commit_tags(&self, lock: &FileLock, mut st: State, pos: usize, tags: &[String]) -> Result<ImageEntry> {
        if tags.iter().all(|t| st.catalog.images[pos].tags.contains(t)) {
            let e = self.entry_of(&st.catalog.images[pos]);
            *self.inner.cache.lock().unwrap() = Some(Arc::new(st));
            return Ok(e);
        }
        let mut changed = give_tags(&mut st.catalog, pos, tags)?;
        changed.push(pos);
        let st = self.commit(lock, st, false)?;
        self.rewrite_meta(&st, &changed);
        Ok(self.entry_of(&st.catalog.images[pos]))
    }

    /// Rewrites the meta.json of the images at `positions` after a commit changed their
    /// tags. Best effort: the catalog, already committed, is the truth.
    fn rewrite_meta(&self, st: &State, positions: &[usize]) {
        for &p in positions {
            let e = &st.catalog.images[p];
            let dir = self.image_dir(&e.digest_hex());
            if let Ok(index) = Index::load(&dir.join(INDEX_FILE)) {
                let _ = self.write_meta(&dir, &index, e);
            }
        }
    }

    /// Removes an image. The table loses one reference to each of its distinct blocks;
    /// blocks other images still hold but that the table located in this image are
    /// re-pointed to another holder found by scanning only the other images' indexes
    /// (never their data), stopping as soon as all are found. Then the catalog and table
    /// are committed, and only then is the directory deleted.
    pub fn remove(&self, reference: &str) -> Result<ImageEntry> {
        let lock = self.lock(LockKind::Exclusive)?;
        let mut st = self.state_for_write(&lock)?;
        let victim = resolve_in(&st.catalog, reference)?.clone();
        let removed = self.entry_of(&victim);
        let index = Index::load(&removed.index_path).map_err(|e| {
            bad_repo(
                &self.inner.root,
                format!("cannot read the index of image {} ({}); run `osfarm repo rebuild`", removed.digest, e.message),
            )
        })?;
        {
            let table = Arc::make_mut(&mut st.table);
            let holders = Holders::new(self, &st.catalog);
            holders.preload(victim.slot, index.digests().to_vec());
            remove_image(table, &holders, &st.catalog, &index, victim.slot)?;
            table.fit();
        }
        st.catalog.images.retain(|e| e.slot != victim.slot);
        self.commit(&lock, st, true)?;
        let dir = self.image_dir(&removed.digest);
        // Unreferenced now; if this fails or we are killed, the next write sweeps it.
        let _ = fs::remove_dir_all(&dir);
        Ok(removed)
    }

    /// Re-derives the block table from the images' indexes, the documented recovery path
    /// for a damaged table. If the catalog itself is unreadable it is recovered from the
    /// image directories (their meta.json). Images whose index is missing, damaged, or
    /// does not match their data file's size are dropped and reported.
    pub fn rebuild_table(&self, progress: &dyn Progress) -> Result<RebuildReport> {
        let lock = self.lock(LockKind::Exclusive)?;
        *self.inner.cache.lock().unwrap() = None;
        let cpath = self.inner.root.join(CATALOG_FILE);
        let read = fs::read(&cpath)
            .map_err(|e| Error::io(&cpath, "cannot read", e))
            .and_then(|b| Catalog::decode(&b, self.alg().len(), &cpath));
        let (mut catalog, recovered_catalog) = match read {
            Ok(c) => (c, false),
            Err(e) if matches!(e.code, Code::BadRepository | Code::NotFound) => (self.recover_catalog(), true),
            Err(e) => return Err(e),
        };
        progress.start(catalog.images.len() as u64);
        let mut table = BlockTable::new();
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        let holders = Holders::new(self, &catalog);
        for e in &catalog.images {
            progress::check(progress)?;
            let hex = e.digest_hex();
            let dir = self.image_dir(&hex);
            let checked = Index::load(&dir.join(INDEX_FILE)).and_then(|index| {
                self.check_params(&index)?;
                if index.image_digest() != &e.digest[..] {
                    bail!(BadIndex, "its index names another image");
                }
                let len = fs::metadata(dir.join(IMAGE_FILE)).map_err(|err| Error::io(&dir, "image file", err))?.len();
                if len != index.image_len() || len != e.image_len {
                    bail!(BadIndex, "the data file has {len} bytes, the index says {}", index.image_len());
                }
                Ok(index)
            });
            match checked {
                Ok(index) => {
                    holders.preload(e.slot, index.digests().to_vec());
                    insert_image(&mut table, &holders, &index, e.slot)?;
                    kept.push(e.clone());
                }
                Err(err) => dropped.push(format!("{hex}: {}", err.message)),
            }
            progress.advance(1);
        }
        drop(holders);
        table.fit();
        catalog.images = kept;
        let st = State { catalog, catalog_sum: 0, table: Arc::new(table) };
        let st = self.commit(&lock, st, true)?;
        Ok(RebuildReport {
            images: st.catalog.images.len() as u64,
            distinct_blocks: st.table.len() as u64,
            recovered_catalog,
            dropped,
        })
    }

    /// A catalog made from the image directories, for when catalog.osfc is lost.
    fn recover_catalog(&self) -> Catalog {
        let mut images = Vec::new();
        let mut tags = std::collections::HashSet::new();
        if let Ok(rd) = fs::read_dir(self.images_dir()) {
            let mut dirs: Vec<_> = rd.flatten().collect();
            dirs.sort_by_key(|e| e.file_name());
            for d in dirs {
                let hex = d.file_name().to_string_lossy().into_owned();
                let Ok(digest) = hex::decode(&hex) else { continue };
                if digest.len() != self.alg().len() {
                    continue;
                }
                let meta = fs::read_to_string(d.path().join(META_FILE)).ok().and_then(|t| json::parse(&t).ok());
                let s = |k: &str| meta.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(str::to_string);
                let n = |k: &str| meta.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_u64());
                let image_len = fs::metadata(d.path().join(IMAGE_FILE)).map_or(0, |m| m.len());
                // meta.json's "tags" (a version 1 repository's has only "name"); a tag two
                // directories claim goes to the first.
                let listed: Vec<String> = match meta.as_ref().and_then(|m| m.get("tags")) {
                    Some(json::Value::Arr(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    _ => s("name").into_iter().collect(),
                };
                let image_tags = listed
                    .into_iter()
                    .filter(|t| check_tags(std::slice::from_ref(t)).is_ok() && tags.insert(t.clone()))
                    .collect();
                images.push(CatalogEntry {
                    slot: images.len() as u32,
                    digest,
                    image_len,
                    added_ms: n("added").unwrap_or(0),
                    tags: image_tags,
                    original_name: s("originalName"),
                    format: s("format").unwrap_or_else(|| "raw".into()),
                    meta_json: s("metaJson"),
                });
            }
        }
        images.sort_by_key(|e| e.added_ms);
        Catalog { table: TableHeader { generation: 0, capacity: 0, used: 0, checksum: 0 }, images }
    }
}

/// A temporary directory owned by this process (see `Repository::workspace`).
pub(crate) struct Workspace {
    pub(crate) dir: PathBuf,
    owner: Option<FileLock>,
    armed: bool,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.dir);
        }
        self.owner.take();
    }
}

/// Refuses a tag (image name) that is empty, too long, has control characters or
/// surrounding spaces, or too many tags; a receiver checks the tags a sender announces
/// before accepting any data.
pub fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > catalog::MAX_TAGS {
        bail!(InvalidArgument, "{} tags for one image: at most {}", tags.len(), catalog::MAX_TAGS);
    }
    for n in tags {
        if n.is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(|c| c.is_control()) || n.trim() != n {
            bail!(
                InvalidArgument,
                "image name {n:?} must be 1 to {MAX_NAME_LEN} bytes, without control characters or surrounding spaces"
            );
        }
    }
    Ok(())
}

fn check_meta(meta: Option<&str>) -> Result<()> {
    if let Some(m) = meta {
        json::parse(m)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("image metadata is not valid JSON: {e}")))?;
    }
    Ok(())
}

/// A tag is on one image only: giving `tags` to the image at `pos` takes each from any
/// other image. Returns the positions of the images that lost one.
fn give_tags(catalog: &mut Catalog, pos: usize, tags: &[String]) -> Result<Vec<usize>> {
    let adds = tags.iter().filter(|t| !catalog.images[pos].tags.contains(t)).count();
    if catalog.images[pos].tags.len() + adds > catalog::MAX_TAGS {
        bail!(InvalidArgument, "an image carries at most {} tags: untag some first", catalog::MAX_TAGS);
    }
    let mut losers = Vec::new();
    for t in tags {
        for (i, e) in catalog.images.iter_mut().enumerate() {
            if i != pos && e.tags.contains(t) {
                e.tags.retain(|x| x != t);
                losers.push(i);
            }
        }
        if !catalog.images[pos].tags.contains(t) {
            catalog.images[pos].tags.push(t.clone());
        }
    }
    Ok(losers)
}

/// "tar" if the data starts with a POSIX tar header, else "raw".
fn detect_format(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; 512];
    let is_tar = fs::File::open(path).and_then(|f| f.read_exact_at(&mut h, 0)).is_ok() && &h[257..262] == b"ustar";
    if is_tar { "tar" } else { "raw" }.to_string()
}

pub(crate) fn resolve_in<'a>(catalog: &'a Catalog, reference: &str) -> Result<&'a CatalogEntry> {
    let r = reference.trim();
    if r.is_empty() {
        bail!(InvalidArgument, "empty image reference: give a digest, a digest prefix or a name");
    }
    let lower = r.to_ascii_lowercase();
    if let Some(e) = catalog.images.iter().find(|e| e.digest_hex() == lower) {
        return Ok(e);
    }
    if let Some(e) = catalog.images.iter().find(|e| e.tags.iter().any(|t| t == r)) {
        return Ok(e);
    }
    if lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<&CatalogEntry> =
            catalog.images.iter().filter(|e| e.digest_hex().starts_with(&lower)).collect();
        match matches.len() {
            0 => {}
            1 => return Ok(matches[0]),
            n => {
                let some: Vec<String> = matches.iter().take(4).map(|e| e.digest_hex()[..16].to_string()).collect();
                bail!(Ambiguous, "'{r}' matches {n} images ({}…): give more digits", some.join(", "));
            }
        }
    }
    bail!(
        NotFound,
        "no image matches '{r}' (by digest, digest prefix of at least 4 hex digits, or name); `osfarm repo ls` shows them"
    )
}

/// The first entry of `path` that is none of a repository's own files (an init killed
/// before it wrote the format file leaves some; the stage store lives next to the images
/// by default), or None: what keeps `init` from making `path` a repository.
fn foreign_entry(path: &Path) -> Result<Option<std::ffi::OsString>> {
    let ours = |n: &str| {
        [IMAGES_DIR, TMP_DIR, LOCK_FILE, CATALOG_FILE, STAGES_DIR].contains(&n)
            || parse_table_file_name(n).is_some()
            || (n.starts_with('.') && n.contains(".tmp-"))
    };
    for e in fs::read_dir(path).map_err(|e| Error::io(path, "cannot read", e))? {
        let e = e.map_err(|e| Error::io(path, "cannot read", e))?;
        if !ours(&e.file_name().to_string_lossy()) {
            return Ok(Some(e.file_name()));
        }
    }
    Ok(None)
}

/// Checks every used table entry against the catalog: its slot is an image, its block
/// inside that image. Cheap (one pass over the entries) and catches a table from another
/// repository state.
fn check_table_against_catalog(
    table: &BlockTable,
    catalog: &Catalog,
    block_size: u32,
) -> std::result::Result<(), String> {
    let mut blocks: Vec<Option<u64>> = vec![None; catalog.slot_bound()];
    for e in &catalog.images {
        blocks[e.slot as usize] = Some(index::block_count_for(e.image_len, block_size));
    }
    for e in table.entries().iter().filter(|e| e.refs > 0) {
        match blocks.get(e.slot as usize).copied().flatten() {
            Some(n) if (e.block as u64) < n => {}
            _ => return Err(format!("an entry points at block {} of slot {}, which does not exist", e.block, e.slot)),
        }
        if e.refs as usize > catalog.images.len() {
            return Err(format!("an entry counts {} holders among {} images", e.refs, catalog.images.len()));
        }
    }
    Ok(())
}

/// The block digests of the images of a catalog, loaded lazily from their index files and
/// shared between threads; used to confirm table matches (the table stores only 8-byte
/// prefixes). The index files are read without re-verifying their image digest: a
/// confirmation only steers where to look, and every block copied is verified anyway.
pub(crate) struct Holders<'a> {
    repo: &'a Repository,
    catalog: &'a Catalog,
    slots: Vec<OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>,
}

impl<'a> Holders<'a> {
    pub(crate) fn new(repo: &'a Repository, catalog: &'a Catalog) -> Holders<'a> {
        let n = catalog.slot_bound().max(catalog.free_slot() as usize + 1);
        Holders { repo, catalog, slots: (0..n).map(|_| OnceLock::new()).collect() }
    }

    /// Supplies the digests of `slot` from memory (a new image, or one being removed).
    pub(crate) fn preload(&self, slot: u32, digests: Vec<u8>) {
        if let Some(cell) = self.slots.get(slot as usize) {
            let _ = cell.set(Ok(Arc::new(digests)));
        }
    }

    pub(crate) fn digests(&self, slot: u32) -> Result<&[u8]> {
        let cell = self
            .slots
            .get(slot as usize)
            .ok_or_else(|| table::inconsistent(format!("slot {slot} is not in the catalog")))?;
        match cell.get_or_init(|| self.load(slot)) {
            Ok(d) => Ok(&d[..]),
            Err(m) => Err(Error::new(Code::BadRepository, m.clone())),
        }
    }

    fn load(&self, slot: u32) -> std::result::Result<Arc<Vec<u8>>, String> {
        let e = self
            .catalog
            .by_slot(slot)
            .ok_or_else(|| format!("slot {slot} is not in the catalog; run `osfarm repo rebuild`"))?;
        let path = self.repo.image_dir(&e.digest_hex()).join(INDEX_FILE);
        let bad =
            |m: &str| format!("the index {} of a repository image is {m}; run `osfarm repo rebuild`", path.display());
        let bytes = fs::read(&path).map_err(|err| bad(&format!("unreadable ({err})")))?;
        let dl = self.repo.alg().len();
        let count = index::block_count_for(e.image_len, self.repo.block_size());
        let ok = bytes.len() as u64 == index::HEADER_LEN as u64 + count * dl as u64
            && bytes[..8] == index::MAGIC
            && bytes[10] == self.repo.alg().id()
            && bytes[11] as u32 == self.repo.block_size().trailing_zeros()
            && bytes[16..24] == e.image_len.to_le_bytes()
            && bytes[32..32 + dl] == e.digest[..];
        if !ok {
            return Err(bad("damaged or does not match the catalog"));
        }
        let mut v = bytes;
        v.drain(..index::HEADER_LEN);
        Ok(Arc::new(v))
    }

    /// True if the block an entry points at has digest `digest`.
    pub(crate) fn confirm(&self, e: &Entry, digest: &[u8]) -> Result<bool> {
        let d = self.digests(e.slot)?;
        let n = digest.len();
        let at = e.block as usize * n;
        match d.get(at..at + n) {
            Some(held) => Ok(held == digest),
            None => Err(table::inconsistent(format!("block {} is beyond the end of slot {}", e.block, e.slot))),
        }
    }
}

/// Adds one reference per distinct non-zero digest of `index` (image in `slot`), pointing
/// new digests at their first block in it. Reads no other image's data; other images'
/// indexes only to confirm prefix matches.
fn insert_image(table: &mut BlockTable, holders: &Holders<'_>, index: &Index, slot: u32) -> Result<()> {
    if index.block_count() > u32::MAX as u64 {
        bail!(InvalidArgument, "images of more than 2^32 blocks are not supported");
    }
    let mut seen = DigestSet::default();
    for (i, d) in index.iter().enumerate() {
        if hash::is_zero_digest(d) || !seen.insert(DigestKey(d)) {
            continue;
        }
        table.insert(d, slot, i as u32, |e| holders.confirm(e, d))?;
    }
    Ok(())
}

/// Drops one reference per distinct non-zero digest of the image in `slot`, and re-points
/// entries located in it that other images still hold (see `Repository::remove`).
fn remove_image<'h>(
    table: &mut BlockTable,
    holders: &'h Holders<'_>,
    catalog: &Catalog,
    index: &'h Index,
    slot: u32,
) -> Result<()> {
    let mut seen = DigestSet::default();
    let mut repoint: DigestMap<'h, Option<(u32, u32)>> = DigestMap::default();
    for d in index.iter() {
        if hash::is_zero_digest(d) || !seen.insert(DigestKey(d)) {
            continue;
        }
        let i = table.find(d, |e| holders.confirm(e, d))?.ok_or_else(|| {
            table::inconsistent(format!("block {} of the removed image is not in the table", hex::encode(d)))
        })?;
        let at_victim = table.entry(i).slot == slot;
        if table.release(i) > 0 && at_victim {
            repoint.insert(DigestKey(d), None);
        }
    }
    drop(seen);
    let mut left = repoint.len();
    for other in catalog.images.iter().filter(|e| e.slot != slot) {
        if left == 0 {
            break;
        }
        let digests = holders.digests(other.slot)?;
        for (j, d) in digests.chunks_exact(index.alg().len()).enumerate() {
            if let Some(found @ None) = repoint.get_mut(&DigestKey(d)) {
                *found = Some((other.slot, j as u32));
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    for (d, found) in repoint {
        let i = table
            .find(d.0, |e| holders.confirm(e, d.0))?
            .ok_or_else(|| table::inconsistent("a re-pointed block vanished"))?;
        match found {
            Some((s, b)) => table.repoint(i, s, b),
            // The refcount said another image holds it, but none does: the count was wrong.
            None => while table.release(i) > 0 {},
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
