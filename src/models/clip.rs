//! The CLIP ViT image tower (lova-model.md section 3) as graph construction:
//! preprocessed images `[n, 3, S, S]` in, one feature vector per image `[n, out]` out.
//!
//! Layout: each image is one sequence of `grid^2 + 1` tokens (class token
//! first, then the patches in row-major grid order); a batch of images is a
//! packed batch of such sequences, so attention never mixes images. The
//! patch-embedding conv (stride = kernel) is an im2col (`Op::Patchify`) and a
//! `Linear`, so the GPU backend needs no conv kernel.
//!
//! Weights are read under the OpenAI key layout (`visual.*`); `layout` presents
//! a Hugging Face checkpoint under the same keys.

mod layout;

pub use layout::{ClipCheckpoint, ClipLayout};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, WeightSet};
use crate::error::{Error, Result, ensure_finite};
use crate::graph::{Executor, Graph, Segments, TensorId, WeightId};
use crate::models::declare::{self, Layout, Linear, Norm, Scope};
use crate::models::layers::{
    Heads, add_positional, first_rows, layer_norm, linear, patchify, prepend_weight_row, quick_gelu, self_attention,
};
use crate::tensor::HostTensor;
use crate::weights::{SafetensorsFile, TensorSource};

/// Every CLIP ViT uses heads of 64 dims (OpenAI: `heads = width // 64`).
pub const CLIP_HEAD_DIM: usize = 64;
/// Input channels (RGB).
const CHANNELS: usize = 3;
const LN_EPS: f32 = 1e-5;
/// The MLP is 4x the width in every CLIP ViT.
const MLP_RATIO: usize = 4;

/// Sizes of a CLIP ViT image tower. The released ViT-L/14 is `CLIP_VIT_L14`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Token width W (1024 for ViT-L/14).
    pub width: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads per block, `width / CLIP_HEAD_DIM`.
    pub heads: usize,
    /// Patch side P in pixels (the patch-embedding conv's kernel and stride).
    pub patch: usize,
    /// Input image side S in pixels; a multiple of `patch`.
    pub image_size: usize,
    /// Dimension of the projected feature per image (768 for ViT-L/14).
    pub output_dim: usize,
}

/// OpenAI CLIP ViT-L/14 at 224 px, the image encoder whose features LoVA is conditioned on.
pub const CLIP_VIT_L14: ClipVisionConfig =
    ClipVisionConfig { width: 1024, layers: 24, heads: 16, patch: 14, image_size: 224, output_dim: 768 };

impl ClipVisionConfig {
    /// A one-block image tower of width 64 with `output_dim` features, for the
    /// demo and the benchmarks' tiny pipeline (random weights, nothing learned).
    pub fn tiny(output_dim: usize) -> Self {
        ClipVisionConfig { width: 64, layers: 1, heads: 1, patch: 32, image_size: 224, output_dim }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Tokens per image: the patches and the class token.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Hidden width of each block's MLP (4 x `width`).
    pub fn mlp_width(&self) -> usize {
        MLP_RATIO * self.width
    }

    /// Values per patch: the conv's fan-in.
    fn patch_len(&self) -> usize {
        CHANNELS * self.patch * self.patch
    }

    /// Infers the config from the shapes of `visual.conv1.weight` `[W, 3, P, P]`,
    /// `visual.positional_embedding` `[(S / P)^2 + 1, W]`, `visual.proj` `[W, out]`
    /// and the number of blocks. The error says which shape does not fit.
    pub fn from_shapes(
        conv1: &[usize],
        positional: &[usize],
        proj: &[usize],
        layers: usize,
    ) -> std::result::Result<Self, String> {
        let &[width, CHANNELS, patch, patch_x] = conv1 else {
            return Err(format!("`visual.conv1.weight` has shape {conv1:?}, expected [width, 3, patch, patch]"));
        };
        if patch != patch_x {
            return Err(format!("`visual.conv1.weight` has shape {conv1:?}: the patch is not square"));
        }
        let &[rows, pos_width] = positional else {
            return Err(format!("`visual.positional_embedding` has shape {positional:?}, expected [tokens, width]"));
        };
        // rows = grid^2 + 1: the grid is the exact integer square root of rows - 1.
        let grid = rows.saturating_sub(1).isqrt();
        if pos_width != width || rows == 0 || grid * grid + 1 != rows {
            return Err(format!(
                "`visual.positional_embedding` has shape {positional:?}, expected [grid^2 + 1, {width}] \
                 for width {width} (from `visual.conv1.weight`)"
            ));
        }
        let &[proj_in, output_dim] = proj else {
            return Err(format!("`visual.proj` has shape {proj:?}, expected [{width}, output_dim]"));
        };
        if proj_in != width {
            return Err(format!("`visual.proj` has shape {proj:?}, expected [{width}, output_dim]"));
        }
        let config = ClipVisionConfig {
            width,
            layers,
            heads: width / CLIP_HEAD_DIM,
            patch,
            image_size: grid * patch,
            output_dim,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses sizes the graph cannot be built for (a hand-written or corrupt config).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let c = self;
        if c.width == 0 || !c.width.is_multiple_of(CLIP_HEAD_DIM) || c.heads * CLIP_HEAD_DIM != c.width {
            return Err(format!(
                "CLIP width {} with {} heads: the width must be a positive multiple of {CLIP_HEAD_DIM} \
                 and heads = width / {CLIP_HEAD_DIM}",
                c.width, c.heads
            ));
        }
        if c.patch == 0 || c.image_size == 0 || !c.image_size.is_multiple_of(c.patch) {
            return Err(format!(
                "CLIP image size {} is not a positive multiple of the patch size {}",
                c.image_size, c.patch
            ));
        }
        if c.layers == 0 || c.output_dim == 0 {
            return Err(format!(
                "CLIP with {} layers and output dim {}: both must be positive",
                c.layers, c.output_dim
            ));
        }
        // These sizes come from a file (an engine's `clip_config`) and decide how
        // long the tensor list is and how big the graph: bounded like the model
        // config's (ViT-L/14: width 1024, 24 layers, patch 14, 224 px, output 768).
        for (name, value, max) in [
            ("width", c.width, 16384),
            ("layers", c.layers, 256),
            ("patch", c.patch, 1024),
            ("image_size", c.image_size, 4096),
            ("output_dim", c.output_dim, 16384),
        ] {
            if value > max {
                return Err(format!("CLIP {name} {value} is larger than lova-fast accepts (at most {max})"));
            }
        }
        Ok(())
    }
}

/// Opens a CLIP checkpoint in either public layout: the layout is detected,
/// the config inferred from tensor shapes, and the returned source serves
/// every image-tower tensor under its OpenAI key (`visual.*`).
pub fn open_clip(file: &SafetensorsFile) -> Result<(ClipVisionConfig, ClipCheckpoint<'_>)> {
    let ckpt = ClipCheckpoint::new(file)?;
    Ok((ckpt.config()?, ckpt))
}

/// Every tensor the image tower reads: OpenAI-layout key (no prefix) and
/// stored shape, in load order. A converter copies exactly these into an engine file.
pub fn clip_tensor_list(cfg: &ClipVisionConfig) -> Vec<(String, Vec<usize>)> {
    // Listing declares into a Vec: it cannot fail.
    let (list, _) = declare::list(|d| declare(cfg, d)).expect("listing never fails");
    list.into_iter().map(|d| (d.key, d.shape)).collect()
}

struct BlockIds {
    ln_1: Norm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    c_proj: Linear,
}

struct ClipIds {
    /// `conv1.weight` used as `[W, 3 * P * P]`.
    patch_embed: Linear,
    class_embedding: WeightId,
    positional: WeightId,
    ln_pre: Norm,
    blocks: Vec<BlockIds>,
    ln_post: Norm,
    /// `proj` used transposed, `[out, W]`: the `Linear` layout.
    proj_t: Linear,
}

/// Declares every image-tower weight under its OpenAI key (lova-model.md section 3), in load order.
fn declare(c: &ClipVisionConfig, d: &mut Scope) -> Result<ClipIds> {
    let (w, mlp) = (c.width, c.mlp_width());
    fn ln(d: &mut Scope, name: &str, w: usize) -> Result<Norm> {
        d.pp(name).layer_norm(w, ["weight", "bias"], LN_EPS)
    }
    let mut d = d.pp("visual");
    let conv1 = Layout::Reshaped(vec![w, c.patch_len()]);
    let patch_embed = Linear {
        weight: d.declare_as("conv1.weight", &[w, CHANNELS, c.patch, c.patch], conv1)?,
        bias: None,
        out_features: w,
    };
    let class_embedding = d.declare("class_embedding", &[w])?;
    let positional = d.declare("positional_embedding", &[c.tokens(), w])?;
    let ln_pre = ln(&mut d, "ln_pre", w)?;
    let mut blocks = Vec::with_capacity(c.layers);
    for i in 0..c.layers {
        let mut d = d.pp(format!("transformer.resblocks.{i}"));
        blocks.push(BlockIds {
            ln_1: ln(&mut d, "ln_1", w)?,
            // nn.MultiheadAttention names its packed projection `in_proj_weight`/`in_proj_bias`.
            in_proj: Linear {
                weight: d.declare("attn.in_proj_weight", &[3 * w, w])?,
                bias: Some(d.declare("attn.in_proj_bias", &[3 * w])?),
                out_features: 3 * w,
            },
            out_proj: d.pp("attn.out_proj").linear(w, w, true)?,
            ln_2: ln(&mut d, "ln_2", w)?,
            c_fc: d.pp("mlp.c_fc").linear(mlp, w, true)?,
            c_proj: d.pp("mlp.c_proj").linear(w, mlp, true)?,
        });
    }
    let ln_post = ln(&mut d, "ln_post", w)?;
    let proj = d.declare_as("proj", &[w, c.output_dim], Layout::Transposed)?;
    let proj_t = Linear { weight: proj, bias: None, out_features: c.output_dim };
    Ok(ClipIds { patch_embed, class_embedding, positional, ln_pre, blocks, ln_post, proj_t })
}

/// The CLIP image tower: its config and its weights uploaded to backend `B`; builds graphs that run it.
pub struct ClipVision<B: Backend> {
    /// The sizes the weights were loaded for.
    pub config: ClipVisionConfig,
    weights: WeightSet<B>,
    ids: ClipIds,
}

impl<B: Backend> ClipVision<B> {
    /// Loads the image tower from `source`, reading the OpenAI keys under
    /// `prefix` (`""` for a CLIP checkpoint opened with `open_clip`, the engine
    /// file's prefix otherwise). Errors name the missing or misshapen key.
    pub fn load(backend: &B, source: &dyn TensorSource, prefix: &str, config: &ClipVisionConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidInput)?;
        let (weights, ids) = declare::upload(backend, source, prefix, |d| declare(config, d))?;
        Ok(ClipVision { config: *config, weights, ids })
    }

    /// The uploaded weights, indexed by the `WeightId`s of the graphs this tower builds.
    pub fn weights(&self) -> &[B::Weight] {
        self.weights.as_slice()
    }

    /// Adds the image tower to `g` for `n` images. `images` is `[n, 3 * S * S]`
    /// (each image CHW, preprocessed and normalised). Returns the features `[n, out]`.
    pub fn build(&self, g: &mut Graph, images: TensorId, n: usize) -> TensorId {
        let c = &self.config;
        let ids = &self.ids;
        let patches_per_image = c.grid() * c.grid();
        let patch_seg = g.add_segments(Segments::from_lengths(std::iter::repeat_n(patches_per_image, n)));
        let token_seg = g.add_segments(Segments::from_lengths(std::iter::repeat_n(c.tokens(), n)));

        // Patch embedding: the stride-P conv without bias as im2col + Linear.
        let patches = patchify(g, "patches", images, CHANNELS, c.image_size, c.patch);
        let embedded = linear(g, "patch_embed", patches, &ids.patch_embed, None);

        // Class token first, then learned positions (unscaled), then ln_pre.
        let tokens = prepend_weight_row(g, "tokens", ids.class_embedding, embedded, patch_seg, token_seg);
        let with_pos = add_positional(g, "tokens_pos", tokens, ids.positional, 1.0, token_seg);
        let mut h = layer_norm(g, "ln_pre", with_pos, &ids.ln_pre, None);

        let heads = Heads {
            heads: c.heads,
            kv_heads: c.heads,
            head_dim: CLIP_HEAD_DIM,
            scale: (CLIP_HEAD_DIM as f32).powf(-0.5),
            rope: None,
        };
        for (i, block) in ids.blocks.iter().enumerate() {
            // x = x + out_proj(attn(ln_1(x))): every image attends to its own tokens, no mask.
            let n1 = layer_norm(g, format!("l{i}.ln_1"), h, &block.ln_1, None);
            let qkv = linear(g, format!("l{i}.qkv"), n1, &block.in_proj, None);
            let attn = self_attention(g, format!("l{i}.attn"), qkv, token_seg, &heads);
            h = linear(g, format!("l{i}.after_attn"), attn, &block.out_proj, Some(h));

            // x = x + c_proj(QuickGELU(c_fc(ln_2(x)))).
            let n2 = layer_norm(g, format!("l{i}.ln_2"), h, &block.ln_2, None);
            let up = linear(g, format!("l{i}.c_fc"), n2, &block.c_fc, None);
            let act = quick_gelu(g, format!("l{i}.quick_gelu"), up);
            h = linear(g, format!("l{i}.after_mlp"), act, &block.c_proj, Some(h));
        }

        // Only the class tokens go on: ln_post, then x @ proj. No L2 normalisation.
        let cls = first_rows(g, "class_tokens", h, token_seg);
        let cls = layer_norm(g, "ln_post", cls, &ids.ln_post, None);
        linear(g, "features", cls, &ids.proj_t, None)
    }

    /// Encodes preprocessed images `[n, 3, S, S]` into features `[n, output_dim]`,
    /// `CLIP_BATCH` images per graph run (one graph planned once for
    /// `min(n, CLIP_BATCH)` images, reused for every batch). Wrong shapes and
    /// non-finite pixels are errors.
    pub fn encode(&self, backend: &B, images: &HostTensor) -> Result<HostTensor> {
        let s = self.config.image_size;
        let n = match images.shape.as_slice() {
            &[n, CHANNELS, h, w] if h == s && w == s && n > 0 => n,
            other => {
                return Err(Error::InvalidInput(format!(
                    "CLIP images have shape {other:?}, expected [n, {CHANNELS}, {s}, {s}] with n >= 1"
                )));
            }
        };
        let mut encoder = self.encoder(backend, n.min(CLIP_BATCH))?;
        let mut features = Vec::with_capacity(n * self.config.output_dim);
        for batch in images.data.chunks(encoder.batch * encoder.image_len) {
            features.extend(encoder.encode(batch)?);
        }
        Ok(HostTensor::new(vec![n, self.config.output_dim], features))
    }

    /// A planned graph for up to `batch` images, to encode many batches without
    /// planning or allocating again (see `ClipEncoder::encode`).
    ///
    /// Memory grows with the batch (the MLP activation alone is `batch * tokens * 4W`
    /// floats, ~270 MB for 64 ViT-L images).
    pub fn encoder<'w>(&'w self, backend: &'w B, batch: usize) -> Result<ClipEncoder<'w, B>> {
        if batch == 0 {
            return Err(Error::InvalidInput("a CLIP batch must hold at least one image".into()));
        }
        let s = self.config.image_size;
        let image_len = CHANNELS * s * s;
        let mut g = Graph::new();
        let input = g.input("images", batch, image_len);
        let features = self.build(&mut g, input, batch);
        g.mark_output(features);
        let exec = Executor::new(backend, self.weights(), g)?;
        Ok(ClipEncoder { exec, input, features, batch, image_len, staging: Vec::new() })
    }
}

/// Images per graph run of `ClipVision::encode` (and `lova-fast infer`): large
/// enough to fill a GPU with ViT-L GEMMs (64 x 257 = 16448 rows), small enough
/// that the activations stay under ~1 GB.
pub const CLIP_BATCH: usize = 64;

/// One planned CLIP graph for `batch` images (`ClipVision::encoder`).
pub struct ClipEncoder<'w, B: Backend> {
    exec: Executor<'w, B>,
    input: TensorId,
    features: TensorId,
    /// Images per run.
    pub batch: usize,
    /// Values per preprocessed image (3 * S * S).
    pub image_len: usize,
    staging: Vec<f32>,
}

impl<B: Backend> ClipEncoder<'_, B> {
    /// Encodes 1..=batch preprocessed images (`n * 3 * S * S` values, CHW each) into
    /// their features (`n * output_dim` values). A short batch is padded with
    /// zero images, whose features are dropped.
    pub fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        let n = pixels.len() / self.image_len;
        if n == 0 || n > self.batch || pixels.len() != n * self.image_len {
            return Err(Error::InvalidInput(format!(
                "{} pixel values are not 1 to {} images of {} values",
                pixels.len(),
                self.batch,
                self.image_len
            )));
        }
        ensure_finite("CLIP input images", pixels)?;
        if n == self.batch {
            self.exec.write(self.input, pixels)?;
        } else {
            self.staging.clear();
            self.staging.extend_from_slice(pixels);
            self.staging.resize(self.batch * self.image_len, 0.0);
            self.exec.write(self.input, &self.staging)?;
        }
        self.exec.run()?;
        let mut out = self.exec.read(self.features)?;
        out.truncate(n * (out.len() / self.batch));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::backend::CpuBackend;
    use crate::weights::RandomWeights;

    #[test]
    fn vit_l14_shapes_give_the_released_config() {
        let cfg = ClipVisionConfig::from_shapes(&[1024, 3, 14, 14], &[257, 1024], &[1024, 768], 24).unwrap();
        assert_eq!(cfg, CLIP_VIT_L14);
        assert_eq!((cfg.grid(), cfg.tokens(), cfg.mlp_width()), (16, 257, 4096));
        let params: usize = clip_tensor_list(&cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // ~304 M parameters (lova-model.md section 0).
        assert!((303_000_000..305_000_000).contains(&params), "{params}");
    }

    #[test]
    fn configs_from_a_file_are_bounded() {
        assert_eq!(CLIP_VIT_L14.validate(), Ok(()));
        for (field, cfg) in [
            ("layers", ClipVisionConfig { layers: 1 << 40, ..CLIP_VIT_L14 }),
            ("width", ClipVisionConfig { width: 64 << 20, heads: 1 << 20, ..CLIP_VIT_L14 }),
            ("image_size", ClipVisionConfig { image_size: 14 << 20, ..CLIP_VIT_L14 }),
            ("output_dim", ClipVisionConfig { output_dim: usize::MAX, ..CLIP_VIT_L14 }),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_naming_the_key() {
        let bad = [
            (vec![1024, 3, 14], vec![257, 1024], vec![1024, 768], "visual.conv1.weight"),
            (vec![1024, 4, 14, 14], vec![257, 1024], vec![1024, 768], "visual.conv1.weight"),
            (vec![1024, 3, 14, 13], vec![257, 1024], vec![1024, 768], "visual.conv1.weight"),
            (vec![1024, 3, 14, 14], vec![258, 1024], vec![1024, 768], "visual.positional_embedding"),
            (vec![1024, 3, 14, 14], vec![257, 768], vec![1024, 768], "visual.positional_embedding"),
            (vec![1024, 3, 14, 14], vec![257, 1024], vec![768, 1024], "visual.proj"),
            (vec![1000, 3, 14, 14], vec![257, 1000], vec![1000, 768], "multiple of 64"),
        ];
        for (conv1, pos, proj, needle) in bad {
            let e = ClipVisionConfig::from_shapes(&conv1, &pos, &proj, 24).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(ClipVisionConfig::from_shapes(&[128, 3, 14, 14], &[257, 128], &[128, 64], 0).is_err());
    }

    /// Records the keys and shapes a model asks for; serves random values.
    struct Recording {
        inner: RandomWeights,
        asked: RefCell<Vec<(String, Vec<usize>)>>,
    }

    impl TensorSource for Recording {
        fn describe(&self) -> String {
            "recording".into()
        }
        fn tensor(&self, key: &str, shape: &[usize]) -> Result<HostTensor> {
            self.asked.borrow_mut().push((key.to_string(), shape.to_vec()));
            self.inner.tensor(key, shape)
        }
    }

    #[test]
    fn load_reads_exactly_the_tensor_list_under_the_prefix() {
        let cfg = ClipVisionConfig { width: 64, layers: 3, heads: 1, patch: 4, image_size: 8, output_dim: 5 };
        let src = Recording { inner: RandomWeights { seed: 1 }, asked: RefCell::new(Vec::new()) };
        let clip = ClipVision::load(&CpuBackend, &src, "clip.", &cfg).unwrap();
        let want: Vec<(String, Vec<usize>)> =
            clip_tensor_list(&cfg).into_iter().map(|(k, s)| (format!("clip.{k}"), s)).collect();
        assert_eq!(*src.asked.borrow(), want);
        // And the graph runs: 2 images of 8x8 in 2x2 patches of 4 -> [2, 5].
        let images = HostTensor::new(vec![2, 3, 8, 8], (0..384).map(|i| (i as f32 * 0.37).sin()).collect());
        let f = clip.encode(&CpuBackend, &images).unwrap();
        assert_eq!(f.shape, [2, 5]);
        assert!(f.data.iter().all(|v| v.is_finite()));
    }

    /// A planned encoder reused over batches, the last one short (zero-padded), gives
    /// each image the features it gets alone: images never mix.
    #[test]
    fn encoder_batches_equal_single_images() {
        let cfg = ClipVisionConfig { width: 64, layers: 2, heads: 1, patch: 4, image_size: 8, output_dim: 5 };
        let clip = ClipVision::load(&CpuBackend, &RandomWeights { seed: 3 }, "", &cfg).unwrap();
        let images: Vec<f32> = (0..5 * 192).map(|i| (i as f32 * 0.61).sin()).collect();
        let mut encoder = clip.encoder(&CpuBackend, 2).unwrap();
        let batched: Vec<f32> = images.chunks(2 * 192).flat_map(|b| encoder.encode(b).unwrap()).collect();
        assert_eq!(batched.len(), 5 * 5);
        for (i, image) in images.chunks(192).enumerate() {
            let alone = clip.encode(&CpuBackend, &HostTensor::new(vec![1, 3, 8, 8], image.to_vec())).unwrap();
            for (a, b) in alone.data.iter().zip(&batched[i * 5..(i + 1) * 5]) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "image {i}: {a} vs {b}");
            }
        }
        assert!(encoder.encode(&images[..3 * 192]).is_err(), "more images than the batch");
        assert!(encoder.encode(&images[..100]).is_err(), "not whole images");
    }

    #[test]
    fn inconsistent_configs_are_refused_at_load() {
        let ok = ClipVisionConfig { width: 64, layers: 1, heads: 1, patch: 4, image_size: 8, output_dim: 5 };
        for cfg in [
            ClipVisionConfig { heads: 2, ..ok },
            ClipVisionConfig { image_size: 9, ..ok },
            ClipVisionConfig { patch: 0, ..ok },
            ClipVisionConfig { layers: 0, ..ok },
        ] {
            assert!(ClipVision::load(&CpuBackend, &RandomWeights { seed: 1 }, "", &cfg).is_err(), "{cfg:?}");
        }
    }
}
