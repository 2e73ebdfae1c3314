//! A roofline model of the planned sampler step on the CUDA backend, computed
//! from the graph (no GPU needed): per launch, FLOP and bytes as the backend's
//! kernels move them (`cost`), and a predicted time
//! `max(tile FLOP / tensor peak, bytes / bandwidth)`, summed over the launches,
//! plus a per-launch overhead for the launches the host issues.
//!
//! What the prediction is: a floor for today's kernels, not a forecast. It
//! assumes every GEMM and the flash kernel run at the dense tensor-core peak
//! and every launch streams at the full bandwidth; real kernels reach a
//! fraction of both (the flash kernel uses mma.sync, which cannot reach
//! Hopper's peak; small elementwise launches do not fill the memory system).
//! Its use is to show where the bytes and the time go, and how far a change
//! moves the floor.
//!
//! Launch overhead: by default the step is a captured CUDA graph (the CUDA
//! backend captures `run_repeated` unless `LOVA_CUDA_GRAPHS=0`), so the
//! kernels inside it cost no launch overhead; the host still launches the
//! graph and the noise kernel (`Backend::fill_noise`, outside the graph).
//! Uncaptured, every kernel is a host launch.

pub mod cost;
pub mod gpu;
pub mod step;

pub use cost::{KernelCost, kernels};
pub use gpu::Gpu;
pub use step::{StepGraph, plan_step, plan_step_with};

/// Launch overhead per host-issued launch, microseconds: what `cuLaunchKernel`
/// (~2-3 us) and `cublasLtMatmul` (~4-5 us) cost the host per call. When the
/// kernels are shorter than that, the host cannot stay ahead of the GPU and
/// the step takes about the host's time.
pub const DEFAULT_LAUNCH_OVERHEAD_US: f64 = 3.0;

/// Name, in the per-kind breakdown, of the noise kernel the sampler launches before each step.
pub const NOISE_KIND: &str = "noise (before the graph)";

/// How to turn costs into time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// The peaks.
    pub gpu: Gpu,
    /// Whether the step runs as a captured CUDA graph (the backend's default).
    pub captured: bool,
    /// Cost of one host-issued launch, microseconds.
    pub launch_overhead_us: f64,
    /// The graph's block activations in f32 (`LOVA_CUDA_ACTIVATIONS=f32`)
    /// rather than fp16 (the backend's default); used when planning the step.
    pub f32_activations: bool,
}

/// One op kind and kernel of the step (e.g. `linear` / `f32_to_f16`), summed over its launches.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KindCost {
    /// The op kind (`OpKind::name`), or `NOISE_KIND`.
    pub op: String,
    /// The kernel.
    pub kernel: String,
    /// Launches in one step.
    pub launches: u64,
    /// Useful matrix-product FLOP (`Graph::op_flops`).
    pub flops: u64,
    /// FLOP the tensor cores execute (attention: padded tiles).
    pub tile_flops: u64,
    /// All bytes at the memory interface (read + written).
    pub bytes: u64,
    /// Bytes read: weights, activations and tables.
    pub bytes_read: u64,
    /// Bytes written (activations).
    pub bytes_written: u64,
    /// Of `bytes_read`: weights.
    pub weight_bytes: u64,
    /// Of `bytes_read`: small constant tables.
    pub table_bytes: u64,
    /// Flash attention: K/V bytes re-read per query tile, from L2 (not in `bytes`).
    pub kv_tile_bytes: u64,
    /// Sum over its launches of tile FLOP / peak, microseconds.
    pub compute_us: f64,
    /// Sum over its launches of bytes / bandwidth, microseconds.
    pub memory_us: f64,
    /// Sum over its launches of max(compute, memory), microseconds (no launch overhead).
    pub predicted_us: f64,
    /// `compute` when its compute time is the larger, else `memory`.
    pub bound: String,
}

/// The roofline of one clip length's step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClipPrediction {
    /// Clip length, seconds.
    pub seconds: f64,
    /// Video frames N.
    pub frames: usize,
    /// Latent frames T'.
    pub latent_frames: usize,
    /// Transformer tokens per sequence.
    pub tokens: usize,
    /// Useful matrix-product FLOP of the step (equals `Sampling::step_flops`).
    pub flops: u64,
    /// All bytes read and written.
    pub bytes: u64,
    /// Bytes read (weights, activations, tables).
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Of `bytes_read`: weights.
    pub weight_bytes: u64,
    /// Kernel launches of one step (the noise kernel included).
    pub launches: u64,
    /// Launches the host issues: all of them uncaptured; the graph and the noise kernel captured.
    pub host_launches: u64,
    /// Sum of the launches' compute times, ms.
    pub compute_ms: f64,
    /// Sum of the launches' memory times, ms.
    pub memory_ms: f64,
    /// host_launches x the launch overhead, ms.
    pub overhead_ms: f64,
    /// Sum over launches of max(compute, memory), plus the overhead, ms.
    pub predicted_ms: f64,
    /// Flash attention's K/V re-reads per query tile, served from L2 (not in `bytes`).
    pub attention_kv_l2_bytes: u64,
    /// Per op kind and kernel, the costliest (predicted time) first.
    pub kinds: Vec<KindCost>,
}

/// The roofline of `step` under `settings`.
pub fn predict(step: &StepGraph, settings: &Settings) -> ClipPrediction {
    let g = &step.graph;
    let mut launches: Vec<(String, KernelCost)> = g.ops[step.step_ops.clone()]
        .iter()
        .flat_map(|op| kernels(g, op).into_iter().map(move |k| (op.name().to_string(), k)))
        .collect();
    // `Sampling::step` draws the step's noise on the device first (one launch per request).
    let noise = KernelCost { kernel: "philox_normal", write_bytes: step.noise_values as u64 * 4, ..Default::default() };
    launches.push((NOISE_KIND.to_string(), noise));

    let gpu = &settings.gpu;
    let mut kinds: Vec<KindCost> = Vec::new();
    for (op, k) in &launches {
        let compute_us = k.tile_flops as f64 / gpu.flops_per_s() * 1e6;
        let memory_us = k.bytes() as f64 / gpu.bytes_per_s() * 1e6;
        let i = match kinds.iter().position(|c| c.op == *op && c.kernel == k.kernel) {
            Some(i) => i,
            None => {
                kinds.push(KindCost { op: op.clone(), kernel: k.kernel.to_string(), ..Default::default() });
                kinds.len() - 1
            }
        };
        let c = &mut kinds[i];
        c.launches += 1;
        c.flops += k.flops;
        c.tile_flops += k.tile_flops;
        c.bytes += k.bytes();
        c.bytes_read += k.bytes() - k.write_bytes;
        c.bytes_written += k.write_bytes;
        c.weight_bytes += k.weight_bytes;
        c.table_bytes += k.table_bytes;
        c.kv_tile_bytes += k.kv_tile_bytes;
        c.compute_us += compute_us;
        c.memory_us += memory_us;
        c.predicted_us += compute_us.max(memory_us);
    }
    for c in &mut kinds {
        c.bound = if c.compute_us >= c.memory_us { "compute" } else { "memory" }.into();
    }
    kinds.sort_by(|a, b| b.predicted_us.total_cmp(&a.predicted_us));

    let sum = |f: fn(&KindCost) -> u64| kinds.iter().map(f).sum::<u64>();
    let sum_us = |f: fn(&KindCost) -> f64| kinds.iter().map(f).sum::<f64>();
    let launch_count = sum(|c| c.launches);
    // One request per planned step (`plan_step`): one noise launch.
    let noise_launches = 1;
    let host_launches = if settings.captured { 1 + noise_launches } else { launch_count };
    let overhead_ms = host_launches as f64 * settings.launch_overhead_us * 1e-3;
    ClipPrediction {
        seconds: step.seconds,
        frames: step.frames,
        latent_frames: step.latent_len,
        tokens: step.tokens,
        flops: sum(|c| c.flops),
        bytes: sum(|c| c.bytes),
        bytes_read: sum(|c| c.bytes_read),
        bytes_written: sum(|c| c.bytes_written),
        weight_bytes: sum(|c| c.weight_bytes),
        launches: launch_count,
        host_launches,
        compute_ms: sum_us(|c| c.compute_us) * 1e-3,
        memory_ms: sum_us(|c| c.memory_us) * 1e-3,
        overhead_ms,
        predicted_ms: sum_us(|c| c.predicted_us) * 1e-3 + overhead_ms,
        attention_kv_l2_bytes: sum(|c| c.kv_tile_bytes),
        kinds,
    }
}
