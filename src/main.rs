//! The `lova-fast` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lova-fast",
    version,
    about = "LoVA long-form video-to-audio inference",
    long_about = "lova-fast runs LoVA (long-form video-to-audio generation, ICASSP 2025): a diffusion \
                  transformer that generates a soundtrack exactly as long as the video, in one pass.\n\n\
                  It decodes the video with FFmpeg (which must be installed), samples frames at the \
                  model's 8 fps, encodes them with CLIP, runs the denoiser (DiT + DPM++ 3M SDE with \
                  classifier-free guidance), decodes with the VAE (all three on one NVIDIA GPU with \
                  CUDA, or on the CPU), and writes a WAV file (optionally muxed back into the video).\n\n\
                  Typical use: `lova-fast convert` once, then `lova-fast infer --weights`. \
                  `lova-fast demo` runs the whole pipeline on a tiny random model.\n\n\
                  Exit codes: 0 success, 1 error (bad input, model or output), 2 bad command line, \
                  3 FFmpeg not found.",
    after_help = "Examples:\n  \
                  lova-fast convert --checkpoint LOVA.safetensors --clip CLIP-ViT-L-14.safetensors -o lova.safetensors\n  \
                  lova-fast infer clip.mp4 --weights lova.safetensors -o clip.wav --mux clip.with-audio.mp4\n  \
                  lova-fast infer videos/ --weights lova.safetensors --steps 100 --seed 1 --batch 8 --json\n  \
                  lova-fast infer frames/ --fps 25 --weights lova.safetensors\n  \
                  lova-fast bench --seconds 10,30,60\n  \
                  lova-fast serve --weights lova.safetensors --port 8080\n  \
                  lova-fast demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate audio for videos (or CLIP frame features): WAV, optionally muxed into the video.
    Infer(Box<cli::infer::InferArgs>),
    /// Decode saved latents to a WAV file with the VAE.
    Decode(cli::decode::DecodeArgs),
    /// Convert the original checkpoint into one fp16 engine file.
    Convert(cli::convert::ConvertArgs),
    /// Run the whole pipeline on a tiny random model and a synthetic video (audio is noise).
    Demo(cli::demo::DemoArgs),
    /// Describe a weight file: components, parameter counts, dtypes, config.
    Info(cli::info::InfoArgs),
    /// Measure this machine: sampler step latency, TFLOP/s, memory and start-up for 10/30/60 s clips.
    Bench(cli::bench::BenchArgs),
    /// List the embedded CUDA kernels; with --check, compile them with NVRTC (no GPU needed).
    Kernels(cli::kernels::KernelsArgs),
    /// Serve an HTTP API: POST a video or features, get the audio (jobs, SSE progress, metrics).
    Serve(Box<cli::serve::ServeArgs>),
}

/// Exit code when FFmpeg is needed but not installed (1: other errors, 2: usage).
const EXIT_NO_FFMPEG: u8 = 3;

fn main() -> ExitCode {
    cli::PROCESS_START.get_or_init(std::time::Instant::now);
    let result = match Cli::parse().command {
        Command::Infer(args) => cli::infer::run(*args),
        Command::Decode(args) => cli::decode::run(args),
        Command::Convert(args) => cli::convert::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Kernels(args) => cli::kernels::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let ffmpeg_missing = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<lova_fast::Error>(), Some(lova_fast::Error::ToolMissing { .. })));
            ExitCode::from(if ffmpeg_missing { EXIT_NO_FFMPEG } else { 1 })
        }
    }
}
