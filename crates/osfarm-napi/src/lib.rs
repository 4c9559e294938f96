//! Node-API binding of osfarm-core. It converts types, runs heavy work off the JS
//! thread (`task`, each with a `*Sync` twin) and reports progress; no logic lives here.

mod blocks;
mod lock;
mod nbd;
mod pack;
mod progress;
mod repo;
mod task;
mod transfer;

/// A binding call's result. Its error becomes a JS error whose `code` is osfarm's stable
/// code (napi-rs's custom status), so TypeScript reads `err.code`, never the message.
pub(crate) type Result<T> = napi::Result<T, osfarm_core::Code>;

/// A core error as the binding throws it.
pub(crate) fn js_err(e: osfarm_core::Error) -> napi::Error<osfarm_core::Code> {
    napi::Error::new(e.code, e.message)
}

/// A core error as the JS value a promise is rejected with: the same coded error a
/// synchronous call throws (napi's own task and deferred errors carry only its statuses).
pub(crate) fn coded_error(env: napi::Env, e: osfarm_core::Error) -> napi::Error {
    use napi::bindgen_prelude::JsError;
    napi::Error::from(JsError::from(js_err(e)).into_unknown(env))
}

/// A whole number from 0 to `max` given by JS, else OSFARM_INVALID_ARGUMENT naming `what`.
/// Numbers cross as f64 and are checked here: napi's own u32 conversion would keep the
/// low 32 bits of 1e20 (1661992960) without a word.
pub(crate) fn whole_number(value: f64, max: u64, what: &str) -> Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= max as f64 {
        return Ok(value as u64);
    }
    Err(js_err(osfarm_core::Error::new(
        osfarm_core::Code::InvalidArgument,
        format!("{what} must be a whole number from 0 to {max}, not {value}"),
    )))
}

/// A block size option (the core checks that it is a power of two in range).
pub(crate) fn block_size(value: Option<f64>) -> Result<Option<u32>> {
    value.map(|v| whole_number(v, u32::MAX as u64, "the block size").map(|n| n as u32)).transpose()
}

/// The largest integer a JS number holds exactly.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
