//! The CLIP image tower on the CPU backend against the PyTorch reference
//! (tools/reference/clip_reference.py): both checkpoint layouts within 1e-4
//! relative L2 error, and the errors a user sees for files and inputs that do not fit.

mod common;

use std::path::Path;

use common::{fixture, load, max_abs, rel_l2};
use lova_fast::backend::CpuBackend;
use lova_fast::models::clip::{ClipLayout, ClipVision, ClipVisionConfig, clip_tensor_list, open_clip};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, TensorSource};
use safetensors::SafeTensors;

const TOLERANCE: f64 = 1e-4;
const CASES: &str = "clip/cases.safetensors";
const TINY: ClipVisionConfig =
    ClipVisionConfig { width: 128, layers: 2, heads: 2, patch: 14, image_size: 224, output_dim: 128 };

fn open(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(&fixture(&format!("clip/{name}"))).unwrap()
}

/// Opens a checkpoint, checks its layout and config, and encodes the fixture images.
fn encode_fixture(name: &str, layout: ClipLayout) -> HostTensor {
    let file = open(name);
    let (cfg, ckpt) = open_clip(&file).unwrap();
    assert_eq!(ckpt.layout(), layout);
    assert_eq!(cfg, TINY);
    let clip = ClipVision::load(&CpuBackend, &ckpt, "", &cfg).unwrap();
    clip.encode(&CpuBackend, &load(CASES, "images")).unwrap()
}

fn check_against_reference(name: &str, layout: ClipLayout) -> HostTensor {
    let got = encode_fixture(name, layout);
    let want = load(CASES, "features");
    assert_eq!(got.shape, want.shape);
    let err = rel_l2(&got.data, &want.data);
    println!("{name} ({}): rel L2 {err:.2e}, max abs {:.2e}", layout.name(), max_abs(&got.data, &want.data));
    assert!(err <= TOLERANCE, "{name}: {err:e}");
    got
}

#[test]
fn openai_layout_matches_reference() {
    check_against_reference("openai.safetensors", ClipLayout::OpenAi);
}

#[test]
fn hugging_face_layout_matches_reference() {
    check_against_reference("hf.safetensors", ClipLayout::HuggingFace);
}

#[test]
fn both_layouts_give_the_same_features() {
    let a = encode_fixture("openai.safetensors", ClipLayout::OpenAi);
    let b = encode_fixture("hf.safetensors", ClipLayout::HuggingFace);
    // Same f32 weights (stacking and transposing are exact), same graph.
    let err = rel_l2(&b.data, &a.data);
    println!("OpenAI vs Hugging Face layout: rel L2 {err:.2e}");
    assert!(err <= 1e-6, "{err:e}");
}

#[test]
fn both_layouts_serve_every_listed_tensor_with_the_same_values() {
    let (openai, hf) = (open("openai.safetensors"), open("hf.safetensors"));
    let ((_, a), (_, b)) = (open_clip(&openai).unwrap(), open_clip(&hf).unwrap());
    for (key, shape) in clip_tensor_list(&TINY) {
        assert_eq!(a.shape(&key).as_ref(), Some(&shape), "{key}");
        assert_eq!(b.shape(&key).as_ref(), Some(&shape), "{key}");
        assert_eq!(a.tensor(&key, &shape).unwrap(), b.tensor(&key, &shape).unwrap(), "{key}");
    }
}

/// The OpenAI layout is the file's own: its fp16 tensors are served as stored
/// (the bits of the values `tensor` gives). Hugging Face tensors are rebuilt
/// (renamed, transposed, concatenated), so never.
#[test]
fn only_the_openai_layout_serves_stored_fp16_bits() {
    let (openai, hf) = (open("openai.safetensors"), open("hf.safetensors"));
    let ((_, a), (_, b)) = (open_clip(&openai).unwrap(), open_clip(&hf).unwrap());
    for (key, shape) in clip_tensor_list(&TINY) {
        let bits = a.tensor_f16(&key, &shape).unwrap().unwrap_or_else(|| panic!("{key}: the fixture is fp16"));
        let values: Vec<f32> = bits.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
        assert_eq!(values, a.tensor(&key, &shape).unwrap().data, "{key}");
        assert_eq!(b.tensor_f16(&key, &shape).unwrap(), None, "{key}");
    }
}

#[test]
fn a_batch_equals_its_images_encoded_alone() {
    let file = open("openai.safetensors");
    let (cfg, ckpt) = open_clip(&file).unwrap();
    let clip = ClipVision::load(&CpuBackend, &ckpt, "", &cfg).unwrap();
    let images = load(CASES, "images");
    let batch = clip.encode(&CpuBackend, &images).unwrap();
    let per_image = images.len() / 3;
    for i in 0..3 {
        let one = HostTensor::new(vec![1, 3, 224, 224], images.data[i * per_image..(i + 1) * per_image].to_vec());
        let alone = clip.encode(&CpuBackend, &one).unwrap();
        let err = rel_l2(&alone.data, &batch.data[i * 128..(i + 1) * 128]);
        assert!(err <= 1e-6, "image {i}: {err:e}");
    }
}

/// The OpenAI fixture's tensors under `clip.`, as in an engine file.
struct Prefixed<'a>(&'a SafetensorsFile);

impl TensorSource for Prefixed<'_> {
    fn describe(&self) -> String {
        "prefixed".into()
    }
    fn tensor(&self, key: &str, shape: &[usize]) -> lova_fast::Result<HostTensor> {
        let inner = key.strip_prefix("clip.").unwrap_or("(no prefix)");
        self.0.tensor(inner, shape)
    }
}

#[test]
fn load_reads_keys_under_a_prefix() {
    let file = open("openai.safetensors");
    let clip = ClipVision::load(&CpuBackend, &Prefixed(&file), "clip.", &TINY).unwrap();
    let got = clip.encode(&CpuBackend, &load(CASES, "images")).unwrap();
    assert!(rel_l2(&got.data, &load(CASES, "features").data) <= TOLERANCE);
}

#[test]
fn a_file_in_neither_layout_is_refused_naming_both() {
    let dit = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let e = open_clip(&dit).err().expect("a DiT checkpoint was taken for CLIP").to_string();
    println!("{e}");
    for needle in ["checkpoint.safetensors", "OpenAI", "`visual.conv1.weight`", "Hugging Face", "patch_embedding"] {
        assert!(e.contains(needle), "`{needle}` not in: {e}");
    }
}

/// Copies a fixture to `dir` without the tensors `drop`.
fn copy_without(name: &str, drop: &[&str], dir: &Path) -> SafetensorsFile {
    let bytes = std::fs::read(fixture(&format!("clip/{name}"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(k, _)| !drop.contains(&k.as_str())).collect();
    assert_eq!(kept.len() + drop.len(), st.len(), "a dropped key is not in {name}");
    let path = dir.join(name);
    safetensors::serialize_to_file(kept, None, &path).unwrap();
    SafetensorsFile::open(&path).unwrap()
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dropped) in [
        ("openai.safetensors", "visual.transformer.resblocks.1.mlp.c_fc.bias"),
        ("hf.safetensors", "vision_model.encoder.layers.1.self_attn.k_proj.weight"),
        ("hf.safetensors", "vision_model.post_layernorm.bias"),
    ] {
        let file = copy_without(name, &[dropped], dir.path());
        let (cfg, ckpt) = open_clip(&file).unwrap();
        let e = ClipVision::load(&CpuBackend, &ckpt, "", &cfg).err().expect("loaded without a tensor").to_string();
        println!("{e}");
        assert!(e.contains(&format!("`{dropped}`")) && e.contains("missing"), "{e}");
    }
    // A tensor the config is inferred from: named already by open_clip.
    let file = copy_without("hf.safetensors", &["visual_projection.weight"], dir.path());
    let e = open_clip(&file).err().expect("config inferred without the projection").to_string();
    assert!(e.contains("`visual.proj`") && e.contains("Hugging Face"), "{e}");
}

#[test]
fn a_misshapen_tensor_is_named() {
    let file = open("openai.safetensors");
    let (_, ckpt) = open_clip(&file).unwrap();
    // A config that disagrees with the file: the fixture projects to 128 dims.
    let wrong = ClipVisionConfig { output_dim: 32, ..TINY };
    let e = ClipVision::load(&CpuBackend, &ckpt, "", &wrong).err().expect("loaded with the wrong shape").to_string();
    assert!(e.contains("`visual.proj`") && e.contains("[128, 128]") && e.contains("[128, 32]"), "{e}");
}

#[test]
fn wrong_images_are_errors() {
    let file = open("openai.safetensors");
    let (cfg, ckpt) = open_clip(&file).unwrap();
    let clip = ClipVision::load(&CpuBackend, &ckpt, "", &cfg).unwrap();
    for shape in
        [vec![1, 3, 224, 223], vec![3, 224, 224], vec![1, 1, 224, 224], vec![0, 3, 224, 224], vec![1, 3, 14, 14]]
    {
        let e = clip.encode(&CpuBackend, &HostTensor::zeros(shape.clone())).expect_err("accepted").to_string();
        assert!(e.contains(&format!("{shape:?}")) && e.contains("[n, 3, 224, 224]"), "{e}");
    }
    let mut nan = HostTensor::zeros(vec![1, 3, 224, 224]);
    nan.data[1000] = f32::NAN;
    let e = clip.encode(&CpuBackend, &nan).expect_err("NaN accepted").to_string();
    assert!(e.contains("non-finite") && e.contains("1000"), "{e}");
}
