//! lova-fast: LoVA (long-form video-to-audio, ICASSP 2025) inference.
//!
//! Models (`models`) describe their computation as graphs (`graph`) of coarse
//! ops; a backend (`backend`) runs them out of one preallocated arena. The CPU
//! backend (f32) is the reference; the sampler (`sampler`) drives the DiT
//! through DPM++ 3M SDE with classifier-free guidance, many clips at once.

pub mod audio;
pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod graph;
pub mod kernels;
pub mod models;
pub mod output_paths;
pub mod partial_file;
pub mod sampler;
pub mod tensor;
pub mod video;
pub mod weights;

pub use error::{Error, Result};
