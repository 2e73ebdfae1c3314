//! The LoVA-format `model_config.json` (lova-model.md section 1).
//!
//! The file is read as untyped JSON and every field is fetched by its dotted
//! path, so that an error can name exactly the field that is missing or holds a
//! value the engine does not implement. Values the engine does not support are
//! refused here, never silently ignored further down.

use serde_json::Value;

use crate::error::{Error, Result};

/// JSON of `LovaConfig::tiny`.
pub const TINY_CONFIG_JSON: &str = include_str!("../tests/fixtures/tiny/model_config.json");

/// The released config, shipped with the binary so `infer` works without `--config`.
pub const RELEASED_CONFIG_JSON: &str = include_str!("../configs/lova-vl30.json");

/// Head width of every attention in the DiT; the kernels and the RoPE layout assume it.
pub const HEAD_DIM: usize = 64;
/// Dimensions of each head that RoPE rotates (the first half of the head).
pub const ROTARY_DIM: usize = 32;

/// Largest config file read (the released one is 2 KiB): a bigger file is not a
/// config, and reading it whole would allocate as much as its size.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Inclusive bounds of every size a config may hold. Sizes from a file decide
/// how much is allocated (tensor lists, graphs, arenas), so each is bounded
/// here, before anything uses it, with room of 10x or more over the released
/// model (in brackets) for variants, but far from what would overflow or
/// exhaust memory while planning: a field outside its range is an error that
/// names it.
pub mod limits {
    /// DiT latent channels \[64\].
    pub const IO_CHANNELS: (usize, usize) = (1, 1024);
    /// DiT width \[1536\]; a multiple of the head width besides.
    pub const EMBED_DIM: (usize, usize) = (64, 16384);
    /// DiT blocks \[24\].
    pub const DEPTH: (usize, usize) = (1, 256);
    /// DiT heads \[24\].
    pub const NUM_HEADS: (usize, usize) = (1, 256);
    /// Width of the video tokens \[768\].
    pub const COND_TOKEN_DIM: (usize, usize) = (64, 16384);
    /// Rows of the position tables \[3000\].
    pub const MAX_POSITIONS: (usize, usize) = (2, 65536);
    /// Audio channels out of the VAE \[2\].
    pub const OUT_CHANNELS: (usize, usize) = (1, 16);
    /// VAE base width \[128\].
    pub const VAE_CHANNELS: (usize, usize) = (1, 4096);
    /// VAE blocks, i.e. entries of c_mults and strides \[5\].
    pub const VAE_BLOCKS: (usize, usize) = (1, 16);
    /// One channel multiplier \[1..16\].
    pub const C_MULT: (usize, usize) = (1, 64);
    /// Widest VAE layer, channels * c_mult \[2048\].
    pub const VAE_WIDTH: usize = 65536;
    /// One upsampling stride \[2..8\].
    pub const STRIDE: (usize, usize) = (1, 64);
    /// Product of the strides, and samples per latent frame \[2048\].
    pub const UPSAMPLING: (usize, usize) = (1, 65536);
    /// Audio sample rate in Hz \[44100\].
    pub const SAMPLE_RATE: (usize, usize) = (1, 768_000);
    /// Audio channels \[2\].
    pub const AUDIO_CHANNELS: (usize, usize) = (1, 16);
    /// Video frames per second the DiT reads \[8\]: below 1/1000 or above 1000
    /// a clip's frame count or its length in seconds stops being meaningful.
    pub const FPS: (f64, f64) = (1e-3, 1000.0);
    /// `model.pretransform.scale` \[1\]: latents are multiplied by it, so a scale
    /// far from 1 turns ordinary latents into overflow or zeros.
    pub const LATENT_SCALE: (f64, f64) = (1e-6, 1e6);
}

/// How the DiT feeds the timestep (global) conditioning into the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalCondType {
    /// The timestep embedding is prepended to the audio tokens as token 0 (LoVA).
    Prepend,
    /// The timestep embedding modulates LayerNorms through `to_scale_shift_gate`.
    AdaLn,
}

/// Shape of the diffusion transformer (`model.diffusion` in the checkpoint config).
#[derive(Debug, Clone, PartialEq)]
pub struct DitConfig {
    /// Channels of the audio latent the DiT denoises (64 in vl30).
    pub io_channels: usize,
    /// Transformer width; a multiple of `HEAD_DIM`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Self-attention heads, each `HEAD_DIM` wide (`embed_dim / HEAD_DIM`).
    pub num_heads: usize,
    /// Width of the video (CLIP) tokens fed to cross-attention.
    pub cond_token_dim: usize,
    /// Where the timestep embedding enters the transformer.
    pub global_cond_type: GlobalCondType,
    /// Rows of the learned position tables PE_z and PE_c.
    pub max_positions: usize,
}

impl DitConfig {
    /// Width of every attention head: always `HEAD_DIM` (64).
    pub fn head_dim(&self) -> usize {
        HEAD_DIM
    }
    /// Key/value heads of the cross-attention (one per 64 dims of the video tokens).
    pub fn kv_heads(&self) -> usize {
        self.cond_token_dim / HEAD_DIM
    }
    /// Width of the SwiGLU hidden layer (stable-audio-tools' ff_mult = 4).
    pub fn ff_inner(&self) -> usize {
        4 * self.embed_dim
    }
    /// Tokens the transformer sees for `latent_len` audio frames.
    pub fn transformer_len(&self, latent_len: usize) -> usize {
        match self.global_cond_type {
            // Saturating: an absurd length must reach `check_lengths` as too long, not wrap.
            GlobalCondType::Prepend => latent_len.saturating_add(1),
            GlobalCondType::AdaLn => latent_len,
        }
    }
}

/// Shape of the Oobleck VAE decoder that turns latents into waveforms.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeDecoderConfig {
    /// Audio channels the decoder writes (2 for stereo).
    pub out_channels: usize,
    /// Base width; block `i` is `channels * c_mults[i]` wide.
    pub channels: usize,
    /// Channel multipliers of the decoder blocks, as listed in the checkpoint config.
    pub c_mults: Vec<usize>,
    /// Upsampling factor of each decoder block; their product is samples per latent frame.
    pub strides: Vec<usize>,
    /// Channels of the latent the decoder reads.
    pub latent_dim: usize,
    /// Snake activations (true) instead of ELU between convolutions.
    pub use_snake: bool,
    /// Whether the output waveform goes through `tanh`.
    pub final_tanh: bool,
}

/// The whole model config: DiT, VAE decoder and the audio/video rates tying them together.
#[derive(Debug, Clone, PartialEq)]
pub struct LovaConfig {
    /// Output audio sample rate in Hz (44100).
    pub sample_rate: u32,
    /// Channels of the output audio (2).
    pub audio_channels: usize,
    /// Video frames per second the DiT was trained on.
    pub fps: f64,
    /// Audio samples per latent frame (2048).
    pub downsampling_ratio: usize,
    /// Latents are multiplied by this before decoding.
    pub latent_scale: f64,
    /// Name of the CLIP vision model that makes the video tokens, when the config gives one.
    pub clip_name: Option<String>,
    /// The diffusion transformer.
    pub dit: DitConfig,
    /// The VAE decoder.
    pub vae_decoder: VaeDecoderConfig,
}

impl LovaConfig {
    /// Reads and validates a `model_config.json` (at most `MAX_CONFIG_BYTES`).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(Error::Config {
                path: path.display().to_string(),
                reason: format!("is {size} bytes, not a model config (at most {MAX_CONFIG_BYTES} bytes)"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::Config { path: field, reason } => {
                Error::Config { path: format!("{}: {field}", path.display()), reason }
            }
            other => other,
        })
    }

    /// The tiny test model's config (`tests/fixtures/tiny`: 2 DiT layers of
    /// width 256, 128-d video tokens, a 4-channel VAE): for examples, demos and
    /// tests with random weights, whose audio is noise.
    pub fn tiny() -> Self {
        Self::from_json_str(TINY_CONFIG_JSON).expect("the shipped tiny config is valid")
    }

    /// The released vl30 config (`configs/lova-vl30.json`).
    pub fn released() -> Self {
        Self::from_json_str(RELEASED_CONFIG_JSON).expect("the shipped config is valid")
    }

    /// Parses and validates config JSON; every size is checked against `limits`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config { path: "(file)".into(), reason: format!("not valid JSON: {e}") })?;
        let j = Json(&root);
        let diff = "model.diffusion.config";

        let transformer_type = j.str_or(&format!("{diff}.transformer_type"), "continuous_transformer")?;
        refuse_unless(&format!("{diff}.transformer_type"), &transformer_type, &["continuous_transformer"])?;
        let objective = j.str_or("model.diffusion.diffusion_objective", "v")?;
        refuse_unless("model.diffusion.diffusion_objective", &objective, &["v"])?;
        if let Some(p) = j.opt(&format!("{diff}.patch_size"))
            && p.as_u64() != Some(1)
        {
            return Err(unsupported(&format!("{diff}.patch_size"), p, "only 1"));
        }
        for (field, wanted) in [
            ("rotary_cond_emb", false),
            ("use_sinusoidal_emb", false),
            ("project_cond_tokens", false),
            ("use_abs_pos_emb", true),
        ] {
            let path = format!("{diff}.{field}");
            if j.bool_or(&path, wanted)? != wanted {
                return Err(unsupported(&path, &Value::Bool(!wanted), &format!("only {wanted}")));
            }
        }
        let global_cond_type = match j.str_or(&format!("{diff}.global_cond_type"), "prepend")?.as_str() {
            "prepend" => GlobalCondType::Prepend,
            "adaLN" => GlobalCondType::AdaLn,
            other => {
                return Err(unsupported(
                    &format!("{diff}.global_cond_type"),
                    &Value::String(other.into()),
                    "\"prepend\" or \"adaLN\"",
                ));
            }
        };

        let dit = DitConfig {
            io_channels: j.bounded(&format!("{diff}.io_channels"), limits::IO_CHANNELS)?,
            embed_dim: j.bounded(&format!("{diff}.embed_dim"), limits::EMBED_DIM)?,
            depth: j.bounded(&format!("{diff}.depth"), limits::DEPTH)?,
            num_heads: j.bounded(&format!("{diff}.num_heads"), limits::NUM_HEADS)?,
            cond_token_dim: j.bounded(&format!("{diff}.cond_token_dim"), limits::COND_TOKEN_DIM)?,
            global_cond_type,
            max_positions: j.bounded_or(&format!("{diff}.abs_pos_emb_max_length"), 3000, limits::MAX_POSITIONS)?,
        };
        check_dit_dims(&dit)?;

        let dec = "model.pretransform.config.decoder.config";
        let vae_decoder = VaeDecoderConfig {
            out_channels: j.bounded(&format!("{dec}.out_channels"), limits::OUT_CHANNELS)?,
            channels: j.bounded(&format!("{dec}.channels"), limits::VAE_CHANNELS)?,
            c_mults: j.bounded_list(&format!("{dec}.c_mults"), limits::VAE_BLOCKS, limits::C_MULT)?,
            strides: j.bounded_list(&format!("{dec}.strides"), limits::VAE_BLOCKS, limits::STRIDE)?,
            latent_dim: j.bounded(&format!("{dec}.latent_dim"), limits::IO_CHANNELS)?,
            use_snake: j.bool_or(&format!("{dec}.use_snake"), false)?,
            final_tanh: j.bool_or(&format!("{dec}.final_tanh"), true)?,
        };
        check_vae_dims(&vae_decoder)?;
        if vae_decoder.latent_dim != dit.io_channels {
            return Err(Error::Config {
                path: format!("{dec}.latent_dim"),
                reason: format!(
                    "is {} but the DiT works on {} latent channels (model.diffusion.config.io_channels)",
                    vae_decoder.latent_dim, dit.io_channels
                ),
            });
        }

        let fps = j.f64_bounded("fps", None, limits::FPS)?;
        let sample_rate = j.bounded("sample_rate", limits::SAMPLE_RATE)?;
        let ratio_field = "model.pretransform.config.downsampling_ratio";
        let downsampling_ratio = j.bounded(ratio_field, limits::UPSAMPLING)?;
        // Audio lengths are computed with the ratio, the decoder produces the
        // strides' product per latent frame: they must agree.
        let upsampling: usize = vae_decoder.strides.iter().product();
        if downsampling_ratio != upsampling {
            return Err(Error::Config {
                path: ratio_field.into(),
                reason: format!(
                    "is {downsampling_ratio} but the decoder's strides {:?} make {upsampling} samples per latent frame",
                    vae_decoder.strides
                ),
            });
        }
        Ok(LovaConfig {
            sample_rate: sample_rate as u32,
            audio_channels: j.bounded("audio_channels", limits::AUDIO_CHANNELS)?,
            fps,
            downsampling_ratio,
            latent_scale: j.f64_bounded("model.pretransform.scale", Some(1.0), limits::LATENT_SCALE)?,
            clip_name: j.opt_str("model.conditioning.configs.0.config.clip_name")?,
            dit,
            vae_decoder,
        })
    }

    /// Checks an audio length a user asked for (`--seconds`, a decode length):
    /// finite, at least one audio sample, and no longer than the position
    /// tables allow. Call it where the number enters, before planning.
    pub fn check_seconds(&self, what: &str, seconds: f64) -> Result<()> {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(Error::InvalidInput(format!("{what} must be a positive number of seconds, got {seconds}")));
        }
        if crate::audio::samples_for_seconds(seconds, self.sample_rate) == 0 {
            return Err(Error::InvalidInput(format!(
                "{what} of {seconds} s is shorter than one audio sample at {} Hz",
                self.sample_rate
            )));
        }
        // The position table bounds the latent length; past it the length is refused
        // here, before it turns into a frame count.
        let max_seconds = (self.dit.max_positions * self.downsampling_ratio) as f64 / self.sample_rate as f64;
        if seconds > max_seconds {
            return Err(Error::Limit(format!(
                "{what} of {seconds} s is longer than the model's position table allows (at most {max_seconds:.1} s)"
            )));
        }
        Ok(())
    }

    /// Latent frames for `seconds` of audio: `ceil(D * sample_rate / ratio)` (lova-model.md 7).
    pub fn latent_len_for_seconds(&self, seconds: f64) -> usize {
        // Multiply before dividing so that exact durations (2.0 s) stay exact.
        (seconds * self.sample_rate as f64 / self.downsampling_ratio as f64).ceil() as usize
    }

    /// Video duration implied by `frames` feature rows at the model's fps.
    pub fn seconds_for_frames(&self, frames: usize) -> f64 {
        frames as f64 / self.fps
    }

    /// Checks a request's lengths against the learned position tables.
    pub fn check_lengths(&self, latent_len: usize, frames: usize) -> Result<()> {
        let max = self.dit.max_positions;
        let positions = self.dit.transformer_len(latent_len);
        if latent_len == 0 {
            return Err(Error::InvalidInput("the clip is shorter than one latent frame".into()));
        }
        if positions > max {
            let max_latents = max - (positions - latent_len);
            let max_seconds = (max_latents * self.downsampling_ratio) as f64 / self.sample_rate as f64;
            return Err(Error::Limit(format!(
                "the clip needs {latent_len} latent frames ({positions} positions) but the model's \
                 position table (abs_pos_emb_max_length) has {max}: at most {max_latents} latent \
                 frames, i.e. {max_seconds:.1} s of audio"
            )));
        }
        if frames == 0 {
            return Err(Error::InvalidInput("the features hold no video frame (N = 0)".into()));
        }
        if frames > max {
            return Err(Error::Limit(format!(
                "the clip has {frames} video frames but the model's video position table \
                 (abs_pos_emb_max_length) has {max} rows: at most {max} frames, i.e. {:.1} s at {} fps",
                max as f64 / self.fps,
                self.fps
            )));
        }
        Ok(())
    }
}

/// Checks a frame rate a user gave (`--fps` of an image folder, `--sample-fps`):
/// finite and within `limits::FPS`, so that frame counts and durations derived
/// from it are meaningful. `what` names the option in the message.
pub fn check_frame_rate(what: &str, fps: f64) -> Result<()> {
    let (min, max) = limits::FPS;
    if !(fps.is_finite() && (min..=max).contains(&fps)) {
        return Err(Error::InvalidInput(format!(
            "{what} must be a frame rate from {min} to {max} frames per second, got {fps}"
        )));
    }
    Ok(())
}

fn check_dit_dims(d: &DitConfig) -> Result<()> {
    let diff = "model.diffusion.config";
    if d.num_heads == 0 || d.embed_dim != d.num_heads * HEAD_DIM {
        return Err(unsupported(
            &format!("{diff}.num_heads"),
            &Value::from(d.num_heads),
            &format!("embed_dim / num_heads must be {HEAD_DIM}; embed_dim is {}", d.embed_dim),
        ));
    }
    if d.cond_token_dim == 0 || !d.cond_token_dim.is_multiple_of(HEAD_DIM) || !d.num_heads.is_multiple_of(d.kv_heads())
    {
        return Err(unsupported(
            &format!("{diff}.cond_token_dim"),
            &Value::from(d.cond_token_dim),
            &format!("a multiple of {HEAD_DIM} whose head count divides num_heads = {}", d.num_heads),
        ));
    }
    if d.io_channels == 0 || d.depth == 0 || d.max_positions < 2 {
        return Err(Error::Config {
            path: diff.into(),
            reason: "io_channels, depth and abs_pos_emb_max_length must be positive".into(),
        });
    }
    Ok(())
}

/// The VAE's lists must pair up (one stride per channel multiplier: the decoder
/// walks them together) and its widths and total upsampling stay in bounds.
fn check_vae_dims(v: &VaeDecoderConfig) -> Result<()> {
    let dec = "model.pretransform.config.decoder.config";
    if v.strides.len() != v.c_mults.len() {
        return Err(Error::Config {
            path: format!("{dec}.strides"),
            reason: format!(
                "has {} entries but c_mults has {}: one stride per channel multiplier",
                v.strides.len(),
                v.c_mults.len()
            ),
        });
    }
    if let Some(m) = v.c_mults.iter().find(|&&m| v.channels * m > limits::VAE_WIDTH) {
        return Err(Error::Config {
            path: format!("{dec}.c_mults"),
            reason: format!(
                "channels {} x multiplier {m} is wider than the {} channels lova-fast accepts",
                v.channels,
                limits::VAE_WIDTH
            ),
        });
    }
    // Each stride is at most 64 and there are at most 16: fold in u128 so the product cannot wrap.
    let upsampling: u128 = v.strides.iter().map(|&s| s as u128).product();
    if upsampling > limits::UPSAMPLING.1 as u128 {
        return Err(Error::Config {
            path: format!("{dec}.strides"),
            reason: format!(
                "{:?} upsample {upsampling}x, more than the {}x lova-fast accepts",
                v.strides,
                limits::UPSAMPLING.1
            ),
        });
    }
    Ok(())
}

fn unsupported(field: &str, value: &Value, supported: &str) -> Error {
    Error::UnsupportedConfig { field: field.into(), value: value.to_string(), supported: supported.into() }
}

fn refuse_unless(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Err(unsupported(field, &Value::String(value.into()), &format!("only {}", list.join(", "))))
}

/// Dotted-path access into the JSON tree with errors that name the path.
struct Json<'a>(&'a Value);

impl Json<'_> {
    fn opt(&self, path: &str) -> Option<&Value> {
        let mut v = self.0;
        for part in path.split('.') {
            v = match part.parse::<usize>() {
                Ok(i) if v.is_array() => v.get(i)?,
                _ => v.get(part)?,
            };
        }
        Some(v)
    }

    fn req(&self, path: &str) -> Result<&Value> {
        self.opt(path).ok_or_else(|| Error::Config { path: path.into(), reason: "missing".into() })
    }

    fn wrong(path: &str, want: &str, got: &Value) -> Error {
        Error::Config { path: path.into(), reason: format!("expected {want}, found {got}") }
    }

    fn out_of_range<T: std::fmt::Display>(path: &str, value: impl std::fmt::Display, (min, max): (T, T)) -> Error {
        Error::Config {
            path: path.into(),
            reason: format!("is {value}, outside the range lova-fast accepts ({min} to {max})"),
        }
    }

    /// A size within `range` (inclusive).
    fn bounded(&self, path: &str, range: (usize, usize)) -> Result<usize> {
        let v = self.req(path)?;
        let n = v.as_u64().ok_or_else(|| Self::wrong(path, "a non-negative integer", v))?;
        if n < range.0 as u64 || n > range.1 as u64 {
            return Err(Self::out_of_range(path, n, range));
        }
        Ok(n as usize)
    }

    fn bounded_or(&self, path: &str, default: usize, range: (usize, usize)) -> Result<usize> {
        if self.opt(path).is_none() { Ok(default) } else { self.bounded(path, range) }
    }

    /// A finite number within `range` (inclusive); `default` when absent, if any.
    fn f64_bounded(&self, path: &str, default: Option<f64>, range: (f64, f64)) -> Result<f64> {
        let x = match (self.opt(path), default) {
            (None, Some(d)) => return Ok(d),
            _ => self.f64(path)?,
        };
        // JSON cannot spell NaN or infinity; the check keeps the bound honest anyway.
        if !(x.is_finite() && x >= range.0 && x <= range.1) {
            return Err(Self::out_of_range(path, x, range));
        }
        Ok(x)
    }

    /// A list of `len` (inclusive range) sizes, each within `range`.
    fn bounded_list(&self, path: &str, len: (usize, usize), range: (usize, usize)) -> Result<Vec<usize>> {
        let v = self.req(path)?;
        let items = v.as_array().ok_or_else(|| Self::wrong(path, "a list of integers", v))?;
        if items.len() < len.0 || items.len() > len.1 {
            return Err(Error::Config {
                path: path.into(),
                reason: format!("has {} entries, lova-fast accepts {} to {}", items.len(), len.0, len.1),
            });
        }
        items
            .iter()
            .map(|x| match x.as_u64() {
                Some(n) if n >= range.0 as u64 && n <= range.1 as u64 => Ok(n as usize),
                Some(n) => Err(Self::out_of_range(path, format!("{v} (entry {n})"), range)),
                None => Err(Self::wrong(path, "a list of integers", v)),
            })
            .collect()
    }

    fn f64(&self, path: &str) -> Result<f64> {
        let v = self.req(path)?;
        v.as_f64().ok_or_else(|| Self::wrong(path, "a number", v))
    }

    fn bool_or(&self, path: &str, default: bool) -> Result<bool> {
        match self.opt(path) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Self::wrong(path, "true or false", v)),
        }
    }

    fn str_or(&self, path: &str, default: &str) -> Result<String> {
        Ok(self.opt_str(path)?.unwrap_or_else(|| default.to_string()))
    }

    fn opt_str(&self, path: &str) -> Result<Option<String>> {
        match self.opt(path) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| Self::wrong(path, "a string", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_field(path: &[&str], value: Value) -> String {
        let mut root: Value = serde_json::from_str(RELEASED_CONFIG_JSON).unwrap();
        let mut v = &mut root;
        for p in &path[..path.len() - 1] {
            v = v.get_mut(*p).unwrap();
        }
        v[path[path.len() - 1]] = value;
        root.to_string()
    }

    #[test]
    fn released_config_has_the_documented_numbers() {
        let c = LovaConfig::released();
        assert_eq!((c.dit.embed_dim, c.dit.depth, c.dit.num_heads), (1536, 24, 24));
        assert_eq!((c.dit.cond_token_dim, c.dit.kv_heads(), c.dit.io_channels), (768, 12, 64));
        assert_eq!(c.dit.global_cond_type, GlobalCondType::Prepend);
        assert_eq!((c.sample_rate, c.downsampling_ratio, c.fps), (44100, 2048, 8.0));
        assert_eq!(c.dit.max_positions, 3000);
        assert_eq!(c.vae_decoder.strides, vec![2, 4, 4, 8, 8]);
        assert_eq!(c.clip_name.as_deref(), Some("ViT-L/14"));
    }

    #[test]
    fn latent_length_uses_the_real_duration() {
        let c = LovaConfig::released();
        assert_eq!(c.latent_len_for_seconds(2.0), 44); // 43.07 rounded up
        assert_eq!(c.latent_len_for_seconds(30.0), 646);
        assert_eq!(c.latent_len_for_seconds(2048.0 / 44100.0), 1);
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let cases = [
            (
                vec!["model", "diffusion", "config", "transformer_type"],
                Value::from("x_transformer"),
                "transformer_type",
            ),
            (vec!["model", "diffusion", "config", "patch_size"], Value::from(2), "patch_size"),
            (vec!["model", "diffusion", "config", "rotary_cond_emb"], Value::from(true), "rotary_cond_emb"),
            (vec!["model", "diffusion", "diffusion_objective"], Value::from("rectified_flow"), "diffusion_objective"),
            (vec!["model", "diffusion", "config", "global_cond_type"], Value::from("film"), "global_cond_type"),
            (vec!["model", "diffusion", "config", "num_heads"], Value::from(16), "num_heads"),
        ];
        for (path, value, field) in cases {
            let err = LovaConfig::from_json_str(&with_field(&path, value.clone())).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(&value.to_string()), "{err}");
        }
    }

    #[test]
    fn missing_field_is_named() {
        let mut root: Value = serde_json::from_str(RELEASED_CONFIG_JSON).unwrap();
        root["model"]["diffusion"]["config"].as_object_mut().unwrap().remove("depth");
        let err = LovaConfig::from_json_str(&root.to_string()).unwrap_err().to_string();
        assert!(err.contains("model.diffusion.config.depth") && err.contains("missing"), "{err}");
    }

    #[test]
    fn sizes_outside_their_bounds_name_the_field() {
        let dec = ["model", "pretransform", "config", "decoder", "config"];
        let diff = ["model", "diffusion", "config"];
        let at = |base: &[&'static str], f: &'static str| [base, &[f]].concat();
        let cases: Vec<(Vec<&str>, Value, &str)> = vec![
            (at(&diff, "depth"), Value::from(1u64 << 40), "model.diffusion.config.depth"),
            (at(&diff, "depth"), Value::from(878320143102u64), "model.diffusion.config.depth"),
            (at(&diff, "depth"), Value::from(0), "model.diffusion.config.depth"),
            (at(&diff, "embed_dim"), Value::from(64u64 << 30), "embed_dim"),
            (at(&diff, "cond_token_dim"), Value::from(u64::MAX), "cond_token_dim"),
            (at(&diff, "abs_pos_emb_max_length"), Value::from(1u64 << 33), "abs_pos_emb_max_length"),
            (at(&dec, "strides"), serde_json::json!([]), "decoder.config.strides"),
            (at(&dec, "strides"), serde_json::json!([2, 4, 4, 8]), "decoder.config.strides"),
            (at(&dec, "strides"), serde_json::json!([2, 4, 4, 8, 1 << 20]), "decoder.config.strides"),
            (at(&dec, "strides"), serde_json::json!([64, 64, 64, 64, 64]), "decoder.config.strides"),
            (at(&dec, "c_mults"), serde_json::json!([1, 2, 4, 8, 100000]), "decoder.config.c_mults"),
            (at(&dec, "channels"), Value::from(1u64 << 20), "decoder.config.channels"),
            (vec!["fps"], Value::from(1e308), "fps"),
            (vec!["fps"], Value::from(0.0), "fps"),
            (vec!["fps"], Value::from(-8), "fps"),
            (vec!["sample_rate"], Value::from(1u64 << 40), "sample_rate"),
            (vec!["audio_channels"], Value::from(0), "audio_channels"),
            (vec!["model", "pretransform", "config", "downsampling_ratio"], Value::from(1024), "downsampling_ratio"),
            (vec!["model", "pretransform", "scale"], Value::from(1e30), "model.pretransform.scale"),
            (vec!["model", "pretransform", "scale"], Value::from(0.0), "model.pretransform.scale"),
        ];
        for (path, value, field) in cases {
            let err = LovaConfig::from_json_str(&with_field(&path, value.clone()))
                .err()
                .unwrap_or_else(|| panic!("{path:?} = {value} accepted"))
                .to_string();
            assert!(err.contains(field), "{path:?} = {value}: {err}");
        }
    }

    #[test]
    fn oversized_config_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let err = LovaConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("big.json") && err.contains("bytes"), "{err}");
    }

    #[test]
    fn user_lengths_and_rates_are_checked_where_they_enter() {
        let c = LovaConfig::released();
        assert!(c.check_seconds("--seconds", 2.0).is_ok());
        for bad in [1e-9, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 140.0] {
            let err = c.check_seconds("--seconds", bad).unwrap_err().to_string();
            assert!(err.contains("--seconds"), "{bad}: {err}");
        }
        assert!(check_frame_rate("--fps", 25.0).is_ok());
        for bad in [0.0, -1.0, 1e308, f64::NAN, 1e-9] {
            let err = check_frame_rate("--fps", bad).unwrap_err().to_string();
            assert!(err.contains("--fps"), "{bad}: {err}");
        }
        assert_eq!(c.dit.transformer_len(usize::MAX), usize::MAX);
        assert!(c.check_lengths(usize::MAX, 10).is_err());
    }

    #[test]
    fn lengths_beyond_the_position_tables_are_refused() {
        let c = LovaConfig::released();
        assert!(c.check_lengths(2999, 3000).is_ok());
        let err = c.check_lengths(3000, 10).unwrap_err().to_string();
        assert!(err.contains("3000") && err.contains("139.3 s"), "{err}");
        let err = c.check_lengths(100, 3001).unwrap_err().to_string();
        assert!(err.contains("3001 video frames"), "{err}");
    }
}
