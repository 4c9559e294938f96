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
