//! `lova-fast infer`: video (or CLIP features) -> CLIP -> sampler -> VAE -> WAV,
//! optionally muxed back into the video.
//!
//! Inputs run in groups of `--batch` (1 by default), each input through three
//! stages: `prepare_input` (decode + CLIP, or read the features; its sampler
//! request), `sample_group` (one sampler run for the whole group, its requests
//! packed into one batch), `finish_clip` (VAE, WAV, mux, latents, summary).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use lova_fast::audio::{SampleFormat, samples_for_seconds, trim_and_normalise, write_wav};
use lova_fast::backend::Backend;
use lova_fast::config::LovaConfig;
use lova_fast::error::ensure_finite;
use lova_fast::models::clip::{CLIP_BATCH, ClipVision, open_clip};
use lova_fast::models::vae::{planned_arena_bytes, receptive_field};
use lova_fast::models::{Dit, VaeDecoder};
use lova_fast::sampler::{Request, RequestNoise, SamplerSettings, Sampling};
use lova_fast::tensor::HostTensor;
use lova_fast::video::{VIDEO_EXTENSIONS, VideoReader, ffmpeg, image_files, preprocess_batch};
use lova_fast::weights::{SafetensorsFile, read_single_tensor, write_tensors_atomically};

use super::{Device, VaeWindowArgs, WeightArgs, WithBackend, check_output_path, set_threads, with_device};

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
    #[arg(long, value_name = "OUT.mp4", num_args = 0..=1)]
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

fn is_video_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|v| v.eq_ignore_ascii_case(e)))
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
            let mut videos: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read folder {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_video_name(p))
                .collect();
            if videos.is_empty() {
                bail!(
                    "{}: a folder with no videos ({}) and no PNG/JPEG frames",
                    path.display(),
                    VIDEO_EXTENSIONS.join(", ")
                );
            }
            videos.sort();
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

/// An input checked and measured, ready to run: frames and length known.
struct Planned {
    input: Input,
    reader: Option<VideoReader>,
    features: Option<HostTensor>,
    frames: usize,
    seconds: f64,
    latent_len: usize,
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
    if !args.cfg.is_finite() {
        bail!("--cfg must be a finite number");
    }
    if let Some(s) = args.seconds
        && !(s.is_finite() && s > 0.0)
    {
        bail!("--seconds must be a positive number of seconds, got {s}");
    }
    args.vae_windows.validate()?;
    for (flag, value) in [("--fps", args.fps), ("--sample-fps", args.sample_fps)] {
        if let Some(f) = value
            && !(f.is_finite() && f > 0.0)
        {
            bail!("{flag} must be a positive number of frames per second, got {f}");
        }
    }
    let any_video = inputs.iter().any(|i| matches!(i, Input::Video(_)));
    if any_video || args.mux.is_some() {
        ffmpeg::check_tools()?;
    }

    let started = Instant::now();
    let config = args.weights.config()?;
    // Check every input (and every output path) before loading anything heavy.
    let mut planned = Vec::with_capacity(inputs.len());
    for input in inputs {
        planned.push(plan(&args, &config, input)?);
    }

    let device = args.device;
    with_device(device, InferJob { args, config, settings, planned, started })
}

/// Checked inputs, run on the backend `--device` picked.
struct InferJob {
    args: InferArgs,
    config: LovaConfig,
    settings: SamplerSettings,
    planned: Vec<Planned>,
    started: Instant,
}

impl WithBackend for InferJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let InferJob { args, config, settings, planned, started } = self;
        // CLIP, the DiT with the sampler, and the VAE all run on `backend`: a clip
        // goes from frames to waveform on one device.
        let model = args.weights.load(&backend, false)?;
        let vae = if args.no_audio { None } else { Some(args.weights.load_vae(&backend)?) };
        let needs_clip = planned.iter().any(|p| p.reader.is_some());
        let clip = if needs_clip { Some(load_clip(&args, &backend, &config)?) } else { None };
        let load_s = started.elapsed().as_secs_f64();

        let bars = MultiProgress::with_draw_target(if args.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let networks = Networks { backend: &backend, dit: &model.dit, vae: vae.as_ref(), clip: clip.as_ref() };
        let stages = Stages { args: &args, config: &config, nets: &networks, settings: &settings, bars: &bars };
        let (mut reports, mut groups) = (Vec::new(), Vec::new());
        let mut queue = planned.into_iter();
        while queue.len() > 0 {
            // An input that fails before sampling stops the run, as it does one
            // input at a time: the inputs before it still get their outputs.
            let (group, failure) = stages.prepare_group(queue.by_ref().take(args.batch));
            if !group.clips.is_empty() {
                let sampled = stages.sample_group(&group)?;
                if !args.quiet && group.clips.len() > 1 {
                    print_group(&sampled.report, settings.steps);
                }
                for (clip, latents) in group.clips.into_iter().zip(sampled.latents) {
                    let report = stages.finish_clip(clip, latents, &sampled.report, groups.len())?;
                    if !args.quiet {
                        print_report(&report, sampled.report.inputs.len(), &backend);
                    }
                    reports.push(report);
                }
                groups.push(sampled.report);
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        if !args.quiet {
            eprintln!("load {load_s:.2} s, total {:.2} s", started.elapsed().as_secs_f64());
        }
        if args.json {
            let summary = serde_json::json!({
                "load_s": load_s,
                "total_s": started.elapsed().as_secs_f64(),
                "batch": args.batch,
                "sampling_groups": groups,
                "inputs": reports,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(())
    }
}

/// The loaded networks and where each runs.
struct Networks<'a, B: Backend> {
    backend: &'a B,
    dit: &'a Dit<B>,
    vae: Option<&'a VaeDecoder<B>>,
    clip: Option<&'a ClipVision<B>>,
}

fn load_clip<B: Backend>(args: &InferArgs, backend: &B, config: &LovaConfig) -> Result<ClipVision<B>> {
    let clip = match (&args.clip, &args.weights.weights) {
        (Some(path), _) => {
            let file = SafetensorsFile::open(path)?;
            let (cfg, ckpt) = open_clip(&file)?;
            ClipVision::load(backend, &ckpt, "", &cfg)
                .with_context(|| format!("loading CLIP from {}", path.display()))?
        }
        (None, Some(engine)) => {
            let file = SafetensorsFile::open(engine)?;
            lova_fast::engine::load_clip(backend, &file)?.with_context(|| {
                format!(
                    "{} has no CLIP image tower, which video input needs: convert it again with \
                     `lova-fast convert --clip CLIP.safetensors`, or pass --clip",
                    engine.display()
                )
            })?
        }
        (None, None) => bail!("video input needs the CLIP image tower: pass --clip CLIP.safetensors with --checkpoint"),
    };
    if clip.config.output_dim != config.dit.cond_token_dim {
        bail!(
            "the CLIP image tower projects to {} dims, but the DiT reads {}-dim video tokens",
            clip.config.output_dim,
            config.dit.cond_token_dim
        );
    }
    Ok(clip)
}

fn plan(args: &InferArgs, config: &LovaConfig, input: Input) -> Result<Planned> {
    let path = input.path().to_path_buf();
    let sample_fps = args.sample_fps.unwrap_or(config.fps);
    let (reader, features) = match &input {
        Input::Features(p) => {
            let features = read_single_tensor(p, "features", Some(config.dit.cond_token_dim))
                .with_context(|| format!("reading video features from {}", p.display()))?;
            ensure_finite(&format!("features in {}", p.display()), &features.data)?;
            (None, Some(features))
        }
        Input::Video(p) => (Some(VideoReader::open_video(p, sample_fps)?), None),
        Input::Images(p) => {
            let Some(fps) = args.fps else {
                bail!("{} is a folder of images: give its frame rate with --fps", p.display());
            };
            (Some(VideoReader::open_images(p, fps, sample_fps)?), None)
        }
    };
    let (frames, duration) = match (&reader, &features) {
        (Some(r), _) => (r.frames(), r.duration),
        (None, Some(f)) => (f.shape[0], f.shape[0] as f64 / sample_fps),
        (None, None) => unreachable!("every input has frames or features"),
    };
    let seconds = args.seconds.unwrap_or(duration);
    let latent_len = config.latent_len_for_seconds(seconds);
    config.check_lengths(latent_len, frames).with_context(|| format!("{}", path.display()))?;
    let mux = match &args.mux {
        None => None,
        Some(_) if !matches!(input, Input::Video(_)) => {
            bail!("--mux needs a video file input, not {}", path.display())
        }
        Some(None) => Some(path.with_extension("with-audio.mp4")),
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
        if out == &path {
            bail!("the output {} would overwrite the input", out.display());
        }
    }
    Ok(Planned { input, reader, features, frames, seconds, latent_len, outputs })
}

fn bar(bars: &MultiProgress, len: usize, template: &str) -> ProgressBar {
    bars.add(ProgressBar::new(len as u64))
        .with_style(ProgressStyle::with_template(template).expect("valid progress template"))
}

/// What the stages of an input need: the options, the networks and the progress bars.
struct Stages<'a, B: Backend> {
    args: &'a InferArgs,
    config: &'a LovaConfig,
    nets: &'a Networks<'a, B>,
    settings: &'a SamplerSettings,
    bars: &'a MultiProgress,
}

/// One input between its preparation and its outputs: what its results need
/// besides the latents.
struct Clip {
    input: Input,
    outputs: Outputs,
    frames: usize,
    seconds: f64,
    latent_len: usize,
    seed: u64,
    timings: Timings,
}

/// Inputs prepared to be sampled together: `requests[i]` is `clips[i]`'s.
#[derive(Default)]
struct Group {
    requests: Vec<Request>,
    clips: Vec<Clip>,
}

/// A group's latents (one per request, in order) and its sampler run.
struct SampledGroup {
    latents: Vec<HostTensor>,
    report: GroupReport,
}

impl<B: Backend> Stages<'_, B> {
    /// Prepares `planned` in order until one fails: the group of those before it,
    /// and the error.
    fn prepare_group(&self, planned: impl Iterator<Item = Planned>) -> (Group, Option<anyhow::Error>) {
        let mut group = Group::default();
        for p in planned {
            match self.prepare_input(p) {
                Ok((request, clip)) => {
                    group.requests.push(request);
                    group.clips.push(clip);
                }
                Err(e) => return (group, Some(e)),
            }
        }
        (group, None)
    }

    /// Decodes and CLIP-encodes a video (or takes a features file's features), and
    /// makes its sampler request: the length, the CFG scale, the seed (`--seed`, the
    /// same for every input, or a random one per input) or `--init-noise`.
    fn prepare_input(&self, p: Planned) -> Result<(Request, Clip)> {
        let (args, config) = (self.args, self.config);
        let mut timings = Timings::default();
        let features = match (p.features, p.reader) {
            (Some(f), _) => f,
            (None, Some(mut reader)) => {
                let clip = self.nets.clip.expect("loaded for video input");
                let (decode, clip_time, f) = encode_video(&mut reader, clip, self.nets.backend, self.bars)?;
                timings.decode_s = decode.as_secs_f64();
                timings.clip_s = clip_time.as_secs_f64();
                f
            }
            (None, None) => unreachable!("every input has frames or features"),
        };
        if let Some(path) = &p.outputs.features {
            write_tensors_atomically(path, &[("features", &features)], None)?;
        }
        let initial = match &args.init_noise {
            Some(path) => {
                let noise = read_single_tensor(path, "noise", None)
                    .with_context(|| format!("reading initial noise from {}", path.display()))?;
                if noise.shape != [config.dit.io_channels, p.latent_len] {
                    bail!(
                        "{}: tensor `noise` has shape {:?}, expected [{}, {}] for a {:.3} s clip",
                        path.display(),
                        noise.shape,
                        config.dit.io_channels,
                        p.latent_len,
                        p.seconds
                    );
                }
                Some(noise)
            }
            None => None,
        };
        let seed = args.seed.unwrap_or_else(random_seed);
        let request = Request {
            features,
            latent_len: p.latent_len,
            cfg_scale: args.cfg,
            noise: RequestNoise { seed, initial, steps: None },
        };
        let clip = Clip {
            input: p.input,
            outputs: p.outputs,
            frames: p.frames,
            seconds: p.seconds,
            latent_len: p.latent_len,
            seed,
            timings,
        };
        Ok((request, clip))
    }

    /// Samples a group's requests together in one sampler run (one progress bar).
    fn sample_group(&self, group: &Group) -> Result<SampledGroup> {
        let requests = &group.requests;
        let steps = self.settings.steps;
        let started = Instant::now();
        let mut sampling = Sampling::new(self.nets.backend, self.nets.dit, requests, self.settings)?;
        let sampling_bar =
            bar(self.bars, steps, "sampling {bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}");
        if requests.len() > 1 {
            sampling_bar.set_message(format!("({} inputs together)", requests.len()));
        }
        while sampling.step()? {
            sampling_bar.set_position(sampling.steps_done() as u64);
        }
        sampling_bar.finish_and_clear();
        let latents = sampling.latents()?;
        let sampling_s = started.elapsed().as_secs_f64();
        let (step_flops, sampling_arena_bytes) = (sampling.step_flops(), sampling.arena_bytes());
        // Free the sampler's arena before the VAE plans its own (device memory).
        drop(sampling);
        let report = GroupReport {
            inputs: group.clips.iter().map(|c| c.input.path().display().to_string()).collect(),
            latent_frames: requests.iter().map(|r| r.latent_len).sum(),
            sampling_s,
            step_flops,
            sampling_tflops: tflops_per_s(step_flops as f64 * steps as f64, sampling_s),
            sampling_arena_bytes,
        };
        Ok(SampledGroup { latents, report })
    }

    /// Writes a clip's latents, decodes its audio with the VAE, writes the WAV
    /// (and muxes it); `group` is the sampler run that made `latents`.
    fn finish_clip(&self, clip: Clip, latents: HostTensor, group: &GroupReport, group_index: usize) -> Result<Report> {
        let (args, config, nets, settings) = (self.args, self.config, self.nets, self.settings);
        let Clip { input, outputs, frames, seconds, latent_len, seed, timings: mut t } = clip;
        t.sampling_s = group.sampling_s;
        t.step_flops = group.step_flops;
        t.sampling_tflops = group.sampling_tflops;
        let mut write = Duration::ZERO;
        if let Some(path) = &outputs.latents {
            let w = Instant::now();
            let metadata: HashMap<String, String> = [
                ("seed", seed.to_string()),
                ("steps", settings.steps.to_string()),
                ("cfg", args.cfg.to_string()),
                ("eta", settings.eta.to_string()),
                ("seconds", seconds.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            write_tensors_atomically(path, &[("latents", &latents)], Some(metadata))?;
            write += w.elapsed();
        }
        let samples = samples_for_seconds(seconds, config.sample_rate);
        if let (Some(path), Some(vae)) = (&outputs.wav, nets.vae) {
            let chunk = args.vae_windows.chunk_frames(config, latent_len)?;
            let window = chunk.map_or(latent_len, |c| c + 2 * receptive_field(&vae.config));
            t.vae_arena_bytes = planned_arena_bytes(&vae.config, &[window.min(latent_len)])?;
            let vae_started = Instant::now();
            let spinner = self.bars.add(ProgressBar::new_spinner().with_message("decoding audio with the VAE"));
            spinner.enable_steady_tick(Duration::from_millis(200));
            let audio = match chunk {
                Some(chunk) => vae.decode_chunked(nets.backend, &latents, chunk)?,
                None => vae.decode(nets.backend, std::slice::from_ref(&latents))?.remove(0),
            };
            spinner.finish_and_clear();
            t.vae_s = vae_started.elapsed().as_secs_f64();
            let w = Instant::now();
            let audio = trim_and_normalise(&audio, samples);
            let format = if args.float { SampleFormat::Float32 } else { SampleFormat::Pcm16 };
            write_wav(path, &audio, config.sample_rate, format)?;
            if let Some(mux) = &outputs.mux {
                lova_fast::video::mux::mux_audio(input.path(), path, mux)?;
            }
            write += w.elapsed();
        }
        t.write_s = write.as_secs_f64();
        Ok(Report {
            input: input.path().display().to_string(),
            outputs: outputs.all().map(|o| o.display().to_string()).collect(),
            frames,
            seconds,
            audio_samples: if outputs.wav.is_some() { samples } else { 0 },
            latent_frames: latent_len,
            seed,
            steps: settings.steps,
            sampling_group: group_index,
            timings: t,
        })
    }
}

/// Decodes, preprocesses and encodes a video's frames in batches of up to
/// `CLIP_BATCH`, with one CLIP graph planned for the whole video. Frame decoding
/// and CLIP preprocessing (resize, crop, normalise, on the CPU) run on a thread
/// one batch ahead, overlapped with the CLIP run of the previous batch on the
/// backend. Returns the decoding (+ preprocessing) time on that thread, the CLIP
/// time (waiting for a batch excluded) and the features `[N, out]`.
fn encode_video<B: Backend>(
    reader: &mut VideoReader,
    clip: &ClipVision<B>,
    backend: &B,
    bars: &MultiProgress,
) -> Result<(Duration, Duration, HostTensor)> {
    let n = reader.frames();
    let size = clip.config.image_size;
    let batch = n.clamp(1, CLIP_BATCH);
    let decode_bar = bar(bars, n, "decoding {bar:40} {pos}/{len} frames [{elapsed_precise}]");
    let clip_bar = bar(bars, n, "CLIP     {bar:40} {pos}/{len} frames [{elapsed_precise} < {eta_precise}]");
    let mut clip_time = Duration::ZERO;
    let mut features = Vec::with_capacity(n * clip.config.output_dim);
    let mut encoder = clip.encoder(backend, batch)?;
    // One batch in the channel and one being prepared: the decoder runs one batch ahead.
    let (send, receive) = std::sync::mpsc::sync_channel::<(usize, Vec<f32>)>(1);
    let decode = std::thread::scope(|scope| -> Result<Duration> {
        let producer = scope.spawn(|| -> Result<Duration> {
            let mut decode = Duration::ZERO;
            let mut chunk = Vec::with_capacity(batch);
            loop {
                let started = Instant::now();
                let frame = reader.next_frame()?;
                let done = frame.is_none();
                chunk.extend(frame);
                decode_bar.set_position(decode_bar.position() + u64::from(!done));
                let full = chunk.len() == batch || (done && !chunk.is_empty());
                let pixels = full.then(|| preprocess_batch(size, &chunk));
                decode += started.elapsed();
                if let Some(pixels) = pixels {
                    if send.send((chunk.len(), pixels)).is_err() {
                        break; // the consumer stopped on an error, which it reports
                    }
                    chunk.clear();
                }
                if done {
                    break;
                }
            }
            drop(send);
            Ok(decode)
        });
        let mut encoded = Ok(());
        for (count, pixels) in receive.iter() {
            let clip_started = Instant::now();
            match encoder.encode(&pixels) {
                Ok(f) => features.extend(f),
                Err(e) => {
                    encoded = Err(e);
                    break;
                }
            }
            clip_time += clip_started.elapsed();
            clip_bar.inc(count as u64);
        }
        // Dropping the receiver unblocks the decoder if CLIP stopped early.
        drop(receive);
        let decode = producer.join().map_err(|_| anyhow::anyhow!("the frame decoding thread panicked"))?;
        encoded?;
        decode
    })?;
    decode_bar.finish_and_clear();
    clip_bar.finish_and_clear();
    let out = clip.config.output_dim;
    Ok((decode, clip_time, HostTensor::new(vec![features.len() / out, out], features)))
}

/// A clip's summary; `group_size`: the inputs its sampler run made (their
/// shared sampling time and rate are printed once, by `print_group`, when several).
fn print_report<B: Backend>(r: &Report, group_size: usize, backend: &B) {
    let t = &r.timings;
    eprintln!(
        "{}: {} frames -> {} latent frames -> {:.2} s of audio ({} samples), seed {}, on {}",
        r.input,
        r.frames,
        r.latent_frames,
        r.seconds,
        r.audio_samples,
        r.seed,
        backend.name()
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

fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // Keep seeds short enough to retype.
    (nanos ^ (std::process::id() as u64).rotate_left(32)) % 1_000_000_000
}

/// `flop` done in `seconds`, in TFLOP/s (0 when nothing was timed).
fn tflops_per_s(flop: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { flop / seconds * 1e-12 } else { 0.0 }
}
