//! Block compression for the wire: zstd on whole runs of blocks, used only when it
//! pays, and a decoder that never produces more than the receiver expects. Protocol v2
//! adds one zstd stream per transfer across its BLOCKS frames ([`StreamEncoder`],
//! [`StreamDecoder`]), so a run compresses against the runs sent before it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::{CParameter, DParameter};

use crate::bail;
use crate::error::Result;

/// How the data of a BLOCKS frame is encoded. The numbers are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
    /// The next part of the transfer's zstd stream, flushed at the frame's end (v2).
    ZstdStream = 2,
}

impl Encoding {
    pub fn from_id(id: u8) -> Option<Encoding> {
        match id {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::ZstdStream),
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

/// The stream's window: 8 MiB of earlier runs to find matches in (zstd level 3 alone uses
/// 2 MiB). The decoder refuses a larger window, which bounds its memory.
const STREAM_WINDOW_LOG: u32 = 23;

fn zstd_err(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::new(crate::error::Code::Io, format!("zstd: {e}"))
}

/// The levels a stream may use: the caller raises the level while the encoder has spare
/// time and lowers it while runs queue up for it (like `zstd --adapt`). On Debian trees
/// level 9 sends ~10 % fewer bytes than 3 and one core still compresses ~58 MB/s at it,
/// more than a 100 Mbit/s link carries once compressed (12 gained nothing measurable and
/// stalls the stream on incompressible runs); 1 compresses at ~400 MB/s.
pub const STREAM_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;

/// The level of the runs after one that did not save 1/16 (see [`StreamEncoder`]).
const CHEAP_LEVEL: i32 = 1;

/// The sender's half of a transfer's zstd stream. Runs must be encoded in the order their
/// frames are sent. After a run that did not save 1/16, the next few are compressed at
/// level 1 whatever the caller asks: random data then costs little CPU (zstd passes
/// incompressible blocks through), yet every run stays in the stream's history for the
/// runs after it, which sending them raw would lose.
pub struct StreamEncoder {
    enc: Mutex<(Encoder<'static>, i32)>,
    skip: AtomicU32,
}

impl StreamEncoder {
    pub fn new() -> Result<StreamEncoder> {
        let mut enc = Encoder::new(ZSTD_LEVEL).map_err(zstd_err)?;
        enc.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG)).map_err(zstd_err)?;
        Ok(StreamEncoder { enc: Mutex::new((enc, ZSTD_LEVEL)), skip: AtomicU32::new(0) })
    }

    /// The run as the next part of the stream (`ZstdStream`) compressed at `level`
    /// (clamped to [`STREAM_LEVELS`]; level 1 after a run that did not compress).
    pub fn encode(&self, data: Vec<u8>, level: i32) -> Result<(Encoding, Vec<u8>)> {
        if data.is_empty() {
            return Ok((Encoding::Raw, data));
        }
        let s = self.skip.load(Ordering::Relaxed);
        let level = if s > 0 {
            self.skip.store(s - 1, Ordering::Relaxed);
            CHEAP_LEVEL
        } else {
            level.clamp(*STREAM_LEVELS.start(), *STREAM_LEVELS.end())
        };
        let mut guard = self.enc.lock().unwrap();
        let (enc, current) = &mut *guard;
        if level != *current {
            // zstd applies a new level from the next block on, within the same stream.
            enc.set_parameter(CParameter::CompressionLevel(level)).map_err(zstd_err)?;
            *current = level;
        }
        let mut out: Vec<u8> = Vec::with_capacity(zstd::compress_bound(data.len()) + 1024);
        let mut input = InBuffer::around(&data);
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(64 << 10);
            }
            let at = out.len();
            let mut ob = OutBuffer::around_pos(&mut out, at);
            if input.pos() < data.len() {
                enc.run(&mut input, &mut ob).map_err(zstd_err)?;
            } else if enc.flush(&mut ob).map_err(zstd_err)? == 0 {
                break;
            }
        }
        if out.len() > data.len() - data.len() / MIN_SAVING_DIVISOR {
            self.skip.store(SKIP_AFTER_MISS, Ordering::Relaxed);
        }
        Ok((Encoding::ZstdStream, out))
    }
}

/// The receiver's half: decodes the stream's parts in frame order, each into exactly the
/// bytes of its run; a part that decodes to more or less is an error.
pub struct StreamDecoder {
    dec: Mutex<Decoder<'static>>,
}

impl StreamDecoder {
    pub fn new() -> Result<StreamDecoder> {
        let mut dec = Decoder::new().map_err(zstd_err)?;
        dec.set_parameter(DParameter::WindowLogMax(STREAM_WINDOW_LOG)).map_err(zstd_err)?;
        Ok(StreamDecoder { dec: Mutex::new(dec) })
    }

    pub fn decode(&self, data: &[u8], expected_len: usize) -> Result<Vec<u8>> {
        let mut dec = self.dec.lock().unwrap();
        let bad = |e: std::io::Error| {
            crate::error::Error::new(crate::error::Code::InvalidArgument, format!("a run of the zstd stream is not valid ({e})"))
        };
        let mut out = vec![0u8; expected_len];
        let mut input = InBuffer::around(data);
        let mut written = 0;
        loop {
            let read = input.pos();
            let mut ob = OutBuffer::around_pos(&mut out[..], written);
            dec.run(&mut input, &mut ob).map_err(bad)?;
            let progressed = ob.pos() > written || input.pos() > read;
            written = ob.pos();
            if !progressed || (input.pos() == data.len() && written == expected_len) {
                break;
            }
        }
        // Nothing of this frame may be left inside the decoder (it would open the next run).
        let mut probe = [0u8; 1];
        let mut ob = OutBuffer::around(&mut probe[..]);
        dec.run(&mut InBuffer::around(&[]), &mut ob).map_err(bad)?;
        if input.pos() != data.len() || written != expected_len || ob.pos() != 0 {
            bail!(InvalidArgument, "a run of the zstd stream does not decode to exactly its {expected_len} bytes of blocks");
        }
        Ok(out)
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
        Encoding::ZstdStream => bail!(InvalidArgument, "a zstd stream run needs the transfer's stream decoder"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::pseudo_random;

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
        let random = pseudo_random(64 << 10, 88172645463325253);
        assert!(c.compress(&random).is_none());
        assert_eq!(c.skip.load(Ordering::Relaxed), SKIP_AFTER_MISS);
        assert!(c.compress(&text).is_none(), "skipped after a miss");
    }

    #[test]
    fn the_stream_compresses_across_runs_and_decodes_in_order() {
        let enc = StreamEncoder::new().unwrap();
        let dec = StreamDecoder::new().unwrap();
        // Two runs of the same pseudo-random bytes: alone each is incompressible, but the
        // second refers to the first through the stream.
        let run = pseudo_random(256 << 10, 0x9e37_79b9_7f4a_7c15);
        let (e1, a) = enc.encode(run.clone(), 3).unwrap();
        assert_eq!(e1, Encoding::ZstdStream);
        assert_eq!(dec.decode(&a, run.len()).unwrap(), run);
        assert_eq!(enc.skip.load(Ordering::Relaxed), SKIP_AFTER_MISS, "the first did not pay");
        // The second is the same bytes: through the stream it refers to the first.
        let (e2, b) = enc.encode(run.clone(), 9).unwrap();
        assert_eq!(e2, Encoding::ZstdStream);
        assert!(b.len() < run.len() / 100, "{} bytes: the repeat refers to the first run", b.len());
        assert_eq!(dec.decode(&b, run.len()).unwrap(), run);

        // Level changes between runs keep one decodable stream.
        for (k, level) in [1, 9, 4, 12, 1, 6].into_iter().enumerate() {
            let text: Vec<u8> = format!("run {k} of osfarm blocks; ").bytes().cycle().take(96 << 10).collect();
            let (e, part) = enc.encode(text.clone(), level).unwrap();
            assert_eq!(e, Encoding::ZstdStream);
            assert_eq!(dec.decode(&part, text.len()).unwrap(), text);
        }

        // A part that decodes to more or less than its run is refused.
        let (_, d) = enc.encode(vec![1u8; 64 << 10], 1).unwrap();
        assert!(dec.decode(&d, (64 << 10) + 1).is_err());
        let (enc2, dec2) = (StreamEncoder::new().unwrap(), StreamDecoder::new().unwrap());
        let (_, f) = enc2.encode(vec![1u8; 64 << 10], 3).unwrap();
        let err = dec2.decode(&f, (64 << 10) - 1).unwrap_err();
        assert!(err.message.contains("exactly"), "{}", err.message);
        assert!(StreamDecoder::new().unwrap().decode(b"not zstd at all", 100).is_err());
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
