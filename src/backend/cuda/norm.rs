//! Launchers of kernels/layer_norm.cu: LayerNorm (optionally adaLN-modulated)
//! and the gated residual.

use cudarc::driver::LaunchConfig;

use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::Result;
use crate::graph::Op;

/// kernels/layer_norm.cu: one warp per row, 4 rows per 128-thread block.
const ROWS_PER_BLOCK: usize = 4;

impl Launcher<'_> {
    pub(super) fn layer_norm(&mut self, op: &Op) -> Result<()> {
        let Op::LayerNorm { x, gamma, beta, eps, modulation, out } = op else {
            return Err(wrong_op(op, "layer_norm"));
        };
        let (r, c) = (self.desc(*x).rows, self.desc(*x).cols);
        let gamma = self.weight_f32(*gamma, "LayerNorm gamma")?;
        let beta = self.weight_f32(*beta, "LayerNorm beta")?;
        let (table, table_cols, scale_offset, shift_offset, offsets, count) = match modulation {
            Some(m) => (
                self.ptr(m.table),
                self.desc(m.table).cols,
                m.scale_offset,
                m.shift_offset,
                self.offsets(m.segments)?,
                self.graph.seg(m.segments).count(),
            ),
            None => (Ptr::NULL, 0, 0, 0, Ptr::NULL, 0),
        };
        if r == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (r.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let kernel = k::LayerNormF32 {
            x: self.ptr(*x),
            gamma,
            beta,
            eps: *eps,
            rows: r as i64,
            cols: c as i32,
            table,
            table_cols: table_cols as i32,
            scale_offset: scale_offset as i32,
            shift_offset: shift_offset as i32,
            offsets,
            count: count as i32,
            out: self.ptr(*out),
        };
        self.launch(cfg, kernel)
    }

    pub(super) fn gated_residual(&mut self, op: &Op) -> Result<()> {
        let Op::GatedResidual { branch, residual, table, gate_offset, segments, out } = op else {
            return Err(wrong_op(op, "gated_residual"));
        };
        let d = self.desc(*out);
        let kernel = k::GatedResidualF32 {
            branch: self.ptr(*branch),
            residual: self.ptr(*residual),
            rows: d.rows as i64,
            cols: d.cols as i64,
            table: self.ptr(*table),
            table_cols: self.desc(*table).cols as i32,
            gate_offset: *gate_offset as i32,
            offsets: self.offsets(*segments)?,
            count: self.graph.seg(*segments).count() as i32,
            out: self.ptr(*out),
        };
        self.elementwise(d.len(), kernel)
    }
}
