//! The DiT on the CPU backend against the PyTorch reference (tools/reference/):
//! every output within 1e-4 relative L2 error, and a packed batch equal to
//! running its sequences alone.

mod common;

use common::{fixture, load, rel_l2};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

const TOLERANCE: f64 = 1e-4;

fn load_model(dir: &str) -> Dit<CpuBackend> {
    let config = LovaConfig::from_file(&fixture(&format!("{dir}/model_config.json"))).unwrap();
    let ckpt = SafetensorsFile::open(&fixture(&format!("{dir}/checkpoint.safetensors"))).unwrap();
    Dit::load(&CpuBackend, &ckpt, &config.dit, DIT_PREFIX).unwrap()
}

struct Case {
    x: HostTensor,
    t: f32,
    features: HostTensor,
    v_cond: HostTensor,
    v_uncond: HostTensor,
}

fn case(dir: &str, p: &str) -> Case {
    let file = format!("{dir}/dit_cases.safetensors");
    Case {
        x: load(&file, &format!("{p}.x")),
        t: load(&file, &format!("{p}.t")).data[0],
        features: load(&file, &format!("{p}.features")),
        v_cond: load(&file, &format!("{p}.v_cond")),
        v_uncond: load(&file, &format!("{p}.v_uncond")),
    }
}

fn zeros_like(t: &HostTensor) -> HostTensor {
    HostTensor::zeros(t.shape.clone())
}

fn check_cases(dir: &str, prefixes: &[&str]) {
    let dit = load_model(dir);
    for p in prefixes {
        let c = case(dir, p);
        let out = dit
            .forward(
                &CpuBackend,
                &[(c.x.clone(), c.t, c.features.clone()), (c.x.clone(), c.t, zeros_like(&c.features))],
            )
            .unwrap();
        let (e_cond, e_uncond) = (rel_l2(&out[0].data, &c.v_cond.data), rel_l2(&out[1].data, &c.v_uncond.data));
        println!("{dir} case {p}: rel L2 cond {e_cond:.2e}, uncond {e_uncond:.2e}");
        assert_eq!(out[0].shape, c.v_cond.shape);
        assert!(e_cond <= TOLERANCE && e_uncond <= TOLERANCE, "{dir} {p}: {e_cond:e} / {e_uncond:e}");
        // The fixture is not degenerate: guidance has something to work with.
        assert!(rel_l2(&c.v_cond.data, &c.v_uncond.data) > 1e-2);
    }
}

#[test]
fn dit_matches_reference_prepend() {
    check_cases("tiny", &["a", "b"]);
}

#[test]
fn dit_matches_reference_adaln() {
    check_cases("adaln", &["a"]);
}

#[test]
fn packed_batch_equals_separate_runs() {
    let dit = load_model("tiny");
    let (a, b) = (case("tiny", "a"), case("tiny", "b"));
    let seqs = [
        (a.x.clone(), a.t, a.features.clone()),
        (b.x.clone(), b.t, b.features.clone()),
        (a.x.clone(), a.t, zeros_like(&a.features)),
        (b.x.clone(), b.t, zeros_like(&b.features)),
    ];
    let packed = dit.forward(&CpuBackend, &seqs).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = dit.forward(&CpuBackend, std::slice::from_ref(s)).unwrap();
        let err = rel_l2(&packed[i].data, &alone[0].data);
        println!("sequence {i}: packed vs alone rel L2 {err:.2e}");
        assert!(err < 1e-6, "sequence {i}: {err:e}");
    }
}

#[test]
fn unconditional_context_is_the_position_table_not_zero() {
    // If the engine zeroed the context after to_cond_embed + PE_c, the uncond
    // output would differ from the reference; and it must differ from the cond one.
    let dit = load_model("tiny");
    let c = case("tiny", "b");
    let out = dit.forward(&CpuBackend, &[(c.x.clone(), c.t, zeros_like(&c.features))]).unwrap();
    assert!(rel_l2(&out[0].data, &c.v_uncond.data) <= TOLERANCE);
    assert!(rel_l2(&out[0].data, &c.v_cond.data) > 1e-2);
}
