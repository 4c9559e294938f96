//! The byte work of content-based transfer (the network itself lives in TypeScript):
//!
//! - [`source`]: the sending side. An [`ImageSource`] hashes an image in a background
//!   thread and hands out its block digests window by window *as they are produced*
//!   (the seed's "hash produce thread"), through a bounded channel so hashing never
//!   runs far ahead of the network; and it reads the runs of blocks the receiver asks
//!   for, compressing them when that helps.
//! - [`groups`]: content-defined groups of block digests (protocol v2), so a source
//!   sends one digest per ~32 blocks and the receiver asks only for the block digests of
//!   groups it does not hold.
//! - [`codec`]: zstd compression of block runs for the wire, with a bounded decoder.
//! - The receiving side is `repo::stream::StreamAssembler`: it takes digests as they
//!   arrive, looks each up in the repository's hash table, copies the blocks it has,
//!   names the runs it lacks, verifies what arrives and publishes atomically.
//!
//! The wire protocol is documented in docs/protocol.md.

pub mod codec;
pub mod groups;
pub mod source;

pub use codec::{Compressor, Encoding};
pub use groups::{GroupLookup, GroupTable, Grouper, Location};
pub use source::{DigestWindow, ImageDigester, ImageSource, SourceOptions};
