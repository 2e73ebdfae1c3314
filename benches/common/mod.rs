//! What the criterion benches share: the backend to measure (CUDA when a GPU
//! is usable, else the CPU), the model configs (the released vl30 config at
//! full size with random weights on CUDA; the tiny test config on the CPU,
//! where the full size takes seconds per DiT step).
//!
//! `LOVA_BENCH_CPU=1` forces the CPU even when a GPU is present.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use lova_fast::backend::{Backend, CpuBackend, CudaBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::{ClipVision, ClipVisionConfig, Dit, VaeDecoder};
use lova_fast::sampler::{Request, RequestNoise};
use lova_fast::weights::{RandomWeights, TensorSource};

/// The tiny test model's config (tests/fixtures/tiny): width 256, 2 blocks, 128-d video tokens.
pub const TINY_CONFIG: &str = include_str!("../../tests/fixtures/tiny/model_config.json");

/// Criterion settings for benches whose one iteration is long (a whole clip):
/// 10 samples; the command line (`--measurement-time`, `--warm-up-time`,
/// `--sample-size`) overrides them, which tools/device-check.sh does.
pub fn criterion() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5))
}

/// The CUDA backend, unless there is no usable GPU or `LOVA_BENCH_CPU=1`; says which.
pub fn cuda(bench: &str) -> Option<CudaBackend> {
    if std::env::var("LOVA_BENCH_CPU").as_deref() == Ok("1") {
        eprintln!("{bench}: LOVA_BENCH_CPU=1: CPU backend, tiny config");
        return None;
    }
    match CudaBackend::new(0) {
        Ok(cuda) => {
            eprintln!("{bench}: CUDA backend on {}, released vl30 config (full size, random weights)", cuda.info());
            Some(cuda)
        }
        Err(e) => {
            eprintln!("{bench}: no usable GPU ({e}): CPU backend ({}), tiny config", CpuBackend.name());
            None
        }
    }
}

/// The test fixtures; `LOVA_FIXTURES` overrides the folder, for bench binaries
/// copied to another machine (tools/device-check.sh).
pub fn fixtures() -> std::path::PathBuf {
    match std::env::var_os("LOVA_FIXTURES") {
        Some(dir) => dir.into(),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

pub fn tiny_config() -> LovaConfig {
    LovaConfig::from_json_str(TINY_CONFIG).expect("the tiny config is valid")
}

/// The DiT with random weights (uniform, small enough to stay finite through the blocks).
pub fn random_dit<B: Backend>(backend: &B, config: &LovaConfig) -> Dit<B> {
    Dit::load(backend, &RandomWeights { seed: 1 }, &config.dit, "").expect("random DiT")
}

pub fn random_vae<B: Backend>(backend: &B, config: &LovaConfig) -> VaeDecoder<B> {
    let random = RandomWeights { seed: 3 };
    VaeDecoder::load(backend, &config.vae_decoder, config.latent_scale, &mut |spec| {
        random.tensor(&spec.key, &spec.shape)
    })
    .expect("random VAE")
}

pub fn random_clip<B: Backend>(backend: &B, config: &ClipVisionConfig) -> ClipVision<B> {
    ClipVision::load(backend, &RandomWeights { seed: 4 }, "", config).expect("random CLIP")
}

/// Video frames at the model's fps and latent frames for a clip of `seconds`.
pub fn clip_lengths(config: &LovaConfig, seconds: f64) -> (usize, usize) {
    ((seconds * config.fps).ceil() as usize, config.latent_len_for_seconds(seconds))
}

/// A request for a clip of `seconds` with random video features.
pub fn request(config: &LovaConfig, seconds: f64) -> Request {
    let (frames, latent_len) = clip_lengths(config, seconds);
    let features =
        RandomWeights { seed: 2 }.tensor("features", &[frames, config.dit.cond_token_dim]).expect("features");
    Request { features, latent_len, cfg_scale: 5.0, noise: RequestNoise { seed: 1, initial: None, steps: None } }
}
