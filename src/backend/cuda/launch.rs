//! What every op's launcher needs, written once: operand addresses in the
//! arena, the segment tables `prepare` uploaded, weights in the precision the
//! kernel reads, and the launch itself. Shapes are the graph's business
//! (`Graph::check` ran when the executor was made); a launcher checks only
//! what this device and its kernels cannot do.

use cudarc::driver::{DevicePtr, LaunchConfig};

use super::kernels::{Kernel, Ptr};
use super::{CudaArena, CudaBackend, CudaWeight, OpContext, driver_err};
use crate::error::{Error, Result};
use crate::graph::{ArenaPlan, DType, Graph, Op, SegmentsId, TensorDesc, TensorId, WeightId};

/// Threads per block of the 1-D and 2-D grid-stride kernels.
const ELEMENTWISE_THREADS: u32 = 256;

/// One op's view of the backend, the graph and the arena.
pub(super) struct Launcher<'a> {
    pub(super) backend: &'a CudaBackend,
    pub(super) graph: &'a Graph,
    plan: &'a ArenaPlan,
    pub(super) arena: &'a mut CudaArena,
    weights: &'a [CudaWeight],
    base: Ptr,
}

impl<'a> Launcher<'a> {
    pub(super) fn new(backend: &'a CudaBackend, ctx: &'a mut OpContext<'_, CudaBackend>) -> Self {
        let base = Ptr(ctx.arena.data.device_ptr(&backend.stream).0);
        Launcher { backend, graph: ctx.graph, plan: ctx.plan, arena: &mut *ctx.arena, weights: ctx.weights, base }
    }

    /// The address of tensor `t` in the arena.
    pub(super) fn ptr(&self, t: TensorId) -> Ptr {
        self.base.add_f32(self.plan.offsets[t.0])
    }

    pub(super) fn desc(&self, t: TensorId) -> &'a TensorDesc {
        self.graph.desc(t)
    }

    /// The element type of tensor `t` in the arena.
    pub(super) fn dtype(&self, t: TensorId) -> DType {
        self.graph.desc(t).dtype
    }

    /// The address of columns `offset..` of tensor `t` (in its own elements).
    pub(super) fn column_ptr(&self, t: TensorId, offset: usize) -> Ptr {
        self.ptr(t).add_bytes(offset * self.dtype(t).bytes())
    }

    /// An error unless every tensor `op` reads and writes is f32: the
    /// launchers of ops without fp16 kernels call it, so that an fp16 tensor
    /// is never read as f32 (the graph's builder decides the types).
    pub(super) fn require_f32(&self, op: &Op) -> Result<()> {
        match op.reads().into_iter().chain(op.writes()).find(|&t| self.dtype(t) != DType::F32) {
            Some(t) => Err(self.unsupported_dtype(op, t)),
            None => Ok(()),
        }
    }

    /// The error for an operand type the op's CUDA kernels do not handle.
    pub(super) fn unsupported_dtype(&self, op: &Op, t: TensorId) -> Error {
        let d = self.desc(t);
        Error::InvalidInput(format!(
            "graph bug: the CUDA {} kernels have no variant for `{}` in {}",
            op.name(),
            d.name,
            d.dtype.name()
        ))
    }

    /// The device copy of a segment table's offsets (uploaded by `prepare`).
    pub(super) fn offsets(&mut self, s: SegmentsId) -> Result<Ptr> {
        Ok(Ptr(self.backend.offsets(self.arena, self.graph.seg(s))?))
    }

    /// The device copy of a segment table's row -> sequence map (int32 [rows],
    /// `row_sequences`; uploaded by `prepare`), and its row count for the kernel.
    pub(super) fn row_map(&mut self, s: SegmentsId) -> Result<(Ptr, i32)> {
        let seg = self.graph.seg(s);
        let ptr = Ptr(self.backend.row_map(self.arena, seg)?);
        // row_map refused a batch of 2^31 rows or more.
        Ok((ptr, seg.total() as i32))
    }

    /// A constant table of this arena (uploaded by `prepare`).
    pub(super) fn table(&mut self, values: Vec<u32>) -> Result<Ptr> {
        Ok(Ptr(self.backend.table(self.arena, values)?))
    }

    pub(super) fn weight(&self, id: WeightId) -> Result<&'a CudaWeight> {
        self.weights.get(id.0).ok_or_else(|| Error::InvalidInput(format!("weight {} was not uploaded", id.0)))
    }

    /// The f32 copy of a vector weight (`CudaWeight`: only vectors have one).
    pub(super) fn weight_f32(&self, id: WeightId, what: &str) -> Result<Ptr> {
        let w = self.weight(id)?;
        match &w.f32 {
            Some(d) => Ok(Ptr(d.device_ptr(&self.backend.stream).0)),
            None => Err(Error::InvalidInput(format!(
                "{what} {:?} is a matrix (stored as fp16) where the CUDA backend expects a vector",
                w.shape
            ))),
        }
    }

    /// The fp16 copy of a matrix weight (`CudaWeight`: tensors of two or more dims).
    pub(super) fn weight_f16(&self, id: WeightId, what: &str) -> Result<Ptr> {
        let w = self.weight(id)?;
        match &w.f16 {
            Some(d) => Ok(Ptr(d.device_ptr(&self.backend.stream).0)),
            None => {
                Err(Error::InvalidInput(format!("{what} {:?} is a vector, expected a matrix stored as fp16", w.shape)))
            }
        }
    }

    /// Whichever copy the weight has, f32 preferred: (is f16, address).
    pub(super) fn weight_any(&self, id: WeightId) -> Result<(bool, Ptr)> {
        let w = self.weight(id)?;
        let s = &self.backend.stream;
        match (&w.f32, &w.f16) {
            (Some(d), _) => Ok((false, Ptr(d.device_ptr(s).0))),
            (None, Some(d)) => Ok((true, Ptr(d.device_ptr(s).0))),
            (None, None) => Err(Error::InvalidInput(format!("weight {} has no data", id.0))),
        }
    }

    pub(super) fn launch<K: Kernel>(&self, cfg: LaunchConfig, kernel: K) -> Result<()> {
        self.backend.launch(cfg, kernel)
    }

    pub(super) fn elementwise<K: Kernel>(&self, n: usize, kernel: K) -> Result<()> {
        self.backend.launch_elementwise(n, kernel)
    }

    /// A 2-D grid-stride launch over `[rows, cols]` (`CudaBackend::launch_rows`).
    pub(super) fn rows<K: Kernel>(&self, rows: usize, cols: usize, kernel: K) -> Result<()> {
        self.backend.launch_rows(rows, cols, kernel)
    }
}

impl CudaBackend {
    /// Launches `kernel` with `cfg` on the stream.
    pub(super) fn launch<K: Kernel>(&self, cfg: LaunchConfig, kernel: K) -> Result<()> {
        let name = K::NAME;
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("kernel {name} is not in the embedded kernel sources")))?;
        let args = kernel.args();
        // The driver copies each parameter by the size the kernel declares:
        // a declaration out of step with the cubin would be read past its end,
        // silently. Checked against the cubin where the driver can tell.
        if let Some(sizes) = self.param_sizes.get(name) {
            let given: Vec<usize> = args.iter().map(|a| a.size()).collect();
            if &given != sizes {
                return Err(Error::Cuda(format!(
                    "launching {name}: arguments of {given:?} bytes, the kernel's parameters are {sizes:?} bytes"
                )));
            }
        }
        use super::kernels::Arg;
        use cudarc::driver::PushKernelArg;
        let mut builder = self.stream.launch_builder(f);
        for a in &args {
            match a {
                Arg::Ptr(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::U32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        // SAFETY: the arguments follow the kernel's declaration (`kernels`,
        // checked against kernels/*.cu by tests/kernel_launches.rs) and every
        // pointer is inside a live allocation.
        unsafe { builder.launch(cfg) }.map_err(driver_err(format!("launching {name}")))?;
        Ok(())
    }

    /// A 1-D grid-stride launch over `n` elements (nothing to do when n = 0).
    pub(super) fn launch_elementwise<K: Kernel>(&self, n: usize, kernel: K) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).min(1 << 20) as u32;
        let cfg =
            LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEMENTWISE_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.launch(cfg, kernel)
    }

    /// A 2-D grid-stride launch over a `[rows, cols]` tensor (ROW_STRIDE and
    /// COL_STRIDE in kernels/common.cuh; nothing to do when it is empty).
    pub(super) fn launch_rows<K: Kernel>(&self, rows: usize, cols: usize, kernel: K) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let cfg = rows_config(rows, cols);
        self.launch(cfg, kernel)
    }
}

/// The launch shape of a 2-D grid-stride kernel over `[rows, cols]`:
/// `ELEMENTWISE_THREADS` threads per block as (x: columns, y: rows) = (tx,
/// 256 / tx), tx the power of two >= cols in 32..256, so a warp reads
/// consecutive columns of one row and narrow rows still fill a block; grid.x
/// covers the columns (at most 2^20 blocks), grid.y the rows (at most 65535,
/// the hardware's limit; the kernels stride over the rest).
fn rows_config(rows: usize, cols: usize) -> LaunchConfig {
    let tx = cols.next_power_of_two().clamp(32, ELEMENTWISE_THREADS as usize) as u32;
    let ty = ELEMENTWISE_THREADS / tx;
    let gx = cols.div_ceil(tx as usize).min(1 << 20) as u32;
    let gy = rows.div_ceil(ty as usize).min(65535) as u32;
    LaunchConfig { grid_dim: (gx, gy, 1), block_dim: (tx, ty, 1), shared_mem_bytes: 0 }
}

/// The error for a launcher handed another op (a dispatch bug).
pub(super) fn wrong_op(op: &Op, launcher: &str) -> Error {
    Error::InvalidInput(format!("the {launcher} launcher was given a {} op", op.name()))
}
