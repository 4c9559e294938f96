//! Node-API binding of osfarm-core. It converts types, runs heavy work off the JS
//! thread (`AsyncTask`, each with a `*Sync` twin) and reports progress; no logic lives here.

mod blocks;
mod pack;
mod progress;
mod repo;
mod transfer;

/// Converts a core error into a JS error whose message starts with the stable code;
/// the TypeScript layer lifts that prefix into `err.code`.
pub(crate) fn js_err(e: osfarm_core::Error) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, e.to_string())
}

/// A whole number from 0 to `max` given by JS, else OSFARM_INVALID_ARGUMENT naming `what`.
/// Numbers cross as f64 and are checked here: napi's own u32 conversion would keep the
/// low 32 bits of 1e20 (1661992960) without a word.
pub(crate) fn whole_number(value: f64, max: u64, what: &str) -> napi::Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= max as f64 {
        return Ok(value as u64);
    }
    Err(js_err(osfarm_core::Error::new(
        osfarm_core::Code::InvalidArgument,
        format!("{what} must be a whole number from 0 to {max}, not {value}"),
    )))
}

/// A block size option (the core checks that it is a power of two in range).
pub(crate) fn block_size(value: Option<f64>) -> napi::Result<Option<u32>> {
    value.map(|v| whole_number(v, u32::MAX as u64, "the block size").map(|n| n as u32)).transpose()
}

/// The largest integer a JS number holds exactly.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
