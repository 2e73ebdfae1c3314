//! lova-fast: LoVA (long-form video-to-audio, ICASSP 2025) inference.
//!
//! A video goes in, a soundtrack of exactly its length comes out: frames are
//! sampled at 8 fps and encoded by CLIP, a diffusion transformer (DiT) samples
//! audio latents with DPM++ 3M SDE and classifier-free guidance, and the VAE
//! decodes them to 44.1 kHz stereo. [`Pipeline`] runs all of it, on a CUDA
//! GPU or on the CPU, chosen at run time ([`Device`]).
//!
//! ```
//! use lova_fast::config::LovaConfig;
//! use lova_fast::engine::WeightSource;
//! use lova_fast::models::ClipVisionConfig;
//! use lova_fast::tensor::HostTensor;
//! use lova_fast::{Device, Input, Pipeline, PipelineOptions, Request};
//!
//! // A real program opens the engine file that `lova-fast convert` wrote:
//! //     let mut pipeline = Pipeline::open_engine("lova-fast.safetensors", Device::Auto)?;
//! // Here: the tiny test model with random weights (its audio is noise).
//! let config = LovaConfig::tiny();
//! let clip = ClipVisionConfig::tiny(config.dit.cond_token_dim);
//! let options = PipelineOptions { device: Device::Cpu, ..Default::default() };
//! let mut pipeline = Pipeline::open(&WeightSource::Random { config, clip }, &options)?;
//!
//! // 2 s of CLIP features at 8 fps; `Input::Video("clip.mp4".into())` decodes a video.
//! let features = HostTensor::new(vec![16, 128], vec![0.1; 16 * 128]);
//! let request = Request::new(Input::Features { features, fps: None }).seed(1).steps(4);
//! let output = pipeline.generate(request)?;
//! let audio = output.audio.as_ref().expect("the pipeline has its VAE");
//! assert_eq!(audio.shape, [2, 88200]); // stereo, exactly 2 s at 44.1 kHz
//! // output.write_wav("clip.wav".as_ref(), lova_fast::audio::SampleFormat::Pcm16)?;
//! # Ok::<(), lova_fast::Error>(())
//! ```
//!
//! The layers under the pipeline, for those who need them: models
//! ([`models`]) describe their computation as graphs ([`graph`]) of coarse
//! ops; a backend ([`backend`]) runs them out of one preallocated arena (the
//! CPU backend, f32, is the reference; the CUDA backend uses NVRTC kernels and
//! cuBLASLt); the sampler ([`sampler`]) drives the DiT over a packed batch of
//! requests; [`engine`] reads and writes the engine weight file.

#![warn(missing_docs)]

pub mod audio;
pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod graph;
pub mod kernels;
pub mod models;
pub mod output_paths;
mod partial_file;
pub mod pipeline;
pub mod roofline;
pub mod sampler;
pub mod serve;
pub mod tensor;
pub mod video;
pub mod weights;

pub use error::{Error, Result};
pub use pipeline::{
    CancelToken, Device, Event, Input, Output, Pipeline, PipelineOptions, Progress, Request, Stage, VaeWindows,
};
