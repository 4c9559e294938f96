//! Serving an image that is only partly present as an NBD export (lazy boot; the
//! design, protocol subset and measurements are in docs/lazy-boot.md).
//!
//! - [`lazy`]: `LazyImage`, the block source: the partial, the local repository, then a
//!   `Fetcher`; every block verified, misses coalesced, the boot profile recorded,
//!   `ensure` for the background prefetch, `publish` when complete.
//! - [`server`]: the unix-socket NBD server over a `LazyImage`.
//! - `proto`: the wire protocol (fixed newstyle negotiation, simple replies).

pub mod lazy;
mod proto;
pub mod server;
mod store;

pub use lazy::{
    EnsureReport, Event, EventSink, FetchReply, FetchRequest, Fetcher, LazyImage, LazyOptions, LazyStats, Origin,
};
pub use server::{Server, ServerOptions};

#[cfg(test)]
mod tests;
