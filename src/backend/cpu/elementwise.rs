//! Row- and element-wise ops of the DiT: activations, timestep features,
//! learned positions and the prepend/drop of the timestep token.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
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

    pub(super) fn swiglu(&self, x: TensorId, out: TensorId) -> Result<()> {
        swiglu(self.input(x), self.desc(out).cols, self.output(out));
        Ok(())
    }

    pub(super) fn timestep_features(&self, op: &Op) -> Result<()> {
        let Op::TimestepFeatures { t, w, out } = op else { return Err(wrong_op(op, "timestep_features")) };
        timestep_features(self.input(*t), self.weight(*w), self.output(*out));
        Ok(())
    }

    pub(super) fn add_positional(&self, op: &Op) -> Result<()> {
        let Op::AddPositional { x, table, scale, segments, out } = op else {
            return Err(wrong_op(op, "add_positional"));
        };
        let cols = self.desc(*x).cols;
        add_positional(self.input(*x), cols, self.weight(*table), *scale, self.seg(*segments), self.output(*out));
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
            (self.weight(*table), *scale),
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
