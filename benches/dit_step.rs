//! Latency of one sampler step (DiT on cond + uncond, CFG, DPM++ 3M SDE update)
//! on the CPU backend:
//! - `tiny`: the test fixture's tiny model, 2 s clip (always);
//! - `vl30_10s`: the released config at full size with random weights, a 10 s
//!   clip (80 frames, 216 latent frames). About 1 TFLOP per step: tens of seconds
//!   per sample on a laptop, so it runs only with `LOVA_BENCH_FULL=1`.
//!
//! `cargo bench --bench dit_step` (add `LOVA_BENCH_FULL=1` for the real size).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{RandomWeights, SafetensorsFile, TensorSource};

/// Times `iters` steps, starting a new sampling run (untimed) whenever one finishes.
fn bench_steps(c: &mut Criterion, name: &str, dit: &Dit<CpuBackend>, request: Request) {
    let settings = SamplerSettings { steps: 150, ..Default::default() };
    let requests = [request];
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut sampling = Sampling::new(&CpuBackend, dit, &requests, &settings).expect("sampling");
            for _ in 0..iters {
                if sampling.steps_done() == settings.steps {
                    sampling = Sampling::new(&CpuBackend, dit, &requests, &settings).expect("sampling");
                }
                let start = Instant::now();
                sampling.step().expect("step");
                total += start.elapsed();
            }
            total
        })
    });
}

fn request(features: HostTensor, latent_len: usize) -> Request {
    Request { features, latent_len, cfg_scale: 5.0, noise: RequestNoise { seed: 1, initial: None, steps: None } }
}

fn tiny(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let config = LovaConfig::from_file(&dir.join("model_config.json")).expect("tiny config");
    let ckpt = SafetensorsFile::open(&dir.join("checkpoint.safetensors")).expect("tiny checkpoint");
    let dit = Dit::load(&CpuBackend, &ckpt, &config.dit, DIT_PREFIX).expect("tiny model");
    let features = ckpt_features(&dir);
    bench_steps(c, "dit_step/cpu/tiny_2s", &dit, request(features, 44));
}

fn ckpt_features(dir: &std::path::Path) -> HostTensor {
    let file = SafetensorsFile::open(&dir.join("features.safetensors")).expect("features");
    file.tensor_any_shape("features").expect("features")
}

fn full_size(c: &mut Criterion) {
    if std::env::var("LOVA_BENCH_FULL").as_deref() != Ok("1") {
        eprintln!("dit_step/cpu/vl30_10s skipped: set LOVA_BENCH_FULL=1 to run the full-size model");
        return;
    }
    let config = LovaConfig::released();
    let dit = Dit::load(&CpuBackend, &RandomWeights { seed: 1 }, &config.dit, "").expect("random full-size model");
    let frames = 80;
    let features =
        RandomWeights { seed: 2 }.tensor("features", &[frames, config.dit.cond_token_dim]).expect("features");
    let latent_len = config.latent_len_for_seconds(config.seconds_for_frames(frames));
    bench_steps(c, "dit_step/cpu/vl30_10s", &dit, request(features, latent_len));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = tiny, full_size
}
criterion_main!(benches);
