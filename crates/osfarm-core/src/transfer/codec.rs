//! Block compression for the wire: zstd on whole runs of blocks, used only when it
//! pays, and a decoder that never produces more than the receiver expects. Protocol v2
//! adds one zstd stream per transfer across its BLOCKS frames ([`StreamEncoder`],
//! [`StreamDecoder`]), so a run compresses against the runs sent before it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
        match zstd::bulk::compress(data, ZSTD_LEVEL) {
            Ok(c) if saves_enough(data.len(), c.len()) => Some(c),
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

/// The levels a stream may use; the sender picks one per run (`transfer/level.ts` adapts
/// it to whether the encoder or the link is the bottleneck). On the missing blocks of
/// bookworm minbase -> +python3 (48.6 MB, one core): level 3 makes 15.93 MB at ~240 MB/s,
/// 6 makes 14.9 MB at ~110 MB/s, 9 makes 14.23 MB at ~70 MB/s, still more than a
/// 100 Mbit/s link carries once compressed; 12 saves 1.3 % more at ~31 MB/s.
pub const STREAM_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;

/// Bytes of a run tried alone, at level 1, while the stream is wary (see [`StreamEncoder`]).
const SAMPLE_BYTES: usize = 64 << 10;

/// The stream's encoder, its level, and whether a frame is open (see `encode`).
struct Session {
    enc: Encoder<'static>,
    level: i32,
    in_frame: bool,
}

/// The sender's half of a transfer's zstd stream. Runs must be encoded in the order their
/// frames are sent. After a run that did not save 1/16 the stream is wary: each next run
/// is sent raw, outside the stream, unless its first 64 KiB compressed alone at level 1
/// save 1/16. Random or already-compressed data then costs one cheap sample per run, and
/// compressible data comes back to the stream at once.
pub struct StreamEncoder {
    enc: Mutex<Session>,
    wary: AtomicBool,
}

impl StreamEncoder {
    pub fn new() -> Result<StreamEncoder> {
        let mut enc = Encoder::new(ZSTD_LEVEL).map_err(zstd_err)?;
        enc.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG)).map_err(zstd_err)?;
        Ok(StreamEncoder {
            enc: Mutex::new(Session { enc, level: ZSTD_LEVEL, in_frame: false }),
            wary: AtomicBool::new(false),
        })
    }

    /// The run as the next part of the stream (`ZstdStream`) compressed at `level`
    /// (clamped to [`STREAM_LEVELS`]), or raw while the stream is wary and it does not
    /// look compressible.
    pub fn encode(&self, data: Vec<u8>, level: i32) -> Result<(Encoding, Vec<u8>)> {
        if data.is_empty() {
            return Ok((Encoding::Raw, data));
        }
        if self.wary.load(Ordering::Relaxed) {
            let sample = &data[..data.len().min(SAMPLE_BYTES)];
            if !saves_enough(sample.len(), zstd::bulk::compress(sample, 1).map(|c| c.len()).unwrap_or(usize::MAX)) {
                return Ok((Encoding::Raw, data));
            }
        }
        let level = level.clamp(*STREAM_LEVELS.start(), *STREAM_LEVELS.end());
        let mut guard = self.enc.lock().unwrap();
        let Session { enc, level: current, in_frame } = &mut *guard;
        let mut out: Vec<u8> = Vec::with_capacity(zstd::compress_bound(data.len()) + 1024);
        if level != *current && *in_frame {
            // Single-threaded zstd takes a new level only at a frame's start (set mid-frame,
            // it is accepted and ignored): end the frame here, the next one starts at `level`
            // without the old one's history. The decoder reads the frames in sequence.
            loop {
                let at = out.len();
                let mut ob = OutBuffer::around_pos(&mut out, at);
                if enc.finish(&mut ob, false).map_err(zstd_err)? == 0 {
                    break;
                }
                out.reserve(1024);
            }
            *in_frame = false;
        }
        if level != *current {
            enc.set_parameter(CParameter::CompressionLevel(level)).map_err(zstd_err)?;
            *current = level;
        }
        *in_frame = true;
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
        self.wary.store(!saves_enough(data.len(), out.len()), Ordering::Relaxed);
        Ok((Encoding::ZstdStream, out))
    }
}

/// Whether `encoded` bytes for `raw` save at least 1/16.
fn saves_enough(raw: usize, encoded: usize) -> bool {
    encoded <= raw - raw / MIN_SAVING_DIVISOR
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
            crate::error::Error::new(
                crate::error::Code::InvalidArgument,
                format!("a run of the zstd stream is not valid ({e})"),
            )
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
            bail!(
                InvalidArgument,
                "a run of the zstd stream does not decode to exactly its {expected_len} bytes of blocks"
            );
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
                Ok(n) => bail!(
                    InvalidArgument,
                    "a compressed run decodes to {n} bytes, not the {expected_len} bytes of its blocks"
                ),
                Err(e) => bail!(
                    InvalidArgument,
                    "a compressed run is not valid zstd or is longer than its {expected_len} bytes of blocks ({e})"
                ),
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
    fn a_level_asked_mid_stream_takes_effect() {
        // Words drawn at random from a small vocabulary: compressible, better at higher levels.
        let words = ["osfarm ", "block ", "image ", "digest ", "stage ", "repository ", "chroot ", "debian "];
        let rnd = pseudo_random(1 << 20, 11);
        let text: Vec<u8> = rnd.iter().flat_map(|b| words[(*b % 8) as usize].bytes()).take(2 << 20).collect();
        let runs: Vec<&[u8]> = text.chunks(256 << 10).collect();
        let size = |levels: &dyn Fn(usize) -> i32| {
            let (enc, dec) = (StreamEncoder::new().unwrap(), StreamDecoder::new().unwrap());
            let mut total = 0;
            for (i, r) in runs.iter().enumerate() {
                let (_, part) = enc.encode(r.to_vec(), levels(i)).unwrap();
                assert_eq!(dec.decode(&part, r.len()).unwrap(), *r);
                total += part.len();
            }
            total
        };
        let (low, switched) = (size(&|_| 1), size(&|i| if i == 0 { 1 } else { 9 }));
        assert!(switched * 100 < low * 95, "level 1 then 9: {switched} bytes; level 1 throughout: {low}");
    }

    #[test]
    fn the_stream_compresses_across_runs_and_decodes_in_order() {
        let enc = StreamEncoder::new().unwrap();
        let dec = StreamDecoder::new().unwrap();
        // Text that compresses: the second run, the same bytes, refers to the first.
        let run: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("block {} of an image; ", i * 7919 % 1000).into_bytes())
            .take(256 << 10)
            .collect();
        let (e1, a) = enc.encode(run.clone(), 3).unwrap();
        assert_eq!(e1, Encoding::ZstdStream);
        assert_eq!(dec.decode(&a, run.len()).unwrap(), run);
        let (e2, b) = enc.encode(run.clone(), 3).unwrap();
        assert_eq!(e2, Encoding::ZstdStream);
        assert!(b.len() < a.len() / 20, "{} bytes after {}: the repeat refers to the first run", b.len(), a.len());
        assert_eq!(dec.decode(&b, run.len()).unwrap(), run);

        // Random data goes through the stream once; after that miss the stream is wary and
        // sends random runs raw, outside it, until a run looks compressible again.
        let random = pseudo_random(256 << 10, 0x9e37_79b9_7f4a_7c15);
        let (e3, c) = enc.encode(random.clone(), 3).unwrap();
        assert_eq!(e3, Encoding::ZstdStream);
        assert_eq!(dec.decode(&c, random.len()).unwrap(), random);
        assert!(enc.wary.load(Ordering::Relaxed), "the random run did not pay");
        let more = pseudo_random(128 << 10, 7);
        assert_eq!(enc.encode(more.clone(), 9).unwrap(), (Encoding::Raw, more));
        let (e4, d) = enc.encode(run.clone(), 3).unwrap();
        assert_eq!(e4, Encoding::ZstdStream, "compressible data is back in the stream");
        assert!(d.len() < a.len() / 20, "and still refers to the first run");
        assert_eq!(dec.decode(&d, run.len()).unwrap(), run);
        assert!(!enc.wary.load(Ordering::Relaxed));

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
