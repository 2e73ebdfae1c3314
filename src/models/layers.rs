//! Graph-builder helpers the models share: each adds one op to a graph with
//! its output tensor (named `name`, sized from its inputs) and returns that
//! tensor, so that model code reads like the PyTorch module it mirrors.

use crate::graph::{AdaLnModulation, ColumnSlice, Graph, Op, Rope, SegmentsId, Snake, TensorId, WeightId};

pub use super::declare::{Linear, Norm};

/// `x @ w^T (+ bias) (+ residual)`.
pub fn linear(g: &mut Graph, name: impl Into<String>, x: TensorId, l: &Linear, residual: Option<TensorId>) -> TensorId {
    let out = g.temp(name, g.desc(x).rows, l.out_features);
    g.push(Op::Linear { x, w: l.weight, bias: l.bias, residual, out });
    out
}

/// Row-wise LayerNorm, optionally adaLN-modulated.
pub fn layer_norm(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    n: &Norm,
    modulation: Option<AdaLnModulation>,
) -> TensorId {
    let out = same_shape(g, name, x);
    g.push(Op::LayerNorm { x, gamma: n.gamma, beta: n.beta, eps: n.eps, modulation, out });
    out
}

/// `x * sigmoid(x)`, named after its input.
pub fn silu(g: &mut Graph, x: TensorId) -> TensorId {
    let name = format!("{}.silu", g.desc(x).name);
    let out = same_shape(g, name, x);
    g.push(Op::Silu { x, out });
    out
}

/// CLIP's QuickGELU, `x * sigmoid(1.702 x)`.
pub fn quick_gelu(g: &mut Graph, name: impl Into<String>, x: TensorId) -> TensorId {
    let out = same_shape(g, name, x);
    g.push(Op::QuickGelu { x, out });
    out
}

/// `x` `[M, 2F]` to `x[:, :F] * silu(x[:, F:])` `[M, F]`.
pub fn swiglu(g: &mut Graph, name: impl Into<String>, x: TensorId) -> TensorId {
    let d = g.desc(x);
    let out = g.temp(name, d.rows, d.cols / 2);
    g.push(Op::SwiGlu { x, out });
    out
}

/// `residual + branch * sigmoid(1 - gate)`, the gate of sequence b in row b of `table` from column `gate_offset`.
pub fn gated_residual(
    g: &mut Graph,
    name: impl Into<String>,
    branch: TensorId,
    residual: TensorId,
    table: TensorId,
    gate_offset: usize,
    segments: SegmentsId,
) -> TensorId {
    let out = same_shape(g, name, residual);
    g.push(Op::GatedResidual { branch, residual, table, gate_offset, segments, out });
    out
}

/// Fourier features of the timesteps `t` `[B, 1]` with frequencies `w` `[features / 2, 1]`: `[B, features]`.
pub fn timestep_features(
    g: &mut Graph,
    name: impl Into<String>,
    t: TensorId,
    w: WeightId,
    features: usize,
) -> TensorId {
    let out = g.temp(name, g.desc(t).rows, features);
    g.push(Op::TimestepFeatures { t, w, out });
    out
}

/// `x[r] + table[position of r in its sequence] * scale`.
pub fn add_positional(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    table: WeightId,
    scale: f32,
    segments: SegmentsId,
) -> TensorId {
    let out = same_shape(g, name, x);
    g.push(Op::AddPositional { x, table, scale, segments, out });
    out
}

/// Per sequence b: row b of `first`, then the rows of `rest` for b (`out_segments`:
/// one row longer each), plus `table[position] * scale`: `Op::PrependRowPositional`.
pub fn prepend_row_positional(
    g: &mut Graph,
    name: impl Into<String>,
    first: TensorId,
    rest: TensorId,
    (table, scale): (WeightId, f32),
    rest_segments: SegmentsId,
    out_segments: SegmentsId,
) -> TensorId {
    let out = g.temp(name, g.seg(out_segments).total(), g.desc(rest).cols);
    g.push(Op::PrependRowPositional { first, rest, table, scale, rest_segments, out_segments, out });
    out
}

/// Per sequence b: the weight `row`, then the rows of `rest` for b (`out_segments`: one row longer each).
pub fn prepend_weight_row(
    g: &mut Graph,
    name: impl Into<String>,
    row: WeightId,
    rest: TensorId,
    rest_segments: SegmentsId,
    out_segments: SegmentsId,
) -> TensorId {
    let out = g.temp(name, g.seg(out_segments).total(), g.desc(rest).cols);
    g.push(Op::PrependWeightRow { row, rest, rest_segments, out_segments, out });
    out
}

/// Per sequence: the rows of `x` but the first (`out_segments`: one row shorter each).
pub fn drop_first_row(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    x_segments: SegmentsId,
    out_segments: SegmentsId,
) -> TensorId {
    let out = g.temp(name, g.seg(out_segments).total(), g.desc(x).cols);
    g.push(Op::DropFirstRow { x, x_segments, out_segments, out });
    out
}

/// The `patch x patch` patches of square images `[n, channels * size^2]` (CHW):
/// `[n * (size / patch)^2, channels * patch^2]`, row-major over each image's grid.
pub fn patchify(
    g: &mut Graph,
    name: impl Into<String>,
    images: TensorId,
    channels: usize,
    size: usize,
    patch: usize,
) -> TensorId {
    let grid = size / patch;
    let out = g.temp(name, g.desc(images).rows * grid * grid, channels * patch * patch);
    g.push(Op::Patchify { images, channels, size, patch, out });
    out
}

/// Row b: the first row of sequence b of `x`.
pub fn first_rows(g: &mut Graph, name: impl Into<String>, x: TensorId, segments: SegmentsId) -> TensorId {
    let out = g.temp(name, g.seg(segments).count(), g.desc(x).cols);
    g.push(Op::FirstRows { x, segments, out });
    out
}

/// The head layout of an attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Factor on `q . k` before the softmax.
    pub scale: f32,
    /// Rotary embedding of q and k, if any.
    pub rope: Option<Rope>,
}

/// Attention of the query rows of each sequence of `q_segments` to the key/value
/// rows of the same sequence of `kv_segments`; `[rows of q, heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    g: &mut Graph,
    name: impl Into<String>,
    [q, k, v]: [ColumnSlice; 3],
    q_segments: SegmentsId,
    kv_segments: SegmentsId,
    h: &Heads,
) -> TensorId {
    let out = g.temp(name, g.desc(q.tensor).rows, h.heads * h.head_dim);
    g.push(Op::Attention {
        q,
        k,
        v,
        q_segments,
        kv_segments,
        heads: h.heads,
        kv_heads: h.kv_heads,
        head_dim: h.head_dim,
        scale: h.scale,
        rope: h.rope,
        out,
    });
    out
}

/// Self-attention within each sequence of `segments` over a packed `qkv`
/// (`[rows, 3W]`: queries, keys, values, W = heads * head_dim each).
pub fn self_attention(
    g: &mut Graph,
    name: impl Into<String>,
    qkv: TensorId,
    segments: SegmentsId,
    h: &Heads,
) -> TensorId {
    let w = h.heads * h.head_dim;
    let slice = |k: usize| ColumnSlice { tensor: qkv, offset: k * w, width: w };
    attention(g, name, [slice(0), slice(1), slice(2)], segments, segments, h)
}

/// The ids and geometry of one VAE convolution (`conv1d`, `conv_transpose1d`).
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    /// Weight in the engine layout (`Op::Conv1d`, `Op::ConvTranspose1d`).
    pub weight: WeightId,
    /// Bias `[C_out]`, if any.
    pub bias: Option<WeightId>,
    /// Output channels.
    pub cout: usize,
    /// Kernel width of a Conv1d (a ConvTranspose1d's is twice its stride).
    pub kernel: usize,
}

/// Stride-1 "same" convolution over each sequence of `segments`, SnakeBeta fused into its input load.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    input_snake: Option<Snake>,
    c: &Conv,
    dilation: usize,
    residual: Option<TensorId>,
    segments: SegmentsId,
) -> TensorId {
    let out = g.temp(name, g.desc(x).rows, c.cout);
    let padding = dilation * (c.kernel - 1) / 2;
    g.push(Op::Conv1d {
        x,
        input_snake,
        w: c.weight,
        bias: c.bias,
        kernel: c.kernel,
        dilation,
        padding,
        residual,
        segments,
        out,
    });
    out
}

/// Transposed convolution upsampling each sequence `stride` times, SnakeBeta fused into its input load.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    input_snake: Option<Snake>,
    c: &Conv,
    stride: usize,
    in_segments: SegmentsId,
    out_segments: SegmentsId,
) -> TensorId {
    let out = g.temp(name, g.seg(out_segments).total(), c.cout);
    g.push(Op::ConvTranspose1d { x, input_snake, w: c.weight, bias: c.bias, stride, in_segments, out_segments, out });
    out
}

fn same_shape(g: &mut Graph, name: impl Into<String>, x: TensorId) -> TensorId {
    let d = g.desc(x);
    let (rows, cols) = (d.rows, d.cols);
    g.temp(name, rows, cols)
}
