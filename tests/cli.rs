//! The `lova-fast` binary end to end on the tiny fixture, and its behaviour on
//! bad input: a clear error, a non-zero exit, no panic, no output file.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, fixture, load, lova_fast, ok, rel_l2, s};
use lova_fast::weights::SafetensorsFile;
use safetensors::tensor::TensorView;

/// `infer` on the tiny fixture with the sampler fixture's settings (eta 0, injected
/// noise), latents only.
fn infer_args(features: &Path, checkpoint: &Path, config: &Path, out: &Path) -> Vec<String> {
    let init = fixture("tiny/init_noise.safetensors");
    [
        "infer",
        s(features),
        "--checkpoint",
        s(checkpoint),
        "--config",
        s(config),
        "--save-latents",
        s(out),
        "--steps",
        "8",
        "--cfg",
        "5",
        "--eta",
        "0",
        "--init-noise",
        s(&init),
        // The reference tolerance is the f32 CPU path's, whatever GPU the machine has.
        "--device",
        "cpu",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

struct Paths {
    features: PathBuf,
    checkpoint: PathBuf,
    config: PathBuf,
}

fn fixture_paths() -> Paths {
    Paths {
        features: fixture("tiny/features.safetensors"),
        checkpoint: fixture("tiny/checkpoint.safetensors"),
        config: fixture("tiny/model_config.json"),
    }
}

/// Runs `infer` expecting failure; checks the message, the exit code, that
/// nothing panicked and that no file (not even a partial one) was written.
fn expect_failure(p: &Paths, extra: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latents.safetensors");
    let mut args = infer_args(&p.features, &p.checkpoint, &p.config, &out);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lova_fast(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {stderr}");
    assert_ne!(o.status.code(), Some(101), "exit code 101 is a Rust panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "stderr lacks {e:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Copies a safetensors fixture, dropping `drop` and replacing tensors by name.
fn rewrite_checkpoint(dir: &Path, drop: &str, replace: Option<(&str, Vec<usize>)>) -> PathBuf {
    let bytes = std::fs::read(fixture("tiny/checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if name == drop {
            continue;
        }
        match &replace {
            Some((key, shape)) if *key == name => {
                let n: usize = shape.iter().product();
                owned.push((name, safetensors::Dtype::F32, shape.clone(), vec![0u8; 4 * n]));
            }
            _ => owned.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec())),
        }
    }
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, sh, b)| (n.clone(), TensorView::new(*d, sh.clone(), b).unwrap())).collect();
    let path = dir.join("checkpoint.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

fn write_features(dir: &Path, rows: usize, cols: usize, value: impl Fn(usize) -> f32) -> PathBuf {
    let t = lova_fast::tensor::HostTensor::new(vec![rows, cols], (0..rows * cols).map(value).collect());
    let path = dir.join(format!("features_{rows}x{cols}.safetensors"));
    lova_fast::weights::write_tensors_atomically(&path, &[("features", &t)], None).unwrap();
    path
}

#[test]
fn infer_writes_the_reference_latents() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latents.safetensors");
    let p = fixture_paths();
    let args = infer_args(&p.features, &p.checkpoint, &p.config, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lova_fast(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("16 frames -> 44 latent frames"), "{stderr}");
    let got = SafetensorsFile::open(&out).unwrap().tensor("latents", &[64, 44]).unwrap();
    let want = load("tiny/sampler_eta0.safetensors", "latents");
    let err = rel_l2(&got.data, &want.data);
    assert!(err <= 1e-4, "{err:e}");
    // Only the output: no temporary file left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn help_explains_the_options() {
    let o = lova_fast(&["infer", "--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for option in ["--checkpoint", "--save-latents", "--steps", "--cfg", "--seed", "--eta", "--init-noise", "--seconds"]
    {
        assert!(text.contains(option), "--help lacks {option}");
    }
    // --batch warns that the sampler's memory grows with it.
    for words in ["--batch", "arena", "grows with the batch"] {
        assert!(text.contains(words), "--help lacks {words:?}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.model.transformer.layers.1.ff_norm.gamma";
    let p = Paths { checkpoint: rewrite_checkpoint(dir.path(), key, None), ..fixture_paths() };
    expect_failure(&p, &[], &[key, "missing"]);
}

#[test]
fn misshaped_tensor_names_key_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.model.transformer.layers.0.cross_attn.to_kv.weight";
    let p = Paths { checkpoint: rewrite_checkpoint(dir.path(), "", Some((key, vec![128, 128]))), ..fixture_paths() };
    expect_failure(&p, &[], &[key, "[128, 128]", "[256, 128]"]);
}

#[test]
fn unsupported_config_names_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("tiny/model_config.json")).unwrap();
    let bad = text.replace("\"continuous_transformer\"", "\"x_transformer\"");
    assert_ne!(bad, text);
    let config = dir.path().join("model_config.json");
    std::fs::write(&config, bad).unwrap();
    let p = Paths { config, ..fixture_paths() };
    expect_failure(&p, &[], &["model.diffusion.config.transformer_type", "x_transformer"]);
}

#[test]
fn too_many_video_frames_for_the_position_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = Paths { features: write_features(dir.path(), 3001, 128, |i| (i % 7) as f32), ..fixture_paths() };
    expect_failure(&p, &["--seconds", "2"], &["3001 video frames", "3000"]);
}

#[test]
fn clip_longer_than_the_audio_position_table() {
    let dir = tempfile::tempdir().unwrap();
    // 150 s at 8 fps: 3230 latent frames, beyond the 139.3 s the table allows.
    let p = Paths { features: write_features(dir.path(), 1200, 128, |i| (i % 5) as f32), ..fixture_paths() };
    expect_failure(&p, &[], &["139.3 s"]);
}

#[test]
fn nan_in_features_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Paths {
        features: write_features(dir.path(), 16, 128, |i| if i == 300 { f32::NAN } else { 0.5 }),
        ..fixture_paths()
    };
    expect_failure(&p, &[], &["non-finite", "NaN", "300"]);
}

#[test]
fn features_of_the_wrong_width_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Paths { features: write_features(dir.path(), 16, 100, |_| 0.0), ..fixture_paths() };
    expect_failure(&p, &[], &["[16, 100]", "[N, 128]"]);
}

#[test]
fn unreadable_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Paths { features: dir.path().join("nope.safetensors"), ..fixture_paths() };
    expect_failure(&missing, &[], &["nope.safetensors", "cannot read"]);

    let garbage_dir = tempfile::tempdir().unwrap();
    let garbage = garbage_dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    expect_failure(
        &Paths { checkpoint: garbage.clone(), ..fixture_paths() },
        &[],
        &["garbage.safetensors", "not a valid safetensors"],
    );

    let bytes = std::fs::read(fixture("tiny/checkpoint.safetensors")).unwrap();
    std::fs::write(&garbage, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(&Paths { checkpoint: garbage, ..fixture_paths() }, &[], &["garbage.safetensors"]);
}

#[test]
fn missing_output_folder_fails_before_sampling() {
    let o = lova_fast(&[
        "infer",
        s(&fixture("tiny/features.safetensors")),
        "--checkpoint",
        s(&fixture("tiny/checkpoint.safetensors")),
        "--config",
        s(&fixture("tiny/model_config.json")),
        "--save-latents",
        "/nonexistent-dir/out.safetensors",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("does not exist"), "{stderr}");
}

/// `--vae-chunk` decodes in windows with the receptive field as context, and so
/// does a `--vae-memory` budget the whole decode would exceed: the WAV is the
/// whole decode's (f32 samples; chunked and whole agree to f32 rounding, see
/// tests/vae_reference.rs), and the summary shows the smaller planned arena.
#[test]
fn vae_chunk_gives_the_same_audio() {
    let dir = tempfile::tempdir().unwrap();
    let p = fixture_paths();
    let mut runs = Vec::new();
    // The tiny fixture's whole decode plans 5 MiB; a 4 MiB budget forces windows.
    for (name, chunking) in
        [("whole", None), ("chunk", Some(["--vae-chunk", "0.2"])), ("budget", Some(["--vae-memory", "0.004"]))]
    {
        let out = dir.path().join(format!("{name}.wav"));
        let mut args = vec![
            "infer",
            s(&p.features),
            "--checkpoint",
            s(&p.checkpoint),
            "--config",
            s(&p.config),
            "-o",
            s(&out),
            "--float",
            "--steps",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
        ];
        if let Some(c) = chunking {
            args.extend(c);
        }
        let o = lova_fast(&args);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        let planned: f64 = stderr
            .split("MiB planned")
            .next()
            .and_then(|h| h.rsplit('(').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no planned VAE memory in: {stderr}"));
        let samples: Vec<f32> = hound::WavReader::open(&out).unwrap().samples::<f32>().map(|x| x.unwrap()).collect();
        runs.push((planned, samples));
    }
    let whole = &runs[0];
    for (name, chunked) in ["--vae-chunk", "--vae-memory"].iter().zip(&runs[1..]) {
        assert!(chunked.0 < whole.0, "{name}: chunked plan {} MiB, whole {} MiB", chunked.0, whole.0);
        assert!(chunked.0 <= 4.1 || *name == "--vae-chunk", "{name}: plan {} MiB over the budget", chunked.0);
        let err = rel_l2(&chunked.1, &whole.1);
        assert!(err <= 1e-6, "{name}: {err:e}");
    }
}

#[test]
fn vae_chunk_must_be_positive() {
    let p = fixture_paths();
    expect_failure(&p, &["--vae-chunk", "0"], &["--vae-chunk must be a positive number of seconds"]);
    expect_failure(&p, &["--vae-memory", "0"], &["--vae-memory must be a positive number of GiB"]);
}

/// Features files of the tiny fixture's first `frames` frames, one per length, in `dir`.
fn clips_of_lengths(dir: &Path, lengths: &[usize]) -> Vec<PathBuf> {
    let full = load("tiny/features.safetensors", "features");
    let width = full.shape[1];
    lengths
        .iter()
        .map(|&n| {
            let path = dir.join(format!("clip{n}.safetensors"));
            let t = lova_fast::tensor::HostTensor::new(vec![n, width], full.data[..n * width].to_vec());
            lova_fast::weights::write_tensors_atomically(&path, &[("features", &t)], None).unwrap();
            path
        })
        .collect()
}

/// `infer INPUTS...` on the tiny fixture (f32 WAVs next to the inputs, seed 5);
/// returns the JSON summary.
fn infer_wavs(inputs: &[&Path], extra: &[&str]) -> serde_json::Value {
    let p = fixture_paths();
    let mut args = vec!["infer"];
    args.extend(inputs.iter().map(|i| s(i)));
    args.extend(["--checkpoint", s(&p.checkpoint), "--config", s(&p.config)]);
    args.extend(["--float", "--steps", "3", "--seed", "5", "--device", "cpu", "--json", "--quiet"]);
    args.extend(extra);
    let o = lova_fast(&args);
    ok(&o);
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// `--batch N` samples up to N inputs in one sampler run (clips of different
/// lengths packed together); each input's audio is byte for byte the audio it
/// gets alone (f32 samples, so any difference in the latents would show), for a
/// group of all inputs and for a group of 2 followed by a group of 1.
#[test]
fn batched_inputs_give_the_audio_they_get_alone() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = clips_of_lengths(dir.path(), &[16, 11, 5]);
    let wav = |input: &PathBuf| input.with_extension("wav");
    let mut alone = Vec::new();
    let mut latent_frames = Vec::new();
    for input in &inputs {
        let summary = infer_wavs(&[input], &[]);
        latent_frames.push(summary["inputs"][0]["latent_frames"].as_u64().unwrap());
        alone.push(std::fs::read(wav(input)).unwrap());
        std::fs::remove_file(wav(input)).unwrap();
    }
    assert!(latent_frames[0] > latent_frames[1] && latent_frames[1] > latent_frames[2], "{latent_frames:?}");

    let paths: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    for (batch, groups_of_inputs) in [("3", vec![0, 0, 0]), ("2", vec![0, 0, 1])] {
        let summary = infer_wavs(&paths, &["--batch", batch]);
        for (input, want) in inputs.iter().zip(&alone) {
            let got = std::fs::read(wav(input)).unwrap();
            assert!(got == *want, "--batch {batch}: {} differs from its run alone", input.display());
            std::fs::remove_file(wav(input)).unwrap();
        }
        // One report per input, in order, each naming its sampler run.
        let reports = summary["inputs"].as_array().expect("inputs");
        assert_eq!(reports.len(), inputs.len(), "{summary}");
        for ((r, input), frames) in reports.iter().zip(&inputs).zip(&latent_frames) {
            assert_eq!(r["input"], s(input));
            assert_eq!(r["seed"], 5, "--seed is every input's seed");
            assert_eq!(r["latent_frames"].as_u64(), Some(*frames));
        }
        let got: Vec<u64> = reports.iter().map(|r| r["sampling_group"].as_u64().unwrap()).collect();
        assert_eq!(got, groups_of_inputs, "--batch {batch}");
        // Each group's run: its inputs, its latent frames, its time shared by its reports.
        let groups = summary["sampling_groups"].as_array().expect("sampling_groups");
        assert_eq!(groups.len(), *groups_of_inputs.last().unwrap() as usize + 1, "{summary}");
        for (g, group) in groups.iter().enumerate() {
            let members: Vec<&serde_json::Value> =
                reports.iter().filter(|r| r["sampling_group"].as_u64() == Some(g as u64)).collect();
            let names: Vec<&serde_json::Value> = members.iter().map(|r| &r["input"]).collect();
            assert_eq!(group["inputs"].as_array().unwrap().iter().collect::<Vec<_>>(), names);
            let frames: u64 = members.iter().map(|r| r["latent_frames"].as_u64().unwrap()).sum();
            assert_eq!(group["latent_frames"].as_u64(), Some(frames));
            assert!(group["sampling_arena_bytes"].as_u64().unwrap() > 0, "{group}");
            for r in members {
                assert_eq!(r["sampling_s"], group["sampling_s"]);
                assert_eq!(r["step_flops"], group["step_flops"]);
            }
        }
    }
}

#[test]
fn batch_must_hold_at_least_one_input() {
    let p = fixture_paths();
    let o = lova_fast(&["infer", s(&p.features), "--checkpoint", s(&p.checkpoint), "--batch", "0"]);
    failed(&o, &["--batch", "at least 1"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
}
