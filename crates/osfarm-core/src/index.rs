//! The index file format (`.osfi`): the digests of every block of one image.
//! The layout is documented in docs/index-format.md; keep the two in step.

use std::io::{Read, Write};
use std::path::Path;

use crate::bail;
use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::hash::{self, HashAlg, MAX_DIGEST_LEN};

pub const MAGIC: [u8; 8] = *b"\x89OSFI\r\n\x1a";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
/// Prefix of the message whose digest names the image (see `Index::image_digest`).
const IMAGE_DIGEST_DOMAIN: &[u8] = b"osfarm image v1\0";

/// The block digests of one image, and the digest that names the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    alg: HashAlg,
    block_size: u32,
    image_len: u64,
    image_digest: Vec<u8>,
    digests: Vec<u8>,
}

/// The number of blocks of an image of `image_len` bytes, or an error if absurd.
pub fn block_count_for(image_len: u64, block_size: u32) -> u64 {
    image_len.div_ceil(block_size as u64)
}

impl Index {
    /// Builds an index from the concatenated block digests and computes the image digest.
    pub fn from_digests(alg: HashAlg, block_size: u32, image_len: u64, digests: Vec<u8>) -> Result<Index> {
        hash::block_size_log2(block_size)?;
        let count = block_count_for(image_len, block_size);
        if digests.len() as u64 != count * alg.len() as u64 {
            bail!(InvalidArgument, "{} digest bytes given for {count} blocks", digests.len());
        }
        let image_digest = image_digest(alg, block_size, image_len, &digests);
        Ok(Index { alg, block_size, image_len, image_digest, digests })
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
    /// The digest that names the image: a digest over the block digests (see docs).
    pub fn image_digest(&self) -> &[u8] {
        &self.image_digest
    }
    pub fn image_digest_hex(&self) -> String {
        hex::encode(&self.image_digest)
    }
    /// All block digests, concatenated.
    pub fn digests(&self) -> &[u8] {
        &self.digests
    }
    pub fn digest(&self, block: u64) -> &[u8] {
        let n = self.alg.len();
        &self.digests[block as usize * n..(block as usize + 1) * n]
    }
    pub fn is_zero_block(&self, block: u64) -> bool {
        hash::is_zero_digest(self.digest(block))
    }
    /// Length of block `block`: the block size, except for a shorter last block.
    pub fn block_len(&self, block: u64) -> u32 {
        let start = block * self.block_size as u64;
        (self.image_len - start).min(self.block_size as u64) as u32
    }
    /// Iterates over the block digests in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, u8> {
        self.digests.chunks_exact(self.alg.len())
    }
    /// Size of the serialised index in bytes.
    pub fn encoded_len(&self) -> u64 {
        HEADER_LEN as u64 + self.digests.len() as u64
    }

    pub fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        w.write_all(&self.header())?;
        w.write_all(&self.digests)
    }

    /// Writes the index to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, |w| self.write_to(w).map_err(|e| Error::io(path, "cannot write", e)))
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = self.alg.id();
        h[11] = self.block_size.trailing_zeros() as u8;
        // h[12..16]: flags, none defined in version 1.
        h[16..24].copy_from_slice(&self.image_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.block_count().to_le_bytes());
        h[32..32 + self.image_digest.len()].copy_from_slice(&self.image_digest);
        h
    }

    /// Reads and fully validates an index file. Sizes in the header are checked against
    /// the file's real length before anything is allocated, and the digest list is checked
    /// against the header's image digest, so a truncated, corrupt or lying index is refused.
    pub fn load(path: &Path) -> Result<Index> {
        let mut file = fsutil::open_regular(path, "index")?;
        let file_len = file.metadata().map_err(|e| Error::io(path, "cannot stat index", e))?.len();
        let ctx = |msg: String| Error::new(Code::BadIndex, format!("{}: {msg}", path.display()));
        let mut header = [0u8; HEADER_LEN];
        if file_len < HEADER_LEN as u64 {
            return Err(ctx(format!("truncated: {file_len} bytes, shorter than the {HEADER_LEN}-byte header")));
        }
        file.read_exact(&mut header).map_err(|e| Error::io(path, "cannot read index", e))?;
        let h = Header::parse(&header).map_err(|e| ctx(e.message))?;
        let expected = h.digests_len().and_then(|n| n.checked_add(HEADER_LEN as u64));
        if expected != Some(file_len) {
            return Err(ctx(format!(
                "header promises {} blocks of {} ({} bytes of digests) but the file has {file_len} bytes",
                h.block_count,
                h.alg.name(),
                h.digests_len().map_or("an impossible number of".into(), |n| n.to_string()),
            )));
        }
        let mut digests = Vec::new();
        file.take(file_len - HEADER_LEN as u64)
            .read_to_end(&mut digests)
            .map_err(|e| Error::io(path, "cannot read index", e))?;
        if digests.len() as u64 != file_len - HEADER_LEN as u64 {
            return Err(ctx("file changed while reading".into()));
        }
        Index::from_header_and_digests(h, digests).map_err(|e| ctx(e.message))
    }

    /// Parses an index held in memory (e.g. received over the network).
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        let bad = |msg: String| Error::new(Code::BadIndex, msg);
        if bytes.len() < HEADER_LEN {
            return Err(bad(format!("truncated: {} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
        }
        let h = Header::parse(bytes[..HEADER_LEN].try_into().unwrap())?;
        if h.digests_len().and_then(|n| n.checked_add(HEADER_LEN as u64)) != Some(bytes.len() as u64) {
            return Err(bad(format!("header promises {} blocks but {} bytes were given", h.block_count, bytes.len())));
        }
        Index::from_header_and_digests(h, bytes[HEADER_LEN..].to_vec())
    }

    fn from_header_and_digests(h: Header, digests: Vec<u8>) -> Result<Index> {
        let index = Index::from_digests(h.alg, h.block_size, h.image_len, digests)?;
        if index.image_digest != h.image_digest[..h.alg.len()] {
            bail!(BadIndex, "corrupt: the block digests do not match the image digest in the header");
        }
        Ok(index)
    }
}

/// The validated fixed-size header of an index.
struct Header {
    alg: HashAlg,
    block_size: u32,
    image_len: u64,
    block_count: u64,
    image_digest: [u8; MAX_DIGEST_LEN],
}

impl Header {
    fn parse(h: &[u8; HEADER_LEN]) -> Result<Header> {
        if h[0..8] != MAGIC {
            bail!(BadIndex, "not an osfarm index (bad magic)");
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != VERSION {
            bail!(BadIndex, "index format version {version} is not supported (this osfarm reads {VERSION})");
        }
        let Some(alg) = HashAlg::from_id(h[10]) else { bail!(BadIndex, "unknown hash algorithm id {}", h[10]) };
        if !(9..=20).contains(&h[11]) {
            bail!(BadIndex, "block size 2^{} is out of range", h[11]);
        }
        let block_size = 1u32 << h[11];
        let flags = u32::from_le_bytes(h[12..16].try_into().unwrap());
        if flags != 0 {
            bail!(BadIndex, "unknown flags {flags:#x}: written by a newer osfarm");
        }
        let image_len = u64::from_le_bytes(h[16..24].try_into().unwrap());
        let block_count = u64::from_le_bytes(h[24..32].try_into().unwrap());
        if block_count != block_count_for(image_len, block_size) {
            bail!(
                BadIndex,
                "block count {block_count} does not match image length {image_len} at block size {block_size}"
            );
        }
        if h[32 + alg.len()..].iter().any(|&b| b != 0) {
            bail!(BadIndex, "corrupt header: bytes after the image digest are not zero");
        }
        Ok(Header { alg, block_size, image_len, block_count, image_digest: h[32..64].try_into().unwrap() })
    }

    fn digests_len(&self) -> Option<u64> {
        self.block_count.checked_mul(self.alg.len() as u64)
    }
}

/// The image digest: a digest over the domain string, the hash id, the block size,
/// the image length and every block digest. It names an image in a repository and
/// is verified whenever an index is read, so a flipped bit anywhere is caught.
pub fn image_digest(alg: HashAlg, block_size: u32, image_len: u64, digests: &[u8]) -> Vec<u8> {
    alg.digest_parts(&[
        IMAGE_DIGEST_DOMAIN,
        &[alg.id(), block_size.trailing_zeros() as u8],
        &image_len.to_le_bytes(),
        digests,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let mut digests = vec![0u8; 3 * 20];
        digests[..20].fill(7);
        digests[40..].fill(9);
        Index::from_digests(HashAlg::Sha1, 4096, 2 * 4096 + 10, digests).unwrap()
    }

    fn encoded(index: &Index) -> Vec<u8> {
        let mut v = Vec::new();
        index.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_in_memory_and_on_disk() {
        let idx = sample();
        let bytes = encoded(&idx);
        assert_eq!(bytes.len() as u64, idx.encoded_len());
        assert_eq!(Index::parse(&bytes).unwrap(), idx);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.osfi");
        idx.save(&p).unwrap();
        assert_eq!(Index::load(&p).unwrap(), idx);
        assert!(idx.is_zero_block(1));
        assert!(!idx.is_zero_block(0));
        assert_eq!(idx.block_len(2), 10);
    }

    fn expect_bad(bytes: &[u8], needle: &str) {
        let err = Index::parse(bytes).unwrap_err();
        assert_eq!(err.code, Code::BadIndex, "{err}");
        assert!(err.message.contains(needle), "'{}' lacks '{needle}'", err.message);
    }

    #[test]
    fn refuses_truncated() {
        let bytes = encoded(&sample());
        expect_bad(&bytes[..10], "truncated");
        expect_bad(&bytes[..bytes.len() - 1], "header promises");
    }

    #[test]
    fn refuses_bad_magic_version_alg_flags() {
        let good = encoded(&sample());
        for (at, value, needle) in [
            (0, b'X', "magic"),
            (8, 9, "version"),
            (10, 7, "hash algorithm"),
            (11, 30, "out of range"),
            (12, 1, "flags"),
        ] {
            let mut b = good.clone();
            b[at] = value;
            expect_bad(&b, needle);
        }
    }

    #[test]
    fn refuses_lying_counts_without_allocating() {
        let mut b = encoded(&sample());
        // A count that matches the length field but not the file: must not allocate 2^60 digests.
        b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        b[24..32].copy_from_slice(&(u64::MAX / 2).div_ceil(4096).to_le_bytes());
        expect_bad(&b, "header promises");
        let mut b = encoded(&sample());
        b[24..32].copy_from_slice(&5u64.to_le_bytes());
        expect_bad(&b, "does not match image length");
    }

    #[test]
    fn refuses_flipped_digest_bit() {
        let mut b = encoded(&sample());
        let last = b.len() - 1;
        b[last] ^= 1;
        expect_bad(&b, "do not match the image digest");
        let mut b = encoded(&sample());
        b[40] ^= 1;
        expect_bad(&b, "do not match the image digest");
    }

    #[test]
    fn load_refuses_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.osfi");
        let b = encoded(&sample());
        std::fs::write(&p, &b[..b.len() - 5]).unwrap();
        let err = Index::load(&p).unwrap_err();
        assert_eq!(err.code, Code::BadIndex);
        assert!(err.message.contains("t.osfi"));
    }
}
