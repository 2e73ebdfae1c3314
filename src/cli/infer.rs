//! `lova-fast infer`: video (or CLIP features) -> CLIP -> sampler -> VAE -> WAV,
//! optionally muxed back into the video.
//!
//! This file only turns arguments into `Request`s for the library's
//! `Pipeline`, writes what comes back and prints reports. Inputs run in
//! groups of `--batch` (1 by default): one `generate_many` call per group,
//! whose requests are sampled together in one packed batch. An input that
//! fails gets its error; the others still get their outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use lova_fast::audio::SampleFormat;
use lova_fast::backend::cpu::Precision;
use lova_fast::config::check_frame_rate;
use lova_fast::output_paths::{NamedPath, check_outputs};
use lova_fast::pipeline::{
    Event, Input as Source, Output, Pipeline, PipelineOptions, Progress, Request, RequestPlan, Stage,
};
use lova_fast::sampler::SamplerSettings;
use lova_fast::sampler::check_cfg_scale;
use lova_fast::video::{VIDEO_EXTENSIONS, default_mux_path, ffmpeg, image_files, video_files};
use lova_fast::weights::{read_noise, write_tensors_atomically};

use super::{Device, VaeWindowArgs, WeightArgs, check_output_path, parse_precision, set_threads};

#[derive(Args)]
pub struct InferArgs {
    /// Inputs: video files (anything FFmpeg reads), folders of videos, folders of
    /// PNG/JPEG frames (with --fps), or CLIP features files (`.safetensors`
    /// with one tensor `features` [N, 768]). One output per input.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    #[command(flatten)]
    pub weights: WeightArgs,

    /// CLIP ViT-L/14 checkpoint (OpenAI or Hugging Face layout) for video input
    /// [default: the engine file's `clip.*` tensors].
    #[arg(long, value_name = "CLIP.safetensors")]
    pub clip: Option<PathBuf>,

    /// Output WAV file [default: INPUT with the extension .wav]. One input only.
    #[arg(short, long, value_name = "OUT.wav")]
    pub output: Option<PathBuf>,

    /// Also write the video with the generated audio (video stream copied, audio
    /// AAC) [default name: INPUT.with-audio.mp4; a name only with one input].
    #[arg(long, value_name = "OUT.mp4", num_args = 0..=1, conflicts_with = "no_audio")]
    pub mux: Option<Option<PathBuf>>,

    /// Also write the CLIP features: tensor `features` [N, 768] (f32). One input only.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_features: Option<PathBuf>,

    /// Frame rate of a folder of images (their frames are sampled at the model's fps).
    #[arg(long)]
    pub fps: Option<f64>,

    /// Sample video frames at this rate instead of the model's (8 fps in the released
    /// config, the rate the DiT was trained on; other rates change what it sees).
    /// For features files: the rate their frames were sampled at.
    #[arg(long, value_name = "FPS")]
    pub sample_fps: Option<f64>,

    /// Write 32-bit float samples instead of 16-bit PCM.
    #[arg(long)]
    pub float: bool,

    /// Also write the latents: tensor `latents` [64, T'] (f32), for `lova-fast decode`. One input only.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_latents: Option<PathBuf>,

    /// Stop after sampling: no VAE decoding, no WAV (needs --save-latents).
    #[arg(long, requires = "save_latents")]
    pub no_audio: bool,

    /// Leave out inputs whose outputs all exist already (for long runs over a
    /// folder that were interrupted): they are listed as skipped.
    #[arg(long)]
    pub skip_existing: bool,

    /// Sampler steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,

    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, default_value_t = 5.0)]
    pub cfg: f32,

    /// Seed of the noise generator [default: random, printed at the end].
    #[arg(long)]
    pub seed: Option<u64>,

    /// Stochasticity of DPM++ 3M SDE (0 = deterministic ODE sampler).
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,

    /// Scale of the noise added at each step.
    #[arg(long, default_value_t = 1.0)]
    pub s_noise: f64,

    /// Smallest noise level of the schedule.
    #[arg(long, default_value_t = 0.3)]
    pub sigma_min: f64,

    /// Largest noise level of the schedule.
    #[arg(long, default_value_t = 500.0)]
    pub sigma_max: f64,

    /// Audio length in seconds [default: the video's duration; N / fps for features].
    #[arg(long)]
    pub seconds: Option<f64>,

    /// Start from this noise instead of the seeded generator: tensor `noise` [64, T'].
    #[arg(long, value_name = "NOISE.safetensors")]
    pub init_noise: Option<PathBuf>,

    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,

    #[command(flatten)]
    pub vae_windows: VaeWindowArgs,

    /// Sample up to N inputs together, in one sampler run (one packed batch through
    /// the DiT): fuller GPU matrix products for short clips. Each input keeps its seed
    /// and gets the audio it gets alone (the same bits on the CPU; on CUDA the larger
    /// matrix products may round differently). Decoding, CLIP and the VAE still run
    /// one input at a time. The DiT's arena (device memory for its activations) grows
    /// with the batch, about as the sum of its clips' lengths.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_batch)]
    pub batch: usize,

    /// Where to run CLIP, the DiT with the sampler, and the VAE (all on one device).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,

    /// CPU arithmetic: f32 (the reference), bf16 (Linear and VAE convolution weights
    /// rounded to bf16 once at load, with no f32 copy kept (a third of the memory), f32
    /// accumulation, a polynomial exp in attention's softmax and SwiGLU: faster than
    /// f32 on CPUs with AVX-512 or AVX2, 4-5x measured on an AVX-512 one), or auto (bf16
    /// where this CPU has a fast kernel).
    /// CUDA always runs fp16 weights.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,

    /// No progress bars and no summary on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,

    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One input, resolved.
enum Input {
    Features(PathBuf),
    Video(PathBuf),
    Images(PathBuf),
}

impl Input {
    fn path(&self) -> &Path {
        match self {
            Input::Features(p) | Input::Video(p) | Input::Images(p) => p,
        }
    }
}

/// Folders become their videos (or one image sequence); files are features or videos.
fn resolve_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.is_dir() {
            if !image_files(path)?.is_empty() {
                inputs.push(Input::Images(path.clone()));
                continue;
            }
            let videos = video_files(path)?;
            if videos.is_empty() {
                bail!(
                    "{}: a folder with no videos ({}) and no PNG/JPEG frames",
                    path.display(),
                    VIDEO_EXTENSIONS.join(", ")
                );
            }
            inputs.extend(videos.into_iter().map(Input::Video));
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            inputs.push(Input::Features(path.clone()));
        } else {
            inputs.push(Input::Video(path.clone()));
        }
    }
    Ok(inputs)
}

/// Where one input's results go.
struct Outputs {
    wav: Option<PathBuf>,
    mux: Option<PathBuf>,
    features: Option<PathBuf>,
    latents: Option<PathBuf>,
}

impl Outputs {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.wav.iter().chain(&self.mux).chain(&self.features).chain(&self.latents)
    }
}

/// An input checked and measured, ready to run.
struct Planned {
    input: Input,
    request: Request,
    plan: RequestPlan,
    outputs: Outputs,
}

/// `--batch`: a whole number of inputs, at least 1.
fn parse_batch(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("the batch must hold at least 1 input".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a number of inputs: {e}")),
    }
}

/// One input's stage times. The sampling fields are those of the sampler run the
/// input was part of, shared by every input of its group (`--batch`).
#[derive(Default, serde::Serialize)]
struct Timings {
    decode_s: f64,
    clip_s: f64,
    sampling_s: f64,
    vae_s: f64,
    write_s: f64,
    /// Device memory planned for the VAE decode's activations (the arena), bytes.
    vae_arena_bytes: usize,
    /// Matrix-product FLOP of one sampler step (DiT on cond + uncond, whole group).
    step_flops: u64,
    /// Achieved rate of the sampling stage: step FLOP x steps / sampling time.
    sampling_tflops: f64,
}

#[derive(serde::Serialize)]
struct Report {
    input: String,
    outputs: Vec<String>,
    frames: usize,
    seconds: f64,
    audio_samples: usize,
    latent_frames: usize,
    seed: u64,
    steps: usize,
    /// Index of the sampler run (in the summary's `sampling_groups`) that made this clip.
    sampling_group: usize,
    #[serde(flatten)]
    timings: Timings,
}

/// One sampler run over a group of inputs (one input without `--batch`): its
/// time and rate belong to the whole group.
#[derive(serde::Serialize)]
struct GroupReport {
    inputs: Vec<String>,
    /// Latent frames sampled, all inputs together.
    latent_frames: usize,
    sampling_s: f64,
    /// Matrix-product FLOP of one sampler step over the whole group.
    step_flops: u64,
    sampling_tflops: f64,
    /// Device memory planned for the DiT's activations (the arena), bytes.
    sampling_arena_bytes: usize,
}

/// An input that failed, and why.
#[derive(serde::Serialize)]
struct Failure {
    input: String,
    error: String,
}

pub fn run(args: InferArgs) -> Result<()> {
    let inputs = resolve_inputs(&args.inputs)?;
    if inputs.len() > 1 {
        for (given, flag) in [
            (args.output.is_some(), "-o"),
            (args.save_features.is_some(), "--save-features"),
            (args.save_latents.is_some(), "--save-latents"),
            (matches!(args.mux, Some(Some(_))), "--mux NAME"),
            (args.init_noise.is_some(), "--init-noise"),
        ] {
            if given {
                bail!("{flag} names one file, but there are {} inputs: use it with one input", inputs.len());
            }
        }
    }
    set_threads(args.threads)?;
    let settings = SamplerSettings {
        steps: args.steps,
        sigma_min: args.sigma_min,
        sigma_max: args.sigma_max,
        rho: 1.0,
        eta: args.eta,
        s_noise: args.s_noise,
    };
    settings.validate()?;
    check_cfg_scale(args.cfg)?;
    args.vae_windows.validate()?;
    for (flag, value) in [("--fps", args.fps), ("--sample-fps", args.sample_fps)] {
        if let Some(f) = value {
            check_frame_rate(flag, f)?;
        }
    }
    let any_video = inputs.iter().any(|i| matches!(i, Input::Video(_)));
    if any_video || args.mux.is_some() {
        ffmpeg::check_tools()?;
    }

    let started = Instant::now();
    let config = args.weights.config()?;
    if let Some(s) = args.seconds {
        config.check_seconds("--seconds", s)?;
    }
    let initial_noise = match &args.init_noise {
        Some(path) => Some(read_noise(path, config.dit.io_channels)?),
        None => None,
    };
    // Check every input (and every output path) before loading anything heavy.
    let single = inputs.len() == 1;
    let mut failures = Vec::new();
    let mut planned = Vec::with_capacity(inputs.len());
    for input in inputs {
        let name = input.path().display().to_string();
        match plan(&args, &config, &settings, initial_noise.clone(), input) {
            Ok(p) if args.skip_existing && p.outputs.all().all(|o| o.exists()) => {
                if !args.quiet {
                    eprintln!("skipped {name}: its outputs exist (--skip-existing)");
                }
            }
            Ok(p) => planned.push(p),
            Err(e) if single => return Err(e),
            Err(e) => failures.push(report_failure(&args, name, e)),
        }
    }
    check_no_overwrite(&args, &planned)?;
    if planned.is_empty() {
        return finish_run(&args, failures, 0);
    }

    let options = PipelineOptions {
        device: args.device.into(),
        clip: planned.iter().any(|p| p.request.input.needs_clip()),
        clip_file: args.clip.clone(),
        vae: !args.no_audio,
        vae_windows: args.vae_windows.windows(),
        precision: args.precision,
    };
    let source = args.weights.source()?;
    let mut pipeline = Pipeline::open(&source, &options).map_err(|e| {
        let context = match (&e, args.device) {
            (lova_fast::Error::Cuda(_), Device::Cuda) => "--device cuda".to_string(),
            _ => format!("loading the model from {}", args.weights.describe()),
        };
        anyhow::Error::from(e).context(context)
    })?;
    if let (Some(note), false) = (pipeline.device_note(), args.quiet) {
        eprintln!("note: {note}");
    }
    let load_s = started.elapsed().as_secs_f64();

    let bars = MultiProgress::with_draw_target(if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let (mut reports, mut groups) = (Vec::new(), Vec::new());
    let mut queue = planned.into_iter();
    while queue.len() > 0 {
        let group: Vec<Planned> = queue.by_ref().take(args.batch).collect();
        let requests = group.iter().map(|p| p.request.clone()).collect();
        let mut progress = Bars::new(&bars);
        let results = pipeline.generate_many(requests, &mut progress);
        progress.clear();
        let sampled: Vec<&Output> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let group_index = groups.len();
        if let Some(first) = sampled.first() {
            let s = &first.sampling;
            let report = GroupReport {
                inputs: group
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(p, _)| p.input.path().display().to_string())
                    .collect(),
                latent_frames: s.latent_frames,
                sampling_s: s.sampling_s,
                step_flops: s.step_flops,
                sampling_tflops: s.sampling_tflops,
                sampling_arena_bytes: s.sampling_arena_bytes,
            };
            if !args.quiet && group.len() > 1 {
                print_group(&report, settings.steps);
            }
            groups.push(report);
        }
        for (p, result) in group.into_iter().zip(results) {
            let name = p.input.path().display().to_string();
            let written =
                result.map_err(anyhow::Error::from).and_then(|output| write_outputs(&args, p, output, group_index));
            match written {
                Ok(report) => {
                    if !args.quiet {
                        print_report(&report, groups.get(group_index).map_or(1, |g| g.inputs.len()), &pipeline);
                    }
                    reports.push(report);
                }
                Err(e) if single => return Err(e.context(name)),
                Err(e) => failures.push(report_failure(&args, name, e)),
            }
        }
    }
    if !args.quiet {
        eprintln!("load {load_s:.2} s, total {:.2} s", started.elapsed().as_secs_f64());
    }
    if args.json {
        let summary = serde_json::json!({
            "device": pipeline.device_name(),
            "device_note": pipeline.device_note(),
            "load_s": load_s,
            "total_s": started.elapsed().as_secs_f64(),
            "batch": args.batch,
            "sampling_groups": groups,
            "inputs": reports,
            "failed": failures,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    let done = reports.len();
    finish_run(&args, failures, done)
}

/// Prints an input's error as it happens (the run goes on with the others).
fn report_failure(args: &InferArgs, input: String, error: anyhow::Error) -> Failure {
    let error = format!("{error:#}");
    if !args.json || !args.quiet {
        eprintln!("error: {input}: {error}");
    }
    Failure { input, error }
}

/// The run's end: an error (exit 1) when any input failed.
fn finish_run(args: &InferArgs, failures: Vec<Failure>, done: usize) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    if args.json && done == 0 {
        let summary = serde_json::json!({ "inputs": [], "failed": failures });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Err(anyhow!("{} of {} inputs failed (see above); the others were written", failures.len(), failures.len() + done))
}

/// No output of the run may be an input of it (model files, init noise, the
/// inputs themselves) or another output: one would be lost, silently.
fn check_no_overwrite(args: &InferArgs, planned: &[Planned]) -> Result<()> {
    let w = &args.weights;
    let mut inputs: Vec<NamedPath> = [
        ("--weights", w.weights.as_deref()),
        ("--checkpoint", w.checkpoint.as_deref()),
        ("--config", w.config.as_deref()),
        ("--clip", args.clip.as_deref()),
        ("--init-noise", args.init_noise.as_deref()),
    ]
    .into_iter()
    .filter_map(|(role, path)| path.map(|p| NamedPath::new(role, p)))
    .collect();
    inputs.extend(planned.iter().map(|p| NamedPath::new("input", p.input.path())));
    let outputs: Vec<NamedPath> = planned
        .iter()
        .flat_map(|p| {
            let o = &p.outputs;
            let wav_role = if args.output.is_some() { "-o" } else { "the WAV" };
            [(wav_role, &o.wav), ("--mux", &o.mux), ("--save-features", &o.features), ("--save-latents", &o.latents)]
                .into_iter()
                .filter_map(|(role, path)| path.as_deref().map(|p| NamedPath::new(role, p)))
        })
        .collect();
    Ok(check_outputs(&inputs, &outputs)?)
}

/// Checks one input and its output paths, and makes its request.
fn plan(
    args: &InferArgs,
    config: &lova_fast::config::LovaConfig,
    settings: &SamplerSettings,
    initial_noise: Option<lova_fast::tensor::HostTensor>,
    input: Input,
) -> Result<Planned> {
    let path = input.path().to_path_buf();
    let source = match &input {
        Input::Features(p) => Source::FeaturesFile(p.clone()),
        Input::Video(p) => Source::Video(p.clone()),
        Input::Images(p) => {
            let Some(fps) = args.fps else {
                bail!("{} is a folder of images: give its frame rate with --fps", p.display());
            };
            Source::ImageFolder { dir: p.clone(), fps }
        }
    };
    let request = Request {
        input: source,
        seed: args.seed,
        sampler: settings.clone(),
        cfg_scale: args.cfg,
        seconds: args.seconds,
        sample_fps: args.sample_fps,
        initial_noise,
        cancel: None,
    };
    let plan = request.plan(config).with_context(|| format!("{}", path.display()))?;
    let mux = match &args.mux {
        None => None,
        Some(_) if !matches!(input, Input::Video(_)) => {
            bail!("--mux needs a video file input, not {}", path.display())
        }
        Some(None) => Some(default_mux_path(&path)),
        Some(Some(name)) => Some(name.clone()),
    };
    let outputs = Outputs {
        wav: (!args.no_audio).then(|| args.output.clone().unwrap_or_else(|| path.with_extension("wav"))),
        mux,
        features: args.save_features.clone(),
        latents: args.save_latents.clone(),
    };
    for out in outputs.all() {
        check_output_path(out)?;
    }
    Ok(Planned { input, request, plan, outputs })
}

/// Writes one input's files (features, latents, WAV, muxed video) and makes its report.
fn write_outputs(args: &InferArgs, p: Planned, output: Output, group_index: usize) -> Result<Report> {
    let started = Instant::now();
    if let Some(path) = &p.outputs.features {
        write_tensors_atomically(path, &[("features", &output.features)], None)?;
    }
    if let Some(path) = &p.outputs.latents {
        let metadata: HashMap<String, String> = [
            ("seed", output.seed.to_string()),
            ("steps", output.steps.to_string()),
            ("cfg", args.cfg.to_string()),
            ("eta", args.eta.to_string()),
            ("seconds", output.seconds.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        write_tensors_atomically(path, &[("latents", &output.latents)], Some(metadata))?;
    }
    if let Some(path) = &p.outputs.wav {
        let format = if args.float { SampleFormat::Float32 } else { SampleFormat::Pcm16 };
        output.write_wav(path, format)?;
        if let Some(mux) = &p.outputs.mux {
            lova_fast::video::mux::mux_audio(p.input.path(), path, mux)?;
        }
    }
    let t = &output.timings;
    Ok(Report {
        input: p.input.path().display().to_string(),
        outputs: p.outputs.all().map(|o| o.display().to_string()).collect(),
        frames: output.frames,
        seconds: output.seconds,
        audio_samples: output.audio.as_ref().map_or(0, |a| a.shape[1]),
        latent_frames: p.plan.latent_len,
        seed: output.seed,
        steps: output.steps,
        sampling_group: group_index,
        timings: Timings {
            decode_s: t.decode_s,
            clip_s: t.clip_s,
            sampling_s: t.sampling_s,
            vae_s: t.vae_s,
            write_s: started.elapsed().as_secs_f64(),
            vae_arena_bytes: t.vae_arena_bytes,
            step_flops: output.sampling.step_flops,
            sampling_tflops: output.sampling.sampling_tflops,
        },
    })
}

/// Progress bars on stderr, one per stage in flight (one sampling bar per batch).
struct Bars<'a> {
    bars: &'a MultiProgress,
    open: HashMap<(Option<usize>, Stage), ProgressBar>,
}

impl<'a> Bars<'a> {
    fn new(bars: &'a MultiProgress) -> Self {
        Bars { bars, open: HashMap::new() }
    }

    fn clear(&mut self) {
        for (_, bar) in self.open.drain() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bars<'_> {
    fn event(&mut self, e: &Event) {
        // The batch's requests step together: one sampling bar for all of them.
        let key = (if e.stage == Stage::Sampling { None } else { Some(e.request) }, e.stage);
        if e.done >= e.total {
            if let Some(bar) = self.open.remove(&key) {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = self.open.entry(key).or_insert_with(|| {
            let template = match e.stage {
                Stage::Decode => "decoding {bar:40} {pos}/{len} frames [{elapsed_precise}]",
                Stage::Clip => "CLIP     {bar:40} {pos}/{len} frames [{elapsed_precise} < {eta_precise}]",
                Stage::Sampling => "sampling {bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]",
                Stage::Vae => "VAE      {bar:40} {pos}/{len} windows [{elapsed_precise}]",
            };
            self.bars
                .add(ProgressBar::new(e.total as u64))
                .with_style(ProgressStyle::with_template(template).expect("valid progress template"))
        });
        bar.set_position(e.done as u64);
    }
}

/// A clip's summary; `group_size`: the inputs its sampler run made (their
/// shared sampling time and rate are printed once, by `print_group`, when several).
fn print_report(r: &Report, group_size: usize, pipeline: &Pipeline) {
    let t = &r.timings;
    eprintln!(
        "{}: {} frames -> {} latent frames -> {:.2} s of audio ({} samples), seed {}, on {}",
        r.input,
        r.frames,
        r.latent_frames,
        r.seconds,
        r.audio_samples,
        r.seed,
        pipeline.device_name()
    );
    let shared = if group_size > 1 { format!(" (shared by the batch of {group_size})") } else { String::new() };
    eprintln!(
        "  decode {:.2} s | CLIP {:.2} s | sampling {:.2} s{shared} | VAE {:.2} s ({:.0} MiB planned) | write {:.3} s",
        t.decode_s,
        t.clip_s,
        t.sampling_s,
        t.vae_s,
        t.vae_arena_bytes as f64 / (1u64 << 20) as f64,
        t.write_s
    );
    if group_size == 1 {
        print_sampling_rate(r.steps, t.step_flops, t.sampling_s, t.sampling_tflops);
    }
    for o in &r.outputs {
        eprintln!("  wrote {o}");
    }
}

/// The sampler run of several inputs, printed once before their summaries.
fn print_group(g: &GroupReport, steps: usize) {
    eprintln!(
        "batch of {} inputs ({} latent frames) sampled together in {:.2} s, {:.0} MiB DiT arena:",
        g.inputs.len(),
        g.latent_frames,
        g.sampling_s,
        g.sampling_arena_bytes as f64 / (1u64 << 20) as f64
    );
    print_sampling_rate(steps, g.step_flops, g.sampling_s, g.sampling_tflops);
}

/// The sampling stage's FLOP per step and achieved rate.
fn print_sampling_rate(steps: usize, step_flops: u64, sampling_s: f64, tflops: f64) {
    eprintln!(
        "  sampling: {steps} steps of {:.1} GFLOP, {:.1} ms/step, {tflops:.3} TFLOP/s",
        step_flops as f64 * 1e-9,
        sampling_s * 1e3 / steps.max(1) as f64,
    );
}
