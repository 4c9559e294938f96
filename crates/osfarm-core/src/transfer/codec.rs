//! Block compression for the wire: zstd on whole runs of blocks, used only when it
//! pays, and a decoder that never produces more than the receiver expects.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::bail;
use crate::error::Result;

/// How the data of a BLOCKS frame is encoded. The numbers are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
}

impl Encoding {
    pub fn from_id(id: u8) -> Option<Encoding> {
        match id {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// zstd level: 3 (zstd's default) still compresses at well over 100 MB/s per core and
/// runs on several threads, so it outpaces any link compression helps on, and it sends
/// ~12 % fewer bytes than level 1 on Debian trees (benches/transfer-peers.ts). Only
/// blocks that cross the network are compressed, and incompressible runs are skipped.
pub const ZSTD_LEVEL: i32 = 3;
/// A run is sent compressed only if that saves at least 1/16 of its bytes.
const MIN_SAVING_DIVISOR: usize = 16;
/// After a run that did not compress, this many runs are sent raw without trying
/// (random or already-compressed data would otherwise cost CPU for nothing).
const SKIP_AFTER_MISS: u32 = 8;

/// Decides per run whether to compress, learning from the data: after an
/// incompressible run it skips a few attempts. Shared between threads.
#[derive(Default)]
pub struct Compressor {
    skip: AtomicU32,
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor::default()
    }

    /// The run compressed with zstd if that saves enough, else `None` (send it raw).
    pub fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < 512 {
            return None;
        }
        let s = self.skip.load(Ordering::Relaxed);
        if s > 0 {
            self.skip.store(s - 1, Ordering::Relaxed);
            return None;
        }
        let limit = data.len() - data.len() / MIN_SAVING_DIVISOR;
        match zstd::bulk::compress(data, ZSTD_LEVEL) {
            Ok(c) if c.len() <= limit => Some(c),
            _ => {
                self.skip.store(SKIP_AFTER_MISS, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Decodes a run's data into exactly `expected_len` bytes. A frame that decodes to any
/// other length, or is not valid zstd, is an error: the sender is broken or lying.
/// The output buffer is bounded by `expected_len`, so a "zip bomb" cannot make the
/// receiver allocate more than the run it asked for.
pub fn decode(encoding: Encoding, data: Vec<u8>, expected_len: usize) -> Result<Vec<u8>> {
    match encoding {
        Encoding::Raw => {
            if data.len() != expected_len {
                bail!(InvalidArgument, "a raw run of {} bytes was sent for {expected_len} bytes of blocks", data.len());
            }
            Ok(data)
        }
        Encoding::Zstd => {
            let mut out = Vec::with_capacity(expected_len);
            let mut dec = zstd::bulk::Decompressor::new()
                .map_err(|e| crate::error::Error::new(crate::error::Code::Io, format!("zstd: {e}")))?;
            match dec.decompress_to_buffer(&data, &mut out) {
                Ok(n) if n == expected_len => Ok(out),
                Ok(n) => bail!(InvalidArgument, "a compressed run decodes to {n} bytes, not the {expected_len} bytes of its blocks"),
                Err(e) => bail!(InvalidArgument, "a compressed run is not valid zstd or is longer than its {expected_len} bytes of blocks ({e})"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_only_when_it_pays_and_round_trips() {
        let c = Compressor::new();
        let text: Vec<u8> = b"osfarm blocks ".iter().cycle().take(64 << 10).copied().collect();
        let z = c.compress(&text).expect("repetitive data compresses");
        assert!(z.len() < text.len() / 10);
        assert_eq!(decode(Encoding::Zstd, z.clone(), text.len()).unwrap(), text);
        // Wrong expected length: refused either way.
        assert!(decode(Encoding::Zstd, z.clone(), text.len() - 1).is_err());
        assert!(decode(Encoding::Zstd, z, text.len() + 1).is_err());
        assert!(decode(Encoding::Zstd, b"garbage that is not zstd".to_vec(), 100).is_err());
        assert!(decode(Encoding::Raw, vec![1; 10], 11).is_err());

        // Random data: not compressed, and the next attempts are skipped.
        let mut x = 88172645463325252u64;
        let random: Vec<u8> = (0..(64 << 10))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(c.compress(&random).is_none());
        assert_eq!(c.skip.load(Ordering::Relaxed), SKIP_AFTER_MISS);
        assert!(c.compress(&text).is_none(), "skipped after a miss");
    }

    #[test]
    fn a_bomb_cannot_allocate_beyond_the_run() {
        let big = vec![0u8; 64 << 20];
        let z = zstd::bulk::compress(&big, 3).unwrap();
        assert!(z.len() < 1 << 20);
        let err = decode(Encoding::Zstd, z, 1 << 20).unwrap_err();
        assert!(err.message.contains("not valid zstd or is longer"), "{}", err.message);
    }
}
