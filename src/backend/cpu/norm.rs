//! LayerNorm (optionally adaLN-modulated) and the adaLN gated residual.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
use crate::error::Result;
use crate::graph::{Op, Segments};

/// Which sequence of `segments` row `r` belongs to.
pub fn sequence_of_row(segments: &Segments, r: usize) -> usize {
    segments.offsets.partition_point(|&o| o <= r) - 1
}

/// Per-sequence modulation vectors: row `b` of `table` (`table_cols` wide),
/// `scale` at `scale_offset`, `shift` at `shift_offset`.
pub struct Modulation<'a> {
    /// Row-major `[sequences, table_cols]` table of modulation vectors.
    pub table: &'a [f32],
    /// Width of a `table` row.
    pub table_cols: usize,
    /// Column where each row's `scale` vector starts.
    pub scale_offset: usize,
    /// Column where each row's `shift` vector starts.
    pub shift_offset: usize,
    /// Which rows of the input belong to which sequence (row of `table`).
    pub segments: &'a Segments,
}

/// Row-wise `y = (x - mean) / sqrt(var + eps) * gamma + beta`, then
/// `y * (1 + scale) + shift` with `modulation`. Statistics are accumulated in f64.
pub fn layer_norm(
    x: &[f32],
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    modulation: Option<&Modulation>,
    out: &mut [f32],
) {
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).enumerate().for_each(|(r, (y, x))| {
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..cols {
            y[i] = ((x[i] as f64 - mean) * rstd) as f32 * gamma[i] + beta[i];
        }
        if let Some(m) = modulation {
            let row = &m.table[sequence_of_row(m.segments, r) * m.table_cols..];
            let (scale, shift) = (&row[m.scale_offset..], &row[m.shift_offset..]);
            for i in 0..cols {
                y[i] = y[i] * (1.0 + scale[i]) + shift[i];
            }
        }
    });
}

/// `out = residual + branch * sigmoid(1 - gate)`, gate per sequence from `table`.
#[allow(clippy::too_many_arguments)]
pub fn gated_residual(
    branch: &[f32],
    residual: &[f32],
    cols: usize,
    table: &[f32],
    table_cols: usize,
    gate_offset: usize,
    segments: &Segments,
    out: &mut [f32],
) {
    out.par_chunks_mut(cols).enumerate().for_each(|(r, y)| {
        let gate = &table[sequence_of_row(segments, r) * table_cols + gate_offset..];
        for i in 0..cols {
            let g = 1.0 / (1.0 + (-(1.0 - gate[i])).exp());
            y[i] = residual[r * cols + i] + branch[r * cols + i] * g;
        }
    });
}

impl Operands<'_> {
    pub(super) fn layer_norm(&self, op: &Op) -> Result<()> {
        let Op::LayerNorm { x, gamma, beta, eps, modulation, out } = op else {
            return Err(wrong_op(op, "layer_norm"));
        };
        let m = modulation.map(|m| Modulation {
            table: self.input(m.table),
            table_cols: self.desc(m.table).cols,
            scale_offset: m.scale_offset,
            shift_offset: m.shift_offset,
            segments: self.seg(m.segments),
        });
        let (gamma, beta) = (self.weight(*gamma)?, self.weight(*beta)?);
        layer_norm(self.input(*x), self.desc(*x).cols, gamma, beta, *eps, m.as_ref(), self.output(*out));
        Ok(())
    }

    pub(super) fn gated_residual(&self, op: &Op) -> Result<()> {
        let Op::GatedResidual { branch, residual, table, gate_offset, segments, out } = op else {
            return Err(wrong_op(op, "gated_residual"));
        };
        gated_residual(
            self.input(*branch),
            self.input(*residual),
            self.desc(*out).cols,
            self.input(*table),
            self.desc(*table).cols,
            *gate_offset,
            self.seg(*segments),
            self.output(*out),
        );
        Ok(())
    }
}
