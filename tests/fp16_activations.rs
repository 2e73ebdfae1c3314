//! What fp16 block activations (the CUDA backend's default, `DType::F16`)
//! cost in accuracy, measured on the CPU backend running the same graph
//! (`CpuBackend::with_fp16_activations`: every block activation rounded to
//! fp16 where the GPU stores it, f32 arithmetic everywhere else; the residual
//! stream stays f32), against the PyTorch reference fixtures and against the
//! f32 graph.
//!
//! Tolerances (relative L2):
//! - one DiT call vs the PyTorch f32 reference: 1e-2, lova-model.md section
//!   8's bound for an fp16 path (PyTorch autocast keeps these activations in
//!   fp16 too). The CPU's f32 graph meets 1e-4 (tests/dit_reference.rs), so
//!   the error measured here is the activations' own.
//! - latents after the 8-step tiny sampler run, fp16 vs f32 activations:
//!   2e-2, the bound tests/cuda_infer.rs derives for the whole fp16 path
//!   (per-call error of v at most 1e-2, scaled by |c_out| <= 1, plus what
//!   earlier steps carried into x).
//!
//! Each check also asserts that the fp16 graph differs from the f32 one (above
//! 1e-6): a graph whose activations silently stayed f32 would pass the bounds.

mod common;

use common::{fixture, load, rel_l2};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::config::LovaConfig;
use lova_fast::graph::DType;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::models::vae::original_tensor;
use lova_fast::models::{Dit, VaeDecoder};
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, sample};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

fn load_dit(backend: &CpuBackend, dir: &str) -> Dit<CpuBackend> {
    let config = LovaConfig::from_file(&fixture(&format!("{dir}/model_config.json"))).unwrap();
    let ckpt = SafetensorsFile::open(&fixture(&format!("{dir}/checkpoint.safetensors"))).unwrap();
    Dit::load(backend, &ckpt, &config.dit, DIT_PREFIX).unwrap()
}

#[test]
fn the_cpu_twin_builds_fp16_block_activations() {
    let twin = CpuBackend::new().with_fp16_activations();
    assert_eq!(twin.activation_dtype(), DType::F16);
    assert_eq!(CpuBackend::new().activation_dtype(), DType::F32, "the reference stays f32");
    assert!(twin.name().contains("fp16 block activations"), "{}", twin.name());
}

#[test]
fn dit_calls_with_fp16_activations_stay_within_the_fp16_path_bound() {
    let twin = CpuBackend::new().with_fp16_activations();
    for (dir, cases) in [("tiny", &["a", "b"][..]), ("adaln", &["a"][..])] {
        let (f32_dit, fp16_dit) = (load_dit(&CpuBackend, dir), load_dit(&twin, dir));
        let file = format!("{dir}/dit_cases.safetensors");
        for p in cases {
            let x = load(&file, &format!("{p}.x"));
            let t = load(&file, &format!("{p}.t")).data[0];
            let f = load(&file, &format!("{p}.features"));
            let zeros = HostTensor::zeros(f.shape.clone());
            let inputs = [(x.clone(), t, f), (x, t, zeros)];
            let reference = f32_dit.forward(&CpuBackend, &inputs).unwrap();
            let fp16 = fp16_dit.forward(&twin, &inputs).unwrap();
            for (i, key) in ["v_cond", "v_uncond"].iter().enumerate() {
                let want = load(&file, &format!("{p}.{key}"));
                let (err, drift) = (rel_l2(&fp16[i].data, &want.data), rel_l2(&fp16[i].data, &reference[i].data));
                println!(
                    "{dir} case {p} {key}: fp16 activations vs PyTorch rel L2 {err:.2e}, vs f32 graph {drift:.2e}"
                );
                assert!(err <= 1e-2, "{dir} {p} {key}: {err:e}");
                assert!(drift > 1e-6, "{dir} {p} {key}: the fp16 graph equals the f32 one ({drift:e})");
            }
        }
    }
}

#[test]
fn sampled_latents_and_audio_drift_little_with_fp16_activations() {
    let twin = CpuBackend::new().with_fp16_activations();
    let settings = SamplerSettings { steps: 8, sigma_min: 0.3, sigma_max: 500.0, rho: 1.0, eta: 1.0, s_noise: 1.0 };
    let request = Request {
        features: load("tiny/features.safetensors", "features"),
        latent_len: 44,
        cfg_scale: 5.0,
        noise: RequestNoise { seed: 11, initial: None, steps: None },
    };
    let run = |backend: &CpuBackend| {
        let dit = load_dit(backend, "tiny");
        sample(backend, &dit, std::slice::from_ref(&request), &settings, &mut |_, _| {}).unwrap().remove(0)
    };
    let (reference, fp16) = (run(&CpuBackend), run(&twin));
    let drift = rel_l2(&fp16.data, &reference.data);
    // The audio: both latents through the same f32 VAE (the VAE has no block activations).
    let config = LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let file = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let vae = VaeDecoder::load(&CpuBackend, &config.vae_decoder, config.latent_scale, &mut |spec| {
        original_tensor(&file, spec)
    })
    .unwrap();
    let audio = vae.decode(&CpuBackend, &[reference, fp16]).unwrap();
    let snr_db = -20.0 * rel_l2(&audio[1].data, &audio[0].data).log10();
    println!(
        "tiny fixture, 8 steps, eta 1, seed 11: fp16 vs f32 activations: latents rel L2 {drift:.2e}, audio SNR {snr_db:.1} dB"
    );
    assert!(drift <= 2e-2, "{drift:e}");
    assert!(drift > 1e-6, "the fp16 graph equals the f32 one ({drift:e})");
}
