//! `lova-fast decode`: saved latents -> VAE -> WAV.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use lova_fast::backend::cpu::Precision;
use lova_fast::output_paths::{NamedPath, check_outputs};

use lova_fast::audio::{SampleFormat, finish, samples_for_seconds, write_wav};
use lova_fast::backend::Backend;
use lova_fast::config::LovaConfig;
use lova_fast::models::vae::{planned_arena_bytes, receptive_field};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, read_latents};

use super::{Device, VaeWindowArgs, WeightArgs, WithBackend, check_output_path, parse_precision, with_device};

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

    /// CPU arithmetic: f32 (the reference), bf16 (Linear and VAE convolution weights
    /// rounded to bf16 once at load, with no f32 copy kept (a third of the memory), f32
    /// accumulation, a polynomial exp in attention's softmax and SwiGLU: faster than
    /// f32 on CPUs with AVX-512 or AVX2, 4-5x measured on an AVX-512 one), or auto (bf16
    /// where this CPU has a fast kernel).
    /// CUDA always runs fp16 weights.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
}

pub fn run(args: DecodeArgs) -> Result<()> {
    check_output_path(&args.output)?;
    let w = &args.weights;
    let inputs: Vec<NamedPath> = [
        ("latents", Some(args.latents.as_path())),
        ("--weights", w.weights.as_deref()),
        ("--checkpoint", w.checkpoint.as_deref()),
        ("--config", w.config.as_deref()),
    ]
    .into_iter()
    .filter_map(|(role, path)| path.map(|p| NamedPath::new(role, p)))
    .collect();
    check_outputs(&inputs, &[NamedPath::new("-o", &args.output)])?;
    args.vae_windows.validate()?;
    let config = args.weights.config()?;
    // The library's errors name the file (and whether it could not be read): no context to add.
    let latents = read_latents(&args.latents, config.dit.io_channels)?;
    let full = latents.shape[1] as f64 * config.downsampling_ratio as f64 / config.sample_rate as f64;
    let stored = SafetensorsFile::open(&args.latents)?.user_metadata("seconds").and_then(|s| s.parse::<f64>().ok());
    let seconds = match (args.seconds, stored) {
        (Some(s), _) => {
            config.check_seconds("--seconds", s)?;
            s.min(full)
        }
        (None, Some(s)) => {
            config.check_seconds(&format!("the `seconds` stored in {}", args.latents.display()), s)?;
            s.min(full)
        }
        (None, None) => full,
    };

    let device = args.device;
    let precision = args.precision;
    with_device(device, precision, false, DecodeJob { args, config, latents, seconds })
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
        let audio = finish(&audio, samples_for_seconds(seconds, config.sample_rate), "the VAE decode")?;
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
