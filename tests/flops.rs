//! The FLOP count of a sampler step (`Sampling::step_flops`, from the step
//! graph) against the DiT's closed form, on the tiny fixture model. Benchmarks
//! and `infer` turn step times into TFLOP/s with this count.

mod common;

use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

/// Matrix-product FLOP of the DiT on one sequence (lova-model.md section 4,
/// prepend config), split into what depends on the step (the audio tokens) and
/// what depends only on the request or the schedule: the timestep MLP, the
/// video-token MLP, and the cross-attention K/V projections of the video tokens.
struct DitFlops {
    per_step: u64,
    timestep: u64,
    cond: u64,
    cross_kv: u64,
}

fn dit_flops(config: &LovaConfig, latent_len: usize, frames: usize) -> DitFlops {
    let c = &config.dit;
    let (e, cd, io, ff) = (c.embed_dim as u64, c.cond_token_dim as u64, c.io_channels as u64, c.ff_inner() as u64);
    let (t, n, l) = ((latent_len + 1) as u64, frames as u64, latent_len as u64);
    let timestep = 2 * 256 * e + 2 * e * e;
    let cond = 2 * 2 * n * cd * cd;
    let audio_in = 2 * l * io * io + 2 * l * io * e;
    let block = 2 * t * e * 3 * e // qkv
        + 4 * t * t * e // self-attention
        + 2 * t * e * e // self out
        + 2 * t * e * e // cross q
        + 4 * t * n * e // cross-attention
        + 2 * t * e * e // cross out
        + 2 * t * e * 2 * ff // ff up
        + 2 * t * ff * e; // ff down
    let cross_kv = 2 * n * cd * 2 * cd;
    let out = 2 * t * e * io + 2 * l * io * io;
    let depth = c.depth as u64;
    DitFlops { per_step: audio_in + depth * block + out, timestep, cond, cross_kv: depth * cross_kv }
}

#[test]
fn step_flops_match_the_dit_closed_form() {
    let config = LovaConfig::from_file(&common::fixture("tiny/model_config.json")).unwrap();
    let ckpt = SafetensorsFile::open(&common::fixture("tiny/checkpoint.safetensors")).unwrap();
    let dit = Dit::load(&CpuBackend, &ckpt, &config.dit, DIT_PREFIX).unwrap();
    let (latent_len, frames) = (37, 13);
    let features =
        HostTensor::new(vec![frames, config.dit.cond_token_dim], vec![0.1; frames * config.dit.cond_token_dim]);
    let requests =
        [Request { features, latent_len, cfg_scale: 5.0, noise: RequestNoise { seed: 1, initial: None, steps: None } }];
    let settings = SamplerSettings { steps: 3, ..Default::default() };
    let sampling = Sampling::new(&CpuBackend, &dit, &requests, &settings).unwrap();
    let f = dit_flops(&config, latent_len, frames);
    // Cond + uncond: two sequences. The timestep embeddings, the video tokens
    // and their cross-attention K/V are request constants computed before the
    // first step, so a step counts only the audio-token work.
    let got = sampling.step_flops();
    assert_eq!(
        got,
        2 * f.per_step,
        "step FLOP (request constants: timestep {}, video tokens {}, cross K/V {} per sequence)",
        f.timestep,
        f.cond,
        f.cross_kv
    );
}
