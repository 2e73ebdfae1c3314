//! The Oobleck VAE decoder (lova-model.md section 6): latents `[64, T']` to
//! audio `[2, T' * 2048]`, as graph ops over token-major sequences.
//!
//! Weights are described once, as a list of `VaeTensorSpec`s in the engine's
//! layout (weight norm folded, convolutions rearranged for im2col GEMMs; see
//! `backend::cpu::conv`). The same list drives loading from an engine file,
//! loading from the original checkpoint (`original_tensor` folds and rearranges
//! on the fly) and `lova-fast convert`.

use std::collections::HashMap;

use crate::backend::{Backend, WeightSet};
use crate::config::VaeDecoderConfig;
use crate::error::{Error, Result, ensure_finite, ensure_within};
use crate::graph::{ArenaPlan, Executor, Graph, Op, Segments, SegmentsId, Snake, TensorId, WeightId};
use crate::tensor::HostTensor;
use crate::weights::{MAX_LATENT_ABS, SafetensorsFile, TensorSource};

/// Key prefix of the decoder inside the original LoVA checkpoint.
pub const ORIGINAL_PREFIX: &str = "pretransform.model.";

/// Dilations of the three residual units of every decoder block.
const DILATIONS: [usize; 3] = [1, 3, 9];
const KERNEL: usize = 7;

/// The role and PyTorch shape of one decoder tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum VaeTensorKind {
    /// Conv1d `[C_out, C_in, K]` in PyTorch, `[C_out, K * C_in]` here.
    Conv {
        /// Output channels.
        cout: usize,
        /// Input channels.
        cin: usize,
        /// Kernel width in time steps.
        kernel: usize,
    },
    /// ConvTranspose1d `[C_in, C_out, 2s]` in PyTorch, `[s, C_out, 2 * C_in]` here.
    ConvTranspose {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Upsampling factor `s` (the kernel is `2s` wide).
        stride: usize,
    },
    /// Bias or SnakeBeta parameter.
    Vector(usize),
}

/// One decoder tensor: key relative to `pretransform.model.` (`decoder.layers.0.weight`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeTensorSpec {
    /// Key relative to `pretransform.model.`.
    pub key: String,
    /// What the tensor is, which fixes its expected shape.
    pub kind: VaeTensorKind,
}

impl VaeTensorSpec {
    /// Shape in the engine's layout.
    pub fn engine_shape(&self) -> Vec<usize> {
        match self.kind {
            VaeTensorKind::Conv { cout, cin, kernel } => vec![cout, kernel * cin],
            VaeTensorKind::ConvTranspose { cin, cout, stride } => vec![stride, cout, 2 * cin],
            VaeTensorKind::Vector(n) => vec![n],
        }
    }
}

/// `(C_in, C_out, stride)` of decoder blocks `layers.1 ..`, widest first. Block
/// i goes from `c_mults[i]` to the multiplier before it (1 for the first) at
/// `strides[i]`; the lists are walked together, so a config whose lists differ
/// in length (refused by `check_config` and by the config parser) cannot index
/// past either.
fn blocks(cfg: &VaeDecoderConfig) -> Vec<(usize, usize, usize)> {
    let before = std::iter::once(&1).chain(&cfg.c_mults);
    let mut list: Vec<_> = before
        .zip(&cfg.c_mults)
        .zip(&cfg.strides)
        .map(|((&from, &to), &stride)| (to * cfg.channels, from * cfg.channels, stride))
        .collect();
    list.reverse();
    list
}

/// Refuses decoder configs the engine does not implement.
pub fn check_config(cfg: &VaeDecoderConfig) -> Result<()> {
    let field = "model.pretransform.config.decoder.config";
    let unsupported = |name: &str, value: String, supported: &str| Error::UnsupportedConfig {
        field: format!("{field}.{name}"),
        value,
        supported: supported.into(),
    };
    if cfg.c_mults.len() != cfg.strides.len() || cfg.c_mults.is_empty() {
        return Err(unsupported("strides", format!("{:?}", cfg.strides), "one stride per entry of c_mults"));
    }
    if let Some(s) = cfg.strides.iter().find(|&&s| s == 0 || s % 2 == 1) {
        return Err(unsupported("strides", format!("{:?}", cfg.strides), &format!("even strides only, found {s}")));
    }
    if !cfg.use_snake {
        return Err(unsupported("use_snake", "false".into(), "only true (SnakeBeta activations)"));
    }
    if cfg.final_tanh {
        return Err(unsupported("final_tanh", "true".into(), "only false"));
    }
    Ok(())
}

/// Every decoder tensor the engine needs, in a fixed order.
pub fn tensor_specs(cfg: &VaeDecoderConfig) -> Vec<VaeTensorSpec> {
    let mut specs = Vec::new();
    let conv = |specs: &mut Vec<VaeTensorSpec>, name: &str, kind: VaeTensorKind, bias: bool| {
        let out = match kind {
            VaeTensorKind::Conv { cout, .. } | VaeTensorKind::ConvTranspose { cout, .. } => cout,
            VaeTensorKind::Vector(n) => n,
        };
        specs.push(VaeTensorSpec { key: format!("decoder.layers.{name}.weight"), kind });
        if bias {
            specs.push(VaeTensorSpec { key: format!("decoder.layers.{name}.bias"), kind: VaeTensorKind::Vector(out) });
        }
    };
    let snake = |specs: &mut Vec<VaeTensorSpec>, name: &str, channels: usize| {
        for p in ["alpha", "beta"] {
            specs.push(VaeTensorSpec {
                key: format!("decoder.layers.{name}.{p}"),
                kind: VaeTensorKind::Vector(channels),
            });
        }
    };
    let blocks = blocks(cfg);
    // The first conv feeds the widest block (or, with none, the last conv's `channels`).
    let widest = blocks.first().map_or(cfg.channels, |b| b.0);
    conv(&mut specs, "0", VaeTensorKind::Conv { cout: widest, cin: cfg.latent_dim, kernel: KERNEL }, true);
    for (b, &(cin, cout, stride)) in blocks.iter().enumerate() {
        let b = b + 1;
        snake(&mut specs, &format!("{b}.layers.0"), cin);
        conv(&mut specs, &format!("{b}.layers.1"), VaeTensorKind::ConvTranspose { cin, cout, stride }, true);
        for j in 2..5 {
            let unit = format!("{b}.layers.{j}.layers");
            snake(&mut specs, &format!("{unit}.0"), cout);
            conv(&mut specs, &format!("{unit}.1"), VaeTensorKind::Conv { cout, cin: cout, kernel: KERNEL }, true);
            snake(&mut specs, &format!("{unit}.2"), cout);
            conv(&mut specs, &format!("{unit}.3"), VaeTensorKind::Conv { cout, cin: cout, kernel: 1 }, true);
        }
    }
    let last = blocks.len() + 1;
    snake(&mut specs, &last.to_string(), cfg.channels);
    let kind = VaeTensorKind::Conv { cout: cfg.out_channels, cin: cfg.channels, kernel: KERNEL };
    conv(&mut specs, &(last + 1).to_string(), kind, false);
    specs
}

/// A decoder tensor from the original checkpoint, in the engine's layout:
/// weight norm folded (`weight = g * v / ||v||`, the norm over all dims but 0,
/// from `weight_g`/`weight_v` or `parametrizations.weight.original0/1`; a plain
/// `weight` is taken as already folded) and convolutions rearranged.
pub fn original_tensor(file: &SafetensorsFile, spec: &VaeTensorSpec) -> Result<HostTensor> {
    let key = format!("{ORIGINAL_PREFIX}{}", spec.key);
    let shape = match spec.kind {
        VaeTensorKind::Vector(n) => return file.tensor(&key, &[n]),
        VaeTensorKind::Conv { cout, cin, kernel } => vec![cout, cin, kernel],
        VaeTensorKind::ConvTranspose { cin, cout, stride } => vec![cin, cout, 2 * stride],
    };
    let base = key.trim_end_matches(".weight");
    let folded = if file.contains(&key) {
        file.tensor(&key, &shape)?
    } else {
        let (g_key, v_key) = if file.contains(&format!("{base}.weight_g")) {
            (format!("{base}.weight_g"), format!("{base}.weight_v"))
        } else if file.contains(&format!("{base}.parametrizations.weight.original0")) {
            (format!("{base}.parametrizations.weight.original0"), format!("{base}.parametrizations.weight.original1"))
        } else {
            return Err(Error::MissingTensor {
                key: format!("{base}.weight_g/.weight_v (or .parametrizations.weight.original0/1, or .weight)"),
                file: file.path().display().to_string(),
            });
        };
        let v = file.tensor(&v_key, &shape)?;
        let g = file.tensor(&g_key, &[shape[0], 1, 1])?;
        fold_weight_norm(&g.data, v)
    };
    Ok(match spec.kind {
        VaeTensorKind::ConvTranspose { .. } => rearrange_conv_transpose(&folded, &spec.kind),
        _ => rearrange_conv(&folded, &spec.kind),
    })
}

/// `g * v / ||v||` with one norm (and one g) per index of dim 0.
pub fn fold_weight_norm(g: &[f32], mut v: HostTensor) -> HostTensor {
    let per = v.len() / v.shape[0];
    for (i, chunk) in v.data.chunks_mut(per).enumerate() {
        let norm = chunk.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { g[i] as f64 / norm } else { 0.0 };
        chunk.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
    }
    v
}

fn rearrange_conv(w: &HostTensor, kind: &VaeTensorKind) -> HostTensor {
    let VaeTensorKind::Conv { cout, cin, kernel } = *kind else { unreachable!("conv spec") };
    let mut out = vec![0.0; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for k in 0..kernel {
                out[co * kernel * cin + k * cin + ci] = w.data[(co * cin + ci) * kernel + k];
            }
        }
    }
    HostTensor::new(vec![cout, kernel * cin], out)
}

fn rearrange_conv_transpose(w: &HostTensor, kind: &VaeTensorKind) -> HostTensor {
    let VaeTensorKind::ConvTranspose { cin, cout, stride: s } = *kind else { unreachable!("conv transpose spec") };
    let mut out = vec![0.0; w.len()];
    for r in 0..s {
        for co in 0..cout {
            for ci in 0..cin {
                let src = |k: usize| w.data[(ci * cout + co) * 2 * s + k];
                out[(r * cout + co) * 2 * cin + ci] = src(r);
                out[(r * cout + co) * 2 * cin + cin + ci] = src(r + s);
            }
        }
    }
    HostTensor::new(vec![s, cout, 2 * cin], out)
}

/// Weight ids by key for the weights of `tensor_specs`, in its order (the order
/// `VaeDecoder::load` uploads them in), with their engine shapes.
fn spec_ids(cfg: &VaeDecoderConfig) -> HashMap<String, (WeightId, Vec<usize>)> {
    tensor_specs(cfg).into_iter().enumerate().map(|(i, s)| (s.key.clone(), (WeightId(i), s.engine_shape()))).collect()
}

/// The decoder graph: `z` `[sum T', latent_dim]` to audio `[sum T' * upsampling, out_channels]`.
///
/// SnakeBeta is fused into the input load of the conv that follows it (`Op::Conv1d`'s
/// `input_snake`), never stored: every activation here feeds exactly one conv, and a
/// residual unit `x + conv1(snake(conv7(snake(x))))` needs `x` itself, un-activated,
/// for its residual add. Fusing into the epilogue of the previous conv would have to
/// store both `x` and `snake(x)` (or recompute); fusing into the next conv's load
/// stores only `x`, and the conv's gather, which reads each input row `kernel` times,
/// is where the activation is computed (in f32, before the fp16 rounding of the GEMM
/// operand on the GPU).
fn build_decoder(
    cfg: &VaeDecoderConfig,
    ids: &HashMap<String, (WeightId, Vec<usize>)>,
    g: &mut Graph,
    latent_lens: &[usize],
    z: TensorId,
) -> TensorId {
    let id = |key: String| ids[&key].0;
    let snake = |name: &str| {
        Some(Snake {
            alpha: id(format!("decoder.layers.{name}.alpha")),
            beta: id(format!("decoder.layers.{name}.beta")),
        })
    };
    let conv = |g: &mut Graph, x: TensorId, input_snake: Option<Snake>, name: &str, conv: ConvShape| {
        let key = format!("decoder.layers.{name}.weight");
        let cout = ids[&key].1[0];
        let out = g.temp(format!("vae.{name}"), g.desc(x).rows, cout);
        g.push(Op::Conv1d {
            x,
            input_snake,
            w: id(key),
            bias: conv.bias.then(|| id(format!("decoder.layers.{name}.bias"))),
            kernel: conv.kernel,
            dilation: conv.dilation,
            padding: conv.dilation * (conv.kernel - 1) / 2,
            residual: conv.residual,
            segments: conv.segments,
            out,
        });
        out
    };
    let mut lens: Vec<usize> = latent_lens.to_vec();
    let mut seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
    let shape = |kernel, dilation, segments, residual, bias| ConvShape { kernel, dilation, segments, residual, bias };
    let mut h = conv(g, z, None, "0", shape(KERNEL, 1, seg, None, true));
    for (b, &(_, cout, stride)) in blocks(cfg).iter().enumerate() {
        let b = b + 1;
        lens.iter_mut().for_each(|l| *l *= stride);
        let up_seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
        let x = h;
        h = g.temp(format!("vae.{b}.upsampled"), g.seg(up_seg).total(), cout);
        g.push(Op::ConvTranspose1d {
            x,
            input_snake: snake(&format!("{b}.layers.0")),
            w: id(format!("decoder.layers.{b}.layers.1.weight")),
            bias: Some(id(format!("decoder.layers.{b}.layers.1.bias"))),
            stride,
            in_segments: seg,
            out_segments: up_seg,
            out: h,
        });
        seg = up_seg;
        for (j, dilation) in DILATIONS.iter().enumerate() {
            let unit = format!("{b}.layers.{}.layers", j + 2);
            let u = conv(
                g,
                h,
                snake(&format!("{unit}.0")),
                &format!("{unit}.1"),
                shape(KERNEL, *dilation, seg, None, true),
            );
            h = conv(g, u, snake(&format!("{unit}.2")), &format!("{unit}.3"), shape(1, 1, seg, Some(h), true));
        }
    }
    let last = blocks(cfg).len() + 1;
    conv(g, h, snake(&last.to_string()), &(last + 1).to_string(), shape(KERNEL, 1, seg, None, false))
}

struct ConvShape {
    kernel: usize,
    dilation: usize,
    segments: SegmentsId,
    residual: Option<TensorId>,
    bias: bool,
}

/// The Oobleck VAE decoder with its weights loaded on backend `B`.
pub struct VaeDecoder<B: Backend> {
    /// Shape of the decoder.
    pub config: VaeDecoderConfig,
    /// Latents are multiplied by this before decoding (`model.pretransform.scale`).
    pub latent_scale: f32,
    weights: WeightSet<B>,
    /// Weight id and engine shape by key.
    ids: HashMap<String, (WeightId, Vec<usize>)>,
}

impl<B: Backend> VaeDecoder<B> {
    /// Loads every tensor of `tensor_specs` through `fetch`, which returns it in the
    /// engine layout (`original_tensor` for a checkpoint, or any other source).
    pub fn load(
        backend: &B,
        config: &VaeDecoderConfig,
        latent_scale: f64,
        fetch: &mut dyn FnMut(&VaeTensorSpec) -> Result<HostTensor>,
    ) -> Result<Self> {
        Self::load_with(config, latent_scale, &mut |spec, weights| {
            let t = fetch(spec)?;
            if t.shape != spec.engine_shape() {
                return Err(Error::ShapeMismatch {
                    key: spec.key.clone(),
                    file: "the VAE weights".into(),
                    expected: spec.engine_shape(),
                    found: t.shape,
                });
            }
            weights.push(backend, &spec.key, &t)
        })
    }

    /// Loads every tensor of `tensor_specs` from `source` under the keys
    /// `{prefix}{spec.key}`, already in the engine layout (an engine file):
    /// used as stored, so each may take the backend's direct path
    /// (`Backend::upload_weight_from`).
    pub fn load_stored(
        backend: &B,
        config: &VaeDecoderConfig,
        latent_scale: f64,
        source: &dyn TensorSource,
        prefix: &str,
    ) -> Result<Self> {
        Self::load_with(config, latent_scale, &mut |spec, weights| {
            weights.push_from(backend, source, &format!("{prefix}{}", spec.key), &spec.engine_shape())
        })
    }

    /// `take` uploads the tensor of one spec, with its engine shape, into the set.
    fn load_with(
        config: &VaeDecoderConfig,
        latent_scale: f64,
        take: &mut dyn FnMut(&VaeTensorSpec, &mut WeightSet<B>) -> Result<WeightId>,
    ) -> Result<Self> {
        check_config(config)?;
        let mut weights = WeightSet::default();
        let mut ids = HashMap::new();
        for spec in tensor_specs(config) {
            let id = take(&spec, &mut weights)?;
            ids.insert(spec.key.clone(), (id, spec.engine_shape()));
        }
        Ok(VaeDecoder { config: config.clone(), latent_scale: latent_scale as f32, weights, ids })
    }

    /// The weights on the backend, in the order the decode graph refers to them (for `Executor::new`).
    pub fn weights(&self) -> &[B::Weight] {
        self.weights.as_slice()
    }

    /// Audio samples per latent frame (the product of the strides).
    pub fn upsampling(&self) -> usize {
        self.config.strides.iter().product()
    }

    /// Adds the decoder to `g`: `z` `[sum T', latent_dim]` (already scaled) to
    /// audio `[sum T' * upsampling, out_channels]`.
    pub fn build(&self, g: &mut Graph, latent_lens: &[usize], z: TensorId) -> TensorId {
        build_decoder(&self.config, &self.ids, g, latent_lens, z)
    }

    /// Decodes latents `[latent_dim, T']` (one per clip) to audio `[out_channels, T' * upsampling]`,
    /// all clips in one graph (one packed batch).
    pub fn decode(&self, backend: &B, latents: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let lens = self.check_latents(latents)?;
        let mut exec = DecodeRun::new(self, backend, &lens)?;
        let scaled: Vec<f32> =
            latents.iter().flat_map(|z| z.transposed().data).map(|v| v * self.latent_scale).collect();
        let out = exec.run(&scaled)?;
        let channels = self.config.out_channels;
        let seg = Segments::from_lengths(lens.iter().map(|l| l * self.upsampling()));
        Ok((0..lens.len())
            .map(|b| {
                let r = seg.range(b);
                HostTensor::new(vec![r.len(), channels], out[r.start * channels..r.end * channels].to_vec())
                    .transposed()
            })
            .collect())
    }

    /// Decodes one clip's latents `[latent_dim, T']` in windows of `chunk` latent
    /// frames, each decoded with `receptive_field(config)` frames of context on both
    /// sides (fewer at the clip's ends, where the whole decode pads with zeros too)
    /// and cropped: the result equals `decode` up to f32 rounding, with an arena
    /// sized for `chunk + 2 * context` frames instead of T'. Every window has the same
    /// length (windows at the ends are shifted inwards), so one graph is planned once.
    pub fn decode_chunked(&self, backend: &B, latents: &HostTensor, chunk: usize) -> Result<HostTensor> {
        self.decode_chunked_with(backend, latents, chunk, &mut |_, _| Ok(()))
    }

    /// `decode_chunked`, calling `before_window(done, windows)` before each
    /// window: a caller reports progress there, and stops the decode by
    /// returning an error (a cancelled request).
    pub fn decode_chunked_with(
        &self,
        backend: &B,
        latents: &HostTensor,
        chunk: usize,
        before_window: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<HostTensor> {
        let t = self.check_latents(std::slice::from_ref(latents))?[0];
        if chunk == 0 {
            return Err(Error::InvalidInput("a VAE decode chunk must hold at least one latent frame".into()));
        }
        let context = receptive_field(&self.config);
        let window = chunk.saturating_add(2 * context).min(t);
        if window == t {
            before_window(0, 1)?;
            return Ok(self.decode(backend, std::slice::from_ref(latents))?.remove(0));
        }
        let (c, up, channels) = (self.config.latent_dim, self.upsampling(), self.config.out_channels);
        let z = latents.transposed(); // [T', C]
        let mut run = DecodeRun::new(self, backend, &[window])?;
        let mut audio = vec![0.0f32; t * up * channels];
        let windows = t.div_ceil(chunk);
        for (done, start) in (0..t).step_by(chunk).enumerate() {
            before_window(done, windows)?;
            let end = (start + chunk).min(t);
            let first = start.saturating_sub(context).min(t - window);
            let scaled: Vec<f32> =
                z.data[first * c..(first + window) * c].iter().map(|v| v * self.latent_scale).collect();
            let out = run.run(&scaled)?;
            let keep = (start - first) * up * channels..(end - first) * up * channels;
            audio[start * up * channels..end * up * channels].copy_from_slice(&out[keep]);
        }
        Ok(HostTensor::new(vec![t * up, channels], audio).transposed())
    }

    fn check_latents(&self, latents: &[HostTensor]) -> Result<Vec<usize>> {
        let c = self.config.latent_dim;
        for (i, z) in latents.iter().enumerate() {
            if z.shape.len() != 2 || z.shape[0] != c || z.shape[1] == 0 {
                return Err(Error::InvalidInput(format!(
                    "latents {i} have shape {:?}, expected [{c}, T'] with T' >= 1",
                    z.shape
                )));
            }
            // Finite is not enough: latents near f32's limit overflow in the first
            // conv and come out as NaN (then as a silent WAV).
            ensure_within(&format!("latents {i} given to the VAE decoder"), &z.data, MAX_LATENT_ABS)?;
        }
        Ok(latents.iter().map(|z| z.shape[1]).collect())
    }
}

/// One planned decoder graph for fixed latent lengths, run as often as needed.
struct DecodeRun<'w, B: Backend> {
    exec: Executor<'w, B>,
    z: TensorId,
    audio: TensorId,
}

impl<'w, B: Backend> DecodeRun<'w, B> {
    fn new(vae: &'w VaeDecoder<B>, backend: &'w B, lens: &[usize]) -> Result<Self> {
        let mut g = Graph::new();
        let z = g.input("latents", lens.iter().sum(), vae.config.latent_dim);
        let audio = vae.build(&mut g, lens, z);
        g.mark_output(audio);
        Ok(DecodeRun { exec: Executor::new(backend, vae.weights(), g)?, z, audio })
    }

    /// Token-major scaled latents in, token-major audio out.
    fn run(&mut self, scaled: &[f32]) -> Result<Vec<f32>> {
        self.exec.write(self.z, scaled)?;
        self.exec.run()?;
        let audio = self.exec.read(self.audio)?;
        // Overflow inside the decoder (extreme weights or latents) must end here,
        // as an error naming the stage, not as a NaN or silent WAV.
        ensure_finite("the VAE decoder's audio output", &audio)?;
        Ok(audio)
    }
}

/// Latent frames on each side of a latent frame that its audio depends on: the
/// decoder's receptive half-width, rounded up. Each conv of kernel k and dilation d
/// reaches d * (k - 1) / 2 rows at its own rate; a transposed conv (kernel 2s,
/// padding s/2) reads input rows i0 and i0 - 1, so one row at its input rate; a
/// rate U times the latent rate divides the reach by U.
pub fn receptive_field(cfg: &VaeDecoderConfig) -> usize {
    let reach = |kernel: usize, dilation: usize| (dilation * (kernel - 1) / 2) as f64;
    let mut rate = 1.0f64;
    let mut total = reach(KERNEL, 1);
    for (_, _, stride) in blocks(cfg) {
        total += 1.0 / rate;
        rate *= stride as f64;
        total += DILATIONS.iter().map(|&d| reach(KERNEL, d) + reach(1, 1)).sum::<f64>() / rate;
    }
    total += reach(KERNEL, 1) / rate;
    total.ceil() as usize
}

/// Latent frames per window of `VaeDecoder::decode_chunked` for a clip of
/// `latent_len` frames whose decode may plan at most `budget_bytes` of arena
/// (None: the whole clip at once fits). The arena grows about linearly with the
/// window: start from that estimate and shrink until the plan fits. A chunk keeps
/// at least 2 * context frames, so that the context decoded twice at most
/// doubles the work: a budget too small for that is exceeded rather than met at
/// any cost.
pub fn chunk_for_budget(cfg: &VaeDecoderConfig, latent_len: usize, budget_bytes: usize) -> Result<Option<usize>> {
    let whole = planned_arena_bytes(cfg, &[latent_len])?;
    if whole <= budget_bytes || latent_len == 0 {
        return Ok(None);
    }
    let context = receptive_field(cfg);
    let smallest = 4 * context;
    let mut window = (budget_bytes / whole.div_ceil(latent_len)).clamp(smallest.min(latent_len), latent_len);
    while window > smallest && planned_arena_bytes(cfg, &[window])? > budget_bytes {
        window = (window * 15 / 16).max(smallest);
    }
    Ok(Some(window.saturating_sub(2 * context).max(1)))
}

/// Device memory a decode of clips of `latent_lens` frames plans for its arena,
/// in bytes (f32 activations), computed from the config alone (no weights).
pub fn planned_arena_bytes(cfg: &VaeDecoderConfig, latent_lens: &[usize]) -> Result<usize> {
    check_config(cfg)?;
    let mut g = Graph::new();
    let z = g.input("latents", latent_lens.iter().sum(), cfg.latent_dim);
    let audio = build_decoder(cfg, &spec_ids(cfg), &mut g, latent_lens, z);
    g.mark_output(audio);
    Ok(ArenaPlan::plan(&g)?.size * std::mem::size_of::<f32>())
}

/// Bytes of the decoder's weights on a device that stores matrices as fp16 and
/// vectors as f32 (the CUDA backend's rule).
pub fn weight_bytes_fp16(cfg: &VaeDecoderConfig) -> usize {
    tensor_specs(cfg)
        .iter()
        .map(|s| {
            let shape = s.engine_shape();
            let n: usize = shape.iter().product();
            if shape.len() >= 2 { 2 * n } else { 4 * n }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LovaConfig;

    /// A decoder config the parser would refuse (lists of different lengths, or
    /// empty) still describes no block past either list, so nothing that walks
    /// it can index out of bounds; `check_config` refuses it with a message.
    #[test]
    fn lists_of_different_lengths_are_refused_not_indexed() {
        let released = LovaConfig::released().vae_decoder;
        for strides in [vec![], vec![2], vec![2, 4, 4, 8, 8, 2]] {
            let cfg = VaeDecoderConfig { strides: strides.clone(), ..released.clone() };
            assert_eq!(blocks(&cfg).len(), strides.len().min(cfg.c_mults.len()));
            let _ = tensor_specs(&cfg);
            let _ = weight_bytes_fp16(&cfg);
            let _ = receptive_field(&cfg);
            let e = check_config(&cfg).unwrap_err().to_string();
            assert!(e.contains("strides"), "{e}");
            assert!(planned_arena_bytes(&cfg, &[4]).is_err());
        }
        let empty = VaeDecoderConfig { strides: vec![], c_mults: vec![], ..released };
        assert!(blocks(&empty).is_empty());
        assert_eq!(tensor_specs(&empty)[0].engine_shape(), vec![empty.channels, KERNEL * empty.latent_dim]);
    }

    #[test]
    fn latents_that_would_overflow_and_overflowing_output_are_errors() {
        let backend = crate::backend::CpuBackend::new();
        let cfg = VaeDecoderConfig { channels: 4, ..LovaConfig::released().vae_decoder };
        let random = crate::weights::RandomWeights { seed: 3 };
        let mut vae = VaeDecoder::load_stored(&backend, &cfg, 1.0, &random, "").unwrap();
        let z = |v: f32| HostTensor::new(vec![64, 2], vec![v; 128]);
        assert!(vae.decode(&backend, &[z(0.5)]).is_ok());
        let Err(e) = vae.decode(&backend, &[z(3e38)]) else { panic!("latents of 3e38 decoded") };
        let e = e.to_string();
        assert!(e.contains("VAE decoder") && e.contains("3e38"), "{e}");
        // Overflow inside the decoder (here from a scale no config may hold).
        vae.latent_scale = f32::INFINITY;
        let Err(whole) = vae.decode(&backend, &[z(0.5)]) else { panic!("overflow decoded") };
        let Err(chunked) = vae.decode_chunked(&backend, &z(0.5), 1) else { panic!("overflow decoded in chunks") };
        for e in [whole, chunked] {
            let e = e.to_string();
            assert!(e.contains("VAE decoder's audio output") && e.contains("non-finite"), "{e}");
        }
    }

    #[test]
    fn blocks_go_from_the_widest_down() {
        let cfg = LovaConfig::released().vae_decoder;
        assert_eq!(blocks(&cfg), vec![(2048, 1024, 8), (1024, 512, 8), (512, 256, 4), (256, 128, 4), (128, 128, 2)]);
    }
}
