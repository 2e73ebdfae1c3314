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

/// Value of the `format` metadata key that marks an engine file.
pub const FORMAT: &str = "lova-fast";
/// Engine layout version (`format_version` metadata) this build writes and reads; bumped on any layout change.
pub const FORMAT_VERSION: &str = "1";
/// Key prefix of the DiT tensors in an engine file.
pub const DIT_KEYS: &str = "dit.";
/// Key prefix of the VAE decoder tensors in an engine file.
pub const VAE_KEYS: &str = "vae.";
/// Key prefix of the CLIP image tower tensors in an engine file.
pub const CLIP_KEYS: &str = "clip.";

/// Where the weights come from.
pub enum WeightSource<'a> {
    /// An engine file written by `convert` (its config is inside).
    Engine(&'a Path),
    /// The original checkpoint and its config.
    Original {
        /// The LoVA checkpoint (safetensors, PyTorch key names).
        checkpoint: &'a Path,
        /// The model config that goes with it.
        config: LovaConfig,
    },
    /// Random weights (`RandomWeights`, seed 1) in the engine layout, with a CLIP
    /// image tower of `clip`: a model that runs the whole pipeline and makes
    /// noise, for benchmarks and tests without a checkpoint or a file.
    Random {
        /// Sizes of the DiT and VAE to make.
        config: LovaConfig,
        /// Sizes of the CLIP image tower to make.
        clip: ClipVisionConfig,
    },
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

/// A weight file opened once (memory-mapped), with the config that goes with
/// it: the DiT, the VAE and (for an engine file made with `convert --clip`) the
/// CLIP image tower all load from this one mapping.
pub struct ModelFile {
    stored: Stored,
    config: LovaConfig,
}

enum Stored {
    /// An engine file: keys `dit.`/`vae.`/`clip.`, stored as the kernels want them.
    Engine(SafetensorsFile),
    /// The original checkpoint, converted while loading.
    Original(SafetensorsFile),
    /// Random weights under the engine file's keys.
    Random(crate::weights::RandomWeights, ClipVisionConfig),
}

impl ModelFile {
    /// Opens (memory-maps) the weights of `source`; for random weights, validates the configs instead.
    pub fn open(source: &WeightSource) -> Result<Self> {
        Ok(match source {
            WeightSource::Engine(path) => {
                let (file, config) = open_engine_file(path)?;
                ModelFile { stored: Stored::Engine(file), config }
            }
            WeightSource::Original { checkpoint, config } => {
                ModelFile { stored: Stored::Original(SafetensorsFile::open(checkpoint)?), config: config.clone() }
            }
            WeightSource::Random { config, clip } => {
                vae::check_config(&config.vae_decoder)?;
                clip.validate().map_err(|reason| Error::InvalidInput(format!("random CLIP config: {reason}")))?;
                let random = crate::weights::RandomWeights { seed: 1 };
                ModelFile { stored: Stored::Random(random, *clip), config: config.clone() }
            }
        })
    }

    /// The model config: read from an engine file, or the one given with the source.
    pub fn config(&self) -> &LovaConfig {
        &self.config
    }

    /// The file, for messages (`random weights` for `WeightSource::Random`).
    pub fn describe(&self) -> String {
        match &self.stored {
            Stored::Engine(f) | Stored::Original(f) => f.path().display().to_string(),
            Stored::Random(r, _) => r.describe(),
        }
    }

    fn tensors(&self) -> &dyn TensorSource {
        match &self.stored {
            Stored::Engine(f) | Stored::Original(f) => f,
            Stored::Random(r, _) => r,
        }
    }

    /// Uploads the DiT weights to `backend`.
    pub fn load_dit<B: Backend>(&self, backend: &B) -> Result<Dit<B>> {
        let prefix = if matches!(self.stored, Stored::Original(_)) { DIT_PREFIX } else { DIT_KEYS };
        Dit::load(backend, self.tensors(), &self.config.dit, prefix)
    }

    /// Uploads the VAE decoder weights to `backend`, converting an original checkpoint's tensors on the way.
    pub fn load_vae<B: Backend>(&self, backend: &B) -> Result<VaeDecoder<B>> {
        let (cfg, scale) = (&self.config.vae_decoder, self.config.latent_scale);
        match &self.stored {
            Stored::Original(file) => {
                let fetch = &mut |spec: &vae::VaeTensorSpec| vae::original_tensor(file, spec);
                VaeDecoder::load(backend, cfg, scale, fetch)
            }
            _ => VaeDecoder::load_stored(backend, cfg, scale, self.tensors(), VAE_KEYS),
        }
    }

    /// The CLIP image tower inside an engine file; `None` for an engine file
    /// converted without `--clip` and for an original checkpoint (CLIP is then a
    /// file of its own, `load_clip_checkpoint`).
    pub fn load_clip<B: Backend>(&self, backend: &B) -> Result<Option<ClipVision<B>>> {
        match &self.stored {
            Stored::Engine(file) => load_clip(backend, file),
            Stored::Original(_) => Ok(None),
            Stored::Random(random, clip) => Ok(Some(ClipVision::load(backend, random, CLIP_KEYS, clip)?)),
        }
    }
}

/// The CLIP image tower from a CLIP checkpoint of its own (OpenAI or Hugging Face layout).
pub fn load_clip_checkpoint<B: Backend>(backend: &B, path: &Path) -> Result<ClipVision<B>> {
    let file = SafetensorsFile::open(path)?;
    let (cfg, ckpt) = open_clip(&file)?;
    ClipVision::load(backend, &ckpt, "", &cfg)
}

/// The VAE decoder alone.
pub fn load_vae<B: Backend>(backend: &B, source: &WeightSource) -> Result<VaeDecoder<B>> {
    ModelFile::open(source)?.load_vae(backend)
}

/// One tensor of an engine file: its name (with the component's key prefix),
/// shape and the component it belongs to (`dit`, `vae`, `clip`).
#[derive(Debug, Clone)]
pub struct EngineTensor {
    /// Full key, with the component prefix (`dit.`, `vae.`, `clip.`).
    pub name: String,
    /// Shape as stored in the engine file.
    pub shape: Vec<usize>,
    /// Component the tensor belongs to: `dit`, `vae` or `clip`.
    pub component: &'static str,
}

/// Every tensor an engine file of `config` (and of the CLIP tower `clip`, if
/// any) holds, in file order: the one list `convert` and `write_random_engine`
/// both write from.
pub fn engine_tensors(config: &LovaConfig, clip: Option<&ClipVisionConfig>) -> Vec<EngineTensor> {
    let mut list = Vec::new();
    list.extend(dit::tensor_list(&config.dit).into_iter().map(|(key, shape)| EngineTensor {
        name: format!("{DIT_KEYS}{key}"),
        shape,
        component: "dit",
    }));
    list.extend(vae::tensor_specs(&config.vae_decoder).iter().map(|spec| EngineTensor {
        name: format!("{VAE_KEYS}{}", spec.key),
        shape: spec.shape.clone(),
        component: "vae",
    }));
    if let Some(clip) = clip {
        list.extend(clip_tensor_list(clip).into_iter().map(|(key, shape)| EngineTensor {
            name: format!("{CLIP_KEYS}{key}"),
            shape,
            component: "clip",
        }));
    }
    list
}

/// What `convert` wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Number of tensors written.
    pub tensors: usize,
    /// Parameter (element) count per component (`dit`, `vae`, `clip`).
    pub parameters: BTreeMap<&'static str, usize>,
    /// Size of the written file in bytes.
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
    if let Some((clip_cfg, clip_ckpt)) = &clip
        && clip_cfg.output_dim != config.dit.cond_token_dim
    {
        return Err(Error::InvalidInput(format!(
            "{}: the CLIP image tower projects to {} dims, but the DiT reads {}-dim video tokens \
             (model.diffusion.config.cond_token_dim)",
            clip_ckpt.describe(),
            clip_cfg.output_dim,
            config.dit.cond_token_dim
        )));
    }
    let vae_specs: BTreeMap<String, vae::VaeTensorSpec> =
        vae::tensor_specs(&config.vae_decoder).into_iter().map(|spec| (spec.key.clone(), spec)).collect();
    let mut plan: Vec<Planned> = Vec::new();
    for tensor in engine_tensors(config, clip.as_ref().map(|(cfg, _)| cfg)) {
        let entry =
            TensorEntry { dtype: engine_dtype(&tensor.name, &tensor.shape), name: tensor.name, shape: tensor.shape };
        let ckpt = &ckpt;
        let planned = match tensor.component {
            "dit" => {
                let key = format!("{DIT_PREFIX}{}", &entry.name[DIT_KEYS.len()..]);
                let shape = entry.shape.clone();
                Planned {
                    component: "dit",
                    fetch: Box::new({
                        let key = key.clone();
                        move || ckpt.tensor(&key, &shape)
                    }),
                    release: Box::new(move || ckpt.release(&key)),
                    entry,
                }
            }
            "vae" => {
                let spec = vae_specs.get(&entry.name[VAE_KEYS.len()..]).expect("listed from the same specs").clone();
                let base = format!("{}{}", vae::ORIGINAL_PREFIX, spec.key.trim_end_matches(".weight"));
                Planned {
                    component: "vae",
                    release: Box::new(move || {
                        for suffix in ["", ".weight", ".weight_g", ".weight_v", ".bias", ".alpha", ".beta"] {
                            ckpt.release(&format!("{base}{suffix}"));
                        }
                    }),
                    fetch: Box::new(move || vae::original_tensor(ckpt, &spec)),
                    entry,
                }
            }
            _ => {
                let (clip_file, (_, clip_ckpt)) =
                    (clip_file.as_ref().expect("opened with the CLIP checkpoint"), clip.as_ref().expect("listed"));
                let key = entry.name[CLIP_KEYS.len()..].to_string();
                if clip_ckpt.shape(&key).is_none() {
                    return Err(Error::MissingTensor { key, file: clip_ckpt.describe() });
                }
                let shape = entry.shape.clone();
                Planned {
                    component: "clip",
                    fetch: Box::new(move || clip_ckpt.tensor(&key, &shape)),
                    // A tower tensor may come from several source tensors (q, k, v): drop them all.
                    release: Box::new(move || clip_file.release_all()),
                    entry,
                }
            }
        };
        plan.push(planned);
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
    if let Some((clip_cfg, _)) = &clip {
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
    let list = engine_tensors(config, Some(clip));
    let entries = list
        .iter()
        .map(|t| TensorEntry { dtype: engine_dtype(&t.name, &t.shape), name: t.name.clone(), shape: t.shape.clone() })
        .collect();
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("config".to_string(), config_json.to_string()),
        ("components".to_string(), "dit,vae,clip".to_string()),
        ("clip_config".to_string(), clip_config_json(clip)),
    ]);
    let mut writer = StreamingWriter::create(out, entries, &metadata)?;
    for t in &list {
        writer.write(&t.name, &random.tensor(&t.name, &t.shape)?)?;
    }
    writer.finish()
}
