//! Subcommands of the `lova-fast` binary, and the pieces they share.

pub mod bench;
pub mod convert;
pub mod decode;
pub mod demo;
pub mod infer;
pub mod info;
pub mod kernels;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use lova_fast::backend::{Backend, CpuBackend, CudaBackend};
use lova_fast::config::LovaConfig;
use lova_fast::engine::{Model, WeightSource};
use lova_fast::models::VaeDecoder;

/// Where the model comes from: an engine file, or the original checkpoint.
#[derive(Args, Clone)]
pub struct WeightArgs {
    /// Engine file written by `lova-fast convert` (fp16, config inside; the fast way).
    #[arg(long, value_name = "ENGINE.safetensors", conflicts_with_all = ["checkpoint", "config"])]
    pub weights: Option<PathBuf>,

    /// Original LoVA checkpoint (safetensors; DiT under `model.model.*`, VAE under
    /// `pretransform.model.*`), converted while loading.
    #[arg(long, value_name = "CKPT.safetensors")]
    pub checkpoint: Option<PathBuf>,

    /// LoVA-format model_config.json for --checkpoint [default: the released vl30 config, built in].
    #[arg(long, value_name = "CONFIG.json", requires = "checkpoint")]
    pub config: Option<PathBuf>,
}

impl WeightArgs {
    pub fn source(&self) -> Result<WeightSource<'_>> {
        Ok(match (&self.weights, &self.checkpoint) {
            (Some(path), _) => WeightSource::Engine(path),
            (None, Some(checkpoint)) => WeightSource::Original { checkpoint, config: self.original_config()? },
            (None, None) => {
                bail!("no model: pass --weights ENGINE.safetensors (see `lova-fast convert`) or --checkpoint")
            }
        })
    }

    fn describe(&self) -> String {
        self.weights.as_ref().or(self.checkpoint.as_ref()).map(|p| p.display().to_string()).unwrap_or_default()
    }

    pub fn load<B: Backend>(&self, backend: &B, with_vae: bool) -> Result<Model<B>> {
        Model::load(backend, &self.source()?, with_vae)
            .with_context(|| format!("loading the model from {}", self.describe()))
    }

    pub fn load_vae<B: Backend>(&self, backend: &B) -> Result<VaeDecoder<B>> {
        lova_fast::engine::load_vae(backend, &self.source()?)
            .with_context(|| format!("loading the VAE decoder from {}", self.describe()))
    }

    /// The model's config, without loading any weight (to check inputs first).
    pub fn config(&self) -> Result<LovaConfig> {
        match &self.weights {
            Some(path) => Ok(lova_fast::engine::open_engine_file(path)?.1),
            None => self.original_config(),
        }
    }

    /// The config that goes with --checkpoint.
    pub fn original_config(&self) -> Result<LovaConfig> {
        Ok(match &self.config {
            Some(path) => LovaConfig::from_file(path)?,
            None => LovaConfig::released(),
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Device {
    /// CUDA when a usable GPU is found, else the CPU (with a notice).
    Auto,
    /// The CPU (f32 reference backend).
    Cpu,
    /// The first CUDA GPU (fp16 weights, f32 activations); an error when CUDA is not usable.
    Cuda,
}

/// The backend `device` asks for, passed to `run` (generic code cannot return
/// either of two backend types, so it calls back instead).
pub trait WithBackend {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

pub fn with_device(device: Device, job: impl WithBackend) -> Result<()> {
    match device {
        Device::Cpu => job.run(CpuBackend::new()),
        Device::Cuda => job.run(CudaBackend::new(0).context("--device cuda")?),
        Device::Auto => match CudaBackend::new(0) {
            Ok(cuda) => job.run(cuda),
            Err(e) => {
                eprintln!("note: running on the CPU; CUDA is not usable: {e}");
                job.run(CpuBackend::new())
            }
        },
    }
}

/// Fails before the long work if `path` could not be written anyway.
pub fn check_output_path(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("cannot write {}: it is a folder", path.display());
    }
    Ok(())
}

/// When `main` started (set first thing in `main`), for start-up times.
pub static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Time since `main` started.
pub fn process_age() -> std::time::Duration {
    PROCESS_START.get_or_init(std::time::Instant::now).elapsed()
}

pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot set the number of threads")?;
    }
    Ok(())
}
