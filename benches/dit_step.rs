//! Latency of one sampler step (DiT on cond + uncond, CFG, DPM++ 3M SDE update)
//! for 10, 30 and 60 s clips:
//! - on CUDA (a usable GPU): the released vl30 config at full size, random weights;
//! - else on the CPU: the tiny test model (tests/fixtures/tiny), plus, with
//!   `LOVA_BENCH_FULL=1`, the full-size model for a 10 s clip (seconds per step).
//!
//! `cargo bench --bench dit_step` (`LOVA_BENCH_CPU=1` forces the CPU).
//! `lova-fast bench` measures the same step outside criterion (and start-up, memory).

mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::sampler::{Request, SamplerSettings, Sampling};
use lova_fast::weights::SafetensorsFile;

const SECONDS: [f64; 3] = [10.0, 30.0, 60.0];

/// Times `iters` steps (each synchronised), starting a new sampling run
/// (untimed) whenever one finishes. Prints the step's FLOP and achieved rate once.
fn bench_steps<B: Backend>(c: &mut Criterion, name: &str, backend: &B, dit: &Dit<B>, request: Request) {
    let settings = SamplerSettings { steps: 150, ..Default::default() };
    let requests = [request];
    let mut probe = Sampling::new(backend, dit, &requests, &settings).expect("sampling");
    let flops = probe.step_flops();
    probe.step().expect("step");
    drop(probe);
    let mut best = f64::INFINITY;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut sampling = Sampling::new(backend, dit, &requests, &settings).expect("sampling");
            for _ in 0..iters {
                if sampling.steps_done() == settings.steps {
                    sampling = Sampling::new(backend, dit, &requests, &settings).expect("sampling");
                }
                let start = Instant::now();
                sampling.step().expect("step");
                backend.synchronize().expect("synchronize");
                let t = start.elapsed();
                best = best.min(t.as_secs_f64());
                total += t;
            }
            total
        })
    });
    eprintln!(
        "{name}: {} latent frames, {:.1} GFLOP per step; fastest step {:.2} ms = {:.3} TFLOP/s",
        requests[0].latent_len,
        flops as f64 * 1e-9,
        best * 1e3,
        flops as f64 / best * 1e-12
    );
}

fn steps(c: &mut Criterion) {
    if let Some(cuda) = common::cuda("dit_step") {
        let config = LovaConfig::released();
        let dit = common::random_dit(&cuda, &config);
        for s in SECONDS {
            bench_steps(c, &format!("dit_step/cuda/vl30_{s}s"), &cuda, &dit, common::request(&config, s));
        }
        return;
    }
    // The tiny fixture's trained-shape checkpoint (its weights are random too, but fixed).
    let config = common::tiny_config();
    let dir = common::fixtures().join("tiny");
    let ckpt = SafetensorsFile::open(&dir.join("checkpoint.safetensors")).expect("tiny checkpoint");
    let dit = Dit::load(&CpuBackend, &ckpt, &config.dit, DIT_PREFIX).expect("tiny model");
    for s in SECONDS {
        bench_steps(c, &format!("dit_step/cpu/tiny_{s}s"), &CpuBackend, &dit, common::request(&config, s));
    }
    if std::env::var("LOVA_BENCH_FULL").as_deref() != Ok("1") {
        eprintln!("dit_step/cpu/vl30_10s skipped: set LOVA_BENCH_FULL=1 to run the full-size model on the CPU");
        return;
    }
    let config = LovaConfig::released();
    let dit = common::random_dit(&CpuBackend, &config);
    bench_steps(c, "dit_step/cpu/vl30_10s", &CpuBackend, &dit, common::request(&config, 10.0));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = steps
}
criterion_main!(benches);
