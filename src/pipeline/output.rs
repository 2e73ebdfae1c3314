//! What a generation gives back: the audio and everything needed to report on it.

use std::path::Path;

use crate::audio::{SampleFormat, write_wav};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// One request's result.
#[derive(Debug, Clone)]
pub struct Output {
    /// Stereo audio `[audio_channels, samples]`, f32 in [-1, 1] (peak-normalised),
    /// exactly `round(seconds * sample_rate)` samples. `None` only when the
    /// pipeline was opened without the VAE (`PipelineOptions::vae = false`).
    pub audio: Option<HostTensor>,
    /// Samples per second of `audio` (44100 for the released model).
    pub sample_rate: u32,
    /// Audio length D in seconds.
    pub seconds: f64,
    /// Video frames (at the sample rate) the features come from.
    pub frames: usize,
    /// The sampled latents `[io_channels, T']` (what `lova-fast decode` reads).
    pub latents: HostTensor,
    /// The CLIP features `[N, cond_token_dim]` the DiT was conditioned on.
    pub features: HostTensor,
    /// The seed of the noise generator (the request's, or the one drawn for it).
    pub seed: u64,
    /// Sampler steps run.
    pub steps: usize,
    /// Time spent per stage on this request.
    pub timings: Timings,
    /// The sampler run this request was part of (shared by its whole batch).
    pub sampling: SamplingReport,
}

impl Output {
    /// Writes the audio as a WAV file (through a temporary name, renamed when complete).
    pub fn write_wav(&self, path: &Path, format: SampleFormat) -> Result<()> {
        let audio = self
            .audio
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("no audio: the pipeline was opened without the VAE".into()))?;
        write_wav(path, audio, self.sample_rate, format)
    }
}

/// Time spent on one request per stage, in seconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Decoding and preprocessing frames (on a thread, overlapped with CLIP).
    pub decode_s: f64,
    /// CLIP (waiting for decoded frames excluded).
    pub clip_s: f64,
    /// The sampler run this request was part of (shared by its batch).
    pub sampling_s: f64,
    /// VAE decode of this request's latents, all windows.
    pub vae_s: f64,
    /// Device memory planned for the VAE decode's activations, bytes.
    pub vae_arena_bytes: usize,
}

/// One sampler run over a batch of requests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SamplingReport {
    /// Requests sampled together (at the start of the run).
    pub requests: usize,
    /// Latent frames of all of them.
    pub latent_frames: usize,
    /// Wall time of the whole run in seconds (planning, request constants and every step).
    pub sampling_s: f64,
    /// Matrix-product FLOP of one step over the whole batch (DiT on cond + uncond).
    pub step_flops: u64,
    /// Achieved rate: step FLOP x steps / sampling time.
    pub sampling_tflops: f64,
    /// Device memory planned for the DiT's activations and the sampler state, bytes.
    pub sampling_arena_bytes: usize,
}
