//! VAE decoding of a 30 s clip's latents (646 latent frames -> 1.3 M stereo samples):
//! - on CUDA: the released vl30 decoder at full size with random weights;
//! - on the CPU: the tiny test config's decoder (4 base channels).
//!
//! `cargo bench --bench vae_decode`

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::VaeDecoder;
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{RandomWeights, TensorSource};

const SECONDS: f64 = 30.0;

fn latents(config: &LovaConfig, latent_len: usize) -> HostTensor {
    RandomWeights { seed: 6 }.tensor("latents", &[config.vae_decoder.latent_dim, latent_len]).expect("latents")
}

fn bench_vae<B: Backend>(c: &mut Criterion, name: &str, backend: &B, config: &LovaConfig, vae: &VaeDecoder<B>) {
    let z = [latents(config, config.latent_len_for_seconds(SECONDS))];
    c.bench_function(name, |b| {
        b.iter(|| {
            let audio = vae.decode(backend, &z).expect("VAE");
            backend.synchronize().expect("synchronize");
            audio
        })
    });
}

fn vae(c: &mut Criterion) {
    if let Some(cuda) = common::cuda("vae_decode") {
        let config = LovaConfig::released();
        let vae = common::random_vae(&cuda, &config);
        bench_vae(c, "vae_decode/cuda/vl30_30s", &cuda, &config, &vae);
        return;
    }
    let config = common::tiny_config();
    let vae = common::random_vae(&CpuBackend, &config);
    bench_vae(c, "vae_decode/cpu/tiny_30s", &CpuBackend, &config, &vae);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = vae
}
criterion_main!(benches);
