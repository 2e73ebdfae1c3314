//! Models: each loads its weights by checkpoint key (with shape checks) and
//! describes its computation as graph ops.

pub mod dit;
pub mod vae;

pub use dit::{Dit, DitBatch, DitSequence};
pub use vae::VaeDecoder;
