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
use crate::error::{Error, Result, ensure_finite};
use crate::graph::{Executor, Graph, Op, Segments, SegmentsId, TensorId, WeightId};
use crate::tensor::HostTensor;
use crate::weights::SafetensorsFile;

/// Key prefix of the decoder inside the original LoVA checkpoint.
pub const ORIGINAL_PREFIX: &str = "pretransform.model.";

/// Dilations of the three residual units of every decoder block.
const DILATIONS: [usize; 3] = [1, 3, 9];
const KERNEL: usize = 7;

#[derive(Debug, Clone, PartialEq)]
pub enum VaeTensorKind {
    /// Conv1d `[C_out, C_in, K]` in PyTorch, `[C_out, K * C_in]` here.
    Conv { cout: usize, cin: usize, kernel: usize },
    /// ConvTranspose1d `[C_in, C_out, 2s]` in PyTorch, `[s, C_out, 2 * C_in]` here.
    ConvTranspose { cin: usize, cout: usize, stride: usize },
    /// Bias or SnakeBeta parameter.
    Vector(usize),
}

/// One decoder tensor: key relative to `pretransform.model.` (`decoder.layers.0.weight`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeTensorSpec {
    pub key: String,
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

/// `(C_in, C_out, stride)` of decoder blocks `layers.1 ..`, widest first.
fn blocks(cfg: &VaeDecoderConfig) -> Vec<(usize, usize, usize)> {
    let mut mults = vec![1];
    mults.extend(&cfg.c_mults);
    (1..mults.len()).rev().map(|i| (mults[i] * cfg.channels, mults[i - 1] * cfg.channels, cfg.strides[i - 1])).collect()
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
    conv(&mut specs, "0", VaeTensorKind::Conv { cout: blocks[0].0, cin: cfg.latent_dim, kernel: KERNEL }, true);
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

pub struct VaeDecoder<B: Backend> {
    pub config: VaeDecoderConfig,
    /// Latents are multiplied by this before decoding (`model.pretransform.scale`).
    pub latent_scale: f32,
    weights: WeightSet<B>,
    /// Weight id and engine shape by key.
    ids: HashMap<String, (WeightId, Vec<usize>)>,
}

impl<B: Backend> VaeDecoder<B> {
    /// Loads every tensor of `tensor_specs` through `fetch`, which returns it in the
    /// engine layout (from an engine file, or `original_tensor` for a checkpoint).
    pub fn load(
        backend: &B,
        config: &VaeDecoderConfig,
        latent_scale: f64,
        fetch: &mut dyn FnMut(&VaeTensorSpec) -> Result<HostTensor>,
    ) -> Result<Self> {
        check_config(config)?;
        let mut weights = WeightSet::default();
        let mut ids = HashMap::new();
        for spec in tensor_specs(config) {
            let t = fetch(&spec)?;
            if t.shape != spec.engine_shape() {
                return Err(Error::ShapeMismatch {
                    key: spec.key.clone(),
                    file: "the VAE weights".into(),
                    expected: spec.engine_shape(),
                    found: t.shape,
                });
            }
            ids.insert(spec.key.clone(), (weights.push(backend, &spec.key, &t)?, t.shape));
        }
        Ok(VaeDecoder { config: config.clone(), latent_scale: latent_scale as f32, weights, ids })
    }

    pub fn weights(&self) -> &[B::Weight] {
        self.weights.as_slice()
    }

    /// Audio samples per latent frame (the product of the strides).
    pub fn upsampling(&self) -> usize {
        self.config.strides.iter().product()
    }

    fn id(&self, key: &str) -> WeightId {
        self.ids[key].0
    }

    /// Adds the decoder to `g`: `z` `[sum T', latent_dim]` (already scaled) to
    /// audio `[sum T' * upsampling, out_channels]`.
    pub fn build(&self, g: &mut Graph, latent_lens: &[usize], z: TensorId) -> TensorId {
        let mut lens: Vec<usize> = latent_lens.to_vec();
        let mut seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
        let mut h = self.conv(g, z, "0", KERNEL, 1, seg, None, true);
        for (b, &(_, cout, stride)) in blocks(&self.config).iter().enumerate() {
            let b = b + 1;
            let x = self.snake(g, h, &format!("{b}.layers.0"));
            lens.iter_mut().for_each(|l| *l *= stride);
            let up_seg = g.add_segments(Segments::from_lengths(lens.iter().copied()));
            h = g.temp(format!("vae.{b}.upsampled"), g.seg(up_seg).total(), cout);
            g.push(Op::ConvTranspose1d {
                x,
                w: self.id(&format!("decoder.layers.{b}.layers.1.weight")),
                bias: Some(self.id(&format!("decoder.layers.{b}.layers.1.bias"))),
                stride,
                in_segments: seg,
                out_segments: up_seg,
                out: h,
            });
            seg = up_seg;
            for (j, dilation) in DILATIONS.iter().enumerate() {
                let unit = format!("{b}.layers.{}.layers", j + 2);
                let u = self.snake(g, h, &format!("{unit}.0"));
                let u = self.conv(g, u, &format!("{unit}.1"), KERNEL, *dilation, seg, None, true);
                let u = self.snake(g, u, &format!("{unit}.2"));
                h = self.conv(g, u, &format!("{unit}.3"), 1, 1, seg, Some(h), true);
            }
        }
        let last = blocks(&self.config).len() + 1;
        let x = self.snake(g, h, &last.to_string());
        self.conv(g, x, &(last + 1).to_string(), KERNEL, 1, seg, None, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        g: &mut Graph,
        x: TensorId,
        name: &str,
        kernel: usize,
        dilation: usize,
        segments: SegmentsId,
        residual: Option<TensorId>,
        bias: bool,
    ) -> TensorId {
        let w = self.id(&format!("decoder.layers.{name}.weight"));
        let cout = self.ids[&format!("decoder.layers.{name}.weight")].1[0];
        let out = g.temp(format!("vae.{name}"), g.desc(x).rows, cout);
        g.push(Op::Conv1d {
            x,
            w,
            bias: bias.then(|| self.id(&format!("decoder.layers.{name}.bias"))),
            kernel,
            dilation,
            padding: dilation * (kernel - 1) / 2,
            residual,
            segments,
            out,
        });
        out
    }

    fn snake(&self, g: &mut Graph, x: TensorId, name: &str) -> TensorId {
        let d = g.desc(x).clone();
        let out = g.temp(format!("vae.{name}.snake"), d.rows, d.cols);
        g.push(Op::SnakeBeta {
            x,
            alpha: self.id(&format!("decoder.layers.{name}.alpha")),
            beta: self.id(&format!("decoder.layers.{name}.beta")),
            out,
        });
        out
    }

    /// Decodes latents `[latent_dim, T']` (one per clip) to audio `[out_channels, T' * upsampling]`.
    pub fn decode(&self, backend: &B, latents: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let c = self.config.latent_dim;
        for (i, z) in latents.iter().enumerate() {
            if z.shape.len() != 2 || z.shape[0] != c || z.shape[1] == 0 {
                return Err(Error::InvalidInput(format!(
                    "latents {i} have shape {:?}, expected [{c}, T'] with T' >= 1",
                    z.shape
                )));
            }
            ensure_finite(&format!("latents {i}"), &z.data)?;
        }
        let lens: Vec<usize> = latents.iter().map(|z| z.shape[1]).collect();
        let mut g = Graph::new();
        let z = g.input("latents", lens.iter().sum(), c);
        let audio = self.build(&mut g, &lens, z);
        g.mark_output(audio);
        let mut exec = Executor::new(backend, self.weights(), g)?;
        let scaled: Vec<f32> =
            latents.iter().flat_map(|z| z.transposed().data).map(|v| v * self.latent_scale).collect();
        exec.write(z, &scaled)?;
        exec.run()?;
        let out = exec.read(audio)?;
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
}
