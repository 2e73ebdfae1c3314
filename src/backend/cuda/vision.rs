//! Launchers of the CLIP image tower's small ops (kernels/vision.cu): patch
//! extraction, the class-token prepend, QuickGELU (a kernel after the fc1 GEMM)
//! and the gather of the class tokens.

use cudarc::driver::sys::CUdeviceptr;

use super::{Arg, CudaBackend, OpContext};
use crate::error::{Error, Result};
use crate::graph::{Op, TensorId};

impl CudaBackend {
    /// Runs `Op::Patchify`, `Op::PrependWeightRow`, `Op::QuickGelu` or `Op::FirstRows`.
    pub(super) fn run_vision_op(
        &self,
        op: &Op,
        ctx: &mut OpContext<'_, Self>,
        ptr: &dyn Fn(TensorId) -> CUdeviceptr,
    ) -> Result<()> {
        let g = ctx.graph;
        match op {
            Op::Patchify { images, channels, size, patch, out } => {
                let (id, od) = (g.desc(*images), g.desc(*out));
                let grid = if *patch == 0 { 0 } else { size / patch };
                if *patch == 0
                    || id.cols != channels * size * size
                    || od.rows != id.rows * grid * grid
                    || od.cols != channels * patch * patch
                {
                    return Err(Error::InvalidInput(format!(
                        "graph bug: patchify of `{}` [{}, {}] ({channels} x {size} x {size}, patch {patch}) into `{}` [{}, {}]",
                        id.name, id.rows, id.cols, od.name, od.rows, od.cols
                    )));
                }
                // patchify(images, channels, size, patch, out, n_out)
                self.launch_elementwise(
                    "patchify",
                    od.len(),
                    &[
                        Arg::Ptr(ptr(*images)),
                        Arg::I32(*channels as i32),
                        Arg::I32(*size as i32),
                        Arg::I32(*patch as i32),
                        Arg::Ptr(ptr(*out)),
                        Arg::I64(od.len() as i64),
                    ],
                )
            }
            Op::PrependWeightRow { row, rest, rest_segments, out_segments, out } => {
                let (rs, os) = (g.seg(*rest_segments), g.seg(*out_segments));
                let cols = g.desc(*out).cols;
                if rs.count() != os.count() || rs.lengths().zip(os.lengths()).any(|(r, o)| o != r + 1) {
                    return Err(Error::InvalidInput(format!(
                        "prepend_weight_row `{}`: output sequences must be one row longer",
                        g.desc(*out).name
                    )));
                }
                let row = self.weight_f32(ctx.weights, *row, cols, "the prepended row")?;
                let (ro, oo) = (self.offsets(ctx.arena, rs)?, self.offsets(ctx.arena, os)?);
                // prepend_weight_row(row, rest, rest_offsets, out_offsets, count, cols, out)
                self.launch_elementwise(
                    "prepend_weight_row",
                    os.total() * cols,
                    &[
                        Arg::Ptr(row),
                        Arg::Ptr(ptr(*rest)),
                        Arg::Ptr(ro),
                        Arg::Ptr(oo),
                        Arg::I32(os.count() as i32),
                        Arg::I64(cols as i64),
                        Arg::Ptr(ptr(*out)),
                    ],
                )
            }
            Op::QuickGelu { x, out } => {
                let n = g.desc(*out).len();
                // quick_gelu_f32(x, out, n)
                self.launch_elementwise(
                    "quick_gelu_f32",
                    n,
                    &[Arg::Ptr(ptr(*x)), Arg::Ptr(ptr(*out)), Arg::I64(n as i64)],
                )
            }
            Op::FirstRows { x, segments, out } => {
                let seg = g.seg(*segments);
                let cols = g.desc(*out).cols;
                if g.desc(*out).rows != seg.count() || seg.lengths().any(|l| l == 0) {
                    return Err(Error::InvalidInput(format!(
                        "first_rows `{}`: one output row per non-empty sequence",
                        g.desc(*out).name
                    )));
                }
                let offsets = self.offsets(ctx.arena, seg)?;
                // first_rows(x, offsets, count, cols, out)
                self.launch_elementwise(
                    "first_rows",
                    seg.count() * cols,
                    &[
                        Arg::Ptr(ptr(*x)),
                        Arg::Ptr(offsets),
                        Arg::I32(seg.count() as i32),
                        Arg::I64(cols as i64),
                        Arg::Ptr(ptr(*out)),
                    ],
                )
            }
            other => Err(Error::UnsupportedOp { backend: "CUDA", op: other.name() }),
        }
    }
}
