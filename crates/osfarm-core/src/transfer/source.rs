//! The sending side of a transfer: block digests streamed from a background hashing
//! thread, and runs of blocks read (and compressed) on request.
//!
//! The hashing thread walks the image in windows, each hashed like `indexer::index_file`
//! hashes a whole file (`indexer::hash_range`: a `ReadAhead` thread streams the file
//! into the page cache while the rayon workers hash mapped pieces of the window), and
//! sends each window's digests through a bounded channel. The
//! consumer — the network — takes them as fast as it can send them; when it stalls, the
//! channel fills and hashing pauses, so memory stays bounded whatever the image size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use sha1::Digest as _;

use crate::bail;
use crate::error::{Code, Error, Result};
use crate::hash::{self, HashAlg};
use crate::index::{block_count_for, Index};
use crate::indexer::{hash_range, IndexOptions};
use crate::progress::{CancelFlag, Progress};
use crate::readahead::ReadAhead;
use crate::transfer::codec::{Compressor, Encoding};

/// Bytes hashed in the first window: small, so the first digests leave within a few
/// milliseconds. Each next window doubles, up to `WINDOW_BYTES`: every window costs the
/// sender's JS thread a wake-up and a frame, which on a one-CPU sender is time taken
/// from hashing (256 MiB: 32 windows of 8 MiB cost ~8 ms of 170; benches/transfer-bandwidth.ts).
const FIRST_WINDOW_BYTES: u64 = 4 << 20;
const WINDOW_BYTES: u64 = 32 << 20;
/// Windows the hashing thread may run ahead of the consumer.
const CHANNEL_WINDOWS: usize = 8;
/// Digests per window when they come from an existing index.
const INDEX_WINDOW_BLOCKS: u64 = 16384;

/// The digests of consecutive blocks starting at `first_block`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestWindow {
    pub first_block: u64,
    pub digests: Vec<u8>,
}

impl DigestWindow {
    pub fn count(&self, alg: HashAlg) -> u64 {
        (self.digests.len() / alg.len()) as u64
    }
}

enum Msg {
    Window(DigestWindow),
    End(Vec<u8>),
    Failed(Error),
}

#[derive(Clone, Copy, Debug)]
pub struct SourceOptions {
    pub alg: HashAlg,
    pub block_size: u32,
}

/// The image digest computed incrementally from block digests in order: equal to
/// `index::image_digest` over the same digests (see docs/index-format.md).
pub struct ImageDigester {
    alg: HashAlg,
    state: DigesterState,
    blocks: u64,
    expected_blocks: u64,
}

enum DigesterState {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl ImageDigester {
    pub fn new(alg: HashAlg, block_size: u32, image_len: u64) -> ImageDigester {
        let header: [&[u8]; 3] =
            [b"osfarm image v1\0", &[alg.id(), block_size.trailing_zeros() as u8], &image_len.to_le_bytes()];
        let state = match alg {
            HashAlg::Sha1 => {
                let mut h = sha1::Sha1::new();
                header.iter().for_each(|p| h.update(p));
                DigesterState::Sha1(h)
            }
            HashAlg::Sha256 => {
                let mut h = sha2::Sha256::new();
                header.iter().for_each(|p| h.update(p));
                DigesterState::Sha256(h)
            }
        };
        ImageDigester { alg, state, blocks: 0, expected_blocks: block_count_for(image_len, block_size) }
    }

    /// Adds the next block digests, in block order.
    pub fn update(&mut self, digests: &[u8]) {
        self.blocks += (digests.len() / self.alg.len()) as u64;
        match &mut self.state {
            DigesterState::Sha1(h) => h.update(digests),
            DigesterState::Sha256(h) => h.update(digests),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The image digest, once every block digest has been added.
    pub fn finish(self) -> Result<Vec<u8>> {
        if self.blocks != self.expected_blocks {
            bail!(
                InvalidArgument,
                "{} block digests given for an image of {} blocks",
                self.blocks,
                self.expected_blocks
            );
        }
        Ok(match self.state {
            DigesterState::Sha1(h) => h.finalize().to_vec(),
            DigesterState::Sha256(h) => h.finalize().to_vec(),
        })
    }
}

/// An image being sent: its digests stream out of a background thread; its blocks are
/// read on request. Dropping it (or `cancel`) stops the hashing thread.
pub struct ImageSource {
    path: PathBuf,
    file: File,
    alg: HashAlg,
    block_size: u32,
    image_len: u64,
    rx: Mutex<Receiver<Msg>>,
    cancel: CancelFlag,
    image_digest: Mutex<Option<Vec<u8>>>,
    /// True when the digests come from an index rather than from hashing.
    from_index: bool,
    worker: Mutex<Option<JoinHandle<()>>>,
    compressor: Compressor,
}

impl ImageSource {
    /// Opens an image and starts hashing it in the background.
    pub fn hash_file(path: &Path, opts: SourceOptions) -> Result<ImageSource> {
        hash::block_size_log2(opts.block_size)?;
        let file = open_image(path)?;
        let image_len = file.metadata().map_err(|e| Error::io(path, "cannot stat image", e))?.len();
        let (tx, rx) = sync_channel(CHANNEL_WINDOWS);
        let cancel = CancelFlag::default();
        let worker = {
            let file = file.try_clone().map_err(|e| Error::io(path, "cannot open image", e))?;
            let path = path.to_path_buf();
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name("osfarm-hash".into())
                .spawn(move || hash_worker(file, path, opts, image_len, tx, cancel))
                .map_err(|e| Error::new(Code::Io, format!("cannot start the hashing thread: {e}")))?
        };
        Ok(ImageSource {
            path: path.to_path_buf(),
            file,
            alg: opts.alg,
            block_size: opts.block_size,
            image_len,
            rx: Mutex::new(rx),
            cancel,
            image_digest: Mutex::new(None),
            from_index: false,
            worker: Mutex::new(Some(worker)),
            compressor: Compressor::new(),
        })
    }

    /// Opens an image whose index is already known (an image of a repository): the
    /// digests come from the index, no hashing. The receiver verifies every block anyway.
    pub fn with_index(path: &Path, index: Index) -> Result<ImageSource> {
        let file = open_image(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, "cannot stat image", e))?.len();
        if len != index.image_len() {
            bail!(Mismatch, "{} has {len} bytes but its index describes {} bytes", path.display(), index.image_len());
        }
        let (tx, rx) = sync_channel(CHANNEL_WINDOWS);
        let alg = index.alg();
        let block_size = index.block_size();
        let digest = index.image_digest().to_vec();
        let cancel = CancelFlag::default();
        let worker = {
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name("osfarm-index".into())
                .spawn(move || {
                    let dl = index.alg().len();
                    for (k, chunk) in index.digests().chunks(INDEX_WINDOW_BLOCKS as usize * dl).enumerate() {
                        if cancel.is_cancelled() {
                            return;
                        }
                        let w = DigestWindow { first_block: k as u64 * INDEX_WINDOW_BLOCKS, digests: chunk.to_vec() };
                        if tx.send(Msg::Window(w)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Msg::End(index.image_digest().to_vec()));
                })
                .map_err(|e| Error::new(Code::Io, format!("cannot start a thread: {e}")))?
        };
        Ok(ImageSource {
            path: path.to_path_buf(),
            file,
            alg,
            block_size,
            image_len: len,
            rx: Mutex::new(rx),
            cancel,
            image_digest: Mutex::new(Some(digest)),
            from_index: true,
            worker: Mutex::new(Some(worker)),
            compressor: Compressor::new(),
        })
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn image_len(&self) -> u64 {
        self.image_len
    }
    pub fn block_count(&self) -> u64 {
        block_count_for(self.image_len, self.block_size)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// True if the digests come from a stored index (no hashing).
    pub fn from_index(&self) -> bool {
        self.from_index
    }

    /// The image digest: known from the start for an indexed image, else once the last
    /// window has been taken.
    pub fn image_digest(&self) -> Option<Vec<u8>> {
        self.image_digest.lock().unwrap().clone()
    }

    /// The next window of digests, waiting for the hashing thread; `None` after the
    /// last one (then `image_digest` is set). Errors of the hashing thread surface here.
    pub fn next_window(&self) -> Result<Option<DigestWindow>> {
        let rx = self.rx.lock().unwrap();
        loop {
            if self.cancel.is_cancelled() {
                bail!(Aborted, "the operation was cancelled");
            }
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(Msg::Window(w)) => return Ok(Some(w)),
                Ok(Msg::End(d)) => {
                    *self.image_digest.lock().unwrap() = Some(d);
                    return Ok(None);
                }
                Ok(Msg::Failed(e)) => return Err(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    if self.image_digest.lock().unwrap().is_some() {
                        return Ok(None);
                    }
                    bail!(Io, "the hashing of {} stopped unexpectedly", self.path.display());
                }
            }
        }
    }

    /// The byte length of `count` blocks from `first`, or an error if they are not all
    /// inside the image.
    pub fn run_len(&self, first: u64, count: u64) -> Result<usize> {
        let end = first.checked_add(count).filter(|&e| count > 0 && e <= self.block_count());
        if end.is_none() {
            bail!(
                InvalidArgument,
                "blocks {first}..{} were asked for but the image has {} blocks",
                first.saturating_add(count),
                self.block_count()
            );
        }
        let start = first * self.block_size as u64;
        Ok(((first + count) * self.block_size as u64).min(self.image_len).saturating_sub(start) as usize)
    }

    /// Reads `count` blocks from `first`; with `compress`, zstd-compresses them when that
    /// saves enough. Returns the encoding, the bytes to send and the raw length.
    pub fn read_run(&self, first: u64, count: u64, compress: bool) -> Result<(Encoding, Vec<u8>, usize)> {
        let n = self.run_len(first, count)?;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, first * self.block_size as u64)
            .map_err(|e| Error::io(&self.path, "cannot read image", e))?;
        if compress {
            if let Some(z) = self.compressor.compress(&buf) {
                return Ok((Encoding::Zstd, z, n));
            }
        }
        Ok((Encoding::Raw, buf, n))
    }

    /// Stops the hashing thread; `next_window` then fails with `Aborted`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl Drop for ImageSource {
    fn drop(&mut self) {
        self.cancel.cancel();
        // Dropping the receiver makes a worker blocked on a full channel fail its send.
        if let Ok(rx) = self.rx.get_mut() {
            drop(std::mem::replace(rx, sync_channel(0).1));
        }
        if let Some(w) = self.worker.get_mut().ok().and_then(|w| w.take()) {
            let _ = w.join();
        }
    }
}

fn open_image(path: &Path) -> Result<File> {
    let file = crate::fsutil::open_regular(path, "image")?;
    let meta = file.metadata().map_err(|e| Error::io(path, "cannot stat image", e))?;
    if meta.is_dir() {
        return Err(Error::io(path, "cannot send", std::io::Error::other("it is a directory: pack it first")));
    }
    Ok(file)
}

/// Lets the hashers of a window stop when the push is cancelled.
struct Cancelled<'a>(&'a CancelFlag);
impl Progress for Cancelled<'_> {
    fn cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

fn hash_worker(file: File, path: PathBuf, opts: SourceOptions, len: u64, tx: SyncSender<Msg>, cancel: CancelFlag) {
    let result = (|| -> Result<Vec<u8>> {
        let dl = opts.alg.len();
        let bs = opts.block_size as u64;
        let index_opts = IndexOptions { alg: opts.alg, block_size: opts.block_size };
        let mut window = FIRST_WINDOW_BYTES.max(bs);
        let mut digester = ImageDigester::new(opts.alg, opts.block_size, len);
        let mut start = 0u64;
        let ahead = ReadAhead::start(&file, len);
        while start < len {
            if cancel.is_cancelled() {
                bail!(Aborted, "the operation was cancelled");
            }
            let end = (start + window).min(len);
            let mut digests = vec![0u8; block_count_for(end - start, opts.block_size) as usize * dl];
            hash_range(&file, &path, start..end, index_opts, &Cancelled(&cancel), &mut digests, &ahead)?;
            digester.update(&digests);
            let w = DigestWindow { first_block: start / bs, digests };
            if tx.send(Msg::Window(w)).is_err() {
                bail!(Aborted, "the consumer went away");
            }
            start = end;
            window = (window * 2).min(WINDOW_BYTES.max(bs));
        }
        let now = std::fs::metadata(&path).map_err(|e| Error::io(&path, "cannot stat image", e))?.len();
        if now != len {
            bail!(Io, "{} changed size while it was sent", path.display());
        }
        digester.finish()
    })();
    let _ = tx.send(match result {
        Ok(d) => Msg::End(d),
        Err(e) => Msg::Failed(e),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexer::{index_bytes, IndexOptions};
    use crate::test_data::pseudo_random;

    fn drain(src: &ImageSource) -> Vec<u8> {
        let mut all = Vec::new();
        let mut next = 0;
        while let Some(w) = src.next_window().unwrap() {
            assert_eq!(w.first_block, next);
            next += w.count(src.alg());
            all.extend_from_slice(&w.digests);
        }
        all
    }

    #[test]
    fn streamed_digests_equal_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut data = pseudo_random(20 * (1 << 20) + 1234, 7);
        data[4096..8192].fill(0);
        std::fs::write(&p, &data).unwrap();
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            for bs in [512, 4096, 1 << 20] {
                let want = index_bytes(&data, IndexOptions { alg, block_size: bs }).unwrap();
                let src = ImageSource::hash_file(&p, SourceOptions { alg, block_size: bs }).unwrap();
                assert_eq!(src.image_digest(), None);
                assert_eq!(drain(&src), want.digests());
                assert_eq!(src.image_digest().unwrap(), want.image_digest());
                assert_eq!(src.next_window().unwrap(), None, "stays at the end");
                let from_index = ImageSource::with_index(&p, want.clone()).unwrap();
                assert_eq!(from_index.image_digest().unwrap(), want.image_digest());
                assert_eq!(drain(&from_index), want.digests());
            }
        }
    }

    #[test]
    fn digester_matches_index_digest() {
        let data = pseudo_random(100_000, 3);
        let idx = index_bytes(&data, IndexOptions::default()).unwrap();
        let mut d = ImageDigester::new(idx.alg(), idx.block_size(), idx.image_len());
        for c in idx.digests().chunks(20 * 7) {
            d.update(c);
        }
        assert_eq!(d.finish().unwrap(), idx.image_digest());
        let short = ImageDigester::new(idx.alg(), idx.block_size(), idx.image_len());
        assert!(short.finish().is_err());
    }

    #[test]
    fn reads_runs_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let data = pseudo_random(3 * 4096 + 100, 9);
        std::fs::write(&p, &data).unwrap();
        let src = ImageSource::hash_file(&p, SourceOptions { alg: HashAlg::Sha1, block_size: 4096 }).unwrap();
        let (enc, bytes, n) = src.read_run(1, 3, false).unwrap();
        assert_eq!(enc, Encoding::Raw);
        assert_eq!(n, 2 * 4096 + 100);
        assert_eq!(bytes, &data[4096..]);
        for (f, c) in [(0, 5), (4, 1), (0, 0), (u64::MAX, 2)] {
            assert!(src.read_run(f, c, false).is_err(), "{f}+{c}");
        }
    }

    #[test]
    fn dropping_mid_stream_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, pseudo_random(200 << 20, 5)).unwrap();
        let src = ImageSource::hash_file(&p, SourceOptions { alg: HashAlg::Sha1, block_size: 4096 }).unwrap();
        assert!(src.next_window().unwrap().is_some());
        let t = std::time::Instant::now();
        drop(src);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn cancel_surfaces_as_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, pseudo_random(1 << 20, 5)).unwrap();
        let src = ImageSource::hash_file(&p, SourceOptions { alg: HashAlg::Sha1, block_size: 4096 }).unwrap();
        src.cancel();
        assert_eq!(src.next_window().unwrap_err().code, Code::Aborted);
    }
}
