//! File locks (flock(2)) for the stage store: taken without waiting; TypeScript retries,
//! so no libuv pool thread ever blocks on a lock another process holds.

use napi_derive::napi;
use osfarm_core::lock::{FileLock, LockKind};

use crate::{js_err, Result};

/// A held lock; the kernel drops it when `release()` closes the file, or when the process dies.
#[napi]
pub struct FileLockHandle {
    lock: Option<FileLock>,
}

#[napi]
impl FileLockHandle {
    /// Closes the lock file, releasing the lock. Safe to call twice.
    #[napi]
    pub fn release(&mut self) {
        self.lock = None;
    }

    #[napi(getter)]
    pub fn held(&self) -> bool {
        self.lock.is_some()
    }
}

/// Locks `path` (created if absent), exclusive unless `shared`; null if another holder
/// conflicts. The descriptor is close-on-exec: child processes never inherit the lock.
#[napi]
pub fn try_lock_file(path: String, shared: Option<bool>) -> Result<Option<FileLockHandle>> {
    let kind = if shared.unwrap_or(false) { LockKind::Shared } else { LockKind::Exclusive };
    let lock = FileLock::try_acquire(path.as_ref(), kind).map_err(js_err)?;
    Ok(lock.map(|l| FileLockHandle { lock: Some(l) }))
}
