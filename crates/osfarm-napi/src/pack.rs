//! Packing a directory, tar or tar.gz into a block-aligned tar.

use std::path::Path;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use osfarm_core::pack::{self as core_pack, PackStats};
use osfarm_core::progress::Silent;

use crate::progress::ProgressCallback;
use crate::task::{job, Run};
use crate::{block_size, js_err, whole_number, Result, MAX_SAFE_INTEGER};

#[napi(object)]
pub struct PackOptions {
    /// Alignment of file data: a power of two from 512 to 1 MiB; default 4096.
    pub block_size: Option<f64>,
    /// Clamp every mtime to at most this many seconds since the epoch.
    pub source_date_epoch: Option<f64>,
    /// Fail (leaving nothing) before the archive would grow past this many bytes: a
    /// bound on what an untrusted tar.gz may expand to.
    pub max_size: Option<f64>,
}

/// What `pack` wrote.
#[napi(object)]
pub struct PackResult {
    /// Entries in the archive (pax extended headers not counted).
    pub entries: f64,
    /// Regular files among them (hard links not counted).
    pub regular_files: f64,
    /// Bytes of regular-file data.
    pub file_bytes: f64,
    /// Bytes added only for alignment.
    pub padding_bytes: f64,
    /// Size of the archive in bytes.
    pub output_size: f64,
    /// Input objects left out because tar cannot store them (sockets).
    pub skipped: f64,
    /// Bytes of input consumed (the progress unit): file data read from a directory,
    /// or the size of the tar / tar.gz file.
    pub input_bytes: f64,
}

fn result(s: PackStats) -> PackResult {
    PackResult {
        entries: s.entries as f64,
        regular_files: s.regular_files as f64,
        file_bytes: s.file_bytes as f64,
        padding_bytes: s.padding_bytes as f64,
        output_size: s.output_size as f64,
        skipped: s.skipped as f64,
        input_bytes: s.input_bytes as f64,
    }
}

fn parse_options(opts: &Option<PackOptions>) -> Result<core_pack::PackOptions> {
    let mut o = core_pack::PackOptions::default();
    if let Some(opts) = opts {
        if let Some(bs) = block_size(opts.block_size)? {
            o.block_size = bs;
        }
        o.source_date_epoch =
            opts.source_date_epoch.map(|s| whole_number(s, MAX_SAFE_INTEGER, "sourceDateEpoch")).transpose()?;
        o.max_size = opts.max_size.map(|s| whole_number(s, MAX_SAFE_INTEGER, "maxSize")).transpose()?;
    }
    Ok(o)
}

/// Packs a directory, tar or tar.gz into a block-aligned tar at `output`, off the JS
/// thread. The output is written atomically: on error or abort nothing is left.
#[napi(ts_return_type = "Promise<PackResult>")]
pub fn pack(
    input: String,
    output: String,
    options: Option<PackOptions>,
    #[napi(ts_arg_type = "((event: ProgressEvent) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    signal: Option<AbortSignal>,
) -> Result<AsyncTask<Run<PackResult, PackResult>>> {
    let opts = parse_options(&options)?;
    Ok(job(on_progress, signal, move |p| core_pack::pack(Path::new(&input), Path::new(&output), &opts, p).map(result)))
}

/// The synchronous twin of `pack`.
#[napi]
pub fn pack_sync(input: String, output: String, options: Option<PackOptions>) -> Result<PackResult> {
    let opts = parse_options(&options)?;
    core_pack::pack(Path::new(&input), Path::new(&output), &opts, &Silent).map(result).map_err(js_err)
}
