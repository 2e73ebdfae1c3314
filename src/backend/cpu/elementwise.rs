//! Row- and element-wise ops of the DiT: activations, timestep features,
//! learned positions and the prepend/drop of the timestep token.

use rayon::prelude::*;

use crate::graph::Segments;

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
