//! The sampler's element-wise ops: CFG input expansion, CFG + v-denoiser, the
//! DPM++ 3M SDE update with coefficients prepared on the host in f64, and the
//! per-step row of a table of per-request constants.
//!
//! `scalars` is `[requests, scalar_slot::COUNT]`: every request of a batch has
//! its own row (its own step of its own schedule), and `x_segments` says which
//! rows of the state belong to which request.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
use crate::error::{Error, Result};
use crate::graph::scalar_slot as slot;
use crate::graph::{Op, Segments};

/// Request `r`'s row of the step scalars.
fn scalars_of(scalars: &[f32], r: usize) -> &[f32] {
    &scalars[r * slot::COUNT..(r + 1) * slot::COUNT]
}

/// `out = concat(x, x) * c_in` (the cond and uncond halves of the DiT batch),
/// with each request's `c_in`.
pub fn cfg_expand(x: &[f32], cols: usize, scalars: &[f32], x_segments: &Segments, out: &mut [f32]) {
    let (cond, uncond) = out.split_at_mut(x.len());
    for r in 0..x_segments.count() {
        let c_in = scalars_of(scalars, r)[slot::C_IN];
        let span = x_segments.range(r);
        let span = span.start * cols..span.end * cols;
        cond[span.clone()].par_iter_mut().zip(uncond[span.clone()].par_iter_mut()).zip(x[span].par_iter()).for_each(
            |((c, u), &v)| {
                *c = v * c_in;
                *u = v * c_in;
            },
        );
    }
}

/// `denoised = (v_u + (v_c - v_u) * cfg) * c_out + x * c_skip`, per request `cfg`, `c_out`, `c_skip`.
pub fn cfg_denoise(
    v: &[f32],
    x: &[f32],
    cols: usize,
    scalars: &[f32],
    x_segments: &Segments,
    cfg_scales: &[f32],
    out: &mut [f32],
) {
    let (v_cond, v_uncond) = v.split_at(x.len());
    for (r, &scale) in cfg_scales.iter().enumerate() {
        let s = scalars_of(scalars, r);
        let (c_skip, c_out) = (s[slot::C_SKIP], s[slot::C_OUT]);
        let span = x_segments.range(r);
        let span = span.start * cols..span.end * cols;
        out[span.clone()].par_iter_mut().enumerate().for_each(|(i, o)| {
            let e = span.start + i;
            let guided = v_uncond[e] + (v_cond[e] - v_uncond[e]) * scale;
            *o = guided * c_out + x[e] * c_skip;
        });
    }
}

/// The state tensors `Dpmpp3mUpdate` updates in place.
pub struct SamplerState<'a> {
    /// The sample being denoised.
    pub x: &'a mut [f32],
    /// The previous step's denoised estimate.
    pub d1: &'a mut [f32],
    /// The denoised estimate of two steps back.
    pub d2: &'a mut [f32],
}

/// `x = a x + b den + c d1 + d d2 + e z; d2 = d1; d1 = den`, element by element,
/// with each request's coefficients.
pub fn dpmpp_3m_update(
    state: SamplerState,
    denoised: &[f32],
    noise: &[f32],
    cols: usize,
    scalars: &[f32],
    x_segments: &Segments,
) {
    let SamplerState { x, d1, d2 } = state;
    for r in 0..x_segments.count() {
        let s = scalars_of(scalars, r);
        let (a, b, c, d, e) = (s[slot::X], s[slot::DENOISED], s[slot::D1], s[slot::D2], s[slot::NOISE]);
        let span = x_segments.range(r);
        let span = span.start * cols..span.end * cols;
        let start = span.start;
        let (x, d1, d2) = (&mut x[span.clone()], &mut d1[span.clone()], &mut d2[span]);
        x.par_iter_mut().zip(d1.par_iter_mut()).zip(d2.par_iter_mut()).enumerate().for_each(|(i, ((x, d1), d2))| {
            let den = denoised[start + i];
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
                acc += e * noise[start + i];
            }
            *x = acc;
            *d2 = *d1;
            *d1 = den;
        });
    }
}

/// Row `j` of `out` is row `scalars[j % requests][STEP]` of `table`
/// (`[table_rows, cols]`, `cols` = width of `out`'s rows).
pub fn select_step_row(table: &[f32], table_rows: usize, scalars: &[f32], out: &mut [f32]) -> Result<()> {
    let requests = scalars.len() / slot::COUNT;
    if requests == 0 || !scalars.len().is_multiple_of(slot::COUNT) {
        return Err(Error::InvalidInput(format!("graph bug: select_step_row has {} step scalars", scalars.len())));
    }
    if table.is_empty() {
        return Ok(());
    }
    let cols = table.len() / table_rows;
    for (j, o) in out.chunks_exact_mut(cols).enumerate() {
        let step = scalars_of(scalars, j % requests)[slot::STEP];
        if !(step >= 0.0 && step.fract() == 0.0 && (step as usize) < table_rows) {
            return Err(Error::InvalidInput(format!(
                "step index {step} is not a row of a table of {table_rows} steps"
            )));
        }
        o.copy_from_slice(&table[step as usize * cols..(step as usize + 1) * cols]);
    }
    Ok(())
}

impl Operands<'_> {
    pub(super) fn cfg_expand(&self, op: &Op) -> Result<()> {
        let Op::CfgExpand { x, scalars, x_segments, out } = op else { return Err(wrong_op(op, "cfg_expand")) };
        let (cols, scalars) = (self.desc(*x).cols, self.input(*scalars));
        cfg_expand(self.input(*x), cols, scalars, self.seg(*x_segments), self.output(*out));
        Ok(())
    }

    pub(super) fn cfg_denoise(&self, op: &Op) -> Result<()> {
        let Op::CfgDenoise { v, x, scalars, x_segments, cfg_scales, out } = op else {
            return Err(wrong_op(op, "cfg_denoise"));
        };
        let (v, cols, scalars) = (self.input(*v), self.desc(*x).cols, self.input(*scalars));
        cfg_denoise(v, self.input(*x), cols, scalars, self.seg(*x_segments), cfg_scales, self.output(*out));
        Ok(())
    }

    pub(super) fn dpmpp_3m_update(&self, op: &Op) -> Result<()> {
        let Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, x_segments } = op else {
            return Err(wrong_op(op, "dpmpp_3m_update"));
        };
        let state = SamplerState { x: self.output(*x), d1: self.output(*d1), d2: self.output(*d2) };
        let (denoised, noise, cols) = (self.input(*denoised), self.input(*noise), self.desc(*x).cols);
        dpmpp_3m_update(state, denoised, noise, cols, self.input(*scalars), self.seg(*x_segments));
        Ok(())
    }

    pub(super) fn select_step_row(&self, op: &Op) -> Result<()> {
        let Op::SelectStepRow { table, scalars, out } = op else { return Err(wrong_op(op, "select_step_row")) };
        select_step_row(self.input(*table), self.desc(*table).rows, self.input(*scalars), self.output(*out))
    }
}
