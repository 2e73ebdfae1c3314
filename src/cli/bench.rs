//! `lova-fast bench`: measures this machine. Runs sampler steps (DiT on cond +
//! uncond, CFG, DPM++ update) for clips of the given lengths, on the full-size
//! model with random weights (no weight file needed) or on an engine file, and
//! prints per-step latency, achieved TFLOP/s, memory and start-up time.
//! `tools/reference/bench_torch.py` runs it to compare with PyTorch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use lova_fast::backend::Backend;
use lova_fast::backend::cpu::Precision;
use lova_fast::backend::profiled::{OpTime, Profiled};
use lova_fast::config::{LovaConfig, RELEASED_CONFIG_JSON};
use lova_fast::engine::{ModelFile, WeightSource};
use lova_fast::graph::OpKind;
use lova_fast::models::ClipVisionConfig;
use lova_fast::models::Dit;
use lova_fast::models::clip::CLIP_VIT_L14;
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::weights::{RandomWeights, TensorSource};

use super::{Device, WithBackend, set_threads, with_device};

#[derive(Args)]
pub struct BenchArgs {
    /// Engine file to measure (start-up then includes reading it) [default: random weights].
    #[arg(long, value_name = "ENGINE.safetensors", conflicts_with = "config")]
    pub weights: Option<PathBuf>,

    /// LoVA-format model_config.json of the random-weight model [default: the released vl30 config].
    #[arg(long, value_name = "CONFIG.json")]
    pub config: Option<PathBuf>,

    /// Clip lengths in seconds, comma-separated (video at the model's fps, audio as long).
    #[arg(long, value_delimiter = ',', default_value = "10,30,60")]
    pub seconds: Vec<f64>,

    /// Timed sampler steps per clip length (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,

    /// Untimed steps first (kernel loading, caches, graph capture).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,

    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,

    /// Arithmetic of the CPU backend's matrix products: f32 (the reference), bf16
    /// (Linear and VAE convolution weights rounded to bf16 and packed once, as they
    /// load, with no f32 copy kept; a polynomial exp in attention's softmax and
    /// SwiGLU; all else f32), or auto
    /// (bf16 where this CPU has a SIMD kernel for it: AVX-512F or AVX2+FMA).
    /// CUDA always runs its fp16 path, so there only auto and f32 are accepted.
    #[arg(long, default_value = "auto", value_name = "f32|bf16|auto")]
    pub precision: Precision,

    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,

    /// Only measure this CPU and exit: the f32 FMA peak of each bf16 kernel's
    /// instruction set (one thread and all), and the GFLOP/s of the Linear op (f32
    /// reference and bf16) at the DiT's shapes for the --seconds lengths (rows =
    /// cond + uncond tokens).
    #[arg(long, conflicts_with_all = ["weights", "make_engine"])]
    pub peak: bool,

    /// Also time every op of the timed steps and print where a step's time goes, per
    /// op kind. Each op is then followed by a synchronize and the step is not captured
    /// as a CUDA graph, so on a GPU the profiled step is slower than the plain one.
    #[arg(long, conflicts_with_all = ["peak", "make_engine", "roofline"])]
    pub profile: bool,

    /// Only print a roofline model of the planned step for the --seconds lengths
    /// (no GPU, no weights: computed from the graph of the config): per op kind
    /// FLOP, bytes, launches and the predicted time on the CUDA backend as it runs today.
    /// (Options of a measurement, such as --device or --steps, are refused with it.)
    #[arg(long, conflicts_with_all = ["peak", "make_engine", "device", "precision", "threads", "steps", "warmup"])]
    pub roofline: bool,

    /// Peaks of --roofline: h100 (989 TFLOP/s dense fp16, 3350 GB/s), h200 (989, 4800),
    /// or TFLOPS,GBPS (dense fp16 tensor-core TFLOP/s and memory GB/s).
    /// [default: h100]
    #[arg(long, value_name = "h100|h200|TFLOPS,GBPS", requires = "roofline")]
    pub gpu: Option<String>,

    /// --roofline: the step as plain launches (LOVA_CUDA_GRAPHS=0), each paying the
    /// launch overhead, instead of one captured CUDA graph (the backend's default).
    #[arg(long, requires = "roofline")]
    pub uncaptured: bool,

    /// --roofline: cost of one launch the host issues, in microseconds [default: 3].
    #[arg(long, value_name = "US", requires = "roofline")]
    pub launch_us: Option<f64>,

    /// --roofline: model the step with the DiT's block activations in f32
    /// (the CUDA backend under LOVA_CUDA_ACTIVATIONS=f32) instead of fp16.
    #[arg(long, requires = "roofline")]
    pub f32_activations: bool,

    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Only write an engine file of random weights (DiT, VAE, and CLIP ViT-L/14, or a
    /// one-block CLIP for configs whose video tokens are not 768-d) for the config,
    /// to measure start-up from a file with `--weights`, and exit.
    #[arg(long, value_name = "ENGINE.safetensors", conflicts_with = "weights")]
    pub make_engine: Option<PathBuf>,
}

/// Where the time to the first step went.
#[derive(Debug, Default, serde::Serialize)]
struct Startup {
    /// From `main` to the end of the first (synchronised) step of the first clip.
    total_s: f64,
    /// Opening the device (CUDA: context, kernels from the cache or NVRTC, cuBLASLt).
    backend_s: f64,
    /// Reading (or, for random weights, generating) and uploading the DiT weights.
    weights_s: f64,
    /// Planning the step graph and allocating its arena (on a bf16 CPU backend,
    /// also rounding and packing the Linear weights, once).
    plan_s: f64,
    first_step_s: f64,
}

#[derive(Debug, serde::Serialize)]
struct ClipResult {
    seconds: f64,
    frames: usize,
    latent_frames: usize,
    /// Transformer tokens per sequence (T' + 1 with the prepended timestep token).
    tokens: usize,
    /// Matrix-product FLOP of one step (cond + uncond).
    step_flops: u64,
    warmup_steps: usize,
    timed_steps: usize,
    step_ms_median: f64,
    step_ms_mean: f64,
    step_ms_min: f64,
    step_ms_max: f64,
    /// step_flops / median step time.
    tflops: f64,
    arena_bytes: usize,
    weights_bytes: usize,
    /// Device memory in use after the steps (whole device, driver included; CUDA only).
    device_memory_used_bytes: Option<usize>,
    /// With `--profile`: time per op kind over the timed steps, most first.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<OpShare>>,
}

/// One op kind's part of a step (`--profile`).
#[derive(Debug, serde::Serialize)]
struct OpShare {
    op: &'static str,
    runs_per_step: f64,
    ms_per_step: f64,
    /// CPU time of the process meanwhile (all threads), where it can be read.
    cpu_ms_per_step: Option<f64>,
    /// Of the sum over op kinds (which leaves out the host's work between ops).
    share: f64,
}

/// Takes the op times gathered since the last call (`Profiled::take_profile`).
type TakeProfile<'p> = &'p dyn Fn() -> Vec<(OpKind, OpTime)>;

#[derive(Debug, serde::Serialize)]
struct BenchReport {
    device: String,
    weights: String,
    startup: Startup,
    clips: Vec<ClipResult>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    // clap skips `requires = "roofline"` when an option --roofline conflicts
    // with is given too (`--gpu h200 --device cpu`), so check it here as well.
    if !args.roofline && (args.gpu.is_some() || args.uncaptured || args.launch_us.is_some() || args.f32_activations) {
        bail!("--gpu, --uncaptured, --launch-us and --f32-activations are options of --roofline; add --roofline");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.seconds.is_empty() || args.seconds.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--seconds must be positive numbers of seconds, e.g. --seconds 10,30,60");
    }
    set_threads(args.threads)?;
    let (config, config_json) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            (LovaConfig::from_json_str(&text).with_context(|| format!("{}", path.display()))?, text)
        }
        None => (LovaConfig::released(), RELEASED_CONFIG_JSON.to_string()),
    };
    if let Some(out) = &args.make_engine {
        super::check_output_path(out)?;
        let started = Instant::now();
        // ViT-L/14 where it fits the DiT (the released config), else a one-block CLIP as the demo's.
        let clip = if config.dit.cond_token_dim == CLIP_VIT_L14.output_dim {
            CLIP_VIT_L14
        } else {
            ClipVisionConfig::tiny(config.dit.cond_token_dim)
        };
        lova_fast::engine::write_random_engine(out, &config, &config_json, &clip)?;
        eprintln!("wrote {} (random weights) in {:.1} s", out.display(), started.elapsed().as_secs_f64());
        return Ok(());
    }
    if args.peak {
        return peak(&config, &args.seconds);
    }
    // Check every length before loading anything (an engine file carries its own config).
    let config = match &args.weights {
        Some(path) => lova_fast::engine::open_engine_file(path)?.1,
        None => config,
    };
    if args.roofline {
        let name = match (&args.weights, &args.config) {
            (Some(path), _) | (None, Some(path)) => path.display().to_string(),
            (None, None) => "the released vl30 config".into(),
        };
        let settings = lova_fast::roofline::Settings {
            gpu: lova_fast::roofline::Gpu::parse(args.gpu.as_deref().unwrap_or("h100"))?,
            captured: !args.uncaptured,
            launch_overhead_us: args.launch_us.unwrap_or(lova_fast::roofline::DEFAULT_LAUNCH_OVERHEAD_US),
            f32_activations: args.f32_activations,
        };
        return super::roofline::run(&config, name, &args.seconds, settings, args.json);
    }
    for &seconds in &args.seconds {
        let (frames, latent_len) = clip_lengths(&config, seconds);
        config.check_lengths(latent_len, frames).with_context(|| format!("a {seconds} s clip"))?;
    }
    let (device, precision) = (args.device, args.precision);
    with_device(device, precision, false, BenchJob { args, config })
}

struct BenchJob {
    args: BenchArgs,
    config: LovaConfig,
}

impl WithBackend for BenchJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        if self.args.profile {
            let profiled = Profiled::new(backend);
            self.measure(&profiled, Some(&|| profiled.take_profile()))
        } else {
            self.measure(&backend, None)
        }
    }
}

impl BenchJob {
    fn measure<B: Backend>(self, backend: &B, profile: Option<TakeProfile<'_>>) -> Result<()> {
        let BenchJob { args, config } = self;
        let mut startup = Startup { backend_s: super::process_age().as_secs_f64(), ..Default::default() };
        let loaded = Instant::now();
        let (config, dit, weights) = match &args.weights {
            Some(path) => {
                let file = ModelFile::open(&WeightSource::Engine(path))
                    .with_context(|| format!("loading {}", path.display()))?;
                let dit = file.load_dit(backend).with_context(|| format!("loading {}", path.display()))?;
                (file.config().clone(), dit, path.display().to_string())
            }
            None => {
                let random = RandomWeights { seed: 1 };
                let dit = Dit::load(backend, &random, &config.dit, "")?;
                let name = args.config.as_ref().map_or("the released vl30 config".into(), |p| p.display().to_string());
                (config, dit, format!("{} of {name}", random.describe()))
            }
        };
        backend.synchronize()?;
        startup.weights_s = loaded.elapsed().as_secs_f64();

        let mut clips = Vec::new();
        for (i, &seconds) in args.seconds.iter().enumerate() {
            let result = bench_clip(backend, &config, &dit, seconds, &args, (i == 0).then_some(&mut startup), profile)?;
            clips.push(result);
        }
        // After the first step: a bf16 CPU backend packs its weights when the step graph is prepared.
        let weights_bytes: usize = dit.weights().iter().map(|w| backend.weight_bytes(w)).sum();
        clips.iter_mut().for_each(|c| c.weights_bytes = weights_bytes);
        let report = BenchReport { device: backend.name(), weights, startup, clips };
        let table = format_table(&report);
        if args.json {
            eprint!("{table}");
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{table}");
        }
        Ok(())
    }
}

fn bench_clip<B: Backend>(
    backend: &B,
    config: &LovaConfig,
    dit: &Dit<B>,
    seconds: f64,
    args: &BenchArgs,
    mut startup: Option<&mut Startup>,
    profile: Option<TakeProfile<'_>>,
) -> Result<ClipResult> {
    let (frames, latent_len) = clip_lengths(config, seconds);
    let features = RandomWeights { seed: 2 }.tensor("features", &[frames, config.dit.cond_token_dim])?;
    let requests =
        [Request { features, latent_len, cfg_scale: 5.0, noise: RequestNoise { seed: 1, initial: None, steps: None } }];
    let settings = SamplerSettings { steps: args.warmup + args.steps, ..Default::default() };

    let planned = Instant::now();
    let mut sampling = Sampling::new(backend, dit, &requests, &settings)?;
    backend.synchronize()?;
    let plan_s = planned.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..settings.steps {
        if i == args.warmup
            && let Some(take) = profile
        {
            take(); // the warm-up steps' times are not part of the profile
        }
        let started = Instant::now();
        sampling.step()?;
        backend.synchronize()?;
        let elapsed = started.elapsed().as_secs_f64();
        if i >= args.warmup {
            times.push(elapsed);
        }
        if i == 0
            && let Some(s) = startup.as_deref_mut()
        {
            s.plan_s = plan_s;
            s.first_step_s = elapsed;
            s.total_s = super::process_age().as_secs_f64();
        }
    }
    // Reading the latents checks that the random model stayed finite.
    sampling.latents().with_context(|| format!("a {seconds} s clip"))?;
    let used = backend.device_memory_used();
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let step_flops = sampling.step_flops();
    let profile = profile.map(|take| op_shares(&take(), times.len()));
    Ok(ClipResult {
        seconds,
        frames,
        latent_frames: latent_len,
        tokens: config.dit.transformer_len(latent_len),
        step_flops,
        warmup_steps: args.warmup,
        timed_steps: times.len(),
        step_ms_median: median * 1e3,
        step_ms_mean: times.iter().sum::<f64>() / times.len() as f64 * 1e3,
        step_ms_min: times[0] * 1e3,
        step_ms_max: times[times.len() - 1] * 1e3,
        tflops: step_flops as f64 / median * 1e-12,
        arena_bytes: sampling.arena_bytes(),
        weights_bytes: 0,
        device_memory_used_bytes: used,
        profile,
    })
}

/// Per-step time of each op kind over `steps` steps, most first.
fn op_shares(times: &[(OpKind, OpTime)], steps: usize) -> Vec<OpShare> {
    let total: f64 = times.iter().map(|(_, t)| t.total.as_secs_f64()).sum();
    let mut shares: Vec<OpShare> = times
        .iter()
        .map(|(kind, t)| OpShare {
            op: kind.name(),
            runs_per_step: t.runs as f64 / steps as f64,
            ms_per_step: t.total.as_secs_f64() * 1e3 / steps as f64,
            cpu_ms_per_step: t.cpu.map(|c| c.as_secs_f64() * 1e3 / steps as f64),
            share: if total > 0.0 { t.total.as_secs_f64() / total } else { 0.0 },
        })
        .collect();
    shares.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
    shares
}

/// `--peak`: the CPU's FMA ceiling and the Linear op's rate at the DiT's shapes.
fn peak(config: &LovaConfig, seconds: &[f64]) -> Result<()> {
    use lova_fast::backend::cpu::{Isa, peak};
    let threads = rayon::current_num_threads();
    let show = |r: peak::Rate| match r.gflops_per_cpu_second {
        Some(c) => format!("{:7.1} ({c:6.1} per busy core)", r.gflops),
        None => format!("{:7.1}", r.gflops),
    };
    println!(
        "CPU microbenchmarks, GFLOP/s ({threads} threads; per busy core = per second of CPU time this \
         process got, which on a shared machine is more telling than the wall clock)"
    );
    for isa in Isa::available() {
        let one = peak::fma_peak(isa, 1, 1.0);
        let all = peak::fma_peak(isa, threads, 1.0);
        println!("  f32 FMA peak {:>9}: 1 thread {}, {threads} threads {}", isa.name(), show(one), show(all));
    }
    let d = &config.dit;
    let (h, ff) = (d.embed_dim, d.ff_inner());
    let shapes = [("qkv", h, 3 * h), ("attention out", h, h), ("ff up + gate", h, 2 * ff), ("ff down", ff, h)];
    let best = Isa::detect();
    println!("Linear op at the DiT's shapes, {threads} threads: f32 reference | bf16 {} kernel", best.name());
    for &s in seconds {
        let m = 2 * config.dit.transformer_len(config.latent_len_for_seconds(s));
        for (name, k, n) in shapes {
            let f32_rate = peak::linear_rate(None, m, k, n, 1.0);
            let bf16_rate = peak::linear_rate(Some(best), m, k, n, 1.0);
            println!("  {s:>5} s  m {m:>5} k {k:>5} n {n:>6} {name:>14}: {} | {}", show(f32_rate), show(bf16_rate));
        }
    }
    Ok(())
}

/// Video frames at the model's fps (N = ceil(D * fps), as for a video) and latent frames T'.
fn clip_lengths(config: &LovaConfig, seconds: f64) -> (usize, usize) {
    ((seconds * config.fps).ceil() as usize, config.latent_len_for_seconds(seconds))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn format_table(r: &BenchReport) -> String {
    let s = &r.startup;
    let mut out = format!(
        "lova-fast bench on {}\nweights: {}\nstart-up: {:.2} s from process start to the end of the first step \
         (device {:.2} s, weights {:.2} s, plan {:.3} s, first step {:.3} s)\n",
        r.device, r.weights, s.total_s, s.backend_s, s.weights_s, s.plan_s, s.first_step_s
    );
    out += "sampler step = DiT on cond + uncond (batch of 2), CFG, DPM++ 3M SDE update; median of the timed steps\n";
    out += &format!(
        "{:>8} {:>7} {:>7} {:>7} {:>11} {:>10} {:>9} {:>9} {:>9} {:>10} {:>12}\n",
        "seconds",
        "frames",
        "latent",
        "tokens",
        "GFLOP/step",
        "median ms",
        "min ms",
        "max ms",
        "TFLOP/s",
        "arena MiB",
        "device MiB"
    );
    for c in &r.clips {
        let used = c.device_memory_used_bytes.map_or("-".to_string(), |b| format!("{:.0}", mib(b)));
        out += &format!(
            "{:>8} {:>7} {:>7} {:>7} {:>11.1} {:>10.2} {:>9.2} {:>9.2} {:>9.3} {:>10.1} {:>12}\n",
            c.seconds,
            c.frames,
            c.latent_frames,
            c.tokens,
            c.step_flops as f64 * 1e-9,
            c.step_ms_median,
            c.step_ms_min,
            c.step_ms_max,
            c.tflops,
            mib(c.arena_bytes),
            used
        );
    }
    if let Some(c) = r.clips.first() {
        out += &format!(
            "weights on the device: {:.0} MiB; memory of a clip = weights + arena{}\n",
            mib(c.weights_bytes),
            if c.device_memory_used_bytes.is_some() {
                "; device MiB = whole device in use after the steps (cuMemGetInfo: context, GEMM scratch, other processes)"
            } else {
                ""
            }
        );
    }
    for c in r.clips.iter().filter(|c| c.profile.is_some()) {
        out += &format!(
            "where a {} s step's time goes, op by op with a synchronize after each (per step: wall ms, \
             and CPU ms of all threads, which on a shared machine leaves out waiting for a core):\n",
            c.seconds
        );
        for p in c.profile.iter().flatten() {
            let cpu = p.cpu_ms_per_step.map_or("-".into(), |ms| format!("{ms:.2}"));
            out += &format!(
                "  {:>20} {:>6.1} runs {:>10.2} ms {:>10} CPU ms {:>6.1} %\n",
                p.op,
                p.runs_per_step,
                p.ms_per_step,
                cpu,
                100.0 * p.share
            );
        }
    }
    out
}
