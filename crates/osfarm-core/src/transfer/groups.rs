//! Content-defined groups of block digests (push protocol v2, docs/protocol.md).
//!
//! Sending every block digest costs 0.5 % of an image (20 bytes per 4 KiB block) even
//! when the receiver holds almost all of it. Instead, both sides cut the sequence of
//! block digests into groups by a rule that depends only on the digests, and the source
//! sends one digest per group; the receiver asks for the block digests of the groups it
//! does not know. Because the cut points depend on content, a run of blocks the receiver
//! holds somewhere (at another offset, in another image) yields the same groups after
//! its first cut point.
//!
//! The rule: a group ends after block *i* when `u32le(digest_i[0..4]) % 32 == 31`, or
//! when it has reached [`MAX_GROUP`] blocks, or at the end of the image. The all-zero
//! digest of a zero block never cuts (0 % 32 = 0), so long runs of zeros form full groups
//! instead of one group per block. The group digest is
//! `H("osfarm group v1\0" || u32le(count) || digest_0 || … || digest_{count-1})` with the
//! repository's hash.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::bail;
use crate::error::Result;
use crate::hash::{HashAlg, MAX_DIGEST_LEN};

/// Cut when the low bits of a digest's first word equal this (1 in `CUT_MODULUS`).
const CUT_MODULUS: u32 = 32;
const CUT_VALUE: u32 = 31;
/// Longest group: bounds the cost of a miss when no digest cuts for long.
pub const MAX_GROUP: usize = 256;
const DOMAIN: &[u8] = b"osfarm group v1\0";
/// Bytes of a group record's count on the wire (u16, little-endian).
pub const COUNT_LEN: usize = 2;

/// True if a group ends after a block with this digest.
pub fn is_cut(digest: &[u8]) -> bool {
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % CUT_MODULUS == CUT_VALUE
}

/// The lengths (in blocks) of the complete groups at the start of `digests`, which
/// begins at a group boundary; the blocks after the last one are left for later.
pub fn cut_lengths(digests: &[u8], dl: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut len = 0;
    for d in digests.chunks_exact(dl) {
        len += 1;
        if len == MAX_GROUP || is_cut(d) {
            out.push(len);
            len = 0;
        }
    }
    out
}

/// The digest of a group of consecutive block digests.
pub fn group_digest(alg: HashAlg, digests: &[u8]) -> Vec<u8> {
    let count = (digests.len() / alg.len()) as u32;
    alg.digest_parts(&[DOMAIN, &count.to_le_bytes(), digests])
}

/// Appends the wire records (`u16le count || group digest`) of consecutive groups.
fn encode_groups(alg: HashAlg, digests: &[u8], lengths: &[usize], out: &mut Vec<u8>) {
    let dl = alg.len();
    let mut at = 0;
    for &n in lengths {
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&group_digest(alg, &digests[at * dl..(at + n) * dl]));
        at += n;
    }
}

/// The source's side: takes block digests as they are produced and returns the records of
/// the groups they complete.
pub struct Grouper {
    alg: HashAlg,
    /// Digests of the group in progress.
    pending: Vec<u8>,
    /// Blocks in complete groups so far.
    grouped: u64,
}

impl Grouper {
    pub fn new(alg: HashAlg) -> Grouper {
        Grouper { alg, pending: Vec::new(), grouped: 0 }
    }

    /// Blocks covered by the records returned so far.
    pub fn grouped(&self) -> u64 {
        self.grouped
    }

    /// Takes the next digests; returns the records of the groups they complete.
    pub fn push(&mut self, digests: &[u8]) -> Vec<u8> {
        let dl = self.alg.len();
        self.pending.extend_from_slice(digests);
        let lengths = cut_lengths(&self.pending, dl);
        let mut out = Vec::with_capacity(lengths.len() * (COUNT_LEN + dl));
        encode_groups(self.alg, &self.pending, &lengths, &mut out);
        let done: usize = lengths.iter().sum();
        self.pending.drain(..done * dl);
        self.grouped += done as u64;
        out
    }

    /// Ends the sequence: the record of the last, uncut group (empty if there is none).
    pub fn finish(&mut self) -> Vec<u8> {
        let dl = self.alg.len();
        let n = self.pending.len() / dl;
        let mut out = Vec::new();
        if n > 0 {
            encode_groups(self.alg, &self.pending, &[n], &mut out);
        }
        self.pending.clear();
        self.grouped += n as u64;
        out
    }
}

/// One group of a `GROUPS` payload, as the receiver resolved it.
pub struct GroupLookup {
    pub count: u32,
    /// The group's block digests, if the receiver holds a group with this digest.
    pub digests: Option<Vec<u8>>,
}

/// Where a group lies: `count` blocks from `first` in image `image` (the caller's id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub image: u32,
    pub first: u32,
    pub count: u16,
}

/// The receiver's side: every group of the images inserted, by group digest. It keeps
/// only locations (not the images' digests): ~1/32 of the block count in entries.
pub struct GroupTable {
    alg: HashAlg,
    map: HashMap<[u8; MAX_DIGEST_LEN], Location>,
}

fn key(d: &[u8]) -> [u8; MAX_DIGEST_LEN] {
    let mut k = [0u8; MAX_DIGEST_LEN];
    k[..d.len()].copy_from_slice(d);
    k
}

impl GroupTable {
    pub fn new(alg: HashAlg) -> GroupTable {
        GroupTable { alg, map: HashMap::new() }
    }

    /// Groups one image's block digests (hashing the groups in parallel).
    pub fn insert_image(&mut self, image: u32, digests: &[u8]) {
        let dl = self.alg.len();
        let blocks = digests.len() / dl;
        let mut lengths = cut_lengths(digests, dl);
        let cut: usize = lengths.iter().sum();
        if blocks > cut {
            lengths.push(blocks - cut);
        }
        let mut spans = Vec::with_capacity(lengths.len());
        let mut first = 0usize;
        for n in lengths {
            spans.push((first, n));
            first += n;
        }
        let alg = self.alg;
        let keys: Vec<[u8; MAX_DIGEST_LEN]> = spans
            .par_iter()
            .with_min_len(256)
            .map(|&(first, n)| key(&group_digest(alg, &digests[first * dl..(first + n) * dl])))
            .collect();
        self.map.reserve(keys.len());
        for (k, (first, n)) in keys.into_iter().zip(spans) {
            self.map.entry(k).or_insert(Location { image, first: first as u32, count: n as u16 });
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Resolves the records of a `GROUPS` payload (`u16le count || group digest`, each)
    /// to each group's count and, if known, its location. A count of 0 or above
    /// [`MAX_GROUP`], or a payload that is not whole records, is an `InvalidArgument` error.
    pub fn lookup(&self, records: &[u8]) -> Result<Vec<(u32, Option<Location>)>> {
        let dl = self.alg.len();
        let rl = COUNT_LEN + dl;
        if records.is_empty() || !records.len().is_multiple_of(rl) {
            bail!(InvalidArgument, "{} bytes of groups are not a whole number of {rl}-byte records", records.len());
        }
        records
            .chunks_exact(rl)
            .map(|r| {
                let count = u16::from_le_bytes([r[0], r[1]]);
                if count == 0 || count as usize > MAX_GROUP {
                    bail!(InvalidArgument, "a group of {count} blocks (1 to {MAX_GROUP} allowed)");
                }
                Ok((count as u32, self.map.get(&key(&r[COUNT_LEN..])).filter(|l| l.count == count).copied()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(alg: HashAlg, seeds: impl Iterator<Item = u64>) -> Vec<u8> {
        seeds.flat_map(|s| alg.digest_parts(&[&s.to_le_bytes()])).collect()
    }

    fn group_all(alg: HashAlg, d: &[u8], window: usize) -> (Vec<u8>, u64) {
        let mut g = Grouper::new(alg);
        let mut out = Vec::new();
        for w in d.chunks(window * alg.len()) {
            out.extend(g.push(w));
        }
        out.extend(g.finish());
        (out, g.grouped())
    }

    #[test]
    fn groups_do_not_depend_on_windows() {
        let alg = HashAlg::Sha1;
        let d = digests(alg, 0..10_000);
        let (a, na) = group_all(alg, &d, 2048);
        let (b, nb) = group_all(alg, &d, 7);
        assert_eq!(a, b);
        assert_eq!((na, nb), (10_000, 10_000));
        let groups = a.len() / (COUNT_LEN + alg.len());
        // ~1 cut in 32 blocks.
        assert!((200..500).contains(&groups), "{groups} groups");
    }

    #[test]
    fn shifted_content_cuts_identically_after_the_first_cut() {
        let alg = HashAlg::Sha1;
        let dl = alg.len();
        let common = digests(alg, 1000..6000);
        let mut shifted = digests(alg, 50_000..50_037);
        shifted.extend_from_slice(&common);
        let (a, _) = group_all(alg, &common, 2048);
        let (b, _) = group_all(alg, &shifted, 2048);
        let rl = COUNT_LEN + dl;
        let ra: Vec<&[u8]> = a.chunks(rl).collect();
        let rb: Vec<&[u8]> = b.chunks(rl).collect();
        // Every group of the unshifted sequence but its first appears, in order, in the shifted one.
        let tail = &ra[1..];
        let at = rb.iter().position(|r| *r == tail[0]).expect("the second group recurs");
        assert_eq!(&rb[at..at + tail.len()], tail);
        // And a table of the unshifted image locates those groups, digests and all.
        let mut table = GroupTable::new(alg);
        table.insert_image(7, &common);
        let found = table.lookup(&b).unwrap();
        let hits: usize = found.iter().filter(|g| g.1.is_some()).map(|g| g.0 as usize).sum();
        assert!(hits >= 5000 - MAX_GROUP, "{hits} blocks resolved");
        let mut at_block = 0usize;
        for &(count, loc) in &found {
            if let Some(l) = loc {
                assert_eq!((l.image, l.count as u32), (7, count));
                let held = &common[l.first as usize * dl..(l.first as usize + count as usize) * dl];
                assert_eq!(held, &shifted[at_block * dl..(at_block + count as usize) * dl]);
            }
            at_block += count as usize;
        }
    }

    #[test]
    fn zero_runs_form_full_groups() {
        let alg = HashAlg::Sha1;
        let zeros = vec![0u8; 1000 * alg.len()];
        assert_eq!(cut_lengths(&zeros, alg.len()), vec![MAX_GROUP; 3]);
    }

    #[test]
    fn bad_records_are_refused() {
        let alg = HashAlg::Sha1;
        let table = GroupTable::new(alg);
        assert!(table.lookup(&[1, 0, 2]).is_err());
        let mut r = vec![0u8; COUNT_LEN + alg.len()];
        assert!(table.lookup(&r).is_err());
        r[0] = 1;
        r[1] = 1;
        assert!(table.lookup(&r).is_err());
        r[1] = 0;
        assert_eq!(table.lookup(&r).unwrap(), vec![(1, None)]);
    }
}
