//! Safetensors files, memory-mapped: checkpoints (fetched by key with a shape
//! check, converted to f32 for the host) and the small tensor files the CLI
//! reads and writes (features, noise, latents).

mod random;
mod safetensors_file;
mod streaming_writer;
mod tensor_file;

pub use random::RandomWeights;
pub use safetensors_file::SafetensorsFile;
pub use streaming_writer::{StoredDtype, StreamingWriter, TensorEntry};
pub use tensor_file::{
    MAX_FEATURE_ABS, MAX_LATENT_ABS, MAX_NOISE_ABS, read_features, read_latents, read_noise, read_single_tensor,
    write_tensors_atomically,
};

use std::borrow::Cow;

use crate::error::Result;
use crate::tensor::HostTensor;

/// Where a model gets its weights: a checkpoint file, or random values for benchmarks.
pub trait TensorSource {
    /// Names the source in messages.
    fn describe(&self) -> String;
    /// The tensor `key` in f32; an error names the key when it is missing or has another shape.
    fn tensor(&self, key: &str, shape: &[usize]) -> Result<HostTensor>;

    /// The tensor `key` as its stored fp16 bits, when the source stores it as
    /// fp16 unchanged, so that a backend holding fp16 weights can copy them to
    /// the device without an f32 round trip (`Backend::upload_weight_from`).
    /// `None` when it is stored otherwise (the caller then uses `tensor`).
    /// Errors are those `tensor` would give. Default: always `None`, right for
    /// any source that computes or transforms its tensors.
    fn tensor_f16(&self, _key: &str, _shape: &[usize]) -> Result<Option<Cow<'_, [u16]>>> {
        Ok(None)
    }
}

impl TensorSource for SafetensorsFile {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn tensor(&self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        SafetensorsFile::tensor(self, key, shape)
    }

    fn tensor_f16(&self, key: &str, shape: &[usize]) -> Result<Option<Cow<'_, [u16]>>> {
        SafetensorsFile::tensor_f16(self, key, shape)
    }
}
