//! The CPU backend: every op in f32 (statistics and angles in f64), rayon for
//! threads and matrixmultiply for GEMMs. It is the reference the GPU backend
//! is tested against, op by op, so each op is a plain function over slices.
//!
//! With `Precision::Bf16` (or `Auto` on a CPU with a SIMD kernel for it) the
//! Linear ops run on weights rounded to bf16 and packed once
//! (`gemm_bf16`), as do the VAE's convolutions (im2col rows times the packed
//! weight), and attention takes the fast softmax (`softmax`) and SwiGLU a
//! fast SiLU on the same polynomial exp (`elementwise::swiglu_fast`);
//! everything else stays as in the f32 reference.

/// Reference attention with RoPE over packed sequences.
pub mod attention;
/// The VAE decoder's convolutions (f32, or bf16 weights) and SnakeBeta.
pub mod conv;
/// Row- and element-wise ops of the DiT.
pub mod elementwise;
/// Linear with bf16-packed weights and f32 activations.
pub mod gemm_bf16;
/// Linear in f32 with matrixmultiply's SGEMM.
pub mod linear;
/// LayerNorm, adaLN modulation and the gated residual.
pub mod norm;
mod operands;
/// Microbenchmarks of this CPU's peak and Linear GFLOP/s.
pub mod peak;
/// Matrix-product precision and the bf16 kernel's instruction set.
pub mod precision;
/// The sampler's CFG and DPM++ 3M SDE element-wise ops.
pub mod sampler_ops;
/// Row softmax of attention scores: the reference and the bf16 backend's fast one.
pub mod softmax;
/// Bounds on how many CPU threads a run may start.
pub mod threads;
/// Ops of the CLIP image tower.
pub mod vision_ops;

use std::sync::OnceLock;

use gemm_bf16::PackedBf16;
use operands::Operands;
pub use precision::{Isa, Precision, Resolved};

use super::{Backend, OpContext, ProductWeight};
use crate::error::{Error, Result};
use crate::graph::{DType, Op};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// The CPU backend; `CpuBackend` (the constant) and `CpuBackend::new()` are
/// the f32 reference, `CpuBackend::with_precision` picks bf16 GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBackend {
    gemm: Resolved,
    /// The type model graphs give their block activations (`Graph::activations`):
    /// f32, or fp16 to run the CUDA backend's graph as its twin.
    activations: DType,
}

/// The f32 reference backend as a value. `CpuBackend` was a unit struct, and
/// every caller wrote `&CpuBackend` for it; this keeps that meaning.
#[allow(non_upper_case_globals)]
pub const CpuBackend: CpuBackend = CpuBackend { gemm: Resolved::F32, activations: DType::F32 };

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend
    }
}

/// A weight on the CPU: the f32 tensor every op reads, and, for the weights of
/// Linear and convolution ops on a bf16 backend, a bf16 copy in the GEMM
/// kernel's panel layout, made once. A transposed convolution's weight is
/// `stride` matrices, packed one by one.
///
/// When the loader says at upload that a weight is a product's matrix
/// (`Backend::upload_product_weight_from`), a bf16 backend packs it right
/// away and keeps no f32 copy: the released DiT then holds 2 GiB of bf16
/// rather than that plus 4 GiB of f32 nobody reads. Other weights of Linear
/// and convolution ops keep their f32 tensor and are packed by
/// `Backend::prepare` of the first graph that uses them (later executors of the
/// same model reuse the copy).
#[derive(Debug)]
pub struct CpuWeight {
    shape: Vec<usize>,
    /// None for a weight packed at upload, which only the bf16 kernels read.
    tensor: Option<HostTensor>,
    packed: OnceLock<Vec<PackedBf16>>,
}

impl CpuWeight {
    /// Wraps a host tensor; its bf16 packing is made on first use.
    pub fn new(tensor: HostTensor) -> Self {
        CpuWeight { shape: tensor.shape.clone(), tensor: Some(tensor), packed: OnceLock::new() }
    }

    /// A weight held only as its bf16 copies (`groups` matrices), packed at upload.
    fn packed_only(shape: &[usize], groups: Vec<PackedBf16>) -> Self {
        CpuWeight { shape: shape.to_vec(), tensor: None, packed: OnceLock::from(groups) }
    }

    /// Shape as the graph uses it.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the weight has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 tensor; None for a weight packed at upload (bf16 only).
    pub fn f32_tensor(&self) -> Option<&HostTensor> {
        self.tensor.as_ref()
    }

    /// The f32 values an op reads; an error for a weight held only in bf16.
    fn f32_values(&self) -> Result<&[f32]> {
        match &self.tensor {
            Some(t) => Ok(&t.data),
            None => Err(Error::InvalidInput(format!(
                "graph bug: an op reads in f32 a {:?} weight that was packed to bf16 at load and has no f32 copy",
                self.shape
            ))),
        }
    }

    /// The bf16 copy (one packed matrix per group), when one was made.
    pub fn packed(&self) -> Option<&[PackedBf16]> {
        self.packed.get().map(Vec::as_slice)
    }

    /// The bf16 copy of this `[n, k]` weight, packing it on first use.
    fn packed_as(&self, n: usize, k: usize) -> Result<&PackedBf16> {
        Ok(&self.packed_groups(1, n, k)?[0])
    }

    /// The bf16 copies of this weight seen as `groups` stacked `[n, k]`
    /// matrices, packing them on first use.
    fn packed_groups(&self, groups: usize, n: usize, k: usize) -> Result<&[PackedBf16]> {
        if self.len() != groups * n * k {
            return Err(Error::InvalidInput(format!(
                "graph bug: a product of {groups} x [{n}, {k}] on a weight of {} values",
                self.len()
            )));
        }
        let packed = match self.packed.get() {
            Some(packed) => packed,
            None => {
                let groups = pack_groups(self.f32_values()?, groups, n, k, PackedBf16::pack)?;
                // Another thread may have packed it meanwhile: either copy is the same.
                self.packed.get_or_init(|| groups)
            }
        };
        if packed.len() != groups || packed.iter().any(|p| (p.n(), p.k()) != (n, k)) {
            let (pn, pk) = packed.first().map_or((0, 0), |p| (p.n(), p.k()));
            return Err(Error::InvalidInput(format!(
                "graph bug: one weight used as {} x [{pn}, {pk}] and as {groups} x [{n}, {k}]",
                packed.len()
            )));
        }
        Ok(packed)
    }
}

/// Packs `data`, `groups` stacked `[n, k]` matrices, one by one with `pack`
/// (`PackedBf16::pack` for f32 values, `pack_f16` for fp16 bits).
fn pack_groups<T>(
    data: &[T],
    groups: usize,
    n: usize,
    k: usize,
    pack: fn(&[T], usize, usize) -> Result<PackedBf16>,
) -> Result<Vec<PackedBf16>> {
    (0..groups).map(|g| pack(&data[g * n * k..(g + 1) * n * k], n, k)).collect()
}

thread_local! {
    /// Arenas allocated by this thread. Counted per thread because the CPU
    /// backend is a unit value every caller makes anew, and an executor
    /// allocates its arena on the thread that makes it: concurrent tests do
    /// not see each other's allocations.
    static ARENA_ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl CpuBackend {
    /// The f32 reference.
    pub fn new() -> Self {
        CpuBackend
    }

    /// `precision` resolved against this CPU (`Precision::resolve`).
    pub fn with_precision(precision: Precision) -> Self {
        CpuBackend { gemm: precision.resolve(), ..CpuBackend }
    }

    /// bf16 GEMMs with one given kernel (tests and benchmarks of each
    /// kernel); an error when this CPU cannot run it.
    pub fn with_bf16_kernel(isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(Error::InvalidInput(format!("this CPU cannot run the {} bf16 kernel", isa.name())));
        }
        Ok(CpuBackend { gemm: Resolved::Bf16(isa), ..CpuBackend })
    }

    /// This backend, building model graphs with fp16 block activations
    /// (rounded to fp16 after the op that writes them, `DType`): the graph the
    /// CUDA backend runs, in f32 arithmetic. For measuring what fp16
    /// activations cost in accuracy, and as the GPU path's twin end to end.
    pub fn with_fp16_activations(self) -> Self {
        CpuBackend { activations: DType::F16, ..self }
    }

    /// What the Linear ops run: f32, or bf16 weights with which kernel.
    pub fn resolved(&self) -> Resolved {
        self.gemm
    }

    /// The attention softmax: the reference on the f32 path, the fast one
    /// (polynomial exp, f32 sums) with bf16 GEMMs, on the same instruction set.
    pub fn softmax(&self) -> softmax::Softmax {
        match self.gemm {
            Resolved::F32 => softmax::Softmax::Reference,
            Resolved::Bf16(isa) => softmax::Softmax::Fast(isa),
        }
    }

    /// A convolution's weight as its products read it: f32, or (bf16 backend)
    /// its `groups` packed `[n, k]` matrices.
    fn conv_weight<'w>(
        &self,
        weight: &'w CpuWeight,
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<conv::ConvWeight<'w>> {
        Ok(match self.gemm {
            Resolved::F32 => conv::ConvWeight::F32(weight.f32_values()?),
            Resolved::Bf16(isa) => conv::ConvWeight::Bf16(isa, weight.packed_groups(groups, n, k)?),
        })
    }

    /// Bytes of the bf16 copies made so far of `weights` (0 on the f32 path).
    pub fn packed_bytes(weights: &[CpuWeight]) -> usize {
        weights.iter().filter_map(|w| w.packed()).flatten().map(PackedBf16::bytes).sum()
    }
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;
    type Weight = CpuWeight;

    fn activation_dtype(&self) -> DType {
        self.activations
    }

    fn name(&self) -> String {
        let name = match self.gemm {
            Resolved::F32 => format!("cpu (f32, {} threads)", rayon::current_num_threads()),
            Resolved::Bf16(isa) => format!(
                "cpu (bf16 weights in Linear and conv ops, {} kernel; fast softmax and SiLU; f32 elsewhere; {} threads)",
                isa.name(),
                rayon::current_num_threads()
            ),
        };
        match self.activations {
            DType::F32 => name,
            DType::F16 => format!("{name}, fp16 block activations"),
        }
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| Error::InvalidInput(format!("cannot allocate {} MiB for the arena", (len * 4) >> 20)))?;
        v.resize(len, 0.0);
        ARENA_ALLOCATIONS.with(|n| n.set(n.get() + 1));
        Ok(v)
    }

    /// Arenas allocated so far by the calling thread (weights are host tensors,
    /// shared, not counted).
    fn device_allocations(&self) -> u64 {
        ARENA_ALLOCATIONS.with(|n| n.get())
    }

    fn upload_weight(&self, tensor: &HostTensor) -> Result<CpuWeight> {
        Ok(CpuWeight::new(tensor.clone()))
    }

    /// The f32 tensor as `tensor` returns it, kept rather than copied.
    fn upload_weight_from(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> Result<CpuWeight> {
        Ok(CpuWeight::new(source.tensor(key, shape)?))
    }

    /// On a bf16 backend, only the packed bf16 copy, made now: from the stored
    /// fp16 bits when the source has them (no f32 copy at all), else from the
    /// f32 tensor, dropped once packed. The f32 path keeps the f32 tensor.
    fn upload_product_weight_from(
        &self,
        source: &dyn TensorSource,
        key: &str,
        shape: &[usize],
        product: ProductWeight,
    ) -> Result<CpuWeight> {
        let Resolved::Bf16(_) = self.gemm else { return self.upload_weight_from(source, key, shape) };
        let ProductWeight { groups, n, k } = product;
        if shape.iter().product::<usize>() != groups * n * k {
            return Err(Error::InvalidInput(format!(
                "loader bug: `{key}` of shape {shape:?} declared as {groups} x [{n}, {k}]"
            )));
        }
        let packed = match source.tensor_f16(key, shape)? {
            Some(bits) => pack_groups(&bits, groups, n, k, PackedBf16::pack_f16)?,
            None => pack_groups(&source.tensor(key, shape)?.data, groups, n, k, PackedBf16::pack)?,
        };
        Ok(CpuWeight::packed_only(shape, packed))
    }

    /// The f32 tensor (if kept), plus its bf16 copy once made.
    fn weight_bytes(&self, weight: &CpuWeight) -> usize {
        weight.tensor.as_ref().map_or(0, |t| t.len() * std::mem::size_of::<f32>())
            + weight.packed().map_or(0, |groups| groups.iter().map(PackedBf16::bytes).sum())
    }

    fn weight_len(&self, weight: &CpuWeight) -> usize {
        weight.len()
    }

    fn device_memory_free(&self) -> Option<usize> {
        // MemAvailable: what can be allocated without swapping (Linux only).
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// On a bf16 backend, packs the weight of every Linear op of the graph that
    /// has no bf16 copy yet, so that no step pays for it.
    fn prepare(&self, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        if let Resolved::Bf16(_) = self.gemm {
            let g = ctx.graph;
            for op in &g.ops {
                match op {
                    Op::Linear { x, w, out, .. } => {
                        ctx.weights[w.0].packed_as(g.desc(*out).cols, g.desc(*x).cols)?;
                    }
                    Op::Conv1d { x, w, kernel, out, .. } => {
                        ctx.weights[w.0].packed_as(g.desc(*out).cols, kernel * g.desc(*x).cols)?;
                    }
                    Op::ConvTranspose1d { x, w, stride, out, .. } => {
                        ctx.weights[w.0].packed_groups(*stride, g.desc(*out).cols, 2 * g.desc(*x).cols)?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn write(&self, buffer: &mut Vec<f32>, offset: usize, data: &[f32]) -> Result<()> {
        buffer[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, buffer: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&buffer[offset..offset + out.len()]);
        Ok(())
    }

    /// One line per op: each op's operand plumbing lives with its function
    /// in the topic module (elementwise, norm, linear, attention, sampler_ops,
    /// conv, vision_ops), the shared part once in `operands`. Every op
    /// computes in f32 whatever its tensors' `DType`; fp16 outputs are then
    /// rounded as a GPU's store rounds them.
    fn run_op(&self, op: &Op, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        let io = Operands::new(*self, ctx, op)?;
        let ran = match op {
            Op::Linear { .. } => io.linear(op),
            Op::LayerNorm { .. } => io.layer_norm(op),
            Op::GatedResidual { .. } => io.gated_residual(op),
            Op::Silu { x, out } => io.silu(*x, *out),
            Op::SwiGlu { x, out } => io.swiglu(*x, *out),
            Op::TimestepFeatures { .. } => io.timestep_features(op),
            Op::AddPositional { .. } => io.add_positional(op),
            Op::PrependRow { .. } => io.prepend_row(op),
            Op::PrependRowPositional { .. } => io.prepend_row_positional(op),
            Op::DropFirstRow { .. } => io.drop_first_row(op),
            Op::Attention { .. } => io.attention(op),
            Op::CfgExpand { .. } => io.cfg_expand(op),
            Op::CfgDenoise { .. } => io.cfg_denoise(op),
            Op::Dpmpp3mUpdate { .. } => io.dpmpp_3m_update(op),
            Op::SelectStepRow { .. } => io.select_step_row(op),
            Op::Conv1d { .. } => io.conv1d(op),
            Op::ConvTranspose1d { .. } => io.conv_transpose1d(op),
            Op::SnakeBeta { .. } => io.snake_beta(op),
            Op::Patchify { .. } => io.patchify(op),
            Op::PrependWeightRow { .. } => io.prepend_weight_row(op),
            Op::QuickGelu { x, out } => io.quick_gelu(*x, *out),
            Op::FirstRows { .. } => io.first_rows(op),
        };
        ran?;
        io.round_fp16_outputs();
        Ok(())
    }
}
