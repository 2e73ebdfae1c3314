//! How a sampling session executes: per-request constants computed once give
//! the same steps as the DiT computed afresh every step; the step loop makes
//! no device allocation; on a GPU, the step captured as a CUDA graph and
//! replayed gives the same latents as plain launches.

mod common;

use common::{cuda_or_skip, fixture, rel_l2};
use lova_fast::backend::{Backend, CpuBackend, CudaBackend};
use lova_fast::config::LovaConfig;
use lova_fast::models::Dit;
use lova_fast::models::dit::DIT_PREFIX;
use lova_fast::sampler::dpmpp::Dpmpp3mSde;
use lova_fast::sampler::schedule::VScalings;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::SafetensorsFile;

fn load_model<B: Backend>(backend: &B, dir: &str) -> Dit<B> {
    let config = LovaConfig::from_file(&fixture(&format!("{dir}/model_config.json"))).unwrap();
    let ckpt = SafetensorsFile::open(&fixture(&format!("{dir}/checkpoint.safetensors"))).unwrap();
    Dit::load(backend, &ckpt, &config.dit, DIT_PREFIX).unwrap()
}

/// Deterministic values in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Two requests of different lengths and CFG scales for `dit`.
fn requests<B: Backend>(dit: &Dit<B>) -> Vec<Request> {
    let cd = dit.config.cond_token_dim;
    [(7, 9, 5.0, 1), (3, 4, 2.5, 2)]
        .into_iter()
        .map(|(frames, latent_len, cfg_scale, seed)| Request {
            features: HostTensor::new(vec![frames, cd], pseudo_random(frames * cd, seed)),
            latent_len,
            cfg_scale,
            noise: RequestNoise { seed, initial: None, steps: None },
        })
        .collect()
}

fn settings(steps: usize, eta: f64) -> SamplerSettings {
    SamplerSettings { steps, sigma_min: 0.3, sigma_max: 500.0, rho: 1.0, eta, s_noise: 1.0 }
}

/// The sampler written out on the host around `Dit::forward`, which builds and
/// runs the whole DiT (timestep MLP, video-token MLP, cross-attention K/V) for
/// every call: what `Sampling` computed before it precomputed request constants.
fn sample_afresh_each_step(dit: &Dit<CpuBackend>, request: &Request, settings: &SamplerSettings) -> Vec<f32> {
    assert_eq!(settings.eta, 0.0, "no noise after the initial one");
    let (io, len) = (dit.config.io_channels, request.latent_len);
    let sigmas = settings.sigmas();
    let mut x = vec![0.0f32; io * len];
    lova_fast::sampler::rng::fill_normal(request.noise.seed, 0, &mut x);
    x.iter_mut().for_each(|v| *v = (*v as f64 * sigmas[0]) as f32);
    let (mut d1, mut d2) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    let zeros = HostTensor::zeros(request.features.shape.clone());
    let mut history = Dpmpp3mSde::new();
    for i in 0..settings.steps {
        let s = VScalings::at(sigmas[i]);
        let k = history.step(sigmas[i], sigmas[i + 1], settings.eta, settings.s_noise);
        let x_in = HostTensor::new(vec![io, len], x.iter().map(|v| v * s.c_in as f32).collect());
        let v = dit
            .forward(
                &CpuBackend,
                &[(x_in.clone(), s.t as f32, request.features.clone()), (x_in, s.t as f32, zeros.clone())],
            )
            .unwrap();
        let (cfg, c_out, c_skip) = (request.cfg_scale, s.c_out as f32, s.c_skip as f32);
        let (a, b, c, d) = (k.x as f32, k.denoised as f32, k.d1 as f32, k.d2 as f32);
        for e in 0..x.len() {
            let (vc, vu) = (v[0].data[e], v[1].data[e]);
            let den = (vu + (vc - vu) * cfg) * c_out + x[e] * c_skip;
            let mut acc = a * x[e] + b * den;
            if c != 0.0 {
                acc += c * d1[e];
            }
            if d != 0.0 {
                acc += d * d2[e];
            }
            x[e] = acc;
            d2[e] = d1[e];
            d1[e] = den;
        }
    }
    x
}

#[test]
fn request_constants_computed_once_equal_the_dit_computed_every_step() {
    // 4 steps reach the 3rd-order update (both history terms) and 4 rows of the
    // timestep tables; the adaLN model also reads its modulation tables by step.
    for dir in ["tiny", "adaln"] {
        let dit = load_model(&CpuBackend, dir);
        let settings = settings(4, 0.0);
        let requests = requests(&dit);
        let got = lova_fast::sampler::sample(&CpuBackend, &dit, &requests, &settings, &mut |_, _| {}).unwrap();
        for (r, request) in requests.iter().enumerate() {
            let want = sample_afresh_each_step(&dit, request, &settings);
            let err = rel_l2(&got[r].data, &want);
            println!("{dir} request {r}: constants once vs afresh rel L2 {err:.2e}");
            // Same f32 ops in the same order, except the GEMMs over a different
            // number of rows (the timestep MLP over the schedule): rounding only.
            assert!(err <= 1e-5, "{dir} request {r}: {err:e}");
        }
    }
}

/// Device allocations made while `Sampling` runs all its steps (and while it is made).
fn allocations_in_step_loop<B: Backend>(backend: &B, dit: &Dit<B>, requests: &[Request]) -> (u64, u64) {
    let settings = settings(6, 1.0);
    let before_new = backend.device_allocations();
    let mut sampling = Sampling::new(backend, dit, requests, &settings).unwrap();
    let before_loop = backend.device_allocations();
    while sampling.step().unwrap() {}
    let after_loop = backend.device_allocations();
    sampling.latents().unwrap();
    (before_loop - before_new, after_loop - before_loop)
}

#[test]
fn the_step_loop_allocates_nothing_on_the_cpu() {
    let dit = load_model(&CpuBackend, "tiny");
    let (setup, in_loop) = allocations_in_step_loop(&CpuBackend, &dit, &requests(&dit));
    println!("cpu: {setup} allocation(s) making the session, {in_loop} in the step loop");
    // The counter sees the arena made by `Sampling::new`, so it would see one made per step.
    assert!(setup >= 1, "the allocation counter saw no arena");
    assert_eq!(in_loop, 0, "device allocations inside the step loop");
}

#[test]
fn the_step_loop_allocates_nothing_on_cuda() {
    let Some(cuda) = cuda_or_skip("the_step_loop_allocates_nothing_on_cuda") else { return };
    let dit = load_model(&cuda, "tiny");
    for capture in [true, false] {
        cuda.set_graph_capture(capture);
        let (setup, in_loop) = allocations_in_step_loop(&cuda, &dit, &requests(&dit));
        println!("cuda (graph capture {capture}): {setup} allocation(s) making the session, {in_loop} in the loop");
        // Arena + fp16 scratch + tables at least.
        assert!(setup >= 2, "the allocation counter saw too little");
        assert_eq!(in_loop, 0, "device allocations inside the step loop (capture {capture})");
    }
}

/// 8 steps: with capture on, step 0 is the plain warm-up, step 1 is captured
/// (and launched), steps 2..7 are replays.
fn sample_cuda(cuda: &CudaBackend, dit: &Dit<CudaBackend>, requests: &[Request], capture: bool) -> Vec<HostTensor> {
    cuda.set_graph_capture(capture);
    let settings = settings(8, 1.0);
    lova_fast::sampler::sample(cuda, dit, requests, &settings, &mut |_, _| {}).unwrap()
}

#[test]
fn a_captured_step_gives_the_latents_of_plain_launches() {
    let Some(cuda) = cuda_or_skip("a_captured_step_gives_the_latents_of_plain_launches") else { return };
    for dir in ["tiny", "adaln"] {
        let dit = load_model(&cuda, dir);
        let requests = requests(&dit);
        let graphs_before = cuda.captured_graphs();
        let captured = sample_cuda(&cuda, &dit, &requests, true);
        // The captured run must really have captured (a capture that fails
        // falls back to plain launches and would compare equal below).
        assert_eq!(cuda.capture_failure(), None, "{dir}: the step capture failed");
        assert!(cuda.captured_graphs() > graphs_before, "{dir}: no CUDA graph was captured");
        let graphs_captured = cuda.captured_graphs();
        let plain = sample_cuda(&cuda, &dit, &requests, false);
        assert_eq!(cuda.captured_graphs(), graphs_captured, "{dir}: capture off, yet a graph was captured");
        // Same kernels, same GEMM plans, same order: bit for bit. A second plain
        // run tells a capture bug from a backend that is not deterministic.
        if captured != plain {
            let again = sample_cuda(&cuda, &dit, &requests, false);
            let errs: Vec<f64> = captured.iter().zip(&plain).map(|(c, p)| rel_l2(&c.data, &p.data)).collect();
            assert_eq!(plain, again, "{dir}: two plain runs differ: the CUDA backend is not deterministic");
            panic!("{dir}: captured and plain steps differ (rel L2 per request {errs:?})");
        }
        // And both are the sampler, not garbage: close to the CPU reference.
        let cpu = lova_fast::sampler::sample(
            &CpuBackend,
            &load_model(&CpuBackend, dir),
            &requests,
            &settings(8, 1.0),
            &mut |_, _| {},
        )
        .unwrap();
        for (r, (g, c)) in captured.iter().zip(&cpu).enumerate() {
            let err = rel_l2(&g.data, &c.data);
            println!("{dir} request {r}: CUDA (captured) vs CPU rel L2 {err:.2e}");
            // fp16 GEMM operands over 8 steps: 2e-2, the bound tests/cuda_infer.rs argues
            // for the 8-step tiny sampler run (per-call v error <= 1e-2, scaled by |c_out| <= 1).
            assert!(err <= 2e-2, "{dir} request {r}: {err:e}");
        }
    }
}
