//! End to end for a 30 s clip through the library's `Pipeline`, weights loaded,
//! from decoded RGB frames in memory (video decoding excluded; CLIP
//! preprocessing included): CLIP on the 240 frames -> 150 sampler steps (CFG 5,
//! DPM++ 3M SDE) -> VAE decoding to 44.1 kHz stereo.
//! - on CUDA: the released vl30 config at full size with random weights;
//! - on the CPU: the tiny test config and the demo's tiny CLIP.
//!
//! `cargo bench --bench end_to_end`

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use lova_fast::config::LovaConfig;
use lova_fast::engine::WeightSource;
use lova_fast::models::ClipVisionConfig;
use lova_fast::models::clip::CLIP_VIT_L14;
use lova_fast::video::RgbImage;
use lova_fast::{Device, Input, Pipeline, PipelineOptions, Request};

const SECONDS: f64 = 30.0;
/// The frames' own rate: 25 fps, sampled at the model's 8 fps by the pipeline.
const SOURCE_FPS: f64 = 25.0;

fn bench(c: &mut Criterion, name: &str, device: Device, config: LovaConfig, clip: ClipVisionConfig) {
    let options = PipelineOptions { device, ..Default::default() };
    let mut pipeline = Pipeline::open(&WeightSource::Random { config, clip }, &options).expect("pipeline");
    // A moving gradient, 320x240: something CLIP has to resize and crop.
    let frames: Vec<RgbImage> = (0..(SECONDS * SOURCE_FPS) as usize)
        .map(|i| RgbImage {
            width: 320,
            height: 240,
            data: (0..320 * 240 * 3).map(|p| ((p / 3 + i * 7) % 251) as u8).collect(),
        })
        .collect();
    let request = Request::new(Input::Frames { frames, fps: SOURCE_FPS }).seed(1);
    let output = pipeline.generate(request.clone()).expect("end to end");
    let t = &output.timings;
    eprintln!(
        "{name} on {}: one run: decode+preprocess {:.3} s | CLIP {:.3} s | sampling {:.3} s (150 steps) | VAE {:.3} s",
        pipeline.device_name(),
        t.decode_s,
        t.clip_s,
        t.sampling_s,
        t.vae_s
    );
    c.bench_function(name, |b| b.iter(|| pipeline.generate(request.clone()).expect("end to end")));
}

fn end_to_end(c: &mut Criterion) {
    if let Some(cuda) = common::cuda("end_to_end") {
        drop(cuda);
        bench(c, "end_to_end/cuda/vl30_30s", Device::Cuda(0), LovaConfig::released(), CLIP_VIT_L14);
        return;
    }
    let config = common::tiny_config();
    let clip = ClipVisionConfig::tiny(config.dit.cond_token_dim);
    bench(c, "end_to_end/cpu/tiny_30s", Device::Cpu, config, clip);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = end_to_end
}
criterion_main!(benches);
