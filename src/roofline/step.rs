//! The sampler-step graph of a clip, planned from the config alone: the same
//! `Dit` and `Sampling` that `bench` and `infer` run, on a backend that keeps
//! only the weights' shapes and runs nothing. No weight is generated or read,
//! so the full-size model plans in milliseconds.

use std::ops::Range;

use crate::backend::{Backend, OpContext};
use crate::config::LovaConfig;
use crate::error::Result;
use crate::graph::{DType, Graph, Op};
use crate::models::Dit;
use crate::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use crate::tensor::HostTensor;
use crate::weights::{RandomWeights, TensorSource};

/// A backend of shapes: weights are their element counts, buffers are
/// nothing, ops do nothing. Enough for the executor to check and plan a graph
/// whose block activations have the given type (as the CUDA backend's).
struct ShapeBackend(DType);

impl Backend for ShapeBackend {
    type Buffer = ();
    type Weight = usize;

    fn name(&self) -> String {
        "shapes only".into()
    }
    fn activation_dtype(&self) -> DType {
        self.0
    }
    fn alloc(&self, _len: usize) -> Result<()> {
        Ok(())
    }
    fn upload_weight(&self, tensor: &HostTensor) -> Result<usize> {
        Ok(tensor.shape.iter().product())
    }
    /// The shape is all this backend keeps: the source is never read.
    fn upload_weight_from(&self, _source: &dyn TensorSource, _key: &str, shape: &[usize]) -> Result<usize> {
        Ok(shape.iter().product())
    }
    fn write(&self, _buffer: &mut (), _offset: usize, _data: &[f32]) -> Result<()> {
        Ok(())
    }
    fn read(&self, _buffer: &(), _offset: usize, out: &mut [f32]) -> Result<()> {
        out.fill(0.0);
        Ok(())
    }
    fn run_op(&self, _op: &Op, _ctx: &mut OpContext<'_, Self>) -> Result<()> {
        Ok(())
    }
    fn device_allocations(&self) -> u64 {
        0
    }
    fn weight_bytes(&self, _weight: &usize) -> usize {
        0
    }
    fn weight_len(&self, weight: &usize) -> usize {
        *weight
    }
}

/// One clip's step graph: cond + uncond DiT, CFG and the DPM++ update, after
/// the request constants (cross-attention K/V, timestep tables).
#[derive(Debug, Clone)]
pub struct StepGraph {
    /// The whole graph: request constants, then the step.
    pub graph: Graph,
    /// The ops of one step.
    pub step_ops: Range<usize>,
    /// Clip length in seconds.
    pub seconds: f64,
    /// Video frames N at the model's fps.
    pub frames: usize,
    /// Latent frames T'.
    pub latent_len: usize,
    /// Transformer tokens per sequence (T' + 1 with the prepended timestep token).
    pub tokens: usize,
    /// Sampler state rows x channels, the size of the noise the step draws.
    pub noise_values: usize,
}

/// Plans the step graph of one clip of `seconds` (video at the model's fps,
/// audio as long), as `bench` builds it on CUDA: one request, the paper's
/// settings, fp16 block activations (the CUDA backend's default).
pub fn plan_step(config: &LovaConfig, seconds: f64) -> Result<StepGraph> {
    plan_step_with(config, seconds, DType::F16)
}

/// `plan_step` with block activations of type `activations` (f32: the CUDA
/// backend under `LOVA_CUDA_ACTIVATIONS=f32`, as it ran before fp16 ones).
pub fn plan_step_with(config: &LovaConfig, seconds: f64, activations: DType) -> Result<StepGraph> {
    let shapes = ShapeBackend(activations);
    let frames = (seconds * config.fps).ceil() as usize;
    let latent_len = config.latent_len_for_seconds(seconds);
    config.check_lengths(latent_len, frames)?;
    let dit = Dit::load(&shapes, &RandomWeights { seed: 0 }, &config.dit, "")?;
    let cd = config.dit.cond_token_dim;
    let features = HostTensor::new(vec![frames, cd], vec![0.0; frames * cd]);
    let noise = RequestNoise { seed: 0, initial: None, steps: None };
    let requests = [Request { features, latent_len, cfg_scale: 5.0, noise }];
    let sampling = Sampling::new(&shapes, &dit, &requests, &SamplerSettings::default())?;
    let (graph, step_ops) = sampling.step_graph();
    Ok(StepGraph {
        graph: graph.clone(),
        step_ops,
        seconds,
        frames,
        latent_len,
        tokens: config.dit.transformer_len(latent_len),
        noise_values: latent_len * config.dit.io_channels,
    })
}
