//! Bad input through the binary, as a new user or a fuzzer gives it (issue 20):
//! each case ends in a clean one-line error (exit 1, no panic, no abort) and
//! leaves no output file behind.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, fixture, lova_fast, ok, s};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::write_tensors_atomically;

/// A copy of safetensors file `src` at `dst` with its header JSON changed by
/// `edit` (the data bytes unchanged), padded as the format asks.
fn rewrite_header(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    write_raw(dst, &serde_json::to_string(&header).unwrap(), &bytes[8 + n..]);
}

fn write_raw(dst: &Path, header: &str, data: &[u8]) {
    let mut header = header.as_bytes().to_vec();
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    std::fs::write(dst, out).unwrap();
}

/// The files of `dir`, sorted (to show that nothing was left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The tiny engine file, converted into `dir`.
fn tiny_engine(dir: &Path) -> PathBuf {
    let out = dir.join("engine.safetensors");
    ok(&lova_fast(&[
        "convert",
        "--checkpoint",
        s(&fixture("tiny/checkpoint.safetensors")),
        "--config",
        s(&fixture("tiny/model_config.json")),
        "-o",
        s(&out),
    ]));
    out
}

/// The engine's `__metadata__.config` with `edit` applied.
fn edit_engine_config(header: &mut serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) {
    let text = header["__metadata__"]["config"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    header["__metadata__"]["config"] = serde_json::Value::String(config.to_string());
}

#[test]
fn info_on_an_engine_whose_config_has_no_strides_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let bad = dir.path().join("bad.safetensors");
    rewrite_header(&engine, &bad, |h| {
        edit_engine_config(h, |c| {
            c["model"]["pretransform"]["config"]["decoder"]["config"]["strides"] = [0u8; 0].into()
        })
    });
    let o = lova_fast(&["info", s(&bad)]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("config: unreadable") && stdout.contains("strides"), "{stdout}");
    assert_ne!(o.status.code(), Some(101), "{}", String::from_utf8_lossy(&o.stderr));
    // The engine refuses to load it too, naming the field.
    let latents = dir.path().join("z.safetensors");
    write_tensors_atomically(&latents, &[("latents", &HostTensor::new(vec![64, 2], vec![0.1; 128]))], None).unwrap();
    let out = dir.path().join("out.wav");
    failed(&lova_fast(&["decode", s(&latents), "--weights", s(&bad), "-o", s(&out)]), &["strides"]);
    assert!(!out.exists());
}

#[test]
fn absurd_config_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny/model_config.json")).unwrap()).unwrap();
    config["model"]["diffusion"]["config"]["depth"] = (1u64 << 40).into();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = dir.path().join("engine.safetensors");
    let checkpoint = fixture("tiny/checkpoint.safetensors");
    let o = lova_fast(&["convert", "--checkpoint", s(&checkpoint), "--config", s(&path), "-o", s(&out)]);
    failed(&o, &["model.diffusion.config.depth", "1099511627776"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(listing(dir.path()), ["config.json"]);
}

#[test]
fn a_checkpoint_with_a_duplicate_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny/features.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
    // The same entry twice: JSON readers keep one, the format forbids it.
    let entry_start = header.find("\"features\"").unwrap();
    let entry = &header[entry_start..header[entry_start..].find('}').unwrap() + entry_start + 1];
    let doubled = header.replacen(entry, &format!("{entry},{entry}"), 1);
    let bad = dir.path().join("dup.safetensors");
    write_raw(&bad, &doubled, &bytes[8 + n..]);
    failed(&lova_fast(&["info", s(&bad)]), &["dup.safetensors", "`features` appears twice"]);
}

fn latents_file(dir: &Path, tag: &str, value: f32) -> PathBuf {
    let path = dir.join(format!("latents-{tag}.safetensors"));
    write_tensors_atomically(&path, &[("latents", &HostTensor::new(vec![64, 3], vec![value; 192]))], None).unwrap();
    path
}

fn decode(latents: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (checkpoint, config) = (fixture("tiny/checkpoint.safetensors"), fixture("tiny/model_config.json"));
    let args =
        ["decode", s(latents), "--checkpoint", s(&checkpoint), "--config", s(&config), "-o", s(out), "--device", "cpu"];
    lova_fast(&[&args[..], extra].concat())
}

#[test]
fn decode_of_huge_latents_or_no_samples_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let huge = latents_file(dir.path(), "huge", 3e38);
    let out = dir.path().join("out.wav");
    for extra in [&[][..], &["--float"]] {
        failed(&decode(&huge, &out, extra), &["latents-huge", "3e38", "1e4"]);
    }
    let fine = latents_file(dir.path(), "fine", 0.5);
    failed(&decode(&fine, &out, &["--seconds", "1e-9"]), &["--seconds", "shorter than one audio sample"]);
    assert!(!out.exists());
    // The same latents decode when the request is sound, also with a window
    // longer than any clip (it used to overflow computing the window).
    ok(&decode(&fine, &out, &["--seconds", "0.1"]));
    assert!(out.exists());
    ok(&decode(&fine, &out, &["--vae-chunk", "1e300"]));
}

#[test]
fn errors_name_what_failed_and_the_os_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let o = lova_fast(&["info", s(&missing)]);
    failed(&o, &["cannot read", "missing.safetensors"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("missing.safetensors").count(), 1, "{stderr}");

    // An output that cannot be written is reported as a write, not a read (a
    // folder that refuses writes cannot be made as root, which tests may run
    // as: a path under a file stands in; audio.rs tests the write error itself).
    let fine = latents_file(dir.path(), "fine", 0.5);
    let under_file = fine.join("out.wav");
    let o = decode(&fine, &under_file, &[]);
    failed(&o, &["cannot write", "out.wav"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn convert_refuses_an_output_that_is_one_of_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("ckpt.safetensors");
    std::fs::copy(fixture("tiny/checkpoint.safetensors"), &checkpoint).unwrap();
    let before = std::fs::read(&checkpoint).unwrap();
    let config = fixture("tiny/model_config.json");
    let spelled = dir.path().join(".").join("ckpt.safetensors");
    let o = lova_fast(&["convert", "--checkpoint", s(&checkpoint), "--config", s(&config), "-o", s(&spelled)]);
    failed(&o, &["-o", "--checkpoint", "same file"]);
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the checkpoint was changed");
    assert_eq!(listing(dir.path()), ["ckpt.safetensors"]);
}

#[test]
fn absurd_thread_counts_are_capped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = lova_fast(&[
        "infer",
        s(&fixture("tiny/features.safetensors")),
        "--checkpoint",
        s(&fixture("tiny/checkpoint.safetensors")),
        "--config",
        s(&fixture("tiny/model_config.json")),
        "--save-latents",
        s(&out),
        "--no-audio",
        "--steps",
        "1",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--threads",
        "100000",
    ]);
    let stderr = ok(&o);
    let cap = lova_fast::backend::cpu::threads::cores() * lova_fast::backend::cpu::threads::MAX_THREADS_PER_CORE;
    assert!(stderr.contains(&format!("100000 threads asked for; using {cap}")), "{stderr}");
    assert!(stderr.contains(&format!("cpu (f32, {cap} threads)")), "{stderr}");
}
