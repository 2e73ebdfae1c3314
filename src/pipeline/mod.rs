//! The whole job, video -> CLIP -> sampler -> VAE -> audio, as one type:
//! the only place in the crate that runs it (the CLI, the demo and the
//! benches all call it).
//!
//! ```no_run
//! use lova_fast::{Device, Input, Pipeline, PipelineOptions, Request};
//!
//! let mut pipeline = Pipeline::open_engine("lova-fast.safetensors", Device::Auto)?;
//! let output = pipeline.generate(Request::new(Input::Video("clip.mp4".into())).seed(1))?;
//! output.write_wav("clip.wav".as_ref(), lova_fast::audio::SampleFormat::Pcm16)?;
//! # Ok::<(), lova_fast::Error>(())
//! ```
//!
//! Threads: a `Pipeline` is `Send` (move it to the thread that runs it), and
//! its `generate*` methods take `&mut self`: one generation at a time per
//! pipeline, which keeps the device's stream and captured graphs to one
//! caller. To serve many callers, hand requests to one thread that owns the
//! pipeline and batch them with `generate_many` (or put it in a `Mutex`).
//! `CancelToken`s are `Send + Sync` and may be cancelled from any thread.
//! On the CPU, the work of each generation is spread over rayon's global pool.

mod device;
mod output;
mod progress;
mod request;
mod run;
mod scheduler;

use std::path::{Path, PathBuf};

pub use device::{AnyBackend, Device, WithBackend};
pub use output::{Output, SamplingReport, Timings};
pub use progress::{CancelToken, Event, NoProgress, Progress, Stage};
pub use request::{Input, Request, RequestPlan};
pub use run::{random_seed, tflops_per_s};
pub use scheduler::{Job, JobEvent, SchedulerOptions, StepObserver, StepStats};

pub use crate::backend::cpu::Precision;
use crate::backend::{CpuBackend, CudaBackend};
use crate::config::LovaConfig;
use crate::engine::{ModelFile, WeightSource};
use crate::error::{Error, Result};
use run::Loaded;

/// How the VAE decodes a clip: whole, or in windows that bound its memory.
/// Windows overlap by the decoder's receptive field, so the audio is the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VaeWindows {
    /// Windows only when the whole decode would plan more than this many bytes
    /// of activations (a 139 s clip plans ~8.8 GiB at once).
    Budget(usize),
    /// Windows of this many seconds.
    Seconds(f64),
}

impl Default for VaeWindows {
    /// 1.5 GiB: room beside the DiT and CLIP weights on a small GPU.
    fn default() -> Self {
        VaeWindows::Budget(3 << 29)
    }
}

impl VaeWindows {
    /// Latent frames per window for a clip of `latent_len` frames (None: the
    /// whole clip at once).
    pub fn chunk_frames(&self, config: &LovaConfig, latent_len: usize) -> Result<Option<usize>> {
        match *self {
            VaeWindows::Seconds(s) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::InvalidInput(format!(
                        "a VAE window must be a positive number of seconds, got {s}"
                    )));
                }
                // A window longer than the clip is the whole clip (and a huge one must not overflow later).
                Ok(Some(config.latent_len_for_seconds(s).clamp(1, latent_len.max(1))))
            }
            VaeWindows::Budget(bytes) => crate::models::vae::chunk_for_budget(&config.vae_decoder, latent_len, bytes),
        }
    }
}

/// How to open a pipeline. `Default`: the best device found, every network the
/// weights hold, VAE windows within 1.5 GiB.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Device every network runs on.
    pub device: Device,
    /// Load the CLIP image tower (needed for video and frame inputs; features
    /// inputs do not need it, and skipping it saves ~0.6 GB and its load time).
    pub clip: bool,
    /// A CLIP checkpoint of its own (OpenAI or Hugging Face layout) instead of
    /// the engine file's `clip.*` tensors; the original checkpoint has no CLIP.
    pub clip_file: Option<PathBuf>,
    /// Load the VAE decoder (without it, outputs carry latents but no audio).
    pub vae: bool,
    /// Default windowing of the VAE decode (`Pipeline::set_vae_windows` changes it later).
    pub vae_windows: VaeWindows,
    /// How the CPU backend computes: f32 (the reference, default), bf16 weights
    /// with f32 arithmetic, or bf16 where this CPU has a fast kernel for it.
    pub precision: Precision,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            device: Device::Auto,
            clip: true,
            clip_file: None,
            vae: true,
            vae_windows: VaeWindows::default(),
            precision: Precision::F32,
        }
    }
}

/// The networks of one LoVA model, loaded on one device, ready to generate.
pub struct Pipeline {
    networks: Networks,
    device_note: Option<String>,
    vae_windows: VaeWindows,
}

/// Runtime dispatch over the backends.
enum Networks {
    Cpu(Box<Loaded<CpuBackend>>),
    Cuda(Box<Loaded<CudaBackend>>),
}

/// Runs `$body` with `$n` bound to the loaded networks, whatever their backend.
macro_rules! on_networks {
    ($networks:expr, $n:ident => $body:expr) => {
        match $networks {
            Networks::Cpu($n) => $body,
            Networks::Cuda($n) => $body,
        }
    };
}

impl Pipeline {
    /// Opens the networks of `weights` (an engine file, or the original
    /// checkpoint with its config) on `options.device`.
    pub fn open(weights: &WeightSource, options: &PipelineOptions) -> Result<Pipeline> {
        let file = ModelFile::open(weights)?;
        let (backend, device_note) = AnyBackend::open(options.device, options.precision)?;
        let networks = match backend {
            AnyBackend::Cpu(b) => Networks::Cpu(Box::new(Loaded::load(b, &file, options)?)),
            AnyBackend::Cuda(b) => Networks::Cuda(Box::new(Loaded::load(*b, &file, options)?)),
        };
        Ok(Pipeline { networks, device_note, vae_windows: options.vae_windows })
    }

    /// An engine file (from `lova-fast convert`) with every network it holds.
    pub fn open_engine(path: impl AsRef<Path>, device: Device) -> Result<Pipeline> {
        Self::open(&WeightSource::Engine(path.as_ref()), &PipelineOptions { device, ..Default::default() })
    }

    /// The model config of the loaded weights.
    pub fn config(&self) -> &LovaConfig {
        on_networks!(&self.networks, n => &n.config)
    }

    /// The backend in words (`cpu (f32, 8 threads)`, the GPU's name, ...).
    pub fn device_name(&self) -> String {
        use crate::backend::Backend;
        on_networks!(&self.networks, n => n.backend.name())
    }

    /// Why `Device::Auto` runs on the CPU (None: it did not fall back, or the
    /// device was chosen explicitly).
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// Whether the CLIP image tower is loaded (video and frame inputs need it).
    pub fn has_clip(&self) -> bool {
        on_networks!(&self.networks, n => n.has_clip())
    }

    /// Sets how later requests are VAE-decoded (whole or in windows); the audio is the same either way.
    pub fn set_vae_windows(&mut self, windows: VaeWindows) {
        self.vae_windows = windows;
    }

    /// Generates one request's audio.
    pub fn generate(&mut self, request: Request) -> Result<Output> {
        self.generate_with_progress(request, &mut NoProgress)
    }

    /// Generates one request's audio, reporting progress to `progress` (request index 0).
    pub fn generate_with_progress(&mut self, request: Request, progress: &mut dyn Progress) -> Result<Output> {
        self.generate_many(vec![request], progress).remove(0)
    }

    /// Generates many requests, one result per request in order. Their inputs
    /// are decoded and CLIP-encoded one after the other, then all requests
    /// with the same sampler settings are sampled together in one packed batch
    /// (clips of any lengths; each gets the latents it gets alone: the same
    /// bits on the CPU, up to the rounding of larger matrix products on a GPU),
    /// then each is decoded by the VAE. A request that fails (unreadable
    /// video, NaN features, a clip past the model's limit, cancelled) gets its
    /// error; the others still complete. The DiT's activation memory grows with
    /// the sum of the batch's clip lengths: split very large calls.
    pub fn generate_many(&mut self, requests: Vec<Request>, progress: &mut dyn Progress) -> Vec<Result<Output>> {
        let windows = self.vae_windows;
        on_networks!(&self.networks, n => n.generate_many(requests, &windows, progress))
    }

    /// Runs jobs from `jobs` until the channel is closed (every sender
    /// dropped) and every job received has finished: the engine of a service
    /// (see `scheduler`). With `options.continuous`, jobs join and leave one
    /// running batch between sampler steps; each job's audio is still the one
    /// `generate` gives for the same request (the same bytes on the CPU).
    pub fn run_scheduler(&mut self, jobs: std::sync::mpsc::Receiver<Job>, options: SchedulerOptions) {
        let windows = self.vae_windows;
        on_networks!(&self.networks, n => scheduler::run(n, jobs, options, &windows))
    }

    /// Bytes in use on the device (None on the CPU), for metrics.
    pub fn device_memory_used(&self) -> Option<usize> {
        use crate::backend::Backend;
        on_networks!(&self.networks, n => n.backend.device_memory_used())
    }
}
