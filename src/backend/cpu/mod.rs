//! The CPU backend: every op in f32 (statistics and angles in f64), rayon for
//! threads and matrixmultiply for GEMMs. It is the reference the GPU backend
//! is tested against, op by op, so each op is a plain function over slices.
//!
//! With `Precision::Bf16` (or `Auto` on a CPU with a SIMD kernel for it) the
//! Linear ops run on weights rounded to bf16 and packed once
//! (`gemm_bf16`), as do the VAE's convolutions (im2col rows times the packed
//! weight), and attention takes the fast softmax (`softmax`);
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

use super::{Backend, OpContext};
use crate::error::{Error, Result};
use crate::graph::{ColumnSlice, Op};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// The CPU backend; `CpuBackend` (the constant) and `CpuBackend::new()` are
/// the f32 reference, `CpuBackend::with_precision` picks bf16 GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBackend {
    gemm: Resolved,
}

/// The f32 reference backend as a value. `CpuBackend` was a unit struct, and
/// every caller wrote `&CpuBackend` for it; this keeps that meaning.
#[allow(non_upper_case_globals)]
pub const CpuBackend: CpuBackend = CpuBackend { gemm: Resolved::F32 };

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend
    }
}

/// A weight on the CPU: the f32 tensor every op reads, and, for the weights of
/// Linear and convolution ops on a bf16 backend, a bf16 copy in the GEMM
/// kernel's panel layout, made once (`Backend::prepare` of the first graph
/// that uses it; later executors of the same model reuse it). A transposed
/// convolution's weight is `stride` matrices, packed one by one.
#[derive(Debug)]
pub struct CpuWeight {
    tensor: HostTensor,
    packed: OnceLock<Vec<PackedBf16>>,
}

impl CpuWeight {
    /// Wraps a host tensor; its bf16 packing is made on first use.
    pub fn new(tensor: HostTensor) -> Self {
        CpuWeight { tensor, packed: OnceLock::new() }
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
        if self.tensor.len() != groups * n * k {
            return Err(Error::InvalidInput(format!(
                "graph bug: a product of {groups} x [{n}, {k}] on a weight of {} values",
                self.tensor.len()
            )));
        }
        let packed = self.packed.get_or_init(|| {
            let data = &self.tensor.data;
            (0..groups).map(|g| PackedBf16::pack(&data[g * n * k..(g + 1) * n * k], n, k)).collect()
        });
        if packed.len() != groups || packed.iter().any(|p| (p.n(), p.k()) != (n, k)) {
            return Err(Error::InvalidInput(format!(
                "graph bug: one weight used as {} x [{}, {}] and as {groups} x [{n}, {k}]",
                packed.len(),
                packed[0].n(),
                packed[0].k()
            )));
        }
        Ok(packed)
    }
}

impl std::ops::Deref for CpuWeight {
    type Target = HostTensor;

    fn deref(&self) -> &HostTensor {
        &self.tensor
    }
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
        CpuBackend { gemm: precision.resolve() }
    }

    /// bf16 GEMMs with one given kernel (tests and benchmarks of each
    /// kernel); an error when this CPU cannot run it.
    pub fn with_bf16_kernel(isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(Error::InvalidInput(format!("this CPU cannot run the {} bf16 kernel", isa.name())));
        }
        Ok(CpuBackend { gemm: Resolved::Bf16(isa) })
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
            Resolved::F32 => conv::ConvWeight::F32(&weight.tensor.data),
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

    fn name(&self) -> String {
        match self.gemm {
            Resolved::F32 => format!("cpu (f32, {} threads)", rayon::current_num_threads()),
            Resolved::Bf16(isa) => format!(
                "cpu (bf16 weights in Linear and conv ops, {} kernel; fast softmax; f32 elsewhere; {} threads)",
                isa.name(),
                rayon::current_num_threads()
            ),
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

    /// The f32 tensor, plus its bf16 copy once made.
    fn weight_bytes(&self, weight: &CpuWeight) -> usize {
        weight.len() * std::mem::size_of::<f32>()
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

    fn run_op(&self, op: &Op, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        let g = ctx.graph;
        let w = |id: crate::graph::WeightId| ctx.weights[id.0].data.as_slice();
        let io = Operands::new(ctx.arena, g, ctx.plan, op)?;
        let strided = |s: &ColumnSlice| attention::Strided {
            data: io.input(s.tensor),
            ld: g.desc(s.tensor).cols,
            offset: s.offset,
        };
        match op {
            Op::Linear { x, w: wid, bias, residual, out } => {
                let (xd, od) = (g.desc(*x), g.desc(*out));
                match self.gemm {
                    Resolved::F32 => linear::linear(
                        io.input(*x),
                        xd.rows,
                        xd.cols,
                        w(*wid),
                        od.cols,
                        bias.map(w),
                        residual.map(|r| io.input(r)),
                        io.output(*out),
                    ),
                    Resolved::Bf16(isa) => gemm_bf16::linear_bf16(
                        isa,
                        io.input(*x),
                        xd.rows,
                        xd.cols,
                        ctx.weights[wid.0].packed_as(od.cols, xd.cols)?,
                        od.cols,
                        bias.map(w),
                        residual.map(|r| io.input(r)),
                        io.output(*out),
                    ),
                }
            }
            Op::LayerNorm { x, gamma, beta, eps, modulation, out } => {
                let m = modulation.map(|m| norm::Modulation {
                    table: io.input(m.table),
                    table_cols: g.desc(m.table).cols,
                    scale_offset: m.scale_offset,
                    shift_offset: m.shift_offset,
                    segments: g.seg(m.segments),
                });
                norm::layer_norm(io.input(*x), g.desc(*x).cols, w(*gamma), w(*beta), *eps, m.as_ref(), io.output(*out));
            }
            Op::GatedResidual { branch, residual, table, gate_offset, segments, out } => norm::gated_residual(
                io.input(*branch),
                io.input(*residual),
                g.desc(*out).cols,
                io.input(*table),
                g.desc(*table).cols,
                *gate_offset,
                g.seg(*segments),
                io.output(*out),
            ),
            Op::Silu { x, out } => elementwise::silu_all(io.input(*x), io.output(*out)),
            Op::SwiGlu { x, out } => elementwise::swiglu(io.input(*x), g.desc(*out).cols, io.output(*out)),
            Op::TimestepFeatures { t, w: wid, out } => {
                elementwise::timestep_features(io.input(*t), w(*wid), io.output(*out))
            }
            Op::AddPositional { x, table, scale, segments, out } => {
                elementwise::add_positional(
                    io.input(*x),
                    g.desc(*x).cols,
                    w(*table),
                    *scale,
                    g.seg(*segments),
                    io.output(*out),
                );
            }
            Op::PrependRow { first, rest, rest_segments, out_segments, out } => elementwise::prepend_row(
                io.input(*first),
                io.input(*rest),
                g.desc(*out).cols,
                g.seg(*rest_segments),
                g.seg(*out_segments),
                io.output(*out),
            ),
            Op::PrependRowPositional { first, rest, table, scale, rest_segments, out_segments, out } => {
                elementwise::prepend_row_positional(
                    io.input(*first),
                    io.input(*rest),
                    g.desc(*out).cols,
                    (w(*table), *scale),
                    g.seg(*rest_segments),
                    g.seg(*out_segments),
                    io.output(*out),
                )
            }
            Op::DropFirstRow { x, x_segments, out_segments, out } => elementwise::drop_first_row(
                io.input(*x),
                g.desc(*out).cols,
                g.seg(*x_segments),
                g.seg(*out_segments),
                io.output(*out),
            ),
            Op::Attention { q, k, v, q_segments, kv_segments, heads, kv_heads, head_dim, scale, rope, out } => {
                let params = attention::AttentionParams {
                    heads: *heads,
                    kv_heads: *kv_heads,
                    head_dim: *head_dim,
                    scale: *scale,
                    rope: rope.map(|r| (w(r.inv_freq), r.rotary_dim)),
                    softmax: self.softmax(),
                };
                attention::attention(
                    strided(q),
                    strided(k),
                    strided(v),
                    g.seg(*q_segments),
                    g.seg(*kv_segments),
                    &params,
                    io.output(*out),
                );
            }
            Op::CfgExpand { x, scalars, x_segments, out } => sampler_ops::cfg_expand(
                io.input(*x),
                g.desc(*x).cols,
                io.input(*scalars),
                g.seg(*x_segments),
                io.output(*out),
            ),
            Op::CfgDenoise { v, x, scalars, x_segments, cfg_scales, out } => sampler_ops::cfg_denoise(
                io.input(*v),
                io.input(*x),
                g.desc(*x).cols,
                io.input(*scalars),
                g.seg(*x_segments),
                cfg_scales,
                io.output(*out),
            ),
            Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, x_segments } => {
                let state = sampler_ops::SamplerState { x: io.output(*x), d1: io.output(*d1), d2: io.output(*d2) };
                sampler_ops::dpmpp_3m_update(
                    state,
                    io.input(*denoised),
                    io.input(*noise),
                    g.desc(*x).cols,
                    io.input(*scalars),
                    g.seg(*x_segments),
                )
            }
            Op::SelectStepRow { table, scalars, out } => sampler_ops::select_step_row(
                io.input(*table),
                g.desc(*table).rows,
                io.input(*scalars),
                io.output(*out),
            )?,
            Op::Conv1d { x, input_snake, w: wid, bias, kernel, dilation, padding, residual, segments, out } => {
                conv::conv1d(
                    io.input(*x),
                    g.desc(*x).cols,
                    input_snake.map(|s| (w(s.alpha), w(s.beta))),
                    self.conv_weight(&ctx.weights[wid.0], 1, g.desc(*out).cols, kernel * g.desc(*x).cols)?,
                    g.desc(*out).cols,
                    *kernel,
                    *dilation,
                    *padding,
                    bias.map(w),
                    residual.map(|r| io.input(r)),
                    g.seg(*segments),
                    io.output(*out),
                )
            }
            Op::ConvTranspose1d { x, input_snake, w: wid, bias, stride, in_segments, out_segments, out } => {
                conv::conv_transpose1d(
                    io.input(*x),
                    g.desc(*x).cols,
                    input_snake.map(|s| (w(s.alpha), w(s.beta))),
                    self.conv_weight(&ctx.weights[wid.0], *stride, g.desc(*out).cols, 2 * g.desc(*x).cols)?,
                    g.desc(*out).cols,
                    *stride,
                    bias.map(w),
                    g.seg(*in_segments),
                    g.seg(*out_segments),
                    io.output(*out),
                )
            }
            Op::SnakeBeta { x, alpha, beta, out } => {
                conv::snake_beta(io.input(*x), w(*alpha), w(*beta), io.output(*out))
            }
            Op::Patchify { images, channels, size, patch, out } => {
                vision_ops::patchify(io.input(*images), *channels, *size, *patch, io.output(*out));
            }
            Op::PrependWeightRow { row, rest, rest_segments, out_segments, out } => vision_ops::prepend_weight_row(
                w(*row),
                io.input(*rest),
                g.desc(*out).cols,
                g.seg(*rest_segments),
                g.seg(*out_segments),
                io.output(*out),
            ),
            Op::QuickGelu { x, out } => vision_ops::quick_gelu_all(io.input(*x), io.output(*out)),
            Op::FirstRows { x, segments, out } => {
                vision_ops::first_rows(io.input(*x), g.desc(*out).cols, g.seg(*segments), io.output(*out))
            }
        }
        Ok(())
    }
}
