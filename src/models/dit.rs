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
use crate::graph::{AdaLnModulation, ColumnSlice, Executor, Graph, Op, Rope, Segments, SegmentsId, TensorId, WeightId};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// Key prefix of the DiT inside the original LoVA checkpoint.
pub const DIT_PREFIX: &str = "model.model.";
/// Fourier features of the timestep (stable-audio-tools' `timestep_features_dim`).
const TIMESTEP_FEATURES: usize = 256;
const LN_EPS: f32 = 1e-5;

struct LinearIds {
    w: WeightId,
    b: Option<WeightId>,
}

struct NormIds {
    gamma: WeightId,
    beta: WeightId,
}

struct BlockIds {
    pre_norm: NormIds,
    to_qkv: WeightId,
    self_out: WeightId,
    cross_norm: NormIds,
    to_q: WeightId,
    to_kv: WeightId,
    cross_out: WeightId,
    ff_norm: NormIds,
    ff_in: LinearIds,
    ff_out: LinearIds,
    /// `to_scale_shift_gate.1`, adaLN configs only.
    modulation: Option<WeightId>,
}

struct DitIds {
    timestep_features: WeightId,
    timestep_embed: [LinearIds; 2],
    cond_embed: [WeightId; 2],
    preprocess_conv: WeightId,
    postprocess_conv: WeightId,
    project_in: WeightId,
    project_out: WeightId,
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

/// Walks the DiT's weights in a fixed order: `take(key, shape)` is called for each
/// (key relative to the DiT prefix) and returns its id. Loading, listing for
/// `convert` and anything else that needs the weight list share this one description.
struct Describer<'a> {
    take: &'a mut dyn FnMut(&str, &[usize]) -> Result<WeightId>,
}

impl Describer<'_> {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<WeightId> {
        (self.take)(key, shape)
    }

    fn linear(&mut self, key: &str, out: usize, inp: usize, bias: bool) -> Result<LinearIds> {
        Ok(LinearIds {
            w: self.get(&format!("{key}.weight"), &[out, inp])?,
            b: if bias { Some(self.get(&format!("{key}.bias"), &[out])?) } else { None },
        })
    }

    fn norm(&mut self, key: &str, dim: usize) -> Result<NormIds> {
        Ok(NormIds {
            gamma: self.get(&format!("{key}.gamma"), &[dim])?,
            beta: self.get(&format!("{key}.beta"), &[dim])?,
        })
    }

    fn describe(&mut self, c: &DitConfig) -> Result<DitIds> {
        let (e, cd, io) = (c.embed_dim, c.cond_token_dim, c.io_channels);
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let p = format!("transformer.layers.{i}");
            blocks.push(BlockIds {
                pre_norm: self.norm(&format!("{p}.pre_norm"), e)?,
                to_qkv: self.get(&format!("{p}.self_attn.to_qkv.weight"), &[3 * e, e])?,
                self_out: self.get(&format!("{p}.self_attn.to_out.weight"), &[e, e])?,
                cross_norm: self.norm(&format!("{p}.cross_attend_norm"), e)?,
                to_q: self.get(&format!("{p}.cross_attn.to_q.weight"), &[e, e])?,
                to_kv: self.get(&format!("{p}.cross_attn.to_kv.weight"), &[2 * cd, cd])?,
                cross_out: self.get(&format!("{p}.cross_attn.to_out.weight"), &[e, e])?,
                ff_norm: self.norm(&format!("{p}.ff_norm"), e)?,
                ff_in: self.linear(&format!("{p}.ff.ff.0.proj"), 2 * c.ff_inner(), e, true)?,
                ff_out: self.linear(&format!("{p}.ff.ff.2"), e, c.ff_inner(), true)?,
                modulation: match c.global_cond_type {
                    GlobalCondType::AdaLn => Some(self.get(&format!("{p}.to_scale_shift_gate.1.weight"), &[6 * e, e])?),
                    GlobalCondType::Prepend => None,
                },
            });
        }
        Ok(DitIds {
            timestep_features: self.get("timestep_features.weight", &[TIMESTEP_FEATURES / 2, 1])?,
            timestep_embed: [
                self.linear("to_timestep_embed.0", e, TIMESTEP_FEATURES, true)?,
                self.linear("to_timestep_embed.2", e, e, true)?,
            ],
            cond_embed: [
                self.get("to_cond_embed.0.weight", &[cd, cd])?,
                self.get("to_cond_embed.2.weight", &[cd, cd])?,
            ],
            // 1x1 Conv1d [out, in, 1]: the same data as a linear layer [out, in].
            preprocess_conv: self.get("preprocess_conv.weight", &[io, io, 1])?,
            postprocess_conv: self.get("postprocess_conv.weight", &[io, io, 1])?,
            project_in: self.get("transformer.project_in.weight", &[e, io])?,
            project_out: self.get("transformer.project_out.weight", &[io, e])?,
            inv_freq: self.get("transformer.rotary_pos_emb.inv_freq", &[ROTARY_DIM / 2])?,
            pos_emb: self.get("transformer.pos_emb.emb.weight", &[c.max_positions, e])?,
            pos_emb_cond: self.get("transformer.pos_emb_cond.emb.weight", &[c.max_positions, cd])?,
            blocks,
        })
    }
}

/// Every DiT tensor the engine needs: key (relative to the DiT prefix) and shape.
pub fn tensor_list(config: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let mut list = Vec::new();
    let mut take = |key: &str, shape: &[usize]| {
        list.push((key.to_string(), shape.to_vec()));
        Ok(WeightId(list.len() - 1))
    };
    Describer { take: &mut take }.describe(config).expect("listing never fails");
    list
}

impl<B: Backend> Dit<B> {
    /// Loads the DiT from `source`, keys `{prefix}{key}` (`model.model.` in a LoVA
    /// checkpoint, `dit.` in an engine file); tensors it does not use are ignored.
    pub fn load(backend: &B, source: &dyn TensorSource, config: &DitConfig, prefix: &str) -> Result<Self> {
        let mut set = WeightSet::default();
        // Every DiT tensor is used as stored: each may take the backend's direct path.
        let mut take = |key: &str, shape: &[usize]| set.push_from(backend, source, &format!("{prefix}{key}"), shape);
        let ids = Describer { take: &mut take }.describe(config)?;
        Ok(Dit { config: config.clone(), weights: set, ids })
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
        let e = c.embed_dim;
        let rows = g.desc(t).rows;
        // Fourier features -> Linear -> SiLU -> Linear.
        let feat = g.temp("timestep_features", rows, TIMESTEP_FEATURES);
        g.push(Op::TimestepFeatures { t, w: ids.timestep_features, out: feat });
        let te_hidden = linear(g, "timestep_hidden", feat, &ids.timestep_embed[0], e, None);
        let te_hidden = silu(g, te_hidden);
        let embed = linear(g, "timestep_embed", te_hidden, &ids.timestep_embed[1], e, None);
        // adaLN: each block's scale/shift/gate table is a linear map of SiLU(te).
        let modulation = match c.global_cond_type {
            GlobalCondType::AdaLn => {
                let te_act = silu(g, embed);
                ids.blocks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, block)| {
                        block.modulation.map(|w| plain_linear(g, format!("l{i}.modulation"), te_act, w, 6 * e, None))
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
        let context_rows = batch.context_rows();
        // Video tokens: MLP without biases, then PE_c.
        let ch = plain_linear(g, "cond_hidden", features, ids.cond_embed[0], cd, None);
        let ch = silu(g, ch);
        let ctx = plain_linear(g, "cond_tokens", ch, ids.cond_embed[1], cd, None);
        let context = g.temp("context", context_rows, cd);
        g.push(Op::AddPositional {
            x: ctx,
            table: ids.pos_emb_cond,
            scale: (cd as f32).powf(-0.5),
            segments: context_seg,
            out: context,
        });
        (0..ids.blocks.len())
            .map(|i| plain_linear(g, format!("l{i}.cross_kv"), context, ids.blocks[i].to_kv, 2 * cd, None))
            .collect()
    }

    /// One denoiser pass over the audio tokens `x` `[sum T', io_channels]`
    /// (already scaled by c_in) given the batch's conditioning, whose rows
    /// (timestep, modulation) are one per sequence. Returns v `[sum T', io_channels]`.
    pub fn build_denoiser(&self, g: &mut Graph, batch: &DitBatch, x: TensorId, cond: &DitConditioning) -> TensorId {
        let c = &self.config;
        let ids = &self.ids;
        let (e, io) = (c.embed_dim, c.io_channels);
        let latent_seg = g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| s.latent_len)));
        let token_seg =
            g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| c.transformer_len(s.latent_len))));
        let context_seg = g.add_segments(Segments::from_lengths(batch.sequences.iter().map(|s| s.context_len)));
        let latent_rows = batch.latent_rows();
        let token_rows = g.seg(token_seg).total();
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
        let xp = plain_linear(g, "preprocessed", x, ids.preprocess_conv, io, Some(x));
        let audio = plain_linear(g, "project_in", xp, ids.project_in, e, None);
        let tokens = match c.global_cond_type {
            GlobalCondType::Prepend => {
                let h = g.temp("tokens", token_rows, e);
                g.push(Op::PrependRow {
                    first: cond.timestep,
                    rest: audio,
                    rest_segments: latent_seg,
                    out_segments: token_seg,
                    out: h,
                });
                h
            }
            GlobalCondType::AdaLn => audio,
        };
        let mut h = g.temp("tokens_pe", token_rows, e);
        g.push(Op::AddPositional {
            x: tokens,
            table: ids.pos_emb,
            scale: (e as f32).powf(-0.5),
            segments: token_seg,
            out: h,
        });

        let seqs = Segs { tokens: token_seg, context: context_seg };
        for (i, block) in ids.blocks.iter().enumerate() {
            let layer = LayerConditioning { modulation: cond.modulation.get(i).copied(), cross_kv: cond.cross_kv[i] };
            h = self.block(g, i, block, h, layer, &seqs);
        }

        let out_tokens = plain_linear(g, "project_out", h, ids.project_out, io, None);
        let out_latent = match c.global_cond_type {
            GlobalCondType::Prepend => {
                let o = g.temp("project_out_audio", latent_rows, io);
                g.push(Op::DropFirstRow { x: out_tokens, x_segments: token_seg, out_segments: latent_seg, out: o });
                o
            }
            GlobalCondType::AdaLn => out_tokens,
        };
        plain_linear(g, "v", out_latent, ids.postprocess_conv, io, Some(out_latent))
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
        let rows = g.desc(h).rows;
        let heads = c.num_heads;
        let scale = (HEAD_DIM as f32).powf(-0.5);
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
        let residual =
            |g: &mut Graph, name: String, branch_in: TensorId, w: WeightId, gate: usize, h: TensorId| match table {
                None => plain_linear(g, name, branch_in, w, e, Some(h)),
                Some(table) => {
                    let branch = plain_linear(g, format!("{name}.branch"), branch_in, w, e, None);
                    let out = g.temp(name, rows, e);
                    g.push(Op::GatedResidual {
                        branch,
                        residual: h,
                        table,
                        gate_offset: gate * e,
                        segments: seqs.tokens,
                        out,
                    });
                    out
                }
            };

        // Self-attention with RoPE over each sequence's own tokens.
        let n = layer_norm(g, format!("l{i}.pre_norm"), h, &ids.pre_norm, modulation(0));
        let qkv = plain_linear(g, format!("l{i}.qkv"), n, ids.to_qkv, 3 * e, None);
        let attn = g.temp(format!("l{i}.self_attn"), rows, e);
        g.push(Op::Attention {
            q: ColumnSlice { tensor: qkv, offset: 0, width: e },
            k: ColumnSlice { tensor: qkv, offset: e, width: e },
            v: ColumnSlice { tensor: qkv, offset: 2 * e, width: e },
            q_segments: seqs.tokens,
            kv_segments: seqs.tokens,
            heads,
            kv_heads: heads,
            head_dim: HEAD_DIM,
            scale,
            rope: Some(Rope { inv_freq: self.ids.inv_freq, rotary_dim: ROTARY_DIM }),
            out: attn,
        });
        let h = residual(g, format!("l{i}.after_self_attn"), attn, ids.self_out, 2, h);

        // Cross-attention to the video tokens (grouped-query, no RoPE, never modulated).
        let n = layer_norm(g, format!("l{i}.cross_norm"), h, &ids.cross_norm, None);
        let q = plain_linear(g, format!("l{i}.cross_q"), n, ids.to_q, e, None);
        let kv = layer.cross_kv;
        let attn = g.temp(format!("l{i}.cross_attn"), rows, e);
        g.push(Op::Attention {
            q: ColumnSlice { tensor: q, offset: 0, width: e },
            k: ColumnSlice { tensor: kv, offset: 0, width: cd },
            v: ColumnSlice { tensor: kv, offset: cd, width: cd },
            q_segments: seqs.tokens,
            kv_segments: seqs.context,
            heads,
            kv_heads: c.kv_heads(),
            head_dim: HEAD_DIM,
            scale,
            rope: None,
            out: attn,
        });
        let h = plain_linear(g, format!("l{i}.after_cross_attn"), attn, ids.cross_out, e, Some(h));

        // SwiGLU feed-forward.
        let n = layer_norm(g, format!("l{i}.ff_norm"), h, &ids.ff_norm, modulation(3));
        let up = linear(g, &format!("l{i}.ff_up"), n, &ids.ff_in, 2 * c.ff_inner(), None);
        let act = g.temp(format!("l{i}.ff_act"), rows, c.ff_inner());
        g.push(Op::SwiGlu { x: up, out: act });
        match table {
            None => linear(g, &format!("l{i}.after_ff"), act, &ids.ff_out, e, Some(h)),
            Some(table) => {
                let branch = linear(g, &format!("l{i}.ff_branch"), act, &ids.ff_out, e, None);
                let out = g.temp(format!("l{i}.after_ff"), rows, e);
                g.push(Op::GatedResidual {
                    branch,
                    residual: h,
                    table,
                    gate_offset: 5 * e,
                    segments: seqs.tokens,
                    out,
                });
                out
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
        let mut g = Graph::new();
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

fn plain_linear(
    g: &mut Graph,
    name: impl Into<String>,
    x: TensorId,
    w: WeightId,
    out_cols: usize,
    residual: Option<TensorId>,
) -> TensorId {
    let out = g.temp(name, g.desc(x).rows, out_cols);
    g.push(Op::Linear { x, w, bias: None, residual, out });
    out
}

fn linear(
    g: &mut Graph,
    name: &str,
    x: TensorId,
    ids: &LinearIds,
    out_cols: usize,
    residual: Option<TensorId>,
) -> TensorId {
    let out = g.temp(name, g.desc(x).rows, out_cols);
    g.push(Op::Linear { x, w: ids.w, bias: ids.b, residual, out });
    out
}

fn silu(g: &mut Graph, x: TensorId) -> TensorId {
    let d = g.desc(x).clone();
    let out = g.temp(format!("{}.silu", d.name), d.rows, d.cols);
    g.push(Op::Silu { x, out });
    out
}

fn layer_norm(
    g: &mut Graph,
    name: String,
    x: TensorId,
    ids: &NormIds,
    modulation: Option<AdaLnModulation>,
) -> TensorId {
    let d = g.desc(x).clone();
    let out = g.temp(name, d.rows, d.cols);
    g.push(Op::LayerNorm { x, gamma: ids.gamma, beta: ids.beta, eps: LN_EPS, modulation, out });
    out
}
