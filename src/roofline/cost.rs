//! What the CUDA backend launches for each op, as it runs today, and what each
//! launch computes and moves: FLOP, bytes read (split into weights, activations
//! and small tables) and bytes written. This mirrors src/backend/cuda (the
//! launchers) and kernels/*.cu; change it with them.
//!
//! Dtypes, from the graph and the backend: every tensor has its `DType` (the
//! DiT's block activations are fp16 on CUDA, `Graph::activations`; the
//! residual stream, the sampler state and everything else f32); weights with
//! two or more dimensions are fp16 (linear layers, conv weights, the position
//! tables), vectors are f32 (gamma, beta, biases, inv_freq; `CudaWeight`). A
//! Linear with an fp16 input is one launch, a cuBLASLt GEMM reading it and the
//! fp16 weight and writing the output's type; with an f32 input it is two:
//! `f32_to_f16` writes the input as fp16 into a scratch buffer first. The
//! GEMM has the bias and the residual in its epilogue (assumed fused: cuBLASLt's heuristic offers the bias epilogue
//! for these shapes; when it does not, the backend adds one `add_bias_rows`
//! launch, which this model does not count). A GEMM counts as one kernel,
//! though cuBLASLt may pick a split-K algorithm with a second, reducing one.
//!
//! Bytes are the traffic at the memory interface with each byte a launch
//! touches counted once: reuse inside a launch is taken to hit the caches
//! (a GEMM's tiles re-read operands that the 50 MB L2 of an H100 holds), reuse
//! across launches is not (a producer's output is written, the consumer reads
//! it back). The exception is worth stating: the flash-attention kernel reads
//! K and V once per 64-query tile (`kv_tile_bytes`), a re-read that consecutive
//! blocks of one (sequence, head) serve from L2, so HBM sees K and V about
//! once; `kv_tile_bytes` reports the L2 traffic separately.
//!
//! FLOP are `Graph::op_flops` (matrix products only; elementwise work is
//! ignored, as there). `tile_flops` is what the tensor cores execute: the
//! same, except attention, which computes whole 64 x 64 tiles of a padded
//! last tile (the roofline's compute time uses it).

use crate::backend::cuda::attention::{AttentionKernel, attention_kernel};
use crate::graph::{ColumnSlice, DType, Graph, Op, Segments, TensorId};

/// Bytes of an f32 value (f32 tensors, vector weights, tables of offsets).
const F32: u64 = 4;
/// Bytes of an fp16 value (matrix weights, GEMM operands).
const F16: u64 = 2;
/// Query and key rows per tile of kernels/flash_attention.cu (FA_BLOCK_M, FA_BLOCK_N).
const FLASH_TILE: u64 = 64;

/// One kernel launch and what it moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCost {
    /// The kernel (a name in kernels/*.cu, or `cublaslt_gemm`).
    pub kernel: &'static str,
    /// Useful matrix-product FLOP (`Graph::op_flops`' share of this launch).
    pub flops: u64,
    /// FLOP the tensor cores execute, padding of partial tiles included.
    pub tile_flops: u64,
    /// Weight bytes read (fp16 matrices, f32 vectors).
    pub weight_bytes: u64,
    /// Activation bytes read (arena tensors, the fp16 GEMM scratch).
    pub read_bytes: u64,
    /// Activation bytes written.
    pub write_bytes: u64,
    /// Small constant tables read: segment offsets, row -> sequence maps, tile starts, step scalars, CFG scales.
    pub table_bytes: u64,
    /// Flash attention only: K and V bytes its blocks read, once per query tile (from L2; not in the byte total).
    pub kv_tile_bytes: u64,
}

impl KernelCost {
    fn new(kernel: &'static str) -> Self {
        KernelCost { kernel, ..Default::default() }
    }

    /// All bytes at the memory interface: weights, activations read and written, tables.
    pub fn bytes(&self) -> u64 {
        self.weight_bytes + self.read_bytes + self.write_bytes + self.table_bytes
    }
}

/// The launches of `op` in `g` on the CUDA backend, in order. (The backend
/// skips a launch over zero elements; no step has one, so they are counted.)
/// A match over every op: adding an op to the graph means saying here what
/// its launcher does.
pub fn kernels(g: &Graph, op: &Op) -> Vec<KernelCost> {
    let len = |t: TensorId| g.desc(t).len() as u64;
    // A whole tensor's bytes in its own type.
    let bytes = |t: TensorId| len(t) * g.desc(t).dtype.bytes() as u64;
    let fp16 = |t: TensorId| g.desc(t).dtype == DType::F16;
    let cols = |t: TensorId| g.desc(t).cols as u64;
    // A segment table: `count + 1` int32 offsets.
    let offsets = |s: &Segments| (s.count() as u64 + 1) * F32;
    // A row -> sequence map: one int32 per row (`row_sequences`), read by the
    // row-wise kernels in place of a search in the offsets.
    let row_map = |s: &Segments| s.total() as u64 * F32;
    let flops = g.op_flops(op);
    // An elementwise-style launch: reads `read` activation bytes, writes `write`.
    let simple =
        |kernel, read_bytes: u64, write_bytes: u64| KernelCost { read_bytes, write_bytes, ..KernelCost::new(kernel) };
    match op {
        Op::Linear { x, bias, residual, out, .. } => {
            let (m, k, n) = (g.desc(*x).rows as u64, cols(*x), cols(*out));
            let gemm = KernelCost {
                flops,
                tile_flops: flops,
                weight_bytes: n * k * F16 + bias.map_or(0, |_| n * F32),
                read_bytes: m * k * F16 + residual.map_or(0, bytes),
                write_bytes: bytes(*out),
                ..KernelCost::new("cublaslt_gemm")
            };
            if fp16(*x) { vec![gemm] } else { vec![simple("f32_to_f16", m * k * F32, m * k * F16), gemm] }
        }
        Op::LayerNorm { x, modulation, out, .. } => {
            let c = cols(*x);
            let kernel = if fp16(*out) { "layer_norm_f16" } else { "layer_norm_f32" };
            let mut k = simple(kernel, bytes(*x), bytes(*out));
            k.weight_bytes = 2 * c * F32;
            if let Some(m) = modulation {
                let seg = g.seg(m.segments);
                // Each sequence's scale and shift rows of the table.
                k.table_bytes = offsets(seg) + seg.count() as u64 * 2 * c * F32;
            }
            vec![k]
        }
        Op::GatedResidual { branch, residual, segments, out, .. } => {
            let seg = g.seg(*segments);
            let kernel = if fp16(*branch) { "gated_residual_f16" } else { "gated_residual_f32" };
            let mut k = simple(kernel, bytes(*branch) + bytes(*residual), bytes(*out));
            k.table_bytes = row_map(seg) + seg.count() as u64 * cols(*out) * F32;
            vec![k]
        }
        Op::Silu { x, out } => vec![simple("silu_f32", len(*x) * F32, len(*out) * F32)],
        Op::QuickGelu { x, out } => vec![simple("quick_gelu_f32", len(*x) * F32, len(*out) * F32)],
        Op::SwiGlu { x, out } => {
            vec![simple(if fp16(*x) { "swiglu_f16" } else { "swiglu_f32" }, bytes(*x), bytes(*out))]
        }
        Op::TimestepFeatures { t, out, .. } => {
            let mut k = simple("timestep_features", len(*t) * F32, len(*out) * F32);
            k.weight_bytes = cols(*out) / 2 * F32;
            vec![k]
        }
        Op::AddPositional { x, segments, out, .. } => {
            let seg = g.seg(*segments);
            let mut k = simple("add_positional_f16", len(*x) * F32, len(*out) * F32);
            // The position table is a matrix, so fp16 (`CudaWeight`); the rows of the
            // longest sequence, which every sequence's rows share.
            k.weight_bytes = seg.lengths().max().unwrap_or(0) as u64 * cols(*x) * F16;
            k.table_bytes = offsets(seg) + row_map(seg);
            vec![k]
        }
        Op::PrependRow { first, rest, rest_segments, out_segments, out } => {
            let mut k = simple("prepend_row", (len(*first) + len(*rest)) * F32, len(*out) * F32);
            let out_seg = g.seg(*out_segments);
            k.table_bytes = offsets(g.seg(*rest_segments)) + offsets(out_seg) + row_map(out_seg);
            vec![k]
        }
        Op::PrependRowPositional { first, rest, rest_segments, out_segments, out, .. } => {
            // PrependRow and AddPositional in one pass: their reads, one write.
            let out_seg = g.seg(*out_segments);
            let mut k = simple("prepend_row_positional_f16", (len(*first) + len(*rest)) * F32, len(*out) * F32);
            k.weight_bytes = out_seg.lengths().max().unwrap_or(0) as u64 * cols(*out) * F16;
            k.table_bytes = offsets(g.seg(*rest_segments)) + offsets(out_seg) + row_map(out_seg);
            vec![k]
        }
        Op::DropFirstRow { x_segments, out_segments, out, .. } => {
            // Reads only the rows it keeps.
            let mut k = simple("drop_first_row", len(*out) * F32, len(*out) * F32);
            let out_seg = g.seg(*out_segments);
            k.table_bytes = offsets(g.seg(*x_segments)) + offsets(out_seg) + row_map(out_seg);
            vec![k]
        }
        Op::Attention { .. } => vec![attention(g, op, flops)],
        Op::CfgExpand { x, scalars, x_segments, out } => {
            let mut k = simple("cfg_expand", len(*x) * F32, len(*out) * F32);
            k.table_bytes = row_map(g.seg(*x_segments)) + len(*scalars) * F32;
            vec![k]
        }
        Op::CfgDenoise { v, x, scalars, x_segments, cfg_scales, out } => {
            let mut k = simple("cfg_denoise", (len(*v) + len(*x)) * F32, len(*out) * F32);
            k.table_bytes = row_map(g.seg(*x_segments)) + len(*scalars) * F32 + cfg_scales.len() as u64 * F32;
            vec![k]
        }
        Op::Dpmpp3mUpdate { x, scalars, x_segments, .. } => {
            // Mid-schedule every coefficient is non-zero: reads x, denoised, d1, d2 and
            // the noise; writes x, d1 and d2 in place (kernels/sampler.cu).
            let n = len(*x);
            let mut k = simple("dpmpp_3m_update", 5 * n * F32, 3 * n * F32);
            k.table_bytes = row_map(g.seg(*x_segments)) + len(*scalars) * F32;
            vec![k]
        }
        Op::SelectStepRow { scalars, out, .. } => {
            let mut k = simple("select_step_row", len(*out) * F32, len(*out) * F32);
            k.table_bytes = len(*scalars) * F32;
            vec![k]
        }
        Op::Conv1d { x, input_snake, kernel, bias, residual, segments, out, .. } => {
            // One implicit-GEMM launch (kernels/conv1d.cu): the input read as f32 (SnakeBeta
            // applied as it is loaded), the fp16 weight [C_out, K * C_in], f32 out.
            let (cin, cout) = (cols(*x), cols(*out));
            let mut k = simple("conv1d_implicit_gemm", (len(*x) + residual.map_or(0, len)) * F32, len(*out) * F32);
            k.flops = flops;
            k.tile_flops = flops;
            k.weight_bytes = cout * *kernel as u64 * cin * F16
                + bias.map_or(0, |_| cout * F32)
                + input_snake.map_or(0, |_| 2 * cin * F32);
            k.table_bytes = offsets(g.seg(*segments));
            vec![k]
        }
        Op::ConvTranspose1d { x, input_snake, bias, stride, in_segments, out_segments, out, .. } => {
            // The same kernel, one phase per grid z; weight [stride, C_out, 2 * C_in] fp16.
            let (cin, cout) = (cols(*x), cols(*out));
            let mut k = simple("conv1d_implicit_gemm", len(*x) * F32, len(*out) * F32);
            k.flops = flops;
            k.tile_flops = flops;
            k.weight_bytes = *stride as u64 * cout * 2 * cin * F16
                + bias.map_or(0, |_| cout * F32)
                + input_snake.map_or(0, |_| 2 * cin * F32);
            k.table_bytes = offsets(g.seg(*in_segments)) + offsets(g.seg(*out_segments));
            vec![k]
        }
        Op::SnakeBeta { x, out, .. } => {
            let mut k = simple("snake_beta_f32", len(*x) * F32, len(*out) * F32);
            k.weight_bytes = 2 * cols(*x) * F32;
            vec![k]
        }
        Op::Patchify { images, out, .. } => vec![simple("patchify", len(*images) * F32, len(*out) * F32)],
        Op::PrependWeightRow { rest, rest_segments, out_segments, out, .. } => {
            let mut k = simple("prepend_weight_row", len(*rest) * F32, len(*out) * F32);
            k.weight_bytes = cols(*out) * F32;
            let out_seg = g.seg(*out_segments);
            k.table_bytes = offsets(g.seg(*rest_segments)) + offsets(out_seg) + row_map(out_seg);
            vec![k]
        }
        Op::FirstRows { segments, out, .. } => {
            let mut k = simple("first_rows", len(*out) * F32, len(*out) * F32);
            k.table_bytes = offsets(g.seg(*segments));
            vec![k]
        }
    }
}

/// `Op::Attention` on the flash kernel (head_dim 64, every attention of the
/// models): grid (query tiles, heads), each block reads its 64 queries once and
/// every key and value of its sequence's kv head once per query tile.
fn attention(g: &Graph, op: &Op, flops: u64) -> KernelCost {
    let Op::Attention { q, k, v, q_segments, kv_segments, heads, kv_heads, head_dim, rope, out, .. } = op else {
        return KernelCost::default();
    };
    let (qs, ks) = (g.seg(*q_segments), g.seg(*kv_segments));
    let (heads, kv_heads, hd) = (*heads as u64, *kv_heads as u64, *head_dim as u64);
    // One element type for q, k, v and out (the launcher refuses a mix).
    let elem = g.desc(*out).dtype.bytes() as u64;
    let kernel = match attention_kernel(*head_dim, rope.map(|r| r.rotary_dim)) {
        AttentionKernel::Flash if elem == F16 => "flash_attention_hd64_f16",
        AttentionKernel::Flash => "flash_attention_hd64",
        // Other head dims (no model has one) run the f32 kernel; modelled with the same bytes.
        AttentionKernel::F32 => "attention_f32",
    };
    // The q, k and v column slices: only their heads' columns of their rows are read.
    let slice = |s: &ColumnSlice, rows: usize, width: u64| rows as u64 * width.min(s.width as u64) * elem;
    let q_bytes = slice(q, qs.total(), heads * hd);
    let kv_bytes = slice(k, ks.total(), kv_heads * hd) + slice(v, ks.total(), kv_heads * hd);
    // Per sequence: ceil(Lq / 64) query tiles, each reading all Lk keys and values of every head's kv head.
    let (mut tile_flops, mut kv_tile_bytes) = (0u64, 0u64);
    for b in 0..qs.count().min(ks.count()) {
        let (lq, lk) = (qs.len_of(b) as u64, ks.len_of(b) as u64);
        let (q_tiles, k_tiles) = (lq.div_ceil(FLASH_TILE), lk.div_ceil(FLASH_TILE));
        tile_flops += 4 * (q_tiles * FLASH_TILE) * (k_tiles * FLASH_TILE) * heads * hd;
        kv_tile_bytes += q_tiles * heads * 2 * lk * hd * elem;
    }
    KernelCost {
        kernel,
        flops,
        tile_flops: if kernel == "attention_f32" { flops } else { tile_flops },
        weight_bytes: 0,
        read_bytes: q_bytes + kv_bytes,
        write_bytes: g.desc(*out).len() as u64 * elem,
        // q and kv offsets, and the query-tile starts (count + 1 int32 each);
        // with RoPE, the angle table's rows (`attention::rope_table`: one per
        // position of the longest sequence, 16 (cos, sin) f32 pairs).
        table_bytes: 3 * (qs.count() as u64 + 1) * F32
            + rope.map_or(0, |_| qs.lengths().chain(ks.lengths()).max().unwrap_or(0) as u64 * 16 * 2 * F32),
        kv_tile_bytes,
    }
}
