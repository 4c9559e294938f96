//! A fast 64-bit checksum for the repository's own files (table, catalog, have-bitmaps).
//!
//! It detects truncation, torn writes and disk rot, not tampering: four independent lanes
//! each absorb one 8-byte word per step by `lane = rotl((lane ^ word) * K, 31)`, a bijection
//! of the lane for a fixed word, so changing any single word always changes the result;
//! the length is mixed in at the end. It runs at memory speed (the table is tens of MB
//! and is checked on every load).

const K: u64 = 0x9FB2_1C65_1E98_DF25;
const SEEDS: [u64; 4] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0x27D4_EB2F_1656_67C5];

#[inline(always)]
fn absorb(lane: u64, word: u64) -> u64 {
    (lane ^ word).wrapping_mul(K).rotate_left(31)
}

pub fn checksum64(data: &[u8]) -> u64 {
    let mut acc = SEEDS;
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = absorb(*a, u64::from_le_bytes(c[l * 8..l * 8 + 8].try_into().unwrap()));
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 32];
        tail[..rest.len()].copy_from_slice(rest);
        for (l, a) in acc.iter_mut().enumerate() {
            *a = absorb(*a, u64::from_le_bytes(tail[l * 8..l * 8 + 8].try_into().unwrap()));
        }
    }
    let mut h = data.len() as u64;
    for a in acc {
        h = absorb(h, a);
    }
    // Final avalanche (murmur3 fmix64).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_flipped_bit_or_truncation_changes_it() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let c = checksum64(&data);
        for i in (0..data.len()).step_by(37) {
            for bit in [0, 3, 7] {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(checksum64(&d), c);
            }
        }
        assert_ne!(checksum64(&data[..999]), c);
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(checksum64(&longer), c);
    }
}
