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

/// Lifetime class of a graph tensor: decides whether the planner may share its arena space.
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

/// How a backend stores a graph tensor's values.
///
/// The host sees f32 values whatever the type (`Executor::read`/`write`
/// convert). Model graphs use `F16` only for block activations a backend keeps
/// in half precision (`Graph::activations`); op tests use it anywhere. The
/// CPU backend stores an `F16` tensor as f32 values rounded to fp16 after the
/// op that writes it, which is exactly the value set a GPU kernel storing fp16
/// can hold: that makes it the GPU's twin, op by op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE binary16 (round to nearest even on store).
    F16,
}

impl DType {
    /// Bytes per element on a device that stores this type natively.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// Short name, for error messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "fp16",
        }
    }
}

/// Shape and lifetime of one graph tensor, a row-major `[rows, cols]` matrix.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    /// Debug name, used in error messages and dumps (not necessarily unique).
    pub name: String,
    /// Number of rows (for packed batches: the total rows of all sequences).
    pub rows: usize,
    /// Number of columns (the feature width).
    pub cols: usize,
    /// Lifetime class, which decides arena sharing.
    pub kind: TensorKind,
    /// Element type on the device.
    pub dtype: DType,
}

impl TensorDesc {
    /// Element count, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of a packed batch: sequence `b` is rows `offsets[b]..offsets[b + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    /// Cumulative row offsets, `count() + 1` entries, starting at 0 and non-decreasing.
    pub offsets: Vec<usize>,
}

impl Segments {
    /// Layout of sequences with the given row counts, packed in order.
    pub fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut offsets = vec![0];
        for len in lengths {
            offsets.push(offsets.last().copied().unwrap_or(0) + len);
        }
        Segments { offsets }
    }
    /// Number of sequences.
    pub fn count(&self) -> usize {
        self.offsets.len() - 1
    }
    /// Total rows of all sequences (the packed tensor's row count).
    pub fn total(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }
    /// Rows of sequence `b`; panics if `b >= count()`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }
    /// Row count of sequence `b`; panics if `b >= count()`.
    pub fn len_of(&self, b: usize) -> usize {
        self.offsets[b + 1] - self.offsets[b]
    }
    /// Row count of each sequence, in order.
    pub fn lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }
}

/// Columns `offset..offset + width` of a tensor (e.g. the k part of a fused qkv).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSlice {
    /// The tensor the columns belong to.
    pub tensor: TensorId,
    /// First column of the slice.
    pub offset: usize,
    /// Number of columns in the slice.
    pub width: usize,
}

/// Rotary position embedding applied to q and k inside attention: the first
/// `rotary_dim` dims of every head are rotated by angle `position * inv_freq`,
/// positions counted from 0 at the start of each sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rope {
    /// Inverse frequencies, `[rotary_dim / 2]`, one per rotated pair of dims.
    pub inv_freq: WeightId,
    /// Leading dims of each head that are rotated (even, at most `head_dim`).
    pub rotary_dim: usize,
}

/// adaLN modulation of a LayerNorm output: `y * (1 + scale) + shift`, with one
/// scale/shift vector per sequence: row b of `table` (`[B, k*D]`), at the given
/// column offsets, applies to the rows of sequence b in `segments` (the layout
/// of the normalised tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaLnModulation {
    /// Per-sequence modulation table `[B, k*D]` (row b for sequence b).
    pub table: TensorId,
    /// First column of the `D`-wide scale vector in `table`.
    pub scale_offset: usize,
    /// First column of the `D`-wide shift vector in `table`.
    pub shift_offset: usize,
    /// Sequence layout of the normalised tensor; its count is `table`'s row count.
    pub segments: SegmentsId,
}

/// SnakeBeta applied to a convolution's input as it is loaded (see `Op::Conv1d`):
/// `y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2` per input channel,
/// with log-scale `alpha` and `beta` (`[C_in]` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snake {
    /// Log-scale frequency `alpha`, `[C_in]`.
    pub alpha: WeightId,
    /// Log-scale magnitude `beta`, `[C_in]`.
    pub beta: WeightId,
}

/// Slots of the per-step scalar input of a sampler step graph: one row of
/// `COUNT` values per request of the batch (`[requests, COUNT]`), so that
/// requests at different steps of their own schedules run in one step graph.
pub mod scalar_slot {
    /// v-denoiser input scaling `c_in`: the DiT sees `x * c_in` (`Op::CfgExpand`).
    pub const C_IN: usize = 0;
    /// v-denoiser skip scaling `c_skip` of `x` in `Op::CfgDenoise`.
    pub const C_SKIP: usize = 1;
    /// v-denoiser output scaling `c_out` of the guided `v` in `Op::CfgDenoise`.
    pub const C_OUT: usize = 2;
    /// DPM++ update coefficient of `x` (`a` in `Op::Dpmpp3mUpdate`).
    pub const X: usize = 3;
    /// DPM++ update coefficient of this step's `denoised` (`b`).
    pub const DENOISED: usize = 4;
    /// DPM++ update coefficient of the previous step's `denoised`, `d1` (`c`).
    pub const D1: usize = 5;
    /// DPM++ update coefficient of the `denoised` two steps back, `d2` (`d`).
    pub const D2: usize = 6;
    /// DPM++ update coefficient of this step's Gaussian noise (`e`; 0 when no noise is added).
    pub const NOISE: usize = 7;
    /// The table row, as an f32 (exact below 2^24), that `Op::SelectStepRow` reads
    /// for this request this step: its schedule's first row in the table plus its step index.
    pub const STEP: usize = 8;
    /// Number of slots: the scalar input is `[requests, COUNT]`.
    pub const COUNT: usize = 9;
}

/// One coarse operation of a graph; every variant is a kernel a backend implements.
#[derive(Debug, Clone)]
pub enum Op {
    /// `out = x @ w^T (+ bias) (+ residual)`; `w` is `[out_features, in_features]`.
    Linear {
        /// Input `[rows, in_features]`.
        x: TensorId,
        /// Weight `[out_features, in_features]`.
        w: WeightId,
        /// Optional bias `[out_features]`.
        bias: Option<WeightId>,
        /// Optional tensor `[rows, out_features]` added to the result.
        residual: Option<TensorId>,
        /// Output `[rows, out_features]`.
        out: TensorId,
    },
    /// Row-wise LayerNorm with weight and bias, optionally adaLN-modulated.
    LayerNorm {
        /// Input `[rows, D]`.
        x: TensorId,
        /// Scale `[D]`.
        gamma: WeightId,
        /// Bias `[D]`.
        beta: WeightId,
        /// Added to the variance before the square root.
        eps: f32,
        /// Optional per-sequence adaLN scale/shift applied after the affine step.
        modulation: Option<AdaLnModulation>,
        /// Output `[rows, D]`.
        out: TensorId,
    },
    /// `out = residual + branch * sigmoid(1 - gate)`; sequence b (rows of `segments`)
    /// uses the gate in row b of `table`, columns `gate_offset..`.
    GatedResidual {
        /// Branch output `[rows, D]`.
        branch: TensorId,
        /// Residual stream `[rows, D]`.
        residual: TensorId,
        /// Per-sequence modulation table `[B, k*D]`.
        table: TensorId,
        /// First column of the `D`-wide gate in `table`.
        gate_offset: usize,
        /// Sequence layout of `branch`/`residual` (B sequences).
        segments: SegmentsId,
        /// Output `[rows, D]`.
        out: TensorId,
    },
    /// `out = x * sigmoid(x)`.
    Silu {
        /// Input `[rows, cols]`.
        x: TensorId,
        /// Output `[rows, cols]`.
        out: TensorId,
    },
    /// `x` is `[M, 2F]`: `out = x[:, :F] * silu(x[:, F:])`.
    SwiGlu {
        /// Input `[M, 2F]`: value half, then gate half.
        x: TensorId,
        /// Output `[M, F]`.
        out: TensorId,
    },
    /// Fourier features of the timestep: `t` `[B, 1]`, `w` `[n, 1]` ->
    /// `[cos(2 pi t w), sin(2 pi t w)]` `[B, 2n]`.
    TimestepFeatures {
        /// Timesteps `[B, 1]`.
        t: TensorId,
        /// Fourier frequencies `[n, 1]`.
        w: WeightId,
        /// Output `[B, 2n]`: the n cosines, then the n sines.
        out: TensorId,
    },
    /// `out[r] = x[r] + table[position of r in its sequence] * scale`.
    AddPositional {
        /// Input `[rows, D]`.
        x: TensorId,
        /// Positional table `[max_len, D]`, at least as many rows as the longest sequence.
        table: WeightId,
        /// Factor applied to the table rows before the add.
        scale: f32,
        /// Sequence layout of `x`; positions restart at 0 for each sequence.
        segments: SegmentsId,
        /// Output `[rows, D]`.
        out: TensorId,
    },
    /// Per sequence b: `out = concat(first[b], rest rows of b)`; `out` uses `out_segments`.
    PrependRow {
        /// One row per sequence, `[B, D]`.
        first: TensorId,
        /// Packed sequences `[rows, D]`.
        rest: TensorId,
        /// Sequence layout of `rest`.
        rest_segments: SegmentsId,
        /// Sequence layout of `out`: each sequence one row longer.
        out_segments: SegmentsId,
        /// Output `[rows + B, D]`.
        out: TensorId,
    },
    /// `PrependRow` then `AddPositional` in one pass: per sequence b, row 0 is
    /// `first[b]` and row p > 0 is row p - 1 of b in `rest`, each plus
    /// `table[p] * scale` (the DiT's timestep token and audio tokens with PE_z).
    PrependRowPositional {
        /// One row per sequence, `[B, D]`.
        first: TensorId,
        /// Packed sequences `[rows, D]`.
        rest: TensorId,
        /// Positional table `[max_len, D]`, at least as many rows as the longest output sequence.
        table: WeightId,
        /// Factor applied to the table rows before the add.
        scale: f32,
        /// Sequence layout of `rest`.
        rest_segments: SegmentsId,
        /// Sequence layout of `out`: each sequence one row longer; positions restart at 0.
        out_segments: SegmentsId,
        /// Output `[rows + B, D]`.
        out: TensorId,
    },
    /// Per sequence: drop the first row (inverse of `PrependRow`).
    DropFirstRow {
        /// Packed sequences `[rows, D]`.
        x: TensorId,
        /// Sequence layout of `x`.
        x_segments: SegmentsId,
        /// Sequence layout of `out`: each sequence one row shorter.
        out_segments: SegmentsId,
        /// Output `[rows - B, D]`.
        out: TensorId,
    },
    /// Non-causal multi-head attention over a packed batch: sequence b's queries
    /// (rows `q_segments[b]`) attend to its keys (rows `kv_segments[b]`).
    /// Query head j reads kv head `j / (heads / kv_heads)`. Output `[Mq, heads * head_dim]`.
    Attention {
        /// Queries, `heads * head_dim` columns of a `[Mq, ..]` tensor.
        q: ColumnSlice,
        /// Keys, `kv_heads * head_dim` columns of a `[Mkv, ..]` tensor.
        k: ColumnSlice,
        /// Values, `kv_heads * head_dim` columns of a `[Mkv, ..]` tensor.
        v: ColumnSlice,
        /// Sequence layout of the query rows.
        q_segments: SegmentsId,
        /// Sequence layout of the key/value rows (same sequence count as `q_segments`).
        kv_segments: SegmentsId,
        /// Number of query heads.
        heads: usize,
        /// Number of key/value heads; divides `heads`.
        kv_heads: usize,
        /// Width of one head.
        head_dim: usize,
        /// Factor applied to `q . k` before the softmax (usually `1 / sqrt(head_dim)`).
        scale: f32,
        /// Optional rotary embedding of q and k.
        rope: Option<Rope>,
        /// Output `[Mq, heads * head_dim]`.
        out: TensorId,
    },
    /// Sampler: the DiT input for cond and uncond, `out = concat(x, x) * c_in`,
    /// with each request's own `c_in`.
    CfgExpand {
        /// Sampler state `[rows, C]`.
        x: TensorId,
        /// Step scalars `[requests, scalar_slot::COUNT]`; reads `C_IN`.
        scalars: TensorId,
        /// Sequence layout of `x`, one sequence per request (row of `scalars`).
        x_segments: SegmentsId,
        /// Output `[2 * rows, C]`: cond copy, then uncond copy.
        out: TensorId,
    },
    /// Sampler: classifier-free guidance and the v-denoiser:
    /// `denoised = (v_u + (v_c - v_u) * cfg_scale) * c_out + x * c_skip`, where `v`
    /// holds all cond rows then all uncond rows, and `x_segments` gives each request's rows.
    CfgDenoise {
        /// DiT output `[2 * rows, C]`: cond rows, then uncond rows.
        v: TensorId,
        /// Sampler state `[rows, C]`.
        x: TensorId,
        /// Step scalars `[requests, scalar_slot::COUNT]`; reads `C_SKIP` and `C_OUT`.
        scalars: TensorId,
        /// Sequence layout of `x`, one sequence per request.
        x_segments: SegmentsId,
        /// CFG scale of each request, one per sequence of `x_segments`.
        cfg_scales: Vec<f32>,
        /// Output `denoised` `[rows, C]`.
        out: TensorId,
    },
    /// Sampler: one DPM++ 3M SDE update, in place on the state:
    /// `x = a*x + b*denoised + c*d1 + d*d2 + e*noise; d2 = d1; d1 = denoised`
    /// with each request's coefficients from its row of `scalars`.
    Dpmpp3mUpdate {
        /// Sampler state `[rows, C]`, updated in place.
        x: TensorId,
        /// This step's denoised estimate `[rows, C]`.
        denoised: TensorId,
        /// Previous step's denoised `[rows, C]`, updated in place.
        d1: TensorId,
        /// Denoised of two steps back `[rows, C]`, updated in place.
        d2: TensorId,
        /// This step's Gaussian noise `[rows, C]`.
        noise: TensorId,
        /// Step scalars `[requests, scalar_slot::COUNT]`; reads `X`, `DENOISED`, `D1`, `D2`, `NOISE`.
        scalars: TensorId,
        /// Sequence layout of `x`, one sequence per request (row of `scalars`).
        x_segments: SegmentsId,
    },
    /// Sampler: row `j` of `out` is row `scalars[j % requests][STEP]` of `table`,
    /// read on the device, so that one (captured) step graph serves every step
    /// of schedules whose per-step values were computed once into `table` (e.g.
    /// the timestep embeddings), with each request at its own step. (`out` has
    /// one row per DiT sequence: all cond sequences, then all uncond ones, so
    /// `j % requests` is the request.) A row outside the table is an error on
    /// the CPU and clamped to the last row on the GPU (a kernel cannot fail).
    SelectStepRow {
        /// Per-step values `[table_rows, cols]`: each schedule's steps, one block per schedule.
        table: TensorId,
        /// Step scalars `[requests, scalar_slot::COUNT]`; reads `STEP`.
        scalars: TensorId,
        /// Output `[rows, cols]`, one row per DiT sequence (see above).
        out: TensorId,
    },
    /// VAE: stride-1 convolution over each sequence of `segments` (token-major
    /// `[L, C_in]` -> `[L, C_out]`, zero padding per sequence), `w` `[C_out, K * C_in]`
    /// tap-major, plus bias and an optional residual. With `input_snake`, SnakeBeta
    /// is applied to every input value as the conv reads it, before the zero
    /// padding (snake(0) = 0, so padding before or after the activation is the
    /// same): the conv reads `snake(x)` without it ever being stored.
    Conv1d {
        /// Input `[rows, C_in]`, token-major.
        x: TensorId,
        /// Optional SnakeBeta applied to the input as it is read.
        input_snake: Option<Snake>,
        /// Weight `[C_out, K * C_in]`, tap-major.
        w: WeightId,
        /// Optional bias `[C_out]`.
        bias: Option<WeightId>,
        /// Kernel size K (taps).
        kernel: usize,
        /// Spacing between taps, in rows.
        dilation: usize,
        /// Zero rows at each end of every sequence; the output keeps L, so `2 * padding == dilation * (K - 1)`.
        padding: usize,
        /// Optional tensor `[rows, C_out]` added to the result.
        residual: Option<TensorId>,
        /// Sequence layout of `x` and `out`.
        segments: SegmentsId,
        /// Output `[rows, C_out]`.
        out: TensorId,
    },
    /// VAE: transposed convolution, kernel `2 * stride`, padding `stride / 2`, so each
    /// sequence grows from L to `L * stride` rows; `w` `[stride, C_out, 2 * C_in]` (see backend docs).
    /// `input_snake` as for `Conv1d`.
    ConvTranspose1d {
        /// Input `[rows, C_in]`, token-major.
        x: TensorId,
        /// Optional SnakeBeta applied to the input as it is read.
        input_snake: Option<Snake>,
        /// Weight `[stride, C_out, 2 * C_in]`, rearranged per output phase.
        w: WeightId,
        /// Optional bias `[C_out]`.
        bias: Option<WeightId>,
        /// Upsampling factor.
        stride: usize,
        /// Sequence layout of `x`.
        in_segments: SegmentsId,
        /// Sequence layout of `out`: each sequence `stride` times longer.
        out_segments: SegmentsId,
        /// Output `[rows * stride, C_out]`.
        out: TensorId,
    },
    /// VAE: `y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2` per channel (column).
    SnakeBeta {
        /// Input `[rows, C]`.
        x: TensorId,
        /// Log-scale frequency `[C]`.
        alpha: WeightId,
        /// Log-scale magnitude `[C]`.
        beta: WeightId,
        /// Output `[rows, C]`.
        out: TensorId,
    },
    /// Patches of a strided conv whose stride equals its kernel (im2col), so that
    /// the conv becomes a `Linear` with its weight `[out, channels, patch, patch]`
    /// viewed as `[out, channels * patch^2]`. `images` is `[n, channels * size^2]`
    /// (each image CHW); `out` is `[n * grid^2, channels * patch^2]`, grid = size / patch,
    /// one row per patch in row-major grid order, columns in (channel, ky, kx) order.
    Patchify {
        /// Images `[n, channels * size^2]`, each CHW.
        images: TensorId,
        /// Channels per image.
        channels: usize,
        /// Image side length in pixels (square images).
        size: usize,
        /// Patch side length in pixels; divides `size`.
        patch: usize,
        /// Output `[n * grid^2, channels * patch^2]`.
        out: TensorId,
    },
    /// Per sequence b: the weight `row` (one row, e.g. CLIP's class embedding),
    /// then the rows of `rest` for b; `out` uses `out_segments`.
    PrependWeightRow {
        /// Row prepended to every sequence, `[D]`.
        row: WeightId,
        /// Packed sequences `[rows, D]`.
        rest: TensorId,
        /// Sequence layout of `rest`.
        rest_segments: SegmentsId,
        /// Sequence layout of `out`: each sequence one row longer.
        out_segments: SegmentsId,
        /// Output `[rows + B, D]`.
        out: TensorId,
    },
    /// `out = x * sigmoid(1.702 x)` (CLIP's QuickGELU).
    QuickGelu {
        /// Input `[rows, cols]`.
        x: TensorId,
        /// Output `[rows, cols]`.
        out: TensorId,
    },
    /// Row b of `out` is the first row of sequence b of `x` (e.g. each image's class token).
    FirstRows {
        /// Packed sequences `[rows, D]`.
        x: TensorId,
        /// Sequence layout of `x` (B sequences).
        segments: SegmentsId,
        /// Output `[B, D]`.
        out: TensorId,
    },
}

/// An op list with its tensors and sequence layouts. Built by models through
/// the `add_*`/`push` methods; every op's shapes are checked once, when an
/// executor plans the graph (`Graph::check`, `graph::ops`).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Every tensor, indexed by `TensorId`.
    pub tensors: Vec<TensorDesc>,
    /// Distinct sequence layouts, indexed by `SegmentsId`.
    pub segments: Vec<Segments>,
    /// The ops, in execution order.
    pub ops: Vec<Op>,
    /// The type model builders give the activations that only other ops read
    /// inside a transformer block (normalised rows, projections, attention
    /// and feed-forward outputs, cross-attention K/V; `Graph::as_activation`):
    /// `F32` by default (the CPU reference), `F16` on a backend that keeps them
    /// in half precision (`Backend::activation_dtype`). The residual stream,
    /// inputs and outputs stay f32 whatever this says.
    pub activations: DType,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `[rows, cols]` tensor of the given kind and returns its id.
    pub fn tensor(&mut self, name: impl Into<String>, rows: usize, cols: usize, kind: TensorKind) -> TensorId {
        self.tensors.push(TensorDesc { name: name.into(), rows, cols, kind, dtype: DType::F32 });
        TensorId(self.tensors.len() - 1)
    }

    /// An empty graph whose block activations have type `activations`.
    pub fn with_activations(activations: DType) -> Self {
        Graph { activations, ..Self::default() }
    }

    /// Adds a `[rows, cols]` input tensor the host writes before a run.
    pub fn input(&mut self, name: impl Into<String>, rows: usize, cols: usize) -> TensorId {
        self.tensor(name, rows, cols, TensorKind::Input)
    }

    /// Gives tensor `t` the element type `dtype` (op tests; model builders use `as_activation`).
    pub fn set_dtype(&mut self, t: TensorId, dtype: DType) {
        self.tensors[t.0].dtype = dtype;
    }

    /// Adds a `[rows, cols]` temporary; `mark_output`/`mark_state` can promote it.
    pub fn temp(&mut self, name: impl Into<String>, rows: usize, cols: usize) -> TensorId {
        self.tensor(name, rows, cols, TensorKind::Temp)
    }

    /// Gives the temporary `t`, which the last op pushed writes and no op has
    /// read yet, the type `self.activations`: a block activation that only
    /// ops read. Returns `t`, so that a builder writes
    /// `let n = layer_norm(g, ...); let n = g.as_activation(n);`.
    pub fn as_activation(&mut self, t: TensorId) -> TensorId {
        let fresh =
            self.ops.last().is_some_and(|op| op.writes() == [t]) && !self.ops.iter().any(|op| op.reads().contains(&t));
        assert!(
            self.tensors[t.0].kind == TensorKind::Temp && fresh,
            "graph bug: only a fresh temporary becomes a block activation"
        );
        self.tensors[t.0].dtype = self.activations;
        t
    }

    /// Adds a sequence layout, reusing the id of an equal one already present.
    pub fn add_segments(&mut self, segments: Segments) -> SegmentsId {
        if let Some(i) = self.segments.iter().position(|s| *s == segments) {
            return SegmentsId(i);
        }
        self.segments.push(segments);
        SegmentsId(self.segments.len() - 1)
    }

    /// Appends an op; ops run in the order they are pushed.
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

    /// Descriptor of tensor `t`; panics on an id from another graph.
    pub fn desc(&self, t: TensorId) -> &TensorDesc {
        &self.tensors[t.0]
    }

    /// Sequence layout `s`; panics on an id from another graph.
    pub fn seg(&self, s: SegmentsId) -> &Segments {
        &self.segments[s.0]
    }
}
