//! The records that let a later attempt resume an assembly, next to its
//! `tmp/<stem>.partial`. Neither is trusted: a resumed assembly re-hashes every block a
//! record claims (`verify::reverify`) and keeps only those that match.
//!
//! - `.have` (the index is known): a bitmap of the blocks present, written atomically after
//!   an fdatasync of the data, so it never claims data that is not durable
//!   (docs/repository-format.md, "Resumable assemblies").
//! - `.got` (a push, whose digests arrive as a stream): the digest of each block as it is
//!   written, so a new attempt, even with other content, keeps what still matches
//!   (docs/protocol.md, "Resume").

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Bitmap, Geometry};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::index::Index;
use crate::repo::checksum::checksum64;

const HAVE_MAGIC: [u8; 8] = *b"\x89OSFH\r\n\x1a";
const HAVE_VERSION: u32 = 1;
const HAVE_HEADER_LEN: usize = 56;

const GOT_MAGIC: [u8; 8] = *b"\x89OSFG\r\n\x1a";
const GOT_VERSION: u32 = 1;
const GOT_HEADER_LEN: u64 = 64;

pub(super) enum Journal {
    /// A private assembly: nothing to resume.
    None,
    /// A `.have` bitmap, saved now and then.
    Bitmap { path: PathBuf, image_digest: Vec<u8>, block_count: u64 },
    /// A `.got` record, written with every block.
    Record { file: File, path: PathBuf, digest_len: u64 },
}

impl Journal {
    /// The `.have` bitmap at `path` and the blocks it claims, if it is intact and
    /// belongs to `index`.
    pub(super) fn open_bitmap(path: PathBuf, index: &Index) -> (Journal, Option<Bitmap>) {
        let claimed = read_have(&path, index);
        let journal =
            Journal::Bitmap { path, image_digest: index.image_digest().to_vec(), block_count: index.block_count() };
        (journal, claimed)
    }

    /// The `.got` record at `path` (created if absent) and, when it belongs to an image
    /// of this geometry and `keep`, the digests it holds (all zeros: nothing written).
    /// Otherwise it is reset to empty.
    pub(super) fn open_record(path: PathBuf, geo: &Geometry, keep: bool) -> Result<(Journal, Option<Vec<u8>>)> {
        let file = crate::lock::open_keeping(&path).map_err(|e| Error::io(&path, "cannot open", e))?;
        let dl = geo.dl() as u64;
        let header = got_header(geo);
        let mut h = [0u8; GOT_HEADER_LEN as usize];
        let intact = keep
            && file.read_exact_at(&mut h, 0).is_ok()
            && h == header
            && file.metadata().map(|m| m.len()).unwrap_or(0) == GOT_HEADER_LEN + geo.block_count * dl;
        let record = if intact {
            let mut rec = vec![0u8; (geo.block_count * dl) as usize];
            file.read_exact_at(&mut rec, GOT_HEADER_LEN).map_err(|e| Error::io(&path, "cannot read", e))?;
            Some(rec)
        } else {
            file.set_len(0).map_err(|e| Error::io(&path, "cannot truncate", e))?;
            file.write_all_at(&header, 0).map_err(|e| Error::io(&path, "cannot write", e))?;
            file.set_len(GOT_HEADER_LEN + geo.block_count * dl).map_err(|e| Error::io(&path, "cannot size", e))?;
            None
        };
        Ok((Journal::Record { file, path, digest_len: dl }, record))
    }

    pub(super) fn is_resumable(&self) -> bool {
        !matches!(self, Journal::None)
    }

    /// True if the record is a bitmap that `save` writes.
    pub(super) fn saves_bitmap(&self) -> bool {
        matches!(self, Journal::Bitmap { .. })
    }

    /// Notes the digests of blocks just written from `first` (a `.got` record).
    /// The I/O error comes back as is, for the engine to tell a full disk apart.
    pub(super) fn record(&self, first: u64, digests: &[u8]) -> std::result::Result<(), (&Path, std::io::Error)> {
        if let Journal::Record { file, path, digest_len } = self {
            file.write_all_at(digests, GOT_HEADER_LEN + first * digest_len).map_err(|e| (path.as_path(), e))?;
        }
        Ok(())
    }

    /// Makes the data durable, then records which blocks it holds (a `.have` bitmap).
    pub(super) fn save(&self, data: &File, data_path: &Path, have: &Bitmap) -> Result<()> {
        if let Journal::Bitmap { path, image_digest, block_count } = self {
            data.sync_data().map_err(|e| Error::io(data_path, "cannot sync", e))?;
            let bytes = encode_have(image_digest, *block_count, have);
            fsutil::write_atomic(path, |w| w.write_all(&bytes).map_err(|e| Error::io(path, "cannot write", e)))?;
        }
        Ok(())
    }

    /// Deletes the record (the image was published, or the partial is discarded).
    pub(super) fn remove(&self) {
        match self {
            Journal::None => {}
            Journal::Bitmap { path, .. } | Journal::Record { path, .. } => {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Bytes a `.got` record takes once written in full.
pub(super) fn record_bytes(geo: &Geometry) -> u64 {
    GOT_HEADER_LEN + geo.block_count * geo.dl() as u64
}

fn encode_have(image_digest: &[u8], n: u64, have: &Bitmap) -> Vec<u8> {
    let mut b = Vec::with_capacity(HAVE_HEADER_LEN + n.div_ceil(8) as usize + 8);
    b.extend_from_slice(&HAVE_MAGIC);
    b.extend_from_slice(&HAVE_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    let mut d = [0u8; 32];
    d[..image_digest.len()].copy_from_slice(image_digest);
    b.extend_from_slice(&d);
    for w in have.words() {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.truncate(HAVE_HEADER_LEN + n.div_ceil(8) as usize);
    let sum = checksum64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// The bitmap of a `.have` file if it is intact and belongs to this index.
fn read_have(path: &Path, index: &Index) -> Option<Bitmap> {
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
    let mut words = vec![0u64; n.div_ceil(64) as usize];
    for (k, byte) in body[HAVE_HEADER_LEN..].iter().enumerate() {
        words[k / 8] |= (*byte as u64) << (8 * (k % 8));
    }
    Some(Bitmap::from_words(words))
}

fn got_header(geo: &Geometry) -> [u8; GOT_HEADER_LEN as usize] {
    let mut h = [0u8; GOT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&GOT_MAGIC);
    h[8..12].copy_from_slice(&GOT_VERSION.to_le_bytes());
    h[12] = geo.alg.id();
    h[13] = geo.block_size.trailing_zeros() as u8;
    h[16..24].copy_from_slice(&geo.image_len.to_le_bytes());
    h
}
