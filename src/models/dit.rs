//! The LoVA DiT denoiser (lova-model.md section 4) as graph construction.
//!
//! Layout: tokens are rows. The audio latents enter token-major (`[T', 64]` per
//! sequence; the doc's `[64, T']` transposed) so that the 1x1 convs, the
//! projections and the blocks are all row-wise linear layers. A batch is a list
//! of sequences, each with its own latent length T' and video length N, packed
//! without padding; attention keeps the sequences apart.

use crate::backend::{Backend, WeightSet};
use crate::config::{DitConfig, GlobalCondType, HEAD_DIM, ROTARY_DIM};
use crate::error::{Error, Result};
use crate::graph::{AdaLnModulation, ColumnSlice, Executor, Graph, Rope, Segments, SegmentsId, TensorId, WeightId};
use crate::models::declare::{self, Linear, Norm, Scope};
use crate::models::layers::{
    Heads, add_positional, attention, drop_first_row, gated_residual, layer_norm, linear, prepend_row_positional,
    self_attention, silu, swiglu, timestep_features,
};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// Key prefix of the DiT inside the original LoVA checkpoint.
pub const DIT_PREFIX: &str = "model.model.";
/// Fourier features of the timestep (stable-audio-tools' `timestep_features_dim`).
const TIMESTEP_FEATURES: usize = 256;
const LN_EPS: f32 = 1e-5;

struct BlockIds {
    pre_norm: Norm,
    to_qkv: Linear,
    self_out: Linear,
    cross_norm: Norm,
    to_q: Linear,
    to_kv: Linear,
    cross_out: Linear,
    ff_norm: Norm,
    ff_in: Linear,
    ff_out: Linear,
    /// `to_scale_shift_gate.1`, adaLN configs only.
    modulation: Option<Linear>,
}

struct DitIds {
    timestep_features: WeightId,
    timestep_embed: [Linear; 2],
    cond_embed: [Linear; 2],
    preprocess_conv: Linear,
    postprocess_conv: Linear,
    project_in: Linear,
    project_out: Linear,
    inv_freq: WeightId,
    pos_emb: WeightId,
    pos_emb_cond: WeightId,
    blocks: Vec<BlockIds>,
}

/// The lengths of one sequence of a DiT batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DitSequence {
    /// Audio latent frames T'.
    pub latent_len: usize,
    /// Video tokens N.
    pub context_len: usize,
}

/// Sequence layouts of a packed DiT batch, registered in a graph.
#[derive(Debug, Clone)]
pub struct DitBatch {
    /// The sequences, in packing order (row order of every batch tensor).
    pub sequences: Vec<DitSequence>,
}

impl DitBatch {
    /// Total latent rows of the batch: the sum of T'.
    pub fn latent_rows(&self) -> usize {
        self.sequences.iter().map(|s| s.latent_len).sum()
    }
    /// Total video-token rows of the batch: the sum of N.
    pub fn context_rows(&self) -> usize {
        self.sequences.iter().map(|s| s.context_len).sum()
    }
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }
    /// Whether the batch has no sequences.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }
}

/// The DiT denoiser: its config and its weights uploaded to backend `B`; builds graphs that run it.
pub struct Dit<B: Backend> {
    /// The architecture the weights were loaded for.
    pub config: DitConfig,
    weights: WeightSet<B>,
    ids: DitIds,
}

/// Declares every DiT weight (keys under the DiT prefix, lova-model.md section 4),
/// in the order of the engine file.
fn declare(c: &DitConfig, d: &mut Scope) -> Result<DitIds> {
    let (e, cd, io) = (c.embed_dim, c.cond_token_dim, c.io_channels);
    fn ln(d: &mut Scope, name: &str, e: usize) -> Result<Norm> {
        d.pp(name).layer_norm(e, ["gamma", "beta"], LN_EPS)
    }
    let mut blocks = Vec::with_capacity(c.depth);
    for i in 0..c.depth {
        let mut d = d.pp(format!("transformer.layers.{i}"));
        blocks.push(BlockIds {
            pre_norm: ln(&mut d, "pre_norm", e)?,
            to_qkv: d.pp("self_attn.to_qkv").linear(3 * e, e, false)?,
            self_out: d.pp("self_attn.to_out").linear(e, e, false)?,
            cross_norm: ln(&mut d, "cross_attend_norm", e)?,
            to_q: d.pp("cross_attn.to_q").linear(e, e, false)?,
            to_kv: d.pp("cross_attn.to_kv").linear(2 * cd, cd, false)?,
            cross_out: d.pp("cross_attn.to_out").linear(e, e, false)?,
            ff_norm: ln(&mut d, "ff_norm", e)?,
            ff_in: d.pp("ff.ff.0.proj").linear(2 * c.ff_inner(), e, true)?,
            ff_out: d.pp("ff.ff.2").linear(e, c.ff_inner(), true)?,
            modulation: match c.global_cond_type {
                GlobalCondType::AdaLn => Some(d.pp("to_scale_shift_gate.1").linear(6 * e, e, false)?),
                GlobalCondType::Prepend => None,
            },
        });
    }
    // A 1x1 Conv1d `[out, in, 1]` holds the same data as a linear layer `[out, in]`.
    fn conv1x1(d: &mut Scope, key: &str, io: usize) -> Result<Linear> {
        Ok(Linear { weight: d.declare(key, &[io, io, 1])?, bias: None, out_features: io })
    }
    Ok(DitIds {
        timestep_features: d.declare("timestep_features.weight", &[TIMESTEP_FEATURES / 2, 1])?,
        timestep_embed: [
            d.pp("to_timestep_embed.0").linear(e, TIMESTEP_FEATURES, true)?,
            d.pp("to_timestep_embed.2").linear(e, e, true)?,
        ],
        cond_embed: [d.pp("to_cond_embed.0").linear(cd, cd, false)?, d.pp("to_cond_embed.2").linear(cd, cd, false)?],
        preprocess_conv: conv1x1(d, "preprocess_conv.weight", io)?,
        postprocess_conv: conv1x1(d, "postprocess_conv.weight", io)?,
        project_in: d.pp("transformer.project_in").linear(e, io, false)?,
        project_out: d.pp("transformer.project_out").linear(io, e, false)?,
        inv_freq: d.declare("transformer.rotary_pos_emb.inv_freq", &[ROTARY_DIM / 2])?,
        pos_emb: d.declare("transformer.pos_emb.emb.weight", &[c.max_positions, e])?,
        pos_emb_cond: d.declare("transformer.pos_emb_cond.emb.weight", &[c.max_positions, cd])?,
        blocks,
    })
}

/// Every DiT tensor the engine needs: key (relative to the DiT prefix) and shape.
pub fn tensor_list(config: &DitConfig) -> Vec<(String, Vec<usize>)> {
    declared(config).into_iter().map(|d| (d.key, d.shape)).collect()
}

/// Every DiT tensor as declared (key, shape and layout), in `WeightId` order.
pub fn declared(config: &DitConfig) -> Vec<declare::Declared> {
    // Listing declares into a Vec: it cannot fail.
    declare::list(|d| declare(config, d)).expect("listing never fails").0
}

impl<B: Backend> Dit<B> {
    /// Loads the DiT from `source`, keys `{prefix}{key}` (`model.model.` in a LoVA
    /// checkpoint, `dit.` in an engine file); tensors it does not use are ignored.
    pub fn load(backend: &B, source: &dyn TensorSource, config: &DitConfig, prefix: &str) -> Result<Self> {
        let (weights, ids) = declare::upload(backend, source, prefix, |d| declare(config, d))?;
        Ok(Dit { config: config.clone(), weights, ids })
    }

    /// The uploaded weights, indexed by the `WeightId`s of the graphs this DiT builds.
    pub fn weights(&self) -> &[B::Weight] {
        self.weights.as_slice()
    }

    /// Checks every sequence against the position tables.
    pub fn check_batch(&self, batch: &DitBatch) -> Result<()> {
        let max = self.config.max_positions;
        for (b, s) in batch.sequences.iter().enumerate() {
            let positions = self.config.transformer_len(s.latent_len);
            if s.latent_len == 0 || s.context_len == 0 {
                return Err(Error::InvalidInput(format!(
                    "sequence {b} is empty (T' = {}, N = {})",
                    s.latent_len, s.context_len
                )));
            }
            if positions > max || s.context_len > max {
                return Err(Error::Limit(format!(
                    "sequence {b} needs {positions} audio positions and {} video positions; \
                     the position tables hold {max}",
                    s.context_len
                )));
            }
        }
        Ok(())
    }

    /// Adds the DiT forward to `g`: the conditioning (`build_timestep`,
    /// `build_cross_kv`) and the denoiser pass (`build_denoiser`) in one go.
    ///
    /// Inputs: `x` `[sum T', io_channels]` (already scaled by c_in), `t` `[B, 1]`,
    /// `features` `[sum N, cond_token_dim]` (zero rows for unconditional sequences).
    /// Returns the v-prediction `[sum T', io_channels]`.
    pub fn build(&self, g: &mut Graph, batch: &DitBatch, x: TensorId, t: TensorId, features: TensorId) -> TensorId {
        let timestep = self.build_timestep(g, t);
        let cross_kv = self.build_cross_kv(g, batch, features);
        let conditioning = DitConditioning { timestep: timestep.embed, modulation: timestep.modulation, cross_kv };
        self.build_denoiser(g, batch, x, &conditioning)
    }

    /// Everything that depends only on the timestep, one row per row of `t`
    /// (`[R, 1]`): for a sampler, the rows of a whole schedule, computed once.
    pub fn build_timestep(&self, g: &mut Graph, t: TensorId) -> TimestepTables {
        let c = &self.config;
        let ids = &self.ids;
        // Fourier features -> Linear -> SiLU -> Linear.
        let feat = timestep_features(g, "timestep_features", t, ids.timestep_features, TIMESTEP_FEATURES);
        let te_hidden = linear(g, "timestep_hidden", feat, &ids.timestep_embed[0], None);
        let te_hidden = silu(g, te_hidden);
        let embed = linear(g, "timestep_embed", te_hidden, &ids.timestep_embed[1], None);
        // adaLN: each block's scale/shift/gate table is a linear map of SiLU(te).
        let modulation = match c.global_cond_type {
            GlobalCondType::AdaLn => {
                let te_act = silu(g, embed);
                ids.blocks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, block)| {
                        block.modulation.map(|w| linear(g, format!("l{i}.modulation"), te_act, &w, None))
                    })
                    .collect()
            }
            GlobalCondType::Prepend => Vec::new(),
        };
        TimestepTables { embed, modulation }
    }

    /// Each block's cross-attention keys and values `[sum N, 2 * cond_token_dim]`
    /// of the video tokens: `to_kv(to_cond_embed(features) + PE_c)`. They depend
    /// only on the request, not on the step. (Unconditional sequences arrive as
    /// zero features; the MLP has no biases, so their tokens are exactly the PE_c
    /// rows: their K/V depend only on N.)
    pub fn build_cross_kv(&self, g: &mut Graph, batch: &DitBatch, features: TensorId) -> Vec<TensorId> {
        let c = &self.config;
        let ids = &self.ids;
        let cd = c.cond_token_dim;
        let context_seg = g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| s.context_len)));
        // Video tokens: MLP without biases, then PE_c.
        let ch = linear(g, "cond_hidden", features, &ids.cond_embed[0], None);
        let ch = silu(g, ch);
        let ctx = linear(g, "cond_tokens", ch, &ids.cond_embed[1], None);
        let context = add_positional(g, "context", ctx, ids.pos_emb_cond, (cd as f32).powf(-0.5), context_seg);
        (0..ids.blocks.len())
            .map(|i| {
                let kv = linear(g, format!("l{i}.cross_kv"), context, &ids.blocks[i].to_kv, None);
                g.as_activation(kv)
            })
            .collect()
    }

    /// One denoiser pass over the audio tokens `x` `[sum T', io_channels]`
    /// (already scaled by c_in) given the batch's conditioning, whose rows
    /// (timestep, modulation) are one per sequence. Returns v `[sum T', io_channels]`.
    pub fn build_denoiser(&self, g: &mut Graph, batch: &DitBatch, x: TensorId, cond: &DitConditioning) -> TensorId {
        let c = &self.config;
        let ids = &self.ids;
        let e = c.embed_dim;
        let latent_seg = g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| s.latent_len)));
        let token_seg =
            g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| c.transformer_len(s.latent_len))));
        let context_seg = g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| s.context_len)));
        // A graph-construction bug, not a user error.
        let adaln = c.global_cond_type == GlobalCondType::AdaLn;
        assert!(
            cond.cross_kv.len() == ids.blocks.len()
                && cond.modulation.len() == if adaln { ids.blocks.len() } else { 0 },
            "DiT conditioning for {} blocks has {} K/V and {} modulation tables",
            ids.blocks.len(),
            cond.cross_kv.len(),
            cond.modulation.len()
        );

        // Audio tokens: x + preprocess_conv(x), project_in, (prepend te), PE_z.
        let xp = linear(g, "preprocessed", x, &ids.preprocess_conv, Some(x));
        let audio = linear(g, "project_in", xp, &ids.project_in, None);
        let (pe, pe_scale) = (ids.pos_emb, (e as f32).powf(-0.5));
        let mut h = match c.global_cond_type {
            // One pass for both: the prepended rows are never stored.
            GlobalCondType::Prepend => {
                prepend_row_positional(g, "tokens_pe", cond.timestep, audio, (pe, pe_scale), latent_seg, token_seg)
            }
            GlobalCondType::AdaLn => add_positional(g, "tokens_pe", audio, pe, pe_scale, token_seg),
        };

        let seqs = Segs { tokens: token_seg, context: context_seg };
        for (i, block) in ids.blocks.iter().enumerate() {
            let layer = LayerConditioning { modulation: cond.modulation.get(i).copied(), cross_kv: cond.cross_kv[i] };
            h = self.block(g, i, block, h, layer, &seqs);
        }

        let out_tokens = linear(g, "project_out", h, &ids.project_out, None);
        let out_latent = match c.global_cond_type {
            GlobalCondType::Prepend => drop_first_row(g, "project_out_audio", out_tokens, token_seg, latent_seg),
            GlobalCondType::AdaLn => out_tokens,
        };
        linear(g, "v", out_latent, &ids.postprocess_conv, Some(out_latent))
    }

    fn block(
        &self,
        g: &mut Graph,
        i: usize,
        ids: &BlockIds,
        h: TensorId,
        layer: LayerConditioning,
        seqs: &Segs,
    ) -> TensorId {
        let c = &self.config;
        let (e, cd) = (c.embed_dim, c.cond_token_dim);
        let scale = (HEAD_DIM as f32).powf(-0.5);
        let heads = |kv_heads, rope| Heads { heads: c.num_heads, kv_heads, head_dim: HEAD_DIM, scale, rope };
        // adaLN: one [B, 6E] table per block: scale/shift/gate for self-attn, then for FF.
        let table = layer.modulation.filter(|_| ids.modulation.is_some());
        let modulation = |k: usize| {
            table.map(|table| AdaLnModulation {
                table,
                scale_offset: k * e,
                shift_offset: (k + 1) * e,
                segments: seqs.tokens,
            })
        };
        // `h + w(branch_in)`, or with adaLN `h + w(branch_in) * sigmoid(1 - gate)`.
        let residual =
            |g: &mut Graph, name: String, branch_in: TensorId, w: &Linear, gate: usize, h: TensorId| match table {
                None => linear(g, name, branch_in, w, Some(h)),
                Some(table) => {
                    let branch = linear(g, format!("{name}.branch"), branch_in, w, None);
                    let branch = g.as_activation(branch);
                    gated_residual(g, name, branch, h, table, gate * e, seqs.tokens)
                }
            };

        // Every tensor of a block but the residual stream `h` is a block
        // activation (`Graph::activations`: fp16 on CUDA, f32 on the CPU).
        // Self-attention with RoPE over each sequence's own tokens.
        let n = layer_norm(g, format!("l{i}.pre_norm"), h, &ids.pre_norm, modulation(0));
        let n = g.as_activation(n);
        let qkv = linear(g, format!("l{i}.qkv"), n, &ids.to_qkv, None);
        let qkv = g.as_activation(qkv);
        let rope = Rope { inv_freq: self.ids.inv_freq, rotary_dim: ROTARY_DIM };
        let attn = self_attention(g, format!("l{i}.self_attn"), qkv, seqs.tokens, &heads(c.num_heads, Some(rope)));
        let attn = g.as_activation(attn);
        let h = residual(g, format!("l{i}.after_self_attn"), attn, &ids.self_out, 2, h);

        // Cross-attention to the video tokens (grouped-query, no RoPE, never modulated).
        let n = layer_norm(g, format!("l{i}.cross_norm"), h, &ids.cross_norm, None);
        let n = g.as_activation(n);
        let q = linear(g, format!("l{i}.cross_q"), n, &ids.to_q, None);
        let q = g.as_activation(q);
        let kv = layer.cross_kv;
        let qkv = [
            ColumnSlice { tensor: q, offset: 0, width: e },
            ColumnSlice { tensor: kv, offset: 0, width: cd },
            ColumnSlice { tensor: kv, offset: cd, width: cd },
        ];
        let attn = attention(g, format!("l{i}.cross_attn"), qkv, seqs.tokens, seqs.context, &heads(c.kv_heads(), None));
        let attn = g.as_activation(attn);
        let h = linear(g, format!("l{i}.after_cross_attn"), attn, &ids.cross_out, Some(h));

        // SwiGLU feed-forward.
        let n = layer_norm(g, format!("l{i}.ff_norm"), h, &ids.ff_norm, modulation(3));
        let n = g.as_activation(n);
        let up = linear(g, format!("l{i}.ff_up"), n, &ids.ff_in, None);
        let up = g.as_activation(up);
        let ff = swiglu(g, format!("l{i}.ff_act"), up);
        let ff = g.as_activation(ff);
        match table {
            None => linear(g, format!("l{i}.after_ff"), ff, &ids.ff_out, Some(h)),
            Some(table) => {
                let branch = linear(g, format!("l{i}.ff_branch"), ff, &ids.ff_out, None);
                let branch = g.as_activation(branch);
                gated_residual(g, format!("l{i}.after_ff"), branch, h, table, 5 * e, seqs.tokens)
            }
        }
    }

    /// Runs the DiT once on a batch: convenient for tests and one-off calls
    /// (plans a graph and an arena per call). `x` is `[io_channels, T']` as in the
    /// doc, `features` `[N, cond_token_dim]`. Returns v `[io_channels, T']` per sequence.
    pub fn forward(&self, backend: &B, inputs: &[(HostTensor, f32, HostTensor)]) -> Result<Vec<HostTensor>> {
        let (io, cd) = (self.config.io_channels, self.config.cond_token_dim);
        for (b, (x, t, f)) in inputs.iter().enumerate() {
            if x.shape.len() != 2 || x.shape[0] != io || f.shape.len() != 2 || f.shape[1] != cd || !t.is_finite() {
                return Err(Error::InvalidInput(format!(
                    "sequence {b}: x {:?}, t {t}, features {:?}; expected x [{io}, T'], finite t, features [N, {cd}]",
                    x.shape, f.shape
                )));
            }
        }
        let batch = DitBatch {
            sequences: inputs
                .iter()
                .map(|(x, _, f)| DitSequence { latent_len: x.shape[1], context_len: f.shape[0] })
                .collect(),
        };
        self.check_batch(&batch)?;
        let mut g = Graph::with_activations(backend.activation_dtype());
        let x = g.input("x", batch.latent_rows(), io);
        let t = g.input("t", batch.len(), 1);
        let f = g.input("features", batch.context_rows(), cd);
        let v = self.build(&mut g, &batch, x, t, f);
        g.mark_output(v);
        let mut exec = Executor::new(backend, self.weights(), g)?;
        let xs: Vec<f32> = inputs.iter().flat_map(|(x, _, _)| x.transposed().data).collect();
        let ts: Vec<f32> = inputs.iter().map(|(_, t, _)| *t).collect();
        let fs: Vec<f32> = inputs.iter().flat_map(|(_, _, f)| f.data.iter().copied()).collect();
        exec.write(x, &xs)?;
        exec.write(t, &ts)?;
        exec.write(f, &fs)?;
        exec.run()?;
        let out = exec.read(v)?;
        let seg = Segments::from_lengths(batch.sequences.iter().map(|s| s.latent_len));
        Ok((0..batch.len())
            .map(|b| {
                let r = seg.range(b);
                HostTensor::new(vec![r.len(), io], out[r.start * io..r.end * io].to_vec()).transposed()
            })
            .collect())
    }
}

/// The conditioning of one denoiser pass over a batch (see `Dit::build_denoiser`).
#[derive(Debug, Clone)]
pub struct DitConditioning {
    /// Timestep embedding te `[B, embed_dim]`, one row per sequence.
    pub timestep: TensorId,
    /// adaLN configs: each block's scale/shift/gate table `[B, 6 * embed_dim]`; empty otherwise.
    pub modulation: Vec<TensorId>,
    /// Each block's cross-attention K/V `[sum N, 2 * cond_token_dim]` (`Dit::build_cross_kv`).
    pub cross_kv: Vec<TensorId>,
}

/// What depends only on the timestep, one row per timestep (`Dit::build_timestep`).
#[derive(Debug, Clone)]
pub struct TimestepTables {
    /// te `[R, embed_dim]`.
    pub embed: TensorId,
    /// adaLN configs: each block's scale/shift/gate table `[R, 6 * embed_dim]`; empty otherwise.
    pub modulation: Vec<TensorId>,
}

#[derive(Clone, Copy)]
struct LayerConditioning {
    modulation: Option<TensorId>,
    cross_kv: TensorId,
}

struct Segs {
    /// Transformer tokens per sequence (also maps a token row to its sequence's adaLN row).
    tokens: SegmentsId,
    context: SegmentsId,
}
