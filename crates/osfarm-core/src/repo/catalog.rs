//! The catalog: the list of images in the repository (slot, digest, name, metadata) and
//! the record of which block-table file belongs to it. It is the repository's single
//! source of truth and its commit point: a change exists once the new catalog has been
//! renamed into place. The byte layout is in docs/repository-format.md.

use std::path::Path;

use super::checksum::checksum64;
use super::table::TableHeader;
use crate::error::{Code, Error, Result};

pub const CATALOG_MAGIC: [u8; 8] = *b"\x89OSFC\r\n\x1a";
/// Version 2 gives an image any number of tags; version 1 (one optional name) is still
/// read, and the next commit rewrites the catalog as version 2.
pub const CATALOG_VERSION: u32 = 2;
const CATALOG_VERSION_ONE_NAME: u32 = 1;
/// Tags one image may carry; a bound so a damaged count cannot make decoding allocate wildly.
pub const MAX_TAGS: usize = 4096;
/// Slots are below this. Slots index vectors, so a damaged catalog must not name slot
/// 4 billion; a million images at once is beyond any real repository.
pub const MAX_SLOTS: u32 = 1 << 20;

/// One image as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Small number naming the image inside the block table; reused after removal.
    pub slot: u32,
    pub digest: Vec<u8>,
    pub image_len: u64,
    /// Milliseconds since the Unix epoch.
    pub added_ms: u64,
    /// The image's tags (names), in the order they were given; a tag is on one image only.
    pub tags: Vec<String>,
    pub original_name: Option<String>,
    /// "tar", "raw", ...
    pub format: String,
    /// Opaque JSON text attached by the caller (build spec, ...).
    pub meta_json: Option<String>,
}

impl CatalogEntry {
    pub fn digest_hex(&self) -> String {
        hex::encode(&self.digest)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    pub table: TableHeader,
    pub images: Vec<CatalogEntry>,
}

impl Catalog {
    pub fn by_slot(&self, slot: u32) -> Option<&CatalogEntry> {
        self.images.iter().find(|e| e.slot == slot)
    }
    pub fn by_digest(&self, digest: &[u8]) -> Option<&CatalogEntry> {
        self.images.iter().find(|e| e.digest == digest)
    }
    /// The smallest slot number not in use.
    pub fn free_slot(&self) -> u32 {
        let mut used: Vec<u32> = self.images.iter().map(|e| e.slot).collect();
        used.sort_unstable();
        let mut s = 0;
        for u in used {
            if u == s {
                s += 1;
            } else if u > s {
                break;
            }
        }
        s
    }
    /// One past the largest slot: the size of a slot-indexed vector.
    pub fn slot_bound(&self) -> usize {
        self.images.iter().map(|e| e.slot as usize + 1).max().unwrap_or(0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.images.len() * 128);
        b.extend_from_slice(&CATALOG_MAGIC);
        b.extend_from_slice(&CATALOG_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [self.table.generation, self.table.capacity, self.table.used, self.table.checksum] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.images.len() as u32).to_le_bytes());
        for e in &self.images {
            b.extend_from_slice(&e.slot.to_le_bytes());
            b.push(e.digest.len() as u8);
            b.extend_from_slice(&e.digest);
            b.extend_from_slice(&e.image_len.to_le_bytes());
            b.extend_from_slice(&e.added_ms.to_le_bytes());
            b.extend_from_slice(&(e.tags.len() as u32).to_le_bytes());
            for t in &e.tags {
                put_str(&mut b, Some(t));
            }
            put_str(&mut b, e.original_name.as_deref());
            put_str(&mut b, Some(&e.format));
            put_str(&mut b, e.meta_json.as_deref());
        }
        let sum = checksum64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and validates a catalog; `digest_len` is the repository's hash length.
    pub fn decode(bytes: &[u8], digest_len: usize, path: &Path) -> Result<Catalog> {
        let bad = |msg: &str| {
            Error::new(
                Code::BadRepository,
                format!(
                    "catalog {} is damaged: {msg}; run `osfarm repo rebuild` to recover it from the image directories",
                    path.display()
                ),
            )
        };
        if bytes.len() < 8 + 8 + 32 + 4 + 8 {
            return Err(bad("truncated"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if checksum64(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
            return Err(bad("checksum mismatch (truncated or corrupt)"));
        }
        let mut r = Reader { b: body, i: 0 };
        if r.take(8).ok_or_else(|| bad("truncated"))? != CATALOG_MAGIC {
            return Err(bad("bad magic"));
        }
        let version = r.u32().ok_or_else(|| bad("truncated"))?;
        if version != CATALOG_VERSION && version != CATALOG_VERSION_ONE_NAME {
            return Err(Error::new(
                Code::BadRepository,
                format!("catalog {} has format version {version}; this osfarm reads {CATALOG_VERSION_ONE_NAME} and {CATALOG_VERSION}: a newer osfarm wrote it", path.display()),
            ));
        }
        let _reserved = r.u32();
        let mut t = [0u64; 4];
        for v in &mut t {
            *v = r.u64().ok_or_else(|| bad("truncated"))?;
        }
        let table = TableHeader { generation: t[0], capacity: t[1], used: t[2], checksum: t[3] };
        let count = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let mut images = Vec::with_capacity(count.min(body.len() / 32));
        for _ in 0..count {
            let e = (|| {
                let slot = r.u32()?;
                let dl = r.take(1)?[0] as usize;
                let digest = r.take(dl)?.to_vec();
                let image_len = r.u64()?;
                let added_ms = r.u64()?;
                let tags = if version == CATALOG_VERSION_ONE_NAME {
                    r.opt_str()?.into_iter().collect()
                } else {
                    let n = r.u32()? as usize;
                    if n > MAX_TAGS {
                        return None;
                    }
                    (0..n).map(|_| r.opt_str()?).collect::<Option<Vec<String>>>()?
                };
                let original_name = r.opt_str()?;
                let format = r.opt_str()??;
                let meta_json = r.opt_str()?;
                Some(CatalogEntry { slot, digest, image_len, added_ms, tags, original_name, format, meta_json })
            })()
            .ok_or_else(|| bad("an image entry is truncated, not UTF-8, or has too many tags"))?;
            if e.digest.len() != digest_len {
                return Err(bad("an image digest has the wrong length for the repository's hash"));
            }
            if e.slot >= MAX_SLOTS {
                return Err(bad(&format!("image slot {} is out of range (at most {})", e.slot, MAX_SLOTS - 1)));
            }
            images.push(e);
        }
        if r.i != body.len() {
            return Err(bad("trailing bytes after the last image"));
        }
        let mut slots: Vec<u32> = images.iter().map(|e| e.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut digests: Vec<&[u8]> = images.iter().map(|e| &e.digest[..]).collect();
        digests.sort_unstable();
        digests.dedup();
        if slots.len() != images.len() || digests.len() != images.len() {
            return Err(bad("two images share a slot or a digest"));
        }
        let mut tags: Vec<&str> = images.iter().flat_map(|e| e.tags.iter().map(String::as_str)).collect();
        let all = tags.len();
        tags.sort_unstable();
        tags.dedup();
        if tags.len() != all {
            return Err(bad("a tag is given twice"));
        }
        Ok(Catalog { table, images })
    }
}

fn put_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => b.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(s) => {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// Some(None) for an absent string; None if truncated or not UTF-8.
    fn opt_str(&mut self) -> Option<Option<String>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        let s = std::str::from_utf8(self.take(n as usize)?).ok()?;
        Some(Some(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Catalog {
        Catalog {
            table: TableHeader { generation: 3, capacity: 1024, used: 10, checksum: 99 },
            images: vec![
                CatalogEntry {
                    slot: 0,
                    digest: vec![1; 20],
                    image_len: 12345,
                    added_ms: 1,
                    tags: vec!["base".into(), "base:1".into()],
                    original_name: None,
                    format: "tar".into(),
                    meta_json: Some("{\"a\":1}".into()),
                },
                CatalogEntry {
                    slot: 2,
                    digest: vec![2; 20],
                    image_len: 0,
                    added_ms: 2,
                    tags: vec![],
                    original_name: Some("x.img".into()),
                    format: "raw".into(),
                    meta_json: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_free_slot() {
        let c = sample();
        let b = c.encode();
        assert_eq!(Catalog::decode(&b, 20, Path::new("c")).unwrap(), c);
        assert_eq!(c.free_slot(), 1);
        assert_eq!(c.slot_bound(), 3);
    }

    /// A version 1 catalog, byte for byte as osfarm wrote it before tags: one optional
    /// name per image (a `str`, 0xFFFFFFFF when absent) where version 2 has a tag list.
    fn version_one_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&CATALOG_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [3u64, 1024, 10, 99] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&2u32.to_le_bytes());
        let record = |b: &mut Vec<u8>, slot: u32, d: u8, name: Option<&str>, orig: Option<&str>, format: &str| {
            b.extend_from_slice(&slot.to_le_bytes());
            b.push(20);
            b.extend_from_slice(&[d; 20]);
            b.extend_from_slice(&7u64.to_le_bytes());
            b.extend_from_slice(&(d as u64).to_le_bytes());
            for s in [name, orig, Some(format), None] {
                put_str(b, s);
            }
        };
        record(&mut b, 0, 1, Some("app"), None, "tar");
        record(&mut b, 1, 2, None, Some("x.img"), "raw");
        let sum = checksum64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn reads_version_one_and_writes_version_two() {
        let c = Catalog::decode(&version_one_bytes(), 20, Path::new("c")).unwrap();
        assert_eq!(c.table, TableHeader { generation: 3, capacity: 1024, used: 10, checksum: 99 });
        assert_eq!(c.images[0].tags, ["app"]);
        assert!(c.images[1].tags.is_empty());
        assert_eq!((c.images[1].original_name.as_deref(), c.images[1].format.as_str()), (Some("x.img"), "raw"));
        let again = c.encode();
        assert_eq!(u32::from_le_bytes(again[8..12].try_into().unwrap()), 2);
        assert_eq!(Catalog::decode(&again, 20, Path::new("c")).unwrap(), c);
    }

    #[test]
    fn refuses_a_tag_on_two_images_an_unknown_version_and_a_wild_tag_count() {
        let mut c = sample();
        c.images[1].tags = vec!["base:1".into()];
        let e = Catalog::decode(&c.encode(), 20, Path::new("c")).unwrap_err();
        assert!(e.message.contains("a tag is given twice"), "{}", e.message);

        let mut b = sample().encode();
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        let n = b.len() - 8;
        let sum = checksum64(&b[..n]);
        b[n..].copy_from_slice(&sum.to_le_bytes());
        let e = Catalog::decode(&b, 20, Path::new("c")).unwrap_err();
        assert!(e.message.contains("format version 3") && e.message.contains("newer osfarm"), "{}", e.message);

        // The first record's tag count (after the 52-byte header, slot, digest length,
        // digest, length and time) set beyond the bound.
        let mut b = sample().encode();
        let at = 52 + 4 + 1 + 20 + 8 + 8;
        assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 2);
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let n = b.len() - 8;
        let sum = checksum64(&b[..n]);
        b[n..].copy_from_slice(&sum.to_le_bytes());
        let e = Catalog::decode(&b, 20, Path::new("c")).unwrap_err();
        assert!(e.message.contains("too many tags"), "{}", e.message);
    }

    #[test]
    fn refuses_truncated_and_flipped() {
        let b = sample().encode();
        for cut in [0, 10, b.len() / 2, b.len() - 1] {
            let e = Catalog::decode(&b[..cut], 20, Path::new("c")).unwrap_err();
            assert_eq!(e.code, Code::BadRepository);
            assert!(e.message.contains("rebuild"), "{}", e.message);
        }
        for i in [0, 9, 30, 70, b.len() - 3] {
            let mut x = b.clone();
            x[i] ^= 0x10;
            assert_eq!(Catalog::decode(&x, 20, Path::new("c")).unwrap_err().code, Code::BadRepository);
        }
        assert_eq!(Catalog::decode(&b, 32, Path::new("c")).unwrap_err().code, Code::BadRepository);
    }

    #[test]
    fn refuses_a_slot_too_large_to_index_a_vector_by() {
        let mut c = sample();
        c.images[1].slot = MAX_SLOTS - 1;
        assert_eq!(Catalog::decode(&c.encode(), 20, Path::new("c")).unwrap().slot_bound(), MAX_SLOTS as usize);
        c.images[1].slot = u32::MAX;
        let e = Catalog::decode(&c.encode(), 20, Path::new("c")).unwrap_err();
        assert!(e.message.contains("slot 4294967295 is out of range"), "{}", e.message);
    }
}
