//! Work run on the libuv pool: a closure returning a core result, whose output is turned
//! into its JS value on the JS thread, and whose error rejects the promise with a JS error
//! carrying osfarm's code (the same error a synchronous call throws).

use napi::bindgen_prelude::*;
use napi::{Env, Task};
use osfarm_core::progress::Progress;

use crate::progress::{JsProgress, ProgressCallback};

type Work<T> = Box<dyn FnOnce() -> osfarm_core::Result<T> + Send>;
/// Turns the work's output into its JS value.
pub type Finish<T, J> = fn(Env, T) -> napi::Result<J>;

pub struct Run<T: Send + 'static, J> {
    work: Option<Work<T>>,
    finish: Finish<T, J>,
    /// The error of a failed `compute`, thrown with its code by `reject`.
    failed: Option<osfarm_core::Error>,
}

impl<T: Send + 'static, J: ToNapiValue + TypeName> Task for Run<T, J> {
    type Output = T;
    type JsValue = J;

    fn compute(&mut self) -> napi::Result<T> {
        let work = self.work.take().ok_or_else(|| napi::Error::from_reason("task already ran"))?;
        work().map_err(|e| {
            let status = napi::Error::from_reason(e.message.clone());
            self.failed = Some(e);
            status
        })
    }

    fn resolve(&mut self, env: Env, output: T) -> napi::Result<J> {
        (self.finish)(env, output)
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<J> {
        // A task fails with napi's own statuses only, but a promise is rejected with the JS
        // value its error refers to: make that value here, with osfarm's code.
        match self.failed.take() {
            Some(e) => Err(crate::coded_error(env, e)),
            None => Err(err),
        }
    }
}

/// Runs `work` off the JS thread; `finish` converts its output.
pub fn run<T: Send + 'static, J: ToNapiValue + TypeName>(
    signal: Option<AbortSignal>,
    finish: Finish<T, J>,
    work: impl FnOnce() -> osfarm_core::Result<T> + Send + 'static,
) -> AsyncTask<Run<T, J>> {
    AsyncTask::with_optional_signal(Run { work: Some(Box::new(work)), finish, failed: None }, signal)
}

/// Runs long `work` off the JS thread with progress events, cancelled by `signal`
/// (between its steps); resolves to its output.
pub fn job<T: ToNapiValue + TypeName + Send + 'static>(
    on_progress: Option<ProgressCallback>,
    signal: Option<AbortSignal>,
    work: impl FnOnce(&dyn Progress) -> osfarm_core::Result<T> + Send + 'static,
) -> AsyncTask<Run<T, T>> {
    let progress = JsProgress::new(on_progress, signal.as_ref());
    run(
        signal,
        |_, output| Ok(output),
        move || {
            let r = work(&progress);
            progress.finish();
            r
        },
    )
}
