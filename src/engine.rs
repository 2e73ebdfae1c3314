//! The engine weight file and model loading.
//!
//! `lova-fast convert` turns the published files (the LoVA checkpoint: fp32,
//! PyTorch key names, weight-normalised VAE; a CLIP checkpoint) into one
//! safetensors file laid out the way the engine wants it: every tensor of
//! rank >= 2 in fp16 (vectors and the timestep frequencies stay f32: tiny, and
//! precision-sensitive), weight norm folded, convolutions rearranged, and the
//! model config plus a format version in the metadata. `infer` memory-maps it
//! and loads with no conversion work.
//!
//! Keys: `dit.<key under model.model.>`, `vae.<decoder key>` (see `models::vae`),
//! `clip.visual.*` (the image tower in the OpenAI layout, whichever layout the
//! CLIP checkpoint had; its shape-derived config is in the metadata too).

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Backend;
use crate::config::LovaConfig;
use crate::error::{Error, Result};
use crate::models::Dit;
use crate::models::clip::{ClipVision, ClipVisionConfig, clip_tensor_list, open_clip};
use crate::models::dit::{self, DIT_PREFIX};
use crate::models::vae::{self, VaeDecoder};
use crate::tensor::HostTensor;
use crate::weights::{SafetensorsFile, StoredDtype, StreamingWriter, TensorEntry, TensorSource};

pub const FORMAT: &str = "lova-fast";
pub const FORMAT_VERSION: &str = "1";
pub const DIT_KEYS: &str = "dit.";
pub const VAE_KEYS: &str = "vae.";
pub const CLIP_KEYS: &str = "clip.";

/// Where the weights come from.
pub enum WeightSource<'a> {
    /// An engine file written by `convert` (its config is inside).
    Engine(&'a Path),
    /// The original checkpoint and its config.
    Original { checkpoint: &'a Path, config: LovaConfig },
}

/// The networks of one LoVA model on one backend.
pub struct Model<B: Backend> {
    pub config: LovaConfig,
    pub dit: Dit<B>,
    /// Absent when the caller did not ask for it (latents only).
    pub vae: Option<VaeDecoder<B>>,
}

/// Storage dtype of an engine tensor.
pub fn engine_dtype(name: &str, shape: &[usize]) -> StoredDtype {
    if shape.len() < 2 || name.ends_with("timestep_features.weight") { StoredDtype::F32 } else { StoredDtype::F16 }
}

/// Opens an engine file, checking that it is one and of a version this build reads.
pub fn open_engine_file(path: &Path) -> Result<(SafetensorsFile, LovaConfig)> {
    let file = SafetensorsFile::open(path)?;
    if file.user_metadata("format") != Some(FORMAT) {
        return Err(Error::InvalidInput(format!(
            "{} is not a lova-fast engine file (make one with `lova-fast convert`; an original \
             LoVA checkpoint goes to --checkpoint)",
            path.display()
        )));
    }
    match file.user_metadata("format_version") {
        Some(FORMAT_VERSION) => {}
        other => {
            return Err(Error::InvalidInput(format!(
                "{} has engine format version {}, this build reads version {FORMAT_VERSION}: convert it again",
                path.display(),
                other.unwrap_or("(none)")
            )));
        }
    }
    let text = file
        .user_metadata("config")
        .ok_or_else(|| Error::InvalidInput(format!("{} holds no config", path.display())))?;
    let config = LovaConfig::from_json_str(text)?;
    Ok((file, config))
}

fn clip_config_json(c: &ClipVisionConfig) -> String {
    serde_json::json!({
        "width": c.width, "layers": c.layers, "patch": c.patch, "image_size": c.image_size, "output_dim": c.output_dim,
    })
    .to_string()
}

/// The CLIP image tower of an engine file, if it has one.
pub fn load_clip<B: Backend>(backend: &B, file: &SafetensorsFile) -> Result<Option<ClipVision<B>>> {
    let Some(text) = file.user_metadata("clip_config") else { return Ok(None) };
    let bad = |reason: String| Error::InvalidInput(format!("{}: clip_config {text}: {reason}", file.path().display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let field = |name: &str| v[name].as_u64().map(|n| n as usize).ok_or_else(|| bad(format!("no `{name}`")));
    let width = field("width")?;
    let config = ClipVisionConfig {
        width,
        layers: field("layers")?,
        heads: width / crate::models::clip::CLIP_HEAD_DIM,
        patch: field("patch")?,
        image_size: field("image_size")?,
        output_dim: field("output_dim")?,
    };
    config.validate().map_err(bad)?;
    Ok(Some(ClipVision::load(backend, file, CLIP_KEYS, &config)?))
}

impl<B: Backend> Model<B> {
    pub fn load(backend: &B, source: &WeightSource, with_vae: bool) -> Result<Self> {
        let (config, dit) = match source {
            WeightSource::Engine(path) => {
                let (file, config) = open_engine_file(path)?;
                let dit = Dit::load(backend, &file, &config.dit, DIT_KEYS)?;
                (config, dit)
            }
            WeightSource::Original { checkpoint, config } => {
                let file = SafetensorsFile::open(checkpoint)?;
                (config.clone(), Dit::load(backend, &file, &config.dit, DIT_PREFIX)?)
            }
        };
        let vae = if with_vae { Some(load_vae(backend, source)?) } else { None };
        Ok(Model { config, dit, vae })
    }
}

/// The VAE decoder alone (it may live on another backend than the DiT).
pub fn load_vae<B: Backend>(backend: &B, source: &WeightSource) -> Result<VaeDecoder<B>> {
    match source {
        WeightSource::Engine(path) => {
            let (file, config) = open_engine_file(path)?;
            VaeDecoder::load_stored(backend, &config.vae_decoder, config.latent_scale, &file, VAE_KEYS)
        }
        WeightSource::Original { checkpoint, config } => {
            let file = SafetensorsFile::open(checkpoint)?;
            let fetch = &mut |spec: &vae::VaeTensorSpec| vae::original_tensor(&file, spec);
            VaeDecoder::load(backend, &config.vae_decoder, config.latent_scale, fetch)
        }
    }
}

/// What `convert` wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub tensors: usize,
    pub parameters: BTreeMap<&'static str, usize>,
    pub bytes: u64,
}

/// One tensor to convert: its engine name and dtype, and how to read it from the originals.
struct Planned<'a> {
    entry: TensorEntry,
    component: &'static str,
    fetch: Box<dyn Fn() -> Result<HostTensor> + 'a>,
    /// Drops the source pages once written (keeps the resident set small).
    release: Box<dyn Fn() + 'a>,
}

/// Writes the engine file `out` from the original checkpoint, tensor by tensor
/// (memory: one tensor at a time). `progress(done, total)` after each tensor.
pub fn convert(
    checkpoint: &Path,
    clip: Option<&Path>,
    config: &LovaConfig,
    config_json: &str,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ConvertReport> {
    let ckpt = SafetensorsFile::open(checkpoint)?;
    vae::check_config(&config.vae_decoder)?;
    let clip_file = clip.map(SafetensorsFile::open).transpose()?;
    let clip = clip_file.as_ref().map(open_clip).transpose()?;
    let mut plan: Vec<Planned> = Vec::new();
    for (key, shape) in dit::tensor_list(&config.dit) {
        let name = format!("{DIT_KEYS}{key}");
        let ckpt = &ckpt;
        plan.push(Planned {
            entry: TensorEntry { dtype: engine_dtype(&name, &shape), name, shape: shape.clone() },
            component: "dit",
            fetch: Box::new({
                let key = key.clone();
                move || ckpt.tensor(&format!("{DIT_PREFIX}{key}"), &shape)
            }),
            release: Box::new(move || ckpt.release(&format!("{DIT_PREFIX}{key}"))),
        });
    }
    for spec in vae::tensor_specs(&config.vae_decoder) {
        let name = format!("{VAE_KEYS}{}", spec.key);
        let shape = spec.engine_shape();
        let ckpt = &ckpt;
        plan.push(Planned {
            entry: TensorEntry { dtype: engine_dtype(&name, &shape), name, shape },
            component: "vae",
            release: Box::new({
                let base = format!("{}{}", vae::ORIGINAL_PREFIX, spec.key.trim_end_matches(".weight"));
                move || {
                    for suffix in ["", ".weight", ".weight_g", ".weight_v", ".bias", ".alpha", ".beta"] {
                        ckpt.release(&format!("{base}{suffix}"));
                    }
                }
            }),
            fetch: Box::new(move || vae::original_tensor(ckpt, &spec)),
        });
    }
    // Check every source tensor exists with the right shape before writing anything big.
    for p in &plan {
        check_available(&ckpt, p)?;
    }
    let mut metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("config".to_string(), config_json.to_string()),
        ("components".to_string(), "dit,vae".to_string()),
    ]);

    if let Some((clip_cfg, clip_ckpt)) = &clip {
        if clip_cfg.output_dim != config.dit.cond_token_dim {
            return Err(Error::InvalidInput(format!(
                "{}: the CLIP image tower projects to {} dims, but the DiT reads {}-dim video tokens \
                 (model.diffusion.config.cond_token_dim)",
                clip_ckpt.describe(),
                clip_cfg.output_dim,
                config.dit.cond_token_dim
            )));
        }
        let clip_file = clip_file.as_ref().expect("opened with the CLIP checkpoint");
        for (key, shape) in clip_tensor_list(clip_cfg) {
            let name = format!("{CLIP_KEYS}{key}");
            if clip_ckpt.shape(&key).is_none() {
                return Err(Error::MissingTensor { key, file: clip_ckpt.describe() });
            }
            plan.push(Planned {
                entry: TensorEntry { dtype: engine_dtype(&name, &shape), name, shape: shape.clone() },
                component: "clip",
                fetch: Box::new(move || clip_ckpt.tensor(&key, &shape)),
                // A tower tensor may come from several source tensors (q, k, v): drop them all.
                release: Box::new(move || clip_file.release_all()),
            });
        }
        metadata.insert("components".into(), "dit,vae,clip".into());
        metadata.insert("clip_config".into(), clip_config_json(clip_cfg));
    }

    let mut writer = StreamingWriter::create(out, plan.iter().map(|p| p.entry.clone()).collect(), &metadata)?;
    let mut parameters = BTreeMap::new();
    for (i, p) in plan.iter().enumerate() {
        let t = (p.fetch)()?;
        writer.write(&p.entry.name, &t)?;
        (p.release)();
        *parameters.entry(p.component).or_insert(0) += t.len();
        progress(i + 1, plan.len());
    }
    writer.finish()?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(ConvertReport { tensors: plan.len(), parameters, bytes })
}

/// Cheap existence check of a planned tensor's sources (keys only, no data read).
fn check_available(ckpt: &SafetensorsFile, p: &Planned) -> Result<()> {
    let missing = |key: String| Error::MissingTensor { key, file: ckpt.path().display().to_string() };
    if let Some(rest) = p.entry.name.strip_prefix(DIT_KEYS) {
        let key = format!("{DIT_PREFIX}{rest}");
        return match ckpt.shape(&key) {
            None => Err(missing(key)),
            Some(found) if found != p.entry.shape => Err(Error::ShapeMismatch {
                key,
                file: ckpt.path().display().to_string(),
                expected: p.entry.shape.clone(),
                found,
            }),
            Some(_) => Ok(()),
        };
    }
    if let Some(rest) = p.entry.name.strip_prefix(VAE_KEYS) {
        let base = format!("{}{}", vae::ORIGINAL_PREFIX, rest.trim_end_matches(".weight"));
        let present = |suffix: &str| ckpt.contains(&format!("{base}{suffix}"));
        let ok = if rest.ends_with(".weight") {
            present(".weight") || present(".weight_v") || present(".parametrizations.weight.original1")
        } else {
            ckpt.contains(&format!("{}{rest}", vae::ORIGINAL_PREFIX))
        };
        if !ok {
            return Err(missing(format!("{}{rest}", vae::ORIGINAL_PREFIX)));
        }
    }
    Ok(())
}

/// Writes an engine file of random weights (`RandomWeights`) for `config` and a
/// CLIP image tower of `clip`: a model that runs the whole pipeline and makes
/// noise, for demos and tests without a checkpoint.
pub fn write_random_engine(out: &Path, config: &LovaConfig, config_json: &str, clip: &ClipVisionConfig) -> Result<()> {
    let random = crate::weights::RandomWeights { seed: 1 };
    let mut list: Vec<(String, Vec<usize>)> = Vec::new();
    list.extend(dit::tensor_list(&config.dit).into_iter().map(|(k, s)| (format!("{DIT_KEYS}{k}"), s)));
    list.extend(
        vae::tensor_specs(&config.vae_decoder).iter().map(|v| (format!("{VAE_KEYS}{}", v.key), v.engine_shape())),
    );
    list.extend(clip_tensor_list(clip).into_iter().map(|(k, s)| (format!("{CLIP_KEYS}{k}"), s)));
    let entries = list
        .iter()
        .map(|(name, shape)| TensorEntry { dtype: engine_dtype(name, shape), name: name.clone(), shape: shape.clone() })
        .collect();
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("config".to_string(), config_json.to_string()),
        ("components".to_string(), "dit,vae,clip".to_string()),
        ("clip_config".to_string(), clip_config_json(clip)),
    ]);
    let mut writer = StreamingWriter::create(out, entries, &metadata)?;
    for (name, shape) in &list {
        writer.write(name, &random.tensor(name, shape)?)?;
    }
    writer.finish()
}
