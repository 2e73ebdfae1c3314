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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalCondType {
    /// The timestep embedding is prepended to the audio tokens as token 0 (LoVA).
    Prepend,
    /// The timestep embedding modulates LayerNorms through `to_scale_shift_gate`.
    AdaLn,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DitConfig {
    pub io_channels: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub cond_token_dim: usize,
    pub global_cond_type: GlobalCondType,
    /// Rows of the learned position tables PE_z and PE_c.
    pub max_positions: usize,
}

impl DitConfig {
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
            GlobalCondType::Prepend => latent_len + 1,
            GlobalCondType::AdaLn => latent_len,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaeDecoderConfig {
    pub out_channels: usize,
    pub channels: usize,
    pub c_mults: Vec<usize>,
    pub strides: Vec<usize>,
    pub latent_dim: usize,
    pub use_snake: bool,
    pub final_tanh: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LovaConfig {
    pub sample_rate: u32,
    pub audio_channels: usize,
    /// Video frames per second the DiT was trained on.
    pub fps: f64,
    /// Audio samples per latent frame (2048).
    pub downsampling_ratio: usize,
    /// Latents are multiplied by this before decoding.
    pub latent_scale: f64,
    pub clip_name: Option<String>,
    pub dit: DitConfig,
    pub vae_decoder: VaeDecoderConfig,
}

impl LovaConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
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
            io_channels: j.usize(&format!("{diff}.io_channels"))?,
            embed_dim: j.usize(&format!("{diff}.embed_dim"))?,
            depth: j.usize(&format!("{diff}.depth"))?,
            num_heads: j.usize(&format!("{diff}.num_heads"))?,
            cond_token_dim: j.usize(&format!("{diff}.cond_token_dim"))?,
            global_cond_type,
            max_positions: j.usize_or(&format!("{diff}.abs_pos_emb_max_length"), 3000)?,
        };
        check_dit_dims(&dit)?;

        let dec = "model.pretransform.config.decoder.config";
        let vae_decoder = VaeDecoderConfig {
            out_channels: j.usize(&format!("{dec}.out_channels"))?,
            channels: j.usize(&format!("{dec}.channels"))?,
            c_mults: j.usize_list(&format!("{dec}.c_mults"))?,
            strides: j.usize_list(&format!("{dec}.strides"))?,
            latent_dim: j.usize(&format!("{dec}.latent_dim"))?,
            use_snake: j.bool_or(&format!("{dec}.use_snake"), false)?,
            final_tanh: j.bool_or(&format!("{dec}.final_tanh"), true)?,
        };
        if vae_decoder.latent_dim != dit.io_channels {
            return Err(Error::Config {
                path: format!("{dec}.latent_dim"),
                reason: format!(
                    "is {} but the DiT works on {} latent channels (model.diffusion.config.io_channels)",
                    vae_decoder.latent_dim, dit.io_channels
                ),
            });
        }

        let fps = j.f64("fps")?;
        if !(fps.is_finite() && fps > 0.0) {
            return Err(unsupported("fps", &Value::from(fps), "a positive number"));
        }
        let sample_rate = j.usize("sample_rate")?;
        let downsampling_ratio = j.usize("model.pretransform.config.downsampling_ratio")?;
        if sample_rate == 0 || downsampling_ratio == 0 {
            return Err(Error::Config {
                path: "sample_rate / model.pretransform.config.downsampling_ratio".into(),
                reason: "must be positive".into(),
            });
        }
        Ok(LovaConfig {
            sample_rate: sample_rate as u32,
            audio_channels: j.usize("audio_channels")?,
            fps,
            downsampling_ratio,
            latent_scale: j.f64_or("model.pretransform.scale", 1.0)?,
            clip_name: j.opt_str("model.conditioning.configs.0.config.clip_name")?,
            dit,
            vae_decoder,
        })
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

    fn usize(&self, path: &str) -> Result<usize> {
        let v = self.req(path)?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| Self::wrong(path, "a non-negative integer", v))
    }

    fn usize_or(&self, path: &str, default: usize) -> Result<usize> {
        if self.opt(path).is_none() { Ok(default) } else { self.usize(path) }
    }

    fn f64(&self, path: &str) -> Result<f64> {
        let v = self.req(path)?;
        v.as_f64().ok_or_else(|| Self::wrong(path, "a number", v))
    }

    fn f64_or(&self, path: &str, default: f64) -> Result<f64> {
        if self.opt(path).is_none() { Ok(default) } else { self.f64(path) }
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

    fn usize_list(&self, path: &str) -> Result<Vec<usize>> {
        let v = self.req(path)?;
        let items = v.as_array().ok_or_else(|| Self::wrong(path, "a list of integers", v))?;
        items
            .iter()
            .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(|| Self::wrong(path, "a list of integers", v)))
            .collect()
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
    fn lengths_beyond_the_position_tables_are_refused() {
        let c = LovaConfig::released();
        assert!(c.check_lengths(2999, 3000).is_ok());
        let err = c.check_lengths(3000, 10).unwrap_err().to_string();
        assert!(err.contains("3000") && err.contains("139.3 s"), "{err}");
        let err = c.check_lengths(100, 3001).unwrap_err().to_string();
        assert!(err.contains("3001 video frames"), "{err}");
    }
}
