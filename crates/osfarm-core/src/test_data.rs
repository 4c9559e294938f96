//! Deterministic test data shared by the unit tests (xorshift64: fast, and equal seeds
//! give equal bytes).

/// `len` pseudo-random bytes from `seed`.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 4 KiB block named by a number: 0 is the all-zero block, others are pseudo-random.
pub(crate) fn block(seed: u32) -> Vec<u8> {
    if seed == 0 {
        return vec![0; 4096];
    }
    pseudo_random(4096, (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// An image made of numbered 4 KiB blocks (see [`block`]).
pub(crate) fn image(seeds: &[u32]) -> Vec<u8> {
    seeds.iter().flat_map(|&s| block(s)).collect()
}

/// The colliding 320-byte prefixes of the SHAttered PDFs (shattered-1.pdf and
/// shattered-2.pdf, Stevens et al. 2017): five 64-byte SHA-1 blocks each, the last two the
/// near-collision blocks. Shared with the TypeScript tests (`tests/data/shattered.hex`).
pub(crate) fn shattered_prefixes() -> (Vec<u8>, Vec<u8>) {
    let text = include_str!("../tests/data/shattered.hex");
    let mut halves =
        text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(|l| hex::decode(l.trim()).unwrap());
    (halves.next().unwrap(), halves.next().unwrap())
}
