//! Python inputs -> `lova_fast::Input`.

use std::path::PathBuf;

use lova_fast::Input;
use lova_fast::tensor::HostTensor;
use lova_fast::video::RgbImage;
use numpy::{PyArray2, PyArray4, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::input_error;

const KINDS: &str = "a path (str or os.PathLike) to a video, a features .safetensors file or a folder of \
                     frames, a numpy uint8 array [N, H, W, 3] of RGB frames, or a numpy float32 array \
                     [N, 768] of CLIP features";

/// The input, and the rate a features file was sampled at (`fps` given for
/// one: it goes to the request's `sample_fps`, as `infer --sample-fps`).
pub fn convert(input: &Bound<'_, PyAny>, fps: Option<f64>) -> PyResult<(Input, Option<f64>)> {
    if let Ok(array) = input.cast::<PyUntypedArray>() {
        return from_array(array, fps).map(|i| (i, None));
    }
    let Ok(path) = input.extract::<PathBuf>() else {
        return Err(input_error(&format!("input must be {KINDS}; got {}", type_name(input))));
    };
    if path.is_dir() {
        let Some(fps) = fps else {
            return Err(input_error(&format!(
                "{} is a folder of images: give its frame rate with fps=",
                path.display()
            )));
        };
        return Ok((Input::ImageFolder { dir: path, fps }, None));
    }
    // As `infer` tells its inputs apart: by the extension.
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok((Input::FeaturesFile(path), fps));
    }
    if fps.is_some() {
        return Err(input_error(&format!(
            "fps= is the frame rate of frames or features; the video {} has its own (to sample it at \
             another rate, use sample_fps=)",
            path.display()
        )));
    }
    Ok((Input::Video(path), None))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
}

fn from_array(array: &Bound<'_, PyUntypedArray>, fps: Option<f64>) -> PyResult<Input> {
    let dtype = array.dtype();
    let shape = array.shape().to_vec();
    if let Ok(frames) = array.cast::<PyArray4<u8>>() {
        if shape[3] != 3 {
            return Err(input_error(&format!("frames have shape {shape:?}: expected [N, H, W, 3] (RGB)")));
        }
        let Some(fps) = fps else {
            return Err(input_error("frames in a numpy array need their frame rate: give fps="));
        };
        let [n, h, w] = [shape[0], shape[1], shape[2]];
        if n == 0 || h == 0 || w == 0 {
            return Err(input_error(&format!("frames have shape {shape:?}: no pixels")));
        }
        let frames = frames.readonly();
        let frame_len = h * w * 3;
        // One copy into per-frame buffers (the pipeline's frame type); a
        // non-contiguous array (a slice, a transposed view) is read in order.
        // (`as_slice` also accepts Fortran order, which is not row-major.)
        let images = match frames.as_slice() {
            Ok(all) if frames.is_c_contiguous() => {
                all.chunks_exact(frame_len).map(|data| image(w, h, data.to_vec())).collect()
            }
            _ => {
                let view = frames.as_array();
                view.outer_iter().map(|f| image(w, h, f.iter().copied().collect())).collect()
            }
        };
        return Ok(Input::Frames { frames: images, fps });
    }
    if let Ok(features) = array.cast::<PyArray2<f32>>() {
        let features = features.readonly();
        let data = match features.as_slice() {
            Ok(s) if features.is_c_contiguous() => s.to_vec(),
            _ => features.as_array().iter().copied().collect(),
        };
        return Ok(Input::Features { features: HostTensor::new(shape, data), fps });
    }
    Err(input_error(&format!(
        "a numpy array input must be uint8 frames [N, H, W, 3] or float32 features [N, 768]; got {dtype} {shape:?}"
    )))
}

fn image(width: usize, height: usize, data: Vec<u8>) -> RgbImage {
    RgbImage { width, height, data }
}
