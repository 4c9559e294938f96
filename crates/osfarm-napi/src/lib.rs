//! Node-API binding of osfarm-core. It converts types, runs heavy work off the JS
//! thread (`task`, each with a `*Sync` twin) and reports progress; no logic lives here.

mod blocks;
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
