//! The `lova-fast` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use lova_fast::backend::{Backend, CpuBackend, CudaBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::weights::{SafetensorsFile, read_single_tensor, write_tensors_atomically};

#[derive(Parser)]
#[command(
    name = "lova-fast",
    version,
    about = "LoVA long-form video-to-audio inference",
    long_about = "lova-fast runs LoVA (long-form video-to-audio generation, ICASSP 2025): a diffusion \
                  transformer that turns a clip's CLIP frame features into audio latents of the clip's \
                  exact length, in one pass.\n\nThis build runs the denoiser (DiT + DPM++ 3M SDE with \
                  classifier-free guidance) on an NVIDIA GPU (CUDA) or the CPU, from a features file to a \
                  latents file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate audio latents for one clip from its CLIP frame features.
    Infer(InferArgs),
    /// List the embedded CUDA kernels; with --check, compile them with NVRTC (no GPU needed).
    Kernels(KernelsArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Device {
    /// CUDA when a usable GPU is found, else the CPU (with a notice).
    Auto,
    /// The CPU (f32 reference backend).
    Cpu,
    /// The first CUDA GPU (fp16 weights, f32 activations); an error when CUDA is not usable.
    Cuda,
}

#[derive(Args)]
struct KernelsArgs {
    /// Compile every kernel to a cubin and print registers, shared memory and
    /// spills per kernel; exit status 1 on any compile error. Needs NVRTC
    /// (libnvrtc.so.13 or .12 on LD_LIBRARY_PATH), not a GPU.
    #[arg(long)]
    check: bool,

    /// GPU architecture to compile for (repeatable) [default: sm_80 and sm_90].
    #[arg(long, value_name = "sm_XY")]
    arch: Vec<String>,
}

#[derive(Args)]
struct InferArgs {
    /// Safetensors file with one tensor `features` [N, 768]: the CLIP image
    /// embedding of each video frame sampled at the model's fps (8), in order.
    features: PathBuf,

    /// The LoVA checkpoint (safetensors; the DiT under `model.model.*`).
    #[arg(long, value_name = "CKPT.safetensors")]
    checkpoint: PathBuf,

    /// LoVA-format model_config.json [default: the released vl30 config, built in].
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,

    /// Where to write the latents: tensor `latents` [64, T'] (f32).
    #[arg(long, value_name = "OUT.safetensors")]
    save_latents: Option<PathBuf>,

    /// Sampler steps.
    #[arg(long, default_value_t = 150)]
    steps: usize,

    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, default_value_t = 5.0)]
    cfg: f32,

    /// Seed of the noise generator [default: random, printed at the end].
    #[arg(long)]
    seed: Option<u64>,

    /// Stochasticity of DPM++ 3M SDE (0 = deterministic ODE sampler).
    #[arg(long, default_value_t = 1.0)]
    eta: f64,

    /// Scale of the noise added at each step.
    #[arg(long, default_value_t = 1.0)]
    s_noise: f64,

    /// Smallest noise level of the schedule.
    #[arg(long, default_value_t = 0.3)]
    sigma_min: f64,

    /// Largest noise level of the schedule.
    #[arg(long, default_value_t = 500.0)]
    sigma_max: f64,

    /// Audio length in seconds [default: N / fps, the video's length].
    #[arg(long)]
    seconds: Option<f64>,

    /// Start from this noise instead of the seeded generator: tensor `noise` [64, T'].
    #[arg(long, value_name = "NOISE.safetensors")]
    init_noise: Option<PathBuf>,

    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,

    /// Where to run the model.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(args) => infer(args),
        Command::Kernels(args) => kernels(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn infer(args: InferArgs) -> Result<()> {
    match args.device {
        Device::Cpu => infer_on(CpuBackend::new(), args),
        Device::Cuda => infer_on(CudaBackend::new(0).context("--device cuda")?, args),
        Device::Auto => match CudaBackend::new(0) {
            Ok(cuda) => infer_on(cuda, args),
            Err(e) => {
                eprintln!("note: running on the CPU; CUDA is not usable: {e}");
                infer_on(CpuBackend::new(), args)
            }
        },
    }
}

fn kernels(args: KernelsArgs) -> Result<()> {
    let sources = lova_fast::kernels::KERNEL_SOURCES;
    if !args.check {
        for (file, source) in sources {
            let names = lova_fast::backend::cuda::compile::kernel_names(source);
            println!("{file}.cu: {}", names.join(", "));
        }
        return Ok(());
    }
    let arches = if args.arch.is_empty() { vec!["sm_80".to_string(), "sm_90".to_string()] } else { args.arch };
    let (report, failures) = lova_fast::backend::cuda::compile::check_report(&arches)?;
    print!("{report}");
    if failures > 0 {
        bail!("{failures} kernel compilation(s) failed");
    }
    Ok(())
}

fn infer_on<B: Backend>(backend: B, args: InferArgs) -> Result<()> {
    let Some(out_path) = args.save_latents.clone() else {
        bail!(
            "nothing to write: pass --save-latents OUT.safetensors (WAV output needs the VAE decoder, not built yet)"
        );
    };
    check_output_dir(&out_path)?;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot set the number of threads")?;
    }

    let started = Instant::now();
    let config = match &args.config {
        Some(path) => LovaConfig::from_file(path)?,
        None => LovaConfig::released(),
    };
    let dit_cfg = &config.dit;
    let features = read_single_tensor(&args.features, "features", Some(dit_cfg.cond_token_dim))
        .with_context(|| format!("reading video features from {}", args.features.display()))?;
    lova_fast::error::ensure_finite(&format!("features in {}", args.features.display()), &features.data)?;
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
            if noise.shape != [dit_cfg.io_channels, latent_len] {
                bail!(
                    "{}: tensor `noise` has shape {:?}, expected [{}, {latent_len}] for a {seconds:.3} s clip",
                    path.display(),
                    noise.shape,
                    dit_cfg.io_channels
                );
            }
            Some(noise)
        }
        None => None,
    };
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
    let seed = args.seed.unwrap_or_else(random_seed);

    let checkpoint = SafetensorsFile::open(&args.checkpoint)?;
    let dit = Dit::load(&backend, &checkpoint, dit_cfg)
        .with_context(|| format!("loading the DiT from {}", args.checkpoint.display()))?;
    let loaded = Instant::now();

    let request =
        Request { features, latent_len, cfg_scale: args.cfg, noise: RequestNoise { seed, initial, steps: None } };
    let bar = ProgressBar::new(settings.steps as u64).with_style(
        ProgressStyle::with_template("sampling {bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]")
            .expect("valid progress template"),
    );
    let requests = [request];
    let mut sampling = Sampling::new(&backend, &dit, &requests, &settings)?;
    while sampling.step()? {
        bar.set_position(sampling.steps_done() as u64);
    }
    bar.finish_and_clear();
    let latents = sampling.latents()?;
    let sampled = Instant::now();
    let arena_bytes = sampling.arena_bytes();

    let metadata = [
        ("seed", seed.to_string()),
        ("steps", settings.steps.to_string()),
        ("cfg", args.cfg.to_string()),
        ("eta", settings.eta.to_string()),
        ("seconds", seconds.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_tensors_atomically(&out_path, &[("latents", &latents[0])], Some(metadata))?;
    let written = Instant::now();

    eprintln!(
        "{frames} frames -> {latent_len} latent frames ({seconds:.2} s of audio), {} steps, cfg {}, seed {seed}, on {}",
        settings.steps,
        args.cfg,
        backend.name()
    );
    eprintln!(
        "load {:.2} s | sampling {:.2} s ({:.1} ms/step, arena {:.1} MiB) | write {:.3} s -> {}",
        (loaded - started).as_secs_f64(),
        (sampled - loaded).as_secs_f64(),
        (sampled - loaded).as_secs_f64() * 1e3 / settings.steps as f64,
        arena_bytes as f64 / (1 << 20) as f64,
        (written - sampled).as_secs_f64(),
        out_path.display()
    );
    Ok(())
}

/// Fails before the long work if the output could not be written anyway.
fn check_output_dir(path: &Path) -> Result<()> {
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

fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // Keep seeds short enough to retype.
    (nanos ^ (std::process::id() as u64).rotate_left(32)) % 1_000_000_000
}
