//! The VAE decoder's ops on the CPU: dilated 1-D convolution and transposed
//! convolution as im2col + GEMM over chunks of time steps, and SnakeBeta.
//!
//! Layout: token-major, `[L, C]` per sequence (time steps are rows), sequences
//! packed by `Segments`; every sequence is padded with zeros on its own.
//! Weight layouts (made by `lova-fast convert` or at load from the original
//! checkpoint, see `models::vae`):
//! - conv1d: `[C_out, K * C_in]`, tap-major (`w[co][k * C_in + ci] = W[co, ci, k]`),
//!   so one im2col row `[x[t - p], x[t - p + d], ...]` times `w^T` is the output row;
//! - transposed conv (kernel 2s, stride s, padding s/2): `[s, C_out, 2 * C_in]`;
//!   output row j has phase r = (j + p) mod s and reads input rows i0 = (j + p) / s
//!   and i0 - 1: `out[j] = [x[i0] | x[i0 - 1]] @ w[r]^T`.

use rayon::prelude::*;

use super::gemm_bf16::{PackedBf16, linear_bf16};
use super::linear::linear;
use super::operands::{Operands, wrong_op};
use super::precision::Isa;
use crate::error::Result;
use crate::graph::{Op, Segments};

/// A convolution's weight as its GEMMs read it: the f32 reference, or the bf16
/// backend's packed matrices (one for conv1d, one per phase for a transposed
/// conv), run by the Linear op's kernel on the same im2col rows.
#[derive(Clone, Copy)]
pub enum ConvWeight<'a> {
    /// f32 in the engine layout (see the module comment).
    F32(&'a [f32]),
    /// `[C_out, row]` matrices rounded to bf16 and packed, with the kernel to run.
    Bf16(Isa, &'a [PackedBf16]),
}

impl ConvWeight<'_> {
    /// `out = x @ w_group^T + bias + residual`, `x` being `[m, k]`.
    #[allow(clippy::too_many_arguments)]
    fn product(
        self,
        group: usize,
        x: &[f32],
        m: usize,
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        match self {
            ConvWeight::F32(w) => linear(x, m, k, &w[group * n * k..(group + 1) * n * k], n, bias, residual, out),
            ConvWeight::Bf16(isa, packed) => linear_bf16(isa, x, m, k, &packed[group], n, bias, residual, out),
        }
    }
}

/// Rows per im2col chunk: about 4 MiB of f32 per chunk.
fn chunk_rows(row_len: usize) -> usize {
    ((1 << 20) / row_len.max(1)).clamp(16, 4096)
}

/// SnakeBeta parameters `(alpha, beta)` (log scale, one per input channel) applied
/// to a conv's input as it is read (`graph::Snake`).
pub type InputSnake<'a> = Option<(&'a [f32], &'a [f32])>;

/// Stride-1 convolution that keeps the length (`2 * padding == dilation * (kernel - 1)`).
/// With `snake`, the conv reads `snake_beta(x)`: the input rows a chunk needs are
/// activated into a scratch buffer first (once per row, not once per tap), and
/// padding stays zero, which equals padding after the activation because snake(0) = 0.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    x: &[f32],
    cin: usize,
    snake: InputSnake<'_>,
    w: ConvWeight<'_>,
    cout: usize,
    kernel: usize,
    dilation: usize,
    padding: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    segments: &Segments,
    out: &mut [f32],
) {
    let row_len = kernel * cin;
    let rows_per_chunk = chunk_rows(row_len);
    let mut cols = vec![0.0f32; rows_per_chunk * row_len];
    let mut activated = Vec::new();
    for b in 0..segments.count() {
        let seq = segments.range(b);
        let len = seq.len() as isize;
        for t0 in (0..seq.len()).step_by(rows_per_chunk) {
            let n = rows_per_chunk.min(seq.len() - t0);
            // Rows of this sequence the chunk reads: [lo, hi).
            let lo = (t0 as isize - padding as isize).max(0) as usize;
            let hi = ((t0 + n + (kernel - 1) * dilation) as isize - padding as isize).clamp(0, len) as usize;
            // `src` holds rows lo..hi of the sequence (activated or not).
            let src: &[f32] = match snake {
                Some((alpha, beta)) if hi > lo => {
                    let r = (seq.start + lo) * cin..(seq.start + hi) * cin;
                    activated.resize(r.len(), 0.0);
                    snake_beta(&x[r], alpha, beta, &mut activated);
                    &activated
                }
                _ => &x[(seq.start + lo.min(hi)) * cin..(seq.start + hi) * cin],
            };
            cols[..n * row_len].par_chunks_mut(row_len).enumerate().for_each(|(i, row)| {
                for k in 0..kernel {
                    let t = (t0 + i) as isize + (k * dilation) as isize - padding as isize;
                    let dst = &mut row[k * cin..(k + 1) * cin];
                    if (0..len).contains(&t) {
                        let r = t as usize - lo;
                        dst.copy_from_slice(&src[r * cin..(r + 1) * cin]);
                    } else {
                        dst.fill(0.0);
                    }
                }
            });
            let rows = (seq.start + t0) * cout..(seq.start + t0 + n) * cout;
            let residual = residual.map(|r| &r[rows.clone()]);
            w.product(0, &cols[..n * row_len], n, row_len, cout, bias, residual, &mut out[rows]);
        }
    }
}

/// Transposed convolution with kernel `2 * stride`, padding `stride / 2` (even
/// strides): each sequence's length is multiplied by `stride`. With `snake`, the
/// input is activated once into a scratch copy (it is `stride` times smaller
/// than the output).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d(
    x: &[f32],
    cin: usize,
    snake: InputSnake<'_>,
    w: ConvWeight<'_>,
    cout: usize,
    stride: usize,
    bias: Option<&[f32]>,
    in_segments: &Segments,
    out_segments: &Segments,
    out: &mut [f32],
) {
    let activated;
    let x = match snake {
        Some((alpha, beta)) => {
            let mut a = vec![0.0; x.len()];
            snake_beta(x, alpha, beta, &mut a);
            activated = a;
            &activated[..]
        }
        None => x,
    };
    let padding = stride / 2;
    let row_len = 2 * cin;
    let rows_per_chunk = chunk_rows(row_len);
    let mut cols = vec![0.0f32; rows_per_chunk * row_len];
    let mut tmp = vec![0.0f32; rows_per_chunk * cout];
    for b in 0..in_segments.count() {
        let (src, dst) = (in_segments.range(b), out_segments.range(b));
        let lin = src.len();
        for phase in 0..stride {
            // Output rows j = i0 * stride + phase - padding, for i0 with 0 <= j < lout.
            let first_i0 = (padding.saturating_sub(phase)).div_ceil(stride);
            let js: Vec<usize> =
                (first_i0..=lin).map(|i0| i0 * stride + phase - padding).take_while(|&j| j < dst.len()).collect();
            for chunk in js.chunks(rows_per_chunk) {
                let n = chunk.len();
                cols[..n * row_len].par_chunks_mut(row_len).zip(chunk.par_iter()).for_each(|(row, &j)| {
                    let i0 = (j + padding) / stride;
                    for (half, i) in [(0, i0 as isize), (1, i0 as isize - 1)] {
                        let part = &mut row[half * cin..(half + 1) * cin];
                        if (0..lin as isize).contains(&i) {
                            let r = src.start + i as usize;
                            part.copy_from_slice(&x[r * cin..(r + 1) * cin]);
                        } else {
                            part.fill(0.0);
                        }
                    }
                });
                w.product(phase, &cols[..n * row_len], n, row_len, cout, bias, None, &mut tmp[..n * cout]);
                for (m, &j) in chunk.iter().enumerate() {
                    let r = dst.start + j;
                    out[r * cout..(r + 1) * cout].copy_from_slice(&tmp[m * cout..(m + 1) * cout]);
                }
            }
        }
    }
}

/// SnakeBeta with log-scale parameters, per channel (column):
/// `y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2`.
pub fn snake_beta(x: &[f32], alpha: &[f32], beta: &[f32], out: &mut [f32]) {
    let channels = alpha.len();
    let a: Vec<f32> = alpha.iter().map(|v| v.exp()).collect();
    let inv_b: Vec<f32> = beta.iter().map(|v| 1.0 / (v.exp() + 1e-9)).collect();
    out.par_chunks_mut(channels).zip(x.par_chunks(channels)).for_each(|(o, x)| {
        for c in 0..channels {
            let s = (a[c] * x[c]).sin();
            o[c] = x[c] + inv_b[c] * s * s;
        }
    });
}

impl Operands<'_> {
    pub(super) fn conv1d(&self, op: &Op) -> Result<()> {
        let Op::Conv1d { x, input_snake, w, bias, kernel, dilation, padding, residual, segments, out } = op else {
            return Err(wrong_op(op, "conv1d"));
        };
        let snake = match input_snake {
            Some(s) => Some((self.weight(s.alpha)?, self.weight(s.beta)?)),
            None => None,
        };
        conv1d(
            self.input(*x),
            self.desc(*x).cols,
            snake,
            self.backend.conv_weight(&self.weights[w.0], 1, self.desc(*out).cols, kernel * self.desc(*x).cols)?,
            self.desc(*out).cols,
            *kernel,
            *dilation,
            *padding,
            bias.map(|b| self.weight(b)).transpose()?,
            residual.map(|r| self.input(r)),
            self.seg(*segments),
            self.output(*out),
        );
        Ok(())
    }

    pub(super) fn conv_transpose1d(&self, op: &Op) -> Result<()> {
        let Op::ConvTranspose1d { x, input_snake, w, bias, stride, in_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "conv_transpose1d"));
        };
        let snake = match input_snake {
            Some(s) => Some((self.weight(s.alpha)?, self.weight(s.beta)?)),
            None => None,
        };
        conv_transpose1d(
            self.input(*x),
            self.desc(*x).cols,
            snake,
            self.backend.conv_weight(&self.weights[w.0], *stride, self.desc(*out).cols, 2 * self.desc(*x).cols)?,
            self.desc(*out).cols,
            *stride,
            bias.map(|b| self.weight(b)).transpose()?,
            self.seg(*in_segments),
            self.seg(*out_segments),
            self.output(*out),
        );
        Ok(())
    }

    pub(super) fn snake_beta(&self, op: &Op) -> Result<()> {
        let Op::SnakeBeta { x, alpha, beta, out } = op else { return Err(wrong_op(op, "snake_beta")) };
        snake_beta(self.input(*x), self.weight(*alpha)?, self.weight(*beta)?, self.output(*out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(i: usize) -> f32 {
        ((i * 2654435761usize) % 1009) as f32 / 504.5 - 1.0
    }

    /// PyTorch-layout direct convolution, one sequence, channel-major `[C, L]`.
    #[allow(clippy::too_many_arguments)]
    fn direct_conv(x: &[f32], cin: usize, l: usize, w: &[f32], cout: usize, k: usize, d: usize, p: usize) -> Vec<f32> {
        let mut out = vec![0.0; cout * l];
        for co in 0..cout {
            for t in 0..l {
                let mut acc = 0.0f64;
                for ci in 0..cin {
                    for kk in 0..k {
                        let src = t as isize + (kk * d) as isize - p as isize;
                        if (0..l as isize).contains(&src) {
                            acc += (w[(co * cin + ci) * k + kk] * x[ci * l + src as usize]) as f64;
                        }
                    }
                }
                out[co * l + t] = acc as f32;
            }
        }
        out
    }

    /// PyTorch ConvTranspose1d (weight `[C_in, C_out, K]`), direct scatter form.
    fn direct_conv_t(x: &[f32], cin: usize, l: usize, w: &[f32], cout: usize, s: usize) -> Vec<f32> {
        let (k, p) = (2 * s, s / 2);
        let lout = l * s;
        let mut out = vec![0.0f64; cout * lout];
        for ci in 0..cin {
            for i in 0..l {
                for co in 0..cout {
                    for kk in 0..k {
                        let j = (i * s + kk) as isize - p as isize;
                        if (0..lout as isize).contains(&j) {
                            out[co * lout + j as usize] += (x[ci * l + i] * w[(ci * cout + co) * k + kk]) as f64;
                        }
                    }
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    fn to_token_major(x: &[f32], c: usize, l: usize) -> Vec<f32> {
        crate::tensor::transpose(x, c, l)
    }

    #[test]
    fn conv1d_matches_direct_convolution_per_sequence() {
        let (cin, cout, k, d) = (3, 5, 7, 3);
        let p = d * (k - 1) / 2;
        let lens = [1usize, 10, 23];
        let w: Vec<f32> = (0..cout * cin * k).map(val).collect();
        // Engine layout [cout, k * cin].
        let mut we = vec![0.0; w.len()];
        for co in 0..cout {
            for ci in 0..cin {
                for kk in 0..k {
                    we[co * k * cin + kk * cin + ci] = w[(co * cin + ci) * k + kk];
                }
            }
        }
        let seg = Segments::from_lengths(lens);
        let xs: Vec<Vec<f32>> =
            lens.iter().enumerate().map(|(b, &l)| (0..cin * l).map(|i| val(i + 100 * b)).collect()).collect();
        let x: Vec<f32> = xs.iter().zip(lens).flat_map(|(x, l)| to_token_major(x, cin, l)).collect();
        let mut out = vec![0.0; seg.total() * cout];
        conv1d(&x, cin, None, ConvWeight::F32(&we), cout, k, d, p, None, None, &seg, &mut out);
        for (b, &l) in lens.iter().enumerate() {
            let want = to_token_major(&direct_conv(&xs[b], cin, l, &w, cout, k, d, p), cout, l);
            let got = &out[seg.offsets[b] * cout..seg.offsets[b + 1] * cout];
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() < 1e-5, "seq {b}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn conv_transpose_matches_pytorch_semantics_for_every_stride() {
        for s in [2usize, 4, 8] {
            let (cin, cout) = (3, 2);
            let lens = [1usize, 6];
            let w: Vec<f32> = (0..cin * cout * 2 * s).map(|i| val(i + 7)).collect();
            let mut we = vec![0.0; w.len()];
            for r in 0..s {
                for co in 0..cout {
                    for ci in 0..cin {
                        we[(r * cout + co) * 2 * cin + ci] = w[(ci * cout + co) * 2 * s + r];
                        we[(r * cout + co) * 2 * cin + cin + ci] = w[(ci * cout + co) * 2 * s + r + s];
                    }
                }
            }
            let seg_in = Segments::from_lengths(lens);
            let seg_out = Segments::from_lengths(lens.iter().map(|l| l * s));
            let xs: Vec<Vec<f32>> = lens.iter().map(|&l| (0..cin * l).map(|i| val(i * 3 + 1)).collect()).collect();
            let x: Vec<f32> = xs.iter().zip(lens).flat_map(|(x, l)| to_token_major(x, cin, l)).collect();
            let mut out = vec![f32::NAN; seg_out.total() * cout];
            conv_transpose1d(&x, cin, None, ConvWeight::F32(&we), cout, s, None, &seg_in, &seg_out, &mut out);
            for (b, &l) in lens.iter().enumerate() {
                let want = to_token_major(&direct_conv_t(&xs[b], cin, l, &w, cout, s), cout, l * s);
                let got = &out[seg_out.offsets[b] * cout..seg_out.offsets[b + 1] * cout];
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() < 1e-5, "stride {s} seq {b}: {g} vs {e}");
                }
            }
        }
    }

    /// The fused input activation equals SnakeBeta stored first, then the plain conv,
    /// including at the padded edges and across sequences (snake(0) = 0).
    #[test]
    fn input_snake_equals_snake_then_conv() {
        let (cin, cout) = (5, 3);
        let seg = Segments::from_lengths([1usize, 9, 40]);
        let x: Vec<f32> = (0..seg.total() * cin).map(|i| 3.0 * val(i + 5)).collect();
        let alpha: Vec<f32> = (0..cin).map(|i| 0.3 * val(i + 11)).collect();
        let beta: Vec<f32> = (0..cin).map(|i| 0.3 * val(i + 17)).collect();
        let mut activated = vec![0.0; x.len()];
        snake_beta(&x, &alpha, &beta, &mut activated);
        for (k, d) in [(7, 1), (7, 3), (7, 9), (1, 1)] {
            let w: Vec<f32> = (0..cout * k * cin).map(|i| val(i + 3)).collect();
            let p = d * (k - 1) / 2;
            let (mut fused, mut want) = (vec![0.0; seg.total() * cout], vec![0.0; seg.total() * cout]);
            conv1d(&x, cin, Some((&alpha, &beta)), ConvWeight::F32(&w), cout, k, d, p, None, None, &seg, &mut fused);
            conv1d(&activated, cin, None, ConvWeight::F32(&w), cout, k, d, p, None, None, &seg, &mut want);
            assert_eq!(fused, want, "k {k} d {d}");
        }
        let s = 4;
        let up = Segments::from_lengths(seg.lengths().map(|l| l * s));
        let w: Vec<f32> = (0..s * cout * 2 * cin).map(|i| val(i + 9)).collect();
        let (mut fused, mut want) = (vec![0.0; up.total() * cout], vec![0.0; up.total() * cout]);
        conv_transpose1d(&x, cin, Some((&alpha, &beta)), ConvWeight::F32(&w), cout, s, None, &seg, &up, &mut fused);
        conv_transpose1d(&activated, cin, None, ConvWeight::F32(&w), cout, s, None, &seg, &up, &mut want);
        assert_eq!(fused, want, "transposed");
    }

    #[test]
    fn snake_beta_uses_log_scale_parameters() {
        let x = [0.5f32, -1.0];
        let mut out = [0.0; 2];
        snake_beta(&x, &[0.0, 2f32.ln()], &[0.0, 0.0], &mut out);
        let want0 = 0.5 + (0.5f64.sin().powi(2)) / (1.0 + 1e-9);
        let want1 = -1.0 + ((-2.0f64).sin().powi(2)) / (1.0 + 1e-9);
        assert!((out[0] as f64 - want0).abs() < 1e-6 && (out[1] as f64 - want1).abs() < 1e-6);
    }
}
