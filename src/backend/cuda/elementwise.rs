//! Launchers of kernels/elementwise.cu: SiLU, SwiGLU, the timestep features,
//! the positional add and the row prepend/drop of packed sequences (and the
//! prepend fused with the positional add).

use super::kernels::{self as k};
use super::launch::{Launcher, wrong_op};
use crate::error::Result;
use crate::graph::{DType, Op, TensorId};

impl Launcher<'_> {
    pub(super) fn silu(&mut self, x: TensorId, out: TensorId) -> Result<()> {
        let n = self.desc(out).len();
        self.elementwise(n, k::SiluF32 { x: self.ptr(x), out: self.ptr(out), n: n as i64 })
    }

    pub(super) fn swiglu(&mut self, op: &Op) -> Result<()> {
        let Op::SwiGlu { x, out } = op else { return Err(wrong_op(op, "swiglu")) };
        let d = self.desc(*out);
        let (rows, f) = (d.rows as i64, d.cols as i64);
        let (xp, outp) = (self.ptr(*x), self.ptr(*out));
        match (self.dtype(*x), self.dtype(*out)) {
            (DType::F32, DType::F32) => self.elementwise(d.len(), k::SwigluF32 { x: xp, out: outp, rows, f }),
            // Two columns per thread (fp16x2 loads and stores).
            (DType::F16, DType::F16) if f % 2 == 0 => {
                self.elementwise(d.len() / 2, k::SwigluF16 { x: xp, out: outp, rows, f })
            }
            _ => Err(self.unsupported_dtype(op, *out)),
        }
    }

    pub(super) fn timestep_features(&mut self, op: &Op) -> Result<()> {
        let Op::TimestepFeatures { t, w, out } = op else { return Err(wrong_op(op, "timestep_features")) };
        let (batch, n) = (self.desc(*t).len(), self.desc(*out).cols / 2);
        let w = self.weight_f32(*w, "timestep feature weights")?;
        let kernel = k::TimestepFeatures { t: self.ptr(*t), w, out: self.ptr(*out), batch: batch as i32, n: n as i32 };
        self.elementwise(batch * n, kernel)
    }

    pub(super) fn add_positional(&mut self, op: &Op) -> Result<()> {
        let Op::AddPositional { x, table, scale, segments, out } = op else {
            return Err(wrong_op(op, "add_positional"));
        };
        let cols = self.desc(*x).cols;
        let (offsets, (sequences, rows)) = (self.offsets(*segments)?, self.row_map(*segments)?);
        let (x, out, scale, n) = (self.ptr(*x), self.ptr(*out), *scale, rows as usize);
        let c = cols as i64;
        match self.weight_any(*table)? {
            (false, table) => {
                self.rows(n, cols, k::AddPositionalF32 { x, table, scale, offsets, sequences, rows, cols: c, out })
            }
            (true, table) => {
                self.rows(n, cols, k::AddPositionalF16 { x, table, scale, offsets, sequences, rows, cols: c, out })
            }
        }
    }

    pub(super) fn prepend_row(&mut self, op: &Op) -> Result<()> {
        let Op::PrependRow { first, rest, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_row"));
        };
        let cols = self.desc(*out).cols;
        let (out_sequences, rows) = self.row_map(*out_segments)?;
        let kernel = k::PrependRow {
            first: self.ptr(*first),
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

    pub(super) fn prepend_row_positional(&mut self, op: &Op) -> Result<()> {
        let Op::PrependRowPositional { first, rest, table, scale, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_row_positional"));
        };
        let cols = self.desc(*out).cols;
        let (first, rest, scale, out) = (self.ptr(*first), self.ptr(*rest), *scale, self.ptr(*out));
        let (rest_offsets, out_offsets) = (self.offsets(*rest_segments)?, self.offsets(*out_segments)?);
        let (out_sequences, rows) = self.row_map(*out_segments)?;
        let (n, c) = (rows as usize, cols as i64);
        match self.weight_any(*table)? {
            (false, table) => self.rows(
                n,
                cols,
                k::PrependRowPositionalF32 {
                    first,
                    rest,
                    table,
                    scale,
                    rest_offsets,
                    out_offsets,
                    out_sequences,
                    rows,
                    cols: c,
                    out,
                },
            ),
            (true, table) => self.rows(
                n,
                cols,
                k::PrependRowPositionalF16 {
                    first,
                    rest,
                    table,
                    scale,
                    rest_offsets,
                    out_offsets,
                    out_sequences,
                    rows,
                    cols: c,
                    out,
                },
            ),
        }
    }

    pub(super) fn drop_first_row(&mut self, op: &Op) -> Result<()> {
        let Op::DropFirstRow { x, x_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "drop_first_row"));
        };
        let cols = self.desc(*out).cols;
        let (out_sequences, rows) = self.row_map(*out_segments)?;
        let kernel = k::DropFirstRow {
            x: self.ptr(*x),
            x_offsets: self.offsets(*x_segments)?,
            out_offsets: self.offsets(*out_segments)?,
            out_sequences,
            rows,
            cols: cols as i64,
            out: self.ptr(*out),
        };
        self.rows(rows as usize, cols, kernel)
    }
}
