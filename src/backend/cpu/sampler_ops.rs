//! The sampler's element-wise ops: CFG input expansion, CFG + v-denoiser, the
//! DPM++ 3M SDE update with coefficients prepared on the host in f64, and the
//! per-step row of a table of per-request constants.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::graph::Segments;
use crate::graph::scalar_slot as slot;

/// `out = concat(x, x) * c_in` (the cond and uncond halves of the DiT batch).
pub fn cfg_expand(x: &[f32], scalars: &[f32], out: &mut [f32]) {
    let c_in = scalars[slot::C_IN];
    let (cond, uncond) = out.split_at_mut(x.len());
    cond.par_iter_mut().zip(uncond.par_iter_mut()).zip(x.par_iter()).for_each(|((c, u), &v)| {
        *c = v * c_in;
        *u = v * c_in;
    });
}

/// `denoised = (v_u + (v_c - v_u) * cfg) * c_out + x * c_skip`, per request `cfg`.
pub fn cfg_denoise(
    v: &[f32],
    x: &[f32],
    cols: usize,
    scalars: &[f32],
    x_segments: &Segments,
    cfg_scales: &[f32],
    out: &mut [f32],
) {
    let (c_skip, c_out) = (scalars[slot::C_SKIP], scalars[slot::C_OUT]);
    let (v_cond, v_uncond) = v.split_at(x.len());
    for (r, &scale) in cfg_scales.iter().enumerate() {
        let span = x_segments.range(r);
        let span = span.start * cols..span.end * cols;
        out[span.clone()].par_iter_mut().enumerate().for_each(|(i, o)| {
            let e = span.start + i;
            let guided = v_uncond[e] + (v_cond[e] - v_uncond[e]) * scale;
            *o = guided * c_out + x[e] * c_skip;
        });
    }
}

/// `x = a x + b den + c d1 + d d2 + e z; d2 = d1; d1 = den`, element by element.
pub fn dpmpp_3m_update(
    x: &mut [f32],
    denoised: &[f32],
    d1: &mut [f32],
    d2: &mut [f32],
    noise: &[f32],
    scalars: &[f32],
) {
    let (a, b, c, d, e) =
        (scalars[slot::X], scalars[slot::DENOISED], scalars[slot::D1], scalars[slot::D2], scalars[slot::NOISE]);
    x.par_iter_mut().zip(d1.par_iter_mut()).zip(d2.par_iter_mut()).enumerate().for_each(|(i, ((x, d1), d2))| {
        let den = denoised[i];
        // Zero coefficients must not touch the term: history buffers start as zeros,
        // and the noise buffer is not refreshed on steps without noise.
        let mut acc = a * *x + b * den;
        if c != 0.0 {
            acc += c * *d1;
        }
        if d != 0.0 {
            acc += d * *d2;
        }
        if e != 0.0 {
            acc += e * noise[i];
        }
        *x = acc;
        *d2 = *d1;
        *d1 = den;
    });
}

/// Every row of `out` is row `scalars[STEP]` of `table` (`[table_rows, cols]`,
/// `cols` = width of `out`'s rows).
pub fn select_step_row(table: &[f32], table_rows: usize, scalars: &[f32], out: &mut [f32]) -> Result<()> {
    let step = scalars[slot::STEP];
    if !(step >= 0.0 && step.fract() == 0.0 && (step as usize) < table_rows) {
        return Err(Error::InvalidInput(format!("step index {step} is not a row of a table of {table_rows} steps")));
    }
    if table.is_empty() {
        return Ok(());
    }
    let cols = table.len() / table_rows;
    let row = &table[step as usize * cols..(step as usize + 1) * cols];
    out.chunks_exact_mut(cols).for_each(|o| o.copy_from_slice(row));
    Ok(())
}
