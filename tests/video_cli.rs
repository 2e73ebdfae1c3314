//! `lova-fast infer VIDEO` end to end on the tiny model (DiT + VAE + tiny CLIP
//! in one engine file) and its behaviour on bad video input: a clear error, a
//! non-zero exit, no panic, no output file. Needs FFmpeg (fails without it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{failed, fixture, lova_fast, ok, s, tiny_engine_with_clip};

fn require_ffmpeg() {
    if let Err(e) = lova_fast::video::ffmpeg::check_tools() {
        panic!("these tests need FFmpeg: {e}");
    }
}

fn copy_video(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(fixture(&format!("video/{name}")), &to).unwrap();
    to
}

fn wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    (r.spec(), r.samples::<i16>().map(|x| x.unwrap()).collect())
}

const FAST: &[&str] = &["--steps", "3", "--seed", "7", "--quiet"];

#[test]
fn video_to_wav_has_the_video_length_and_is_reproducible() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    for (name, duration) in [("h264_29.97fps.mp4", 3.003), ("h264_0.5s.mp4", 0.5), ("vp9_24fps.webm", 2.0)] {
        let video = copy_video(dir.path(), name);
        let out = dir.path().join(format!("{name}.wav"));
        ok(&lova_fast(&[&["infer", s(&video), "--weights", s(&engine), "-o", s(&out)], FAST].concat()));
        let (spec, samples) = wav(&out);
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 44100, 16));
        let expected = (duration * 44100.0f64).round() as usize;
        assert_eq!(samples.len(), 2 * expected, "{name}: round(D * 44100) samples per channel");
        // Same seed, same audio.
        let again = dir.path().join(format!("{name}.again.wav"));
        ok(&lova_fast(&[&["infer", s(&video), "--weights", s(&engine), "-o", s(&again)], FAST].concat()));
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap(), "{name}");
    }
}

#[test]
fn mux_features_and_json_summary() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let video = copy_video(dir.path(), "h264_25fps.mp4");
    let (features, muxed) = (dir.path().join("f.safetensors"), dir.path().join("out.mp4"));
    let o = lova_fast(
        &[
            &[
                "infer",
                s(&video),
                "--weights",
                s(&engine),
                "--mux",
                s(&muxed),
                "--save-features",
                s(&features),
                "--json",
            ],
            FAST,
        ]
        .concat(),
    );
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let one = &summary["inputs"][0];
    assert_eq!(one["frames"], 32);
    assert_eq!(one["audio_samples"], 176400);
    for stage in ["decode_s", "clip_s", "sampling_s", "vae_s", "write_s"] {
        assert!(one[stage].is_number(), "{stage} missing: {summary}");
    }
    // The sampling stage's achieved rate: step FLOP x steps / sampling time.
    let (flops, tflops, sampling_s) = (
        one["step_flops"].as_f64().unwrap(),
        one["sampling_tflops"].as_f64().unwrap(),
        one["sampling_s"].as_f64().unwrap(),
    );
    let steps = one["steps"].as_f64().unwrap();
    assert!(flops > 0.0 && sampling_s > 0.0, "{summary}");
    assert!((tflops - flops * steps / sampling_s * 1e-12).abs() <= 1e-9 * tflops.max(1e-9), "{summary}");
    let f = lova_fast::weights::SafetensorsFile::open(&features).unwrap();
    assert_eq!(f.shape("features"), Some(vec![32, 128]));
    // The saved features give the same audio as the video.
    let (from_video, from_features) = (video.with_extension("wav"), dir.path().join("from_features.wav"));
    ok(&lova_fast(&[&["infer", s(&features), "--weights", s(&engine), "-o", s(&from_features)], FAST].concat()));
    assert_eq!(std::fs::read(&from_video).unwrap(), std::fs::read(&from_features).unwrap());
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0", s(&muxed)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).split_whitespace().collect::<Vec<_>>(), ["h264", "aac"]);
}

#[test]
fn several_inputs_and_an_image_folder() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let videos = dir.path().join("videos");
    std::fs::create_dir(&videos).unwrap();
    copy_video(&videos, "h264_0.5s.mp4");
    copy_video(&videos, "vp9_24fps.webm");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..10u8 {
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([i * 20, 100, 200]));
        img.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    ok(&lova_fast(&[&["infer", s(&videos), s(&frames), "--fps", "5", "--weights", s(&engine)], FAST].concat()));
    assert_eq!(wav(&videos.join("h264_0.5s.wav")).1.len(), 2 * 22050);
    assert_eq!(wav(&videos.join("vp9_24fps.wav")).1.len(), 2 * 88200);
    // 10 images at 5 fps: 2 s.
    assert_eq!(wav(&dir.path().join("frames.wav")).1.len(), 2 * 88200);
}

#[test]
fn sample_fps_overrides_the_models_rate() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let video = copy_video(dir.path(), "vp9_24fps.webm"); // 2 s
    let features = dir.path().join("f.safetensors");
    let args = ["infer", s(&video), "--weights", s(&engine), "--save-features", s(&features), "--no-audio"];
    let latents = dir.path().join("l.safetensors");
    ok(&lova_fast(&[&args[..], &["--save-latents", s(&latents), "--sample-fps", "3"], FAST].concat()));
    let f = lova_fast::weights::SafetensorsFile::open(&features).unwrap();
    // ceil(2 s * 3 fps) = 6 frames instead of the model's 16; the audio length still follows the video.
    assert_eq!(f.shape("features"), Some(vec![6, 128]));
    let l = lova_fast::weights::SafetensorsFile::open(&latents).unwrap();
    assert_eq!(l.shape("latents"), Some(vec![64, 44]));
}

/// Runs `infer` on `video` expecting failure; checks the message, the exit
/// code, no panic, and that the output folder stays empty.
fn expect_failure(video: &Path, engine: &Path, path_env: Option<&str>, expected: &[&str]) -> Option<i32> {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.wav");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lova-fast"));
    cmd.args(["infer", s(video), "--weights", s(engine), "-o", s(&out), "--steps", "2"]);
    cmd.args(["--mux", s(&out_dir.path().join("out.mp4")), "--save-features", s(&out_dir.path().join("f.st"))]);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {stderr}");
    assert_ne!(o.status.code(), Some(101), "panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "stderr lacks {e:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    o.status.code()
}

#[test]
fn bad_video_input_fails_cleanly() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let truncated = dir.path().join("truncated.mp4");
    let bytes = std::fs::read(fixture("video/h264_25fps.mp4")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let cases: [(PathBuf, &[&str]); 5] = [
        (text, &["notes.mp4", "not a readable video"]),
        (truncated, &["truncated.mp4"]),
        (fixture("video/audio_only.mp4"), &["no video stream"]),
        (fixture("video/zero_length.mp4"), &["no video frames"]),
        (fixture("video/too_long_150s.mp4"), &["139.3 s"]),
    ];
    for (video, expected) in cases {
        assert_eq!(expect_failure(&video, &engine, None, expected), Some(1), "{}", video.display());
    }
}

#[test]
fn missing_ffmpeg_and_unwritable_output() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let video = fixture("video/h264_0.5s.mp4");
    let code =
        expect_failure(&video, &engine, Some("/nonexistent"), &["ffmpeg", "not found", "apt-get install ffmpeg"]);
    assert_eq!(code, Some(3), "exit code 3: FFmpeg missing");
    require_ffmpeg();
    let o = lova_fast(&["infer", s(&video), "--weights", s(&engine), "-o", "/nonexistent-dir/out.wav"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn demo_runs_the_whole_pipeline() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let stderr = ok(&lova_fast(&["demo", "--keep", s(dir.path())]));
    assert!(stderr.contains("RANDOM weights"), "{stderr}");
    assert_eq!(wav(&dir.path().join("testsrc.wav")).1.len(), 2 * 132300);
    assert!(dir.path().join("testsrc.with-audio.mp4").is_file());
}

/// `--batch` with videos of different lengths: each WAV is byte for byte the one
/// the video gets alone. A video that fails while it is decoded fails alone:
/// the run reports it and exits 1, and every other input of its group (before
/// and after it) still gets its output, the same audio as alone.
#[test]
fn batched_videos_give_the_audio_they_get_alone() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let videos: Vec<PathBuf> =
        ["h264_29.97fps.mp4", "h264_0.5s.mp4", "vp9_24fps.webm"].iter().map(|n| copy_video(dir.path(), n)).collect();
    let wav_of = |video: &PathBuf| video.with_extension("wav");
    let infer = |inputs: &[&PathBuf], extra: &[&str]| {
        let mut args = vec!["infer", "--weights", s(&engine)];
        args.extend(inputs.iter().map(|v| s(v)));
        lova_fast(&[&args[..], extra, FAST].concat())
    };
    let mut alone = Vec::new();
    for video in &videos {
        ok(&infer(&[video], &[]));
        alone.push(std::fs::read(wav_of(video)).unwrap());
        std::fs::remove_file(wav_of(video)).unwrap();
    }
    ok(&infer(&videos.iter().collect::<Vec<_>>(), &["--batch", "3"]));
    for (video, want) in videos.iter().zip(&alone) {
        assert!(std::fs::read(wav_of(video)).unwrap() == *want, "{} differs from its run alone", video.display());
        std::fs::remove_file(wav_of(video)).unwrap();
    }

    // Decoding fails on a folder of frames with a broken image, the second input of a group of 3.
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..10u8 {
        image::RgbImage::from_pixel(40, 30, image::Rgb([i * 20, 100, 200]))
            .save(frames.join(format!("{i:03}.png")))
            .unwrap();
    }
    std::fs::write(frames.join("005.png"), b"not a PNG").unwrap();
    let o = infer(&[&videos[1], &frames, &videos[2]], &["--batch", "3", "--fps", "5"]);
    failed(&o, &["005.png", "cannot read the image"]);
    assert!(std::fs::read(wav_of(&videos[1])).unwrap() == alone[1], "the input before the failure is finished");
    assert!(std::fs::read(wav_of(&videos[2])).unwrap() == alone[2], "the input after the failure is finished");
    assert!(!dir.path().join("frames.wav").exists(), "the failed input got a WAV");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 of 3 inputs failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `infer --precision bf16` from an engine file: CLIP, the DiT and the VAE
/// all load their matrices packed to bf16 (no f32 copies) and run. The audio
/// is close to the f32 path's (bound: `tests/cpu_bf16.rs`, 30 dB, derived
/// there for the tiny model end to end), and a clip in a batch of two gets
/// the bits it gets alone, as on the f32 path.
#[test]
fn bf16_precision_from_an_engine_file_is_close_to_f32_and_batch_invariant() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    // Each run in a folder of its own: `infer` writes INPUT.wav next to each input.
    let run = |names: &[&str], tag: &str, extra: &[&str]| -> Vec<Vec<i16>> {
        let run_dir = dir.path().join(tag);
        std::fs::create_dir(&run_dir).unwrap();
        let videos: Vec<PathBuf> = names.iter().map(|n| copy_video(&run_dir, n)).collect();
        let mut args = vec!["infer", "--weights", s(&engine)];
        args.extend(videos.iter().map(|v| s(v)));
        ok(&lova_fast(&[&args[..], extra, FAST].concat()));
        videos.iter().map(|v| wav(&v.with_extension("wav")).1).collect()
    };
    let videos = ["h264_29.97fps.mp4", "vp9_24fps.webm"];
    let f32_audio = run(&videos[..1], "f32", &["--precision", "f32"]);
    let bf16_alone = run(&videos[..1], "bf16", &["--precision", "bf16"]);
    let bf16_batch = run(&videos, "bf16-batch", &["--precision", "bf16", "--batch", "2"]);
    assert!(bf16_batch[0] == bf16_alone[0], "bf16: a clip batched with another differs from its run alone");
    let (want, got) = (&f32_audio[0], &bf16_alone[0]);
    let signal: f64 = want.iter().map(|&a| (a as f64).powi(2)).sum();
    let noise: f64 = want.iter().zip(got).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let snr_db = 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10();
    println!("tiny engine, infer --precision bf16 vs f32: audio SNR {snr_db:.1} dB");
    assert!(snr_db >= 30.0, "audio SNR {snr_db} dB");
    assert!(got != want, "bf16 gave the f32 samples: the bf16 path did not run");
}
