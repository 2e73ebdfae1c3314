//! The CPU backend's bf16 path (`Precision::Bf16`: Linear and convolution
//! weights rounded to bf16 and packed, attention's softmax with a polynomial
//! exp (its own tests are in src/backend/cpu/softmax.rs and attention.rs),
//! everything else f32) against the f32 reference path, on
//! every bf16 kernel this CPU can run (`Isa::available`; the ones it cannot run
//! are named as skipped in the output).
//!
//! Tolerances (relative L2 of the output; why):
//! - Linear, raw f32 weights: 5e-3. bf16 keeps 8 significant bits, so rounding
//!   (to nearest) moves a weight with significand m in [1, 2) by an error
//!   uniform in +-2^-8 (in units of its exponent), a relative error of rms
//!   2^-8 sqrt(E[1/m^2] / 3) = 2^-8 / sqrt(6) ~ 1.6e-3 for m spread over [1, 2).
//!   x stays f32 and products and sums are f32, so the output error is
//!   sum_k x_k w_k d_k with independent d_k: relative L2 ~ 1.6e-3 for products
//!   of random sign. 5e-3 leaves a 3x margin; a layout or packing bug gives O(1).
//! - Linear, bf16-representable weights: 1e-5. Then the bf16 path multiplies
//!   the very same numbers, and only the f32 summation order differs from the
//!   f32 GEMM (about sqrt(K) 2^-24 relative: 5e-6 at K = 6144).
//! - Between kernels (AVX-512F, AVX2+FMA, scalar) and between a row alone and
//!   the same row in a batch: 0 (same bits). Each output is one chain of f32
//!   FMAs over k in order whatever the kernel and the number of rows.

mod common;

use common::{Rng, fixture, load, max_abs, rel_l2};
use lova_fast::backend::cpu::{Isa, Precision, Resolved};
use lova_fast::backend::{Backend, CpuBackend, WeightSet};
use lova_fast::config::LovaConfig;
use lova_fast::graph::{Executor, Graph, Op};
use lova_fast::models::Dit;
use lova_fast::models::VaeDecoder;
use lova_fast::models::declare::Layout;
use lova_fast::models::dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::models::vae::original_tensor;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, sample};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, TensorSource};
use std::borrow::Cow;

/// Every bf16 backend this CPU runs, after printing the kernels it does not.
fn bf16_backends() -> Vec<(Isa, CpuBackend)> {
    for isa in [Isa::Avx512, Isa::Avx2Fma, Isa::Scalar] {
        if !isa.supported() {
            eprintln!("SKIPPED: the {} bf16 kernel (this CPU cannot run it)", isa.name());
        }
    }
    Isa::available().into_iter().map(|isa| (isa, CpuBackend::with_bf16_kernel(isa).unwrap())).collect()
}

struct LinearCase {
    m: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    residual: Option<Vec<f32>>,
}

/// One Linear op as a graph on `backend` (weights packed by the executor's prepare, as in a model).
fn run_linear(backend: &CpuBackend, c: &LinearCase) -> Vec<f32> {
    let mut g = Graph::new();
    let mut weights = WeightSet::default();
    let x = g.input("x", c.m, c.k);
    let w = weights.push(backend, "w", &HostTensor::new(vec![c.n, c.k], c.w.clone())).unwrap();
    let bias = c.bias.as_ref().map(|b| weights.push(backend, "b", &HostTensor::new(vec![c.n], b.clone())).unwrap());
    let residual = c.residual.as_ref().map(|_| g.input("residual", c.m, c.n));
    let out = g.temp("out", c.m, c.n);
    g.mark_output(out);
    g.push(Op::Linear { x, w, bias, residual, out });
    let mut exec = Executor::new(backend, weights.as_slice(), g).unwrap();
    exec.write(x, &c.x).unwrap();
    if let (Some(t), Some(r)) = (residual, &c.residual) {
        exec.write(t, r).unwrap();
    }
    exec.run().unwrap();
    exec.read(out).unwrap()
}

fn linear_case(rng: &mut Rng, (m, k, n): (usize, usize, usize), i: usize, bf16_weights: bool) -> LinearCase {
    let scale = 1.0 / (k.max(1) as f32).sqrt();
    let mut w = rng.vec(n * k, -scale, scale);
    if bf16_weights {
        w.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
    }
    LinearCase {
        m,
        k,
        n,
        x: rng.vec(m * k, -1.0, 1.0),
        w,
        bias: i.is_multiple_of(2).then(|| rng.vec(n, -0.5, 0.5)),
        residual: (i % 3 != 1).then(|| rng.vec(m * n, -1.0, 1.0)),
    }
}

/// Awkward shapes (1, odd, no multiple of 32 columns or of the 12- and 4-row
/// tiles, k not a multiple of the 256 block) and the DiT's (k, n up to 6144).
const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (1, 256, 1536),
    (7, 33, 17),
    (13, 257, 95),
    (90, 1536, 4608),
    (97, 6144, 64),
    (217, 64, 1536),
    (300, 768, 200),
];

#[test]
fn linear_bf16_matches_the_f32_path_within_bf16_rounding_on_every_kernel() {
    let mut rng = Rng(5);
    let backends = bf16_backends();
    for (i, &shape) in SHAPES.iter().enumerate() {
        for bf16_weights in [false, true] {
            let case = linear_case(&mut rng, shape, i, bf16_weights);
            let want = run_linear(&CpuBackend, &case);
            let tol = if bf16_weights { 1e-5 } else { 5e-3 };
            let mut first: Option<Vec<f32>> = None;
            for (isa, backend) in &backends {
                // The scalar kernel is slow: it is compared on the small shapes only.
                if *isa == Isa::Scalar && shape.0 * shape.1 * shape.2 > 1 << 22 {
                    continue;
                }
                let got = run_linear(backend, &case);
                let err = rel_l2(&got, &want);
                println!(
                    "linear {shape:?} {} {}: rel L2 {err:.2e}, max abs {:.2e}",
                    if bf16_weights { "bf16 weights" } else { "f32 weights" },
                    isa.name(),
                    max_abs(&got, &want)
                );
                assert!(err <= tol, "{shape:?} {isa:?}: rel L2 {err:e} > {tol:e}");
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(
                        f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{shape:?}: the {} kernel gives other bits than the fastest",
                        isa.name()
                    ),
                }
            }
        }
    }
}

/// A row's result does not depend on how many rows are multiplied with it, nor
/// where it sits among them (tile position, task split).
#[test]
fn a_row_of_a_bf16_linear_is_the_same_alone_and_in_any_batch() {
    let mut rng = Rng(9);
    let (k, n) = (1536, 200);
    for (isa, backend) in bf16_backends().into_iter().filter(|(isa, _)| *isa != Isa::Scalar) {
        let big = linear_case(&mut rng, (221, k, n), 0, false);
        let all = run_linear(&backend, &big);
        for (start, rows) in [(0, 1), (5, 1), (13, 12), (100, 97), (220, 1)] {
            let part = LinearCase {
                m: rows,
                k,
                n,
                x: big.x[start * k..(start + rows) * k].to_vec(),
                w: big.w.clone(),
                bias: big.bias.clone(),
                residual: big.residual.as_ref().map(|r| r[start * n..(start + rows) * n].to_vec()),
            };
            let got = run_linear(&backend, &part);
            let want = &all[start * n..(start + rows) * n];
            assert!(
                got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: rows {start}..{} alone differ from the same rows among 221",
                isa.name(),
                start + rows
            );
        }
    }
}

#[test]
fn precision_resolves_to_a_kernel_this_cpu_runs() {
    assert_eq!(CpuBackend::with_precision(Precision::F32).resolved(), Resolved::F32);
    assert_eq!(CpuBackend.resolved(), Resolved::F32);
    assert_eq!(CpuBackend::new(), CpuBackend);
    match CpuBackend::with_precision(Precision::Auto).resolved() {
        Resolved::Bf16(isa) => assert!(isa != Isa::Scalar && isa.supported(), "{isa:?}"),
        Resolved::F32 => assert_eq!(Isa::detect(), Isa::Scalar, "auto chose f32 on a CPU with a SIMD bf16 kernel"),
    }
    for isa in [Isa::Avx512, Isa::Avx2Fma, Isa::Scalar] {
        assert_eq!(CpuBackend::with_bf16_kernel(isa).is_ok(), isa.supported(), "{isa:?}");
    }
    let bf16 = CpuBackend::with_precision(Precision::Bf16);
    assert!(bf16.name().contains("bf16"), "{}", bf16.name());
    assert!(CpuBackend.name().starts_with("cpu (f32"), "{}", CpuBackend.name());
}

fn tiny_config() -> LovaConfig {
    LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap()
}

fn tiny_dit() -> Dit<CpuBackend> {
    let ckpt = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    Dit::load(&CpuBackend, &ckpt, &tiny_config().dit, DIT_PREFIX).unwrap()
}

fn settings() -> SamplerSettings {
    SamplerSettings { steps: 8, sigma_min: 0.3, sigma_max: 500.0, rho: 1.0, eta: 1.0, s_noise: 1.0 }
}

fn request(seed: u64) -> Request {
    Request {
        features: load("tiny/features.safetensors", "features"),
        latent_len: 44,
        cfg_scale: 5.0,
        noise: RequestNoise { seed, initial: None, steps: None },
    }
}

/// `infer --batch` promises a clip's audio does not depend on the clips packed
/// with it; on the bf16 path that holds bit for bit, as on the f32 path.
#[test]
fn bf16_requests_batched_together_equal_requests_run_alone_bit_for_bit() {
    let dit = tiny_dit();
    let features = load("tiny/features.safetensors", "features");
    let short = HostTensor::new(vec![5, features.shape[1]], features.data[..5 * features.shape[1]].to_vec());
    let requests = [
        request(1),
        Request {
            features: short,
            latent_len: 3,
            cfg_scale: 3.0,
            noise: RequestNoise { seed: 2, initial: None, steps: None },
        },
    ];
    for (isa, backend) in bf16_backends().into_iter().filter(|(isa, _)| *isa != Isa::Scalar) {
        let together = sample(&backend, &dit, &requests, &settings(), &mut |_, _| {}).unwrap();
        for (i, r) in requests.iter().enumerate() {
            let alone = sample(&backend, &dit, std::slice::from_ref(r), &settings(), &mut |_, _| {}).unwrap();
            assert_eq!(together[i], alone[0], "{}: request {i} batched differs from alone", isa.name());
        }
    }
}

/// The tiny model end to end (8 sampler steps with CFG 5, then the VAE):
/// latents and audio of the bf16 path against the f32 path.
///
/// Bounds: one step's DiT output moves by ~1.6e-3 relative per Linear (see
/// the top of this file), i.e. by a few 1e-3 through the tiny DiT's layers; CFG
/// 5 scales the difference of two such outputs by 5, and the sampler carries
/// errors over 8 steps. Measured on the development machine (AVX-512F kernel):
/// latents rel L2 6.9e-3, audio SNR 41 dB (40.3 dB with the VAE's
/// convolutions in bf16 too). The bounds, 2e-2 and 30 dB, leave
/// a 3x (11 dB) margin for other kernels' machines; a kernel bug (wrong
/// column, wrong row) gives O(1), an SNR near 0 dB.
#[test]
fn tiny_end_to_end_bf16_latents_and_audio_are_close_to_f32() {
    let dit = tiny_dit();
    let config = tiny_config();
    let file = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let vae = VaeDecoder::load(&CpuBackend, &config.vae_decoder, config.latent_scale, &mut |spec| {
        original_tensor(&file, spec)
    })
    .unwrap();
    let want = sample(&CpuBackend, &dit, &[request(3)], &settings(), &mut |_, _| {}).unwrap().remove(0);
    let want_audio = vae.decode(&CpuBackend, std::slice::from_ref(&want)).unwrap().remove(0);
    let backend = CpuBackend::with_precision(Precision::Bf16);
    let got = sample(&backend, &dit, &[request(3)], &settings(), &mut |_, _| {}).unwrap().remove(0);
    let audio = vae.decode(&backend, std::slice::from_ref(&got)).unwrap().remove(0);
    let latents_err = rel_l2(&got.data, &want.data);
    let noise: f64 = audio.data.iter().zip(&want_audio.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let signal: f64 = want_audio.data.iter().map(|a| (*a as f64).powi(2)).sum();
    let snr_db = 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10();
    println!(
        "tiny end to end, bf16 ({}) vs f32: latents rel L2 {latents_err:.2e}, audio SNR {snr_db:.1} dB",
        backend.name()
    );
    assert!(latents_err <= 2e-2, "latents rel L2 {latents_err:e}");
    assert!(snr_db >= 30.0, "audio SNR {snr_db} dB");
    assert!(latents_err > 0.0, "bf16 gave the f32 bits: the bf16 path did not run");
}

/// `bench --precision`: each choice reaches the CPU backend (its name is in
/// the report), and a wrong one is a clean error.
#[test]
fn bench_takes_the_precision_to_the_cpu_backend() {
    let config_path = fixture("tiny/model_config.json");
    let run = |precision: &str| {
        common::lova_fast(&[
            "bench",
            "--device",
            "cpu",
            "--config",
            common::s(&config_path),
            "--seconds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--precision",
            precision,
            "--json",
        ])
    };
    let device = |precision: &str| {
        let o = run(precision);
        common::ok(&o);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
        report["device"].as_str().unwrap().to_string()
    };
    assert!(device("f32").starts_with("cpu (f32"));
    let bf16 = device("bf16");
    assert!(bf16.contains("bf16") && bf16.contains(Isa::detect().name()), "{bf16}");
    let auto = device("auto");
    assert_eq!(auto.contains("bf16"), Isa::detect() != Isa::Scalar, "{auto}");
    common::failed(&run("fp8"), &["fp8", "f32, bf16 or auto"]);
}

/// The VAE alone on the bf16 path (its convolutions' weights rounded to bf16
/// and run by the Linear kernel on im2col rows): the same latents decoded on
/// the f32 and bf16 paths, and a clip decoded alone and next to another.
///
/// Bound: each convolution's output moves by ~1.6e-3 relative (the Linear
/// derivation at the top of this file: K * C_in products of random sign), and
/// the tiny decoder chains 16 of them (5 blocks of upsampling + 3 residual
/// units, and the first and last convs); errors of independent layers add in
/// quadrature, 1.6e-3 * sqrt(16) = 6.4e-3, an SNR of 44 dB, less where SnakeBeta
/// and the residual paths amplify. 30 dB is a 14 dB margin; a wrong column,
/// phase or tap gives an SNR near 0 dB.
#[test]
fn bf16_vae_is_close_to_f32_and_the_same_alone_or_batched() {
    let config = tiny_config();
    let file = SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let vae = VaeDecoder::load(&CpuBackend, &config.vae_decoder, config.latent_scale, &mut |spec| {
        original_tensor(&file, spec)
    })
    .unwrap();
    let channels = config.vae_decoder.latent_dim;
    let mut rng = Rng(11);
    let mut latents = |len: usize| HostTensor::new(vec![channels, len], rng.vec(channels * len, -2.0, 2.0));
    let (long, short) = (latents(12), latents(5));
    let want = vae.decode(&CpuBackend, std::slice::from_ref(&long)).unwrap().remove(0);
    for (isa, backend) in bf16_backends() {
        let got = vae.decode(&backend, std::slice::from_ref(&long)).unwrap().remove(0);
        let noise: f64 = got.data.iter().zip(&want.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let signal: f64 = want.data.iter().map(|a| (*a as f64).powi(2)).sum();
        let snr_db = 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10();
        println!("tiny VAE, bf16 ({}) vs f32: audio SNR {snr_db:.1} dB", isa.name());
        assert!(snr_db >= 30.0, "{}: audio SNR {snr_db} dB", isa.name());
        assert!(noise > 0.0, "{}: bf16 gave the f32 bits: the bf16 convolutions did not run", isa.name());
        let batched = vae.decode(&backend, &[short.clone(), long.clone()]).unwrap();
        assert_eq!(batched[1], got, "{}: a clip decoded next to another differs from alone", isa.name());
    }
}

/// The tiny checkpoint with every tensor rounded to fp16, as an engine file
/// holds it: `tensor` gives the rounded values in f32 and, when `bits` is set,
/// `tensor_f16` gives their fp16 bits (the engine file's path).
struct Fp16Source {
    file: SafetensorsFile,
    bits: bool,
}

impl TensorSource for Fp16Source {
    fn describe(&self) -> String {
        format!("{} rounded to fp16", self.file.describe())
    }

    fn tensor(&self, key: &str, shape: &[usize]) -> lova_fast::Result<HostTensor> {
        let mut t = self.file.tensor(key, shape)?;
        t.data.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        Ok(t)
    }

    fn tensor_f16(&self, key: &str, shape: &[usize]) -> lova_fast::Result<Option<Cow<'_, [u16]>>> {
        if !self.bits {
            return Ok(None);
        }
        let t = self.file.tensor(key, shape)?;
        Ok(Some(Cow::Owned(t.data.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect())))
    }
}

/// Loaded by a bf16 backend, every Linear weight is packed at upload and keeps
/// no f32 copy (from fp16 bits when the source has them, else from f32), and
/// sampling gives exactly the bits of f32 weights packed when the step graph
/// is prepared (the path of a model loaded by the f32 backend).
#[test]
fn bf16_weights_packed_at_load_hold_no_f32_and_give_the_same_bits() {
    let config = tiny_config();
    let source =
        |bits| Fp16Source { file: SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap(), bits };
    let linear_weights = dit::declared(&config.dit).iter().filter(|d| d.layout == Layout::Linear).count();
    for (isa, backend) in bf16_backends().into_iter().filter(|(isa, _)| *isa != Isa::Scalar) {
        let packed_later = Dit::load(&CpuBackend, &source(true), &config.dit, DIT_PREFIX).unwrap();
        let want = sample(&backend, &packed_later, &[request(3)], &settings(), &mut |_, _| {}).unwrap();
        for bits in [true, false] {
            let dit = Dit::load(&backend, &source(bits), &config.dit, DIT_PREFIX).unwrap();
            let packed_only: Vec<_> = dit.weights().iter().filter(|w| w.f32_tensor().is_none()).collect();
            assert_eq!(packed_only.len(), linear_weights, "{}: weights held only in bf16", isa.name());
            assert!(packed_only.iter().all(|w| w.packed().is_some()));
            let bytes = |d: &Dit<CpuBackend>| d.weights().iter().map(|w| backend.weight_bytes(w)).sum::<usize>();
            let got = sample(&backend, &dit, &[request(3)], &settings(), &mut |_, _| {}).unwrap();
            assert_eq!(got, want, "{} (fp16 bits: {bits}): packed at load differs from packed at prepare", isa.name());
            assert!(
                bytes(&dit) < bytes(&packed_later),
                "{}: packed at load holds {} bytes, f32 + bf16 {}",
                isa.name(),
                bytes(&dit),
                bytes(&packed_later)
            );
        }
    }
}
