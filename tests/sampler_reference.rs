//! The whole sampler (schedule, v-denoiser, CFG, DPM++ 3M SDE) on the CPU
//! backend against the PyTorch reference, plus batching and seeding properties.

mod common;

use common::{fixture, load, load_f64, rel_l2};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, sample};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

fn tiny() -> Dit<CpuBackend> {
    let config = LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let ckpt = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    Dit::load(&CpuBackend, &ckpt, &config.dit, DIT_PREFIX).unwrap()
}

fn settings(eta: f64) -> SamplerSettings {
    SamplerSettings { steps: 8, sigma_min: 0.3, sigma_max: 500.0, rho: 1.0, eta, s_noise: 1.0 }
}

fn fixture_request(noise: RequestNoise) -> Request {
    Request { features: load("tiny/features.safetensors", "features"), latent_len: 44, cfg_scale: 5.0, noise }
}

/// `[steps - 1, 64, T']` split into one tensor per step.
fn split_steps(t: &HostTensor) -> Vec<HostTensor> {
    let per = t.shape[1] * t.shape[2];
    t.data.chunks(per).map(|c| HostTensor::new(t.shape[1..].to_vec(), c.to_vec())).collect()
}

#[test]
fn schedule_matches_reference() {
    let want = load_f64("tiny/sampler_eta0.safetensors", "sigmas");
    let got = settings(0.0).sigmas();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-12 * w.abs(), "{g} vs {w}");
    }
}

#[test]
fn deterministic_sampler_matches_reference() {
    let noise = RequestNoise { seed: 0, initial: Some(load("tiny/init_noise.safetensors", "noise")), steps: None };
    let got = sample(&CpuBackend, &tiny(), &[fixture_request(noise)], &settings(0.0), &mut |_, _| {}).unwrap();
    let want = load("tiny/sampler_eta0.safetensors", "latents");
    let err = rel_l2(&got[0].data, &want.data);
    println!("eta 0: rel L2 {err:.2e}");
    assert_eq!(got[0].shape, want.shape);
    assert!(err <= 1e-4, "{err:e}");
}

#[test]
fn stochastic_sampler_with_injected_noise_matches_reference() {
    let noise = RequestNoise {
        seed: 0,
        initial: Some(load("tiny/init_noise.safetensors", "noise")),
        steps: Some(split_steps(&load("tiny/sampler_eta1.safetensors", "step_noise"))),
    };
    let got = sample(&CpuBackend, &tiny(), &[fixture_request(noise)], &settings(1.0), &mut |_, _| {}).unwrap();
    let want = load("tiny/sampler_eta1.safetensors", "latents");
    let err = rel_l2(&got[0].data, &want.data);
    println!("eta 1: rel L2 {err:.2e}");
    assert!(err <= 1e-4, "{err:e}");
}

#[test]
fn a_seed_gives_the_same_latents_every_time_and_other_seeds_do_not() {
    let dit = tiny();
    let run = |seed| {
        let r = fixture_request(RequestNoise { seed, initial: None, steps: None });
        sample(&CpuBackend, &dit, &[r], &settings(1.0), &mut |_, _| {}).unwrap().remove(0)
    };
    let (a, b, c) = (run(11), run(11), run(12));
    assert_eq!(a, b);
    assert!(rel_l2(&a.data, &c.data) > 0.1);
}

#[test]
fn requests_batched_together_equal_requests_run_alone() {
    let dit = tiny();
    let features = load("tiny/features.safetensors", "features");
    // A second clip of another length: its first 5 frames, 3 latent frames, other CFG.
    let short = HostTensor::new(vec![5, features.shape[1]], features.data[..5 * features.shape[1]].to_vec());
    let requests = [
        fixture_request(RequestNoise { seed: 1, initial: None, steps: None }),
        Request {
            features: short,
            latent_len: 3,
            cfg_scale: 3.0,
            noise: RequestNoise { seed: 2, initial: None, steps: None },
        },
    ];
    let mut calls = 0;
    let together = sample(&CpuBackend, &dit, &requests, &settings(1.0), &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 8, "one progress call per step");
    for (i, r) in requests.iter().enumerate() {
        let alone = sample(&CpuBackend, &dit, std::slice::from_ref(r), &settings(1.0), &mut |_, _| {}).unwrap();
        let err = rel_l2(&together[i].data, &alone[0].data);
        println!("request {i}: batched vs alone rel L2 {err:.2e}");
        assert!(err < 1e-6, "request {i}: {err:e}");
    }
}

#[test]
fn nan_features_are_refused() {
    let mut r = fixture_request(RequestNoise::default());
    r.features.data[17] = f32::NAN;
    let err = sample(&CpuBackend, &tiny(), &[r], &settings(0.0), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("non-finite") && err.contains("17"), "{err}");
}
