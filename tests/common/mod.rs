//! Helpers shared by the integration tests: fixture paths, fixture tensors
//! and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

/// A fixture file. `LOVA_FIXTURES` overrides the folder, for test binaries
/// copied to another machine (tools/device-check.sh).
pub fn fixture(path: &str) -> PathBuf {
    match std::env::var_os("LOVA_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path),
    }
}

pub fn load(file: &str, key: &str) -> HostTensor {
    SafetensorsFile::open(&fixture(file))
        .unwrap_or_else(|e| panic!("{e}"))
        .tensor_any_shape(key)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `||got - want|| / ||want||`, accumulated in f64.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max)
}

/// Reads the raw f64 `sigmas` of a sampler fixture (the loader only does f32/f16/bf16).
pub fn load_f64(file: &str, key: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F64);
    view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}
