//! Indexing and comparing images.

use std::path::PathBuf;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use osfarm_core::compare::{self, Comparison};
use osfarm_core::indexer::{self, IndexOptions};
use osfarm_core::progress::Silent;
use osfarm_core::{HashAlg, Index};

use crate::progress::ProgressCallback;
use crate::task::{job, Run};
use crate::{js_err, Result};

/// A summary of an index, as JS sees it.
#[napi(object)]
pub struct IndexInfo {
    /// The image digest (hex): the name of the image in a repository.
    pub digest: String,
    pub hash: String,
    pub block_size: u32,
    pub image_size: f64,
    pub block_count: f64,
    pub zero_blocks: f64,
    /// Size of the index file in bytes.
    pub index_size: f64,
    /// Where the index was written, if it was.
    pub index_path: Option<String>,
}

pub(crate) fn info(index: &Index, index_path: Option<String>) -> IndexInfo {
    IndexInfo {
        digest: index.image_digest_hex(),
        hash: index.alg().name().to_string(),
        block_size: index.block_size(),
        image_size: index.image_len() as f64,
        block_count: index.block_count() as f64,
        zero_blocks: index.iter().filter(|d| osfarm_core::hash::is_zero_digest(d)).count() as f64,
        index_size: index.encoded_len() as f64,
        index_path,
    }
}

#[napi(object)]
pub struct IndexImageOptions {
    /// Block size in bytes, a power of two from 512 to 1 MiB; default 4096.
    pub block_size: Option<f64>,
    /// `sha1` (default) or `sha256`.
    pub hash: Option<String>,
    /// Write the index here (atomically).
    pub output: Option<String>,
}

fn parse_options(opts: &Option<IndexImageOptions>) -> Result<(IndexOptions, Option<PathBuf>)> {
    let mut o = IndexOptions::default();
    let mut output = None;
    if let Some(opts) = opts {
        if let Some(bs) = crate::block_size(opts.block_size)? {
            o.block_size = bs;
        }
        if let Some(h) = &opts.hash {
            o.alg = HashAlg::parse(h).map_err(js_err)?;
        }
        output = opts.output.as_ref().map(PathBuf::from);
    }
    Ok((o, output))
}

/// Loads an index from an `.osfi` file, or computes it from an image.
pub(crate) fn load_or_index(
    path: &str,
    opts: IndexOptions,
    progress: &dyn osfarm_core::progress::Progress,
) -> osfarm_core::Result<Index> {
    let p = std::path::Path::new(path);
    if is_index_file(p) {
        Index::load(p)
    } else {
        indexer::index_file(p, opts, progress)
    }
}

/// True if the file starts with the index magic (whatever its name).
fn is_index_file(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    osfarm_core::fsutil::open_regular(path, "image").is_ok_and(|mut f| f.read_exact(&mut magic).is_ok())
        && magic == osfarm_core::index::MAGIC
}

fn index_and_save(
    path: &str,
    opts: IndexOptions,
    output: Option<PathBuf>,
    progress: &dyn osfarm_core::progress::Progress,
) -> osfarm_core::Result<IndexInfo> {
    let index = indexer::index_file(std::path::Path::new(path), opts, progress)?;
    if let Some(out) = &output {
        index.save(out)?;
    }
    Ok(info(&index, output.map(|p| p.to_string_lossy().into_owned())))
}

/// Hashes every block of an image off the JS thread; writes the index if `output` is set.
#[napi(ts_return_type = "Promise<IndexInfo>")]
pub fn index_image(
    path: String,
    options: Option<IndexImageOptions>,
    #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    signal: Option<AbortSignal>,
) -> Result<AsyncTask<Run<IndexInfo, IndexInfo>>> {
    let (opts, output) = parse_options(&options)?;
    Ok(job(on_progress, signal, move |p| index_and_save(&path, opts, output, p)))
}

/// The synchronous twin of `indexImage`.
#[napi]
pub fn index_image_sync(path: String, options: Option<IndexImageOptions>) -> Result<IndexInfo> {
    let (opts, output) = parse_options(&options)?;
    index_and_save(&path, opts, output, &Silent).map_err(js_err)
}

/// Reads and validates an index file.
#[napi]
pub fn read_index(path: String) -> Result<IndexInfo> {
    let index = Index::load(std::path::Path::new(&path)).map_err(js_err)?;
    Ok(info(&index, Some(path)))
}

#[napi(object)]
pub struct CompareSide {
    pub digest: String,
    pub blocks: f64,
    pub zero_blocks: f64,
    pub distinct_blocks: f64,
    /// Of this side's non-zero blocks, how many the other side has.
    pub blocks_in_other: f64,
    /// The same as a share from 0 to 1.
    pub share_in_other: f64,
}

#[napi(object)]
pub struct CompareResult {
    pub hash: String,
    pub block_size: u32,
    pub a: CompareSide,
    pub b: CompareSide,
}

fn compare_paths(
    a: &str,
    b: &str,
    opts: IndexOptions,
    progress: &dyn osfarm_core::progress::Progress,
) -> osfarm_core::Result<CompareResult> {
    let ia = load_or_index(a, opts, progress)?;
    // An index file fixes the parameters; index the other side to match it.
    let opts_b = IndexOptions { alg: ia.alg(), block_size: ia.block_size() };
    let ib = load_or_index(b, opts_b, progress)?;
    let c: Comparison = compare::compare(&ia, &ib)?;
    let side = |i: &Index, s: &compare::Side, inother: u64, share: f64| CompareSide {
        digest: i.image_digest_hex(),
        blocks: s.blocks as f64,
        zero_blocks: s.zero_blocks as f64,
        distinct_blocks: s.distinct_blocks as f64,
        blocks_in_other: inother as f64,
        share_in_other: share,
    };
    Ok(CompareResult {
        hash: ia.alg().name().into(),
        block_size: ia.block_size(),
        a: side(&ia, &c.a, c.a_blocks_in_b, c.a_in_b()),
        b: side(&ib, &c.b, c.b_blocks_in_a, c.b_in_a()),
    })
}

/// Compares two images or indexes: how many of each one's non-zero blocks the other holds.
#[napi(ts_return_type = "Promise<CompareResult>")]
pub fn compare(
    a: String,
    b: String,
    options: Option<IndexImageOptions>,
    #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    signal: Option<AbortSignal>,
) -> Result<AsyncTask<Run<CompareResult, CompareResult>>> {
    let (opts, _) = parse_options(&options)?;
    Ok(job(on_progress, signal, move |p| compare_paths(&a, &b, opts, p)))
}

/// The synchronous twin of `compare`.
#[napi]
pub fn compare_sync(a: String, b: String, options: Option<IndexImageOptions>) -> Result<CompareResult> {
    let (opts, _) = parse_options(&options)?;
    compare_paths(&a, &b, opts, &Silent).map_err(js_err)
}
