//! `lova-fast infer`: CLIP frame features -> sampler -> VAE -> WAV.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lova_fast::audio::{SampleFormat, samples_for_seconds, trim_and_normalise, write_wav};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::error::ensure_finite;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::weights::{read_single_tensor, write_tensors_atomically};

use super::{Device, WeightArgs, WithBackend, check_output_path, set_threads, with_device};

#[derive(Args)]
pub struct InferArgs {
    /// Safetensors file with one tensor `features` [N, 768]: the CLIP image
    /// embedding of each video frame sampled at the model's fps (8), in order.
    pub features: PathBuf,

    #[command(flatten)]
    pub weights: WeightArgs,

    /// Output WAV file [default: FEATURES with the extension .wav].
    #[arg(short, long, value_name = "OUT.wav")]
    pub output: Option<PathBuf>,

    /// Write 32-bit float samples instead of 16-bit PCM.
    #[arg(long)]
    pub float: bool,

    /// Also write the latents: tensor `latents` [64, T'] (f32), for `lova-fast decode`.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_latents: Option<PathBuf>,

    /// Stop after sampling: no VAE decoding, no WAV (needs --save-latents).
    #[arg(long, requires = "save_latents")]
    pub no_audio: bool,

    /// Sampler steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,

    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, default_value_t = 5.0)]
    pub cfg: f32,

    /// Seed of the noise generator [default: random, printed at the end].
    #[arg(long)]
    pub seed: Option<u64>,

    /// Stochasticity of DPM++ 3M SDE (0 = deterministic ODE sampler).
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,

    /// Scale of the noise added at each step.
    #[arg(long, default_value_t = 1.0)]
    pub s_noise: f64,

    /// Smallest noise level of the schedule.
    #[arg(long, default_value_t = 0.3)]
    pub sigma_min: f64,

    /// Largest noise level of the schedule.
    #[arg(long, default_value_t = 500.0)]
    pub sigma_max: f64,

    /// Audio length in seconds [default: N / fps, the video's length].
    #[arg(long)]
    pub seconds: Option<f64>,

    /// Start from this noise instead of the seeded generator: tensor `noise` [64, T'].
    #[arg(long, value_name = "NOISE.safetensors")]
    pub init_noise: Option<PathBuf>,

    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,

    /// Where to run the DiT and sampler (the VAE runs on the CPU for now).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

pub fn run(args: InferArgs) -> Result<()> {
    let wav_path = (!args.no_audio).then(|| args.output.clone().unwrap_or_else(|| args.features.with_extension("wav")));
    for path in wav_path.iter().chain(args.save_latents.iter()) {
        check_output_path(path)?;
    }
    set_threads(args.threads)?;
    let settings = SamplerSettings {
        steps: args.steps,
        sigma_min: args.sigma_min,
        sigma_max: args.sigma_max,
        rho: 1.0,
        eta: args.eta,
        s_noise: args.s_noise,
    };
    settings.validate()?;
    if !args.cfg.is_finite() {
        bail!("--cfg must be a finite number");
    }

    // Check every input before starting a device or loading weights.
    let started = Instant::now();
    let config = args.weights.config()?;
    let features = read_single_tensor(&args.features, "features", Some(config.dit.cond_token_dim))
        .with_context(|| format!("reading video features from {}", args.features.display()))?;
    ensure_finite(&format!("features in {}", args.features.display()), &features.data)?;
    let frames = features.shape[0];
    let seconds = match args.seconds {
        Some(s) if s.is_finite() && s > 0.0 => s,
        Some(s) => bail!("--seconds must be a positive number of seconds, got {s}"),
        None => config.seconds_for_frames(frames),
    };
    let latent_len = config.latent_len_for_seconds(seconds);
    config.check_lengths(latent_len, frames)?;
    let initial = match &args.init_noise {
        Some(path) => {
            let noise = read_single_tensor(path, "noise", None)
                .with_context(|| format!("reading initial noise from {}", path.display()))?;
            if noise.shape != [config.dit.io_channels, latent_len] {
                bail!(
                    "{}: tensor `noise` has shape {:?}, expected [{}, {latent_len}] for a {seconds:.3} s clip",
                    path.display(),
                    noise.shape,
                    config.dit.io_channels
                );
            }
            Some(noise)
        }
        None => None,
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let request =
        Request { features, latent_len, cfg_scale: args.cfg, noise: RequestNoise { seed, initial, steps: None } };
    let device = args.device;
    with_device(device, InferJob { args, settings, request, seconds, wav_path, started })
}

/// A checked request, run on the backend `--device` picked.
struct InferJob {
    args: InferArgs,
    settings: SamplerSettings,
    request: Request,
    seconds: f64,
    wav_path: Option<PathBuf>,
    started: Instant,
}

impl WithBackend for InferJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let InferJob { args, settings, request, seconds, wav_path, started } = self;
        let (frames, latent_len, seed) = (request.features.shape[0], request.latent_len, request.noise.seed);
        let model = args.weights.load(&backend, false)?;
        // The VAE runs on the CPU until the CUDA backend has its convolution kernels.
        let vae = wav_path.as_ref().map(|_| args.weights.load_vae(&CpuBackend)).transpose()?;
        let config = &model.config;
        let loaded = Instant::now();

        let requests = [request];
        let mut sampling = Sampling::new(&backend, &model.dit, &requests, &settings)?;
        let bar = ProgressBar::new(settings.steps as u64).with_style(
            ProgressStyle::with_template("sampling {bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]")
                .expect("valid progress template"),
        );
        while sampling.step()? {
            bar.set_position(sampling.steps_done() as u64);
        }
        bar.finish_and_clear();
        let latents = sampling.latents()?.remove(0);
        let arena_bytes = sampling.arena_bytes();
        let sampled = Instant::now();

        if let Some(path) = &args.save_latents {
            let metadata: HashMap<String, String> = [
                ("seed", seed.to_string()),
                ("steps", settings.steps.to_string()),
                ("cfg", args.cfg.to_string()),
                ("eta", settings.eta.to_string()),
                ("seconds", seconds.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            write_tensors_atomically(path, &[("latents", &latents)], Some(metadata))?;
        }
        let mut decoded = sampled;
        if let (Some(path), Some(vae)) = (&wav_path, &vae) {
            let spinner = ProgressBar::new_spinner().with_message("decoding audio with the VAE");
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let audio = vae.decode(&CpuBackend, std::slice::from_ref(&latents))?.remove(0);
            spinner.finish_and_clear();
            decoded = Instant::now();
            let audio = trim_and_normalise(&audio, samples_for_seconds(seconds, config.sample_rate));
            let format = if args.float { SampleFormat::Float32 } else { SampleFormat::Pcm16 };
            write_wav(path, &audio, config.sample_rate, format)?;
        }
        let written = Instant::now();

        eprintln!(
            "{frames} frames -> {latent_len} latent frames ({seconds:.2} s of audio), {} steps, cfg {}, seed {seed}, on {}",
            settings.steps,
            args.cfg,
            backend.name()
        );
        eprintln!(
            "load {:.2} s | sampling {:.2} s ({:.1} ms/step, arena {:.1} MiB) | VAE {:.2} s | write {:.3} s",
            (loaded - started).as_secs_f64(),
            (sampled - loaded).as_secs_f64(),
            (sampled - loaded).as_secs_f64() * 1e3 / settings.steps as f64,
            arena_bytes as f64 / (1 << 20) as f64,
            (decoded - sampled).as_secs_f64(),
            (written - decoded).as_secs_f64(),
        );
        for path in wav_path.iter().chain(args.save_latents.iter()) {
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // Keep seeds short enough to retype.
    (nanos ^ (std::process::id() as u64).rotate_left(32)) % 1_000_000_000
}
