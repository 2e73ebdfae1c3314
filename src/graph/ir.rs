//! Graph representation: tensor descriptors, sequence layouts and the op set.
//!
//! The op set is what a backend must implement. Ops are coarse on purpose
//! (a linear layer carries its bias and residual add, attention carries its
//! RoPE and grouped-query mapping) so that a GPU backend can run each one as a
//! single fused kernel without pattern-matching the graph.

/// A tensor of the graph (index into `Graph::tensors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId(pub usize);

/// A weight, index into the weight list the model uploaded to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightId(pub usize);

/// A sequence layout (index into `Graph::segments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentsId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Written by the host before a run; kept for the whole run.
    Input,
    /// Kept across runs: sampler state the host writes once and ops update in
    /// place, or per-request constants that ops of a once-run part of the graph write.
    State,
    /// Produced and consumed inside a run; shares arena space with other temporaries.
    Temp,
    /// A temporary the host reads after the run; kept until the end of the run.
    Output,
}

#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub kind: TensorKind,
}

impl TensorDesc {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of a packed batch: sequence `b` is rows `offsets[b]..offsets[b + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    pub offsets: Vec<usize>,
}

impl Segments {
    pub fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut offsets = vec![0];
        for len in lengths {
            offsets.push(offsets.last().copied().unwrap_or(0) + len);
        }
        Segments { offsets }
    }
    pub fn count(&self) -> usize {
        self.offsets.len() - 1
    }
    pub fn total(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }
    pub fn len_of(&self, b: usize) -> usize {
        self.offsets[b + 1] - self.offsets[b]
    }
    pub fn lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }
}

/// Columns `offset..offset + width` of a tensor (e.g. the k part of a fused qkv).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSlice {
    pub tensor: TensorId,
    pub offset: usize,
    pub width: usize,
}

/// Rotary position embedding applied to q and k inside attention: the first
/// `rotary_dim` dims of every head are rotated by angle `position * inv_freq`,
/// positions counted from 0 at the start of each sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rope {
    pub inv_freq: WeightId,
    pub rotary_dim: usize,
}

/// adaLN modulation of a LayerNorm output: `y * (1 + scale) + shift`, with one
/// scale/shift vector per sequence: row b of `table` (`[B, k*D]`), at the given
/// column offsets, applies to the rows of sequence b in `segments` (the layout
/// of the normalised tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaLnModulation {
    pub table: TensorId,
    pub scale_offset: usize,
    pub shift_offset: usize,
    pub segments: SegmentsId,
}

/// SnakeBeta applied to a convolution's input as it is loaded (see `Op::Conv1d`):
/// `y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2` per input channel,
/// with log-scale `alpha` and `beta` (`[C_in]` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snake {
    pub alpha: WeightId,
    pub beta: WeightId,
}

/// Slots of the per-step scalar input of a sampler step graph (see `sampler::StepScalars`).
pub mod scalar_slot {
    pub const C_IN: usize = 0;
    pub const C_SKIP: usize = 1;
    pub const C_OUT: usize = 2;
    pub const X: usize = 3;
    pub const DENOISED: usize = 4;
    pub const D1: usize = 5;
    pub const D2: usize = 6;
    pub const NOISE: usize = 7;
    /// The step index, as an f32 (exact below 2^24): which row of the per-request
    /// tables (`Op::SelectStepRow`) this step reads.
    pub const STEP: usize = 8;
    pub const COUNT: usize = 9;
}

#[derive(Debug, Clone)]
pub enum Op {
    /// `out = x @ w^T (+ bias) (+ residual)`; `w` is `[out_features, in_features]`.
    Linear { x: TensorId, w: WeightId, bias: Option<WeightId>, residual: Option<TensorId>, out: TensorId },
    /// Row-wise LayerNorm with weight and bias, optionally adaLN-modulated.
    LayerNorm {
        x: TensorId,
        gamma: WeightId,
        beta: WeightId,
        eps: f32,
        modulation: Option<AdaLnModulation>,
        out: TensorId,
    },
    /// `out = residual + branch * sigmoid(1 - gate)`; sequence b (rows of `segments`)
    /// uses the gate in row b of `table`, columns `gate_offset..`.
    GatedResidual {
        branch: TensorId,
        residual: TensorId,
        table: TensorId,
        gate_offset: usize,
        segments: SegmentsId,
        out: TensorId,
    },
    /// `out = x * sigmoid(x)`.
    Silu { x: TensorId, out: TensorId },
    /// `x` is `[M, 2F]`: `out = x[:, :F] * silu(x[:, F:])`.
    SwiGlu { x: TensorId, out: TensorId },
    /// Fourier features of the timestep: `t` `[B, 1]`, `w` `[n, 1]` ->
    /// `[cos(2 pi t w), sin(2 pi t w)]` `[B, 2n]`.
    TimestepFeatures { t: TensorId, w: WeightId, out: TensorId },
    /// `out[r] = x[r] + table[position of r in its sequence] * scale`.
    AddPositional { x: TensorId, table: WeightId, scale: f32, segments: SegmentsId, out: TensorId },
    /// Per sequence b: `out = concat(first[b], rest rows of b)`; `out` uses `out_segments`.
    PrependRow { first: TensorId, rest: TensorId, rest_segments: SegmentsId, out_segments: SegmentsId, out: TensorId },
    /// Per sequence: drop the first row (inverse of `PrependRow`).
    DropFirstRow { x: TensorId, x_segments: SegmentsId, out_segments: SegmentsId, out: TensorId },
    /// Non-causal multi-head attention over a packed batch: sequence b's queries
    /// (rows `q_segments[b]`) attend to its keys (rows `kv_segments[b]`).
    /// Query head j reads kv head `j / (heads / kv_heads)`. Output `[Mq, heads * head_dim]`.
    Attention {
        q: ColumnSlice,
        k: ColumnSlice,
        v: ColumnSlice,
        q_segments: SegmentsId,
        kv_segments: SegmentsId,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
        rope: Option<Rope>,
        out: TensorId,
    },
    /// Sampler: the DiT input for cond and uncond, `out = concat(x, x) * c_in`.
    CfgExpand { x: TensorId, scalars: TensorId, out: TensorId },
    /// Sampler: classifier-free guidance and the v-denoiser:
    /// `denoised = (v_u + (v_c - v_u) * cfg_scale) * c_out + x * c_skip`, where `v`
    /// holds all cond rows then all uncond rows, and `x_segments` gives each request's rows.
    CfgDenoise {
        v: TensorId,
        x: TensorId,
        scalars: TensorId,
        x_segments: SegmentsId,
        cfg_scales: Vec<f32>,
        out: TensorId,
    },
    /// Sampler: one DPM++ 3M SDE update, in place on the state:
    /// `x = a*x + b*denoised + c*d1 + d*d2 + e*noise; d2 = d1; d1 = denoised`
    /// with the coefficients from `scalars`.
    Dpmpp3mUpdate { x: TensorId, denoised: TensorId, d1: TensorId, d2: TensorId, noise: TensorId, scalars: TensorId },
    /// Sampler: every row of `out` is row `step` of `table`, with `step` read from
    /// `scalars[STEP]` on the device, so that one (captured) step graph serves every
    /// step of a schedule whose per-step values were computed once into `table`
    /// (e.g. the timestep embeddings). A step outside the table is an error on the
    /// CPU and clamped to the last row on the GPU (a kernel cannot fail).
    SelectStepRow { table: TensorId, scalars: TensorId, out: TensorId },
    /// VAE: stride-1 convolution over each sequence of `segments` (token-major
    /// `[L, C_in]` -> `[L, C_out]`, zero padding per sequence), `w` `[C_out, K * C_in]`
    /// tap-major, plus bias and an optional residual. With `input_snake`, SnakeBeta
    /// is applied to every input value as the conv reads it, before the zero
    /// padding (snake(0) = 0, so padding before or after the activation is the
    /// same): the conv reads `snake(x)` without it ever being stored.
    Conv1d {
        x: TensorId,
        input_snake: Option<Snake>,
        w: WeightId,
        bias: Option<WeightId>,
        kernel: usize,
        dilation: usize,
        padding: usize,
        residual: Option<TensorId>,
        segments: SegmentsId,
        out: TensorId,
    },
    /// VAE: transposed convolution, kernel `2 * stride`, padding `stride / 2`, so each
    /// sequence grows from L to `L * stride` rows; `w` `[stride, C_out, 2 * C_in]` (see backend docs).
    /// `input_snake` as for `Conv1d`.
    ConvTranspose1d {
        x: TensorId,
        input_snake: Option<Snake>,
        w: WeightId,
        bias: Option<WeightId>,
        stride: usize,
        in_segments: SegmentsId,
        out_segments: SegmentsId,
        out: TensorId,
    },
    /// VAE: `y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2` per channel (column).
    SnakeBeta { x: TensorId, alpha: WeightId, beta: WeightId, out: TensorId },
    /// Patches of a strided conv whose stride equals its kernel (im2col), so that
    /// the conv becomes a `Linear` with its weight `[out, channels, patch, patch]`
    /// viewed as `[out, channels * patch^2]`. `images` is `[n, channels * size^2]`
    /// (each image CHW); `out` is `[n * grid^2, channels * patch^2]`, grid = size / patch,
    /// one row per patch in row-major grid order, columns in (channel, ky, kx) order.
    Patchify { images: TensorId, channels: usize, size: usize, patch: usize, out: TensorId },
    /// Per sequence b: the weight `row` (one row, e.g. CLIP's class embedding),
    /// then the rows of `rest` for b; `out` uses `out_segments`.
    PrependWeightRow {
        row: WeightId,
        rest: TensorId,
        rest_segments: SegmentsId,
        out_segments: SegmentsId,
        out: TensorId,
    },
    /// `out = x * sigmoid(1.702 x)` (CLIP's QuickGELU).
    QuickGelu { x: TensorId, out: TensorId },
    /// Row b of `out` is the first row of sequence b of `x` (e.g. each image's class token).
    FirstRows { x: TensorId, segments: SegmentsId, out: TensorId },
}

impl Op {
    /// Tensors the op reads.
    pub fn reads(&self) -> Vec<TensorId> {
        use Op::*;
        match self {
            Linear { x, residual, .. } => [Some(*x), *residual].into_iter().flatten().collect(),
            LayerNorm { x, modulation, .. } => [Some(*x), modulation.map(|m| m.table)].into_iter().flatten().collect(),
            GatedResidual { branch, residual, table, .. } => vec![*branch, *residual, *table],
            Silu { x, .. } | SwiGlu { x, .. } | TimestepFeatures { t: x, .. } | AddPositional { x, .. } => vec![*x],
            PrependRow { first, rest, .. } => vec![*first, *rest],
            DropFirstRow { x, .. } => vec![*x],
            Attention { q, k, v, .. } => vec![q.tensor, k.tensor, v.tensor],
            CfgExpand { x, scalars, .. } => vec![*x, *scalars],
            CfgDenoise { v, x, scalars, .. } => vec![*v, *x, *scalars],
            Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars } => vec![*x, *denoised, *d1, *d2, *noise, *scalars],
            SelectStepRow { table, scalars, .. } => vec![*table, *scalars],
            Conv1d { x, residual, .. } => [Some(*x), *residual].into_iter().flatten().collect(),
            ConvTranspose1d { x, .. } | SnakeBeta { x, .. } => vec![*x],
            Patchify { images, .. } => vec![*images],
            PrependWeightRow { rest, .. } => vec![*rest],
            QuickGelu { x, .. } | FirstRows { x, .. } => vec![*x],
        }
    }

    /// Tensors the op writes. Only `Dpmpp3mUpdate` writes tensors it also reads
    /// (state, element by element); everywhere else outputs are fresh tensors.
    pub fn writes(&self) -> Vec<TensorId> {
        use Op::*;
        match self {
            Linear { out, .. }
            | LayerNorm { out, .. }
            | GatedResidual { out, .. }
            | Silu { out, .. }
            | SwiGlu { out, .. }
            | TimestepFeatures { out, .. }
            | AddPositional { out, .. }
            | PrependRow { out, .. }
            | DropFirstRow { out, .. }
            | Attention { out, .. }
            | CfgExpand { out, .. }
            | CfgDenoise { out, .. }
            | SelectStepRow { out, .. }
            | Conv1d { out, .. }
            | ConvTranspose1d { out, .. }
            | SnakeBeta { out, .. } => vec![*out],
            Dpmpp3mUpdate { x, d1, d2, .. } => vec![*x, *d1, *d2],
            Patchify { out, .. } | PrependWeightRow { out, .. } | QuickGelu { out, .. } | FirstRows { out, .. } => {
                vec![*out]
            }
        }
    }

    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            Linear { .. } => "linear",
            LayerNorm { .. } => "layer_norm",
            GatedResidual { .. } => "gated_residual",
            Silu { .. } => "silu",
            SwiGlu { .. } => "swiglu",
            TimestepFeatures { .. } => "timestep_features",
            AddPositional { .. } => "add_positional",
            PrependRow { .. } => "prepend_row",
            DropFirstRow { .. } => "drop_first_row",
            Attention { .. } => "attention",
            CfgExpand { .. } => "cfg_expand",
            CfgDenoise { .. } => "cfg_denoise",
            Dpmpp3mUpdate { .. } => "dpmpp_3m_update",
            SelectStepRow { .. } => "select_step_row",
            Conv1d { .. } => "conv1d",
            ConvTranspose1d { .. } => "conv_transpose1d",
            SnakeBeta { .. } => "snake_beta",
            Patchify { .. } => "patchify",
            PrependWeightRow { .. } => "prepend_weight_row",
            QuickGelu { .. } => "quick_gelu",
            FirstRows { .. } => "first_rows",
        }
    }
}

/// An op list with its tensors and sequence layouts. Built by models through
/// the `add_*`/`push` methods; shapes are checked by the model code that builds it.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub segments: Vec<Segments>,
    pub ops: Vec<Op>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn tensor(&mut self, name: impl Into<String>, rows: usize, cols: usize, kind: TensorKind) -> TensorId {
        self.tensors.push(TensorDesc { name: name.into(), rows, cols, kind });
        TensorId(self.tensors.len() - 1)
    }

    pub fn input(&mut self, name: impl Into<String>, rows: usize, cols: usize) -> TensorId {
        self.tensor(name, rows, cols, TensorKind::Input)
    }

    pub fn temp(&mut self, name: impl Into<String>, rows: usize, cols: usize) -> TensorId {
        self.tensor(name, rows, cols, TensorKind::Temp)
    }

    pub fn add_segments(&mut self, segments: Segments) -> SegmentsId {
        if let Some(i) = self.segments.iter().position(|s| *s == segments) {
            return SegmentsId(i);
        }
        self.segments.push(segments);
        SegmentsId(self.segments.len() - 1)
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Marks a temporary as a result the host reads after the run.
    pub fn mark_output(&mut self, t: TensorId) {
        if self.tensors[t.0].kind == TensorKind::Temp {
            self.tensors[t.0].kind = TensorKind::Output;
        }
    }

    /// Marks a temporary as state: it keeps its value across runs, so that one
    /// part of the graph (run once) can compute what another part (run many
    /// times) reads, e.g. per-request constants of a sampling loop.
    pub fn mark_state(&mut self, t: TensorId) {
        if matches!(self.tensors[t.0].kind, TensorKind::Temp | TensorKind::Output) {
            self.tensors[t.0].kind = TensorKind::State;
        }
    }

    pub fn desc(&self, t: TensorId) -> &TensorDesc {
        &self.tensors[t.0]
    }

    pub fn seg(&self, s: SegmentsId) -> &Segments {
        &self.segments[s.0]
    }
}
