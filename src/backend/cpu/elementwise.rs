//! Row- and element-wise ops of the DiT: activations, timestep features,
//! learned positions and the prepend/drop of the timestep token.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
use super::precision::Isa;
use super::softmax::{EXP_CLAMP, Softmax, exp_nonpositive};
use crate::error::Result;
use crate::graph::{Op, Segments, TensorId};

/// SiLU: `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out[i] = silu(x[i])`, in parallel; `out` is as long as `x`.
pub fn silu_all(x: &[f32], out: &mut [f32]) {
    out.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = silu(v));
}

/// `x` is `[M, 2F]`; `out[r, j] = x[r, j] * silu(x[r, F + j])`.
pub fn swiglu(x: &[f32], f: usize, out: &mut [f32]) {
    out.par_chunks_mut(f).zip(x.par_chunks(2 * f)).for_each(|(o, x)| {
        let (u, g) = x.split_at(f);
        for j in 0..f {
            o[j] = u[j] * silu(g[j]);
        }
    });
}

/// SiLU with the bf16 backend's exp (`softmax::exp_nonpositive`, within 2 ulp
/// of `f32::exp`), taken of `-|g|` so it never overflows:
/// `sigmoid(g) = 1 / (1 + e)` for `g >= 0` and `e / (1 + e)` below, `e = exp(-|g|)`.
/// Below `EXP_CLAMP` (-87), where the fast exp stops at e^-87, the numerator
/// is 0: `g e^g` is below 1e-35 there, while `g e^-87` would grow with |g|.
/// The reference's libm `exp` per element made SwiGLU 2-5 % of a bf16 step.
#[inline(always)]
fn silu_fast(g: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    let numerator = if g >= 0.0 {
        1.0
    } else if g < EXP_CLAMP {
        0.0
    } else {
        e
    };
    g * (numerator / (1.0 + e))
}

/// `swiglu` with `silu_fast`: the bf16 backend's. Every instruction set gives
/// the same bits (`silu_fast`'s operations, lane by lane); AVX-512 machines
/// run the AVX2 loop, which this op's memory traffic, not its arithmetic, bounds.
pub fn swiglu_fast(isa: Isa, x: &[f32], f: usize, out: &mut [f32]) {
    out.par_chunks_mut(f).zip(x.par_chunks(2 * f)).for_each(|(o, x)| {
        let (u, g) = x.split_at(f);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA are present (an AVX-512F CPU has both: `Isa::available`).
            Isa::Avx2Fma | Isa::Avx512 => unsafe { simd::swiglu_row_avx2(u, g, o) },
            _ => swiglu_row_fast(u, g, o),
        }
    });
}

fn swiglu_row_fast(u: &[f32], g: &[f32], out: &mut [f32]) {
    for ((o, &u), &g) in out.iter_mut().zip(u).zip(g) {
        *o = u * silu_fast(g);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::super::softmax::EXP_CLAMP;
    use super::super::softmax::simd::exp8;

    /// `swiglu_row_fast` on 8 lanes at a time, operation for operation.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_row_avx2(u: &[f32], g: &[f32], out: &mut [f32]) {
        let n = out.len().min(u.len()).min(g.len());
        let chunks = n / 8;
        let (abs_mask, one, zero) =
            (_mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF)), _mm256_set1_ps(1.0), _mm256_setzero_ps());
        for i in 0..chunks {
            // SAFETY: lanes 8 i .. 8 i + 8 lie inside all three slices (n is their shortest length).
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(8 * i));
                let uv = _mm256_loadu_ps(u.as_ptr().add(8 * i));
                let minus_abs = _mm256_sub_ps(zero, _mm256_and_ps(gv, abs_mask));
                let e = exp8(minus_abs);
                let non_negative = _mm256_cmp_ps::<_CMP_GE_OQ>(gv, zero);
                let below_clamp = _mm256_cmp_ps::<_CMP_LT_OQ>(gv, _mm256_set1_ps(EXP_CLAMP));
                let numerator = _mm256_andnot_ps(below_clamp, _mm256_blendv_ps(e, one, non_negative));
                let silu = _mm256_mul_ps(gv, _mm256_div_ps(numerator, _mm256_add_ps(one, e)));
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), _mm256_mul_ps(uv, silu));
            }
        }
        super::swiglu_row_fast(&u[8 * chunks..n], &g[8 * chunks..n], &mut out[8 * chunks..n]);
    }
}

/// `out[b] = [cos(2 pi t_b w_j) for j, sin(2 pi t_b w_j) for j]`, angles in f64.
pub fn timestep_features(t: &[f32], w: &[f32], out: &mut [f32]) {
    let n = w.len();
    for (b, &tb) in t.iter().enumerate() {
        for j in 0..n {
            let a = 2.0 * std::f64::consts::PI * tb as f64 * w[j] as f64;
            out[b * 2 * n + j] = a.cos() as f32;
            out[b * 2 * n + n + j] = a.sin() as f32;
        }
    }
}

/// `out[r] = x[r] + table[r - start of r's sequence] * scale`.
pub fn add_positional(x: &[f32], cols: usize, table: &[f32], scale: f32, segments: &Segments, out: &mut [f32]) {
    for b in 0..segments.count() {
        let range = segments.range(b);
        let start = range.start;
        out[range.start * cols..range.end * cols].par_chunks_mut(cols).enumerate().for_each(|(p, o)| {
            let (xr, pe) = (&x[(start + p) * cols..], &table[p * cols..]);
            for i in 0..cols {
                o[i] = xr[i] + pe[i] * scale;
            }
        });
    }
}

/// Per sequence b: row `first[b]`, then the rows of `rest` for b.
pub fn prepend_row(first: &[f32], rest: &[f32], cols: usize, rest_seg: &Segments, out_seg: &Segments, out: &mut [f32]) {
    for b in 0..rest_seg.count() {
        let (r, o) = (rest_seg.range(b), out_seg.range(b));
        out[o.start * cols..(o.start + 1) * cols].copy_from_slice(&first[b * cols..(b + 1) * cols]);
        out[(o.start + 1) * cols..o.end * cols].copy_from_slice(&rest[r.start * cols..r.end * cols]);
    }
}

/// `prepend_row` and `add_positional` in one pass: per sequence b, row p of
/// `out` is `first[b]` (p = 0) or row p - 1 of b in `rest`, plus
/// `table[p] * scale`; the same arithmetic as the two ops, without storing
/// the prepended rows.
pub fn prepend_row_positional(
    first: &[f32],
    rest: &[f32],
    cols: usize,
    (table, scale): (&[f32], f32),
    rest_seg: &Segments,
    out_seg: &Segments,
    out: &mut [f32],
) {
    for b in 0..rest_seg.count() {
        let (r, o) = (rest_seg.range(b), out_seg.range(b));
        out[o.start * cols..o.end * cols].par_chunks_mut(cols).enumerate().for_each(|(p, o)| {
            let xr = if p == 0 { &first[b * cols..] } else { &rest[(r.start + p - 1) * cols..] };
            let pe = &table[p * cols..];
            for i in 0..cols {
                o[i] = xr[i] + pe[i] * scale;
            }
        });
    }
}

/// Per sequence b: the rows of `x` for b except the first.
pub fn drop_first_row(x: &[f32], cols: usize, x_seg: &Segments, out_seg: &Segments, out: &mut [f32]) {
    for b in 0..x_seg.count() {
        let (r, o) = (x_seg.range(b), out_seg.range(b));
        out[o.start * cols..o.end * cols].copy_from_slice(&x[(r.start + 1) * cols..r.end * cols]);
    }
}

impl Operands<'_> {
    pub(super) fn silu(&self, x: TensorId, out: TensorId) -> Result<()> {
        silu_all(self.input(x), self.output(out));
        Ok(())
    }

    /// The reference's libm SiLU, or the bf16 backend's fast one.
    pub(super) fn swiglu(&self, x: TensorId, out: TensorId) -> Result<()> {
        let (x, f, out) = (self.input(x), self.desc(out).cols, self.output(out));
        match self.backend.softmax() {
            Softmax::Reference => swiglu(x, f, out),
            Softmax::Fast(isa) => swiglu_fast(isa, x, f, out),
        }
        Ok(())
    }

    pub(super) fn timestep_features(&self, op: &Op) -> Result<()> {
        let Op::TimestepFeatures { t, w, out } = op else { return Err(wrong_op(op, "timestep_features")) };
        timestep_features(self.input(*t), self.weight(*w)?, self.output(*out));
        Ok(())
    }

    pub(super) fn add_positional(&self, op: &Op) -> Result<()> {
        let Op::AddPositional { x, table, scale, segments, out } = op else {
            return Err(wrong_op(op, "add_positional"));
        };
        let cols = self.desc(*x).cols;
        add_positional(self.input(*x), cols, self.weight(*table)?, *scale, self.seg(*segments), self.output(*out));
        Ok(())
    }

    pub(super) fn prepend_row(&self, op: &Op) -> Result<()> {
        let Op::PrependRow { first, rest, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_row"));
        };
        let (first, rest, cols) = (self.input(*first), self.input(*rest), self.desc(*out).cols);
        prepend_row(first, rest, cols, self.seg(*rest_segments), self.seg(*out_segments), self.output(*out));
        Ok(())
    }

    pub(super) fn prepend_row_positional(&self, op: &Op) -> Result<()> {
        let Op::PrependRowPositional { first, rest, table, scale, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_row_positional"));
        };
        prepend_row_positional(
            self.input(*first),
            self.input(*rest),
            self.desc(*out).cols,
            (self.weight(*table)?, *scale),
            self.seg(*rest_segments),
            self.seg(*out_segments),
            self.output(*out),
        );
        Ok(())
    }

    pub(super) fn drop_first_row(&self, op: &Op) -> Result<()> {
        let Op::DropFirstRow { x, x_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "drop_first_row"));
        };
        let (x, cols) = (self.input(*x), self.desc(*out).cols);
        drop_first_row(x, cols, self.seg(*x_segments), self.seg(*out_segments), self.output(*out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 2654435761usize % 4001) as f32 - 2000.0) / 100.0).collect()
    }

    #[test]
    fn fast_swiglu_gives_the_same_bits_on_every_instruction_set() {
        // 61 columns: seven 8-lane chunks and a tail; special gates at the start.
        let f = 61;
        let mut x: Vec<f32> = gates(3 * 2 * f).iter().map(|g| g * 0.37 + 0.1).collect();
        for (row, g) in [0.0f32, -0.0, 1e-30, -1e-30, 88.0, -86.9, -87.0, -88.0, -150.0, f32::NAN, 3.0e38, -3.0e38]
            .iter()
            .enumerate()
        {
            x[f + row] = *g;
        }
        let mut want = vec![0.0f32; 3 * f];
        for (o, x) in want.chunks_mut(f).zip(x.chunks(2 * f)) {
            swiglu_row_fast(&x[..f], &x[f..], o);
        }
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; 3 * f];
            swiglu_fast(isa, &x, f, &mut out);
            let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{isa:?}: {out:?} vs {want:?}");
        }
    }

    /// Bound: `exp_nonpositive` is within 2 ulp (2^-22 relative) of `exp`, which
    /// reaches sigmoid through `e` and `1 + e` (each at most that relative
    /// error); the division and the two products round once each (2^-24); the
    /// reference's own libm exp and roundings add about as much again. So
    /// 2 * 2^-22 + 3 * 2^-24 + (2^-23 + 3 * 2^-24) < 1.6e-6 relative. Below
    /// -87 the fast SiLU is 0 (the reference is below 1e-35); both are NaN at -inf.
    #[test]
    fn fast_swiglu_is_within_its_rounding_bound_of_the_reference() {
        let f = 4001;
        let g = gates(f);
        let x: Vec<f32> = g.iter().map(|g| 1.0 - g * 0.01).chain(g.iter().copied()).collect();
        let (mut fast, mut reference) = (vec![0.0f32; f], vec![0.0f32; f]);
        swiglu(&x, f, &mut reference);
        for isa in Isa::available() {
            swiglu_fast(isa, &x, f, &mut fast);
            for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
                assert!((a - b).abs() <= 1.6e-6 * b.abs(), "{isa:?} gate {}: {a} vs {b}", g[i]);
            }
        }
        for g in [-87.5f32, -100.0, -1000.0, -3.0e38] {
            let (fast, reference) = (silu_fast(g), silu(g));
            assert!(fast.abs() < 1e-35, "gate {g}: {fast} vs {reference}");
        }
        assert!(silu_fast(f32::NEG_INFINITY).is_nan() && silu(f32::NEG_INFINITY).is_nan());
    }
}
