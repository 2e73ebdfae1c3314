//! Row softmax of attention scores, in place: the reference (libm `expf` per
//! element, f64 sum) and the fast path of the bf16 backend (a polynomial
//! `exp` and 16-lane f32 sums, written with AVX-512F and AVX2 intrinsics).
//!
//! Why a fast path: in a DiT step of a 30 s clip every attention row has 647
//! (self) or 240 (cross) scores, 24 blocks x 24 heads x 2 sequences deep, and
//! the reference's scalar `expf` calls took about 40 % of attention's time
//! (7.6 of a bf16 step's attention CPU-seconds before, 4.7 after; `bench --profile`).
//!
//! The fast `exp` (Cephes' `expf`: x = n ln2 + r with |r| <= ln2 / 2, a
//! degree-7 polynomial in r, then 2^n) is within 2 ulp of `exp` on the range
//! that matters (tested against f64). Inputs are clamped at -87, where exp is
//! 1.6e-38: after the row max is subtracted, the largest term is 1, so that
//! clamp moves a row's sum by at most 1.6e-38 per element. Every step is an
//! IEEE operation or an FMA (`f32::mul_add`, correctly rounded everywhere),
//! and the sum runs in 16 fixed lanes reduced in a fixed tree, so the AVX-512,
//! AVX2 and scalar builds of it give the same bits (tested), whatever the row's
//! position in a batch.

use super::precision::Isa;

/// How a softmax row is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Softmax {
    /// `f32::exp` per element and an f64 sum: the f32 reference, bit for bit what it always was.
    Reference,
    /// Polynomial exp and 16-lane f32 sums, compiled for this instruction set.
    Fast(Isa),
}

/// Softmax of every `row_len`-long row of `scores`, in place.
///
/// Panics when the `Fast` instruction set is not supported by this CPU (the
/// backend takes it from `Isa::detect`, so that is a programming error).
pub fn softmax_rows(mode: Softmax, scores: &mut [f32], row_len: usize) {
    if row_len == 0 {
        return;
    }
    match mode {
        Softmax::Reference => scores.chunks_mut(row_len).for_each(reference_row),
        Softmax::Fast(isa) => {
            assert!(isa.supported(), "the {} kernel does not run on this CPU", isa.name());
            match isa {
                // SAFETY: the CPU has the features (checked above).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { fast_rows_avx512(scores, row_len) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { fast_rows_avx2(scores, row_len) },
                _ => fast_rows(scores, row_len),
            }
        }
    }
}

fn reference_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Every row of `scores` with `row_fn`.
fn rows_with(scores: &mut [f32], row_len: usize, row_fn: impl Fn(&mut [f32])) {
    scores.chunks_mut(row_len).for_each(row_fn);
}

#[cfg(target_arch = "x86_64")]
unsafe fn fast_rows_avx512(scores: &mut [f32], row_len: usize) {
    // SAFETY: the caller checked that the CPU has AVX-512F.
    rows_with(scores, row_len, |row| unsafe { simd::row_avx512(row) })
}

#[cfg(target_arch = "x86_64")]
unsafe fn fast_rows_avx2(scores: &mut [f32], row_len: usize) {
    // SAFETY: the caller checked that the CPU has AVX2 and FMA.
    rows_with(scores, row_len, |row| unsafe { simd::row_avx2(row) })
}

fn fast_rows(scores: &mut [f32], row_len: usize) {
    rows_with(scores, row_len, row_scalar)
}

/// Summation lanes: one zmm, or two ymm; the same lanes on every build.
const LANES: usize = 16;

/// The scalar twin of the SIMD rows, lane for lane: whole 16-element chunks
/// feed the 16 lanes, the tail's element i feeds lane i, then a fixed tree.
fn row_scalar(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; LANES];
    for (i, x) in row.iter_mut().enumerate() {
        *x = exp_nonpositive(*x - max);
        lanes[i % LANES] += *x;
    }
    let inv = 1.0 / reduce_lanes(lanes);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Sum of the 16 lanes in a fixed tree: 16 -> 8 -> 4 -> 2 -> 1.
fn reduce_lanes(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    //! `row_scalar` with AVX-512F (one zmm of 16 lanes) and AVX2 + FMA (two
    //! ymm of 8), written with intrinsics: the compiler's own vectorisation of
    //! the scalar loop used gathers and scatters.
    use std::arch::x86_64::*;

    use super::{EXP_CLAMP, LANES, LN2_HI, LN2_LO, LOG2_E, POLY, ROUNDING_MAGIC, exp_nonpositive, reduce_lanes};

    /// `exp_nonpositive` on 16 lanes, operation for operation.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(EXP_CLAMP));
        let magic = _mm512_set1_ps(ROUNDING_MAGIC);
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2_E), magic);
        let n = _mm512_sub_ps(t, magic);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(POLY[0]);
        for &c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
        let n_int = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
        _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), _mm512_slli_epi32::<23>(n_int)))
    }

    /// `exp_nonpositive` on 8 lanes, operation for operation.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::backend::cpu) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_CLAMP));
        let magic = _mm256_set1_ps(ROUNDING_MAGIC);
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2_E), magic);
        let n = _mm256_sub_ps(t, magic);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for &c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
        let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32::<23>(n_int)))
    }

    /// Softmax of one row (`row_scalar`'s arithmetic) with AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn row_avx512(row: &mut [f32]) {
        let (chunks, tail) = row.as_chunks_mut::<LANES>();
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in chunks.iter() {
            // SAFETY: a chunk is 16 f32.
            vmax = _mm512_max_ps(vmax, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        let mut max = _mm512_reduce_max_ps(vmax);
        max = tail.iter().copied().fold(max, f32::max);
        let (vmax, mut sum) = (_mm512_set1_ps(max), _mm512_setzero_ps());
        for c in chunks.iter_mut() {
            // SAFETY: a chunk is 16 f32.
            let e = unsafe { exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), vmax)) };
            sum = _mm512_add_ps(sum, e);
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), e) };
        }
        let mut lanes = [0.0f32; LANES];
        // SAFETY: lanes holds 16 f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sum) };
        for (i, x) in tail.iter_mut().enumerate() {
            *x = exp_nonpositive(*x - max);
            lanes[i] += *x;
        }
        let inv = _mm512_set1_ps(1.0 / reduce_lanes(lanes));
        for c in chunks.iter_mut() {
            // SAFETY: a chunk is 16 f32.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), inv)) };
        }
        let inv = _mm512_cvtss_f32(inv);
        tail.iter_mut().for_each(|x| *x *= inv);
    }

    /// Softmax of one row (`row_scalar`'s arithmetic) with AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_avx2(row: &mut [f32]) {
        let (chunks, tail) = row.as_chunks_mut::<LANES>();
        let mut max = f32::NEG_INFINITY;
        if !chunks.is_empty() {
            let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in chunks.iter() {
                // SAFETY: a chunk is 16 f32: two loads of 8.
                unsafe {
                    vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(c.as_ptr()));
                    vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(c.as_ptr().add(8)));
                }
            }
            let mut m = [0.0f32; 8];
            // SAFETY: m holds 8 f32.
            unsafe { _mm256_storeu_ps(m.as_mut_ptr(), vmax) };
            max = m.iter().copied().fold(max, f32::max);
        }
        max = tail.iter().copied().fold(max, f32::max);
        let vmax = _mm256_set1_ps(max);
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in chunks.iter_mut() {
            // SAFETY: a chunk is 16 f32: lanes 0..8 and 8..16.
            unsafe {
                let p = c.as_mut_ptr();
                let e_lo = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
                let e_hi = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), vmax));
                lo = _mm256_add_ps(lo, e_lo);
                hi = _mm256_add_ps(hi, e_hi);
                _mm256_storeu_ps(p, e_lo);
                _mm256_storeu_ps(p.add(8), e_hi);
            }
        }
        let mut lanes = [0.0f32; LANES];
        // SAFETY: lanes holds 16 f32.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        }
        for (i, x) in tail.iter_mut().enumerate() {
            *x = exp_nonpositive(*x - max);
            lanes[i] += *x;
        }
        let s = 1.0 / reduce_lanes(lanes);
        let inv = _mm256_set1_ps(s);
        for c in chunks.iter_mut() {
            // SAFETY: a chunk is 16 f32.
            unsafe {
                let p = c.as_mut_ptr();
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
                _mm256_storeu_ps(p.add(8), _mm256_mul_ps(_mm256_loadu_ps(p.add(8)), inv));
            }
        }
        tail.iter_mut().for_each(|x| *x *= s);
    }
}

/// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer
/// (to nearest, ties to even) held in the low bits of the mantissa.
const ROUNDING_MAGIC: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts (Cephes): n * LN2_HI is exact for |n| < 2^9.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial: e^r = 1 + r + r^2 (((((P0 r + P1) r + P2) r + P3) r + P4) r + P5).
const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// Below this, 2^n with the polynomial's value would leave the normal range.
pub(super) const EXP_CLAMP: f32 = -87.0;

/// e^x for x <= 0 (x > 0 is not an input here: scores minus their row max).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(EXP_CLAMP);
    let t = x.mul_add(LOG2_E, ROUNDING_MAGIC);
    let n = t - ROUNDING_MAGIC;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n: n (an integer in -126..=0) added to y's exponent field.
    let n_int = t.to_bits().wrapping_sub(ROUNDING_MAGIC.to_bits()) as i32;
    f32::from_bits((y.to_bits() as i32).wrapping_add(n_int << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_exp() {
        let mut worst = 0;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_nonpositive(x), want));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) > 0.0 && exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits_close_to_the_reference() {
        let len = 77; // not a multiple of the lanes
        let scores: Vec<f32> = (0..len * 5).map(|i| ((i * 2654435761usize % 2000) as f32 / 100.0) - 10.0).collect();
        let mut reference = scores.clone();
        softmax_rows(Softmax::Reference, &mut reference, len);
        let mut results = Vec::new();
        for isa in Isa::available() {
            let mut fast = scores.clone();
            softmax_rows(Softmax::Fast(isa), &mut fast, len);
            results.push((isa, fast));
        }
        for (isa, fast) in &results {
            assert_eq!(fast, &results[0].1, "{isa:?} differs from {:?}", results[0].0);
        }
        // Each probability: exp within 2 ulp, a sum of 77 terms in f32 and a
        // product: a few 1e-7 relative; 1e-6 is a bound, not a fit.
        for (f, r) in results[0].1.iter().zip(&reference) {
            assert!((f - r).abs() <= 1e-6 * r.abs() + 1e-12, "{f} vs {r}");
        }
    }
}
