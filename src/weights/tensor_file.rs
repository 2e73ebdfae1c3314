//! The small tensor files of the CLI: one named tensor in (features, noise),
//! named tensors out (latents), written so that a failure never leaves a
//! partial file behind.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::SafetensorsFile;
use crate::error::{Error, Result, ensure_within};
use crate::partial_file::partial_path_for;
use crate::tensor::HostTensor;

/// Reads tensor `name` from a safetensors file, checking that it is 2-D with
/// `cols` columns (any row count) when `cols` is given.
pub fn read_single_tensor(path: &Path, name: &str, cols: Option<usize>) -> Result<HostTensor> {
    let file = SafetensorsFile::open(path)?;
    let t = file.tensor_any_shape(name)?;
    if let Some(cols) = cols
        && (t.shape.len() != 2 || t.shape[1] != cols)
    {
        return Err(Error::InvalidInput(format!(
            "tensor `{name}` in {} has shape {:?}, expected [N, {cols}]",
            path.display(),
            t.shape
        )));
    }
    Ok(t)
}

/// Largest magnitude accepted in a features file. CLIP ViT-L/14 image
/// embeddings are of order 1; 1e4 leaves room for any other encoder while
/// refusing values that would overflow the DiT's f32 attention and matrix
/// products (1e4 squared times a 768-wide dot product stays far below f32's 3e38).
pub const MAX_FEATURE_ABS: f32 = 1e4;

/// Largest magnitude accepted in a latents file. The VAE's latents and the
/// sampler's results are of order 1 (a few units at most); 1e4 is far beyond
/// them and far below what overflows the decoder's f32 convolutions (latents
/// near 3e38 decoded to NaN, then to an all-zero WAV).
pub const MAX_LATENT_ABS: f32 = 1e4;

/// Largest magnitude accepted in an initial-noise file: Gaussian noise beyond
/// 1e3 standard deviations does not happen; larger values are not noise.
pub const MAX_NOISE_ABS: f32 = 1e3;

/// The CLIP features `features` `[N, cols]` of a features file, refused when
/// not finite or beyond `MAX_FEATURE_ABS`, or with another width.
pub fn read_features(path: &Path, cols: usize) -> Result<HostTensor> {
    let t = read_single_tensor(path, "features", Some(cols))?;
    ensure_within(&format!("tensor `features` in {}", path.display()), &t.data, MAX_FEATURE_ABS)?;
    Ok(t)
}

/// The latents `latents` `[channels, T']` (T' >= 1) of a latents file (`infer
/// --save-latents`), refused when not finite or beyond `MAX_LATENT_ABS`.
pub fn read_latents(path: &Path, channels: usize) -> Result<HostTensor> {
    read_rows_by_time(path, "latents", channels, MAX_LATENT_ABS)
}

/// The initial noise `noise` `[channels, T']` of a noise file (`--init-noise`),
/// refused when not finite or beyond `MAX_NOISE_ABS`.
pub fn read_noise(path: &Path, channels: usize) -> Result<HostTensor> {
    read_rows_by_time(path, "noise", channels, MAX_NOISE_ABS)
}

fn read_rows_by_time(path: &Path, name: &str, channels: usize, max_abs: f32) -> Result<HostTensor> {
    let t = read_single_tensor(path, name, None)?;
    if t.shape.len() != 2 || t.shape[0] != channels || t.shape[1] == 0 {
        return Err(Error::InvalidInput(format!(
            "tensor `{name}` in {} has shape {:?}, expected [{channels}, T'] with T' >= 1",
            path.display(),
            t.shape
        )));
    }
    ensure_within(&format!("tensor `{name}` in {}", path.display()), &t.data, max_abs)?;
    Ok(t)
}

/// Writes f32 tensors to `path` through a temporary file in the same folder
/// and a rename, so that readers never see (and errors never leave) a partial file.
pub fn write_tensors_atomically(
    path: &Path,
    tensors: &[(&str, &HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| bytemuck::cast_slice(&t.data).to_vec()).collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (*name, v))
                .map_err(|e| Error::InvalidInput(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let serialized = safetensors::serialize(views, metadata)
        .map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let tmp = partial_path_for(path)?;
    let result = std::fs::write(&tmp, &serialized).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}
