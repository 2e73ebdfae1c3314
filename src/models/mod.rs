//! Models: each loads its weights by checkpoint key (with shape checks) and
//! describes its computation as graph ops.

pub mod clip;
/// The LoVA DiT denoiser as graph construction.
pub mod dit;
/// The Oobleck VAE decoder as graph construction.
pub mod vae;

pub use clip::{ClipVision, ClipVisionConfig};
pub use dit::{Dit, DitBatch, DitConditioning, DitSequence, TimestepTables};
pub use vae::VaeDecoder;
