//! Random weights of any requested shape, so that benchmarks can run the model
//! at its real size without a checkpoint. Uniform in [-0.05, 0.05) from a
//! splitmix64 stream seeded by the key: deterministic, fast, and small enough
//! that activations stay finite through 24 blocks.

use rayon::prelude::*;

use super::TensorSource;
use crate::error::Result;
use crate::tensor::HostTensor;

/// Deterministic pseudo-random weights in [-0.05, 0.05), for tests and demos without a checkpoint.
pub struct RandomWeights {
    /// Seed mixed with each tensor key, so a tensor depends only on (seed, key, index).
    pub seed: u64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TensorSource for RandomWeights {
    fn describe(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }

    fn tensor(&self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        let base = key.bytes().fold(self.seed, |h, b| splitmix64(h ^ b as u64));
        let n: usize = shape.iter().product();
        let data = (0..n)
            .into_par_iter()
            .map(|i| (splitmix64(base.wrapping_add(i as u64)) >> 40) as f32 / (1u64 << 24) as f32 * 0.1 - 0.05)
            .collect();
        Ok(HostTensor::new(shape.to_vec(), data))
    }
}
