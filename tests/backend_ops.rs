//! Every CUDA op against its CPU twin (in the style of ggml's
//! test-backend-ops): each case is a one-op graph on random inputs, run on both
//! backends; the table prints the max abs and relative L2 error per op and case
//! and fails when an error exceeds the op's tolerance. Shapes include the
//! awkward ones: length 1, odd lengths, lengths that are no multiple of any tile
//! (32 or 64 keys, 16 or 64 queries, 4 rows per block, 256 threads).
//!
//! Tolerances (relative L2 of the output; why):
//! - linear, operands already fp16-representable: 1e-5. fp16 x fp16 products
//!   are exact in f32, so only the f32 summation order differs from the CPU
//!   (about sqrt(K) * 2^-24 relative).
//! - linear, raw f32 operands: 3e-3. Rounding x and w to fp16 (2^-11 relative
//!   each, uniform, independent) gives a relative error of about
//!   sqrt(2/3) * 2^-11 ~ 4e-4 on a sum of random-sign products; 3e-3 leaves
//!   a 7x margin and still catches any layout bug (which gives O(1)).
//! - add_positional: 1e-6; the table is stored as fp16 on the GPU, so the
//!   test draws fp16-representable table values and the op is then exact up to
//!   f32 rounding.
//! - layer_norm: 1e-5 (f32 statistics on the GPU, f64 on the CPU).
//! - attention, f32 kernel (head_dims other than 64): 1e-5 (online softmax in
//!   f32 vs a two-pass softmax; RoPE angles in f64 on both).
//! - attention, flash kernel (head_dim 64, fp16 Q, K, V and P on tensor cores,
//!   f32 accumulation and softmax): 3e-3. Inputs are uniform in [-2, 2], so
//!   scores scale * q.k have a standard deviation of 1.3 (softmax neither flat
//!   nor one-hot). Rounding q and k to fp16 (rms relative error ~0.6 * 2^-11 =
//!   2.9e-4 each) moves a score by ~1.3 * sqrt(2) * 2.9e-4 = 5.5e-4, i.e. each
//!   probability by 5.5e-4 relative; rounding P and V adds 2.9e-4 each. The
//!   terms of P V have independent errors, so the output's relative L2 error is
//!   about sqrt(5.5^2 + 2 * 2.9^2) * 1e-4 ~ 7e-4; 3e-3 leaves a 4x margin, and a
//!   wrong fragment layout, mask or softmax gives O(1). (Measured on the
//!   virtual GPU: 1.2e-4 to 4.5e-4.)
//! - element-wise ops: 1e-6 (expf vs Rust's exp, FMA contraction: a few ulp).
//! - fp16 tensors (`DType::F16`, the DiT's block activations on CUDA; cases
//!   labelled "fp16"): an fp16 input holds the same values on both backends
//!   (the host's values rounded once as they are written), so it adds nothing.
//!   An fp16 output is the f32 result rounded to fp16 on both (the CPU rounds
//!   after the op, the GPU at its store): where the two f32 results differ by
//!   the op's own error, a rounding can land on neighbouring fp16 values, one
//!   ulp apart, at most 2^-10 of the value. So an fp16 output's tolerance is
//!   the op's f32 tolerance plus 1e-3 (every element one ulp off); a wrong
//!   layout, a lost bias or a misread half still gives O(0.1) or more.
//! - prepend_row, drop_first_row: 0 (copies).
//! - conv1d, conv_transpose1d (implicit GEMMs on tensor cores), without the fused
//!   SnakeBeta and with fp16-representable x and w: 1e-5, the linear case (exact
//!   products, f32 sums in another order), times sqrt(K / 1536) for K > 1536. With the fused SnakeBeta: 3e-3, the
//!   linear bound for raw f32 operands: the activated input is rounded to fp16
//!   (2^-11 relative) on the GPU, and its sin (__sinf) differs from the CPU's
//!   by ~1e-6 absolute before that rounding.
//!   (Measured on the virtual GPU: 0 to 2.6e-6 with fp16-exact operands.)
//! - snake_beta, quick_gelu: 1e-6 (element-wise, a few ulp).
//! - patchify, prepend_weight_row, first_rows: 0 (copies).
//!
//! Without a usable CUDA device the GPU half prints `SKIPPED` (to the real
//! stderr, visible in `cargo test` output) and returns; the CPU half of every
//! case still runs, so the harness itself is tested everywhere.

mod common;

use common::{Rng, cuda_or_skip, loud, max_abs, rel_l2};
use lova_fast::backend::cuda::attention::{AttentionKernel, attention_kernel};
use lova_fast::backend::{Backend, CpuBackend, CudaBackend, WeightSet};
use lova_fast::graph::{
    AdaLnModulation, ColumnSlice, DType, Executor, Graph, Op, OpKind, Rope, Segments, Snake, TensorId, TensorKind,
    WeightId, scalar_slot,
};
use lova_fast::sampler::rng::fill_normal;
use lova_fast::tensor::{HostTensor, transpose};

struct Case {
    op: &'static str,
    label: String,
    graph: Graph,
    inputs: Vec<(TensorId, Vec<f32>)>,
    weights: Vec<HostTensor>,
    /// Tensors compared after the run (outputs, or state updated in place).
    check: Vec<TensorId>,
    tol: f64,
    /// Warp-level MMAs the case's tensor-core kernel issues: what it costs on
    /// the virtual GPU, where each is emulated from its fragments (`VGPU_MMA_BUDGET`).
    mmas: usize,
}

/// On the virtual GPU (`LOVA_VGPU=1`, CPU emulation), cases issuing more warp
/// MMAs than this are left out: about 10 s of emulation each. Smaller cases of
/// the same kernels and launch paths still run (the 647-token self-attention
/// with 2 heads, the 2048-channel convs' code on 256 channels).
/// `LOVA_VGPU_ALL_CASES=1` runs them all anyway.
const VGPU_MMA_BUDGET: usize = 400_000;

impl Case {
    fn new(op: &'static str, label: String, tol: f64) -> Self {
        Case { op, label, graph: Graph::new(), inputs: vec![], weights: vec![], check: vec![], tol, mmas: 0 }
    }
    fn input(&mut self, name: &str, rows: usize, cols: usize, data: Vec<f32>) -> TensorId {
        let t = self.graph.input(name, rows, cols);
        self.inputs.push((t, data));
        t
    }
    fn state(&mut self, name: &str, rows: usize, cols: usize, data: Vec<f32>) -> TensorId {
        let t = self.graph.tensor(name, rows, cols, TensorKind::State);
        self.inputs.push((t, data));
        self.check.push(t);
        t
    }
    fn weight(&mut self, shape: Vec<usize>, data: Vec<f32>) -> WeightId {
        self.weights.push(HostTensor::new(shape, data));
        WeightId(self.weights.len() - 1)
    }
    fn output(&mut self, name: &str, rows: usize, cols: usize) -> TensorId {
        let t = self.graph.temp(name, rows, cols);
        self.graph.mark_output(t);
        self.check.push(t);
        t
    }
    /// `input` stored as `dtype` (the written values are rounded to it).
    fn input_as(&mut self, dtype: DType, name: &str, rows: usize, cols: usize, data: Vec<f32>) -> TensorId {
        let t = self.input(name, rows, cols, data);
        self.graph.set_dtype(t, dtype);
        t
    }
    /// `output` stored as `dtype`.
    fn output_as(&mut self, dtype: DType, name: &str, rows: usize, cols: usize) -> TensorId {
        let t = self.output(name, rows, cols);
        self.graph.set_dtype(t, dtype);
        t
    }
}

/// What an fp16 output adds to an op's tolerance (module doc: one fp16 ulp).
const FP16_OUTPUT_TOL: f64 = 1e-3;

fn run_case<B: Backend>(backend: &B, case: &Case) -> lova_fast::Result<Vec<f32>> {
    let mut weights = WeightSet::default();
    for (i, w) in case.weights.iter().enumerate() {
        weights.push(backend, &format!("w{i}"), w)?;
    }
    let mut exec = Executor::new(backend, weights.as_slice(), case.graph.clone())?;
    for (t, data) in &case.inputs {
        exec.write(*t, data)?;
    }
    exec.run()?;
    let mut out = Vec::new();
    for t in &case.check {
        out.extend(exec.read(*t)?);
    }
    Ok(out)
}

fn linear_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    let shapes = [(1, 1, 1), (1, 256, 1536), (7, 33, 17), (217, 64, 1536), (129, 1536, 64), (300, 768, 1536)];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        for exact in [true, false] {
            let (bias, residual) = (i % 2 == 0, i % 3 != 1);
            let tol = if exact { 1e-5 } else { 3e-3 };
            let label = format!(
                "m{m} k{k} n{n}{}{} {}",
                if bias { " +bias" } else { "" },
                if residual { " +residual" } else { "" },
                if exact { "fp16-exact operands" } else { "f32 operands" }
            );
            let mut c = Case::new("linear", label, tol);
            let draw = |rng: &mut Rng, len: usize, lo: f32, hi: f32| {
                if exact { rng.vec_f16(len, lo, hi) } else { rng.vec(len, lo, hi) }
            };
            let scale = 1.0 / (k as f32).sqrt();
            let x = c.input("x", m, k, draw(rng, m * k, -1.0, 1.0));
            let w = c.weight(vec![n, k], draw(rng, n * k, -scale, scale));
            let b = bias.then(|| c.weight(vec![n], rng.vec(n, -0.5, 0.5)));
            let r = residual.then(|| c.input("residual", m, n, rng.vec(m * n, -1.0, 1.0)));
            let out = c.output("out", m, n);
            c.graph.push(Op::Linear { x, w, bias: b, residual: r, out });
            cases.push(c);
        }
    }
}

/// Linear ops on fp16 tensors: an fp16 input (no conversion pass) with an f32
/// or fp16 output, an f32 input with an fp16 output; with and without bias and
/// residual (a residual has the output's type, as cuBLASLt's C has D's).
fn linear_fp16_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    use DType::{F16, F32};
    let shapes = [
        (1, 64, 1, F16, F16, true, false),
        (7, 33, 17, F16, F32, false, true),
        (217, 64, 1536, F16, F16, true, true),
        (129, 1536, 64, F16, F32, true, true),
        (300, 768, 1536, F32, F16, true, false),
        (218, 1536, 4608, F16, F16, false, false),
    ];
    for (m, k, n, x_type, out_type, bias, residual) in shapes {
        let label = format!(
            "m{m} k{k} n{n}{}{} {} x, {} out",
            if bias { " +bias" } else { "" },
            if residual { " +residual" } else { "" },
            x_type.name(),
            out_type.name()
        );
        // fp16-exact weights; an fp16 x is exact too, an f32 one is rounded on the GPU only.
        let base = if x_type == F16 { 1e-5 } else { 3e-3 };
        let tol = base + if out_type == F16 { FP16_OUTPUT_TOL } else { 0.0 };
        let mut c = Case::new("linear", label, tol);
        let scale = 1.0 / (k as f32).sqrt();
        let x = c.input_as(x_type, "x", m, k, rng.vec(m * k, -1.0, 1.0));
        let w = c.weight(vec![n, k], rng.vec_f16(n * k, -scale, scale));
        let b = bias.then(|| c.weight(vec![n], rng.vec(n, -0.5, 0.5)));
        let r = residual.then(|| c.input_as(out_type, "residual", m, n, rng.vec(m * n, -1.0, 1.0)));
        let out = c.output_as(out_type, "out", m, n);
        c.graph.push(Op::Linear { x, w, bias: b, residual: r, out });
        cases.push(c);
    }
}

fn layer_norm_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    let shapes: [(&[usize], usize, bool); 6] = [
        (&[1], 1, false),
        (&[1], 1536, true),
        (&[2, 3], 7, true),
        (&[5], 64, false),
        (&[100, 118], 1536, false),
        (&[109, 1, 108], 1536, true),
    ];
    // Every shape with an f32 output, and with an fp16 one (the next GEMM's input on CUDA).
    for ((lens, cols, modulated), out_type) in shapes.into_iter().flat_map(|s| [(s, DType::F32), (s, DType::F16)]) {
        let seg = Segments::from_lengths(lens.iter().copied());
        let rows = seg.total();
        let fp16 = if out_type == DType::F16 { " fp16 out" } else { "" };
        let label = format!("rows {lens:?} cols {cols}{}{fp16}", if modulated { " adaLN" } else { "" });
        let tol = 1e-5 + if out_type == DType::F16 { FP16_OUTPUT_TOL } else { 0.0 };
        let mut c = Case::new("layer_norm", label, tol);
        let x = c.input("x", rows, cols, rng.vec(rows * cols, -2.0, 4.0));
        let gamma = c.weight(vec![cols], rng.vec(cols, 0.5, 1.5));
        let beta = c.weight(vec![cols], rng.vec(cols, -0.5, 0.5));
        let modulation = modulated.then(|| {
            let b = seg.count();
            let table = c.input("table", b, 6 * cols, rng.vec(b * 6 * cols, -0.5, 0.5));
            let segments = c.graph.add_segments(seg.clone());
            AdaLnModulation { table, scale_offset: 3 * cols, shift_offset: 4 * cols, segments }
        });
        let out = c.output_as(out_type, "out", rows, cols);
        c.graph.push(Op::LayerNorm { x, gamma, beta, eps: 1e-5, modulation, out });
        cases.push(c);
    }
}

fn gated_residual_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    let shapes = [(&[1usize][..], 1usize), (&[3, 4], 33), (&[218, 218], 1536)];
    // An fp16 branch too (the DiT's adaLN branch on CUDA): same values on both backends.
    for ((lens, cols), branch_type) in shapes.into_iter().flat_map(|s| [(s, DType::F32), (s, DType::F16)]) {
        let seg = Segments::from_lengths(lens.iter().copied());
        let (rows, b) = (seg.total(), seg.count());
        let fp16 = if branch_type == DType::F16 { " fp16 branch" } else { "" };
        let mut c = Case::new("gated_residual", format!("rows {lens:?} cols {cols}{fp16}"), 1e-6);
        let branch = c.input_as(branch_type, "branch", rows, cols, rng.vec(rows * cols, -2.0, 2.0));
        let residual = c.input("residual", rows, cols, rng.vec(rows * cols, -2.0, 2.0));
        let table = c.input("table", b, 6 * cols, rng.vec(b * 6 * cols, -3.0, 3.0));
        let segments = c.graph.add_segments(seg.clone());
        let out = c.output("out", rows, cols);
        c.graph.push(Op::GatedResidual { branch, residual, table, gate_offset: 5 * cols, segments, out });
        cases.push(c);
    }
}

fn elementwise_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    for (rows, cols) in [(1, 1), (3, 333), (217, 1536)] {
        let mut c = Case::new("silu", format!("[{rows}, {cols}]"), 1e-6);
        let x = c.input("x", rows, cols, rng.vec(rows * cols, -12.0, 12.0));
        let out = c.output("out", rows, cols);
        c.graph.push(Op::Silu { x, out });
        cases.push(c);
    }
    for (rows, f) in [(1, 1), (3, 7), (218, 6144)] {
        let mut c = Case::new("swiglu", format!("[{rows}, 2 x {f}]"), 1e-6);
        let x = c.input("x", rows, 2 * f, rng.vec(rows * 2 * f, -6.0, 6.0));
        let out = c.output("out", rows, f);
        c.graph.push(Op::SwiGlu { x, out });
        cases.push(c);
    }
    // fp16 in and out (the DiT's feed-forward on CUDA; the kernel takes column pairs).
    for (rows, f) in [(1, 2), (3, 8), (218, 6144)] {
        let mut c = Case::new("swiglu", format!("[{rows}, 2 x {f}] fp16"), 1e-6 + FP16_OUTPUT_TOL);
        let x = c.input_as(DType::F16, "x", rows, 2 * f, rng.vec(rows * 2 * f, -6.0, 6.0));
        let out = c.output_as(DType::F16, "out", rows, f);
        c.graph.push(Op::SwiGlu { x, out });
        cases.push(c);
    }
    for (b, n) in [(1, 1), (2, 128), (5, 3)] {
        let mut c = Case::new("timestep_features", format!("B {b} n {n}"), 1e-6);
        let t = c.input("t", b, 1, rng.vec(b, 0.0, 1.0));
        let w = c.weight(vec![n, 1], rng.vec(n, -4.0, 4.0));
        let out = c.output("out", b, 2 * n);
        c.graph.push(Op::TimestepFeatures { t, w, out });
        cases.push(c);
    }
    for (lens, cols) in [(&[1usize][..], 1usize), (&[3, 5], 768), (&[218, 218], 1536), (&[1, 7, 2], 1)] {
        let seg = Segments::from_lengths(lens.iter().copied());
        let rows = seg.total();
        let table_rows = lens.iter().max().copied().unwrap_or(0) + 3;
        let label = format!("rows {lens:?} cols {cols} ({} table)", if cols == 1 { "f32" } else { "fp16" });
        let mut c = Case::new("add_positional", label, 1e-6);
        let x = c.input("x", rows, cols, rng.vec(rows * cols, -1.0, 1.0));
        let table = c.weight(vec![table_rows, cols], rng.vec_f16(table_rows * cols, -3.0, 3.0));
        let segments = c.graph.add_segments(seg.clone());
        let out = c.output("out", rows, cols);
        c.graph.push(Op::AddPositional { x, table, scale: (cols as f32).powf(-0.5), segments, out });
        cases.push(c);
    }
    for (lens, cols) in [(&[1usize][..], 1usize), (&[3, 5], 33), (&[217, 217], 1536), (&[0, 4], 8)] {
        let rest_seg = Segments::from_lengths(lens.iter().copied());
        let out_seg = Segments::from_lengths(lens.iter().map(|l| l + 1));
        let b = rest_seg.count();
        let mut c = Case::new("prepend_row", format!("rows {lens:?} cols {cols}"), 0.0);
        let first = c.input("first", b, cols, rng.vec(b * cols, -1.0, 1.0));
        let rest = c.input("rest", rest_seg.total(), cols, rng.vec(rest_seg.total() * cols, -1.0, 1.0));
        let rest_segments = c.graph.add_segments(rest_seg.clone());
        let out_segments = c.graph.add_segments(out_seg.clone());
        let out = c.output("out", out_seg.total(), cols);
        c.graph.push(Op::PrependRow { first, rest, rest_segments, out_segments, out });
        cases.push(c);

        // The same sequences with the positional add fused in; a 1-wide table stays f32 on the GPU.
        let table_rows = lens.iter().max().copied().unwrap_or(0) + 3;
        let label = format!("rows {lens:?} cols {cols} ({} table)", if cols == 1 { "f32" } else { "fp16" });
        let mut c = Case::new("prepend_row_positional", label, 1e-6);
        let first = c.input("first", b, cols, rng.vec(b * cols, -1.0, 1.0));
        let rest = c.input("rest", rest_seg.total(), cols, rng.vec(rest_seg.total() * cols, -1.0, 1.0));
        let table = c.weight(vec![table_rows, cols], rng.vec_f16(table_rows * cols, -3.0, 3.0));
        let rest_segments = c.graph.add_segments(rest_seg.clone());
        let out_segments = c.graph.add_segments(out_seg.clone());
        let out = c.output("out", out_seg.total(), cols);
        let scale = (cols as f32).powf(-0.5);
        c.graph.push(Op::PrependRowPositional { first, rest, table, scale, rest_segments, out_segments, out });
        cases.push(c);

        let mut c = Case::new("drop_first_row", format!("rows {lens:?} + 1 cols {cols}"), 0.0);
        let x = c.input("x", out_seg.total(), cols, rng.vec(out_seg.total() * cols, -1.0, 1.0));
        let x_segments = c.graph.add_segments(out_seg.clone());
        let out_segments = c.graph.add_segments(rest_seg.clone());
        let out = c.output("out", rest_seg.total(), cols);
        c.graph.push(Op::DropFirstRow { x, x_segments, out_segments, out });
        cases.push(c);
    }
}

struct AttentionShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    q_lens: &'static [usize],
    /// None: self-attention over the query sequences with q, k, v sliced from one fused tensor.
    kv_lens: Option<&'static [usize]>,
    rotary_dim: usize,
    /// Type of q, k, v and out: fp16 is the DiT's block activations on CUDA (flash kernel only).
    dtype: DType,
}

fn attention_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    let self_attn = |heads, q_lens, rotary_dim| AttentionShape {
        heads,
        kv_heads: heads,
        head_dim: 64,
        q_lens,
        kv_lens: None,
        rotary_dim,
        dtype: DType::F32,
    };
    let cross = |heads, kv_heads, q_lens, kv_lens| AttentionShape {
        heads,
        kv_heads,
        head_dim: 64,
        q_lens,
        kv_lens: Some(kv_lens),
        rotary_dim: 0,
        dtype: DType::F32,
    };
    let fp16 = |s: AttentionShape| AttentionShape { dtype: DType::F16, ..s };
    let shapes = [
        // head_dim 64: the flash kernel. Lengths around its 64-query / 64-key tiles (and the
        // 32-key halves of its softmax), CLIP's 257, 30 s / 60 s / 139 s DiT sequences (T'+1);
        // few heads on the long ones to keep the CPU reference cheap.
        self_attn(4, &[1], 32),
        self_attn(4, &[2], 32),
        self_attn(4, &[63], 32),
        self_attn(4, &[64], 32),
        self_attn(4, &[65], 32),
        self_attn(4, &[17, 33], 32),
        self_attn(16, &[257, 257, 257], 0),
        self_attn(24, &[647, 647], 32),
        self_attn(3, &[1293], 32),
        self_attn(2, &[3000], 32),
        self_attn(2, &[647], 32),
        self_attn(2, &[1, 2, 63, 0, 64, 65, 257, 31], 32),
        self_attn(2, &[40, 129], 16),
        // Cross-attention: kv lengths unlike q lengths, grouped-query heads (24 over 12 as in the DiT).
        cross(4, 2, &[5, 130], &[3, 80]),
        cross(24, 12, &[218, 218], &[80, 80]),
        cross(24, 12, &[647], &[240]),
        cross(2, 1, &[9], &[1]),
        cross(4, 1, &[3], &[700]),
        cross(4, 2, &[1, 64, 65, 300, 2], &[5, 1, 130, 64, 70]),
        // fp16 q, k, v and out: the DiT's self- and cross-attention on CUDA.
        fp16(self_attn(4, &[65], 32)),
        fp16(self_attn(2, &[647], 32)),
        fp16(self_attn(2, &[1, 2, 63, 0, 64, 65, 257, 31], 32)),
        fp16(cross(24, 12, &[218, 218], &[80, 80])),
        fp16(cross(4, 2, &[1, 64, 65, 300, 2], &[5, 1, 130, 64, 70])),
        // Other head dims, a rotary_dim that is no multiple of 8 or over 32: the f32 kernel.
        AttentionShape { head_dim: 33, rotary_dim: 16, ..self_attn(3, &[31, 2], 0) },
        AttentionShape { head_dim: 128, rotary_dim: 128, ..self_attn(2, &[40], 0) },
        AttentionShape { head_dim: 8, ..cross(4, 2, &[3, 130], &[5, 2]) },
        self_attn(2, &[40, 3], 20),
        self_attn(2, &[40], 64),
    ];
    for s in shapes {
        let hd = s.head_dim;
        let q_seg = Segments::from_lengths(s.q_lens.iter().copied());
        let kernel = attention_kernel(hd, (s.rotary_dim > 0).then_some(s.rotary_dim));
        let label = format!(
            "{} h{} kv{} d{} q{:?} {}{}",
            if kernel == AttentionKernel::Flash { "flash" } else { "f32" },
            s.heads,
            s.kv_heads,
            hd,
            s.q_lens,
            match s.kv_lens {
                None => "self".to_string(),
                Some(k) => format!("kv{k:?}"),
            },
            if s.rotary_dim > 0 { format!(" rope{}", s.rotary_dim) } else { String::new() }
        ) + if s.dtype == DType::F16 { " fp16" } else { "" };
        let tol = if kernel == AttentionKernel::Flash { 3e-3 } else { 1e-5 }
            + if s.dtype == DType::F16 { FP16_OUTPUT_TOL } else { 0.0 };
        let mut c = Case::new("attention", label, tol);
        if kernel == AttentionKernel::Flash {
            // 64 x 64 tiles: per (query tile, key tile) 4 warps x (32 QK^T + 32 PV) MMAs.
            let kv_lens = s.kv_lens.unwrap_or(s.q_lens);
            let tiles: usize = s.q_lens.iter().zip(kv_lens).map(|(q, k)| q.div_ceil(64) * k.div_ceil(64)).sum();
            c.mmas = s.heads * tiles * 256;
        }
        let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
        let (q, k, v, kv_segments) = match s.kv_lens {
            None => {
                let rows = q_seg.total();
                let width = qw + 2 * kvw;
                let qkv = c.input_as(s.dtype, "qkv", rows, width, rng.vec(rows * width, -2.0, 2.0));
                let seg = c.graph.add_segments(q_seg.clone());
                (
                    ColumnSlice { tensor: qkv, offset: 0, width: qw },
                    ColumnSlice { tensor: qkv, offset: qw, width: kvw },
                    ColumnSlice { tensor: qkv, offset: qw + kvw, width: kvw },
                    seg,
                )
            }
            Some(kv_lens) => {
                let kv_seg = Segments::from_lengths(kv_lens.iter().copied());
                let (rows, kvr) = (q_seg.total(), kv_seg.total());
                let q = c.input_as(s.dtype, "q", rows, qw, rng.vec(rows * qw, -2.0, 2.0));
                let kv = c.input_as(s.dtype, "kv", kvr, 2 * kvw, rng.vec(kvr * 2 * kvw, -2.0, 2.0));
                let seg = c.graph.add_segments(kv_seg);
                (
                    ColumnSlice { tensor: q, offset: 0, width: qw },
                    ColumnSlice { tensor: kv, offset: 0, width: kvw },
                    ColumnSlice { tensor: kv, offset: kvw, width: kvw },
                    seg,
                )
            }
        };
        let q_segments = c.graph.add_segments(q_seg.clone());
        let rope = (s.rotary_dim > 0).then(|| {
            let half = s.rotary_dim / 2;
            let inv: Vec<f32> = (0..half).map(|i| 10000f32.powf(-((2 * i) as f32) / s.rotary_dim as f32)).collect();
            Rope { inv_freq: c.weight(vec![half], inv), rotary_dim: s.rotary_dim }
        });
        let out = c.output_as(s.dtype, "out", q_seg.total(), qw);
        c.graph.push(Op::Attention {
            q,
            k,
            v,
            q_segments,
            kv_segments,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            rope,
            out,
        });
        cases.push(c);
    }
}

/// Step scalars of one request; `zero_history`: its first step (no d1, d2, noise terms).
fn scalars(rng: &mut Rng, zero_history: bool) -> Vec<f32> {
    let mut s = rng.vec(scalar_slot::COUNT, -1.5, 1.5);
    if zero_history {
        s[scalar_slot::D1] = 0.0;
        s[scalar_slot::D2] = 0.0;
        s[scalar_slot::NOISE] = 0.0;
    }
    s
}

/// Step scalars `[requests, COUNT]`: each request at its own step, the ones
/// in `first_steps` at their first.
fn batch_scalars(rng: &mut Rng, requests: usize, first_steps: &[usize]) -> Vec<f32> {
    (0..requests).flat_map(|r| scalars(rng, first_steps.contains(&r))).collect()
}

fn sampler_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    for lens in [&[1usize][..], &[216, 1], &[3, 1, 2]] {
        let seg = Segments::from_lengths(lens.iter().copied());
        let rows = seg.total();
        let mut c = Case::new("cfg_expand", format!("rows {lens:?} x 64"), 1e-7);
        let x = c.input("x", rows, 64, rng.vec(rows * 64, -500.0, 500.0));
        let sc = c.input("scalars", lens.len(), scalar_slot::COUNT, batch_scalars(rng, lens.len(), &[]));
        let x_segments = c.graph.add_segments(seg);
        let out = c.output("out", 2 * rows, 64);
        c.graph.push(Op::CfgExpand { x, scalars: sc, x_segments, out });
        cases.push(c);
    }
    for (lens, scales) in [(&[1usize][..], &[5.0f32][..]), (&[216, 44], &[5.0, 1.0]), (&[3, 1, 2], &[7.0, 0.0, 2.5])] {
        let seg = Segments::from_lengths(lens.iter().copied());
        let rows = seg.total();
        let mut c = Case::new("cfg_denoise", format!("rows {lens:?} cfg {scales:?}"), 1e-6);
        let v = c.input("v", 2 * rows, 64, rng.vec(2 * rows * 64, -3.0, 3.0));
        let x = c.input("x", rows, 64, rng.vec(rows * 64, -30.0, 30.0));
        let sc = c.input("scalars", lens.len(), scalar_slot::COUNT, batch_scalars(rng, lens.len(), &[]));
        let x_segments = c.graph.add_segments(seg);
        let out = c.output("out", rows, 64);
        c.graph.push(Op::CfgDenoise { v, x, scalars: sc, x_segments, cfg_scales: scales.to_vec(), out });
        cases.push(c);
    }
    // (rows per request, requests at their first step: zero history coefficients).
    for (lens, first) in [(&[1usize][..], &[][..]), (&[217, 3], &[1][..]), (&[44][..], &[0][..]), (&[5, 9, 2], &[0, 2])]
    {
        let seg = Segments::from_lengths(lens.iter().copied());
        let n = seg.total() * 64;
        let mut c = Case::new("dpmpp_3m_update", format!("rows {lens:?} x 64, first steps {first:?}"), 1e-6);
        let x = c.state("x", seg.total(), 64, rng.vec(n, -10.0, 10.0));
        let d1 = c.state("d1", seg.total(), 64, rng.vec(n, -10.0, 10.0));
        let d2 = c.state("d2", seg.total(), 64, rng.vec(n, -10.0, 10.0));
        let denoised = c.input("denoised", seg.total(), 64, rng.vec(n, -10.0, 10.0));
        let noise = c.input("noise", seg.total(), 64, rng.vec(n, -3.0, 3.0));
        let sc = c.input("scalars", lens.len(), scalar_slot::COUNT, batch_scalars(rng, lens.len(), first));
        let x_segments = c.graph.add_segments(seg);
        c.graph.push(Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars: sc, x_segments });
        cases.push(c);
    }
    // (table rows, cols, each request's table row): the first, a middle and
    // the last row of a table; the output has a cond and an uncond row per request.
    for (table_rows, cols, steps) in [(1, 128, &[0usize][..]), (7, 33, &[3, 0, 6]), (300, 1536, &[149, 299])] {
        // A copy: exact.
        let mut c = Case::new("select_step_row", format!("table [{table_rows}, {cols}] rows {steps:?}"), 0.0);
        let table = c.input("table", table_rows, cols, rng.vec(table_rows * cols, -3.0, 3.0));
        let mut sc = batch_scalars(rng, steps.len(), &[]);
        for (r, &step) in steps.iter().enumerate() {
            sc[r * scalar_slot::COUNT + scalar_slot::STEP] = step as f32;
        }
        let sc = c.input("scalars", steps.len(), scalar_slot::COUNT, sc);
        let out = c.output("out", 2 * steps.len(), cols);
        c.graph.push(Op::SelectStepRow { table, scalars: sc, out });
        cases.push(c);
    }
}

/// The tolerance of a GEMM with exact (fp16-representable) operands and a K-long
/// f32 sum: the linear op's 1e-5 up to K = 1536, then growing like sqrt(K), as the
/// rounding error of a sum of K random-sign terms does (the convs reach K = 14336).
fn exact_sum_tolerance(k: usize) -> f64 {
    1e-5 * (k as f64 / 1536.0).sqrt().max(1.0)
}

/// One conv case: channels, sequence lengths, kernel/dilation (or stride), and
/// whether the input is activated (fused SnakeBeta) and a residual added.
struct ConvShape {
    cin: usize,
    cout: usize,
    lens: &'static [usize],
    kernel: usize,
    dilation: usize,
    snake: bool,
    residual: bool,
}

fn snake_params(c: &mut Case, rng: &mut Rng, channels: usize) -> Snake {
    // Log-scale parameters around 0, as trained ones are: alpha ~ frequency, beta ~ 1 / amplitude.
    Snake {
        alpha: c.weight(vec![channels], rng.vec(channels, -0.7, 0.7)),
        beta: c.weight(vec![channels], rng.vec(channels, -0.7, 0.7)),
    }
}

fn conv_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    let shapes = [
        // A latent of length 1 through the first conv (64 -> C).
        ConvShape { cin: 64, cout: 128, lens: &[1], kernel: 7, dilation: 1, snake: false, residual: false },
        // Lengths that are no multiple of the 128-row tile, C_out no multiple of 64.
        ConvShape { cin: 32, cout: 48, lens: &[200], kernel: 7, dilation: 3, snake: true, residual: true },
        // Three sequences in one batch, sharing tiles; dilation 9 reaches past short sequences.
        ConvShape { cin: 40, cout: 64, lens: &[130, 1, 77], kernel: 7, dilation: 9, snake: true, residual: true },
        ConvShape { cin: 40, cout: 64, lens: &[130, 1, 77], kernel: 7, dilation: 9, snake: false, residual: true },
        // The residual unit's 1x1 conv.
        ConvShape { cin: 128, cout: 128, lens: &[300], kernel: 1, dilation: 1, snake: true, residual: true },
        ConvShape { cin: 128, cout: 128, lens: &[257, 3], kernel: 1, dilation: 1, snake: false, residual: false },
        // K = 21, no multiple of 8: the element-wise weight load.
        ConvShape { cin: 3, cout: 5, lens: &[9, 4], kernel: 7, dilation: 1, snake: false, residual: true },
        ConvShape { cin: 3, cout: 5, lens: &[9, 4], kernel: 7, dilation: 3, snake: true, residual: false },
        // The largest channel counts (the widest block), on a short length.
        ConvShape { cin: 2048, cout: 1024, lens: &[5], kernel: 7, dilation: 1, snake: true, residual: false },
        ConvShape { cin: 1024, cout: 1024, lens: &[6], kernel: 7, dilation: 9, snake: false, residual: true },
        ConvShape { cin: 256, cout: 128, lens: &[5], kernel: 7, dilation: 1, snake: true, residual: false },
        // The final conv: 128 -> 2 channels.
        ConvShape { cin: 128, cout: 2, lens: &[257], kernel: 7, dilation: 1, snake: true, residual: false },
    ];
    for sh in shapes {
        let seg = Segments::from_lengths(sh.lens.iter().copied());
        let rows = seg.total();
        let exact = !sh.snake;
        let label = format!(
            "{}->{} k{} d{} L{:?}{}{}",
            sh.cin,
            sh.cout,
            sh.kernel,
            sh.dilation,
            sh.lens,
            if sh.snake { " +snake" } else { " fp16-exact" },
            if sh.residual { " +residual" } else { "" }
        );
        let k = sh.kernel * sh.cin;
        let mut c = Case::new("conv1d", label, if exact { exact_sum_tolerance(k) } else { 3e-3 });
        // 128 x 64 x 32 tiles: 128 MMAs per tile and K step.
        c.mmas = rows.div_ceil(128) * sh.cout.div_ceil(64) * k.div_ceil(32) * 128;
        let scale = 1.0 / (k as f32).sqrt();
        let x = c.input("x", rows, sh.cin, rng.vec_f16(rows * sh.cin, -2.0, 2.0));
        let input_snake = sh.snake.then(|| snake_params(&mut c, rng, sh.cin));
        let w = c.weight(vec![sh.cout, k], rng.vec_f16(sh.cout * k, -scale, scale));
        let bias = Some(c.weight(vec![sh.cout], rng.vec(sh.cout, -0.5, 0.5)));
        let residual = sh.residual.then(|| c.input("residual", rows, sh.cout, rng.vec(rows * sh.cout, -1.0, 1.0)));
        let segments = c.graph.add_segments(seg.clone());
        let out = c.output("out", rows, sh.cout);
        let padding = sh.dilation * (sh.kernel - 1) / 2;
        c.graph.push(Op::Conv1d {
            x,
            input_snake,
            w,
            bias,
            kernel: sh.kernel,
            dilation: sh.dilation,
            padding,
            residual,
            segments,
            out,
        });
        cases.push(c);
    }
    // Transposed convs: (C_in, C_out, stride, lengths, snake).
    let transposed: [(usize, usize, usize, &[usize], bool); 7] = [
        (16, 24, 2, &[1, 7], true),
        (128, 128, 2, &[70], false),
        (64, 32, 4, &[33], false),
        (64, 32, 4, &[1, 40, 2], true),
        (256, 128, 8, &[17, 2], true),
        (2048, 1024, 8, &[3], false),
        (512, 256, 8, &[3], false),
    ];
    for (cin, cout, stride, lens, snake) in transposed {
        let (si, so) =
            (Segments::from_lengths(lens.iter().copied()), Segments::from_lengths(lens.iter().map(|l| l * stride)));
        let label = format!("{cin}->{cout} s{stride} L{lens:?}{}", if snake { " +snake" } else { " fp16-exact" });
        let mut c = Case::new("conv_transpose1d", label, if snake { 3e-3 } else { exact_sum_tolerance(2 * cin) });
        c.mmas = stride * lens.iter().sum::<usize>().div_ceil(128) * cout.div_ceil(64) * (2 * cin).div_ceil(32) * 128;
        let scale = 1.0 / ((2 * cin) as f32).sqrt();
        let x = c.input("x", si.total(), cin, rng.vec_f16(si.total() * cin, -2.0, 2.0));
        let input_snake = snake.then(|| snake_params(&mut c, rng, cin));
        let w = c.weight(vec![stride, cout, 2 * cin], rng.vec_f16(stride * cout * 2 * cin, -scale, scale));
        let bias = Some(c.weight(vec![cout], rng.vec(cout, -0.5, 0.5)));
        let in_segments = c.graph.add_segments(si.clone());
        let out_segments = c.graph.add_segments(so.clone());
        let out = c.output("out", so.total(), cout);
        c.graph.push(Op::ConvTranspose1d { x, input_snake, w, bias, stride, in_segments, out_segments, out });
        cases.push(c);
    }
    for (rows, cols) in [(1, 1), (37, 130)] {
        let mut c = Case::new("snake_beta", format!("[{rows}, {cols}]"), 1e-6);
        let x = c.input("x", rows, cols, rng.vec(rows * cols, -4.0, 4.0));
        let s = snake_params(&mut c, rng, cols);
        let out = c.output("out", rows, cols);
        c.graph.push(Op::SnakeBeta { x, alpha: s.alpha, beta: s.beta, out });
        cases.push(c);
    }
}

fn vision_cases(rng: &mut Rng, cases: &mut Vec<Case>) {
    // (images, channels, size, patch): CLIP-L's 224 / 14 on a few images, a size that
    // is no multiple of the patch (the rest is dropped), one-pixel patches.
    for (n, channels, size, patch) in [(3, 3, 224, 14), (2, 3, 28, 14), (1, 2, 7, 3), (2, 1, 4, 1)] {
        let grid = size / patch;
        let mut c = Case::new("patchify", format!("{n} x {channels}x{size}x{size} patch {patch}"), 0.0);
        let images = c.input("images", n, channels * size * size, rng.vec(n * channels * size * size, -2.0, 2.0));
        let out = c.output("patches", n * grid * grid, channels * patch * patch);
        c.graph.push(Op::Patchify { images, channels, size, patch, out });
        cases.push(c);
    }
    for (lens, cols) in [(&[1usize][..], 3usize), (&[256, 256, 256], 1024), (&[0, 5, 2], 7)] {
        let rest_seg = Segments::from_lengths(lens.iter().copied());
        let out_seg = Segments::from_lengths(lens.iter().map(|l| l + 1));
        let mut c = Case::new("prepend_weight_row", format!("rows {lens:?} cols {cols}"), 0.0);
        let row = c.weight(vec![cols], rng.vec(cols, -1.0, 1.0));
        let rest = c.input("rest", rest_seg.total(), cols, rng.vec(rest_seg.total() * cols, -1.0, 1.0));
        let rest_segments = c.graph.add_segments(rest_seg.clone());
        let out_segments = c.graph.add_segments(out_seg.clone());
        let out = c.output("out", out_seg.total(), cols);
        c.graph.push(Op::PrependWeightRow { row, rest, rest_segments, out_segments, out });
        cases.push(c);

        let mut c = Case::new("first_rows", format!("rows {lens:?} + 1 cols {cols}"), 0.0);
        let x = c.input("x", out_seg.total(), cols, rng.vec(out_seg.total() * cols, -1.0, 1.0));
        let segments = c.graph.add_segments(out_seg.clone());
        let out = c.output("out", out_seg.count(), cols);
        c.graph.push(Op::FirstRows { x, segments, out });
        cases.push(c);
    }
    for (rows, cols) in [(1, 1), (3, 333), (514, 4096)] {
        let mut c = Case::new("quick_gelu", format!("[{rows}, {cols}]"), 1e-6);
        let x = c.input("x", rows, cols, rng.vec(rows * cols, -12.0, 12.0));
        let out = c.output("out", rows, cols);
        c.graph.push(Op::QuickGelu { x, out });
        cases.push(c);
    }
}

fn all_cases() -> Vec<Case> {
    let mut rng = Rng(0x5eed);
    let mut cases = Vec::new();
    linear_cases(&mut rng, &mut cases);
    linear_fp16_cases(&mut rng, &mut cases);
    layer_norm_cases(&mut rng, &mut cases);
    gated_residual_cases(&mut rng, &mut cases);
    elementwise_cases(&mut rng, &mut cases);
    attention_cases(&mut rng, &mut cases);
    sampler_cases(&mut rng, &mut cases);
    conv_cases(&mut rng, &mut cases);
    vision_cases(&mut rng, &mut cases);
    cases
}

#[test]
fn every_op_has_cases_and_they_run_on_the_cpu() {
    let cases = all_cases();
    // Every op kind (the op table, `graph::OpKind`): a new op without cases fails here.
    for kind in OpKind::ALL {
        assert!(cases.iter().any(|c| c.op == kind.name()), "no op test case for {}", kind.name());
    }
    for c in &cases {
        assert_eq!(c.graph.ops.len(), 1);
        assert_eq!(c.graph.ops[0].name(), c.op, "{}", c.label);
        let out = run_case(&CpuBackend, c).unwrap_or_else(|e| panic!("{} {}: {e}", c.op, c.label));
        assert!(out.iter().all(|v| v.is_finite()), "{} {}: non-finite CPU output", c.op, c.label);
    }
}

#[test]
fn a_step_outside_the_table_is_an_error_on_the_cpu() {
    // The bad step is the second request's: every request's row is checked.
    for step in [2.0, -1.0, 0.5, f32::NAN] {
        let mut c = Case::new("select_step_row", String::new(), 0.0);
        let table = c.input("table", 2, 3, vec![1.0; 6]);
        let mut sc = vec![0.0; 2 * scalar_slot::COUNT];
        sc[scalar_slot::COUNT + scalar_slot::STEP] = step;
        let sc = c.input("scalars", 2, scalar_slot::COUNT, sc);
        let out = c.output("out", 4, 3);
        c.graph.push(Op::SelectStepRow { table, scalars: sc, out });
        let err = run_case(&CpuBackend, &c).expect_err("out-of-table step").to_string();
        assert!(err.contains("step index"), "{err}");
    }
}

/// The GEMM path for a shape where cuBLASLt has no algorithm with the bias
/// epilogue: the bias is then added by `add_bias_rows`. Only the virtual GPU
/// can withhold the epilogue, so elsewhere this test has nothing to do.
#[test]
fn cuda_linear_with_the_bias_added_by_its_own_kernel() {
    use lova_fast::backend::cuda::vgpu;
    let Some(cuda) = cuda_or_skip("cuda_linear_with_the_bias_added_by_its_own_kernel") else { return };
    if !vgpu::active() {
        loud(
            "cuda_linear_with_the_bias_added_by_its_own_kernel: needs the virtual GPU (LOVA_VGPU=1) to withhold the bias epilogue; nothing to check on a real GPU",
        );
        return;
    }
    let cases: Vec<Case> = all_cases().into_iter().filter(|c| c.op == "linear" && c.label.contains("+bias")).collect();
    assert!(cases.len() >= 4, "linear cases with a bias");
    vgpu::withhold_bias_epilogue(true).unwrap();
    // An f32 output's bias by add_bias_rows, an fp16 output's by add_bias_rows_f16.
    let bias_launches = || vgpu::launches("add_bias_rows").unwrap() + vgpu::launches("add_bias_rows_f16").unwrap();
    let before = bias_launches();
    let results: Vec<_> = cases.iter().map(|c| run_case(&cuda, c)).collect();
    vgpu::withhold_bias_epilogue(false).unwrap();
    let launched = bias_launches() - before;
    assert!(launched >= cases.len() as u64, "add_bias_rows ran {launched} times for {} GEMMs with a bias", cases.len());
    for (c, got) in cases.iter().zip(results) {
        let got = got.unwrap_or_else(|e| panic!("{}: {e}", c.label));
        let want = run_case(&CpuBackend, c).unwrap();
        let rel = rel_l2(&got, &want);
        loud(&format!("linear (bias by add_bias_rows) {:<50} rel L2 {rel:.2e} (tol {:.0e})", c.label, c.tol));
        assert!(rel <= c.tol, "{}: rel L2 {rel:e} > {:e}", c.label, c.tol);
    }
}

/// `prepare` times cuBLASLt's candidate algorithms for each GEMM shape once
/// (`Gemm::tune`: a warm-up and 5 timed runs per candidate; the virtual
/// cuBLASLt offers two), and a second executor of the same shape does not
/// time them again. Only the virtual GPU counts the calls.
#[test]
fn cuda_gemm_shapes_are_timed_once_in_prepare() {
    use lova_fast::backend::cuda::vgpu;
    let Some(cuda) = cuda_or_skip("cuda_gemm_shapes_are_timed_once_in_prepare") else { return };
    if !vgpu::active() {
        loud("cuda_gemm_shapes_are_timed_once_in_prepare: needs the virtual GPU (LOVA_VGPU=1) to count GEMM calls");
        return;
    }
    // A shape no other test uses, so that no earlier executor tuned it.
    let (m, k, n) = (37, 24, 40);
    let mut c = Case::new("linear", "tuning".into(), 0.0);
    let x = c.input("x", m, k, vec![0.5; m * k]);
    let w = c.weight(vec![n, k], vec![0.25; n * k]);
    let out = c.output("out", m, n);
    c.graph.push(Op::Linear { x, w, bias: None, residual: None, out });
    let mut weights = WeightSet::default();
    weights.push(&cuda, "w", &c.weights[0]).unwrap();
    let before = vgpu::matmuls().unwrap();
    let first = Executor::new(&cuda, weights.as_slice(), c.graph.clone()).unwrap();
    let tuned = vgpu::matmuls().unwrap() - before;
    assert_eq!(tuned, 2 * (1 + 5), "2 candidates x (warm-up + 5 timed runs)");
    drop(first);
    let before = vgpu::matmuls().unwrap();
    let mut second = Executor::new(&cuda, weights.as_slice(), c.graph.clone()).unwrap();
    assert_eq!(vgpu::matmuls().unwrap(), before, "a shape is timed once per backend");
    second.write(x, &vec![0.5; m * k]).unwrap();
    second.run().unwrap();
    let got = second.read(out).unwrap();
    assert!(got.iter().all(|&v| (v - 0.5 * 0.25 * k as f32).abs() < 1e-6), "the chosen algorithm computes the GEMM");
}

#[test]
fn every_cuda_op_matches_its_cpu_twin() {
    let Some(cuda) = cuda_or_skip("every_cuda_op_matches_its_cpu_twin") else { return };
    let mut failures = Vec::new();
    // LOVA_OPS_MAX_MMAS=<n>: leave out bigger cases on any device (tools/device-check.sh
    // runs small cases under compute-sanitizer); on the virtual GPU VGPU_MMA_BUDGET applies.
    let max_mmas = std::env::var("LOVA_OPS_MAX_MMAS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .or((lova_fast::backend::cuda::vgpu::active() && std::env::var("LOVA_VGPU_ALL_CASES").is_err())
            .then_some(VGPU_MMA_BUDGET));
    let mut left_out = 0;
    // LOVA_OPS_FILTER=<op>: only that op's cases (tools/vgpu/mutants.sh).
    let filter = std::env::var("LOVA_OPS_FILTER").ok();
    loud(&format!("{:<18} {:<72} {:>10} {:>10} {:>8}", "op", "case", "max abs", "rel L2", "tol"));
    for c in all_cases() {
        if filter.as_ref().is_some_and(|f| f != c.op) {
            continue;
        }
        if max_mmas.is_some_and(|m| c.mmas > m) {
            loud(&format!("{:<18} {:<72} left out: {} warp MMAs, over {max_mmas:?}", c.op, c.label, c.mmas));
            left_out += 1;
            continue;
        }
        let want = run_case(&CpuBackend, &c).unwrap_or_else(|e| panic!("cpu {} {}: {e}", c.op, c.label));
        let started = std::time::Instant::now();
        match run_case(&cuda, &c) {
            Ok(got) => {
                let (abs, rel) = (max_abs(&got, &want), rel_l2(&got, &want));
                // A zero reference (all-zero output) makes rel NaN; then max abs decides.
                let ok = got.iter().all(|v| v.is_finite()) && (rel <= c.tol || (rel.is_nan() && abs == 0.0));
                loud(&format!(
                    "{:<18} {:<72} {abs:>10.2e} {rel:>10.2e} {:>8.0e} {} ({:.0} ms)",
                    c.op,
                    c.label,
                    c.tol,
                    if ok { "ok" } else { "FAIL" },
                    started.elapsed().as_secs_f64() * 1e3
                ));
                if !ok {
                    failures.push(format!("{} {}: rel L2 {rel:.3e} > {:.0e}", c.op, c.label, c.tol));
                }
            }
            Err(e) => {
                loud(&format!("{:<18} {:<72} ERROR {e}", c.op, c.label));
                failures.push(format!("{} {}: {e}", c.op, c.label));
            }
        }
    }
    assert!(failures.is_empty(), "{} op case(s) failed:\n{}", failures.len(), failures.join("\n"));
    if left_out > 0 {
        loud(&format!("{left_out} case(s) left out (over {max_mmas:?} warp MMAs each)"));
    }
}

#[test]
fn cuda_philox_noise_matches_the_cpu_generator() {
    let Some(cuda) = cuda_or_skip("cuda_philox_noise_matches_the_cpu_generator") else { return };
    for (seed, stream, latent_len) in [(0u64, 0u32, 1usize), (7, 3, 44), ((1 << 40) | 12345, 151, 217)] {
        let channels = 64;
        let mut canonical = vec![0.0; channels * latent_len];
        fill_normal(seed, stream, &mut canonical);
        let want = transpose(&canonical, channels, latent_len);
        let mut arena = cuda.alloc(want.len() + 64).unwrap();
        cuda.philox_normal(&mut arena, 64, seed, stream, latent_len, channels).unwrap();
        let mut got = vec![0.0; want.len()];
        cuda.read(&arena, 64, &mut got).unwrap();
        let abs = max_abs(&got, &want);
        loud(&format!("philox_normal seed {seed} stream {stream} T' {latent_len}: max abs {abs:.2e}"));
        // f64 Box-Muller on both sides, rounded to f32: equal but for a rare last-bit difference.
        assert!(abs <= 1e-6, "seed {seed} stream {stream}: max abs {abs:e}");
    }
}

#[test]
fn unsupported_shapes_are_errors_not_panics() {
    let Some(cuda) = cuda_or_skip("unsupported_shapes_are_errors_not_panics") else { return };
    let mut c = Case::new("attention", "head_dim 256".into(), 0.0);
    let q = c.input("q", 2, 256, vec![0.5; 512]);
    let seg = c.graph.add_segments(Segments::from_lengths([2]));
    let out = c.output("out", 2, 256);
    let slice = ColumnSlice { tensor: q, offset: 0, width: 256 };
    c.graph.push(Op::Attention {
        q: slice,
        k: slice,
        v: slice,
        q_segments: seg,
        kv_segments: seg,
        heads: 1,
        kv_heads: 1,
        head_dim: 256,
        scale: 0.0625,
        rope: None,
        out,
    });
    let err = run_case(&cuda, &c).unwrap_err().to_string();
    assert!(err.contains("head_dim 256"), "{err}");
}

#[test]
fn cuda_backend_without_a_device_is_an_error_not_a_panic() {
    // On a machine without CUDA this must return an error naming what is
    // missing; with a GPU it simply succeeds.
    match CudaBackend::new(0) {
        Ok(b) => loud(&format!("CUDA backend available: {}", b.info())),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("CUDA"), "{msg}");
            loud(&format!("CUDA backend unavailable here, as an error: {msg}"));
        }
    }
    assert!(CudaBackend::new(9999).is_err(), "device 9999 cannot exist");
}
