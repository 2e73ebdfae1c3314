//! A backend wrapper that times every op, for `lova-fast bench --profile`:
//! where a step's time goes, per op kind. Each op is followed by
//! `synchronize`, so on a GPU the times are real but the step is slower than
//! a captured one (no overlap, no CUDA graph); on the CPU, which runs every op
//! before returning, the profiled step is the step.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Backend, OpContext, ProductWeight};
use crate::error::Result;
use crate::graph::{Op, OpKind};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// Time and count of one op kind's runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpTime {
    /// Runs of this kind since the last `take_profile`.
    pub runs: u64,
    /// Their total wall time.
    pub total: Duration,
    /// CPU time this process spent meanwhile, all threads (None where it
    /// cannot be read): on a machine shared with other work, wall time
    /// includes waiting for a core, CPU time does not.
    pub cpu: Option<Duration>,
}

/// CPU time of the whole process so far (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `inner`, with every `run_op` timed per op kind.
pub struct Profiled<B: Backend> {
    inner: B,
    times: Mutex<HashMap<OpKind, OpTime>>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner`; nothing is timed before the first op.
    pub fn new(inner: B) -> Self {
        Profiled { inner, times: Mutex::new(HashMap::new()) }
    }

    /// The op times gathered since the last call (kinds in `OpKind::ALL`
    /// order, only those that ran), and starts afresh.
    pub fn take_profile(&self) -> Vec<(OpKind, OpTime)> {
        let times = std::mem::take(&mut *self.times.lock().unwrap_or_else(|e| e.into_inner()));
        OpKind::ALL.iter().filter_map(|k| times.get(k).map(|t| (*k, *t))).collect()
    }

    fn record(&self, kind: OpKind, elapsed: Duration, cpu: Option<Duration>) {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let entry = times.entry(kind).or_default();
        // Unknown (None) once any run's CPU time could not be read.
        entry.cpu = if entry.runs == 0 { cpu } else { entry.cpu.zip(cpu).map(|(sum, c)| sum + c) };
        entry.runs += 1;
        entry.total += elapsed;
    }

    /// Ops through `OpContext<Profiled<B>>` run on the inner backend, whose
    /// context has the same parts (the buffer and weight types are B's).
    fn inner_ctx<'c>(ctx: &'c mut OpContext<'_, Self>) -> OpContext<'c, B> {
        OpContext { graph: ctx.graph, plan: ctx.plan, arena: ctx.arena, weights: ctx.weights }
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Buffer = B::Buffer;
    type Weight = B::Weight;

    fn name(&self) -> String {
        format!("{} (profiled: synchronized after every op)", self.inner.name())
    }
    fn alloc(&self, len: usize) -> Result<Self::Buffer> {
        self.inner.alloc(len)
    }
    fn upload_weight(&self, tensor: &HostTensor) -> Result<Self::Weight> {
        self.inner.upload_weight(tensor)
    }
    fn upload_weight_from(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> Result<Self::Weight> {
        self.inner.upload_weight_from(source, key, shape)
    }
    fn upload_product_weight_from(
        &self,
        source: &dyn TensorSource,
        key: &str,
        shape: &[usize],
        product: ProductWeight,
    ) -> Result<Self::Weight> {
        self.inner.upload_product_weight_from(source, key, shape, product)
    }
    fn write(&self, buffer: &mut Self::Buffer, offset: usize, data: &[f32]) -> Result<()> {
        self.inner.write(buffer, offset, data)
    }
    fn read(&self, buffer: &Self::Buffer, offset: usize, out: &mut [f32]) -> Result<()> {
        self.inner.read(buffer, offset, out)
    }
    fn run_op(&self, op: &Op, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        let (started, cpu_started) = (Instant::now(), process_cpu_time());
        self.inner.run_op(op, &mut Self::inner_ctx(ctx))?;
        self.inner.synchronize()?;
        let cpu = cpu_started.zip(process_cpu_time()).map(|(a, b)| b.saturating_sub(a));
        self.record(op.kind(), started.elapsed(), cpu);
        Ok(())
    }
    fn device_allocations(&self) -> u64 {
        self.inner.device_allocations()
    }
    fn prepare(&self, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        self.inner.prepare(&mut Self::inner_ctx(ctx))
    }
    // `run_repeated` is the trait's default, op by op through `run_op`: a
    // captured replay could not be timed per op.
    fn fill_noise(
        &self,
        buffer: &mut Self::Buffer,
        offset: usize,
        seed: u64,
        stream: u32,
        latent_len: usize,
        channels: usize,
    ) -> Result<bool> {
        self.inner.fill_noise(buffer, offset, seed, stream, latent_len, channels)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn weight_bytes(&self, weight: &Self::Weight) -> usize {
        self.inner.weight_bytes(weight)
    }
    fn weight_len(&self, weight: &Self::Weight) -> usize {
        self.inner.weight_len(weight)
    }
    fn device_memory_used(&self) -> Option<usize> {
        self.inner.device_memory_used()
    }
    fn device_memory_free(&self) -> Option<usize> {
        self.inner.device_memory_free()
    }
}
