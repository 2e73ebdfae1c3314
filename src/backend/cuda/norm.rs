//! Launchers of kernels/layer_norm.cu: LayerNorm (optionally adaLN-modulated)
//! and the gated residual, each with an fp16 variant for a block activation
//! (LayerNorm's output, the gated residual's branch).

use cudarc::driver::LaunchConfig;

use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::Result;
use crate::graph::{DType, Op};

/// kernels/layer_norm.cu: one warp per row, 4 rows per 128-thread block.
const ROWS_PER_BLOCK: usize = 4;

impl Launcher<'_> {
    pub(super) fn layer_norm(&mut self, op: &Op) -> Result<()> {
        let Op::LayerNorm { x, gamma, beta, eps, modulation, out } = op else {
            return Err(wrong_op(op, "layer_norm"));
        };
        if let Some(t) =
            [Some(*x), modulation.map(|m| m.table)].into_iter().flatten().find(|&t| self.dtype(t) != DType::F32)
        {
            return Err(self.unsupported_dtype(op, t));
        }
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
        let (x, eps, rows, cols) = (self.ptr(*x), *eps, r as i64, c as i32);
        let (table_cols, scale_offset, shift_offset) = (table_cols as i32, scale_offset as i32, shift_offset as i32);
        let (count, out_ptr) = (count as i32, self.ptr(*out));
        match self.dtype(*out) {
            DType::F32 => self.launch(
                cfg,
                k::LayerNormF32 {
                    x,
                    gamma,
                    beta,
                    eps,
                    rows,
                    cols,
                    table,
                    table_cols,
                    scale_offset,
                    shift_offset,
                    offsets,
                    count,
                    out: out_ptr,
                },
            ),
            // The next Linear's GEMM input, written as fp16 directly.
            DType::F16 => self.launch(
                cfg,
                k::LayerNormF16 {
                    x,
                    gamma,
                    beta,
                    eps,
                    rows,
                    cols,
                    table,
                    table_cols,
                    scale_offset,
                    shift_offset,
                    offsets,
                    count,
                    out: out_ptr,
                },
            ),
        }
    }

    pub(super) fn gated_residual(&mut self, op: &Op) -> Result<()> {
        let Op::GatedResidual { branch, residual, table, gate_offset, segments, out } = op else {
            return Err(wrong_op(op, "gated_residual"));
        };
        if let Some(&t) = [residual, table, out].into_iter().find(|&&t| self.dtype(t) != DType::F32) {
            return Err(self.unsupported_dtype(op, t));
        }
        let d = self.desc(*out);
        let (n, cols) = (d.rows, d.cols);
        let (residual, table_ptr, table_cols) = (self.ptr(*residual), self.ptr(*table), self.desc(*table).cols as i32);
        let (gate_offset, (sequences, rows)) = (*gate_offset as i32, self.row_map(*segments)?);
        let (out, branch_ptr, c) = (self.ptr(*out), self.ptr(*branch), cols as i64);
        match self.dtype(*branch) {
            DType::F32 => self.rows(
                n,
                cols,
                k::GatedResidualF32 {
                    branch: branch_ptr,
                    residual,
                    rows,
                    cols: c,
                    table: table_ptr,
                    table_cols,
                    gate_offset,
                    sequences,
                    out,
                },
            ),
            DType::F16 => self.rows(
                n,
                cols,
                k::GatedResidualF16 {
                    branch: branch_ptr,
                    residual,
                    rows,
                    cols: c,
                    table: table_ptr,
                    table_cols,
                    gate_offset,
                    sequences,
                    out,
                },
            ),
        }
    }
}
