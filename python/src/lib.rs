//! Python bindings of lova-fast: `import lova_fast`.
//!
//! A thin layer over `lova_fast::Pipeline`: Python values become `Request`s,
//! `Output`s become `Result` objects holding numpy arrays (moved, not
//! copied, out of the Rust vectors), and `lova_fast::Error`s become Python
//! exceptions with the library's messages. Generation runs with the GIL
//! released; progress events take the GIL back to call the user's callback and
//! to run Python's signal handlers, so that Ctrl-C cancels within one step.

mod errors;
mod input;
mod progress;
mod result;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;

use lova_fast::config::LovaConfig;
use lova_fast::engine::WeightSource;
use lova_fast::sampler::SamplerSettings;
use lova_fast::{CancelToken, Device, PipelineOptions, Request};
use pyo3::prelude::*;
use pyo3::types::PyList;

use errors::to_py_err;
use progress::PyProgress;
use result::GenerationResult;

/// A LoVA model loaded on one device, ready to turn videos into audio.
///
/// Pipeline(weights, device="auto", threads=None, *, clip=True, vae=True)
///
/// weights: the engine file written by `lova-fast convert`.
/// device: "auto" (the CUDA GPU 0 when usable, else the CPU), "cpu", "cuda"
///     or "cuda:N".
/// threads: CPU threads for the CPU backend (default: all cores). Rayon's
///     pool is process-wide: the first pipeline that names a count sets it,
///     and a later one that names another count raises ValueError.
/// clip: load the CLIP image tower (video and frame inputs need it; features
///     inputs do not, and skipping it saves ~0.6 GB).
/// vae: load the VAE decoder (without it a Result has latents but no audio).
///
/// Pipeline.from_checkpoint(checkpoint, clip_file, config=None, ...) opens the
/// original LoVA checkpoint instead (converted while loading, so slower).
///
/// One generation runs at a time per pipeline; other Python threads calling
/// it wait (without holding the GIL). To use many inputs at once, pass them to
/// generate_many: they are sampled together in one packed batch.
#[pyclass(module = "lova_fast", name = "Pipeline", frozen)]
struct PyPipeline {
    inner: Mutex<lova_fast::Pipeline>,
    config: LovaConfig,
    device: String,
    device_note: Option<String>,
}

fn parse_device(device: &str) -> PyResult<Device> {
    device.parse::<Device>().map_err(|e| Python::attach(|py| to_py_err(py, e)))
}

/// Sizes rayon's global pool, which the CPU backend runs on.
fn set_threads(threads: Option<usize>) -> PyResult<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err(errors::input_error("threads must be at least 1"));
    }
    if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_err() && rayon::current_num_threads() != n {
        return Err(errors::input_error(&format!(
            "threads={n}: the CPU thread pool of this process already has {} threads (it is process-wide and \
             set once, by the first pipeline or the first generation)",
            rayon::current_num_threads()
        )));
    }
    Ok(())
}

/// Runs `f`, turning a panic into a Python exception (no panic may unwind
/// into the interpreter).
fn no_panic<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        errors::lova_error(format!("internal error in lova-fast (please report it): {message}"))
    })
}

impl PyPipeline {
    fn open(
        py: Python<'_>,
        weights: WeightSource<'_>,
        options: PipelineOptions,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        set_threads(threads)?;
        let opened = py.detach(|| no_panic(|| lova_fast::Pipeline::open(&weights, &options)))?;
        let pipeline = opened.map_err(|e| to_py_err(py, e))?;
        Ok(PyPipeline {
            config: pipeline.config().clone(),
            device: pipeline.device_name(),
            device_note: pipeline.device_note().map(str::to_string),
            inner: Mutex::new(pipeline),
        })
    }

    /// Runs requests with the GIL released; one result per request.
    fn run(
        &self,
        py: Python<'_>,
        requests: Vec<Request>,
        progress: &mut PyProgress,
    ) -> PyResult<Vec<lova_fast::Result<lova_fast::Output>>> {
        let outputs = py.detach(|| {
            no_panic(|| {
                // A panic in an earlier call poisoned the lock; the pipeline's
                // state is per call, so it is still usable.
                let mut pipeline = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                pipeline.generate_many(requests, progress)
            })
        })?;
        // Ctrl-C or an exception in the callback: the call ends with it.
        if let Some(err) = progress.take_error() {
            return Err(err);
        }
        Ok(outputs)
    }
}

/// The settings every request of one call shares.
struct Settings {
    sampler: SamplerSettings,
    cfg: f32,
    seconds: Option<f64>,
    sample_fps: Option<f64>,
}

impl Settings {
    fn request(&self, input: lova_fast::Input, seed: Option<u64>, cancel: CancelToken) -> Request {
        let mut request = Request::new(input);
        request.seed = seed;
        request.sampler = self.sampler.clone();
        request.cfg_scale = self.cfg;
        request.seconds = self.seconds;
        request.sample_fps = self.sample_fps;
        request.cancel = Some(cancel);
        request
    }
}

#[pymethods]
impl PyPipeline {
    #[new]
    #[pyo3(signature = (weights, device = "auto", threads = None, *, clip = true, vae = true))]
    fn new(
        py: Python<'_>,
        weights: PathBuf,
        device: &str,
        threads: Option<usize>,
        clip: bool,
        vae: bool,
    ) -> PyResult<Self> {
        let options = PipelineOptions { device: parse_device(device)?, clip, vae, ..Default::default() };
        Self::open(py, WeightSource::Engine(&weights), options, threads)
    }

    /// Opens the original LoVA checkpoint (fp32, PyTorch key names) with a
    /// CLIP checkpoint (OpenAI or Hugging Face layout), converting while it
    /// loads (an engine file from `lova-fast convert` opens faster).
    ///
    /// config: the LoVA model_config.json (default: the released model's).
    /// clip_file: None opens the model without CLIP (features inputs only).
    #[classmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (checkpoint, clip_file, config = None, device = "auto", threads = None, *, vae = true))]
    fn from_checkpoint(
        _cls: &Bound<'_, pyo3::types::PyType>,
        py: Python<'_>,
        checkpoint: PathBuf,
        clip_file: Option<PathBuf>,
        config: Option<PathBuf>,
        device: &str,
        threads: Option<usize>,
        vae: bool,
    ) -> PyResult<Self> {
        let config = match config {
            Some(path) => LovaConfig::from_file(&path),
            None => Ok(LovaConfig::released()),
        }
        .map_err(|e| to_py_err(py, e))?;
        let options = PipelineOptions {
            device: parse_device(device)?,
            clip: clip_file.is_some(),
            clip_file,
            vae,
            ..Default::default()
        };
        Self::open(py, WeightSource::Original { checkpoint: &checkpoint, config }, options, threads)
    }

    /// The device in words ("cpu (f32, 8 threads)", the GPU's name, ...).
    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// Why device="auto" runs on the CPU (None when it did not fall back).
    #[getter]
    fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// Audio samples per second (44100 for the released model).
    #[getter]
    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// The rate video frames are sampled at for CLIP (8 for the released model).
    #[getter]
    fn fps(&self) -> f64 {
        self.config.fps
    }

    /// Generates the audio of one input; returns a Result.
    ///
    /// input: one of
    ///   - a video file path (anything FFmpeg decodes);
    ///   - a `.safetensors` file with one tensor `features` [N, 768] (as
    ///     `lova-fast infer --save-features` writes);
    ///   - a folder of PNG/JPEG frames (in name order), with `fps`;
    ///   - a numpy uint8 array [N, H, W, 3] of RGB frames, with `fps`;
    ///   - a numpy float32 array [N, 768] of CLIP features (`fps`: the rate
    ///     they were sampled at; default the model's 8).
    /// seed: noise seed (None: a random one, reported as Result.seed).
    /// steps, cfg, eta: sampler steps, classifier-free guidance scale and
    ///     DPM++ noise (the paper's 150, 5.0, 1.0 by default).
    /// seconds: audio length (default: the video's duration, N / fps for features).
    /// sample_fps: sample video frames at this rate instead of the model's
    ///     (for a features file: the rate its frames were sampled at).
    /// progress: called as progress(stage, done, total) with stage one of
    ///     "decode", "clip", "sampling", "vae", with the GIL held. An
    ///     exception it raises cancels the generation and is re-raised.
    ///
    /// The GIL is released while generating. Ctrl-C (KeyboardInterrupt)
    /// cancels within one sampler step. Raises InputError (a ValueError) for
    /// bad input, DeviceError (a RuntimeError) for device failures.
    #[pyo3(signature = (input, *, seed = None, steps = 150, cfg = 5.0, eta = 1.0, seconds = None, fps = None, sample_fps = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        seed: Option<u64>,
        steps: usize,
        cfg: f32,
        eta: f64,
        seconds: Option<f64>,
        fps: Option<f64>,
        sample_fps: Option<f64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<GenerationResult> {
        let settings = Settings { sampler: sampler(steps, eta), cfg, seconds, sample_fps };
        let (input, input_sample_fps) = input::convert(input, fps)?;
        let cancel = CancelToken::new();
        let mut request = settings.request(input, seed, cancel.clone());
        request.sample_fps = request.sample_fps.or(input_sample_fps);
        let mut progress = PyProgress::new(progress, vec![cancel], false);
        let output = self.run(py, vec![request], &mut progress)?.remove(0).map_err(|e| to_py_err(py, e))?;
        GenerationResult::new(py, output)
    }

    /// Generates many inputs in one packed batch (clips of any lengths);
    /// returns a list with, per input in order, a Result or the exception
    /// that input met (returned, not raised: the others still complete).
    ///
    /// inputs: a list of inputs of any kinds generate takes.
    /// seed: None (random seeds), an int for every input, or a list of one
    ///     seed (or None) per input.
    /// progress: called as progress(index, stage, done, total), index being
    ///     the input's position. Ctrl-C or an exception in progress cancels the
    ///     whole call and is raised. Other arguments as for generate.
    #[pyo3(signature = (inputs, *, seed = None, steps = 150, cfg = 5.0, eta = 1.0, seconds = None, fps = None, sample_fps = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_many(
        &self,
        py: Python<'_>,
        inputs: Vec<Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
        steps: usize,
        cfg: f32,
        eta: f64,
        seconds: Option<f64>,
        fps: Option<f64>,
        sample_fps: Option<f64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyList>> {
        let seeds = seeds_for(seed, inputs.len())?;
        let settings = Settings { sampler: sampler(steps, eta), cfg, seconds, sample_fps };
        // Inputs that cannot become requests get their exception in place;
        // the rest go to the pipeline together.
        let mut slots: Vec<Option<PyErr>> = Vec::with_capacity(inputs.len());
        let mut requests = Vec::new();
        let mut tokens = Vec::new();
        for (input, seed) in inputs.iter().zip(seeds) {
            match input::convert(input, fps) {
                Ok((input, input_sample_fps)) => {
                    let cancel = CancelToken::new();
                    let mut request = settings.request(input, seed, cancel.clone());
                    request.sample_fps = request.sample_fps.or(input_sample_fps);
                    requests.push(request);
                    tokens.push(cancel);
                    slots.push(None);
                }
                Err(e) => slots.push(Some(e)),
            }
        }
        // Progress reports the index of the input, not of the request.
        let positions: Vec<usize> = slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
        let mut progress = PyProgress::new(progress, tokens, true).with_positions(positions);
        let mut outputs = self.run(py, requests, &mut progress)?.into_iter();
        let list = PyList::empty(py);
        for slot in slots {
            let item: Py<PyAny> = match slot {
                Some(err) => err.into_value(py).into_any(),
                None => match outputs.next() {
                    Some(Ok(output)) => Py::new(py, GenerationResult::new(py, output)?)?.into_any(),
                    Some(Err(e)) => to_py_err(py, e).into_value(py).into_any(),
                    None => return Err(errors::lova_error("internal error: fewer outputs than requests".into())),
                },
            };
            list.append(item)?;
        }
        Ok(list.unbind())
    }

    fn __repr__(&self) -> String {
        format!("lova_fast.Pipeline(device={:?}, sample_rate={})", self.device, self.config.sample_rate)
    }
}

fn sampler(steps: usize, eta: f64) -> SamplerSettings {
    SamplerSettings { steps, eta, ..SamplerSettings::default() }
}

/// `seed` as one seed per input.
fn seeds_for(seed: Option<&Bound<'_, PyAny>>, count: usize) -> PyResult<Vec<Option<u64>>> {
    let Some(seed) = seed.filter(|s| !s.is_none()) else { return Ok(vec![None; count]) };
    if let Ok(one) = seed.extract::<u64>() {
        return Ok(vec![Some(one); count]);
    }
    let seeds: Vec<Option<u64>> = seed
        .extract()
        .map_err(|_| errors::input_error("seed must be None, a non-negative int, or a list of one per input"))?;
    if seeds.len() != count {
        return Err(errors::input_error(&format!("{} seeds for {count} inputs: give one per input", seeds.len())));
    }
    Ok(seeds)
}

/// The extension module, imported as `lova_fast` (the Rust function has
/// another name: `lova_fast` is the engine crate here).
#[pymodule]
#[pyo3(name = "lova_fast")]
fn lova_fast_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPipeline>()?;
    m.add_class::<GenerationResult>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
