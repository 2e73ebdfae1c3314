//! The small tensor files of the CLI: one named tensor in (features, noise),
//! named tensors out (latents), written so that a failure never leaves a
//! partial file behind.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::SafetensorsFile;
use crate::error::{Error, Result};
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
