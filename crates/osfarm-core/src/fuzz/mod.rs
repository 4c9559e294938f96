//! Fuzz targets: one per parser of bytes that may come from anywhere (a file, a peer).
//! Each is a plain function that, whatever `data` holds, must return (never panic, hang,
//! or allocate more than the input justifies) and, where the input is accepted, keep the
//! parser's promises (re-encoding gives the same thing back, lookups find what is there).
//!
//! `cargo test` runs every target over its stored corpus (`fuzz/corpus/<target>/`) and a
//! few seconds of random mutations of it ([`runner`]); `cargo +nightly fuzz run <target>`
//! (`benches/fuzz.sh`) drives the same functions coverage-guided, for longer. Where a
//! checksum guards a format, the first input byte can ask the target to make it right,
//! so mutations get past it to the parser behind.

use std::io::Write;
use std::path::Path;

use crate::hash::HashAlg;
use crate::index::Index;
use crate::pack::{source_tar, AlignedWriter, InputKind, PackOptions};
use crate::progress::Silent;
use crate::repo::catalog::{Catalog, MAX_SLOTS};
use crate::repo::checksum::checksum64;
use crate::repo::json;
use crate::repo::table::{BlockTable, TableHeader, TABLE_HEADER_LEN};
use crate::transfer::codec::{self, Encoding, StreamDecoder, StreamEncoder};
use crate::transfer::groups::{self, GroupTable, Grouper, COUNT_LEN};

#[cfg(test)]
mod runner;

/// A fuzz target: takes any bytes.
pub type Target = fn(&[u8]);

/// Every target by name (the names of the cargo-fuzz binaries and corpus directories).
pub const TARGETS: [(&str, Target); 7] = [
    ("index", index),
    ("tar", tar),
    ("groups", groups),
    ("zstd_run", zstd_run),
    ("catalog", catalog),
    ("table", table),
    ("json", json),
];

/// The `.osfi` index reader: an accepted index encodes back to exactly its bytes.
pub fn index(data: &[u8]) {
    let Ok(ix) = Index::parse(data) else { return };
    let mut out = Vec::new();
    ix.write_to(&mut out).expect("writing to memory");
    assert_eq!(out, data, "an accepted index must re-encode to its own bytes");
    if let Some(last) = ix.block_count().checked_sub(1) {
        assert!(ix.block_len(last) as u64 <= ix.block_size() as u64);
        let _ = ix.is_zero_block(last);
    }
}

/// Largest archive the tar target writes: gzip input could otherwise expand without end.
const TAR_MAX_SIZE: u64 = 8 << 20;

/// The tar / tar.gz reader of `pack`. First byte: bit 0 keeps header checksums as they
/// are (else they are made right), bit 1 makes the input a gzip stream (with bit 0: the
/// rest is taken as one, as it is), bits 2-3 pick the block size (512 to 4096).
/// An accepted archive packs into one this reader accepts again, unchanged.
pub fn tar(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut input = rest.to_vec();
    if mode & 1 == 0 {
        fix_tar_checksums(&mut input);
    }
    let kind = if mode & 2 != 0 { InputKind::TarGz } else { InputKind::Tar };
    if mode & 3 == 2 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&input).expect("writing to memory");
        input = gz.finish().expect("writing to memory");
    }
    let opts = PackOptions { block_size: 512 << (mode >> 2 & 3), max_size: Some(TAR_MAX_SIZE), ..Default::default() };
    let Ok(archive) = repack(&input, kind, &opts) else { return };
    assert_eq!(archive.len() % opts.block_size as usize, 0);
    let again =
        repack(&archive, InputKind::Tar, &opts).unwrap_or_else(|e| panic!("pack cannot read its own output: {e}"));
    assert!(again == archive, "packing an aligned tar again must not change it");
}

fn repack(input: &[u8], kind: InputKind, opts: &PackOptions) -> crate::Result<Vec<u8>> {
    let mut w = AlignedWriter::new(Vec::new(), opts)?;
    source_tar::read_tar(input, kind, Path::new("fuzz input"), &mut w, &Silent)?;
    Ok(w.finish()?.0)
}

/// Sets the checksum of every 512-byte record that carries the ustar magic.
fn fix_tar_checksums(tar: &mut [u8]) {
    for block in tar.chunks_exact_mut(512) {
        if &block[257..262] != b"ustar" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| b as u32).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}

/// The receiver's GROUPS decoder (`GroupTable::lookup`). First byte: bit 0 picks the hash
/// (SHA-1, SHA-256); second byte ×4: how many digests that follow are an image the
/// receiver holds; the rest is a GROUPS payload. A group found is really that group, and
/// what a source sends for the held image is found whole.
pub fn groups(data: &[u8]) {
    let [mode, held, rest @ ..] = data else { return };
    let alg = if mode & 1 == 0 { HashAlg::Sha1 } else { HashAlg::Sha256 };
    let dl = alg.len();
    let (held, records) = rest.split_at((*held as usize * 4 * dl).min(rest.len() / dl * dl));
    let mut table = GroupTable::new(alg);
    table.insert_image(3, held);

    let check = |records: &[u8], found: &[(u32, Option<groups::Location>)]| {
        for (rec, &(count, loc)) in records.chunks_exact(COUNT_LEN + dl).zip(found) {
            assert_eq!(count, u16::from_le_bytes([rec[0], rec[1]]) as u32);
            if let Some(l) = loc {
                assert_eq!((l.image, l.count as u32), (3, count));
                let span = &held[l.first as usize * dl..(l.first as usize + count as usize) * dl];
                assert_eq!(
                    groups::group_digest(alg, span),
                    &rec[COUNT_LEN..],
                    "a group was found under another's digest"
                );
            }
        }
    };
    if let Ok(found) = table.lookup(records) {
        assert_eq!(found.len(), records.len() / (COUNT_LEN + dl));
        check(records, &found);
    }
    let mut g = Grouper::new(alg);
    let mut own = g.push(held);
    own.extend(g.finish());
    if !own.is_empty() {
        let found = table.lookup(&own).expect("a source's own groups are well-formed");
        assert!(found.iter().all(|f| f.1.is_some()), "every group of a held image is found");
        assert_eq!(found.iter().map(|f| f.0 as usize).sum::<usize>() * dl, held.len());
        check(&own, &found);
    }
}

/// The zstd run decoders. Bytes 1-3: the run's length (up to the 1 MiB a REQUEST may ask
/// for). First byte mod 3: 0 decodes the rest as one zstd run; 1 feeds the stream decoder
/// parts of `u16 length | u16 run length / 16 | bytes`; 2 encodes the rest in runs of 512
/// to 8192 bytes (whole blocks, as runs are) through the stream encoder and checks that
/// they decode back.
pub fn zstd_run(data: &[u8]) {
    let [mode, a, b, c, rest @ ..] = data else { return };
    let expected = u32::from_le_bytes([*a, *b, *c, 0]) as usize % ((1 << 20) + 1);
    match mode % 3 {
        0 => {
            if let Ok(out) = codec::decode(Encoding::Zstd, rest.to_vec(), expected) {
                assert_eq!(out.len(), expected);
            }
        }
        1 => {
            let dec = StreamDecoder::new().expect("zstd decoder");
            let mut at = rest;
            while let [l0, l1, e0, e1, tail @ ..] = at {
                let len = (u16::from_le_bytes([*l0, *l1]) as usize).min(tail.len());
                let want = u16::from_le_bytes([*e0, *e1]) as usize * 16;
                match dec.decode(&tail[..len], want) {
                    Ok(out) => assert_eq!(out.len(), want),
                    Err(_) => break,
                }
                at = &tail[len..];
            }
        }
        _ => {
            let (enc, dec) = (StreamEncoder::new().expect("zstd encoder"), StreamDecoder::new().expect("zstd decoder"));
            for run in rest.chunks((expected % 16 + 1) * 512) {
                let (encoding, part) = enc.encode(run.to_vec(), (*a % 12) as i32).expect("encoding");
                match encoding {
                    Encoding::ZstdStream => assert_eq!(dec.decode(&part, run.len()).expect("own stream"), run),
                    _ => assert_eq!(part, run),
                }
            }
        }
    }
}

/// The repository catalog reader. First byte: bit 0 keeps the input as it is (else the
/// checksum is appended), bit 1 picks the digest length (20, 32). An accepted catalog has
/// slots that fit slot-indexed vectors and encodes back to itself.
pub fn catalog(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 == 0 {
        bytes.extend_from_slice(&checksum64(rest).to_le_bytes());
    }
    let dl = if mode & 2 == 0 { 20 } else { 32 };
    let Ok(c) = Catalog::decode(&bytes, dl, Path::new("fuzz input")) else { return };
    assert!(c.slot_bound() <= MAX_SLOTS as usize, "slot bound {}", c.slot_bound());
    assert!(c.by_slot(c.free_slot()).is_none());
    assert_eq!(Catalog::decode(&c.encode(), dl, Path::new("re-encoded")).expect("own encoding"), c);
}

/// The block-table reader, and lookups, inserts and removals on what it accepted (they
/// must end). The catalog's record of the table is taken from the input's own header;
/// with bit 0 of the first byte clear the entries' checksum is made right first.
pub fn table(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if bytes.len() < TABLE_HEADER_LEN {
        let _ = BlockTable::decode(&bytes, &TableHeader { generation: 0, capacity: 0, used: 0, checksum: 0 });
        return;
    }
    if mode & 1 == 0 {
        let sum = checksum64(&bytes[TABLE_HEADER_LEN..]);
        bytes[40..48].copy_from_slice(&sum.to_le_bytes());
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let expected = TableHeader { generation: u64_at(16), capacity: u64_at(24), used: u64_at(32), checksum: u64_at(40) };
    let Ok(mut t) = BlockTable::decode(&bytes, &expected) else { return };
    assert_eq!(t.len() as u64, expected.used);
    // Digests with the prefixes of the first entries, and new ones.
    let mut digests: Vec<Vec<u8>> =
        t.entries().iter().filter(|e| e.refs > 0).take(4).map(|e| digest_with_prefix(e.prefix())).collect();
    digests.extend((0..4u64).map(|k| digest_with_prefix(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mode as u64)));
    for d in &digests {
        // Entries hold prefixes only: a confirmation that always says "another digest"
        // makes every probe run on to an empty entry.
        assert!(t.find(d, |_| Ok(false)).expect("no confirmation error").is_none());
        match t.find(d, |_| Ok(true)).expect("no confirmation error") {
            Some(i) => {
                let refs = t.entry(i).refs;
                assert_eq!(t.release(i), refs - 1);
            }
            None => assert!(t.insert(d, 1, 2, |_| Ok(true)).expect("insert")),
        }
    }
    t.fit();
}

fn digest_with_prefix(prefix: u64) -> Vec<u8> {
    let mut d = vec![0x5a; 20];
    d[..8].copy_from_slice(&prefix.to_le_bytes());
    d
}

/// The JSON reader of the repository's small files: never panics, and a string quoted by
/// `quote` parses back to itself.
pub fn json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = json::parse(text);
    assert_eq!(json::parse(&json::quote(text)), Ok(json::Value::Str(text.to_string())));
}
