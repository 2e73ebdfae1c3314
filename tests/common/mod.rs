//! Helpers shared by the integration tests: fixture paths, fixture tensors
//! and error measures.
#![allow(dead_code)]

pub mod serve_process;

use std::path::PathBuf;

use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

/// A fixture file. `LOVA_FIXTURES` overrides the folder, for test binaries
/// copied to another machine (tools/device-check.sh).
pub fn fixture(path: &str) -> PathBuf {
    match std::env::var_os("LOVA_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path),
    }
}

pub fn load(file: &str, key: &str) -> HostTensor {
    SafetensorsFile::open(&fixture(file))
        .unwrap_or_else(|e| panic!("{e}"))
        .tensor_any_shape(key)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `||got - want|| / ||want||`, accumulated in f64.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max)
}

/// Reads the raw f64 `sigmas` of a sampler fixture (the loader only does f32/f16/bf16).
pub fn load_f64(file: &str, key: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F64);
    view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The `lova-fast` binary; `LOVA_FAST_BIN` overrides it for test binaries
/// copied to another machine (tools/device-check.sh).
pub fn lova_fast(args: &[&str]) -> std::process::Output {
    let bin = std::env::var_os("LOVA_FAST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lova-fast").into());
    std::process::Command::new(bin).args(args).output().expect("run lova-fast")
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Asserts success; returns stderr.
pub fn ok(o: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

/// Asserts a clean failure: non-zero, not a panic, every `expected` in stderr.
pub fn failed(o: &std::process::Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {stderr}");
    assert_ne!(o.status.code(), Some(101), "exit code 101 is a Rust panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "stderr lacks {e:?}: {stderr}");
    }
}

/// Writes past the test harness' capture, so that a skip shows in `cargo test`.
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The CUDA backend, or `None` after saying loudly that `test` is skipped.
pub fn cuda_or_skip(test: &str) -> Option<lova_fast::backend::CudaBackend> {
    match lova_fast::backend::CudaBackend::new(0) {
        Ok(b) => {
            loud(&format!("{test}: running on {}", b.info()));
            Some(b)
        }
        Err(e) => {
            loud(&format!("SKIPPED {test}: no CUDA device ({e})"));
            None
        }
    }
}

/// The engine file seen through `tensor`/`tensor_f16`, with the fp16 fast path
/// on or off (off: every tensor takes the f32 path, as before the fast path
/// existed), recording the fp16-stored keys read through `tensor` (in f32).
pub struct Watched<'a> {
    file: &'a SafetensorsFile,
    fp16_reads: bool,
    pub read_as_f32: std::cell::RefCell<Vec<String>>,
}

impl<'a> Watched<'a> {
    pub fn new(file: &'a SafetensorsFile, fp16_reads: bool) -> Self {
        Watched { file, fp16_reads, read_as_f32: Default::default() }
    }
}

impl lova_fast::weights::TensorSource for Watched<'_> {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn tensor(&self, key: &str, shape: &[usize]) -> lova_fast::Result<HostTensor> {
        if self.file.dtype_name(key).as_deref() == Some("F16") {
            self.read_as_f32.borrow_mut().push(key.to_string());
        }
        self.file.tensor(key, shape)
    }

    fn tensor_f16(&self, key: &str, shape: &[usize]) -> lova_fast::Result<Option<std::borrow::Cow<'_, [u16]>>> {
        if self.fp16_reads { self.file.tensor_f16(key, shape) } else { Ok(None) }
    }
}

/// The tiny model's engine file with the tiny CLIP (`lova-fast convert`), written into `dir`.
pub fn tiny_engine_with_clip(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("engine.safetensors");
    ok(&lova_fast(&[
        "convert",
        "--checkpoint",
        s(&fixture("tiny/checkpoint.safetensors")),
        "--config",
        s(&fixture("tiny/model_config.json")),
        "--clip",
        s(&fixture("clip/openai.safetensors")),
        "-o",
        s(&out),
    ]));
    out
}

/// splitmix64: a tiny seedable generator for test inputs and fuzz mutations
/// (the same sequence for a seed on every machine).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi), 24 bits of resolution.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    /// `n` uniform values in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Values exactly representable in fp16.
    pub fn vec_f16(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        self.vec(n, lo, hi).into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect()
    }
    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    /// One element of a non-empty `list`.
    pub fn pick<'a, T>(&mut self, list: &'a [T]) -> &'a T {
        &list[self.below(list.len())]
    }
}

/// A sampler job for `run_joining`: the request with its settings, and the step
/// of the running batch at which it joins.
pub type JoiningJob = ((lova_fast::sampler::Request, lova_fast::sampler::SamplerSettings), usize);

/// Drives one running batch as the service's scheduler does: before each step,
/// finished requests leave (their latents collected) and the jobs whose step
/// has come join (`Sampling::recompose`). Returns each job's final latents
/// `[C, T']` data and how many times the batch changed.
#[allow(dead_code)]
pub fn run_joining<B: lova_fast::backend::Backend>(
    backend: &B,
    dit: &lova_fast::models::Dit<B>,
    jobs: &[JoiningJob],
) -> (Vec<Vec<f32>>, usize) {
    use lova_fast::sampler::Sampling;
    let mut got: Vec<Option<Vec<f32>>> = vec![None; jobs.len()];
    // `in_batch[b]`: the job index of the batch's b-th request.
    let mut in_batch: Vec<usize> = Vec::new();
    let mut sampling: Option<Sampling<B>> = None;
    let mut compositions = 0;
    for tick in 0.. {
        let finished: Vec<bool> = match &sampling {
            Some(s) => (0..s.len()).map(|b| s.is_finished(b)).collect(),
            None => Vec::new(),
        };
        for (b, _) in finished.iter().enumerate().filter(|(_, f)| **f) {
            got[in_batch[b]] = Some(sampling.as_ref().unwrap().latents_of(b).unwrap().data);
        }
        let joining: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].1 == tick).collect();
        let add: Vec<_> = joining.iter().map(|&j| jobs[j].0.clone()).collect();
        if finished.iter().any(|&f| f) || !add.is_empty() {
            compositions += 1;
            let mut b = 0;
            in_batch.retain(|_| {
                b += 1;
                !finished[b - 1]
            });
            in_batch.extend(&joining);
            sampling = match sampling.take() {
                Some(s) => s.recompose(|b| !finished[b], add).unwrap(),
                None => Some(Sampling::with_settings(backend, dit, add).unwrap()),
            };
        }
        match &mut sampling {
            Some(s) => assert!(s.step().unwrap()),
            None if got.iter().all(Option::is_some) => break,
            None => {}
        }
        assert!(tick < 1000, "the batch never emptied");
    }
    (got.into_iter().map(Option::unwrap).collect(), compositions)
}

/// Jobs of mixed lengths, step counts, eta and CFG for `run_joining` on the
/// tiny model (`features(frames, seed)` makes a clip's features): two start
/// together, one joins at step 2, one at step 5.
#[allow(dead_code)]
pub fn mixed_joining_jobs(features: impl Fn(usize, u64) -> HostTensor) -> Vec<JoiningJob> {
    use lova_fast::sampler::{Request, RequestNoise, SamplerSettings};
    let job = |frames: usize, latent_len: usize, seed: u64, steps: usize, eta: f64| {
        let request = Request {
            features: features(frames, seed),
            latent_len,
            cfg_scale: 3.0 + seed as f32,
            noise: RequestNoise { seed, initial: None, steps: None },
        };
        (request, SamplerSettings { steps, eta, ..Default::default() })
    };
    vec![(job(5, 9, 1, 6, 1.0), 0), (job(12, 31, 2, 4, 1.0), 0), (job(3, 4, 3, 6, 0.0), 2), (job(7, 17, 4, 3, 1.0), 5)]
}
