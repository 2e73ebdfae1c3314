//! The VAE decoder on the CPU backend against the PyTorch reference, loading
//! the weight-normalised original checkpoint (both parameter namings).

mod common;

use common::{fixture, load, rel_l2};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::VaeDecoder;
use lova_fast::models::vae::{original_tensor, planned_arena_bytes, receptive_field, weight_bytes_fp16};
use lova_fast::tensor::HostTensor;
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

fn tiny_decoder() -> VaeDecoder<CpuBackend> {
    decoder_from(&fixture("tiny/checkpoint.safetensors")).unwrap()
}

fn latents(t: usize, seed: usize) -> HostTensor {
    HostTensor::new(
        vec![64, t],
        (0..64 * t).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0).collect(),
    )
}

/// The computed receptive field is a true bound, and not a loose one: changing one
/// latent frame changes audio only within `receptive_field` frames of it, and does
/// change audio near that bound.
#[test]
fn receptive_field_bounds_where_one_latent_frame_reaches() {
    let vae = tiny_decoder();
    let (rf, up, t, k) = (receptive_field(&vae.config), vae.upsampling(), 41, 20);
    let z = latents(t, 1);
    let mut z2 = z.clone();
    for c in 0..64 {
        z2.data[c * t + k] += 0.5;
    }
    let out = vae.decode(&CpuBackend, &[z, z2]).unwrap();
    let samples = t * up;
    let changed: Vec<usize> = (0..samples)
        .filter(|&j| (0..out[0].shape[0]).any(|c| out[0].data[c * samples + j] != out[1].data[c * samples + j]))
        .collect();
    let (lo, hi) = (changed[0], *changed.last().unwrap());
    println!("receptive field {rf} latent frames; frame {k} changed samples {lo}..={hi} ({up} per frame)");
    assert!(lo >= (k - rf) * up && hi < (k + rf + 1) * up, "reach beyond the computed receptive field");
    assert!(lo < (k + 1 - rf) * up || hi >= (k + rf) * up, "receptive field {rf} is loose");
}

/// Chunked decoding with `receptive_field` frames of context equals the whole
/// decode. The sums are the same products in the same order (the GEMM's K loop
/// does not depend on the number of rows), so the bound is f32 rounding at most:
/// relative L2 1e-6.
#[test]
fn chunked_decode_equals_whole_decode() {
    let vae = tiny_decoder();
    let rf = receptive_field(&vae.config);
    for (t, chunk) in [(37, 5), (37, 1), (44, 2 * rf + 3), (9, 100)] {
        let z = latents(t, t);
        let whole = vae.decode(&CpuBackend, std::slice::from_ref(&z)).unwrap().remove(0);
        let chunked = vae.decode_chunked(&CpuBackend, &z, chunk).unwrap();
        assert_eq!(chunked.shape, whole.shape);
        let err = rel_l2(&chunked.data, &whole.data);
        println!("T' {t} chunk {chunk}: chunked vs whole rel L2 {err:.2e}");
        assert!(err <= 1e-6, "T' {t} chunk {chunk}: {err:e}");
    }
    assert!(vae.decode_chunked(&CpuBackend, &latents(3, 0), 0).is_err());
}

/// The planned memory of a full-size decode of the longest clip (139 s at 44.1 kHz),
/// computed from the config alone: it must fit an 80 GB card without chunking.
#[test]
fn full_size_139_s_decode_plan_fits_80_gb() {
    let config = LovaConfig::released();
    let t = config.latent_len_for_seconds(139.0);
    let arena = planned_arena_bytes(&config.vae_decoder, &[t]).unwrap();
    let weights = weight_bytes_fp16(&config.vae_decoder);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!(
        "full-size VAE decode of 139 s (T' {t}, {} samples): arena {:.2} GiB + weights {:.2} GiB; \
         receptive field {} latent frames",
        t * 2048,
        gib(arena),
        gib(weights),
        receptive_field(&config.vae_decoder)
    );
    assert!(arena + weights < 80_000_000_000, "{arena} + {weights} bytes");
    // The last stage alone holds three [T' * 2048, 128] f32 tensors (x, the k7 conv's
    // output, the unit's output): the plan cannot be smaller than that.
    assert!(arena >= 3 * t * 2048 * 128 * 4, "{arena}");
}
