//! `lova-fast decode`: saved latents -> VAE -> WAV.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use lova_fast::audio::{SampleFormat, samples_for_seconds, trim_and_normalise, write_wav};
use lova_fast::backend::Backend;
use lova_fast::config::LovaConfig;
use lova_fast::models::vae::{planned_arena_bytes, receptive_field};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, read_single_tensor};

use super::{Device, VaeWindowArgs, WeightArgs, WithBackend, check_output_path, with_device};

#[derive(Args)]
pub struct DecodeArgs {
    /// Safetensors file with tensor `latents` [64, T'] (as `infer --save-latents` writes).
    pub latents: PathBuf,

    #[command(flatten)]
    pub weights: WeightArgs,

    /// Output WAV file.
    #[arg(short, long, value_name = "OUT.wav")]
    pub output: PathBuf,

    /// Audio length in seconds [default: the `seconds` stored with the latents, else T' * 2048 / 44100].
    #[arg(long)]
    pub seconds: Option<f64>,

    /// Write 32-bit float samples instead of 16-bit PCM.
    #[arg(long)]
    pub float: bool,

    #[command(flatten)]
    pub vae_windows: VaeWindowArgs,

    /// Where to run the VAE.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

pub fn run(args: DecodeArgs) -> Result<()> {
    check_output_path(&args.output)?;
    args.vae_windows.validate()?;
    let config = args.weights.config()?;
    let latents = read_single_tensor(&args.latents, "latents", None)
        .with_context(|| format!("reading latents from {}", args.latents.display()))?;
    if latents.shape.len() != 2 || latents.shape[0] != config.dit.io_channels || latents.shape[1] == 0 {
        bail!(
            "{}: tensor `latents` has shape {:?}, expected [{}, T']",
            args.latents.display(),
            latents.shape,
            config.dit.io_channels
        );
    }
    let full = latents.shape[1] as f64 * config.downsampling_ratio as f64 / config.sample_rate as f64;
    let stored = SafetensorsFile::open(&args.latents)?.user_metadata("seconds").and_then(|s| s.parse::<f64>().ok());
    let seconds = match args.seconds.or(stored) {
        Some(s) if s.is_finite() && s > 0.0 => s.min(full),
        Some(s) => bail!("the audio length must be a positive number of seconds, got {s}"),
        None => full,
    };

    let device = args.device;
    with_device(device, false, DecodeJob { args, config, latents, seconds })
}

struct DecodeJob {
    args: DecodeArgs,
    config: LovaConfig,
    latents: HostTensor,
    seconds: f64,
}

impl WithBackend for DecodeJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let DecodeJob { args, config, latents, seconds } = self;
        let started = Instant::now();
        let vae = args.weights.load_vae(&backend)?;
        let loaded = Instant::now();
        let latent_len = latents.shape[1];
        let chunk = args.vae_windows.chunk_frames(&config, latent_len)?;
        let window = chunk.map_or(latent_len, |c| (c + 2 * receptive_field(&vae.config)).min(latent_len));
        let planned = planned_arena_bytes(&vae.config, &[window])?;
        let audio = match chunk {
            Some(chunk) => vae.decode_chunked(&backend, &latents, chunk)?,
            None => vae.decode(&backend, &[latents])?.remove(0),
        };
        let audio = trim_and_normalise(&audio, samples_for_seconds(seconds, config.sample_rate));
        let decoded = Instant::now();
        let format = if args.float { SampleFormat::Float32 } else { SampleFormat::Pcm16 };
        write_wav(&args.output, &audio, config.sample_rate, format)?;
        eprintln!(
            "{} | load {:.2} s | VAE {:.2} s ({:.0} MiB planned) | wrote {} ({seconds:.2} s, {} channels, {} Hz)",
            backend.name(),
            (loaded - started).as_secs_f64(),
            (decoded - loaded).as_secs_f64(),
            planned as f64 / (1u64 << 20) as f64,
            args.output.display(),
            audio.shape[0],
            config.sample_rate
        );
        Ok(())
    }
}
