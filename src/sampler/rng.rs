//! Seeded, counter-based Gaussian noise: Philox4x32-10 (Salmon et al., SC'11,
//! as in Random123 and cuRAND) with a Box-Muller transform.
//!
//! The exact mapping, so that any backend can reproduce it bit for bit in the
//! integer part and to f64 rounding in the float part:
//! - key = (seed & 0xffffffff, seed >> 32);
//! - a request's noise tensor of one `stream` (0 = the initial noise, i + 1 = the
//!   noise of sampler step i) is `[64, T']` in the doc's channel-major layout;
//!   element e = c * T' + t comes from block `e / 4`, lane `e % 4`;
//! - the block's counter is (block & 0xffffffff, block >> 32, stream, 0), which
//!   Philox turns into four u32 words w0..w3;
//! - u_k = (w_k + 0.5) / 2^32 lies in (0, 1); lanes (0, 1) are
//!   `sqrt(-2 ln u0) * (cos, sin)(2 pi u1)`, lanes (2, 3) the same with u2, u3;
//!   computed in f64, rounded to f32.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Fills `out` (elements 0..len of one stream, canonical order) with N(0, 1) values.
pub fn fill_normal(seed: u64, stream: u32, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let to_unit = |w: u32| (w as f64 + 0.5) * (1.0 / 4294967296.0);
    for (block, chunk) in out.chunks_mut(4).enumerate() {
        let w = philox4x32_10([block as u32, (block as u64 >> 32) as u32, stream, 0], key);
        let mut z = [0.0f32; 4];
        for pair in 0..2 {
            let r = (-2.0 * to_unit(w[2 * pair]).ln()).sqrt();
            let (s, c) = (2.0 * std::f64::consts::PI * to_unit(w[2 * pair + 1])).sin_cos();
            z[2 * pair] = (r * c) as f32;
            z[2 * pair + 1] = (r * s) as f32;
        }
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn noise_is_standard_normal_and_depends_on_seed_and_stream_only() {
        let mut a = vec![0.0; 64 * 1001];
        fill_normal(7, 3, &mut a);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "mean {mean} var {var}");
        // A prefix is the same whatever the length asked for (counter-based).
        let mut b = vec![0.0; 13];
        fill_normal(7, 3, &mut b);
        assert_eq!(&a[..13], &b[..]);
        let mut c = vec![0.0; 13];
        fill_normal(7, 4, &mut c);
        assert_ne!(b, c);
        fill_normal(8, 3, &mut c);
        assert_ne!(b, c);
    }
}
