//! End to end for a 30 s clip, weights loaded, from preprocessed frames (video
//! decoding excluded): CLIP on the 240 frames (batches of `CLIP_BATCH`, as `infer`) ->
//! 150 sampler steps (CFG 5, DPM++ 3M SDE) -> VAE decoding to 44.1 kHz stereo.
//! - on CUDA: the released vl30 config at full size with random weights;
//! - on the CPU: the tiny test config and the demo's tiny CLIP.
//!
//! `cargo bench --bench end_to_end`

mod common;

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::clip::CLIP_VIT_L14;
use lova_fast::models::{ClipVision, ClipVisionConfig, Dit, VaeDecoder};
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, sample};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{RandomWeights, TensorSource};

const SECONDS: f64 = 30.0;

struct Pipeline<'a, B: Backend> {
    backend: &'a B,
    config: &'a LovaConfig,
    clip: &'a ClipVision<B>,
    dit: &'a Dit<B>,
    vae: &'a VaeDecoder<B>,
}

/// Stage times in seconds: CLIP, sampling, VAE.
fn run<B: Backend>(p: &Pipeline<B>, frames: &HostTensor) -> lova_fast::Result<[f64; 3]> {
    let started = Instant::now();
    let features = p.clip.encode(p.backend, frames)?;
    let clip_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let request = Request {
        features,
        latent_len: p.config.latent_len_for_seconds(SECONDS),
        cfg_scale: 5.0,
        noise: RequestNoise { seed: 1, initial: None, steps: None },
    };
    let settings = SamplerSettings::default();
    let latents = sample(p.backend, p.dit, std::slice::from_ref(&request), &settings, &mut |_, _| {})?;
    let sampling_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    p.vae.decode(p.backend, &latents)?;
    p.backend.synchronize()?;
    Ok([clip_s, sampling_s, started.elapsed().as_secs_f64()])
}

fn bench<B: Backend>(c: &mut Criterion, name: &str, p: &Pipeline<B>, clip_config: &ClipVisionConfig) {
    let (frames, _) = common::clip_lengths(p.config, SECONDS);
    let size = clip_config.image_size;
    let frames = RandomWeights { seed: 5 }.tensor("images", &[frames, 3, size, size]).expect("frames");
    let [clip_s, sampling_s, vae_s] = run(p, &frames).expect("end to end");
    eprintln!(
        "{name}: one run: CLIP {clip_s:.3} s | sampling {sampling_s:.3} s (150 steps) | VAE {vae_s:.3} s | total {:.3} s",
        clip_s + sampling_s + vae_s
    );
    c.bench_function(name, |b| b.iter(|| run(p, &frames).expect("end to end")));
}

fn end_to_end(c: &mut Criterion) {
    if let Some(cuda) = common::cuda("end_to_end") {
        let config = LovaConfig::released();
        let clip = common::random_clip(&cuda, &CLIP_VIT_L14);
        let vae = common::random_vae(&cuda, &config);
        let dit = common::random_dit(&cuda, &config);
        let p = Pipeline { backend: &cuda, config: &config, clip: &clip, dit: &dit, vae: &vae };
        bench(c, "end_to_end/cuda/vl30_30s", &p, &CLIP_VIT_L14);
        return;
    }
    let config = common::tiny_config();
    let clip_config = ClipVisionConfig::tiny(config.dit.cond_token_dim);
    let clip = common::random_clip(&CpuBackend, &clip_config);
    let vae = common::random_vae(&CpuBackend, &config);
    let dit = common::random_dit(&CpuBackend, &config);
    let p = Pipeline { backend: &CpuBackend, config: &config, clip: &clip, dit: &dit, vae: &vae };
    bench(c, "end_to_end/cpu/tiny_30s", &p, &clip_config);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = end_to_end
}
criterion_main!(benches);
