//! Tar and tar.gz input: entries re-emitted in input order, with their metadata.
//!
//! The reader is strict, because an archive may come from anywhere: every header's
//! checksum is verified, the archive must end with its end-of-archive marker, a gzip
//! stream must be complete (its CRC is checked), and no entry may name a path that
//! escapes the tree (absolute, `..`, or through a symlink stored earlier). GNU long
//! names ('L'/'K'), pax headers ('x', 'g') and ustar prefixes are understood, and so are
//! sparse files (GNU 'S' and pax formats 0.0, 0.1 and 1.0): their holes go to the archive
//! as zeros, which its file leaves as holes. Multi-volume and other exotic entry types are
//! refused.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::bail;
use crate::error::{Code, Error, Result};
use crate::progress::{self, Progress};

use super::paths;
use super::writer::{AlignedWriter, Entry, Kind, Output, PaxRecords};
use super::{read_up_to, InputKind, COPY_BUFFER};

/// Largest pax or GNU long-name header accepted (xattrs included).
const MAX_EXTENDED: u64 = 64 << 20;

/// Pax records carried over as-is (extended attributes, ACLs, file flags).
const CARRIED_PREFIXES: [&[u8]; 5] =
    [b"SCHILY.xattr.", b"LIBARCHIVE.xattr.", b"SCHILY.acl.", b"RHT.security.selinux", b"SCHILY.fflags"];

/// Decides what the first bytes of a file are; refuses what is not a tar or tar.gz.
pub fn sniff(head: &[u8]) -> Result<InputKind> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(InputKind::TarGz);
    }
    for (magic, name) in [
        (&[0x28, 0xb5, 0x2f, 0xfd][..], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (b"BZh", "bzip2"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
    ] {
        if head.starts_with(magic) {
            bail!(
                BadArchive,
                "it is {name}-compressed; osfarm reads a directory, a tar or a tar.gz: decompress it first"
            );
        }
    }
    if head.is_empty() {
        bail!(BadArchive, "it is empty, not a tar archive");
    }
    let block: Option<&[u8; 512]> = head.get(..512).and_then(|b| b.try_into().ok());
    match block {
        Some(b) if b.iter().all(|&x| x == 0) || checksum_ok(b) => Ok(InputKind::Tar),
        _ => bail!(BadArchive, "it is not a directory, a tar or a tar.gz (no gzip magic and no valid tar header)"),
    }
}

/// Re-emits the entries of the tar or tar.gz at `input` into `w`; returns the bytes of
/// the file read (all of it).
pub fn pack_tar<W: Output>(
    input: &Path,
    kind: InputKind,
    w: &mut AlignedWriter<W>,
    progress: &dyn Progress,
) -> Result<u64> {
    let file = File::open(input).map_err(|e| Error::io(input, "cannot open input", e))?;
    let len = file.metadata().map_err(|e| Error::io(input, "cannot stat input", e))?.len();
    progress.start(len);
    let consumed = Cell::new(0u64);
    let counted = BufReader::with_capacity(COPY_BUFFER, Counting { file, progress, consumed: &consumed });
    read_tar(counted, kind, input, w, progress)?;
    Ok(consumed.get())
}

/// Re-emits the entries of a tar or tar.gz stream (`name` is what messages call it).
pub(crate) fn read_tar<W: Output>(
    input: impl io::BufRead,
    kind: InputKind,
    name: &Path,
    w: &mut AlignedWriter<W>,
    progress: &dyn Progress,
) -> Result<()> {
    let reader: Box<dyn Read + '_> = match kind {
        InputKind::TarGz => Box::new(BufReader::with_capacity(256 << 10, flate2::bufread::MultiGzDecoder::new(input))),
        _ => Box::new(input),
    };
    let mut r = TarInput { r: reader, pos: 0, gz: kind == InputKind::TarGz, path: name };
    read_entries(&mut r, w, progress)?;
    // Read to the end: trailing zero records, and for gzip the CRC and length trailer,
    // which is how a cut-off stream is noticed.
    let mut sink = vec![0u8; 64 << 10];
    while r.read(&mut sink)? > 0 {}
    Ok(())
}

/// Pending extended-header state for the next real entry.
#[derive(Default)]
struct Pending {
    /// Records of local pax headers ('x'), in order.
    pax: PaxRecords,
    gnu_path: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_empty() && self.gnu_path.is_none() && self.gnu_link.is_none()
    }
}

fn read_entries<W: Output>(r: &mut TarInput, w: &mut AlignedWriter<W>, progress: &dyn Progress) -> Result<()> {
    let mut global: PaxRecords = Vec::new();
    let mut pending = Pending::default();
    // Paths stored so far that are not directories (hard-link targets) and symlinks.
    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut symlinks: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut block = [0u8; 512];
    loop {
        progress::check(progress)?;
        let at = r.pos;
        if !r.block(&mut block)? {
            bail!(
                BadArchive,
                "{}: truncated: the archive ends at byte {at} without its end-of-archive marker",
                r.name()
            );
        }
        if block.iter().all(|&b| b == 0) {
            if !pending.is_empty() {
                bail!(BadArchive, "{}: an extended header at byte {at} is not followed by an entry", r.name());
            }
            return Ok(());
        }
        if !checksum_ok(&block) {
            bail!(BadArchive, "{}: the header at byte {at} has a bad checksum (corrupt or not a tar)", r.name());
        }
        let typeflag = block[156];
        let data_size = num(&block[124..136]).ok_or_else(|| bad_field(r, at, "size"))?;
        match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if data_size > MAX_EXTENDED {
                    bail!(
                        BadArchive,
                        "{}: the extended header at byte {at} is {data_size} bytes long, too large",
                        r.name()
                    );
                }
                let data = r.bytes(data_size)?;
                r.skip_padding(data_size)?;
                match typeflag {
                    b'x' => pending.pax.extend(parse_pax(&data).map_err(|m| bad(r, at, &m))?),
                    b'g' => global.extend(parse_pax(&data).map_err(|m| bad(r, at, &m))?),
                    b'L' => pending.gnu_path = Some(cut_nul(&data).to_vec()),
                    _ => pending.gnu_link = Some(cut_nul(&data).to_vec()),
                }
                continue;
            }
            b'0' | 0 | b'7' | b'1'..=b'6' | b'S' => {}
            b'V' | b'M' => {
                bail!(BadArchive, "{}: multi-volume archives are not supported (entry at byte {at})", r.name())
            }
            t => bail!(
                BadArchive,
                "{}: entry at byte {at} has unsupported type '{}'",
                r.name(),
                (t as char).escape_default()
            ),
        }

        let ext = std::mem::take(&mut pending);
        let gnu_map = if typeflag == b'S' { Some(gnu_sparse_map(r, at, &block)?) } else { None };
        let (e, raw_name, data_len, sparse) = make_entry(r, at, &block, &global, ext, gnu_map)?;
        if ancestors_hit(&e.path, &symlinks) {
            bail!(
                BadArchive,
                "{}: entry '{}' would be written through a symlink stored earlier",
                r.name(),
                paths::display(&raw_name)
            );
        }
        match e.kind {
            Kind::HardLink if !files.contains(&e.link) || ancestors_hit(&e.link, &symlinks) => {
                bail!(
                    BadArchive,
                    "{}: hard link '{}' points to '{}', which is not an earlier file of the archive",
                    r.name(),
                    paths::display(&raw_name),
                    paths::display(&e.link)
                );
            }
            Kind::Symlink => {
                symlinks.insert(e.path.clone());
            }
            _ => {}
        }
        if e.kind != Kind::Dir {
            files.insert(e.path.clone());
        }

        w.begin(&e)?;
        match e.kind {
            Kind::File => {
                match sparse {
                    None => copy_data(r, w, &mut buf, e.size, progress)?,
                    Some(map) => copy_sparse(r, w, &mut buf, &e, map, data_len, at, progress)?,
                }
                r.skip_padding(data_len)?;
            }
            Kind::Dir => {} // a directory's size field never announces data
            Kind::HardLink => {
                // A pax hard link may carry the data again; it is the same as its target's.
                r.skip(data_len.next_multiple_of(512))?;
            }
            _ if data_len > 0 => {
                bail!(
                    BadArchive,
                    "{}: entry '{}' at byte {at} has a size but no data can belong to it",
                    r.name(),
                    paths::display(&raw_name)
                )
            }
            _ => {}
        }
    }
}

/// Copies `n` bytes of entry data from the input to the archive.
fn copy_data<W: Output>(
    r: &mut TarInput,
    w: &mut AlignedWriter<W>,
    buf: &mut [u8],
    mut n: u64,
    progress: &dyn Progress,
) -> Result<()> {
    while n > 0 {
        let want = n.min(buf.len() as u64) as usize;
        r.exact(&mut buf[..want])?;
        w.write_data(&buf[..want])?;
        n -= want as u64;
        if n > 0 {
            progress::check(progress)?;
        }
    }
    Ok(())
}

/// Where a sparse entry's stored data goes: its (offset, length) extents in the file.
/// `None`: the map leads the entry's data (pax format 1.0).
type SparseMap = Option<Vec<(u64, u64)>>;

/// Writes a sparse entry out whole: the holes between its extents as zeros (holes of the
/// archive file), the extents from the `stored` bytes of its data.
#[allow(clippy::too_many_arguments)]
fn copy_sparse<W: Output>(
    r: &mut TarInput,
    w: &mut AlignedWriter<W>,
    buf: &mut [u8],
    e: &Entry,
    map: SparseMap,
    stored: u64,
    at: u64,
    progress: &dyn Progress,
) -> Result<()> {
    let name = r.name();
    let bad = |why: &str| {
        Error::new(
            Code::BadArchive,
            format!("{name}: the sparse map of '{}' at byte {at} {why}", paths::display(&e.path)),
        )
    };
    let (map, map_len) = match map {
        Some(m) => (m, 0),
        None => read_sparse_map(r, stored).map_err(|why| bad(&why))?,
    };
    let mut end = 0u64;
    let mut data = map_len;
    for &(offset, len) in &map {
        let next = offset.checked_add(len).filter(|&n| offset >= end && n <= e.size);
        let Some(next) = next else { return Err(bad("has extents out of order or past the file's end")) };
        end = next;
        data = data.saturating_add(len);
    }
    if data != stored {
        return Err(bad(&format!("covers {data} bytes but the entry stores {stored}")));
    }
    let mut pos = 0;
    for (offset, len) in map {
        w.write_zero_data(offset - pos)?;
        copy_data(r, w, buf, len, progress)?;
        pos = offset + len;
        progress::check(progress)?;
    }
    w.write_zero_data(e.size - pos)
}

/// Reads the map that leads a pax 1.0 sparse entry's data: decimal numbers one per line
/// (the count, then offset and length per extent), padded to a whole record. Returns it
/// and the bytes it took.
fn read_sparse_map(r: &mut TarInput, stored: u64) -> std::result::Result<(Vec<(u64, u64)>, u64), String> {
    let mut numbers: Vec<u64> = Vec::new();
    // How many numbers follow the count, once it is read.
    let mut want: Option<u64> = None;
    let done = |numbers: &Vec<u64>, want: Option<u64>| want.is_some_and(|w| numbers.len() as u64 >= w);
    let mut line: Vec<u8> = Vec::new();
    let mut used = 0u64;
    let mut record = [0u8; 512];
    while !done(&numbers, want) {
        if used + 512 > stored {
            return Err("runs past the entry's data".into());
        }
        r.exact(&mut record).map_err(|e| e.message)?;
        used += 512;
        for &b in &record {
            if done(&numbers, want) {
                break;
            }
            if b != b'\n' {
                line.push(b);
                if line.len() > 20 {
                    return Err("has a malformed number".into());
                }
                continue;
            }
            let n: u64 =
                std::str::from_utf8(&line).ok().and_then(|t| t.parse().ok()).ok_or("has a malformed number")?;
            line.clear();
            match want {
                None => want = Some(n.checked_mul(2).ok_or("has too many extents")?),
                Some(_) => numbers.push(n),
            }
        }
    }
    Ok((numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect(), used))
}

/// The map of a GNU 'S' entry: four extents in the header, then 21 in each extension record
/// that follows while the "is extended" byte is set. An empty offset field ends it.
fn gnu_sparse_map(r: &mut TarInput, at: u64, block: &[u8; 512]) -> Result<Vec<(u64, u64)>> {
    let name = r.name();
    let bad = || Error::new(Code::BadArchive, format!("{name}: the GNU sparse map at byte {at} is malformed"));
    let mut map = Vec::new();
    let take = |fields: &[u8], map: &mut Vec<(u64, u64)>| -> Result<()> {
        for ext in fields.chunks_exact(24) {
            if ext[0] == 0 {
                break;
            }
            map.push((num(&ext[..12]).ok_or_else(bad)?, num(&ext[12..]).ok_or_else(bad)?));
        }
        Ok(())
    };
    take(&block[386..482], &mut map)?;
    let mut extended = block[482] != 0;
    let mut record = [0u8; 512];
    while extended {
        if !r.block(&mut record)? {
            bail!(
                BadArchive,
                "{}: truncated: the archive ends inside the sparse map of the entry at byte {at}",
                r.name()
            );
        }
        take(&record[..504], &mut map)?;
        extended = record[504] != 0;
    }
    Ok(map)
}

fn ancestors_hit(path: &[u8], symlinks: &HashSet<Vec<u8>>) -> bool {
    !symlinks.is_empty() && paths::ancestors(path).any(|a| symlinks.contains(a))
}

/// Builds the entry from its header and the extended headers before it (and `gnu_map`,
/// the map of a GNU 'S' entry). Returns it with the raw name (for messages), the length of
/// the data that follows the header (pax `size` applied), and for a sparse file its map;
/// its `size` is then the file's real size.
fn make_entry(
    r: &TarInput,
    at: u64,
    block: &[u8; 512],
    global: &PaxRecords,
    ext: Pending,
    gnu_map: Option<Vec<(u64, u64)>>,
) -> Result<(Entry, Vec<u8>, u64, Option<SparseMap>)> {
    let ustar = &block[257..263] == b"ustar\0";
    let has_owner_fields = block[257..262] == *b"ustar";
    let mut raw_name = cut_nul(&block[0..100]).to_vec();
    if ustar && block[345] != 0 {
        let mut full = cut_nul(&block[345..500]).to_vec();
        full.push(b'/');
        full.extend_from_slice(&raw_name);
        raw_name = full;
    }
    let mut raw_link = cut_nul(&block[157..257]).to_vec();
    if let Some(p) = ext.gnu_path {
        raw_name = p;
    }
    if let Some(l) = ext.gnu_link {
        raw_link = l;
    }

    let mut e = Entry {
        mode: (num(&block[100..108]).ok_or_else(|| bad_field(r, at, "mode"))? & 0o7777) as u32,
        uid: num(&block[108..116]).ok_or_else(|| bad_field(r, at, "uid"))?,
        gid: num(&block[116..124]).ok_or_else(|| bad_field(r, at, "gid"))?,
        mtime: signed_num(&block[136..148]).ok_or_else(|| bad_field(r, at, "mtime"))?,
        size: num(&block[124..136]).ok_or_else(|| bad_field(r, at, "size"))?,
        ..Default::default()
    };
    if has_owner_fields {
        e.uname = cut_nul(&block[265..297]).to_vec();
        e.gname = cut_nul(&block[297..329]).to_vec();
    }

    let mut sparse = match gnu_map {
        Some(map) => Some(Sparse {
            map: Some(map),
            real_size: Some(num(&block[483..495]).ok_or_else(|| bad_field(r, at, "real size"))?),
            ..Sparse::default()
        }),
        None => pax_sparse(&ext.pax).map_err(|m| bad(r, at, &m))?,
    };
    // Global records first, local ones override; an empty value removes a keyword.
    let mut records: PaxRecords = Vec::new();
    for (k, v) in global.iter().chain(ext.pax.iter()) {
        records.retain(|(key, _)| key != k);
        if !v.is_empty() {
            records.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in records {
        let text = || std::str::from_utf8(&v).ok();
        let decimal = || text().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| bad_record(r, at, &k));
        match k.as_slice() {
            b"path" => raw_name = v,
            b"linkpath" => raw_link = v,
            b"size" => e.size = decimal()?,
            b"uid" => e.uid = decimal()?,
            b"gid" => e.gid = decimal()?,
            b"uname" => e.uname = v,
            b"gname" => e.gname = v,
            b"mtime" => e.mtime = text().and_then(parse_pax_time).ok_or_else(|| bad_record(r, at, &k))?,
            // Read by pax_sparse: local ones only, a global sparse record means nothing.
            _ if k.starts_with(b"GNU.sparse.") => {}
            _ if CARRIED_PREFIXES.iter().any(|p| k.starts_with(p)) => e.extra.push((k, v)),
            // atime, ctime, comment, charset, hdrcharset and unknown vendor records are dropped.
            _ => {}
        }
    }

    let typeflag = block[156];
    e.kind = match typeflag {
        // The old convention: a "regular file" whose name ends in '/' is a directory.
        b'0' | 0 if raw_name.ends_with(b"/") => Kind::Dir,
        b'0' | 0 | b'7' | b'S' => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' => Kind::Dir,
        _ => Kind::Fifo,
    };
    if let Some(name) = sparse.as_mut().and_then(|s| s.name.take()) {
        raw_name = name;
    }
    e.path = paths::normalize(&raw_name).map_err(|why| {
        Error::new(Code::BadArchive, format!("{}: refusing entry '{}': {why}", r.name(), paths::display(&raw_name)))
    })?;
    match e.kind {
        Kind::HardLink => {
            e.link = paths::normalize(&raw_link).map_err(|why| {
                Error::new(
                    Code::BadArchive,
                    format!(
                        "{}: refusing hard link '{}' to '{}': {why}",
                        r.name(),
                        paths::display(&raw_name),
                        paths::display(&raw_link)
                    ),
                )
            })?;
            if e.link.is_empty() {
                bail!(
                    BadArchive,
                    "{}: hard link '{}' points to the root directory",
                    r.name(),
                    paths::display(&raw_name)
                );
            }
            e.extra.clear();
        }
        Kind::Symlink => {
            if raw_link.is_empty() {
                bail!(BadArchive, "{}: symlink '{}' has an empty target", r.name(), paths::display(&raw_name));
            }
            e.link = raw_link;
        }
        Kind::CharDevice | Kind::BlockDevice => {
            e.dev_major = num(&block[329..337])
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_field(r, at, "devmajor"))?;
            e.dev_minor = num(&block[337..345])
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_field(r, at, "devminor"))?;
        }
        _ => {}
    }
    if e.path.is_empty() && e.kind != Kind::Dir {
        bail!(BadArchive, "{}: entry '{}' names the root but is not a directory", r.name(), paths::display(&raw_name));
    }
    let data_len = e.size;
    if e.kind != Kind::File {
        e.size = 0;
    }
    let map = match sparse {
        Some(s) if e.kind == Kind::File => {
            e.size = s.real_size.ok_or_else(|| bad(r, at, "a sparse file without its real size"))?;
            Some(s.map)
        }
        Some(_) => bail!(BadArchive, "{}: entry at byte {at} has a sparse map but is not a file", r.name()),
        None => None,
    };
    Ok((e, raw_name, data_len, map))
}

/// What the GNU.sparse records of a pax header say.
#[derive(Default)]
struct Sparse {
    map: SparseMap,
    real_size: Option<u64>,
    name: Option<Vec<u8>>,
}

/// The sparse file a pax header describes, if it does: format 1.0 (`major`/`minor`,
/// `name`, `realsize`; the map leads the data), 0.1 (`map`, "offset,length,..."), or 0.0
/// (`offset` and `numbytes` repeated, in order).
fn pax_sparse(records: &PaxRecords) -> std::result::Result<Option<Sparse>, String> {
    let mut s = Sparse::default();
    let mut major = None;
    let mut pairs: Vec<u64> = Vec::new();
    let mut count = None;
    let mut any = false;
    let number = |v: &[u8], k: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| format!("the pax record '{}' has a malformed value", paths::display(k)))
    };
    for (k, v) in records {
        let Some(key) = k.strip_prefix(b"GNU.sparse.") else { continue };
        any = true;
        match key {
            b"major" => major = Some(number(v, k)?),
            b"minor" => {
                number(v, k)?;
            }
            b"name" => s.name = Some(v.clone()),
            b"realsize" | b"size" => s.real_size = Some(number(v, k)?),
            b"numblocks" => count = Some(number(v, k)?),
            b"offset" | b"numbytes" => pairs.push(number(v, k)?),
            b"map" => {
                for n in v.split(|&b| b == b',').filter(|n| !n.is_empty()) {
                    pairs.push(number(n, k)?);
                }
            }
            _ => return Err(format!("unknown sparse record '{}'", paths::display(k))),
        }
    }
    if !any {
        return Ok(None);
    }
    match major {
        Some(1) => s.map = None,
        Some(m) => return Err(format!("sparse format {m} is not supported")),
        None => {
            if !pairs.len().is_multiple_of(2) || count.is_some_and(|c| c != pairs.len() as u64 / 2) {
                return Err("the sparse map does not have the announced number of extents".into());
            }
            s.map = Some(pairs.chunks_exact(2).map(|p| (p[0], p[1])).collect());
        }
    }
    Ok(Some(s))
}

/// Parses the records of a pax header: `"<len> <key>=<value>\n"` repeated.
fn parse_pax(data: &[u8]) -> std::result::Result<PaxRecords, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            break; // NUL fill after the last record
        }
        let rest = &data[pos..];
        let sp =
            rest.iter().position(|&b| b == b' ').filter(|&i| i > 0 && i <= 20).ok_or("malformed pax record length")?;
        let len: usize =
            std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or("malformed pax record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("malformed pax record".into());
        }
        let body = &rest[sp + 1..len - 1];
        let eq = body.iter().position(|&b| b == b'=').filter(|&i| i > 0).ok_or("pax record without a keyword")?;
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        pos += len;
    }
    Ok(out)
}

/// Whole seconds of a pax time such as `1700000000.123456789` or `-12.5` (rounded down).
fn parse_pax_time(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let negative_fraction = int.starts_with('-') && frac.bytes().any(|b| b != b'0');
    Some(if negative_fraction { secs - 1 } else { secs })
}

/// A numeric header field: octal text (spaces and NULs around it, empty = 0) or
/// GNU base-256 (high bit of the first byte set). None if malformed or negative.
fn num(field: &[u8]) -> Option<u64> {
    signed_num(field).and_then(|n| u64::try_from(n).ok())
}

fn signed_num(field: &[u8]) -> Option<i64> {
    if field[0] & 0x80 != 0 {
        // Base-256, big-endian two's complement; 0x80 marks positive, 0xff negative.
        let mut v: i128 = if field[0] == 0xff { -1 } else { (field[0] & 0x7f) as i128 };
        for &b in &field[1..] {
            v = v.checked_shl(8)? | b as i128;
            if v.unsigned_abs() > u64::MAX as u128 {
                return None;
            }
        }
        return i64::try_from(v).ok();
    }
    let text = cut_nul(field);
    let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    i64::from_str_radix(text, 8).ok().filter(|&n| n >= 0)
}

/// The checksum: the sum of the header bytes with the checksum field read as spaces.
/// Both the standard unsigned sum and the historic signed one are accepted.
fn checksum_ok(block: &[u8; 512]) -> bool {
    let Some(stored) = signed_num(&block[148..156]) else { return false };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as i64;
        signed += b as i8 as i64;
    }
    stored == unsigned || stored == signed
}

fn cut_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&x| x == 0).map_or(b, |i| &b[..i])
}

fn bad(r: &TarInput, at: u64, what: &str) -> Error {
    Error::new(Code::BadArchive, format!("{}: header at byte {at}: {what}", r.name()))
}

fn bad_field(r: &TarInput, at: u64, field: &str) -> Error {
    bad(r, at, &format!("the {field} field is malformed"))
}

fn bad_record(r: &TarInput, at: u64, key: &[u8]) -> Error {
    bad(r, at, &format!("the pax record '{}' has a malformed value", paths::display(key)))
}

/// Reports bytes of the input file as they are read; marks errors of the file itself
/// so they are told apart from a corrupt gzip stream.
struct Counting<'a> {
    file: File,
    progress: &'a dyn Progress,
    consumed: &'a Cell<u64>,
}

#[derive(Debug)]
struct FileError(io::Error);
impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for FileError {}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Ok(n) => {
                self.progress.advance(n as u64);
                self.consumed.set(self.consumed.get() + n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(io::Error::new(e.kind(), FileError(e))),
        }
    }
}

/// The decoded tar stream with its position (for messages) and error mapping.
struct TarInput<'a> {
    r: Box<dyn Read + 'a>,
    pos: u64,
    gz: bool,
    path: &'a Path,
}

impl TarInput<'_> {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn err(&self, e: io::Error) -> Error {
        let from_file = e.get_ref().is_some_and(|inner| inner.is::<FileError>());
        if from_file || !self.gz {
            Error::io(self.path, "cannot read", e)
        } else {
            Error::new(Code::BadArchive, format!("{}: the gzip stream is corrupt or cut off: {e}", self.name()))
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = read_up_to(&mut self.r, buf).map_err(|e| self.err(e))?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Reads exactly `buf.len()` bytes; the end of input here means a truncated archive.
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.read(buf)? != buf.len() {
            bail!(BadArchive, "{}: truncated: the archive ends inside an entry, at byte {}", self.name(), self.pos);
        }
        Ok(())
    }

    /// Reads one header record; false if the input ended cleanly before it.
    fn block(&mut self, block: &mut [u8; 512]) -> Result<bool> {
        match self.read(block)? {
            0 => Ok(false),
            512 => Ok(true),
            _ => {
                bail!(BadArchive, "{}: truncated: the archive ends inside a header, at byte {}", self.name(), self.pos)
            }
        }
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        self.exact(&mut v)?;
        Ok(v)
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut sink = [0u8; 8192];
        while n > 0 {
            let k = n.min(sink.len() as u64) as usize;
            self.exact(&mut sink[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Skips the zero fill after `size` bytes of data, up to the next 512-byte record.
    fn skip_padding(&mut self, size: u64) -> Result<()> {
        self.skip(size.next_multiple_of(512) - size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(b"0000644\0"), Some(0o644));
        assert_eq!(num(b"   644 \0"), Some(0o644));
        assert_eq!(num(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(num(b"12x45\0\0\0"), None);
        assert_eq!(num(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        let mut neg = [0xffu8; 12];
        neg[11] = 0xfe;
        assert_eq!(signed_num(&neg), Some(-2));
        assert_eq!(num(&neg), None);
        assert_eq!(parse_pax_time("1700000000.5"), Some(1_700_000_000));
        assert_eq!(parse_pax_time("-1.5"), Some(-2));
        assert_eq!(parse_pax_time("-1.0"), Some(-1));
        assert_eq!(parse_pax_time("12a"), None);
    }

    #[test]
    fn pax_records() {
        let mut data = Vec::new();
        super::super::writer::push_record(&mut data, b"path", b"a b=c\n");
        super::super::writer::push_record(&mut data, b"SCHILY.xattr.user.x", b"\0\xff");
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs[0], (b"path".to_vec(), b"a b=c\n".to_vec()));
        assert_eq!(recs[1], (b"SCHILY.xattr.user.x".to_vec(), b"\0\xff".to_vec()));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"9 =value\n").is_err());
        assert!(parse_pax(b"x path=y\n").is_err());
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap(), InputKind::TarGz);
        assert_eq!(sniff(&[0u8; 512]).unwrap(), InputKind::Tar);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap_err().code, Code::BadArchive);
        assert_eq!(sniff(b"").unwrap_err().code, Code::BadArchive);
        assert_eq!(sniff(&[b'x'; 512]).unwrap_err().code, Code::BadArchive);
        let mut h = tar::Header::new_ustar();
        h.set_path("a").unwrap();
        h.set_cksum();
        assert_eq!(sniff(h.as_bytes()).unwrap(), InputKind::Tar);
    }
}
