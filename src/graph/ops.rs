//! The op table: for every `Op`, its name, the tensors it reads and writes,
//! its FLOP count and its shape rules, in one place. A backend implements the
//! op's arithmetic and checks only its own device limits (grid sizes, the head
//! dims a kernel supports, how a weight is stored); `Graph::check` runs every
//! op's shape rules once, when an executor plans the graph.
//!
//! Adding an op: a variant of `Op` (ir.rs), its line in `op_kinds!` below, and
//! its arm in `operands`, `op_flops` and `check` (the compiler points at each
//! match), then its CPU twin, its CUDA launcher and its op test
//! (tests/backend_ops.rs fails for an op kind without cases).
//!
//! FLOP: only the matrix products count (a multiply-add is 2 FLOP): linear
//! layers, attention and the VAE's convolutions as the GEMMs they are.
//! Elementwise ops, norms, softmax and RoPE are ignored: they are memory-bound
//! and a rounding error next to the GEMMs (well under 1% of a DiT step).

use super::ir::{ColumnSlice, Graph, Op, Segments, SegmentsId, TensorId, WeightId, scalar_slot};
use crate::error::{Error, Result};

/// Declares `OpKind` (one fieldless variant per `Op` variant, with its name)
/// and `Op::kind`. `Op::kind` matches every variant, so an op missing here
/// does not compile, and `OpKind::ALL` lists every kind (the op tests iterate it).
macro_rules! op_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// The kind of an `Op`, without its operands.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OpKind {
            $(
                #[doc = concat!("`Op::", stringify!($variant), "`.")]
                $variant,
            )*
        }

        impl OpKind {
            /// Every op kind, in declaration order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),*];

            /// Short snake_case name, for profiles, error messages and op tests.
            pub fn name(self) -> &'static str {
                match self {
                    $(OpKind::$variant => $name,)*
                }
            }
        }

        impl Op {
            /// The op's kind.
            pub fn kind(&self) -> OpKind {
                match self {
                    $(Op::$variant { .. } => OpKind::$variant,)*
                }
            }
        }
    };
}

op_kinds! {
    Linear => "linear",
    LayerNorm => "layer_norm",
    GatedResidual => "gated_residual",
    Silu => "silu",
    SwiGlu => "swiglu",
    TimestepFeatures => "timestep_features",
    AddPositional => "add_positional",
    PrependRow => "prepend_row",
    PrependRowPositional => "prepend_row_positional",
    DropFirstRow => "drop_first_row",
    Attention => "attention",
    CfgExpand => "cfg_expand",
    CfgDenoise => "cfg_denoise",
    Dpmpp3mUpdate => "dpmpp_3m_update",
    SelectStepRow => "select_step_row",
    Conv1d => "conv1d",
    ConvTranspose1d => "conv_transpose1d",
    SnakeBeta => "snake_beta",
    Patchify => "patchify",
    PrependWeightRow => "prepend_weight_row",
    QuickGelu => "quick_gelu",
    FirstRows => "first_rows",
}

impl Op {
    /// Short snake_case name of the op kind, for profiles and error messages.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Tensors the op reads.
    pub fn reads(&self) -> Vec<TensorId> {
        self.operands().0
    }

    /// Tensors the op writes. Only `Dpmpp3mUpdate` writes tensors it also reads
    /// (state, element by element); everywhere else outputs are fresh tensors.
    pub fn writes(&self) -> Vec<TensorId> {
        self.operands().1
    }

    /// (reads, writes), one arm per op.
    fn operands(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        use Op::*;
        let some = |ts: &[Option<TensorId>]| ts.iter().flatten().copied().collect::<Vec<_>>();
        match self {
            Linear { x, residual, out, .. } => (some(&[Some(*x), *residual]), vec![*out]),
            LayerNorm { x, modulation, out, .. } => (some(&[Some(*x), modulation.map(|m| m.table)]), vec![*out]),
            GatedResidual { branch, residual, table, out, .. } => (vec![*branch, *residual, *table], vec![*out]),
            Silu { x, out } | SwiGlu { x, out } => (vec![*x], vec![*out]),
            TimestepFeatures { t, out, .. } => (vec![*t], vec![*out]),
            AddPositional { x, out, .. } => (vec![*x], vec![*out]),
            PrependRow { first, rest, out, .. } | PrependRowPositional { first, rest, out, .. } => {
                (vec![*first, *rest], vec![*out])
            }
            DropFirstRow { x, out, .. } => (vec![*x], vec![*out]),
            Attention { q, k, v, out, .. } => (vec![q.tensor, k.tensor, v.tensor], vec![*out]),
            CfgExpand { x, scalars, out, .. } => (vec![*x, *scalars], vec![*out]),
            CfgDenoise { v, x, scalars, out, .. } => (vec![*v, *x, *scalars], vec![*out]),
            Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, .. } => {
                (vec![*x, *denoised, *d1, *d2, *noise, *scalars], vec![*x, *d1, *d2])
            }
            SelectStepRow { table, scalars, out } => (vec![*table, *scalars], vec![*out]),
            Conv1d { x, residual, out, .. } => (some(&[Some(*x), *residual]), vec![*out]),
            ConvTranspose1d { x, out, .. } | SnakeBeta { x, out, .. } => (vec![*x], vec![*out]),
            Patchify { images, out, .. } => (vec![*images], vec![*out]),
            PrependWeightRow { rest, out, .. } => (vec![*rest], vec![*out]),
            QuickGelu { x, out } | FirstRows { x, out, .. } => (vec![*x], vec![*out]),
        }
    }
}

impl Graph {
    /// Matrix-product FLOP of one run of the graph (see the module comment).
    pub fn flops(&self) -> u64 {
        self.ops.iter().map(|op| self.op_flops(op)).sum()
    }

    /// Matrix-product FLOP of one op of this graph (0 for the elementwise ones).
    pub fn op_flops(&self, op: &Op) -> u64 {
        let rows = |t| self.desc(t).rows as u64;
        let cols = |t| self.desc(t).cols as u64;
        match op {
            // [M, K] x [K, N].
            Op::Linear { x, out, .. } => 2 * rows(*x) * cols(*x) * cols(*out),
            // Per sequence and head: scores q k^T (Mq x Mk x d) and p v (Mq x d x Mk).
            Op::Attention { q_segments, kv_segments, heads, head_dim, .. } => {
                let (q, kv) = (self.seg(*q_segments), self.seg(*kv_segments));
                (0..q.count().min(kv.count()))
                    .map(|b| 4 * q.len_of(b) as u64 * kv.len_of(b) as u64 * (*heads * *head_dim) as u64)
                    .sum()
            }
            // Per output row: C_out x (kernel * C_in) multiply-adds.
            Op::Conv1d { x, kernel, out, .. } => 2 * rows(*out) * cols(*out) * *kernel as u64 * cols(*x),
            // Kernel 2 * stride with stride `stride`: every output row reads two input rows.
            Op::ConvTranspose1d { x, out, .. } => 2 * rows(*out) * cols(*out) * 2 * cols(*x),
            Op::LayerNorm { .. }
            | Op::GatedResidual { .. }
            | Op::Silu { .. }
            | Op::SwiGlu { .. }
            | Op::TimestepFeatures { .. }
            | Op::AddPositional { .. }
            | Op::PrependRow { .. }
            | Op::PrependRowPositional { .. }
            | Op::DropFirstRow { .. }
            | Op::CfgExpand { .. }
            | Op::CfgDenoise { .. }
            | Op::Dpmpp3mUpdate { .. }
            | Op::SelectStepRow { .. }
            | Op::SnakeBeta { .. }
            | Op::Patchify { .. }
            | Op::PrependWeightRow { .. }
            | Op::QuickGelu { .. }
            | Op::FirstRows { .. } => 0,
        }
    }

    /// Checks the shapes of every op (`Op::check`); `weight_len(id)` is the
    /// element count of weight `id`, None when no such weight was uploaded.
    pub fn check(&self, weight_len: &dyn Fn(WeightId) -> Option<usize>) -> Result<()> {
        for t in self.ops.iter().flat_map(|op| op.reads().into_iter().chain(op.writes())) {
            if t.0 >= self.tensors.len() {
                return Err(Error::InvalidInput(format!("graph bug: tensor {} is not in the graph", t.0)));
            }
        }
        self.ops.iter().try_for_each(|op| op.check(self, weight_len))
    }
}

/// Shape-rule helpers of one op: each failure names the op and its output.
struct Rules<'a> {
    g: &'a Graph,
    op: &'static str,
    out: &'a str,
    weight_len: &'a dyn Fn(WeightId) -> Option<usize>,
}

impl Rules<'_> {
    fn fail(&self, why: impl std::fmt::Display) -> Error {
        Error::InvalidInput(format!("graph bug: {} `{}`: {why}", self.op, self.out))
    }
    fn ensure(&self, ok: bool, why: impl FnOnce() -> String) -> Result<()> {
        if ok { Ok(()) } else { Err(self.fail(why())) }
    }
    fn shape(&self, t: TensorId) -> (usize, usize) {
        let d = self.g.desc(t);
        (d.rows, d.cols)
    }
    fn same_shape(&self, a: TensorId, b: TensorId) -> Result<()> {
        let (da, db) = (self.g.desc(a), self.g.desc(b));
        self.ensure(self.shape(a) == self.shape(b), || {
            format!("`{}` is [{}, {}] and `{}` is [{}, {}]", da.name, da.rows, da.cols, db.name, db.rows, db.cols)
        })
    }
    fn seg(&self, s: SegmentsId) -> Result<&Segments> {
        self.g.segments.get(s.0).ok_or_else(|| self.fail(format!("sequence layout {} is not in the graph", s.0)))
    }
    /// The rows of `t` are the rows of `seg`.
    fn rows_of(&self, t: TensorId, seg: &Segments) -> Result<()> {
        let d = self.g.desc(t);
        self.ensure(d.rows == seg.total(), || {
            format!("`{}` has {} rows, its sequences {}", d.name, d.rows, seg.total())
        })
    }
    fn weight(&self, id: WeightId) -> Result<usize> {
        (self.weight_len)(id).ok_or_else(|| self.fail(format!("weight {} was not uploaded", id.0)))
    }
    /// Weight `id` has at least `len` values (a vector the op reads the first `len` of).
    fn weight_at_least(&self, id: WeightId, len: usize, what: &str) -> Result<()> {
        let n = self.weight(id)?;
        self.ensure(n >= len, || format!("{what} has {n} values, the op needs {len}"))
    }
    /// Weight `id` has exactly `len` values.
    fn weight_exactly(&self, id: WeightId, len: usize, what: &str) -> Result<()> {
        let n = self.weight(id)?;
        self.ensure(n == len, || format!("{what} has {n} values, the op needs {len}"))
    }
    /// Each sequence of `out` is `by` rows longer (negative: shorter) than in `inp`.
    fn one_row_apart(&self, inp: &Segments, out: &Segments, longer: bool) -> Result<()> {
        let ok = inp.count() == out.count()
            && inp.lengths().zip(out.lengths()).all(|(i, o)| if longer { o == i + 1 } else { i == o + 1 });
        self.ensure(ok, || format!("output sequences must be one row {}", if longer { "longer" } else { "shorter" }))
    }
    /// `out` is `first`'s rows prepended to the sequences of `rest`.
    fn prepended(
        &self,
        first: TensorId,
        rest: TensorId,
        rest_seg: SegmentsId,
        out_seg: SegmentsId,
        out: TensorId,
    ) -> Result<()> {
        let (rs, os) = (self.seg(rest_seg)?, self.seg(out_seg)?);
        self.one_row_apart(rs, os, true)?;
        self.rows_of(rest, rs)?;
        self.rows_of(out, os)?;
        let (first, rest, out) = (self.g.desc(first), self.g.desc(rest), self.g.desc(out));
        self.ensure(first.rows == rs.count(), || "one first row per sequence".into())?;
        self.ensure(first.cols == out.cols && rest.cols == out.cols, || "widths differ".into())
    }
    /// The position table `table` has a row of `cols` values for every position of `seg`.
    fn position_table(&self, table: WeightId, seg: &Segments, cols: usize) -> Result<()> {
        // Every read is table[p * cols + c] with p < max_len: in bounds
        // exactly when max_len * cols <= len.
        let max_len = seg.lengths().max().unwrap_or(0);
        if max_len * cols > self.weight(table)? {
            return Err(Error::Limit(format!(
                "a sequence of {max_len} positions exceeds the position table of `{}`",
                self.out
            )));
        }
        Ok(())
    }
    /// One row of `scalar_slot::COUNT` step scalars per request of `seg`.
    fn step_scalars(&self, scalars: TensorId, seg: &Segments) -> Result<()> {
        let n = self.g.desc(scalars).len();
        self.ensure(n == seg.count() * scalar_slot::COUNT, || {
            format!("{n} step scalars for {} requests of {} each", seg.count(), scalar_slot::COUNT)
        })
    }
}

impl Op {
    /// The op's shape rules against `g` (every backend relies on them; see the
    /// module comment). `weight_len` as for `Graph::check`.
    pub fn check(&self, g: &Graph, weight_len: &dyn Fn(WeightId) -> Option<usize>) -> Result<()> {
        let out = self.writes()[0];
        let r = Rules { g, op: self.name(), out: &g.desc(out).name, weight_len };
        let (rows, cols, len) = (|t| g.desc(t).rows, |t| g.desc(t).cols, |t| g.desc(t).len());
        match self {
            Op::Linear { x, w, bias, residual, out } => {
                let (m, k, n) = (rows(*x), cols(*x), cols(*out));
                r.ensure(rows(*out) == m, || format!("{m} input rows, {} output rows", rows(*out)))?;
                r.weight_exactly(*w, n * k, &format!("the weight mapping {k} features to {n}"))?;
                if let Some(b) = bias {
                    r.weight_at_least(*b, n, "the bias")?;
                }
                if let Some(res) = residual {
                    r.same_shape(*res, *out)?;
                }
            }
            Op::LayerNorm { x, gamma, beta, modulation, out, .. } => {
                let c = cols(*x);
                r.same_shape(*x, *out)?;
                r.weight_at_least(*gamma, c, "gamma")?;
                r.weight_at_least(*beta, c, "beta")?;
                if let Some(m) = modulation {
                    let seg = r.seg(m.segments)?;
                    r.rows_of(*x, seg)?;
                    r.ensure(
                        m.scale_offset.max(m.shift_offset) + c <= cols(m.table) && seg.count() <= rows(m.table),
                        || format!("adaLN table `{}` is too small", g.desc(m.table).name),
                    )?;
                }
            }
            Op::GatedResidual { branch, residual, table, gate_offset, segments, out } => {
                let seg = r.seg(*segments)?;
                r.same_shape(*branch, *out)?;
                r.same_shape(*residual, *out)?;
                r.rows_of(*out, seg)?;
                // One table row per sequence: row b gates the rows of sequence b.
                r.ensure(gate_offset + cols(*out) <= cols(*table) && seg.count() <= rows(*table), || {
                    format!("gate table `{}` is too small for {} sequences", g.desc(*table).name, seg.count())
                })?;
            }
            Op::Silu { x, out } | Op::QuickGelu { x, out } => r.same_shape(*x, *out)?,
            Op::SwiGlu { x, out } => {
                r.ensure(cols(*x) == 2 * cols(*out) && rows(*x) == rows(*out), || "input must be [M, 2F]".into())?
            }
            Op::TimestepFeatures { t, w, out } => {
                let n = r.weight(*w)?;
                r.ensure(cols(*out) == 2 * n && rows(*out) == len(*t), || {
                    format!(
                        "{} timesteps and {n} frequencies make [{}, {}], not the output's shape",
                        len(*t),
                        len(*t),
                        2 * n
                    )
                })?;
            }
            Op::AddPositional { x, table, segments, out, .. } => {
                let seg = r.seg(*segments)?;
                r.same_shape(*x, *out)?;
                r.rows_of(*x, seg)?;
                r.position_table(*table, seg, cols(*x))?;
            }
            Op::PrependRow { first, rest, rest_segments, out_segments, out } => {
                r.prepended(*first, *rest, *rest_segments, *out_segments, *out)?;
            }
            Op::PrependRowPositional { first, rest, table, rest_segments, out_segments, out, .. } => {
                r.prepended(*first, *rest, *rest_segments, *out_segments, *out)?;
                r.position_table(*table, r.seg(*out_segments)?, cols(*out))?;
            }
            Op::DropFirstRow { x, x_segments, out_segments, out } => {
                let (xs, os) = (r.seg(*x_segments)?, r.seg(*out_segments)?);
                r.one_row_apart(xs, os, false)?;
                r.rows_of(*x, xs)?;
                r.rows_of(*out, os)?;
                r.ensure(cols(*x) == cols(*out), || "widths differ".into())?;
            }
            Op::Attention { q, k, v, q_segments, kv_segments, heads, kv_heads, head_dim, rope, out, .. } => {
                let (qs, ks) = (r.seg(*q_segments)?, r.seg(*kv_segments)?);
                let (hd, heads, kv_heads) = (*head_dim, *heads, *kv_heads);
                r.ensure(hd > 0, || "head_dim 0".into())?;
                r.ensure(kv_heads > 0 && heads.is_multiple_of(kv_heads) && qs.count() == ks.count(), || {
                    format!("{heads} query heads cannot share {kv_heads} kv heads, or query and key batches differ")
                })?;
                let slice_ok = |s: &ColumnSlice, h: usize, rows_needed: usize| {
                    s.offset + h * hd <= cols(s.tensor) && rows(s.tensor) >= rows_needed
                };
                r.ensure(
                    slice_ok(q, heads, qs.total())
                        && slice_ok(k, kv_heads, ks.total())
                        && slice_ok(v, kv_heads, ks.total()),
                    || "a head slice exceeds its tensor, or a tensor has fewer rows than its segments".into(),
                )?;
                r.ensure(cols(*out) == heads * hd && rows(*out) >= qs.total(), || {
                    format!("the output must be [{}, {}]", qs.total(), heads * hd)
                })?;
                if let Some(rope) = rope {
                    r.ensure(rope.rotary_dim % 2 == 0 && rope.rotary_dim <= hd, || {
                        format!("rotary_dim {} must be even and at most {hd}", rope.rotary_dim)
                    })?;
                    r.weight_at_least(rope.inv_freq, rope.rotary_dim / 2, "RoPE inv_freq")?;
                }
            }
            Op::CfgExpand { x, scalars, x_segments, out } => {
                let seg = r.seg(*x_segments)?;
                r.ensure(len(*out) == 2 * len(*x) && seg.total() * cols(*x) == len(*x), || {
                    "the output must hold x twice".into()
                })?;
                r.step_scalars(*scalars, seg)?;
            }
            Op::CfgDenoise { v, x, scalars, x_segments, cfg_scales, out } => {
                let seg = r.seg(*x_segments)?;
                r.ensure(
                    len(*v) == 2 * len(*x)
                        && len(*out) == len(*x)
                        && cfg_scales.len() == seg.count()
                        && seg.total() * cols(*x) == len(*x),
                    || "v must hold cond and uncond rows of x, one CFG scale per request".into(),
                )?;
                r.step_scalars(*scalars, seg)?;
            }
            Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, x_segments } => {
                let seg = r.seg(*x_segments)?;
                let n = len(*x);
                r.ensure(
                    seg.total() * cols(*x) == n && [*denoised, *d1, *d2, *noise].iter().all(|&t| len(t) == n),
                    || "x, denoised, d1, d2 and noise must have the rows of the requests".into(),
                )?;
                r.step_scalars(*scalars, seg)?;
            }
            Op::SelectStepRow { table, scalars, out } => {
                r.ensure(
                    cols(*table) == cols(*out)
                        && rows(*table) > 0
                        && cols(*scalars) == scalar_slot::COUNT
                        && rows(*scalars) > 0,
                    || {
                        format!(
                            "`{}` must be a non-empty table as wide as the output, with step scalars",
                            g.desc(*table).name
                        )
                    },
                )?;
            }
            Op::Conv1d { x, input_snake, w, bias, kernel, dilation, padding, residual, segments, out } => {
                let seg = r.seg(*segments)?;
                let (cin, cout) = (cols(*x), cols(*out));
                r.rows_of(*x, seg)?;
                r.rows_of(*out, seg)?;
                r.ensure(*kernel > 0 && 2 * padding == dilation * (kernel - 1), || {
                    format!("kernel {kernel}, dilation {dilation}, padding {padding} do not keep the length")
                })?;
                if let Some(res) = residual {
                    r.same_shape(*res, *out)?;
                }
                r.weight_exactly(*w, cout * kernel * cin, "the weight")?;
                if let Some(b) = bias {
                    r.weight_at_least(*b, cout, "the bias")?;
                }
                if let Some(s) = input_snake {
                    r.weight_exactly(s.alpha, cin, "SnakeBeta alpha")?;
                    r.weight_exactly(s.beta, cin, "SnakeBeta beta")?;
                }
            }
            Op::ConvTranspose1d { x, input_snake, w, bias, stride, in_segments, out_segments, out } => {
                let (si, so) = (r.seg(*in_segments)?, r.seg(*out_segments)?);
                let (cin, cout) = (cols(*x), cols(*out));
                r.ensure(
                    si.count() == so.count()
                        && si.lengths().zip(so.lengths()).all(|(i, o)| o == i * stride)
                        && rows(*x) == si.total()
                        && rows(*out) == so.total(),
                    || format!("output sequences must be {stride} times the input's"),
                )?;
                r.weight_exactly(*w, stride * cout * 2 * cin, "the weight")?;
                if let Some(b) = bias {
                    r.weight_at_least(*b, cout, "the bias")?;
                }
                if let Some(s) = input_snake {
                    r.weight_exactly(s.alpha, cin, "SnakeBeta alpha")?;
                    r.weight_exactly(s.beta, cin, "SnakeBeta beta")?;
                }
            }
            Op::SnakeBeta { x, alpha, beta, out } => {
                r.same_shape(*x, *out)?;
                r.weight_exactly(*alpha, cols(*x), "alpha")?;
                r.weight_exactly(*beta, cols(*x), "beta")?;
            }
            Op::Patchify { images, channels, size, patch, out } => {
                let (id, od) = (g.desc(*images), g.desc(*out));
                let grid = if *patch == 0 { 0 } else { size / patch };
                r.ensure(
                    *patch > 0
                        && id.cols == channels * size * size
                        && od.rows == id.rows * grid * grid
                        && od.cols == channels * patch * patch,
                    || {
                        format!(
                            "`{}` [{}, {}] ({channels} x {size} x {size}, patch {patch}) into [{}, {}]",
                            id.name, id.rows, id.cols, od.rows, od.cols
                        )
                    },
                )?;
            }
            Op::PrependWeightRow { row, rest, rest_segments, out_segments, out } => {
                let (rs, os) = (r.seg(*rest_segments)?, r.seg(*out_segments)?);
                r.one_row_apart(rs, os, true)?;
                r.rows_of(*rest, rs)?;
                r.rows_of(*out, os)?;
                r.ensure(cols(*rest) == cols(*out), || "widths differ".into())?;
                r.weight_exactly(*row, cols(*out), "the prepended row")?;
            }
            Op::FirstRows { x, segments, out } => {
                let seg = r.seg(*segments)?;
                r.rows_of(*x, seg)?;
                r.ensure(rows(*out) == seg.count() && seg.lengths().all(|l| l > 0) && cols(*x) == cols(*out), || {
                    "one output row per non-empty sequence".into()
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Segments;

    /// Two sequences of 3 and 5 tokens, width 8 (2 heads of 4), attending to
    /// contexts of 2 and 4 tokens; a linear layer, an attention, a conv, a
    /// transposed conv and two elementwise ops. Every count is done by hand.
    #[test]
    fn flops_count_gemms_by_hand() {
        let mut g = Graph::new();
        let tokens = g.add_segments(Segments::from_lengths([3, 5]));
        let context = g.add_segments(Segments::from_lengths([2, 4]));
        let x = g.input("x", 8, 8);
        let ctx = g.input("context", 6, 8);
        let qkv = g.temp("qkv", 8, 24);
        // 2 * 8 rows * 8 in * 24 out = 3072.
        g.push(Op::Linear { x, w: WeightId(0), bias: Some(WeightId(1)), residual: Some(x), out: qkv });
        let act = g.temp("act", 8, 24);
        g.push(Op::Silu { x: qkv, out: act });
        let attn = g.temp("attn", 8, 8);
        // 4 * (3*2 + 5*4) query-key pairs * 2 heads * 4 dims = 4 * 26 * 8 = 832.
        g.push(Op::Attention {
            q: ColumnSlice { tensor: act, offset: 0, width: 8 },
            k: ColumnSlice { tensor: ctx, offset: 0, width: 8 },
            v: ColumnSlice { tensor: ctx, offset: 0, width: 8 },
            q_segments: tokens,
            kv_segments: context,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            scale: 0.5,
            rope: None,
            out: attn,
        });
        let conv = g.temp("conv", 8, 3);
        // 2 * 8 rows * 3 out * (7 taps * 8 in) = 2688.
        g.push(Op::Conv1d {
            x: attn,
            w: WeightId(2),
            bias: None,
            kernel: 7,
            dilation: 3,
            padding: 9,
            residual: None,
            input_snake: None,
            segments: tokens,
            out: conv,
        });
        let up_seg = g.add_segments(Segments::from_lengths([6, 10]));
        let up = g.temp("up", 16, 5);
        // 2 * 16 rows * 5 out * (2 taps * 3 in) = 960.
        g.push(Op::ConvTranspose1d {
            x: conv,
            w: WeightId(3),
            bias: None,
            stride: 2,
            input_snake: None,
            in_segments: tokens,
            out_segments: up_seg,
            out: up,
        });
        let snake = g.temp("snake", 16, 5);
        g.push(Op::SnakeBeta { x: up, alpha: WeightId(4), beta: WeightId(5), out: snake });

        let per_op: Vec<u64> = g.ops.iter().map(|op| g.op_flops(op)).collect();
        assert_eq!(per_op, vec![3072, 0, 832, 2688, 960, 0]);
        assert_eq!(g.flops(), 3072 + 832 + 2688 + 960);
    }
}
