//! The block-aligned tar writer: POSIX pax output in which every regular file's data
//! starts at a multiple of the block size.
//!
//! Alignment costs nothing in the format: the padding is a `comment=` record in the
//! file's own pax extended header ('x'), which every pax reader skips. See
//! `docs/aligned-tar.md` for the layout and a worked example.

use std::io::Write;

use crate::bail;
use crate::error::{Code, Error, Result};
use crate::hash;

use super::paths;
use super::{PackOptions, PackStats};

/// One tar record.
pub const RECORD: u64 = 512;

/// Largest value of an 8-byte octal field (uid, gid): 7 digits.
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (size, mtime): 11 digits.
const MAX_OCTAL_12: u64 = 0o77777777777;
/// Longest uname/gname that fits its 32-byte field with a terminating NUL.
const MAX_OWNER_NAME: usize = 31;

/// Pax records as (keyword, value) pairs, in order.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Where an archive goes: any writer; a file can leave holes where the archive has zeros
/// (see [`super::sparse::SparseFile`]).
pub trait Output: Write {
    /// Appends `n` zero bytes.
    fn zeros(&mut self, n: u64) -> std::io::Result<()> {
        write_zeros(self, n)
    }
}

impl Output for Vec<u8> {}
impl Output for std::io::Sink {}
impl<W: Output + ?Sized> Output for &mut W {
    fn zeros(&mut self, n: u64) -> std::io::Result<()> {
        (**self).zeros(n)
    }
}

/// Writes `n` zero bytes to `w`.
pub(crate) fn write_zeros<W: Write + ?Sized>(w: &mut W, mut n: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        w.write_all(&ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

/// What an entry is. Sockets have no tar representation and never reach the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    File,
    Dir,
    Symlink,
    /// A hard link to an earlier entry (`link` is that entry's relative path).
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
}

impl Kind {
    fn typeflag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::BlockDevice => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// The metadata of one entry, independent of where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Relative path in normal form (see [`paths`]); empty for the root directory.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Owner names; empty means "numeric only" (what `tar --numeric-owner` writes).
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Seconds since the epoch (whole seconds: sub-second parts are not kept).
    pub mtime: i64,
    /// Length of the data; only regular files have data.
    pub size: u64,
    /// Symlink target (verbatim) or hard-link target (relative path in normal form).
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extra pax records carried as-is, e.g. `SCHILY.xattr.user.foo` → value.
    pub extra: PaxRecords,
}

/// Writes entries as a block-aligned pax archive to any [`Output`].
///
/// Call [`begin`](Self::begin) for each entry; for a regular file, follow it with
/// [`write_data`](Self::write_data) calls totalling exactly `size` bytes. Then
/// [`finish`](Self::finish). The output is a pure function of the entries and options.
pub struct AlignedWriter<W: Output> {
    out: W,
    block_size: u64,
    clamp_mtime: Option<i64>,
    /// The archive may not grow past this many bytes (see [`PackOptions::max_size`]).
    max_size: u64,
    /// Bytes written so far: the offset of the next byte.
    offset: u64,
    /// Data bytes the current regular file still owes.
    remaining: u64,
    stats: PackStats,
    /// Reused buffer for headers and records.
    scratch: Vec<u8>,
}

impl<W: Output> AlignedWriter<W> {
    pub fn new(out: W, opts: &PackOptions) -> Result<Self> {
        hash::block_size_log2(opts.block_size)?;
        let clamp_mtime = match opts.source_date_epoch {
            Some(e) if e > i64::MAX as u64 => bail!(InvalidArgument, "SOURCE_DATE_EPOCH {e} is out of range"),
            Some(e) => Some(e as i64),
            None => None,
        };
        Ok(AlignedWriter {
            out,
            block_size: opts.block_size as u64,
            clamp_mtime,
            max_size: opts.max_size.unwrap_or(u64::MAX),
            offset: 0,
            remaining: 0,
            stats: PackStats::default(),
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Offset of the next byte written.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Counts an input object that has no tar form (a socket) and was left out.
    pub fn note_skipped(&mut self) {
        self.stats.skipped += 1;
    }

    /// Writes the headers of `e` (pax header when needed, with alignment padding, then
    /// the ustar header). For a regular file with data, the data must follow.
    // `u64::is_multiple_of` needs Rust 1.87; the workspace supports 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn begin(&mut self, e: &Entry) -> Result<()> {
        if self.remaining != 0 {
            bail!(InvalidArgument, "the previous entry still owes {} bytes of data", self.remaining);
        }
        if !paths::is_normal(&e.path) {
            bail!(InvalidArgument, "entry path '{}' is not a normalized relative path", paths::display(&e.path));
        }
        if e.kind == Kind::HardLink && (e.link.is_empty() || !paths::is_normal(&e.link)) {
            bail!(InvalidArgument, "hard link target '{}' is not a normalized relative path", paths::display(&e.link));
        }
        let mtime = match self.clamp_mtime {
            Some(epoch) => e.mtime.min(epoch),
            None => e.mtime,
        };
        let size = if e.kind == Kind::File { e.size } else { 0 };
        let name = paths::member_name(&e.path, e.kind == Kind::Dir);
        let link = match e.kind {
            Kind::HardLink => paths::member_name(&e.link, false),
            Kind::Symlink => e.link.clone(),
            _ => Vec::new(),
        };

        // The ustar header of the entry itself; anything that does not fit goes to pax.
        let mut header = tar::Header::new_ustar();
        let mut pax: Vec<(&[u8], Vec<u8>)> = Vec::new();
        let mut binary = false;
        {
            let ustar = header.as_ustar_mut().expect("new_ustar is ustar");
            match split_ustar_name(&name) {
                Some((prefix, tail)) => {
                    ustar.prefix[..prefix.len()].copy_from_slice(prefix);
                    ustar.name[..tail.len()].copy_from_slice(tail);
                }
                None => {
                    // Old readers see a truncated name; pax readers use the record.
                    ustar.name.copy_from_slice(&name[..100]);
                    binary |= std::str::from_utf8(&name).is_err();
                    pax.push((b"path", name.clone()));
                }
            }
            if link.len() <= 100 {
                ustar.linkname[..link.len()].copy_from_slice(&link);
            } else {
                ustar.linkname.copy_from_slice(&link[..100]);
                binary |= std::str::from_utf8(&link).is_err();
                pax.push((b"linkpath", link.clone()));
            }
            for (field, value, key) in
                [(&mut ustar.uname, &e.uname, &b"uname"[..]), (&mut ustar.gname, &e.gname, b"gname")]
            {
                if value.contains(&0) {
                    bail!(InvalidArgument, "owner name '{}' contains a NUL byte", paths::display(value));
                }
                if value.len() <= MAX_OWNER_NAME {
                    field[..value.len()].copy_from_slice(value);
                } else {
                    binary |= std::str::from_utf8(value).is_err();
                    pax.push((key, value.clone()));
                }
            }
        }
        if binary {
            // Raw (non-UTF-8) names in pax records: tell readers not to decode them.
            pax.insert(0, (b"hdrcharset", b"BINARY".to_vec()));
        }
        header.set_mode(e.mode & 0o7777);
        set_num(&mut header, Field::Uid, e.uid, &mut pax);
        set_num(&mut header, Field::Gid, e.gid, &mut pax);
        set_num(&mut header, Field::Size, size, &mut pax);
        if (0..=MAX_OCTAL_12 as i64).contains(&mtime) {
            header.set_mtime(mtime as u64);
        } else {
            header.set_mtime(0);
            pax.push((b"mtime", mtime.to_string().into_bytes()));
        }
        header.set_entry_type(tar::EntryType::new(e.kind.typeflag()));
        if matches!(e.kind, Kind::CharDevice | Kind::BlockDevice) {
            if e.dev_major as u64 > MAX_OCTAL_8 || e.dev_minor as u64 > MAX_OCTAL_8 {
                bail!(
                    InvalidArgument,
                    "device number {}:{} of '{}' is too large for tar",
                    e.dev_major,
                    e.dev_minor,
                    paths::display(&e.path)
                );
            }
            header.set_device_major(e.dev_major).expect("ustar header");
            header.set_device_minor(e.dev_minor).expect("ustar header");
        } else {
            // Leave the device fields zero-filled octal, as GNU tar does.
            header.set_device_major(0).expect("ustar header");
            header.set_device_minor(0).expect("ustar header");
        }
        header.set_cksum();

        // The pax records, in a fixed order: standard keys, then the extra records.
        self.scratch.clear();
        for (key, value) in &pax {
            push_record(&mut self.scratch, key, value);
        }
        let mut extra: Vec<&(Vec<u8>, Vec<u8>)> = e.extra.iter().collect();
        extra.sort();
        for (key, value) in extra {
            if key.is_empty() || key.contains(&b'=') || key.contains(&0) || key.contains(&b'\n') {
                bail!(
                    InvalidArgument,
                    "pax keyword '{}' of '{}' cannot be stored",
                    paths::display(key),
                    paths::display(&e.path)
                );
            }
            push_record(&mut self.scratch, key, value);
        }

        // Alignment: the data of a non-empty file must start at a multiple of the block size.
        let natural = if self.scratch.is_empty() { 0 } else { RECORD + round_up(self.scratch.len() as u64, RECORD) };
        let mut pax_size = natural;
        if e.kind == Kind::File && size > 0 && (self.offset + natural + RECORD) % self.block_size != 0 {
            // A pax header is 512 bytes of header plus k records of data (k >= 1); pick the
            // smallest k that puts the data on a boundary, and fill it with a comment.
            let used = self.scratch.len() as u64;
            let k_min = round_up(used.max(1), RECORD) / RECORD;
            let start = self.offset + 2 * RECORD + k_min * RECORD;
            let k = k_min + (self.block_size - start % self.block_size) % self.block_size / RECORD;
            let fill = k * RECORD - used;
            if round_up(used, RECORD) != k * RECORD {
                // fill >= 512 here, so a comment record of exactly `fill` bytes exists.
                push_comment(&mut self.scratch, fill as usize);
            }
            pax_size = RECORD + k * RECORD;
            self.stats.padding_bytes += pax_size - natural;
        }
        self.check_size(e, pax_size, size)?;

        if !self.scratch.is_empty() {
            let mut ph = tar::Header::new_ustar();
            {
                let ustar = ph.as_ustar_mut().expect("new_ustar is ustar");
                let base = e.path.rsplit(|&b| b == b'/').next().unwrap_or(b"");
                let mut pname = b"./PaxHeaders/".to_vec();
                pname.extend_from_slice(&base[..base.len().min(100 - pname.len())]);
                ustar.name[..pname.len()].copy_from_slice(&pname);
            }
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(header.mtime().unwrap_or(0));
            ph.set_size(self.scratch.len() as u64);
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_cksum();
            let records = std::mem::take(&mut self.scratch);
            self.put(ph.as_bytes())?;
            self.put(&records)?;
            self.pad_to(RECORD)?;
            self.scratch = records;
            debug_assert_eq!(pax_size, RECORD + round_up(self.scratch.len() as u64, RECORD));
        }
        self.put(header.as_bytes())?;
        debug_assert!(e.kind != Kind::File || size == 0 || self.offset % self.block_size == 0);

        self.stats.entries += 1;
        if e.kind == Kind::File {
            self.stats.regular_files += 1;
            self.stats.file_bytes += size;
        }
        self.remaining = size;
        Ok(())
    }

    /// Refuses an entry that would take the archive (with its end marker and final
    /// padding) past the size limit, before any of it is written.
    fn check_size(&self, e: &Entry, pax_size: u64, size: u64) -> Result<()> {
        let end = [pax_size, RECORD, size.saturating_add(RECORD - 1) / RECORD * RECORD, 2 * RECORD]
            .iter()
            .fold(self.offset, |a, &b| a.saturating_add(b));
        let total = end.saturating_add(self.block_size - 1) / self.block_size * self.block_size;
        if total > self.max_size {
            bail!(
                InvalidArgument,
                "the archive would be larger than the limit of {} bytes (max size): '{}' ({size} bytes) brings it to \
                 {total} bytes. Nothing was written; raise the limit if the input is trusted (a small archive that \
                 expands this much is a decompression bomb)",
                self.max_size,
                paths::display(&e.path)
            );
        }
        Ok(())
    }

    /// Writes data of the current regular file; the record padding follows the last byte.
    pub fn write_data(&mut self, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.remaining {
            bail!(InvalidArgument, "{} bytes of data given where {} were announced", data.len(), self.remaining);
        }
        self.put(data)?;
        self.owe(data.len() as u64)
    }

    /// Writes `n` zero bytes of data of the current regular file (a hole of a sparse
    /// file): the output may leave a hole instead of writing them.
    pub fn write_zero_data(&mut self, n: u64) -> Result<()> {
        if n > self.remaining {
            bail!(InvalidArgument, "{n} bytes of data given where {} were announced", self.remaining);
        }
        self.out.zeros(n).map_err(write_err)?;
        self.offset += n;
        self.owe(n)
    }

    fn owe(&mut self, written: u64) -> Result<()> {
        self.remaining -= written;
        if self.remaining == 0 {
            self.pad_to(RECORD)?;
        }
        Ok(())
    }

    /// Data bytes the current file still owes.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Writes the end-of-archive marker (two zero records), pads the archive to a
    /// multiple of the block size, flushes, and returns the output and the counts.
    /// (A [`super::sparse::SparseFile`] still needs its `finish`.)
    pub fn finish(mut self) -> Result<(W, PackStats)> {
        if self.remaining != 0 {
            bail!(InvalidArgument, "the last entry still owes {} bytes of data", self.remaining);
        }
        self.put(&[0u8; 2 * RECORD as usize])?;
        let before = self.offset;
        self.pad_to(self.block_size)?;
        self.stats.padding_bytes += self.offset - before;
        self.out.flush().map_err(write_err)?;
        self.stats.output_size = self.offset;
        Ok((self.out, self.stats))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(write_err)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, multiple: u64) -> Result<()> {
        let n = round_up(self.offset, multiple) - self.offset;
        self.out.zeros(n).map_err(write_err)?;
        self.offset += n;
        Ok(())
    }
}

fn write_err(e: std::io::Error) -> Error {
    Error::new(Code::Io, format!("cannot write the archive: {e}"))
}

fn round_up(n: u64, multiple: u64) -> u64 {
    n.div_ceil(multiple) * multiple
}

#[derive(Clone, Copy)]
enum Field {
    Uid,
    Gid,
    Size,
}

/// Sets a numeric field in octal, or to 0 with a pax record when it does not fit.
fn set_num(h: &mut tar::Header, field: Field, v: u64, pax: &mut Vec<(&[u8], Vec<u8>)>) {
    let (max, key): (u64, &[u8]) = match field {
        Field::Uid => (MAX_OCTAL_8, b"uid"),
        Field::Gid => (MAX_OCTAL_8, b"gid"),
        Field::Size => (MAX_OCTAL_12, b"size"),
    };
    let stored = if v <= max { v } else { 0 };
    if v > max {
        pax.push((key, v.to_string().into_bytes()));
    }
    match field {
        Field::Uid => h.set_uid(stored),
        Field::Gid => h.set_gid(stored),
        Field::Size => h.set_size(stored),
    }
}

/// Splits a name into ustar `prefix` (<= 155 bytes) and `name` (<= 100 bytes), joined
/// by a `/`, or returns None if it needs a pax `path` record.
fn split_ustar_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 155 + 1 + 100 {
        return None;
    }
    // The leftmost '/' that leaves a tail of at most 100 bytes gives the longest tail.
    // A directory's trailing '/' is not a split point (the tail would be empty).
    let body = &name[..name.len() - 1];
    let i = body.iter().enumerate().position(|(i, &b)| b == b'/' && name.len() - i - 1 <= 100)?;
    (i <= 155 && i > 0).then(|| (&name[..i], &name[i + 1..]))
}

/// Length of a pax record `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn record_len(key_len: usize, value_len: usize) -> usize {
    let body = 1 + key_len + 1 + value_len + 1;
    let mut len = body + 1;
    while body + digits(len) != len {
        len = body + digits(len);
    }
    len
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

pub(crate) fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let len = record_len(key.len(), value.len());
    let start = out.len();
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    debug_assert_eq!(out.len() - start, len);
}

/// Appends a `comment=` record exactly `len` bytes long (len >= 12), filled with spaces.
fn push_comment(out: &mut Vec<u8>, len: usize) {
    // len = digits(len) + " comment=" (9) + value + "\n" (1)
    let value = len - digits(len) - 10;
    let start = out.len();
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b" comment=");
    out.resize(out.len() + value, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() - start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_count_themselves() {
        for (k, v) in [(4usize, 0usize), (4, 3), (4, 90), (4, 93), (4, 94), (7, 985), (7, 986), (13, 99_990)] {
            let mut out = Vec::new();
            push_record(&mut out, &vec![b'k'; k], &vec![b'v'; v]);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let n: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(n, out.len());
        }
        for len in [12usize, 13, 99, 100, 101, 512, 999, 1000, 1001, 65536] {
            let mut out = Vec::new();
            push_comment(&mut out, len);
            assert_eq!(out.len(), len);
            assert!(out.starts_with(format!("{len} comment=").as_bytes()));
        }
    }

    #[test]
    fn ustar_split() {
        let short = b"./a/b".to_vec();
        assert_eq!(split_ustar_name(&short), Some((&b""[..], &short[..])));
        let long = [b"./".to_vec(), vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 90]].concat();
        let (p, n) = split_ustar_name(&long).unwrap();
        assert_eq!([p, b"/", n].concat(), long);
        assert!(p.len() <= 155 && n.len() <= 100);
        // One component longer than 100 bytes: no split.
        let one = [b"./".to_vec(), vec![b'f'; 101]].concat();
        assert_eq!(split_ustar_name(&one), None);
        // A directory whose last component is long: the trailing '/' is not a split point.
        let dir = [b"./x/".to_vec(), vec![b'f'; 99], b"/".to_vec()].concat();
        let (p, n) = split_ustar_name(&dir).unwrap();
        assert_eq!(p, b"./x");
        assert_eq!(n.len(), 100);
    }

    #[test]
    fn data_lands_on_block_boundaries() {
        for bs in [512u32, 1024, 4096, 65536] {
            let opts = PackOptions { block_size: bs, ..Default::default() };
            let mut w = AlignedWriter::new(Vec::new(), &opts).unwrap();
            w.begin(&Entry { kind: Kind::Dir, mode: 0o755, ..Default::default() }).unwrap();
            for (i, size) in [1u64, 511, 512, 513, 4095, 4096, 4097, 70000, 3].into_iter().enumerate() {
                // Vary the preceding headers so every residue modulo the block size shows up.
                for j in 0..i {
                    let path = format!("d{i}-{j}").into_bytes();
                    w.begin(&Entry { path, kind: Kind::Dir, mode: 0o755, ..Default::default() }).unwrap();
                }
                let path = format!("f{i}").into_bytes();
                w.begin(&Entry { path, size, mode: 0o644, ..Default::default() }).unwrap();
                assert_eq!(w.offset() % bs as u64, 0, "bs {bs} size {size}");
                w.write_data(&vec![7u8; size as usize]).unwrap();
            }
            let (out, stats) = w.finish().unwrap();
            assert_eq!(out.len() as u64 % bs as u64, 0);
            assert_eq!(stats.output_size, out.len() as u64);
            assert_eq!(stats.regular_files, 9);
        }
    }
}
