//! Progress callbacks and AbortSignal for long operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use osfarm_core::progress::{CancelFlag, Progress};

/// What the progress callback receives: units done so far and the total (bytes, usually).
#[napi(object)]
#[derive(Clone, Copy)]
pub struct ProgressEvent {
    pub done: f64,
    pub total: f64,
}

/// A JS callback `(event) => void`, called from worker threads without blocking them.
pub type ProgressCallback = ThreadsafeFunction<ProgressEvent, (), ProgressEvent, Status, false, true>;

/// Forwards core progress to JS at most every 50 ms (and at the end), and turns an
/// aborted AbortSignal into a cancel flag the worker polls.
pub struct JsProgress {
    callback: Option<ProgressCallback>,
    cancel: CancelFlag,
    total: AtomicU64,
    done: AtomicU64,
    last_sent_ms: AtomicU64,
    started: Instant,
}

impl JsProgress {
    pub fn new(callback: Option<ProgressCallback>, signal: Option<&AbortSignal>) -> JsProgress {
        let cancel = CancelFlag::default();
        if let Some(signal) = signal {
            let flag = cancel.clone();
            signal.on_abort(move || flag.cancel());
        }
        JsProgress {
            callback,
            cancel,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last_sent_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn send(&self) {
        if let Some(cb) = &self.callback {
            let event = ProgressEvent {
                done: self.done.load(Ordering::Relaxed) as f64,
                total: self.total.load(Ordering::Relaxed) as f64,
            };
            cb.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// Sends the final state, so the last event a caller sees says done == total.
    pub fn finish(&self) {
        self.send();
    }
}

impl Progress for JsProgress {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.send();
    }

    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_sent_ms.load(Ordering::Relaxed);
        if now >= last + 50
            && self.last_sent_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.send();
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}
