//! SHA-1 of two equal-length messages at once, with the x86 SHA extensions.
//!
//! One message's 80 rounds are a chain: each `sha1rnds4` waits for the one before, so a
//! core running one message leaves most of its SHA unit idle (openssl and the `sha1`
//! crate both hash one message at a time). Two independent messages interleaved fill
//! those gaps: on this project's Xeon (SHA-NI) a core hashes 4 KiB blocks at ~2.2 GB/s
//! this way against ~1.8 GB/s one at a time (three or four lanes run out of the 16 SSE
//! registers and are slower again). Blocks of an image are independent messages of one
//! length, so `HashAlg::block_digests` feeds them here two by two.
//!
//! The rounds are those of the `sha1` crate's SHA-NI backend, written out for two lanes.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// True if this CPU can run `digest_pair`.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("sha") && is_x86_feature_detected!("sse4.1") && is_x86_feature_detected!("ssse3")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Writes the SHA-1 digests of `a` and `b` into `out_a` and `out_b` (20 bytes each).
/// `a` and `b` must have the same length, a multiple of 64 bytes, and `available()` must
/// be true.
pub(crate) fn digest_pair(a: &[u8], b: &[u8], out_a: &mut [u8], out_b: &mut [u8]) {
    assert!(a.len() == b.len() && a.len().is_multiple_of(64) && out_a.len() == 20 && out_b.len() == 20);
    assert!(available(), "digest_pair needs the SHA extensions");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (checked above); the lengths were checked.
    unsafe {
        x86::digest_pair(a, b, out_a, out_b)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    macro_rules! rounds4 {
        ($h0:expr, $h1:expr, $wk:expr, $f:literal) => {
            _mm_sha1rnds4_epu32($h0, _mm_sha1nexte_epu32($h1, $wk), $f)
        };
    }

    macro_rules! schedule {
        ($v0:expr, $v1:expr, $v2:expr, $v3:expr) => {
            _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($v0, $v1), $v2), $v3)
        };
    }

    /// A state per lane: ABCD in one register, E in the top lane of another.
    type State = [(__m128i, __m128i); 2];

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn digest_pair(a: &[u8], b: &[u8], out_a: &mut [u8], out_b: &mut [u8]) {
        let init = (
            _mm_set_epi32(0x67452301, 0xEFCDAB89u32 as i32, 0x98BADCFEu32 as i32, 0x10325476),
            _mm_set_epi32(0xC3D2E1F0u32 as i32, 0, 0, 0),
        );
        let mut state: State = [init, init];
        compress(&mut state, a.as_ptr(), b.as_ptr(), a.len() / 64);
        // Both messages have the same length, a multiple of 64: one padding block, shared.
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        pad[56..].copy_from_slice(&(a.len() as u64 * 8).to_be_bytes());
        compress(&mut state, pad.as_ptr(), pad.as_ptr(), 1);
        for ((abcd, e), out) in state.into_iter().zip([out_a, out_b]) {
            let words = [
                _mm_extract_epi32(abcd, 3),
                _mm_extract_epi32(abcd, 2),
                _mm_extract_epi32(abcd, 1),
                _mm_extract_epi32(abcd, 0),
                _mm_extract_epi32(e, 3),
            ];
            for (o, w) in out.chunks_exact_mut(4).zip(words) {
                o.copy_from_slice(&(w as u32).to_be_bytes());
            }
        }
    }

    /// Runs `n` 64-byte blocks from `pa` and from `pb` through the two lanes.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn compress(state: &mut State, pa: *const u8, pb: *const u8, n: usize) {
        let mask = _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0A0B_0C0D_0E0F);
        let [(mut abcd_a, mut e_a), (mut abcd_b, mut e_b)] = *state;
        for k in 0..n {
            let pa = pa.add(k * 64) as *const __m128i;
            let pb = pb.add(k * 64) as *const __m128i;
            let mut a0 = _mm_shuffle_epi8(_mm_loadu_si128(pa), mask);
            let mut b0 = _mm_shuffle_epi8(_mm_loadu_si128(pb), mask);
            let mut a1 = _mm_shuffle_epi8(_mm_loadu_si128(pa.add(1)), mask);
            let mut b1 = _mm_shuffle_epi8(_mm_loadu_si128(pb.add(1)), mask);
            let mut a2 = _mm_shuffle_epi8(_mm_loadu_si128(pa.add(2)), mask);
            let mut b2 = _mm_shuffle_epi8(_mm_loadu_si128(pb.add(2)), mask);
            let mut a3 = _mm_shuffle_epi8(_mm_loadu_si128(pa.add(3)), mask);
            let mut b3 = _mm_shuffle_epi8(_mm_loadu_si128(pb.add(3)), mask);
            let mut a4;
            let mut b4;
            let mut ah0 = abcd_a;
            let mut bh0 = abcd_b;
            let mut ah1 = _mm_add_epi32(e_a, a0);
            let mut bh1 = _mm_add_epi32(e_b, b0);

            // Rounds 0..16: the message words as loaded.
            ah1 = _mm_sha1rnds4_epu32(ah0, ah1, 0);
            bh1 = _mm_sha1rnds4_epu32(bh0, bh1, 0);
            ah0 = rounds4!(ah1, ah0, a1, 0);
            bh0 = rounds4!(bh1, bh0, b1, 0);
            ah1 = rounds4!(ah0, ah1, a2, 0);
            bh1 = rounds4!(bh0, bh1, b2, 0);
            ah0 = rounds4!(ah1, ah0, a3, 0);
            bh0 = rounds4!(bh1, bh0, b3, 0);

            // Four rounds in both lanes: the next schedule word from the four before it,
            // then the rounds with it (function `$f`).
            macro_rules! four {
                ($x:ident $y:ident $bx:ident $by:ident,
                 $w0:ident $w1:ident $w2:ident $w3:ident $w4:ident,
                 $v0:ident $v1:ident $v2:ident $v3:ident $v4:ident, $f:literal) => {
                    $w4 = schedule!($w0, $w1, $w2, $w3);
                    $v4 = schedule!($v0, $v1, $v2, $v3);
                    $y = rounds4!($x, $y, $w4, $f);
                    $by = rounds4!($bx, $by, $v4, $f);
                };
            }
            // Rounds 16..20
            four!(ah0 ah1 bh0 bh1, a0 a1 a2 a3 a4, b0 b1 b2 b3 b4, 0);
            // Rounds 20..40
            four!(ah1 ah0 bh1 bh0, a1 a2 a3 a4 a0, b1 b2 b3 b4 b0, 1);
            four!(ah0 ah1 bh0 bh1, a2 a3 a4 a0 a1, b2 b3 b4 b0 b1, 1);
            four!(ah1 ah0 bh1 bh0, a3 a4 a0 a1 a2, b3 b4 b0 b1 b2, 1);
            four!(ah0 ah1 bh0 bh1, a4 a0 a1 a2 a3, b4 b0 b1 b2 b3, 1);
            four!(ah1 ah0 bh1 bh0, a0 a1 a2 a3 a4, b0 b1 b2 b3 b4, 1);
            // Rounds 40..60
            four!(ah0 ah1 bh0 bh1, a1 a2 a3 a4 a0, b1 b2 b3 b4 b0, 2);
            four!(ah1 ah0 bh1 bh0, a2 a3 a4 a0 a1, b2 b3 b4 b0 b1, 2);
            four!(ah0 ah1 bh0 bh1, a3 a4 a0 a1 a2, b3 b4 b0 b1 b2, 2);
            four!(ah1 ah0 bh1 bh0, a4 a0 a1 a2 a3, b4 b0 b1 b2 b3, 2);
            four!(ah0 ah1 bh0 bh1, a0 a1 a2 a3 a4, b0 b1 b2 b3 b4, 2);
            // Rounds 60..80
            four!(ah1 ah0 bh1 bh0, a1 a2 a3 a4 a0, b1 b2 b3 b4 b0, 3);
            four!(ah0 ah1 bh0 bh1, a2 a3 a4 a0 a1, b2 b3 b4 b0 b1, 3);
            four!(ah1 ah0 bh1 bh0, a3 a4 a0 a1 a2, b3 b4 b0 b1 b2, 3);
            four!(ah0 ah1 bh0 bh1, a4 a0 a1 a2 a3, b4 b0 b1 b2 b3, 3);
            four!(ah1 ah0 bh1 bh0, a0 a1 a2 a3 a4, b0 b1 b2 b3 b4, 3);

            abcd_a = _mm_add_epi32(abcd_a, ah0);
            abcd_b = _mm_add_epi32(abcd_b, bh0);
            e_a = _mm_sha1nexte_epu32(ah1, e_a);
            e_b = _mm_sha1nexte_epu32(bh1, e_b);
        }
        *state = [(abcd_a, e_a), (abcd_b, e_b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::pseudo_random;
    use sha1::Digest as _;

    #[test]
    fn pairs_equal_the_sha1_crate() {
        if !available() {
            return; // nothing to compare on a CPU without the SHA extensions
        }
        let data = pseudo_random(2 << 20, 11);
        for len in [0, 64, 128, 512, 4096, 65536, 1 << 20] {
            for (a, b) in [(&data[..len], &data[len..2 * len]), (&data[3..3 + len], &data[..len])] {
                let (mut da, mut db) = ([0u8; 20], [0u8; 20]);
                digest_pair(a, b, &mut da, &mut db);
                assert_eq!(da[..], sha1::Sha1::digest(a)[..], "lane a, {len} bytes");
                assert_eq!(db[..], sha1::Sha1::digest(b)[..], "lane b, {len} bytes");
            }
        }
    }
}
