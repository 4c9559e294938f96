//! osfarm-core: the block engine of osfarm, in plain Rust (no Node-API here).
//!
//! - [`hash`], [`indexer`], [`index`]: fixed-size block hashing and the `.osfi` index format
//! - [`compare`]: common blocks between two images

pub mod collision;
pub mod compare;
pub mod digest_set;
pub mod error;
pub mod fsutil;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod hash;
pub mod index;
pub mod indexer;
pub mod lock;
mod mapped;
pub mod nbd;
pub mod pack;
pub mod progress;
mod readahead;
pub mod repo;
mod sha1_pair;
#[cfg(test)]
mod test_data;
pub mod transfer;

pub use error::{Code, Error, Result};
pub use hash::HashAlg;
pub use index::Index;
