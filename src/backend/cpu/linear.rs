//! `out = x @ w^T + bias + residual` with matrixmultiply's SGEMM, split over
//! rayon threads by rows (or by output columns when there are few rows, as in
//! the timestep MLP).

use rayon::prelude::*;

use super::gemm_bf16::linear_bf16;
use super::operands::{Operands, wrong_op};
use super::precision::Resolved;
use crate::error::Result;
use crate::graph::Op;

/// Raw output pointer shared by threads that write disjoint parts.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `x` is `[m, k]`, `w` is `[n, k]` (PyTorch `Linear` layout), `out` is `[m, n]`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let ptr = SendPtr(out.as_mut_ptr());
    // One block: rows r0..r1, columns c0..c1 of the output.
    let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
        let p = ptr;
        // SAFETY: blocks are disjoint and inside `out`; x and w are read-only.
        unsafe {
            matrixmultiply::sgemm(
                r1 - r0,
                k,
                c1 - c0,
                1.0,
                x.as_ptr().add(r0 * k),
                k as isize,
                1,
                w.as_ptr().add(c0 * k),
                1,
                k as isize,
                0.0,
                p.0.add(r0 * n + c0),
                n as isize,
                1,
            );
            for r in r0..r1 {
                let row = std::slice::from_raw_parts_mut(p.0.add(r * n + c0), c1 - c0);
                if let Some(b) = bias {
                    row.iter_mut().zip(&b[c0..c1]).for_each(|(o, b)| *o += b);
                }
                if let Some(res) = residual {
                    row.iter_mut().zip(&res[r * n + c0..r * n + c1]).for_each(|(o, r)| *o += r);
                }
            }
        }
    };
    if m >= 16 * threads || n < 256 {
        let rows_per = m.div_ceil(threads * 4).max(8);
        (0..m.div_ceil(rows_per)).into_par_iter().for_each(|i| {
            block(i * rows_per, ((i + 1) * rows_per).min(m), 0, n);
        });
    } else {
        let cols_per = n.div_ceil(threads * 4).max(64);
        (0..n.div_ceil(cols_per)).into_par_iter().for_each(|j| {
            block(0, m, j * cols_per, ((j + 1) * cols_per).min(n));
        });
    }
}

impl Operands<'_> {
    /// In f32, or on the weight's bf16 copy with the backend's kernel.
    pub(super) fn linear(&self, op: &Op) -> Result<()> {
        let Op::Linear { x, w, bias, residual, out } = op else { return Err(wrong_op(op, "linear")) };
        let (xd, n) = (self.desc(*x), self.desc(*out).cols);
        let bias = bias.map(|b| self.weight(b)).transpose()?;
        let residual = residual.map(|r| self.input(r));
        match self.backend.gemm {
            Resolved::F32 => {
                linear(self.input(*x), xd.rows, xd.cols, self.weight(*w)?, n, bias, residual, self.output(*out))
            }
            Resolved::Bf16(isa) => {
                let packed = self.weights[w.0].packed_as(n, xd.cols)?;
                linear_bf16(isa, self.input(*x), xd.rows, xd.cols, packed, n, bias, residual, self.output(*out))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_bias_and_residual_on_both_split_paths() {
        for &(m, k, n) in &[(1, 3, 1), (2, 256, 1024), (300, 17, 33), (5, 64, 700)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let r: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
            let mut out = vec![f32::NAN; m * n];
            linear(&x, m, k, &w, n, Some(&b), Some(&r), &mut out);
            let mut want = naive(&x, m, k, &w, n);
            for i in 0..m * n {
                want[i] += b[i % n] + r[i];
            }
            for (o, e) in out.iter().zip(&want) {
                assert!((o - e).abs() <= 1e-4 * (1.0 + e.abs()), "{m}x{k}x{n}: {o} vs {e}");
            }
        }
    }
}
