//! CLIP image features for the 240 frames of a 30 s clip (8 fps), in batches of
//! `CLIP_BATCH` frames through one planned graph as `infer` encodes them, from
//! preprocessed frames (no video decoding):
//! - on CUDA: ViT-L/14 at full size with random weights;
//! - on the CPU: a one-block CLIP of width 64 (the demo's).
//!
//! `cargo bench --bench clip_encode`

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::backend::{Backend, CpuBackend};
use lova_fast::models::clip::CLIP_VIT_L14;
use lova_fast::models::{ClipVision, ClipVisionConfig};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{RandomWeights, TensorSource};

const FRAMES: usize = 240;

fn images(n: usize, size: usize) -> HostTensor {
    RandomWeights { seed: 5 }.tensor("images", &[n, 3, size, size]).expect("images")
}

fn encode_all<B: Backend>(backend: &B, clip: &ClipVision<B>, frames: &HostTensor) -> lova_fast::Result<usize> {
    let rows = clip.encode(backend, frames)?.shape[0];
    backend.synchronize()?;
    Ok(rows)
}

fn bench_clip<B: Backend>(c: &mut Criterion, name: &str, backend: &B, clip: &ClipVision<B>) {
    let frames = images(FRAMES, clip.config.image_size);
    c.bench_function(name, |b| b.iter(|| encode_all(backend, clip, &frames).expect("CLIP")));
}

fn clip(c: &mut Criterion) {
    if let Some(cuda) = common::cuda("clip_encode") {
        let clip = common::random_clip(&cuda, &CLIP_VIT_L14);
        bench_clip(c, "clip_encode/cuda/vit_l14_240_frames", &cuda, &clip);
        return;
    }
    let clip = common::random_clip(&CpuBackend, &ClipVisionConfig::tiny(common::tiny_config().dit.cond_token_dim));
    bench_clip(c, "clip_encode/cpu/tiny_240_frames", &CpuBackend, &clip);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = clip
}
criterion_main!(benches);
