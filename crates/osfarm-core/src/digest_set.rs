//! Hashing of digests for in-memory sets and maps. Digests are already uniformly
//! distributed, so their first eight bytes are a perfect hash: no need for SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A digest used as a set or map key; hashes to its first eight bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestKey<'a>(pub &'a [u8]);

impl Hash for DigestKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(prefix64(self.0));
    }
}

/// The first eight bytes of a digest as a number.
pub fn prefix64(digest: &[u8]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("digests are at least 8 bytes"))
}

/// A hasher that passes a `DigestKey`'s prefix through unchanged.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than DigestKey; fold them in plainly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type DigestSet<'a> = HashSet<DigestKey<'a>, BuildHasherDefault<PrefixHasher>>;
pub type DigestMap<'a, V> = HashMap<DigestKey<'a>, V, BuildHasherDefault<PrefixHasher>>;
