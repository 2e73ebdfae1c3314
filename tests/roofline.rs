//! The roofline model of the planned step (`lova_fast::roofline`, `bench
//! --roofline`): its FLOP are the graph's, its bytes for one DiT block are a
//! hand count from the shapes, and the CLI prints what the issue promises.

mod common;

use common::{failed, fixture, lova_fast, ok, s};
use lova_fast::config::LovaConfig;
use lova_fast::graph::DType;
use lova_fast::roofline::{self, Gpu, Settings};

fn h100(captured: bool) -> Settings {
    Settings { gpu: Gpu::h100(), captured, launch_overhead_us: 3.0, f32_activations: false }
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
/// shapes (lova-model.md section 4) and what the CUDA backend does with them:
/// with f32 block activations (`LOVA_CUDA_ACTIVATIONS=f32`, as the backend ran
/// before fp16 ones) and with fp16 ones (the default).
#[test]
fn one_block_bytes_match_a_hand_count() {
    for (activations, hand, conversions) in [(DType::F32, 565_078_984, 6), (DType::F16, 325_094_344, 0)] {
        let step = roofline::plan_step_with(&LovaConfig::released(), 30.0, activations).unwrap();
        assert_eq!((step.frames, step.latent_len, step.tokens), (240, 646, 647));
        let g = &step.graph;
        let block: Vec<_> =
            g.ops[step.step_ops.clone()].iter().filter(|op| g.desc(op.writes()[0]).name.starts_with("l0.")).collect();
        let launches: Vec<_> = block.iter().flat_map(|op| roofline::kernels(g, op)).collect();
        let bytes: u64 = launches.iter().map(|k| k.bytes()).sum();
        let a = activations.bytes() as u64;
        assert_eq!(block_hand_count(a), hand, "the hand count itself, {} activations", activations.name());
        assert_eq!(bytes, hand, "{} activations", activations.name());
        // 3 LayerNorms, 6 Linears (each with an f32 input first converted), 2 attentions, 1 SwiGLU.
        assert_eq!(block.len(), 12);
        assert_eq!(launches.len(), 3 + 6 + conversions + 2 + 1);
        assert_eq!(launches.iter().filter(|k| k.kernel == "f32_to_f16").count(), conversions);

        // The flash kernel's per-tile K/V reads (from L2, reported apart):
        // self: 11 query tiles x 24 heads x 2 sequences, each 647 keys x 64 dims x (K + V);
        // cross: the same blocks, each 240 video tokens of its kv head.
        let kv: u64 = launches.iter().map(|k| k.kv_tile_bytes).sum();
        assert_eq!(kv, 11 * 24 * 2 * (647 + 240) * 64 * 2 * a);
    }
}

/// Bytes of one DiT block of a 30 s step whose block activations take `a`
/// bytes each (4: f32, every Linear input converted to fp16 first; 2: fp16,
/// written so by their producers, no conversion).
fn block_hand_count(a: u64) -> u64 {
    // Shapes: E = 1536 (width), F = 6144 (SwiGLU inner), cd = 768 (video
    // tokens), B = 2 sequences (cond + uncond) of 647 tokens: M = 1294 rows;
    // N = 2 x 240 video-token rows. The residual stream is f32 (4 B), matrix
    // weights fp16 (2 B), vector weights (gamma, beta, biases, inv_freq) f32,
    // segment tables int32 [B + 1]. Block activations: the LayerNorm outputs,
    // the projections, the attention outputs, SwiGLU's input and output, and
    // the request's cross-attention K/V.
    let (e, f, cd, b, m, n) = (1536u64, 6144u64, 768u64, 2u64, 1294u64, 480u64);
    // LayerNorm: read x (the residual stream), gamma and beta; write y.
    let layer_norm = m * e * 4 + 2 * e * 4 + m * e * a;
    // An f32 Linear input is converted first: read f32, write fp16.
    let convert = |k: u64| if a == 4 { m * k * 4 + m * k * 2 } else { 0 };
    // The GEMM reads the fp16 input and the fp16 weight [N, K], writes [M, N] of `out` bytes.
    let gemm = |k: u64, n_out: u64, out: u64| m * k * 2 + n_out * k * 2 + m * n_out * out;
    // Three tables (q offsets, kv offsets, query-tile starts) per attention.
    let tables = 3 * (b + 1) * 4;
    let qkv = convert(e) + gemm(e, 3 * e, a);
    // Self-attention reads q, k, v (all of qkv) and the RoPE table's rows (647
    // positions x 16 (cos, sin) f32 pairs), writes [M, E].
    let self_attn = m * 3 * e * a + 647 * 16 * 8 + tables + m * e * a;
    // Output projections write the residual stream (f32) and read it as their residual.
    let self_out = convert(e) + gemm(e, e, 4) + m * e * 4;
    let cross_q = convert(e) + gemm(e, e, a);
    // Cross-attention reads q [M, E] and k, v [N, cd] each (the request's constants).
    let cross_attn = m * e * a + 2 * n * cd * a + tables + m * e * a;
    let cross_out = convert(e) + gemm(e, e, 4) + m * e * 4;
    // FF up has a bias [2F] (f32), FF down a bias [E] and the residual.
    let ff_up = convert(e) + gemm(e, 2 * f, a) + 2 * f * 4;
    let swiglu = m * 2 * f * a + m * f * a;
    let ff_down = convert(f) + gemm(f, e, 4) + e * 4 + m * e * 4;
    3 * layer_norm + qkv + self_attn + self_out + cross_q + cross_attn + cross_out + ff_up + swiglu + ff_down
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
        // fp16 block activations; the DiT's f32 inputs (latents, residual stream) still converted.
        for kernel in ["cublaslt_gemm", "f32_to_f16", "flash_attention_hd64_f16", "layer_norm_f16", "swiglu_f16"] {
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
    // f32 block activations: more bytes than the fp16 default, the same FLOP.
    let clip = |args: &[&str]| -> serde_json::Value {
        let o = lova_fast(&[&["bench", "--roofline", "--seconds", "30", "--json"][..], args].concat());
        ok(&o);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["clips"][0].clone()
    };
    let (fp16, f32) = (clip(&[]), clip(&["--f32-activations"]));
    assert_eq!(fp16["flops"], f32["flops"]);
    assert!(fp16["bytes"].as_u64().unwrap() * 3 < f32["bytes"].as_u64().unwrap() * 2, "{fp16} {f32}");

    failed(&lova_fast(&["bench", "--roofline", "--gpu", "a100"]), &["--gpu", "h100", "TFLOPS,GBPS"]);
    failed(&lova_fast(&["bench", "--roofline", "--gpu", "0,3000"]), &["--gpu"]);
    failed(&lova_fast(&["bench", "--roofline", "--launch-us=-1"]), &["--launch-us"]);
    failed(&lova_fast(&["bench", "--roofline", "--seconds", "200"]), &["200 s clip", "position"]);
    // Options that would be silently ignored are refused: a measurement's with
    // --roofline, peaks without it.
    failed(&lova_fast(&["bench", "--roofline", "--device", "cuda"]), &["--device"]);
    failed(&lova_fast(&["bench", "--gpu", "h200", "--device", "cpu"]), &["--roofline"]);
}
