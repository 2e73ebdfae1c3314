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
                  This build starts from a clip's CLIP frame features (video decoding and CLIP come \
                  next) and runs the denoiser (DiT + DPM++ 3M SDE with classifier-free guidance) on an \
                  NVIDIA GPU (CUDA) or the CPU, and the VAE decoder on the CPU, writing a WAV file.\n\n\
                  Typical use: `lova-fast convert` once, then `lova-fast infer --weights`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a clip's audio from its CLIP frame features.
    Infer(cli::infer::InferArgs),
    /// Decode saved latents to a WAV file with the VAE.
    Decode(cli::decode::DecodeArgs),
    /// Convert the original checkpoint into one fp16 engine file.
    Convert(cli::convert::ConvertArgs),
    /// Describe a weight file: components, parameter counts, dtypes, config.
    Info(cli::info::InfoArgs),
    /// List the embedded CUDA kernels; with --check, compile them with NVRTC (no GPU needed).
    Kernels(cli::kernels::KernelsArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Infer(args) => cli::infer::run(args),
        Command::Decode(args) => cli::decode::run(args),
        Command::Convert(args) => cli::convert::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Kernels(args) => cli::kernels::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
