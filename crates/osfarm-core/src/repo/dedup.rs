//! Storing each block once: on file systems with reflinks (xfs, btrfs) an image's blocks
//! that another repository image already holds are shared with it by reference, while
//! every image stays one whole, ordinary file.
//!
//! The file is changed in place, range by range, and its content never changes: each run
//! the block table locates in another image is handed to `FIDEDUPERANGE`, which compares
//! the two ranges in the kernel (both files locked) and only if they are equal swaps this
//! file's extents for the holder's — so a reader sees the same data before and after (an
//! open file too), and a holder rotten on disk is found, never spread. On btrfs the runs
//! the image keeps to itself are rewritten with their own bytes as well, so that its old
//! extents are freed whole. Where the file system cannot share (ext4, tmpfs, a repository
//! block size finer than the file system's) nothing changes and the report says why.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

use super::lock::LockKind;
use super::plan::{locate, ABSENT, ZERO};
use super::{Repository, State, IMAGE_FILE, INDEX_FILE};
use crate::bail;
use crate::error::{Code, Error, Result};
use crate::index::Index;
use crate::progress::{self, Progress};

/// Unshared runs are copied in pieces of this size.
const COPY_BYTES: u64 = 1 << 20;
/// Most bytes one FIDEDUPERANGE call compares and shares (btrfs's cap per call).
const DEDUPE_BYTES: u64 = 16 << 20;

/// What a dedup pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DedupReport {
    /// Images looked at.
    pub images: u64,
    /// Images rewritten to share blocks.
    pub rewritten: u64,
    /// Bytes shared by reference with another image (counted once per image; those shared
    /// before this pass too).
    pub shared_bytes: u64,
    /// Bytes of unshared data rewritten (btrfs: so that the old extents are freed whole).
    pub copied_bytes: u64,
    /// Why nothing could be shared (the file system cannot share ranges), if so.
    pub unsupported: Option<String>,
    pub ms: u64,
}

/// A stretch of an image: `count` blocks from `first`, shared with `(slot, block)` or kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    first: u64,
    count: u64,
    /// Holder slot and its first block; None: kept (rewritten on btrfs).
    from: Option<(u32, u64)>,
}

impl Repository {
    /// Shares the blocks of `reference` (or of every image, in the order they were added)
    /// with the images that already hold them. Takes the shared lock.
    pub fn dedup(&self, reference: Option<&str>, progress: &dyn Progress) -> Result<DedupReport> {
        let started = Instant::now();
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        let slots: Vec<u32> = match reference {
            Some(r) => vec![super::resolve_in(&st.catalog, r)?.slot],
            None => st.catalog.images.iter().map(|e| e.slot).collect(),
        };
        let mut report = DedupReport::default();
        progress.start(slots.len() as u64);
        for slot in slots {
            progress::check(progress)?;
            report.images += 1;
            match self.dedup_slot(&st, slot)? {
                Outcome::Done { shared, copied, rewritten } => {
                    report.rewritten += rewritten as u64;
                    report.shared_bytes += shared;
                    report.copied_bytes += copied;
                    progress.advance(1);
                }
                Outcome::Unsupported(why) => {
                    report.unsupported = Some(why);
                    break;
                }
            }
        }
        report.ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    fn dedup_slot(&self, st: &State, slot: u32) -> Result<Outcome> {
        let e =
            st.catalog.by_slot(slot).ok_or_else(|| Error::new(Code::BadRepository, format!("slot {slot} vanished")))?;
        let hex = e.digest_hex();
        let dir = self.image_dir(&hex);
        let index = Index::load(&dir.join(INDEX_FILE))?;
        let segments = segments(&locate(self, st, &index)?, &index, slot);
        let shared: u64 =
            segments.iter().filter(|s| s.from.is_some()).map(|s| s.count * index.block_size() as u64).sum();
        if shared == 0 {
            return Ok(Outcome::Done { shared: 0, copied: 0, rewritten: false });
        }
        let path = dir.join(IMAGE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot open image", e))?;
        if already_shared(self, st, &file, &segments, index.block_size() as u64) {
            return Ok(Outcome::Done { shared, copied: 0, rewritten: false });
        }
        let bs = index.block_size() as u64;
        let (btrfs, fs_block) = fs_kind(&file);
        if fs_block > bs {
            // A share must start and end on the file system's blocks: most runs would not.
            return Ok(Outcome::Unsupported(format!(
                "the repository's {bs}-byte blocks are finer than the {fs_block}-byte blocks of the file system of {}: images are stored whole",
                self.root().display()
            )));
        }
        let mut holders: std::collections::HashMap<u32, File> = std::collections::HashMap::new();
        let mut copied = 0;
        for s in &segments {
            let at = s.first * bs;
            let len = ((s.first + s.count) * bs).min(index.image_len()) - at;
            match s.from {
                Some((h, block)) => {
                    let src = match holders.entry(h) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            let he = st
                                .catalog
                                .by_slot(h)
                                .ok_or_else(|| Error::new(Code::BadRepository, format!("slot {h} vanished")))?;
                            let p = self.image_dir(&he.digest_hex()).join(IMAGE_FILE);
                            v.insert(File::open(&p).map_err(|e| Error::io(&p, "cannot open image", e))?)
                        }
                    };
                    // The kernel compares both ranges and shares them only if they are equal,
                    // so a holder rotten on disk never replaces good blocks.
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(DEDUPE_BYTES);
                        match dedupe_range(src, block * bs + done, &file, at + done, n) {
                            Ok(Same::Shared(k)) if k > 0 => done += k,
                            Ok(Same::Shared(_)) => bail!(
                                Io,
                                "{}: the file system shared no bytes of a range it called equal",
                                path.display()
                            ),
                            Ok(Same::Differs) => {
                                return Err(self.which_damaged(
                                    st,
                                    &index,
                                    &hex,
                                    &file,
                                    h,
                                    s.first + done / bs,
                                    block + done / bs,
                                    n,
                                ));
                            }
                            Err(err) => {
                                return match err.raw_os_error() {
                                    Some(
                                        libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS,
                                    ) => Ok(Outcome::Unsupported(unsupported_reason(self.root(), &err))),
                                    _ => Err(Error::io(&path, "cannot share a range of", err)),
                                };
                            }
                        }
                    }
                }
                // btrfs frees an extent only when no block of it is referenced: the blocks
                // this image keeps to itself are written anew (the same bytes, new extents) so
                // that its old extents go whole. xfs counts references per block: nothing to do.
                None if btrfs => {
                    let mut buf = vec![0u8; len.min(COPY_BYTES) as usize];
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(COPY_BYTES) as usize;
                        file.read_exact_at(&mut buf[..n], at + done).map_err(|e| Error::io(&path, "cannot read", e))?;
                        file.write_all_at(&buf[..n], at + done).map_err(|e| Error::io(&path, "cannot write", e))?;
                        done += n as u64;
                    }
                    copied += len;
                }
                None => {}
            }
        }
        file.sync_all().map_err(|e| Error::io(&path, "cannot sync", e))?;
        Ok(Outcome::Done { shared, copied, rewritten: true })
    }

    /// The error for a range the kernel found different in this image (`hex`, from block
    /// `first`) and in its holder `h` (from block `theirs`), which both indexes call equal:
    /// this image's bytes are checked against its index to tell which one is damaged.
    #[allow(clippy::too_many_arguments)]
    fn which_damaged(
        &self,
        st: &State,
        index: &Index,
        hex: &str,
        ours: &File,
        h: u32,
        first: u64,
        theirs: u64,
        len: u64,
    ) -> Error {
        let holder = st.catalog.by_slot(h).map(|e| e.digest_hex()).unwrap_or_default();
        let bs = index.block_size() as u64;
        let dl = index.alg().len();
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = ours.read_exact_at(&mut buf, first * bs) {
            return Error::io(&self.image_dir(hex).join(IMAGE_FILE), "cannot read", e);
        }
        let n = len.div_ceil(bs);
        let expected = &index.digests()[(first * dl as u64) as usize..((first + n) * dl as u64) as usize];
        match index.alg().first_bad_block(&buf, bs as usize, expected) {
            Some(k) => Error::new(
                Code::BadRepository,
                format!("image {hex} is damaged on disk: block {} does not match its index; run `osfarm repo verify`", first + k as u64),
            ),
            None => Error::new(
                Code::BadRepository,
                format!(
                    "image {holder} is damaged on disk: a block of {theirs}..{} does not match its index; run `osfarm repo verify` (image {hex} was left as it was)",
                    theirs + n
                ),
            ),
        }
    }
}

/// Whether the file is on btrfs (statfs magic), and the file system's block size.
fn fs_kind(f: &File) -> (bool, u64) {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
    // SAFETY: fstatfs fills the struct we own.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut s) } != 0 {
        return (false, 0);
    }
    (s.f_type as i64 == BTRFS_SUPER_MAGIC, s.f_bsize as u64)
}

enum Outcome {
    Done { shared: u64, copied: u64, rewritten: bool },
    Unsupported(String),
}

/// Cuts an image into runs to share (consecutive blocks of one other image) and runs it
/// keeps to itself; zero blocks are left out (holes). A last partial block is kept (a
/// share must end on a file-system block or at both files' ends).
fn segments(located: &[u64], index: &Index, slot: u32) -> Vec<Segment> {
    let bs = index.block_size() as u64;
    let mut out: Vec<Segment> = Vec::new();
    for (b, &loc) in located.iter().enumerate() {
        let b = b as u64;
        if loc == ZERO {
            continue;
        }
        let from = match loc {
            ABSENT => None,
            l => {
                let (h, m) = ((l >> 32) as u32, l & 0xffff_ffff);
                // A repeat inside the image itself is kept: sharing with the old file would
                // keep its extents alive, and with the new one could overlap.
                (h != slot && index.block_len(b) as u64 == bs).then_some((h, m))
            }
        };
        if let Some(last) = out.last_mut() {
            let next = last.first + last.count == b;
            let joins = match (last.from, from) {
                (None, None) => true,
                (Some((h0, m0)), Some((h, m))) => h0 == h && m0 + last.count == m,
                _ => false,
            };
            if next && joins {
                last.count += 1;
                continue;
            }
        }
        out.push(Segment { first: b, count: 1, from });
    }
    out
}

/// True if every shared run already lies on its holder's extents (a second pass over a
/// repository rewrites nothing). Compares physical addresses, so an image that shares
/// extents only with a file outside the repository (added by reflink) is not taken as done.
fn already_shared(repo: &Repository, st: &State, f: &File, segments: &[Segment], bs: u64) -> bool {
    let Ok(own) = extents(f) else { return false };
    let mut holders: std::collections::HashMap<u32, Vec<Extent>> = std::collections::HashMap::new();
    segments.iter().all(|s| {
        let Some((h, m)) = s.from else { return true };
        let theirs = holders.entry(h).or_insert_with(|| {
            st.catalog
                .by_slot(h)
                .and_then(|e| File::open(repo.image_dir(&e.digest_hex()).join(IMAGE_FILE)).ok())
                .and_then(|f| extents(&f).ok())
                .unwrap_or_default()
        });
        (0..s.count).step_by(256).all(|k| {
            let a = physical_at(&own, (s.first + k) * bs);
            a.is_some() && a == physical_at(theirs, (m + k) * bs)
        })
    })
}

/// The device address of the byte at `offset` of a file, if allocated.
fn physical_at(extents: &[Extent], offset: u64) -> Option<u64> {
    let i = extents.partition_point(|x| x.logical + x.length <= offset);
    extents.get(i).filter(|x| x.logical <= offset).map(|x| x.physical + (offset - x.logical))
}

fn unsupported_reason(root: &Path, err: &std::io::Error) -> String {
    format!(
        "the file system of {} cannot share blocks between files ({err}): images are stored whole; xfs (reflink=1) and btrfs can",
        root.display()
    )
}

/// What the kernel found comparing two ranges.
enum Same {
    /// Equal, and now shared: this many bytes from the start (possibly fewer than asked).
    Shared(u64),
    Differs,
}

const FIDEDUPERANGE: libc::c_ulong = 0xC018_9436; // _IOWR(0x94, 54, struct file_dedupe_range)
const FILE_DEDUPE_RANGE_DIFFERS: i32 = 1;

#[repr(C)]
struct DedupeRangeInfo {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

#[repr(C)]
struct DedupeRange {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
    info: [DedupeRangeInfo; 1],
}

/// Shares `len` bytes of `src` at `src_at` with `dst` at `dst_at` if, and only if, they are
/// equal (`FIDEDUPERANGE`: the kernel compares them with both files locked, then swaps
/// `dst`'s extents for `src`'s; `dst`'s content never changes).
fn dedupe_range(src: &File, src_at: u64, dst: &File, dst_at: u64, len: u64) -> std::io::Result<Same> {
    let mut arg = DedupeRange {
        src_offset: src_at,
        src_length: len,
        dest_count: 1,
        reserved1: 0,
        reserved2: 0,
        info: [DedupeRangeInfo {
            dest_fd: dst.as_raw_fd() as i64,
            dest_offset: dst_at,
            bytes_deduped: 0,
            status: 0,
            reserved: 0,
        }],
    };
    // SAFETY: FIDEDUPERANGE reads the struct and writes its one info entry, both ours.
    let rc = unsafe { libc::ioctl(src.as_raw_fd(), FIDEDUPERANGE as _, &mut arg as *mut DedupeRange) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    match arg.info[0].status {
        0 => Ok(Same::Shared(arg.info[0].bytes_deduped)),
        FILE_DEDUPE_RANGE_DIFFERS => Ok(Same::Differs),
        e if e < 0 => Err(std::io::Error::from_raw_os_error(-e)),
        other => Err(std::io::Error::other(format!("FIDEDUPERANGE status {other}"))),
    }
}

/// One extent of a file as FIEMAP reports it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub shared: bool,
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const FIEMAP_BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// The file's extents (FIEMAP), in file order.
pub(crate) fn extents(f: &File) -> std::io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut m = Box::new(Fiemap {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: FIEMAP_BATCH as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); FIEMAP_BATCH],
        });
        // SAFETY: FS_IOC_FIEMAP fills at most extent_count entries of the struct we own.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *m as *mut Fiemap) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = m.mapped_extents as usize;
        for x in &m.extents[..n] {
            out.push(Extent {
                logical: x.logical,
                physical: x.physical,
                length: x.length,
                shared: x.flags & FIEMAP_EXTENT_SHARED != 0,
            });
        }
        match m.extents[..n].last() {
            Some(x) if x.flags & FIEMAP_EXTENT_LAST == 0 => start = x.logical + x.length,
            _ => return Ok(out),
        }
    }
}

/// The repository's images on disk: what they hold and what that takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Sum of the images' lengths.
    pub logical_bytes: u64,
    /// Sum of each image file's allocated bytes (a shared extent counts in each file).
    pub allocated_bytes: u64,
    /// Bytes the images' data takes on the device: every extent counted once, however
    /// many images share it (FIEMAP). Equal to `allocated_bytes` where nothing is shared.
    pub physical_bytes: u64,
    /// Per image, in catalog order: (digest, allocated, of which shared with another file).
    pub images: Vec<ImageUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageUsage {
    pub digest: String,
    pub logical_bytes: u64,
    pub allocated_bytes: u64,
    pub shared_bytes: u64,
}

impl Repository {
    /// Logical and physical size of the images (shared lock).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        let mut u = DiskUsage::default();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for e in &st.catalog.images {
            let hex = e.digest_hex();
            let p = self.image_dir(&hex).join(IMAGE_FILE);
            let f = File::open(&p).map_err(|err| Error::io(&p, "cannot open image", err))?;
            let allocated = f.metadata().map_err(|err| Error::io(&p, "cannot stat image", err))?.blocks() * 512;
            let xs = extents(&f).map_err(|err| Error::io(&p, "cannot map the extents of", err))?;
            let shared = xs.iter().filter(|x| x.shared).map(|x| x.length).sum::<u64>().min(allocated);
            ranges.extend(xs.iter().map(|x| (x.physical, x.physical + x.length)));
            u.logical_bytes += e.image_len;
            u.allocated_bytes += allocated;
            u.images.push(ImageUsage {
                digest: hex,
                logical_bytes: e.image_len,
                allocated_bytes: allocated,
                shared_bytes: shared,
            });
        }
        ranges.sort_unstable();
        let mut end = 0u64;
        for (a, b) in ranges {
            let a = a.max(end);
            if b > a {
                u.physical_bytes += b - a;
                end = b;
            }
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlg;

    fn at(slot: u32, block: u64) -> u64 {
        (slot as u64) << 32 | block
    }

    #[test]
    fn segments_share_runs_of_one_other_holder_and_keep_the_rest() {
        // 9 blocks, the last one partial (image length 8.5 blocks); this image is slot 3.
        let index = Index::from_digests(HashAlg::Sha1, 4096, 8 * 4096 + 2048, vec![1u8; 9 * 20]).unwrap();
        let located = [at(1, 10), at(1, 11), ZERO, at(1, 13), at(2, 0), ABSENT, at(3, 0), at(2, 1), at(2, 7)];
        let s = segments(&located, &index, 3);
        let want = [
            Segment { first: 0, count: 2, from: Some((1, 10)) },
            Segment { first: 3, count: 1, from: Some((1, 13)) },
            Segment { first: 4, count: 1, from: Some((2, 0)) },
            // Absent, and a repeat of this image's own block 0: kept.
            Segment { first: 5, count: 2, from: None },
            Segment { first: 7, count: 1, from: Some((2, 1)) },
            // The partial last block is never shared.
            Segment { first: 8, count: 1, from: None },
        ];
        assert_eq!(s, want);
    }

    #[test]
    fn physical_at_maps_offsets_inside_extents_only() {
        let xs = [
            Extent { logical: 0, physical: 1000, length: 100, shared: false },
            Extent { logical: 200, physical: 5000, length: 50, shared: true },
        ];
        assert_eq!(physical_at(&xs, 0), Some(1000));
        assert_eq!(physical_at(&xs, 99), Some(1099));
        assert_eq!(physical_at(&xs, 150), None);
        assert_eq!(physical_at(&xs, 210), Some(5010));
        assert_eq!(physical_at(&xs, 250), None);
    }
}
