//! Safetensors files, memory-mapped: checkpoints (fetched by key with a shape
//! check, converted to f32 for the host) and the small tensor files the CLI
//! reads and writes (features, noise, latents).

mod safetensors_file;
mod tensor_file;

pub use safetensors_file::SafetensorsFile;
pub use tensor_file::{read_single_tensor, write_tensors_atomically};
