//! The attention op alone (one `Op::Attention` graph), at the model's shapes:
//! - `dit_self_647_b2_h24`: DiT self-attention of a 30 s clip (T'+1 = 647,
//!   cond + uncond, 24 heads of 64, RoPE on 32 dims);
//! - `dit_self_2999_b2_h24`: the same at the longest clip (T'+1 = 2999);
//! - `dit_cross_647x240_b2_h24_kv12`: DiT cross-attention of a 30 s clip (647
//!   queries over N = 240 video tokens, 24 query heads over 12 kv heads);
//! - `clip_64x257_h16`: CLIP ViT-L/14 on 64 frames (257 tokens, 16 heads, MHA).
//!
//! On CUDA when a GPU is usable (`CudaBackend::new(0)`), else on the CPU backend
//! with smaller shapes, labelled `cpu_small/...`. Besides criterion's report
//! (its throughput is "elements" = FLOPs), each shape prints one line
//! `attention <shape>: <ms> ms, <X> TFLOP/s (<kernel>, <device>)`, with FLOPs =
//! 4 * sum over sequences of Lq * Lk * head_dim * heads (two GEMMs, 2 FLOPs per
//! multiply-add; softmax not counted), which tools/device-check.sh puts next
//! to the card's dense fp16 peak; and the attention time of one DiT step of a
//! 30 s clip (24 blocks x (self + cross)).
//!
//! `cargo bench --bench attention`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lova_fast::backend::cuda::attention::{AttentionKernel, attention_kernel};
use lova_fast::backend::{Backend, CpuBackend, CudaBackend, WeightSet};
use lova_fast::graph::{ColumnSlice, Executor, Graph, Op, Rope, Segments};
use lova_fast::tensor::HostTensor;

const HEAD_DIM: usize = 64;
const ROTARY_DIM: usize = 32;
/// DiT blocks: each has one self- and one cross-attention.
const DIT_BLOCKS: usize = 24;

struct Shape {
    name: String,
    heads: usize,
    kv_heads: usize,
    q_lens: Vec<usize>,
    /// None: self-attention (q, k, v from one fused projection).
    kv_lens: Option<Vec<usize>>,
    rope: bool,
}

impl Shape {
    fn flops(&self) -> f64 {
        let kv = self.kv_lens.as_ref().unwrap_or(&self.q_lens);
        let pairs: usize = self.q_lens.iter().zip(kv).map(|(q, k)| q * k).sum();
        4.0 * pairs as f64 * (HEAD_DIM * self.heads) as f64
    }
}

fn self_attn(name: &str, heads: usize, q_lens: Vec<usize>, rope: bool) -> Shape {
    Shape { name: name.into(), heads, kv_heads: heads, q_lens, kv_lens: None, rope }
}

fn cross(name: &str, heads: usize, kv_heads: usize, q_lens: Vec<usize>, kv_lens: Vec<usize>) -> Shape {
    Shape { name: name.into(), heads, kv_heads, q_lens, kv_lens: Some(kv_lens), rope: false }
}

/// Uniform values in [-2, 2] (the op test's magnitudes: scores with a standard deviation of 1.3).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// Builds the one-op graph, runs it once untimed, then hands `run` to `time`.
fn bench_shape<B: Backend>(
    c: &mut Criterion,
    backend: &B,
    device: &str,
    shape: &Shape,
    sync: &dyn Fn(),
) -> Option<Duration> {
    let mut g = Graph::new();
    let q_seg = Segments::from_lengths(shape.q_lens.iter().copied());
    let (qw, kvw) = (shape.heads * HEAD_DIM, shape.kv_heads * HEAD_DIM);
    let mut inputs = Vec::new();
    let (q, k, v, kv_segments) = match &shape.kv_lens {
        None => {
            let rows = q_seg.total();
            let qkv = g.input("qkv", rows, qw + 2 * kvw);
            inputs.push((qkv, values(rows * (qw + 2 * kvw), 1)));
            let seg = g.add_segments(q_seg.clone());
            (
                ColumnSlice { tensor: qkv, offset: 0, width: qw },
                ColumnSlice { tensor: qkv, offset: qw, width: kvw },
                ColumnSlice { tensor: qkv, offset: qw + kvw, width: kvw },
                seg,
            )
        }
        Some(kv_lens) => {
            let kv_seg = Segments::from_lengths(kv_lens.iter().copied());
            let q = g.input("q", q_seg.total(), qw);
            let kv = g.input("kv", kv_seg.total(), 2 * kvw);
            inputs.push((q, values(q_seg.total() * qw, 2)));
            inputs.push((kv, values(kv_seg.total() * 2 * kvw, 3)));
            let seg = g.add_segments(kv_seg);
            (
                ColumnSlice { tensor: q, offset: 0, width: qw },
                ColumnSlice { tensor: kv, offset: 0, width: kvw },
                ColumnSlice { tensor: kv, offset: kvw, width: kvw },
                seg,
            )
        }
    };
    let q_segments = g.add_segments(q_seg.clone());
    let mut weights = WeightSet::default();
    let rope = if shape.rope {
        let inv: Vec<f32> = (0..ROTARY_DIM / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / ROTARY_DIM as f32)).collect();
        let id = weights.push(backend, "inv_freq", &HostTensor::new(vec![ROTARY_DIM / 2], inv)).expect("upload");
        Some(Rope { inv_freq: id, rotary_dim: ROTARY_DIM })
    } else {
        None
    };
    let out = g.temp("out", q_seg.total(), qw);
    g.mark_output(out);
    g.push(Op::Attention {
        q,
        k,
        v,
        q_segments,
        kv_segments,
        heads: shape.heads,
        kv_heads: shape.kv_heads,
        head_dim: HEAD_DIM,
        scale: (HEAD_DIM as f32).powf(-0.5),
        rope,
        out,
    });
    let mut exec = Executor::new(backend, weights.as_slice(), g).expect("executor");
    for (t, data) in &inputs {
        exec.write(*t, data).expect("write inputs");
    }
    exec.run().expect("attention");
    sync();

    // Our own figure first: as many runs as fit in about half a second.
    let once = {
        let start = Instant::now();
        exec.run().expect("attention");
        sync();
        start.elapsed()
    };
    let iters = ((0.5 / once.as_secs_f64().max(1e-6)) as usize).clamp(1, 1000);
    let start = Instant::now();
    for _ in 0..iters {
        exec.run().expect("attention");
    }
    sync();
    let per_run = start.elapsed() / iters as u32;
    let kernel = match (device.starts_with("cpu"), attention_kernel(HEAD_DIM, shape.rope.then_some(ROTARY_DIM))) {
        (true, _) => "CPU reference",
        (false, AttentionKernel::Flash) => "flash_attention_hd64",
        (false, AttentionKernel::F32) => "attention_f32",
    };
    println!(
        "attention {}: {:.4} ms, {:.3} TFLOP/s ({kernel}, {device}, {iters} runs)",
        shape.name,
        per_run.as_secs_f64() * 1e3,
        shape.flops() / per_run.as_secs_f64() / 1e12
    );

    let mut group = c.benchmark_group("attention");
    group.throughput(Throughput::Elements(shape.flops() as u64));
    group.bench_function(shape.name.as_str(), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                exec.run().expect("attention");
            }
            sync();
            start.elapsed()
        })
    });
    group.finish();
    Some(per_run)
}

fn attention(c: &mut Criterion) {
    match CudaBackend::new(0) {
        Ok(cuda) => {
            let device = cuda.info().name.clone();
            let sync = || cuda.synchronize().expect("synchronize");
            let mut time = |shape: Shape| bench_shape(c, &cuda, &device, &shape, &sync);
            let self_647 = time(self_attn("dit_self_647_b2_h24", 24, vec![647, 647], true));
            time(self_attn("dit_self_2999_b2_h24", 24, vec![2999, 2999], true));
            let cross_647 = time(cross("dit_cross_647x240_b2_h24_kv12", 24, 12, vec![647, 647], vec![240, 240]));
            time(self_attn("clip_64x257_h16", 16, vec![257; 64], false));
            if let (Some(s), Some(x)) = (self_647, cross_647) {
                println!(
                    "attention per DiT step, 30 s clip (cond + uncond, {DIT_BLOCKS} x (self + cross)): {:.3} ms",
                    (s + x).as_secs_f64() * 1e3 * DIT_BLOCKS as f64
                );
            }
        }
        Err(e) => {
            eprintln!("attention bench: CUDA SKIPPED, no device ({e}); timing the CPU backend on smaller shapes");
            let device = "cpu (f32 reference)";
            let sync = || {};
            bench_shape(c, &CpuBackend, device, &self_attn("cpu_small/dit_self_647_b1_h2", 2, vec![647], true), &sync);
            bench_shape(
                c,
                &CpuBackend,
                device,
                &cross("cpu_small/dit_cross_647x240_b1_h2_kv1", 2, 1, vec![647], vec![240]),
                &sync,
            );
            bench_shape(c, &CpuBackend, device, &self_attn("cpu_small/clip_4x257_h2", 2, vec![257; 4], false), &sync);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = attention
}
criterion_main!(benches);
