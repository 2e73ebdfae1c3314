//! Subcommands of the `lova-fast` binary, and the pieces they share.

pub mod bench;
pub mod convert;
pub mod decode;
pub mod demo;
pub mod infer;
pub mod info;
pub mod kernels;
pub mod roofline;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use lova_fast::backend::Backend;
use lova_fast::backend::cpu::Precision;
use lova_fast::backend::cpu::threads;
use lova_fast::config::LovaConfig;
use lova_fast::engine::{ModelFile, WeightSource};
use lova_fast::models::VaeDecoder;
use lova_fast::pipeline::{AnyBackend, VaeWindows};

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

    pub fn describe(&self) -> String {
        self.weights.as_ref().or(self.checkpoint.as_ref()).map(|p| p.display().to_string()).unwrap_or_default()
    }

    pub fn load_vae<B: Backend>(&self, backend: &B) -> Result<VaeDecoder<B>> {
        ModelFile::open(&self.source()?)
            .and_then(|file| file.load_vae(backend))
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

/// How the VAE decode splits a long clip (`infer`, `decode`).
#[derive(Args)]
pub struct VaeWindowArgs {
    /// Decode the audio with the VAE in windows of this many seconds (each with the
    /// decoder's receptive field of context on both sides, so the audio is the same)
    /// instead of as --vae-memory decides.
    #[arg(long, value_name = "SECONDS")]
    pub vae_chunk: Option<f64>,

    /// Device memory the VAE decode may plan for its activations, in GiB. A clip
    /// whose whole decode would plan more is decoded in windows that fit (same
    /// audio, see --vae-chunk); a 139 s clip plans ~8.8 GiB at once.
    #[arg(long, value_name = "GIB", default_value_t = 1.5)]
    pub vae_memory: f64,
}

impl VaeWindowArgs {
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.vae_chunk
            && !(s.is_finite() && s > 0.0)
        {
            bail!("--vae-chunk must be a positive number of seconds, got {s}");
        }
        if !(self.vae_memory.is_finite() && self.vae_memory > 0.0) {
            bail!("--vae-memory must be a positive number of GiB, got {}", self.vae_memory);
        }
        Ok(())
    }

    /// `--vae-chunk` when given, else what fits `--vae-memory`.
    pub fn windows(&self) -> VaeWindows {
        match self.vae_chunk {
            Some(s) => VaeWindows::Seconds(s),
            None => VaeWindows::Budget((self.vae_memory * (1u64 << 30) as f64) as usize),
        }
    }

    /// Latent frames per VAE window for a clip of `latent_len` frames (None: the
    /// whole clip at once).
    pub fn chunk_frames(&self, config: &LovaConfig, latent_len: usize) -> Result<Option<usize>> {
        Ok(self.windows().chunk_frames(config, latent_len)?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Device {
    /// CUDA when a usable GPU is found, else the CPU (with a notice).
    Auto,
    /// The CPU (f32 reference backend).
    Cpu,
    /// The first CUDA GPU (fp16 weights and block activations); an error when CUDA is not usable.
    Cuda,
}

impl From<Device> for lova_fast::Device {
    fn from(device: Device) -> Self {
        match device {
            Device::Auto => lova_fast::Device::Auto,
            Device::Cpu => lova_fast::Device::Cpu,
            Device::Cuda => lova_fast::Device::Cuda(0),
        }
    }
}

/// The backend `device` asks for, passed to `run` (generic code cannot return
/// either of two backend types, so it calls back instead).
pub trait WithBackend {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

/// Runs `job` on the backend `device` asks for (the CPU one in `precision`); `quiet` silences the note
/// saying why `auto` fell back to the CPU.
pub fn with_device(device: Device, precision: Precision, quiet: bool, job: impl WithBackend) -> Result<()> {
    /// Carries an anyhow job through the library's `WithBackend`.
    struct Job<J>(J);
    impl<J: WithBackend> lova_fast::pipeline::WithBackend for Job<J> {
        type Output = Result<()>;
        fn run<B: Backend>(self, backend: B) -> lova_fast::Result<Result<()>> {
            Ok(self.0.run(backend))
        }
    }
    let (backend, note) = AnyBackend::open(device.into(), precision).with_context(|| match device {
        Device::Cuda => "--device cuda",
        _ => "starting the device",
    })?;
    if let (Some(note), false) = (note, quiet) {
        eprintln!("note: {note}");
    }
    backend.run(Job(job))?
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

/// Sizes the global thread pool for `--threads`, capped (with a note) at a few
/// threads per core. Notes go to stderr even with `--quiet`: the run does not
/// do what was asked.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(requested) = threads {
        let (n, note) = threads::cap_threads(requested, threads::cores());
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot set the number of threads")?;
    }
    Ok(())
}

/// `--precision`: f32, bf16 or auto.
pub fn parse_precision(text: &str) -> std::result::Result<Precision, String> {
    text.parse().map_err(|e: lova_fast::Error| e.to_string())
}
