//! `lova_fast.Result`: one generation's audio and what produced it.

use std::path::PathBuf;

use lova_fast::Output;
use lova_fast::audio::SampleFormat;
use lova_fast::tensor::HostTensor;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{input_error, lova_error, to_py_err};

/// The result of one generation.
///
/// audio: numpy float32 [2, samples], stereo in [-1, 1] (None when the
///     pipeline was opened with vae=False).
/// sample_rate: samples per second (44100).
/// seconds: audio length; frames: video frames (at the sample rate) encoded.
/// seed: the noise seed (the one given, or the one drawn).
/// steps: sampler steps run.
/// latents: numpy float32 [64, T'], what the VAE decoded.
/// features: numpy float32 [N, 768], the CLIP features the DiT saw.
/// timings: dict of seconds per stage (decode_s, clip_s, sampling_s, vae_s)
///     and of the sampler batch this input was part of (batch_requests,
///     batch_latent_frames, batch_tflops).
#[pyclass(module = "lova_fast", name = "Result", frozen)]
pub struct GenerationResult {
    #[pyo3(get)]
    audio: Option<Py<PyArray2<f32>>>,
    #[pyo3(get)]
    sample_rate: u32,
    #[pyo3(get)]
    seconds: f64,
    #[pyo3(get)]
    frames: usize,
    #[pyo3(get)]
    seed: u64,
    #[pyo3(get)]
    steps: usize,
    #[pyo3(get)]
    latents: Py<PyArray2<f32>>,
    #[pyo3(get)]
    features: Py<PyArray2<f32>>,
    timings: Vec<(&'static str, f64)>,
}

/// A 2-D tensor as a numpy array that owns the tensor's buffer (no copy).
fn to_numpy(py: Python<'_>, tensor: HostTensor) -> PyResult<Py<PyArray2<f32>>> {
    let [rows, cols] = tensor.shape[..] else {
        return Err(lova_error(format!("internal error: a 2-D tensor has shape {:?}", tensor.shape)));
    };
    Ok(PyArray1::from_vec(py, tensor.data).reshape([rows, cols])?.unbind())
}

impl GenerationResult {
    pub fn new(py: Python<'_>, output: Output) -> PyResult<Self> {
        let t = &output.timings;
        let s = &output.sampling;
        let timings = vec![
            ("decode_s", t.decode_s),
            ("clip_s", t.clip_s),
            ("sampling_s", t.sampling_s),
            ("vae_s", t.vae_s),
            ("batch_requests", s.requests as f64),
            ("batch_latent_frames", s.latent_frames as f64),
            ("batch_tflops", s.sampling_tflops),
        ];
        Ok(GenerationResult {
            audio: output.audio.map(|a| to_numpy(py, a)).transpose()?,
            sample_rate: output.sample_rate,
            seconds: output.seconds,
            frames: output.frames,
            seed: output.seed,
            steps: output.steps,
            latents: to_numpy(py, output.latents)?,
            features: to_numpy(py, output.features)?,
            timings,
        })
    }

    fn audio_tensor(&self, py: Python<'_>) -> PyResult<HostTensor> {
        let Some(audio) = &self.audio else {
            return Err(input_error("no audio: the pipeline was opened without the VAE (vae=False)"));
        };
        let audio = audio.bind(py).readonly();
        Ok(HostTensor::new(audio.shape().to_vec(), audio.as_array().iter().copied().collect()))
    }
}

fn format(float32: bool) -> SampleFormat {
    if float32 { SampleFormat::Float32 } else { SampleFormat::Pcm16 }
}

#[pymethods]
impl GenerationResult {
    /// Seconds per stage, and the sampler batch this input was part of.
    #[getter]
    fn timings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in &self.timings {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// Writes the audio as a WAV file: 16-bit PCM as `lova-fast infer` writes
    /// (float32=True: 32-bit float, as `infer --float`).
    #[pyo3(signature = (path, *, float32 = false))]
    fn write_wav(&self, py: Python<'_>, path: PathBuf, float32: bool) -> PyResult<()> {
        let audio = self.audio_tensor(py)?;
        py.detach(|| lova_fast::audio::write_wav(&path, &audio, self.sample_rate, format(float32)))
            .map_err(|e| to_py_err(py, e))
    }

    /// Writes `out`: the video `video` with this audio as its soundtrack (the
    /// video stream copied, not re-encoded; needs FFmpeg).
    #[pyo3(signature = (video, out, *, float32 = false))]
    fn mux(&self, py: Python<'_>, video: PathBuf, out: PathBuf, float32: bool) -> PyResult<()> {
        let audio = self.audio_tensor(py)?;
        let sample_rate = self.sample_rate;
        py.detach(|| -> lova_fast::Result<()> {
            let dir = tempfile::tempdir().map_err(|e| lova_fast::Error::io(std::env::temp_dir(), e))?;
            let wav = dir.path().join("audio.wav");
            lova_fast::audio::write_wav(&wav, &audio, sample_rate, format(float32))?;
            lova_fast::video::mux::mux_audio(&video, &wav, &out)
        })
        .map_err(|e| to_py_err(py, e))
    }

    fn __repr__(&self) -> String {
        format!(
            "lova_fast.Result(seconds={:.3}, sample_rate={}, seed={}, steps={}, frames={})",
            self.seconds, self.sample_rate, self.seed, self.steps, self.frames
        )
    }
}
