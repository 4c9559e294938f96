//! Node-API binding of osfarm-core. It converts types, runs heavy work off the JS
//! thread (`AsyncTask`, each with a `*Sync` twin) and reports progress; no logic lives here.

mod blocks;
mod nbd;
mod pack;
mod progress;
mod repo;
mod transfer;

/// Converts a core error into a JS error whose message starts with the stable code;
/// the TypeScript layer lifts that prefix into `err.code`.
pub(crate) fn js_err(e: osfarm_core::Error) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, e.to_string())
}
