//! `infer`'s outputs never replace its inputs or each other, folders skip the
//! tool's own outputs, `--skip-existing` leaves finished inputs, and `--quiet`
//! / `--json` say what they promise.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, fixture, lova_fast, ok, s, tiny_engine_with_clip};

/// Fast settings for the tiny model.
const FAST: &[&str] = &["--steps", "2", "--seed", "3", "--device", "cpu"];

fn infer(args: &[&str]) -> std::process::Output {
    lova_fast(&[&["infer"], args, FAST].concat())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn require_ffmpeg() {
    if let Err(e) = lova_fast::video::ffmpeg::check_tools() {
        panic!("these tests need FFmpeg: {e}");
    }
}

/// An output naming an input (the engine file, the features) or another output
/// is refused before anything runs, and every file is left as it was.
#[test]
fn outputs_never_replace_inputs_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let features = dir.path().join("features.safetensors");
    std::fs::copy(fixture("tiny/features.safetensors"), &features).unwrap();
    let before = |p: &Path| std::fs::read(p).unwrap();
    let (engine_bytes, features_bytes) = (before(&engine), before(&features));
    let same = dir.path().join("same.safetensors");
    let wav = dir.path().join("out.wav");
    let engine_again =
        format!("{}/../{}/engine.safetensors", s(dir.path()), dir.path().file_name().unwrap().to_str().unwrap());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["-o", s(&engine)], vec!["-o", "--weights", "same file"]),
        (vec!["-o", s(&features)], vec!["-o", "input", "same file"]),
        (vec!["--save-latents", s(&same), "--save-features", s(&same)], vec!["--save-features", "--save-latents"]),
        (vec!["-o", s(&wav), "--save-latents", s(&wav)], vec!["-o", "--save-latents", "same file"]),
        // Another spelling of the engine file is the same file.
        (vec!["--save-latents", &engine_again], vec!["--save-latents", "--weights"]),
    ];
    for (extra, words) in cases {
        let o = infer(&[&[s(&features), "--weights", s(&engine)], &extra[..]].concat());
        failed(&o, &words);
    }
    assert!(before(&engine) == engine_bytes, "the engine file changed");
    assert!(before(&features) == features_bytes, "the features file changed");
    assert!(!wav.exists() && !same.exists());
}

/// `--no-audio --mux` is a command-line error (the mux was silently ignored).
#[test]
fn no_audio_with_mux_is_refused() {
    let o = lova_fast(&[
        "infer",
        s(&fixture("video/h264_25fps.mp4")),
        "--checkpoint",
        s(&fixture("tiny/checkpoint.safetensors")),
        "--no-audio",
        "--save-latents",
        "/tmp/never-written.safetensors",
        "--mux",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--no-audio") && stderr.contains("--mux"), "{stderr}");
}

/// A folder run a second time does not take its own `*.with-audio.mp4` outputs
/// for inputs; `--skip-existing` leaves the inputs whose outputs all exist;
/// two videos of one folder whose default outputs collide are refused.
#[test]
fn folder_runs_skip_own_outputs_and_finished_inputs() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let videos = dir.path().join("videos");
    std::fs::create_dir(&videos).unwrap();
    std::fs::copy(fixture("video/h264_0.5s.mp4"), videos.join("a.mp4")).unwrap();
    let run = |extra: &[&str]| infer(&[&[s(&videos), "--weights", s(&engine), "--mux"], extra].concat());
    ok(&run(&[]));
    let after_first = listing(&videos);
    assert_eq!(after_first, ["a.mp4", "a.wav", "a.with-audio.mp4"]);
    ok(&run(&[]));
    assert_eq!(listing(&videos), after_first, "the second run took its own output for an input");

    let wav: PathBuf = videos.join("a.wav");
    let modified = std::fs::metadata(&wav).unwrap().modified().unwrap();
    std::fs::copy(fixture("video/h264_25fps.mp4"), videos.join("b.mp4")).unwrap();
    let stderr = ok(&run(&["--skip-existing"]));
    assert!(stderr.contains("skipped") && stderr.contains("a.mp4"), "{stderr}");
    assert_eq!(std::fs::metadata(&wav).unwrap().modified().unwrap(), modified, "a.wav was written again");
    assert!(videos.join("b.wav").is_file() && videos.join("b.with-audio.mp4").is_file());

    // a.webm would write a.wav and a.with-audio.mp4 too.
    std::fs::copy(fixture("video/vp9_24fps.webm"), videos.join("a.webm")).unwrap();
    failed(&run(&[]), &["a.wav", "same file"]);
}

/// `--quiet` prints nothing on success, not even why `auto` runs on the CPU;
/// `--json` says which device ran.
#[test]
fn quiet_is_quiet_and_json_names_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wav");
    let (features, checkpoint, config) = (
        fixture("tiny/features.safetensors"),
        fixture("tiny/checkpoint.safetensors"),
        fixture("tiny/model_config.json"),
    );
    let run = |extra: &[&str]| {
        let base = ["infer", s(&features), "--checkpoint", s(&checkpoint), "--config", s(&config), "-o", s(&out)];
        lova_fast(&[&base[..], &["--steps", "2"], extra].concat())
    };
    let o = run(&["--quiet"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "--quiet printed something");
    let o = run(&["--quiet", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let device = summary["device"].as_str().unwrap_or_default();
    assert!(!device.is_empty(), "{summary}");
    if lova_fast::backend::CudaBackend::new(0).is_err() {
        assert!(device.starts_with("cpu"), "{device}");
        assert!(summary["device_note"].as_str().unwrap_or_default().contains("CUDA"), "{summary}");
    }
}
