//! The roofline model of the planned step (`lova_fast::roofline`, `bench
//! --roofline`): its FLOP are the graph's, its bytes for one DiT block are a
//! hand count from the shapes, and the CLI prints what the issue promises.

mod common;

use common::{failed, fixture, lova_fast, ok, s};
use lova_fast::config::LovaConfig;
use lova_fast::roofline::{self, Gpu, Settings};

fn h100(captured: bool) -> Settings {
    Settings { gpu: Gpu::h100(), captured, launch_overhead_us: 3.0 }
}

/// Every op's launches carry exactly `Graph::op_flops` (the CUDA GEMMs and the
/// flash kernel do the graph's matrix products and nothing else counts), so
/// the step's FLOP are `Graph::flops` of the step's ops: the figure `bench`
/// divides by the measured time.
#[test]
fn flops_are_the_graphs() {
    let config = LovaConfig::released();
    for seconds in [10.0, 30.0] {
        let step = roofline::plan_step(&config, seconds).unwrap();
        let g = &step.graph;
        for op in &g.ops {
            let model: u64 = roofline::kernels(g, op).iter().map(|k| k.flops).sum();
            assert_eq!(model, g.op_flops(op), "{} `{}`", op.name(), g.desc(op.writes()[0]).name);
        }
        let graph_flops: u64 = g.ops[step.step_ops.clone()].iter().map(|op| g.op_flops(op)).sum();
        let p = roofline::predict(&step, &h100(true));
        assert_eq!(p.flops, graph_flops, "{seconds} s");
        // Not vacuous: the step is most of the graph's work (the rest: request constants).
        assert!(graph_flops > 0 && graph_flops < g.flops() && graph_flops * 10 > g.flops() * 9);
        let kinds: u64 = p.kinds.iter().map(|k| k.flops).sum();
        assert_eq!(kinds, p.flops);
    }
}

/// Bytes and launches of DiT block 0 in a 30 s step, counted by hand from the
/// shapes (lova-model.md section 4) and what the CUDA backend does with them.
#[test]
fn one_block_bytes_match_a_hand_count() {
    let step = roofline::plan_step(&LovaConfig::released(), 30.0).unwrap();
    assert_eq!((step.frames, step.latent_len, step.tokens), (240, 646, 647));
    let g = &step.graph;
    let block: Vec<_> =
        g.ops[step.step_ops.clone()].iter().filter(|op| g.desc(op.writes()[0]).name.starts_with("l0.")).collect();
    let launches: Vec<_> = block.iter().flat_map(|op| roofline::kernels(g, op)).collect();
    let bytes: u64 = launches.iter().map(|k| k.bytes()).sum();

    // Shapes: E = 1536 (width), F = 6144 (SwiGLU inner), cd = 768 (video
    // tokens), B = 2 sequences (cond + uncond) of 647 tokens: M = 1294 rows;
    // N = 2 x 240 video-token rows. Activations are f32 (4 B), matrix weights
    // fp16 (2 B), vector weights (gamma, beta, biases, inv_freq) f32, segment
    // tables int32 [B + 1].
    let (e, f, cd, b, m, n) = (1536u64, 6144u64, 768u64, 2u64, 1294u64, 480u64);
    // LayerNorm: read x, gamma and beta; write y.
    let layer_norm = m * e * 4 + 2 * e * 4 + m * e * 4;
    // Every Linear first converts its [M, K] input: read f32, write fp16 ...
    let convert = |k: u64| m * k * 4 + m * k * 2;
    // ... then the GEMM reads the fp16 input and the fp16 weight [N, K], writes f32 [M, N].
    let gemm = |k: u64, n_out: u64| m * k * 2 + n_out * k * 2 + m * n_out * 4;
    // Three tables (q offsets, kv offsets, query-tile starts) per attention.
    let tables = 3 * (b + 1) * 4;
    let qkv = convert(e) + gemm(e, 3 * e);
    // Self-attention reads q, k, v (all of qkv), RoPE's 16 inv_freq, writes [M, E].
    let self_attn = m * 3 * e * 4 + 16 * 4 + tables + m * e * 4;
    // Output projections also read the residual [M, E].
    let self_out = convert(e) + gemm(e, e) + m * e * 4;
    let cross_q = convert(e) + gemm(e, e);
    // Cross-attention reads q [M, E] and k, v [N, cd] each (the request's constants).
    let cross_attn = m * e * 4 + 2 * n * cd * 4 + tables + m * e * 4;
    let cross_out = convert(e) + gemm(e, e) + m * e * 4;
    // FF up has a bias [2F] (f32), FF down a bias [E] and the residual.
    let ff_up = convert(e) + gemm(e, 2 * f) + 2 * f * 4;
    let swiglu = m * 2 * f * 4 + m * f * 4;
    let ff_down = convert(f) + gemm(f, e) + e * 4 + m * e * 4;
    let hand =
        3 * layer_norm + qkv + self_attn + self_out + cross_q + cross_attn + cross_out + ff_up + swiglu + ff_down;
    assert_eq!(hand, 564_996_232, "the hand count itself, about 565 MB per block");
    assert_eq!(bytes, hand);
    // 3 LayerNorms, 6 Linears of 2 launches (conversion + GEMM), 2 attentions, 1 SwiGLU.
    assert_eq!(block.len(), 12);
    assert_eq!(launches.len(), 3 + 6 * 2 + 2 + 1);
    assert_eq!(launches.iter().filter(|k| k.kernel == "f32_to_f16").count(), 6);

    // The flash kernel's per-tile K/V reads (from L2, reported apart):
    // self: 11 query tiles x 24 heads x 2 sequences, each 647 keys x 64 dims x (K + V) x 4 B;
    // cross: the same blocks, each 240 video tokens of its kv head.
    let kv: u64 = launches.iter().map(|k| k.kv_tile_bytes).sum();
    assert_eq!(kv, 11 * 24 * 2 * (647 + 240) * 64 * 2 * 4);
}

/// The prediction is the sum over launches of the roofline plus the overhead
/// of host launches: uncaptured, every kernel; captured, the graph and the noise kernel.
#[test]
fn prediction_adds_launch_overhead_only_for_host_launches() {
    let step = roofline::plan_step(&LovaConfig::released(), 30.0).unwrap();
    let captured = roofline::predict(&step, &h100(true));
    let plain = roofline::predict(&step, &h100(false));
    assert_eq!(captured.host_launches, 2);
    assert_eq!(plain.host_launches, plain.launches);
    let diff = plain.predicted_ms - captured.predicted_ms;
    assert!((diff - (plain.launches - 2) as f64 * 3e-3).abs() < 1e-9, "{diff}");
    let kinds_ms: f64 = captured.kinds.iter().map(|k| k.predicted_us).sum::<f64>() * 1e-3;
    assert!((captured.predicted_ms - kinds_ms - 0.006).abs() < 1e-9);
    // A roofline is at least the larger of its two floors, at most their sum.
    let launches_ms = captured.predicted_ms - captured.overhead_ms;
    assert!(launches_ms >= captured.compute_ms.max(captured.memory_ms) - 1e-9);
    assert!(launches_ms <= captured.compute_ms + captured.memory_ms + 1e-9);
    // More bandwidth, same tensor peak: memory-bound launches get faster.
    let h200 = roofline::predict(&step, &Settings { gpu: Gpu::h200(), ..h100(true) });
    assert!(h200.predicted_ms < captured.predicted_ms && h200.bytes == captured.bytes);
}

#[test]
fn cli_prints_the_roofline_as_json() {
    let o = lova_fast(&["bench", "--roofline", "--seconds", "10,30", "--json"]);
    let stderr = ok(&o);
    assert!(stderr.contains("predicted step") && stderr.contains("989"), "no table on stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(report["settings"]["gpu"]["tensor_tflops"], 989.0);
    assert_eq!(report["settings"]["gpu"]["bandwidth_gbps"], 3350.0);
    assert_eq!(report["settings"]["captured"], true);
    let clips = report["clips"].as_array().unwrap();
    assert_eq!(clips.len(), 2);
    let config = LovaConfig::released();
    let mut previous = 0.0;
    for (clip, seconds) in clips.iter().zip([10.0, 30.0]) {
        assert_eq!(clip["seconds"], seconds);
        let library = roofline::predict(&roofline::plan_step(&config, seconds).unwrap(), &h100(true));
        assert_eq!(clip["flops"], library.flops);
        assert_eq!(clip["bytes"], library.bytes);
        assert_eq!(clip["launches"], library.launches);
        let ms = clip["predicted_ms"].as_f64().unwrap();
        assert!(ms > previous, "a longer clip takes longer: {clip}");
        previous = ms;
        let kinds = clip["kinds"].as_array().unwrap();
        let names: Vec<&str> = kinds.iter().map(|k| k["kernel"].as_str().unwrap()).collect();
        for kernel in ["cublaslt_gemm", "f32_to_f16", "flash_attention_hd64", "layer_norm_f32", "swiglu_f32"] {
            assert!(names.contains(&kernel), "{kernel} missing: {names:?}");
        }
        let bytes: u64 = kinds.iter().map(|k| k["bytes"].as_u64().unwrap()).sum();
        assert_eq!(bytes, clip["bytes"].as_u64().unwrap());
        for k in kinds {
            assert!(k["bound"] == "compute" || k["bound"] == "memory", "{k}");
        }
    }
}

#[test]
fn cli_takes_other_gpus_and_configs_and_refuses_bad_ones() {
    let tiny = fixture("tiny/model_config.json");
    let o = lova_fast(&["bench", "--roofline", "--config", s(&tiny), "--seconds", "2", "--gpu", "100,1000", "--json"]);
    ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(report["settings"]["gpu"]["name"], "custom");
    assert_eq!(report["settings"]["gpu"]["bandwidth_gbps"], 1000.0);
    let plain = lova_fast(&["bench", "--roofline", "--seconds", "10", "--uncaptured"]);
    assert!(String::from_utf8_lossy(&plain.stdout).contains("plain launches"));

    failed(&lova_fast(&["bench", "--roofline", "--gpu", "a100"]), &["--gpu", "h100", "TFLOPS,GBPS"]);
    failed(&lova_fast(&["bench", "--roofline", "--gpu", "0,3000"]), &["--gpu"]);
    failed(&lova_fast(&["bench", "--roofline", "--launch-us=-1"]), &["--launch-us"]);
    failed(&lova_fast(&["bench", "--roofline", "--seconds", "200"]), &["200 s clip", "position"]);
    // Options that would be silently ignored are refused: a measurement's with
    // --roofline, peaks without it.
    failed(&lova_fast(&["bench", "--roofline", "--device", "cuda"]), &["--device"]);
    failed(&lova_fast(&["bench", "--gpu", "h200", "--device", "cpu"]), &["--roofline"]);
}
