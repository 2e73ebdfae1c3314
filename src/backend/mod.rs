//! Backends run graph ops on one kind of device. The CPU backend (f32) is the
//! reference every other backend is tested against, op by op; the CUDA backend
//! (fp16 weights, fp16 block activations) loads the CUDA libraries at run time.

pub mod cpu;
pub mod cuda;
/// A wrapper that times every op per op kind (`bench --profile`).
pub mod profiled;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::graph::{ArenaPlan, DType, Graph, Op, WeightId};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;

/// A kind of device that runs graph ops: memory, weights and one method per op.
pub trait Backend: Sync {
    /// A block of device memory holding f32 values (the arena).
    type Buffer;
    /// A weight tensor resident on the device.
    type Weight;

    /// The backend in words, for reports (`cpu (f32, 2 threads)`, the GPU's name).
    fn name(&self) -> String;
    /// The type this backend keeps block activations in (`Graph::activations`):
    /// a model graph built for this backend starts with
    /// `Graph::with_activations(backend.activation_dtype())`. Default: f32.
    fn activation_dtype(&self) -> DType {
        DType::F32
    }
    /// Allocates a buffer of `len` f32 values (an arena).
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// Puts a weight on the device (in the layout and precision the backend keeps it in).
    fn upload_weight(&self, tensor: &HostTensor) -> Result<Self::Weight>;
    /// Uploads the tensor `key` of `source`, with `TensorSource::tensor`'s
    /// shape check, exactly as `upload_weight` of what `tensor` returns would.
    /// A backend may read the stored bits itself instead (the CUDA backend
    /// copies fp16 tensors from the file to the device with no f32 round trip,
    /// `TensorSource::tensor_f16`). Default: `tensor`, then `upload_weight`.
    fn upload_weight_from(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> Result<Self::Weight> {
        self.upload_weight(&source.tensor(key, shape)?)
    }
    /// Uploads the tensor `key` of `source` that matrix products (Linear,
    /// convolutions) read as their weight, `product` telling how. A backend
    /// that keeps such weights in a layout of its own may make it now and keep
    /// nothing else (the bf16 CPU backend packs it and holds no f32 copy).
    /// Default: `upload_weight_from`.
    fn upload_product_weight_from(
        &self,
        source: &dyn TensorSource,
        key: &str,
        shape: &[usize],
        product: ProductWeight,
    ) -> Result<Self::Weight> {
        let _ = product;
        self.upload_weight_from(source, key, shape)
    }
    /// Copies `data` into `buffer` from element `offset` on.
    fn write(&self, buffer: &mut Self::Buffer, offset: usize, data: &[f32]) -> Result<()>;
    /// Copies `out.len()` values of `buffer` from element `offset` on into `out`.
    fn read(&self, buffer: &Self::Buffer, offset: usize, out: &mut [f32]) -> Result<()>;

    /// Writes `data` into the fp16 tensor (`DType::F16`) at f32 slot `offset`
    /// of `buffer`, each value rounded to fp16 (nearest even). Default: the
    /// rounded values stored as f32, which is how the CPU backend keeps an fp16
    /// tensor (`DType`); a device storing fp16 overrides it.
    fn write_f16(&self, buffer: &mut Self::Buffer, offset: usize, data: &[f32]) -> Result<()> {
        let rounded: Vec<f32> = data.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        self.write(buffer, offset, &rounded)
    }

    /// Reads the fp16 tensor at f32 slot `offset` of `buffer` as f32 values
    /// into `out` (exact). Default: as `read` (see `write_f16`).
    fn read_f16(&self, buffer: &Self::Buffer, offset: usize, out: &mut [f32]) -> Result<()> {
        self.read(buffer, offset, out)
    }
    /// Runs one op; its tensors live in `ctx.arena` at the offsets of `ctx.plan`.
    fn run_op(&self, op: &Op, ctx: &mut OpContext<'_, Self>) -> Result<()>;

    /// Device allocations this backend has made so far (arenas, and on a GPU
    /// also weights, scratch buffers, constant tables, library workspaces).
    /// A run of a prepared graph must not change it: the executor's tests
    /// read it before and after a sampling loop.
    fn device_allocations(&self) -> u64;

    /// Called once when an executor is made, after `alloc`: allocates and
    /// uploads whatever the graph needs on the device besides its arena
    /// (scratch buffers, constant tables, library plans), so that runs allocate
    /// nothing. Default: nothing to do.
    fn prepare(&self, _ctx: &mut OpContext<'_, Self>) -> Result<()> {
        Ok(())
    }

    /// Runs ops `ops` of `ctx.graph`, a part the caller runs again and again
    /// with the same tensors (a sampler step; only values in the arena change
    /// between calls). A backend may record the launches once and replay them
    /// (the CUDA backend captures a CUDA graph on the second call, after a
    /// plain warm-up). Default: runs the ops.
    fn run_repeated(&self, ops: Range<usize>, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        let graph = ctx.graph;
        for op in &graph.ops[ops] {
            self.run_op(op, ctx)?;
        }
        Ok(())
    }

    /// Writes the seeded noise of one request and `stream` (`sampler::rng`),
    /// token-major `[latent_len, channels]`, into `buffer` at `offset`, on the
    /// device. Returns false when the backend has no such kernel: the caller
    /// then uploads noise generated on the host.
    fn fill_noise(
        &self,
        _buffer: &mut Self::Buffer,
        _offset: usize,
        _seed: u64,
        _stream: u32,
        _latent_len: usize,
        _channels: usize,
    ) -> Result<bool> {
        Ok(false)
    }

    /// Waits until all work enqueued so far is done, so that a host clock
    /// measures it (the CPU backend runs every op before returning).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Bytes of device memory `weight` occupies.
    fn weight_bytes(&self, weight: &Self::Weight) -> usize;

    /// Elements of `weight` (its shape's product), for the graph's shape rules.
    fn weight_len(&self, weight: &Self::Weight) -> usize;

    /// Bytes in use on the whole device (this process, others and the driver),
    /// when the backend can tell (`cuMemGetInfo` on CUDA; None on the CPU).
    fn device_memory_used(&self) -> Option<usize> {
        None
    }

    /// Bytes of device memory still free for new buffers (`cuMemGetInfo` on
    /// CUDA; the kernel's MemAvailable on the CPU; None when unknown).
    fn device_memory_free(&self) -> Option<usize> {
        None
    }
}

/// Everything an op needs to find its operands.
pub struct OpContext<'a, B: Backend + ?Sized> {
    /// The graph the op belongs to (tensor shapes, segments).
    pub graph: &'a Graph,
    /// Where each tensor lives in the arena.
    pub plan: &'a ArenaPlan,
    /// The arena holding every tensor of the graph.
    pub arena: &'a mut B::Buffer,
    /// The model's weights, indexed by `WeightId`.
    pub weights: &'a [B::Weight],
}

/// How matrix products read a weight: as `groups` stacked `[n, k]` matrices
/// (`n` outputs, `k` inputs), each the right-hand side `W` of `x W^T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductWeight {
    /// Matrices stacked in the tensor (a transposed convolution's `stride`; else 1).
    pub groups: usize,
    /// Output features of each product.
    pub n: usize,
    /// Input features of each product.
    pub k: usize,
}

/// The weights of one model on one backend; graphs refer to them by `WeightId`.
pub struct WeightSet<B: Backend> {
    weights: Vec<B::Weight>,
}

impl<B: Backend> Default for WeightSet<B> {
    fn default() -> Self {
        WeightSet { weights: Vec::new() }
    }
}

impl<B: Backend> WeightSet<B> {
    /// Uploads `tensor` (a weight the loader transformed; `key` names it in errors).
    pub fn push(&mut self, backend: &B, key: &str, tensor: &HostTensor) -> Result<WeightId> {
        self.weights.push(backend.upload_weight(tensor).map_err(|e| Error::upload(key, e))?);
        Ok(WeightId(self.weights.len() - 1))
    }

    /// Uploads the tensor `key` of `source` unchanged (`Backend::upload_weight_from`):
    /// for tensors the loader uses as stored; one it transforms first goes to `push`.
    pub fn push_from(
        &mut self,
        backend: &B,
        source: &dyn TensorSource,
        key: &str,
        shape: &[usize],
    ) -> Result<WeightId> {
        self.weights.push(backend.upload_weight_from(source, key, shape).map_err(|e| Error::upload(key, e))?);
        Ok(WeightId(self.weights.len() - 1))
    }

    /// Uploads the tensor `key` of `source`, stored as used, that matrix
    /// products read as `product` (`Backend::upload_product_weight_from`).
    pub fn push_product_from(
        &mut self,
        backend: &B,
        source: &dyn TensorSource,
        key: &str,
        shape: &[usize],
        product: ProductWeight,
    ) -> Result<WeightId> {
        let weight =
            backend.upload_product_weight_from(source, key, shape, product).map_err(|e| Error::upload(key, e))?;
        self.weights.push(weight);
        Ok(WeightId(self.weights.len() - 1))
    }

    /// The weights in `WeightId` order.
    pub fn as_slice(&self) -> &[B::Weight] {
        &self.weights
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether no weight was pushed.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}
