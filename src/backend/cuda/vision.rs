//! Launchers of the CLIP image tower's small ops (kernels/vision.cu): patch
//! extraction, the class-token prepend, QuickGELU (a kernel after the fc1 GEMM)
//! and the gather of the class tokens.

use super::kernels::{self as k};
use super::launch::{Launcher, wrong_op};
use crate::error::Result;
use crate::graph::{Op, TensorId};

impl Launcher<'_> {
    pub(super) fn patchify(&mut self, op: &Op) -> Result<()> {
        let Op::Patchify { images, channels, size, patch, out } = op else { return Err(wrong_op(op, "patchify")) };
        let n = self.desc(*out).len();
        let kernel = k::Patchify {
            images: self.ptr(*images),
            channels: *channels as i32,
            size: *size as i32,
            patch: *patch as i32,
            out: self.ptr(*out),
            n_out: n as i64,
        };
        self.elementwise(n, kernel)
    }

    pub(super) fn prepend_weight_row(&mut self, op: &Op) -> Result<()> {
        let Op::PrependWeightRow { row, rest, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_weight_row"));
        };
        let cols = self.desc(*out).cols;
        let (out_sequences, rows) = self.row_map(*out_segments)?;
        let kernel = k::PrependWeightRow {
            row: self.weight_f32(*row, "the prepended row")?,
            rest: self.ptr(*rest),
            rest_offsets: self.offsets(*rest_segments)?,
            out_offsets: self.offsets(*out_segments)?,
            out_sequences,
            rows,
            cols: cols as i64,
            out: self.ptr(*out),
        };
        self.rows(rows as usize, cols, kernel)
    }

    pub(super) fn quick_gelu(&mut self, x: TensorId, out: TensorId) -> Result<()> {
        let n = self.desc(out).len();
        self.elementwise(n, k::QuickGeluF32 { x: self.ptr(x), out: self.ptr(out), n: n as i64 })
    }

    pub(super) fn first_rows(&mut self, op: &Op) -> Result<()> {
        let Op::FirstRows { x, segments, out } = op else { return Err(wrong_op(op, "first_rows")) };
        let (count, cols) = (self.graph.seg(*segments).count(), self.desc(*out).cols);
        let kernel = k::FirstRows {
            x: self.ptr(*x),
            offsets: self.offsets(*segments)?,
            count: count as i32,
            cols: cols as i64,
            out: self.ptr(*out),
        };
        // One output row per sequence.
        self.rows(count, cols, kernel)
    }
}
