//! `lova-fast serve`: the HTTP API (see `lova_fast::serve`). This file only
//! turns flags into `ServeOptions` and opens the pipeline on the scheduler thread.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use lova_fast::backend::cpu::Precision;
use lova_fast::pipeline::{Pipeline, PipelineOptions};
use lova_fast::serve::{ServeOptions, serve};

use super::{Device, VaeWindowArgs, WeightArgs, parse_precision, set_threads};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub weights: WeightArgs,

    /// CLIP ViT-L/14 checkpoint for video uploads [default: the engine file's `clip.*` tensors].
    #[arg(long, value_name = "CLIP.safetensors")]
    pub clip: Option<PathBuf>,

    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port (0: a free one; the address is printed on stdout as `listening on http://HOST:PORT`).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Largest upload, in MB (10^6 bytes; fractions allowed); larger ones get 413.
    #[arg(long, value_name = "MB", default_value_t = 512.0)]
    pub max_upload_mb: f64,

    /// Most jobs queued or running at once; one more gets 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_queue: usize,

    /// Seconds a result stays downloadable after its job finished.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0)]
    pub keep_results: f64,

    /// Require `Authorization: Bearer TOKEN` on every route but /healthz and /readyz
    /// [default: the environment variable LOVA_FAST_TOKEN, if set].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Most latent rows (sum of the clips' latent lengths) sampled in one batch [default: from device memory].
    #[arg(long, value_name = "ROWS")]
    pub max_batch_rows: Option<usize>,

    /// One job at a time, start to end (no step-level batching; for load comparisons).
    #[arg(long)]
    pub no_batching: bool,

    /// After SIGTERM/SIGINT, seconds the queued and running jobs may still finish before they are cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub grace: f64,

    /// Where to run CLIP, the DiT with the sampler, and the VAE.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,

    /// CPU arithmetic: f32 (the reference), bf16 or auto (as for `infer`).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,

    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,

    #[command(flatten)]
    pub vae_windows: VaeWindowArgs,
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{flag} must be a number of seconds >= 0, got {value}"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(args.max_upload_mb.is_finite() && args.max_upload_mb > 0.0) {
        bail!("--max-upload-mb must be a positive number, got {}", args.max_upload_mb);
    }
    if args.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    args.vae_windows.validate()?;
    set_threads(args.threads)?;
    // Fail on a missing or unreadable model before opening the port.
    args.weights.source()?;
    args.weights.config().with_context(|| format!("reading the model's config from {}", args.weights.describe()))?;
    let token = args.token.clone().or_else(|| std::env::var("LOVA_FAST_TOKEN").ok()).filter(|t| !t.is_empty());
    let options = ServeOptions {
        addr: SocketAddr::new(args.host, args.port),
        max_upload_bytes: (args.max_upload_mb * 1e6) as u64,
        max_queue: args.max_queue,
        keep_results: seconds("--keep-results", args.keep_results)?,
        token,
        max_batch_rows: args.max_batch_rows,
        batching: !args.no_batching,
        grace: seconds("--grace", args.grace)?,
    };
    let pipeline_options = PipelineOptions {
        device: args.device.into(),
        clip: true,
        clip_file: args.clip.clone(),
        vae: true,
        vae_windows: args.vae_windows.windows(),
        precision: args.precision,
    };
    let weights = args.weights.clone();
    let open = Box::new(move || -> lova_fast::Result<Pipeline> {
        let source = weights.source().map_err(|e| lova_fast::Error::InvalidInput(format!("{e:#}")))?;
        let pipeline = Pipeline::open(&source, &pipeline_options)?;
        if let Some(note) = pipeline.device_note() {
            eprintln!("note: {note}");
        }
        Ok(pipeline)
    });
    serve(options, open, |addr| {
        // Tests and scripts read this line to find a --port 0 server.
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
    .with_context(|| format!("lova-fast serve with {}", args.weights.describe()))
}
