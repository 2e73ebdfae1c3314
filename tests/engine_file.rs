//! `convert`, `info`, `decode` and the WAV output of `infer`, end to end on the
//! tiny fixture, and their behaviour on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Watched, failed, fixture, lova_fast, ok, rel_l2, s};
use lova_fast::backend::cpu::CpuWeight;
use lova_fast::backend::{Backend, CpuBackend, OpContext};
use lova_fast::engine::{CLIP_KEYS, DIT_KEYS, VAE_KEYS, WeightSource, load_clip, load_vae, open_engine_file};
use lova_fast::graph::Op;
use lova_fast::models::clip::ClipVision;
use lova_fast::models::{Dit, VaeDecoder, dit, vae};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, TensorSource};

fn convert(dir: &Path, checkpoint: &Path, config: &Path) -> (Output, PathBuf) {
    convert_with_clip(dir, checkpoint, config, &fixture("clip/hf.safetensors"))
}

fn convert_with_clip(dir: &Path, checkpoint: &Path, config: &Path, clip: &Path) -> (Output, PathBuf) {
    let out = dir.join("engine.safetensors");
    let args = ["convert", "--checkpoint", s(checkpoint), "--clip", s(clip), "--config", s(config), "-o", s(&out)];
    (lova_fast(&args), out)
}

fn tiny_engine(dir: &Path) -> PathBuf {
    let (o, path) = convert(dir, &fixture("tiny/checkpoint.safetensors"), &fixture("tiny/model_config.json"));
    ok(&o);
    path
}

/// `infer` with injected noise and eta 0 (deterministic), writing WAV and latents.
fn infer(dir: &Path, tag: &str, weights: &[&str], extra: &[&str]) -> (PathBuf, PathBuf) {
    let (wav, lat) = (dir.join(format!("{tag}.wav")), dir.join(format!("{tag}.latents.safetensors")));
    let features = fixture("tiny/features.safetensors");
    let noise = fixture("tiny/init_noise.safetensors");
    let mut args = vec!["infer", s(&features), "-o", s(&wav), "--save-latents", s(&lat)];
    args.extend_from_slice(weights);
    // The CPU backend: these tests compare file formats, not devices.
    args.extend_from_slice(&["--steps", "8", "--eta", "0", "--init-noise", s(&noise), "--device", "cpu"]);
    args.extend_from_slice(extra);
    ok(&lova_fast(&args));
    (wav, lat)
}

fn latents(path: &Path) -> Vec<f32> {
    SafetensorsFile::open(path).unwrap().tensor("latents", &[64, 44]).unwrap().data
}

fn wav_samples(path: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let v = match spec.sample_format {
        hound::SampleFormat::Int => r.samples::<i16>().map(|x| x.unwrap() as f32 / 32767.0).collect(),
        hound::SampleFormat::Float => r.samples::<f32>().map(|x| x.unwrap()).collect(),
    };
    (spec, v)
}

fn snr_db(got: &[f32], want: &[f32]) -> f64 {
    -20.0 * rel_l2(got, want).log10()
}

#[test]
fn engine_file_and_original_checkpoint_give_the_same_latents_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let (ckpt, cfg) = (fixture("tiny/checkpoint.safetensors"), fixture("tiny/model_config.json"));
    let (wav_o, lat_o) = infer(dir.path(), "original", &["--checkpoint", s(&ckpt), "--config", s(&cfg)], &[]);
    let (wav_e, lat_e) = infer(dir.path(), "engine", &["--weights", s(&engine)], &[]);
    // The engine file stores matrices in fp16 (unit roundoff 4.9e-4): after 8
    // steps with CFG 5 the latents agree to a few times that, not to f32 precision.
    let err = rel_l2(&latents(&lat_e), &latents(&lat_o));
    println!("latents engine vs original: rel L2 {err:.2e}");
    assert!(err < 2e-3, "{err:e}");
    let (spec, a) = wav_samples(&wav_e);
    let (_, b) = wav_samples(&wav_o);
    let snr = snr_db(&a, &b);
    println!("audio engine vs original: SNR {snr:.1} dB");
    assert!(snr > 50.0, "{snr}");
    // 16 frames at 8 fps = 2 s: exactly round(2 * 44100) stereo 16-bit samples.
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 44100, 16));
    assert_eq!(a.len(), 2 * 88200);
    let peak = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!((peak - 1.0).abs() < 1e-4, "peak-normalised, got {peak}");
}

#[test]
fn float_wav_and_explicit_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let (wav, features) = (dir.path().join("f.wav"), fixture("tiny/features.safetensors"));
    let args = [
        "infer",
        s(&features),
        "--weights",
        s(&engine),
        "-o",
        s(&wav),
        "--steps",
        "3",
        "--seed",
        "5",
        "--device",
        "cpu",
    ];
    ok(&lova_fast(&[&args[..], &["--float", "--seconds", "1.9"]].concat()));
    let (spec, v) = wav_samples(&wav);
    assert_eq!((spec.bits_per_sample, spec.sample_format), (32, hound::SampleFormat::Float));
    assert_eq!(v.len(), 2 * 83790, "round(1.9 * 44100) samples per channel");
}

#[test]
fn decode_reproduces_the_audio_of_infer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let (wav, lat) = infer(dir.path(), "i", &["--weights", s(&engine)], &[]);
    let decoded = dir.path().join("decoded.wav");
    ok(&lova_fast(&["decode", s(&lat), "--weights", s(&engine), "-o", s(&decoded)]));
    assert_eq!(std::fs::read(&wav).unwrap(), std::fs::read(&decoded).unwrap());

    // A --vae-memory budget under the whole decode's plan (5 MiB here) decodes in
    // windows with the receptive field as context: the same audio (chunked and
    // whole agree to f32 rounding, which 16-bit samples do not show).
    let windowed = dir.path().join("windowed.wav");
    let o = lova_fast(&["decode", s(&lat), "--weights", s(&engine), "-o", s(&windowed), "--vae-memory", "0.004"]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("(4 MiB planned)") || stderr.contains("(3 MiB planned)"), "{stderr}");
    assert_eq!(wav_samples(&wav).1, wav_samples(&windowed).1);
}

#[test]
fn info_describes_the_engine_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let o = lova_fast(&["info", s(&engine)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(text.contains("engine file, format version 1"), "{text}");
    // The tiny DiT has 3.79 M parameters (the fixture checkpoint's model.model.* minus the unused to_global_embed).
    assert!(text.contains("dit") && text.contains("3.790 M"), "{text}");
    assert!(text.contains("vae") && text.contains("DiT width 256 depth 2"), "{text}");
}

#[test]
fn convert_refuses_a_checkpoint_with_a_missing_vae_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny/checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let key = "pretransform.model.decoder.layers.3.layers.2.layers.0.alpha";
    let kept: Vec<_> = st.tensors().into_iter().filter(|(k, _)| k != key).collect();
    let ckpt = dir.path().join("ckpt.safetensors");
    safetensors::serialize_to_file(kept, None, &ckpt).unwrap();
    let (o, out) = convert(dir.path(), &ckpt, &fixture("tiny/model_config.json"));
    failed(&o, &[key, "missing"]);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the input is left");
}

#[test]
fn convert_refuses_strides_that_do_not_match_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("tiny/model_config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["model"]["pretransform"]["config"]["decoder"]["config"]["strides"] = serde_json::json!([2, 4, 4, 8, 4]);
    // The samples per latent frame follow the strides (the config parser checks that they agree).
    json["model"]["pretransform"]["config"]["downsampling_ratio"] = serde_json::json!(1024);
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, json.to_string()).unwrap();
    let (o, out) = convert(dir.path(), &fixture("tiny/checkpoint.safetensors"), &cfg);
    failed(&o, &["decoder.layers.1.layers.1.weight_v", "[64, 32, 8]"]);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the config is left");
}

#[test]
fn clip_from_the_engine_file_matches_the_reference_and_the_original() {
    use lova_fast::backend::CpuBackend;
    use lova_fast::models::clip::{ClipVision, open_clip};
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path()); // converted from the Hugging Face layout
    let file = SafetensorsFile::open(&engine).unwrap();
    let clip = lova_fast::engine::load_clip(&CpuBackend, &file).unwrap().expect("engine file has CLIP");
    let images = common::load("clip/cases.safetensors", "images");
    let want = common::load("clip/cases.safetensors", "features");
    let got = clip.encode(&CpuBackend, &images).unwrap();
    let original_file = SafetensorsFile::open(&fixture("clip/openai.safetensors")).unwrap();
    let (cfg, original) = open_clip(&original_file).unwrap();
    let direct = ClipVision::load(&CpuBackend, &original, "", &cfg).unwrap().encode(&CpuBackend, &images).unwrap();
    // The fixture's CLIP weights are fp16 values already, so the engine file holds
    // the same numbers (matrices in fp16, vectors in f32): identical features.
    let (e_ref, e_orig) = (rel_l2(&got.data, &want.data), rel_l2(&got.data, &direct.data));
    println!("CLIP from engine file: rel L2 {e_ref:.2e} vs reference, {e_orig:.2e} vs original file");
    assert!(e_ref <= 1e-4 && e_orig <= 1e-6, "{e_ref:e} {e_orig:e}");
    let info = lova_fast(&["info", s(&engine)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("clip"));
}

#[test]
fn convert_refuses_a_clip_file_in_neither_layout() {
    let dir = tempfile::tempdir().unwrap();
    // The LoVA checkpoint itself is not a CLIP checkpoint.
    let ckpt = fixture("tiny/checkpoint.safetensors");
    let (o, out) = convert_with_clip(dir.path(), &ckpt, &fixture("tiny/model_config.json"), &ckpt);
    failed(&o, &["OpenAI", "Hugging Face"]);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn truncated_or_foreign_engine_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let bytes = std::fs::read(&engine).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let wav = dir.path().join("out.wav");
    let features = fixture("tiny/features.safetensors");
    failed(&lova_fast(&["infer", s(&features), "--weights", s(&cut), "-o", s(&wav)]), &["cut.safetensors"]);
    // An original checkpoint passed as an engine file.
    let ckpt = fixture("tiny/checkpoint.safetensors");
    failed(
        &lova_fast(&["infer", s(&features), "--weights", s(&ckpt), "-o", s(&wav)]),
        &["not a lova-fast engine file"],
    );
    assert!(!wav.exists());
}

/// A backend that records how each weight arrived, with the CUDA backend's
/// policy (`Backend::upload_weight_from`): a tensor of rank >= 2 that the
/// source stores as fp16 is taken as its stored bits, anything else through
/// f32. It runs nothing: it checks which tensors the loaders let take the
/// direct path, on a machine without a GPU.
struct UploadRecorder;

#[derive(Debug)]
enum Arrived {
    StoredFp16 { shape: Vec<usize>, bits: Vec<u16> },
    ViaF32(HostTensor),
}

impl Backend for UploadRecorder {
    type Buffer = ();
    type Weight = Arrived;

    fn name(&self) -> String {
        "upload recorder".into()
    }
    fn alloc(&self, _len: usize) -> lova_fast::Result<()> {
        Ok(())
    }
    fn upload_weight(&self, tensor: &HostTensor) -> lova_fast::Result<Arrived> {
        Ok(Arrived::ViaF32(tensor.clone()))
    }
    fn upload_weight_from(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> lova_fast::Result<Arrived> {
        if shape.len() >= 2
            && let Some(bits) = source.tensor_f16(key, shape)?
        {
            return Ok(Arrived::StoredFp16 { shape: shape.to_vec(), bits: bits.into_owned() });
        }
        self.upload_weight(&source.tensor(key, shape)?)
    }
    fn write(&self, _buffer: &mut (), _offset: usize, _data: &[f32]) -> lova_fast::Result<()> {
        Ok(())
    }
    fn read(&self, _buffer: &(), _offset: usize, _out: &mut [f32]) -> lova_fast::Result<()> {
        Err(lova_fast::Error::InvalidInput("the upload recorder holds no data".into()))
    }
    fn run_op(&self, _op: &Op, _ctx: &mut OpContext<'_, Self>) -> lova_fast::Result<()> {
        Err(lova_fast::Error::InvalidInput("the upload recorder runs no op".into()))
    }
    fn device_allocations(&self) -> u64 {
        0
    }
    fn weight_bytes(&self, _weight: &Arrived) -> usize {
        0
    }
    fn weight_len(&self, weight: &Arrived) -> usize {
        match weight {
            Arrived::StoredFp16 { bits, .. } => bits.len(),
            Arrived::ViaF32(t) => t.len(),
        }
    }
}

/// Compares what the recorder received with the CPU backend's f32 weights of
/// the same model: a tensor taken as stored must be the very tensor the model
/// uses (not one the loader would have reshaped or transposed). Returns how
/// many weights arrived as stored fp16.
fn assert_same_weights(what: &str, recorded: &[Arrived], cpu: &[CpuWeight]) -> usize {
    assert_eq!(recorded.len(), cpu.len(), "{what}: weight count");
    let mut stored = 0;
    for (i, (r, c)) in recorded.iter().zip(cpu).enumerate() {
        match r {
            Arrived::StoredFp16 { shape, bits } => {
                let values: Vec<f32> = bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
                let c = c.f32_tensor().expect("the f32 CPU backend keeps every weight in f32");
                assert_eq!((shape, &values), (&c.shape, &c.data), "{what} weight {i}");
                stored += 1;
            }
            Arrived::ViaF32(t) => assert_eq!(Some(t), c.f32_tensor(), "{what} weight {i}"),
        }
    }
    stored
}

#[test]
fn engine_tensors_used_as_stored_take_the_fp16_path_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_engine(dir.path());
    let (file, config) = open_engine_file(&path).unwrap();
    let watched = Watched::new(&file, true);

    let dit = Dit::load(&UploadRecorder, &watched, &config.dit, DIT_KEYS).unwrap();
    let cpu_dit = Dit::load(&CpuBackend, &file, &config.dit, DIT_KEYS).unwrap();
    let stored = assert_same_weights("dit", dit.weights(), cpu_dit.weights());
    // Every matrix but the f32 timestep Fourier weights.
    let matrices = dit::tensor_list(&config.dit).iter().filter(|(_, s)| s.len() >= 2).count();
    assert_eq!(stored, matrices - 1);

    let (scale, vae_cfg) = (config.latent_scale, &config.vae_decoder);
    let vae = VaeDecoder::load_stored(&UploadRecorder, vae_cfg, scale, &watched, VAE_KEYS).unwrap();
    let cpu_vae = load_vae(&CpuBackend, &WeightSource::Engine(&path)).unwrap();
    let stored = assert_same_weights("vae", vae.weights(), cpu_vae.weights());
    assert_eq!(stored, vae::tensor_specs(vae_cfg).iter().filter(|s| s.shape.len() >= 2).count());

    let clip_cfg = load_clip(&CpuBackend, &file).unwrap().expect("the engine file has CLIP").config;
    let clip = ClipVision::load(&UploadRecorder, &watched, CLIP_KEYS, &clip_cfg).unwrap();
    let cpu_clip = load_clip(&CpuBackend, &file).unwrap().unwrap();
    assert_same_weights("clip", clip.weights(), cpu_clip.weights());

    // The only fp16-stored tensors read through f32: the two the CLIP loader rearranges.
    assert_eq!(*watched.read_as_f32.borrow(), ["clip.visual.conv1.weight", "clip.visual.proj"]);
}
