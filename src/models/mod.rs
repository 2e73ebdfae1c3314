//! Models: each declares its weights by checkpoint key once (`declare`: loading,
//! listing and `convert` walk that one declaration) and describes its
//! computation as graph ops through the shared builders of `layers`.

pub mod clip;
pub mod declare;
/// The LoVA DiT denoiser as graph construction.
pub mod dit;
pub mod layers;
/// The Oobleck VAE decoder as graph construction.
pub mod vae;

pub use clip::{ClipVision, ClipVisionConfig};
pub use dit::{Dit, DitBatch, DitConditioning, DitSequence, TimestepTables};
pub use vae::VaeDecoder;
