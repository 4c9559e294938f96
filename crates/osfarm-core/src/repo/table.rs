//! The repository's block hash table: for every distinct non-zero block digest held by
//! any image, one place where that block can be read, and how many images hold it.
//!
//! Open addressing with linear probing over 20-byte entries
//! `{digest prefix: 8 bytes, image slot: u32, block: u32, refcount: u32}`; refcount 0 marks
//! an empty entry. The home position of a digest is its 8-byte prefix mapped onto the
//! capacity by a multiply-shift (`prefix * capacity >> 64`), so the capacity need not be a
//! power of two and the load factor can be held between 0.5 and 0.75: at most
//! 20 / 0.5 = 40 bytes per distinct block, whatever the size. Only the prefix is kept:
//! a match is confirmed by the caller against the full digest in the holding image's
//! index, and a prefix collision simply continues the probe. Deletion shifts later
//! entries back (no tombstones), so probe lengths never degrade.
//!
//! The file form (see docs/repository-format.md) is a 64-byte header and the entry array
//! as it lies in memory, so loading is one read and one checksum pass.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Code, Error, Result};

/// One table entry. `repr(C)` with 4-byte alignment: exactly 20 bytes, the on-disk layout
/// on little-endian machines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    prefix_lo: u32,
    prefix_hi: u32,
    /// Catalog slot of an image holding the block.
    pub slot: u32,
    /// Block number of the block in that image.
    pub block: u32,
    /// How many images hold the digest (0: empty entry).
    pub refs: u32,
}

pub const ENTRY_LEN: usize = 20;
const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_LEN);

impl Entry {
    pub fn prefix(&self) -> u64 {
        (self.prefix_hi as u64) << 32 | self.prefix_lo as u64
    }
    fn new(prefix: u64, slot: u32, block: u32) -> Entry {
        Entry { prefix_lo: prefix as u32, prefix_hi: (prefix >> 32) as u32, slot, block, refs: 1 }
    }
    fn is_empty(&self) -> bool {
        self.refs == 0
    }
}

pub const TABLE_MAGIC: [u8; 8] = *b"\x89OSFT\r\n\x1a";
pub const TABLE_VERSION: u32 = 1;
pub const TABLE_HEADER_LEN: usize = 64;
/// Smallest capacity: small tables are not worth shrinking further.
pub const MIN_CAPACITY: usize = 1024;
/// Grow when an insert would pass this load.
const MAX_LOAD: (usize, usize) = (3, 4);
/// Shrink when a removal drops below this load.
const MIN_LOAD: (usize, usize) = (1, 2);
/// Load right after a resize: 0.6, in the middle of the allowed band.
const TARGET_LOAD: (usize, usize) = (3, 5);

/// The first eight bytes of a digest, little-endian (as `digest_set::prefix64`).
pub fn prefix_of(digest: &[u8]) -> u64 {
    crate::digest_set::prefix64(digest)
}

/// What a table file's header says, checked against what the catalog expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableHeader {
    pub generation: u64,
    pub capacity: u64,
    pub used: u64,
    pub checksum: u64,
}

#[derive(Clone, Debug)]
pub struct BlockTable {
    entries: Vec<Entry>,
    used: usize,
}

impl Default for BlockTable {
    fn default() -> Self {
        BlockTable::new()
    }
}

impl BlockTable {
    pub fn new() -> BlockTable {
        BlockTable::with_capacity(MIN_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> BlockTable {
        let mut entries = Vec::new();
        entries.reserve_exact(capacity);
        entries.resize(capacity, Entry::default());
        BlockTable { entries, used: 0 }
    }

    /// Distinct digests held.
    pub fn len(&self) -> usize {
        self.used
    }
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }
    /// Heap bytes held by the table (what the 40-bytes-per-block bound is about).
    pub fn allocated_bytes(&self) -> usize {
        self.entries.capacity() * ENTRY_LEN
    }
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    pub fn entry(&self, i: usize) -> &Entry {
        &self.entries[i]
    }

    #[inline]
    fn home(&self, prefix: u64) -> usize {
        ((prefix as u128 * self.entries.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.entries.len() {
            0
        } else {
            i + 1
        }
    }

    /// Finds the entry of `digest`. `confirm(entry)` must say whether the block the entry
    /// points at has exactly `digest` (entries store only the prefix).
    pub fn find(&self, digest: &[u8], mut confirm: impl FnMut(&Entry) -> Result<bool>) -> Result<Option<usize>> {
        Ok(self.probe(prefix_of(digest), &mut confirm)?.ok())
    }

    /// Ok(Ok(i)): found at i. Ok(Err(i)): absent, and i is the empty entry ending the probe.
    fn probe(
        &self,
        prefix: u64,
        confirm: &mut impl FnMut(&Entry) -> Result<bool>,
    ) -> Result<std::result::Result<usize, usize>> {
        let mut i = self.home(prefix);
        // The table is never full (load <= 0.75), so the probe always ends.
        loop {
            let e = &self.entries[i];
            if e.is_empty() {
                return Ok(Err(i));
            }
            if e.prefix() == prefix && confirm(e)? {
                return Ok(Ok(i));
            }
            i = self.next(i);
        }
    }

    /// Records that one more image holds `digest`, at (`slot`, `block`) if the digest is new.
    /// Returns true if the digest was new. Call once per distinct digest per image.
    pub fn insert(
        &mut self,
        digest: &[u8],
        slot: u32,
        block: u32,
        mut confirm: impl FnMut(&Entry) -> Result<bool>,
    ) -> Result<bool> {
        if (self.used + 1) * MAX_LOAD.1 > self.entries.len() * MAX_LOAD.0 {
            self.resize_for(self.used + 1);
        }
        let prefix = prefix_of(digest);
        match self.probe(prefix, &mut confirm)? {
            Ok(i) => {
                let e = &mut self.entries[i];
                e.refs = e.refs.checked_add(1).ok_or_else(|| {
                    Error::new(Code::BadRepository, "a block is shared by more than 2^32 images".to_string())
                })?;
                Ok(false)
            }
            Err(i) => {
                self.entries[i] = Entry::new(prefix, slot, block);
                self.used += 1;
                Ok(true)
            }
        }
    }

    /// Points entry `i` at another holder of the same digest.
    pub fn repoint(&mut self, i: usize, slot: u32, block: u32) {
        let e = &mut self.entries[i];
        debug_assert!(!e.is_empty());
        e.slot = slot;
        e.block = block;
    }

    /// One image fewer holds the digest of entry `i`; returns the refcount left.
    /// At zero the entry is deleted and later entries of its cluster shift back,
    /// so indexes of other entries are invalidated.
    pub fn release(&mut self, i: usize) -> u32 {
        let e = &mut self.entries[i];
        debug_assert!(!e.is_empty());
        e.refs -= 1;
        if e.refs > 0 {
            return e.refs;
        }
        self.delete(i);
        0
    }

    /// Backward-shift deletion for linear probing.
    fn delete(&mut self, i: usize) {
        let mut hole = i;
        let mut j = self.next(i);
        loop {
            let e = self.entries[j];
            if e.is_empty() {
                break;
            }
            let h = self.home(e.prefix());
            // The entry may stay at j only if its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
            if !stays {
                self.entries[hole] = e;
                hole = j;
            }
            j = self.next(j);
        }
        self.entries[hole] = Entry::default();
        self.used -= 1;
    }

    /// Brings the load back into [0.5, 0.75] after removals (no-op at the minimum size).
    pub fn fit(&mut self) {
        let cap = self.entries.len();
        if cap > MIN_CAPACITY && self.used * MIN_LOAD.1 < cap * MIN_LOAD.0 {
            self.resize_for(self.used);
        }
    }

    fn resize_for(&mut self, n: usize) {
        let cap = (n * TARGET_LOAD.1).div_ceil(TARGET_LOAD.0).max(MIN_CAPACITY);
        let mut t = BlockTable::with_capacity(cap);
        for e in self.entries.iter().filter(|e| !e.is_empty()) {
            let mut i = t.home(e.prefix());
            while !t.entries[i].is_empty() {
                i = t.next(i);
            }
            t.entries[i] = *e;
        }
        t.used = self.used;
        *self = t;
    }

    fn entry_bytes(&self) -> &[u8] {
        // SAFETY: Entry is repr(C), 20 bytes of u32 fields with no padding.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr() as *const u8, self.entries.len() * ENTRY_LEN) }
    }

    /// Checksum of the entry array, as stored in the header and the catalog.
    pub fn checksum(&self) -> u64 {
        super::checksum::checksum64(self.entry_bytes())
    }

    /// Writes the file form (header + entries); returns the header written.
    pub fn write_to(&self, w: &mut dyn Write, generation: u64) -> std::io::Result<TableHeader> {
        let header = TableHeader {
            generation,
            capacity: self.entries.len() as u64,
            used: self.used as u64,
            checksum: self.checksum(),
        };
        let mut h = [0u8; TABLE_HEADER_LEN];
        h[0..8].copy_from_slice(&TABLE_MAGIC);
        h[8..12].copy_from_slice(&TABLE_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&header.generation.to_le_bytes());
        h[24..32].copy_from_slice(&header.capacity.to_le_bytes());
        h[32..40].copy_from_slice(&header.used.to_le_bytes());
        h[40..48].copy_from_slice(&header.checksum.to_le_bytes());
        w.write_all(&h)?;
        if cfg!(target_endian = "little") {
            w.write_all(self.entry_bytes())?;
        } else {
            for e in &self.entries {
                for v in [e.prefix_lo, e.prefix_hi, e.slot, e.block, e.refs] {
                    w.write_all(&v.to_le_bytes())?;
                }
            }
        }
        Ok(header)
    }

    /// Loads a table file and checks it against the header the catalog recorded:
    /// magic, version, sizes against the file length (before allocating), checksum,
    /// the count of used entries and the load. Any failure is `BadRepository`.
    pub fn load(path: &Path, expected: &TableHeader) -> Result<BlockTable> {
        let bad = |msg: String| {
            Error::new(
                Code::BadRepository,
                format!(
                    "block table {} is damaged: {msg}; run `osfarm repo rebuild` to re-derive it from the image indexes",
                    path.display()
                ),
            )
        };
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad("the file is missing".into()),
            _ => Error::io(path, "cannot open block table", e),
        })?;
        let file_len = file.metadata().map_err(|e| Error::io(path, "cannot stat block table", e))?.len();
        if file_len < TABLE_HEADER_LEN as u64 {
            return Err(bad(format!("truncated to {file_len} bytes")));
        }
        let mut h = [0u8; TABLE_HEADER_LEN];
        read_exact_at(&file, h.as_mut_ptr(), TABLE_HEADER_LEN, 0).map_err(|e| Error::io(path, "cannot read", e))?;
        let cap = check_header(&h, file_len, expected).map_err(bad)?;
        let mut entries: Vec<Entry> = Vec::new();
        entries.reserve_exact(cap);
        read_exact_at(&file, entries.as_mut_ptr() as *mut u8, cap * ENTRY_LEN, TABLE_HEADER_LEN as u64)
            .map_err(|e| Error::io(path, "cannot read block table", e))?;
        // SAFETY: the read filled cap * 20 bytes, and every bit pattern is a valid Entry.
        unsafe { entries.set_len(cap) };
        if cfg!(target_endian = "big") {
            for e in &mut entries {
                *e = Entry {
                    prefix_lo: u32::from_le(e.prefix_lo),
                    prefix_hi: u32::from_le(e.prefix_hi),
                    slot: u32::from_le(e.slot),
                    block: u32::from_le(e.block),
                    refs: u32::from_le(e.refs),
                };
            }
        }
        BlockTable::checked(entries, expected).map_err(bad)
    }

    /// A table file held in memory, checked as [`load`](Self::load) checks a file.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn decode(bytes: &[u8], expected: &TableHeader) -> std::result::Result<BlockTable, String> {
        let h: &[u8; TABLE_HEADER_LEN] =
            bytes.get(..TABLE_HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or("truncated")?;
        check_header(h, bytes.len() as u64, expected)?;
        let word = |e: &[u8], i: usize| u32::from_le_bytes(e[4 * i..4 * i + 4].try_into().unwrap());
        let entries = bytes[TABLE_HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .map(|e| Entry {
                prefix_lo: word(e, 0),
                prefix_hi: word(e, 1),
                slot: word(e, 2),
                block: word(e, 3),
                refs: word(e, 4),
            })
            .collect();
        BlockTable::checked(entries, expected)
    }

    /// The table of `entries` if they agree with the header: checksum, entries in use, a
    /// load of at most 0.75 (a full table would make the probe for an absent digest loop
    /// forever), and every entry where a probe finds it.
    fn checked(entries: Vec<Entry>, header: &TableHeader) -> std::result::Result<BlockTable, String> {
        let t = BlockTable { entries, used: header.used as usize };
        if t.checksum() != header.checksum {
            return Err("checksum mismatch".into());
        }
        let used = t.entries.iter().filter(|e| !e.is_empty()).count();
        if used != t.used {
            return Err(format!("{used} entries in use, the header says {}", t.used));
        }
        if used * MAX_LOAD.1 > t.entries.len() * MAX_LOAD.0 {
            return Err(format!("{used} of {} entries in use, more than the table ever holds", t.entries.len()));
        }
        t.check_reachable()?;
        Ok(t)
    }

    /// Every entry must lie in the run of non-empty entries that holds its home position,
    /// at or after it: otherwise a lookup stops at an empty entry before reaching it, and the
    /// digest would be added a second time. One pass, from just after an empty entry (there
    /// is one: the load is at most 0.75), so that no run wraps around.
    fn check_reachable(&self) -> std::result::Result<(), String> {
        let n = self.entries.len();
        let Some(empty) = self.entries.iter().position(Entry::is_empty) else { return Ok(()) };
        // Positions counted from just after that empty entry.
        let rotated = |i: usize| (i + n - empty - 1) % n;
        let mut run_start = 0;
        for p in 0..n {
            let i = (empty + 1 + p) % n;
            let e = &self.entries[i];
            if e.is_empty() {
                run_start = p + 1;
                continue;
            }
            let home = rotated(self.home(e.prefix()));
            if home < run_start || home > p {
                return Err(format!(
                    "entry {i} lies where no lookup from its home position {} reaches",
                    self.home(e.prefix())
                ));
            }
        }
        Ok(())
    }
}

/// Checks a table file's header against the file's length and the catalog's record;
/// returns the capacity, known then to fit the file.
fn check_header(
    h: &[u8; TABLE_HEADER_LEN],
    file_len: u64,
    expected: &TableHeader,
) -> std::result::Result<usize, String> {
    if h[0..8] != TABLE_MAGIC {
        return Err("bad magic".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    if u32_at(8) != TABLE_VERSION || u32_at(12) != ENTRY_LEN as u32 {
        return Err(format!("unsupported version {} / entry size {}", u32_at(8), u32_at(12)));
    }
    let header = TableHeader { generation: u64_at(16), capacity: u64_at(24), used: u64_at(32), checksum: u64_at(40) };
    if header != *expected {
        return Err(format!("its header {header:?} does not match the catalog's record {expected:?}"));
    }
    if h[48..].iter().any(|&b| b != 0) {
        return Err("reserved header bytes are not zero".into());
    }
    let cap = header.capacity;
    if cap.checked_mul(ENTRY_LEN as u64).and_then(|n| n.checked_add(TABLE_HEADER_LEN as u64)) != Some(file_len)
        || cap < header.used
        || cap == 0
    {
        return Err(format!("the header promises {cap} entries but the file has {file_len} bytes"));
    }
    Ok(cap as usize)
}

/// Reads exactly `len` bytes at `offset` into raw memory (no reference to uninitialised bytes).
fn read_exact_at(file: &File, mut ptr: *mut u8, mut len: usize, mut offset: u64) -> std::io::Result<()> {
    while len > 0 {
        let chunk = len.min(1 << 30);
        // SAFETY: ptr points to at least `len` writable bytes.
        let n = unsafe { libc::pread(file.as_raw_fd(), ptr as *mut libc::c_void, chunk, offset as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shorter than expected"));
        }
        let n = n as usize;
        // SAFETY: n <= len.
        ptr = unsafe { ptr.add(n) };
        len -= n;
        offset += n as u64;
    }
    Ok(())
}

/// A typed bail for table-internal inconsistencies found while updating.
pub fn inconsistent(msg: impl std::fmt::Display) -> Error {
    Error::new(
        Code::BadRepository,
        format!("the block table is inconsistent with the images ({msg}); run `osfarm repo rebuild`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Digests by location, standing in for the images' indexes.
    #[derive(Default)]
    struct Store(HashMap<(u32, u32), Vec<u8>>);

    impl Store {
        fn confirm<'a>(&'a self, d: &'a [u8]) -> impl FnMut(&Entry) -> Result<bool> + 'a {
            move |e| Ok(self.0.get(&(e.slot, e.block)).is_some_and(|held| held == d))
        }
        fn insert(&mut self, t: &mut BlockTable, d: &[u8], slot: u32, block: u32) -> bool {
            self.0.insert((slot, block), d.to_vec());
            let new = t.insert(d, slot, block, self.confirm(d)).unwrap();
            new
        }
        fn find(&self, t: &BlockTable, d: &[u8]) -> Option<Entry> {
            t.find(d, self.confirm(d)).unwrap().map(|i| *t.entry(i))
        }
    }

    fn digest(n: u64) -> Vec<u8> {
        let mut d = vec![0u8; 20];
        crate::hash::HashAlg::Sha1.digest_into(&n.to_le_bytes(), &mut d);
        d
    }

    #[test]
    fn insert_lookup_release_with_refcounts() {
        let mut t = BlockTable::new();
        let mut s = Store::default();
        let (a, b) = (digest(1), digest(2));
        assert!(s.insert(&mut t, &a, 0, 5));
        assert!(!s.insert(&mut t, &a, 1, 7), "second holder only counts");
        assert!(s.insert(&mut t, &b, 1, 8));
        assert_eq!(t.len(), 2);
        let e = s.find(&t, &a).unwrap();
        assert_eq!((e.slot, e.block, e.refs), (0, 5, 2));
        assert!(s.find(&t, &digest(3)).is_none());
        let i = t.find(&a, s.confirm(&a)).unwrap().unwrap();
        assert_eq!(t.release(i), 1);
        assert_eq!(s.find(&t, &a).unwrap().refs, 1);
        let i = t.find(&a, s.confirm(&a)).unwrap().unwrap();
        assert_eq!(t.release(i), 0);
        assert!(s.find(&t, &a).is_none());
        assert_eq!(s.find(&t, &b).unwrap().refs, 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn prefix_collisions_are_told_apart_by_the_full_digest() {
        let mut t = BlockTable::new();
        let mut s = Store::default();
        // Three digests sharing their first 8 bytes, differing after.
        let base = digest(42);
        let mk = |last: u8| {
            let mut d = base.clone();
            d[19] = last;
            d
        };
        let (x, y, z) = (mk(1), mk(2), mk(3));
        assert!(s.insert(&mut t, &x, 0, 0));
        assert!(s.insert(&mut t, &y, 0, 1), "a prefix match with another digest is not a match");
        assert!(!s.insert(&mut t, &y, 1, 0));
        assert_eq!(t.len(), 2);
        assert_eq!(s.find(&t, &x).unwrap().block, 0);
        assert_eq!(s.find(&t, &y).unwrap().block, 1);
        assert_eq!(s.find(&t, &y).unwrap().refs, 2);
        assert!(s.find(&t, &z).is_none(), "same prefix, absent digest");
        // Deleting the first of the cluster must keep the second findable (backward shift).
        let i = t.find(&x, s.confirm(&x)).unwrap().unwrap();
        assert_eq!(t.release(i), 0);
        assert_eq!(s.find(&t, &y).unwrap().refs, 2);
        assert!(s.find(&t, &x).is_none());
    }

    #[test]
    fn many_entries_survive_growth_deletion_and_a_file_round_trip() {
        let mut t = BlockTable::new();
        let mut s = Store::default();
        let n = 20_000u64;
        for k in 0..n {
            s.insert(&mut t, &digest(k), (k % 7) as u32, k as u32);
        }
        assert_eq!(t.len(), n as usize);
        for k in (0..n).step_by(3) {
            let d = digest(k);
            let i = t.find(&d, s.confirm(&d)).unwrap().unwrap();
            assert_eq!(t.release(i), 0);
        }
        t.fit();
        for k in 0..n {
            assert_eq!(s.find(&t, &digest(k)).is_some(), k % 3 != 0, "digest {k}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.osft");
        let mut bytes = Vec::new();
        let h = t.write_to(&mut bytes, 9).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let u = BlockTable::load(&p, &h).unwrap();
        assert_eq!(u.entries(), t.entries());
        assert_eq!(u.len(), t.len());
        // Any damage is refused.
        let mut other = h;
        other.generation = 10;
        assert_eq!(BlockTable::load(&p, &other).unwrap_err().code, Code::BadRepository);
        std::fs::write(&p, &bytes[..bytes.len() - 20]).unwrap();
        assert_eq!(BlockTable::load(&p, &h).unwrap_err().code, Code::BadRepository);
        let mut flipped = bytes.clone();
        flipped[TABLE_HEADER_LEN + 1234] ^= 4;
        std::fs::write(&p, &flipped).unwrap();
        let e = BlockTable::load(&p, &h).unwrap_err();
        assert_eq!(e.code, Code::BadRepository);
        assert!(e.message.contains("rebuild"));
    }

    #[test]
    fn a_table_fuller_than_it_is_ever_kept_is_refused() {
        // 4 entries, all in use, checksum right: a lookup of an absent digest would probe forever.
        let entries = [Entry::new(1, 0, 0), Entry::new(2, 0, 1), Entry::new(3, 0, 2), Entry::new(4, 0, 3)];
        let t = BlockTable { entries: entries.to_vec(), used: 4 };
        let mut bytes = Vec::new();
        let h = t.write_to(&mut bytes, 1).unwrap();
        let err = BlockTable::decode(&bytes, &h).unwrap_err();
        assert!(err.contains("more than the table ever holds"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.osft");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(BlockTable::load(&p, &h).unwrap_err().code, Code::BadRepository);
        // Three of four is the most: accepted.
        let t = BlockTable { entries: [&entries[..3], &[Entry::default()]].concat(), used: 3 };
        let mut bytes = Vec::new();
        let h = t.write_to(&mut bytes, 1).unwrap();
        assert_eq!(BlockTable::decode(&bytes, &h).unwrap().len(), 3);
    }

    #[test]
    fn an_entry_no_lookup_reaches_is_refused() {
        // Homes of these prefixes in 8 entries: 2 and 2 (a cluster at 2, 3), then 6.
        let (a, b, c) = (2u64 << 61 | 1, 2u64 << 61 | 2, 6u64 << 61);
        let mut entries = vec![Entry::default(); 8];
        entries[2] = Entry::new(a, 0, 0);
        entries[3] = Entry::new(b, 0, 1);
        entries[6] = Entry::new(c, 0, 2);
        let table = |entries: &[Entry]| {
            let t = BlockTable { entries: entries.to_vec(), used: 3 };
            let mut bytes = Vec::new();
            let h = t.write_to(&mut bytes, 1).unwrap();
            BlockTable::decode(&bytes, &h)
        };
        assert!(table(&entries).is_ok());
        // The same entries with a hole in the cluster: b sits past an empty entry.
        let mut broken = entries.clone();
        broken.swap(3, 4);
        let err = table(&broken).unwrap_err();
        assert!(err.contains("entry 4 lies where no lookup"), "{err}");
        // And one before its home.
        let mut before = entries.clone();
        before.swap(6, 5);
        assert!(table(&before).unwrap_err().contains("entry 5"));
        // A run that wraps around the end is fine.
        let mut wrap = vec![Entry::default(); 8];
        wrap[7] = Entry::new(7u64 << 61, 0, 0);
        wrap[0] = Entry::new(7u64 << 61 | 1, 0, 1);
        wrap[1] = Entry::new(1, 0, 2);
        assert!(table(&wrap).is_ok());
    }

    #[test]
    fn memory_stays_within_40_bytes_per_distinct_block() {
        let mut t = BlockTable::new();
        let mut s = Store::default();
        let n = 300_000u64;
        let mut worst: f64 = 0.0;
        for k in 0..n {
            s.insert(&mut t, &digest(k), 0, k as u32);
            if k > 10_000 && k % 997 == 0 {
                worst = worst.max(t.allocated_bytes() as f64 / t.len() as f64);
            }
        }
        let per = t.allocated_bytes() as f64 / t.len() as f64;
        assert!(per <= 40.0 && worst <= 40.0, "{per} / {worst} bytes per block");
        // Removing most blocks shrinks the table back within the bound.
        for k in 0..n * 9 / 10 {
            let d = digest(k);
            let i = t.find(&d, s.confirm(&d)).unwrap().unwrap();
            t.release(i);
            if k % 50_000 == 0 {
                t.fit();
                assert!(t.allocated_bytes() as f64 / t.len() as f64 <= 40.0);
            }
        }
        t.fit();
        let per = t.allocated_bytes() as f64 / t.len() as f64;
        assert!(per <= 40.0, "{per} bytes per block after removals");
        assert_eq!(t.len(), (n / 10) as usize);
    }
}
