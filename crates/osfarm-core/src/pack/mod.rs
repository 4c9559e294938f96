//! Block-aligned tar ("pack"): turns a directory tree, a tar or a tar.gz into a POSIX
//! (pax) tar in which every regular file's data starts at a multiple of the block size,
//! so that fixed-size block hashing finds the files two images share.
//!
//! - [`writer`]: the aligned writer, usable on any `Write` (for streaming)
//! - [`sparse`]: the output file, with holes where the archive has zero blocks
//! - [`source_dir`]: walks a directory in a deterministic order (holes of sparse files
//!   are skipped, not read)
//! - [`source_tar`]: re-emits a tar or tar.gz, refusing hostile input
//! - [`paths`]: member-name normalisation and escape checks
//!
//! The format is described in `docs/aligned-tar.md`.

pub mod paths;
pub mod source_dir;
pub mod source_tar;
pub mod sparse;
pub mod writer;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::bail;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hash;
use crate::progress::Progress;

pub use writer::{AlignedWriter, Entry, Kind, Output, PaxRecords};

/// How to pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Alignment of file data: a power of two from 512 to 1 MiB (default 4096).
    pub block_size: u32,
    /// If set, every mtime is clamped to at most this (seconds since the epoch).
    pub source_date_epoch: Option<u64>,
    /// If set, packing fails before the archive would grow past this many bytes (its
    /// apparent size, holes included): a bound on what an untrusted tar.gz may expand to.
    pub max_size: Option<u64>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions { block_size: hash::DEFAULT_BLOCK_SIZE, source_date_epoch: None, max_size: None }
    }
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Entries in the archive (pax extended headers not counted).
    pub entries: u64,
    /// Regular files among them (hard links not counted).
    pub regular_files: u64,
    /// Bytes of regular-file data.
    pub file_bytes: u64,
    /// Bytes added only for alignment: comment fill in pax headers, and the tail that
    /// rounds the archive up to a whole block.
    pub padding_bytes: u64,
    /// Size of the archive.
    pub output_size: u64,
    /// Input objects left out because tar cannot represent them (sockets).
    pub skipped: u64,
    /// Bytes of input consumed, in the unit progress is reported in: file data read
    /// from a directory, or the size of the tar / tar.gz file.
    pub input_bytes: u64,
}

/// What an input is, decided by looking at it (never by its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Directory,
    Tar,
    TarGz,
}

/// Looks at `input`: a directory, a gzip stream (magic `1f 8b`), or a tar.
pub fn detect(input: &Path) -> Result<InputKind> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, "cannot read input", e))?;
    if meta.is_dir() {
        return Ok(InputKind::Directory);
    }
    if !meta.is_file() {
        // A pipe or device would be consumed by the sniffing read.
        bail!(InvalidArgument, "{} is neither a directory nor a regular file", input.display());
    }
    let mut file = File::open(input).map_err(|e| Error::io(input, "cannot open input", e))?;
    let mut head = [0u8; 512];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(input, "cannot read input", e))?;
    source_tar::sniff(&head[..n]).map_err(|e| Error::new(e.code, format!("{}: {}", input.display(), e.message)))
}

/// Packs `input` (a directory, tar or tar.gz) into a block-aligned tar at `output`.
/// The output appears complete or not at all: on error or cancellation nothing is left.
/// Its zero blocks are holes, so it takes the disk space of its data only.
pub fn pack(input: &Path, output: &Path, opts: &PackOptions, progress: &dyn Progress) -> Result<PackStats> {
    hash::block_size_log2(opts.block_size)?;
    let kind = detect(input)?;
    if kind == InputKind::Directory {
        refuse_output_inside(input, output)?;
    }
    let mut stats = PackStats::default();
    fsutil::create_atomic(output, |file| {
        let mut out = sparse::SparseFile::new(file, opts.block_size);
        stats = pack_kind(input, kind, &mut out, opts, progress)?;
        out.finish().map_err(|e| Error::io(output, "cannot write", e))
    })?;
    Ok(stats)
}

/// Packs `input` into any writer (give it a buffered one). Nothing is cleaned up on
/// error: the caller owns the writer.
pub fn pack_to_writer(
    input: &Path,
    out: &mut dyn Output,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PackStats> {
    let kind = detect(input)?;
    pack_kind(input, kind, out, opts, progress)
}

fn pack_kind(
    input: &Path,
    kind: InputKind,
    out: &mut dyn Output,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PackStats> {
    let mut w = AlignedWriter::new(out, opts)?;
    let input_bytes = match kind {
        InputKind::Directory => source_dir::pack_dir(input, &mut w, progress)?,
        InputKind::Tar | InputKind::TarGz => source_tar::pack_tar(input, kind, &mut w, progress)?,
    };
    let (_, mut stats) = w.finish()?;
    stats.input_bytes = input_bytes;
    Ok(stats)
}

/// Writing the archive into the tree being walked would pack a growing file.
fn refuse_output_inside(input: &Path, output: &Path) -> Result<()> {
    let root = std::fs::canonicalize(input).map_err(|e| Error::io(input, "cannot resolve", e))?;
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(dir) = std::fs::canonicalize(parent) {
        if dir.starts_with(&root) {
            bail!(
                InvalidArgument,
                "the output {} is inside the input directory {}: write it elsewhere",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(crate) fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Size of the buffer file data is copied through.
pub(crate) const COPY_BUFFER: usize = 1 << 20;

#[cfg(test)]
mod tests;
