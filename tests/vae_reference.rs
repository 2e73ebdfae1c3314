//! The VAE decoder on the CPU backend against the PyTorch reference, loading
//! the weight-normalised original checkpoint (both parameter namings).

mod common;

use common::{fixture, load, rel_l2};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::VaeDecoder;
use lova_fast::models::vae::original_tensor;
use lova_fast::weights::SafetensorsFile;

fn decoder_from(checkpoint: &std::path::Path) -> lova_fast::Result<VaeDecoder<CpuBackend>> {
    let config = LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let file = SafetensorsFile::open(checkpoint).unwrap();
    VaeDecoder::load(&CpuBackend, &config.vae_decoder, config.latent_scale, &mut |spec| original_tensor(&file, spec))
}

fn check(vae: &VaeDecoder<CpuBackend>) {
    let cases = "tiny/vae_cases.safetensors";
    let (za, zb) = (load(cases, "a.latents"), load(cases, "b.latents"));
    // Both clips in one batch: each must equal the reference run alone.
    let audio = vae.decode(&CpuBackend, &[za, zb]).unwrap();
    for (p, got) in ["a", "b"].iter().zip(&audio) {
        let want = load(cases, &format!("{p}.audio"));
        assert_eq!(got.shape, want.shape);
        let err = rel_l2(&got.data, &want.data);
        println!("vae case {p} {:?}: rel L2 {err:.2e}", want.shape);
        assert!(err <= 1e-4, "{p}: {err:e}");
    }
}

#[test]
fn decoder_matches_reference_with_weight_g_and_weight_v() {
    check(&decoder_from(&fixture("tiny/checkpoint.safetensors")).unwrap());
}

#[test]
fn decoder_matches_reference_with_parametrizations_naming() {
    // Newer PyTorch stores weight norm as parametrizations.weight.original0/1.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny/checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace(".weight_g", ".parametrizations.weight.original0")
                    .replace(".weight_v", ".parametrizations.weight.original1"),
                v,
            )
        })
        .collect();
    assert!(renamed.iter().any(|(k, _)| k.contains("original1")));
    let path = dir.path().join("renamed.safetensors");
    safetensors::serialize_to_file(renamed, None, &path).unwrap();
    check(&decoder_from(&path).unwrap());
}

#[test]
fn strides_that_do_not_match_the_weights_name_the_tensor() {
    let mut config = LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    config.vae_decoder.strides = vec![2, 4, 4, 8, 4];
    let file = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let err = VaeDecoder::load(&CpuBackend, &config.vae_decoder, 1.0, &mut |spec| original_tensor(&file, spec))
        .err()
        .expect("mismatched strides accepted")
        .to_string();
    assert!(err.contains("decoder.layers.1.layers.1.weight_v") && err.contains("[64, 32, 8]"), "{err}");
}
