//! Progress reporting and cancellation for long operations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Code, Error, Result};

/// Receives progress of a long operation. Implementations must be cheap:
/// `advance` is called from worker threads every few MiB.
pub trait Progress: Sync {
    /// The total amount of work (bytes, usually) is now known.
    fn start(&self, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// True once the caller wants the operation to stop.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere: for callers that do not care.
pub struct Silent;
impl Progress for Silent {}

/// A cancellation flag shared between the caller and the worker.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Progress counted in atomics, for callers that poll (the binding, tests).
#[derive(Default)]
pub struct Counter {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub cancel: CancelFlag,
}

impl Progress for Counter {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Returns `Aborted` if the caller cancelled; call between units of work.
pub fn check(progress: &dyn Progress) -> Result<()> {
    if progress.cancelled() {
        return Err(Error::new(Code::Aborted, "the operation was cancelled"));
    }
    Ok(())
}
