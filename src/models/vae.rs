//! The Oobleck VAE decoder (lova-model.md section 6): latents `[64, T']` to
//! audio `[2, T' * 2048]`, as graph ops over token-major sequences.
//!
//! Weights are declared once (`declare`) in the engine's layout (weight norm
//! folded, convolutions rearranged for im2col GEMMs; see `backend::cpu::conv`).
//! The same declaration drives loading from an engine file, loading from the
//! original checkpoint (`original_tensor` folds and rearranges on the fly) and
//! `lova-fast convert`.

use crate::backend::{Backend, WeightSet};
use crate::config::VaeDecoderConfig;
use crate::error::{Error, Result, ensure_finite, ensure_within};
use crate::graph::{ArenaPlan, Executor, Graph, Segments, Snake, TensorId};
use crate::models::declare::{self, Declared, Layout, Scope};
use crate::models::layers::{Conv, conv_transpose1d, conv1d};
use crate::tensor::HostTensor;
use crate::weights::{MAX_LATENT_ABS, SafetensorsFile, TensorSource};

/// Key prefix of the decoder inside the original LoVA checkpoint.
pub const ORIGINAL_PREFIX: &str = "pretransform.model.";

/// Dilations of the three residual units of every decoder block.
const DILATIONS: [usize; 3] = [1, 3, 9];
const KERNEL: usize = 7;

/// One decoder tensor: key relative to `pretransform.model.`
/// (`decoder.layers.0.weight`), engine shape and layout (`Layout::Conv1d`,
/// `Layout::ConvTranspose1d`, or `Layout::Stored` for biases and SnakeBeta parameters).
pub type VaeTensorSpec = Declared;

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

struct Unit {
    snake_in: Snake,
    conv: Conv,
    snake_mid: Snake,
    conv_1x1: Conv,
}

struct Block {
    snake: Snake,
    upsample: Conv,
    stride: usize,
    units: Vec<Unit>,
}

/// The decoder's weights: `decoder.layers.0`, the blocks, the last SnakeBeta and conv.
struct VaeIds {
    first: Conv,
    blocks: Vec<Block>,
    snake: Snake,
    last: Conv,
}

/// Declares every decoder tensor (keys under `pretransform.model.`), in the engine file's order.
fn declare(cfg: &VaeDecoderConfig, d: &mut Scope) -> Result<VaeIds> {
    fn conv(d: &mut Scope, (cout, cin, kernel): (usize, usize, usize), bias: bool) -> Result<Conv> {
        let layout = Layout::Conv1d { cout, cin, kernel };
        Ok(Conv {
            weight: d.declare_as("weight", &[cout, kernel * cin], layout)?,
            bias: if bias { Some(d.declare("bias", &[cout])?) } else { None },
            cout,
            kernel,
        })
    }
    fn snake(d: &mut Scope, channels: usize) -> Result<Snake> {
        Ok(Snake { alpha: d.declare("alpha", &[channels])?, beta: d.declare("beta", &[channels])? })
    }
    let mut d = d.pp("decoder.layers");
    let blocks = blocks(cfg);
    // The first conv feeds the widest block (or, with none, the last conv's `channels`).
    let widest = blocks.first().map_or(cfg.channels, |b| b.0);
    let first = conv(&mut d.pp(0), (widest, cfg.latent_dim, KERNEL), true)?;
    let mut declared = Vec::with_capacity(blocks.len());
    for (b, &(cin, cout, stride)) in blocks.iter().enumerate() {
        let mut d = d.pp(format!("{}.layers", b + 1));
        let snake_in = snake(&mut d.pp(0), cin)?;
        let mut up = d.pp(1);
        let layout = Layout::ConvTranspose1d { cin, cout, stride };
        let upsample = Conv {
            weight: up.declare_as("weight", &[stride, cout, 2 * cin], layout)?,
            bias: Some(up.declare("bias", &[cout])?),
            cout,
            kernel: 2 * stride,
        };
        let units = (2..5)
            .map(|j| {
                let mut d = d.pp(format!("{j}.layers"));
                Ok(Unit {
                    snake_in: snake(&mut d.pp(0), cout)?,
                    conv: conv(&mut d.pp(1), (cout, cout, KERNEL), true)?,
                    snake_mid: snake(&mut d.pp(2), cout)?,
                    conv_1x1: conv(&mut d.pp(3), (cout, cout, 1), true)?,
                })
            })
            .collect::<Result<_>>()?;
        declared.push(Block { snake: snake_in, upsample, stride, units });
    }
    let last = blocks.len() + 1;
    let snake = snake(&mut d.pp(last), cfg.channels)?;
    let last = conv(&mut d.pp(last + 1), (cfg.out_channels, cfg.channels, KERNEL), false)?;
    Ok(VaeIds { first, blocks: declared, snake, last })
}

/// Every decoder tensor the engine needs, in a fixed order.
pub fn tensor_specs(cfg: &VaeDecoderConfig) -> Vec<VaeTensorSpec> {
    // Listing declares into a Vec: it cannot fail.
    declare::list(|d| declare(cfg, d)).expect("listing never fails").0
}

/// A decoder tensor from the original checkpoint, in the engine's layout:
/// weight norm folded (`weight = g * v / ||v||`, the norm over all dims but 0,
/// from `weight_g`/`weight_v` or `parametrizations.weight.original0/1`; a plain
/// `weight` is taken as already folded) and convolutions rearranged.
pub fn original_tensor(file: &SafetensorsFile, spec: &VaeTensorSpec) -> Result<HostTensor> {
    let key = format!("{ORIGINAL_PREFIX}{}", spec.key);
    let shape = match spec.layout {
        Layout::Conv1d { cout, cin, kernel } => vec![cout, cin, kernel],
        Layout::ConvTranspose1d { cin, cout, stride } => vec![cin, cout, 2 * stride],
        _ => return file.tensor(&key, &spec.shape),
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
    Ok(match spec.layout {
        Layout::ConvTranspose1d { cin, cout, stride } => rearrange_conv_transpose(&folded, cin, cout, stride),
        _ => rearrange_conv(&folded, shape[0], shape[1], shape[2]),
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

fn rearrange_conv(w: &HostTensor, cout: usize, cin: usize, kernel: usize) -> HostTensor {
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

fn rearrange_conv_transpose(w: &HostTensor, cin: usize, cout: usize, s: usize) -> HostTensor {
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
fn build_decoder(ids: &VaeIds, g: &mut Graph, latent_lens: &[usize], z: TensorId) -> TensorId {
    let mut lens: Vec<usize> = latent_lens.to_vec();
    let mut seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
    let mut h = conv1d(g, "vae.0", z, None, &ids.first, 1, None, seg);
    for (b, block) in ids.blocks.iter().enumerate() {
        let b = b + 1;
        lens.iter_mut().for_each(|l| *l *= block.stride);
        let up_seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
        let name = format!("vae.{b}.upsampled");
        h = conv_transpose1d(g, name, h, Some(block.snake), &block.upsample, block.stride, seg, up_seg);
        seg = up_seg;
        for ((j, dilation), unit) in DILATIONS.iter().enumerate().zip(&block.units) {
            let unit_name = format!("vae.{b}.layers.{}.layers", j + 2);
            let u = conv1d(g, format!("{unit_name}.1"), h, Some(unit.snake_in), &unit.conv, *dilation, None, seg);
            h = conv1d(g, format!("{unit_name}.3"), u, Some(unit.snake_mid), &unit.conv_1x1, 1, Some(h), seg);
        }
    }
    let last = ids.blocks.len() + 1;
    conv1d(g, format!("vae.{}", last + 1), h, Some(ids.snake), &ids.last, 1, None, seg)
}

/// The Oobleck VAE decoder with its weights loaded on backend `B`.
pub struct VaeDecoder<B: Backend> {
    /// Shape of the decoder.
    pub config: VaeDecoderConfig,
    /// Latents are multiplied by this before decoding (`model.pretransform.scale`).
    pub latent_scale: f32,
    weights: WeightSet<B>,
    ids: VaeIds,
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
        check_config(config)?;
        let (weights, ids) = declare::upload_with(backend, "the VAE weights", fetch, |d| declare(config, d))?;
        Ok(VaeDecoder { config: config.clone(), latent_scale: latent_scale as f32, weights, ids })
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
        check_config(config)?;
        let (weights, ids) = declare::upload(backend, source, prefix, |d| declare(config, d))?;
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
        build_decoder(&self.ids, g, latent_lens, z)
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
    // Listing gives the ids the graph refers to, without any weights.
    let (_, ids) = declare::list(|d| declare(cfg, d))?;
    let audio = build_decoder(&ids, &mut g, latent_lens, z);
    g.mark_output(audio);
    Ok(ArenaPlan::plan(&g)?.size * std::mem::size_of::<f32>())
}

/// Bytes of the decoder's weights on a device that stores matrices as fp16 and
/// vectors as f32 (the CUDA backend's rule).
pub fn weight_bytes_fp16(cfg: &VaeDecoderConfig) -> usize {
    tensor_specs(cfg)
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            if s.shape.len() >= 2 { 2 * n } else { 4 * n }
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
        assert_eq!(tensor_specs(&empty)[0].shape, vec![empty.channels, KERNEL * empty.latent_dim]);
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
