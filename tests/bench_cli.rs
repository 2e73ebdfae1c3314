//! `lova-fast bench` on the CPU with the tiny config: the report's structure
//! and the figures that do not depend on timing (lengths, FLOP, memory).

mod common;

use common::{failed, fixture, lova_fast, ok, s};
use lova_fast::config::LovaConfig;

#[test]
fn bench_reports_lengths_flops_and_memory_as_json() {
    let config_path = fixture("tiny/model_config.json");
    let o = lova_fast(&[
        "bench",
        "--device",
        "cpu",
        "--config",
        s(&config_path),
        "--seconds",
        "2,3.5",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
    ]);
    let stderr = ok(&o);
    assert!(stderr.contains("TFLOP/s") && stderr.contains("start-up"), "no table on stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let config = LovaConfig::from_file(&config_path).unwrap();
    let clips = report["clips"].as_array().unwrap();
    assert_eq!(clips.len(), 2);
    let mut previous_flops = 0;
    for (clip, seconds) in clips.iter().zip([2.0, 3.5]) {
        let latent = config.latent_len_for_seconds(seconds);
        assert_eq!(clip["seconds"], seconds);
        assert_eq!(clip["frames"], (seconds * config.fps).ceil() as u64);
        assert_eq!(clip["latent_frames"], latent as u64);
        assert_eq!(clip["tokens"], latent as u64 + 1);
        assert_eq!(clip["timed_steps"], 3);
        let flops = clip["step_flops"].as_u64().unwrap();
        assert!(flops > previous_flops, "a longer clip costs more: {report}");
        previous_flops = flops;
        let (min, median, max) = (
            clip["step_ms_min"].as_f64().unwrap(),
            clip["step_ms_median"].as_f64().unwrap(),
            clip["step_ms_max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= median && median <= max, "{clip}");
        let tflops = clip["tflops"].as_f64().unwrap();
        assert!((tflops - flops as f64 / (median * 1e-3) * 1e-12).abs() <= 1e-9 * tflops, "{clip}");
        assert!(clip["arena_bytes"].as_u64().unwrap() > 0 && clip["weights_bytes"].as_u64().unwrap() > 0);
        assert!(clip["device_memory_used_bytes"].is_null(), "the CPU backend reports no device memory");
    }
    let startup = &report["startup"];
    assert!(startup["total_s"].as_f64().unwrap() >= startup["first_step_s"].as_f64().unwrap());
}

#[test]
fn bench_profile_counts_every_op_of_a_step() {
    let config_path = fixture("tiny/model_config.json");
    let args =
        ["bench", "--device", "cpu", "--config", s(&config_path), "--seconds", "2", "--steps", "2", "--warmup", "1"];
    let o = lova_fast(&[&args[..], &["--profile", "--json"]].concat());
    let stderr = ok(&o);
    assert!(stderr.contains("where a 2 s step's time goes"), "no profile table: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let profile = report["clips"][0]["profile"].as_array().expect("a profile per clip");
    let config = LovaConfig::from_file(&config_path).unwrap();
    let runs = |op: &str| {
        let entry = profile.iter().find(|p| p["op"] == op).unwrap_or_else(|| panic!("no `{op}` in {profile:?}"));
        entry["runs_per_step"].as_f64().unwrap()
    };
    // Warm-up steps are left out: one DPM++ update and one self-attention per block per step.
    assert_eq!(runs("dpmpp_3m_update"), 1.0);
    assert!(runs("attention") >= config.dit.depth as f64, "{profile:?}");
    let shares: f64 = profile.iter().map(|p| p["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
    // Without --profile, no profile.
    let plain: serde_json::Value =
        serde_json::from_slice(&ok_stdout(&lova_fast(&[&args[..], &["--json"]].concat()))).expect("JSON on stdout");
    assert!(plain["clips"][0].get("profile").is_none(), "{plain}");
}

fn ok_stdout(o: &std::process::Output) -> Vec<u8> {
    ok(o);
    o.stdout.clone()
}

#[test]
fn bench_refuses_bad_lengths_cleanly() {
    failed(&lova_fast(&["bench", "--device", "cpu", "--seconds", "0"]), &["--seconds"]);
    failed(&lova_fast(&["bench", "--device", "cpu", "--seconds", "200", "--steps", "1"]), &["position"]);
}

#[test]
fn bench_makes_a_random_engine_file_and_measures_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("random.safetensors");
    let config_path = fixture("tiny/model_config.json");
    ok(&lova_fast(&["bench", "--config", s(&config_path), "--make-engine", s(&engine)]));
    let o = lova_fast(&[
        "bench",
        "--device",
        "cpu",
        "--weights",
        s(&engine),
        "--seconds",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(report["weights"], s(&engine));
    let config = LovaConfig::from_file(&config_path).unwrap();
    assert_eq!(report["clips"][0]["latent_frames"], config.latent_len_for_seconds(1.0) as u64);
}
