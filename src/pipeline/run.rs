//! The pipeline on one backend: networks loaded, requests prepared (frames ->
//! CLIP features), sampled in packed batches, decoded by the VAE.
//!
//! A request that fails (bad input, too long, cancelled) ends with its own
//! error; the others go on. Requests with equal sampler settings are sampled
//! together in one batch (one packed graph: fuller matrix products); a
//! request cancelled mid-run leaves the batch at the next step.

use std::time::{Duration, Instant};

use super::output::{Output, SamplingReport, Timings};
use super::progress::{Event, Progress, Stage};
use super::request::{Request, RequestPlan, Source};
use super::{PipelineOptions, VaeWindows};
use crate::audio::{finish, samples_for_seconds};
use crate::backend::Backend;
use crate::config::LovaConfig;
use crate::engine::{ModelFile, load_clip_checkpoint};
use crate::error::{Error, Result};
use crate::models::clip::{CLIP_BATCH, ClipVision};
use crate::models::vae::{planned_arena_bytes, receptive_field};
use crate::models::{Dit, VaeDecoder};
use crate::sampler::{self, RequestNoise, SamplerSettings, Sampling};
use crate::tensor::HostTensor;
use crate::video::{VideoReader, preprocess_batch};

/// The networks of one model on one backend.
pub(crate) struct Loaded<B: Backend> {
    pub backend: B,
    pub config: LovaConfig,
    dit: Dit<B>,
    vae: Option<VaeDecoder<B>>,
    clip: Option<ClipVision<B>>,
    /// Why video input cannot run when `clip` is None.
    no_clip: String,
}

/// A request with its features ready, waiting to be sampled.
pub(super) struct Prepared {
    /// Its index in the `generate_many` call.
    index: usize,
    pub sampler: sampler::Request,
    pub settings: SamplerSettings,
    request: Request,
    frames: usize,
    seconds: f64,
    seed: u64,
    timings: Timings,
}

impl Prepared {
    fn new(index: usize, request: Request, plan: RequestPlan, features: HostTensor, timings: Timings) -> Prepared {
        let seed = request.seed.unwrap_or_else(random_seed);
        let sampler = sampler::Request {
            features,
            latent_len: plan.latent_len,
            cfg_scale: request.cfg_scale,
            noise: RequestNoise { seed, initial: request.initial_noise.clone(), steps: None },
        };
        Prepared {
            index,
            sampler,
            settings: request.sampler.clone(),
            frames: plan.frames,
            seconds: plan.seconds,
            seed,
            timings,
            request,
        }
    }
}

/// What decoding a request's input needs, without the device (see `decode_input`).
pub(super) struct Decoding {
    config: LovaConfig,
    clip_size: Option<usize>,
    no_clip: String,
}

/// A request's input opened and, for frames, decoded and preprocessed for CLIP.
pub(super) struct Decoded {
    plan: RequestPlan,
    input: DecodedInput,
    decode_s: f64,
}

impl Decoded {
    /// Whether CLIP is left to run (frames), or the features are ready.
    pub(super) fn needs_clip(&self) -> bool {
        matches!(self.input, DecodedInput::Pixels { .. })
    }
}

enum DecodedInput {
    Features(HostTensor),
    /// CLIP's input: `frames` images in batches of `(images, pixels)`.
    Pixels {
        frames: usize,
        batches: Vec<(usize, Vec<f32>)>,
    },
}

/// The part of preparing a request that needs no device: opening its input
/// and, for frames, decoding and preprocessing them in the batches CLIP reads
/// (a scheduler runs it on a thread of its own while the device samples).
/// Reports `Decode` progress; checks the cancel token between batches.
pub(super) fn decode_input(d: &Decoding, request: &Request, progress: &mut dyn Progress) -> Result<Decoded> {
    let started = Instant::now();
    let opened = request.open(&d.config)?;
    let input = match opened.source {
        Source::Features(f) => DecodedInput::Features(f),
        Source::Frames(mut reader) => {
            let size = d.clip_size.ok_or_else(|| Error::InvalidInput(d.no_clip.clone()))?;
            let frames = reader.frames();
            let batch = frames.clamp(1, CLIP_BATCH);
            let (mut batches, mut chunk, mut done) = (Vec::new(), Vec::with_capacity(batch), 0);
            loop {
                let frame = reader.next_frame()?;
                let finished = frame.is_none();
                chunk.extend(frame);
                if chunk.len() == batch || (finished && !chunk.is_empty()) {
                    if request.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    done += chunk.len();
                    batches.push((chunk.len(), preprocess_batch(size, &chunk)));
                    chunk.clear();
                    progress.event(&Event { request: 0, stage: Stage::Decode, done, total: frames });
                }
                if finished {
                    break;
                }
            }
            DecodedInput::Pixels { frames, batches }
        }
    };
    Ok(Decoded { plan: opened.plan, input, decode_s: started.elapsed().as_secs_f64() })
}

impl<B: Backend> Loaded<B> {
    pub fn load(backend: B, file: &ModelFile, options: &PipelineOptions) -> Result<Self> {
        let config = file.config().clone();
        let dit = file.load_dit(&backend)?;
        let vae = if options.vae { Some(file.load_vae(&backend)?) } else { None };
        let (clip, no_clip) = match (&options.clip_file, options.clip) {
            (_, false) => (None, "the pipeline was opened without CLIP (PipelineOptions::clip = false)".to_string()),
            (Some(path), true) => (Some(load_clip_checkpoint(&backend, path)?), String::new()),
            (None, true) => match file.load_clip(&backend)? {
                Some(clip) => (Some(clip), String::new()),
                None => (
                    None,
                    format!(
                        "video input needs the CLIP image tower, and {} has none: convert it with \
                         `lova-fast convert --clip CLIP.safetensors`, or give a CLIP checkpoint (--clip)",
                        file.describe()
                    ),
                ),
            },
        };
        if let Some(clip) = &clip
            && clip.config.output_dim != config.dit.cond_token_dim
        {
            return Err(Error::InvalidInput(format!(
                "the CLIP image tower projects to {} dims, but the DiT reads {}-dim video tokens",
                clip.config.output_dim, config.dit.cond_token_dim
            )));
        }
        Ok(Loaded { backend, config, dit, vae, clip, no_clip })
    }

    pub fn has_clip(&self) -> bool {
        self.clip.is_some()
    }

    pub(super) fn dit(&self) -> &Dit<B> {
        &self.dit
    }

    pub fn generate_many(
        &self,
        requests: Vec<Request>,
        windows: &VaeWindows,
        progress: &mut dyn Progress,
    ) -> Vec<Result<Output>> {
        let mut results: Vec<Option<Result<Output>>> = (0..requests.len()).map(|_| None).collect();
        // Groups of requests sampled together: equal sampler settings, first-come order.
        let mut groups: Vec<Vec<Prepared>> = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            match self.prepare(index, request, progress) {
                Ok(p) => match groups.iter_mut().find(|g| g[0].settings == p.settings) {
                    Some(group) => group.push(p),
                    None => groups.push(vec![p]),
                },
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        for group in groups {
            let (latents, report) = self.sample_group(&group, progress);
            for (p, latents) in group.into_iter().zip(latents) {
                let index = p.index;
                results[index] = Some(latents.and_then(|l| self.finish(p, l, &report, windows, progress)));
            }
        }
        results.into_iter().map(|r| r.expect("every request gets a result")).collect()
    }

    /// Decodes and CLIP-encodes a request's frames (or takes its features), and
    /// makes its sampler request.
    fn prepare(&self, index: usize, request: Request, progress: &mut dyn Progress) -> Result<Prepared> {
        let opened = request.open(&self.config)?;
        let mut timings = Timings::default();
        let features = match opened.source {
            Source::Features(f) => f,
            Source::Frames(mut reader) => {
                let clip = self.clip()?;
                let (decode, clip_time, f) = encode_video(&mut reader, clip, &self.backend, &request, index, progress)?;
                timings.decode_s = decode.as_secs_f64();
                timings.clip_s = clip_time.as_secs_f64();
                f
            }
        };
        Ok(Prepared::new(index, request, opened.plan, features, timings))
    }

    /// The CLIP image tower, or why there is none.
    fn clip(&self) -> Result<&ClipVision<B>> {
        self.clip.as_ref().ok_or_else(|| Error::InvalidInput(self.no_clip.clone()))
    }

    /// What `decode_input` needs to know of the loaded networks: the model's
    /// config and the CLIP input size (None: video inputs fail, for `why`).
    pub(super) fn decoding(&self) -> Decoding {
        Decoding {
            config: self.config.clone(),
            clip_size: self.clip.as_ref().map(|c| c.config.image_size),
            no_clip: self.no_clip.clone(),
        }
    }

    /// `prepare` for a request whose input `decode_input` already decoded:
    /// only CLIP is left, in the same batches `prepare` uses (the same features).
    pub(super) fn prepare_decoded(
        &self,
        index: usize,
        request: Request,
        decoded: Decoded,
        progress: &mut dyn Progress,
    ) -> Result<Prepared> {
        let mut timings = Timings { decode_s: decoded.decode_s, ..Default::default() };
        let features = match decoded.input {
            DecodedInput::Features(f) => f,
            DecodedInput::Pixels { frames, batches } => {
                let clip = self.clip()?;
                let started = Instant::now();
                let mut encoder = clip.encoder(&self.backend, frames.clamp(1, CLIP_BATCH))?;
                let mut features = Vec::with_capacity(frames * clip.config.output_dim);
                let mut done = 0;
                for (count, pixels) in batches {
                    if request.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    features.extend(encoder.encode(&pixels)?);
                    done += count;
                    progress.event(&Event { request: index, stage: Stage::Clip, done, total: frames });
                }
                timings.clip_s = started.elapsed().as_secs_f64();
                let out = clip.config.output_dim;
                HostTensor::new(vec![features.len() / out, out], features)
            }
        };
        Ok(Prepared::new(index, request, decoded.plan, features, timings))
    }

    /// Samples a group's requests together. Before each step, cancelled
    /// requests leave the batch (`Sampling::retain`).
    fn sample_group(
        &self,
        group: &[Prepared],
        progress: &mut dyn Progress,
    ) -> (Vec<Result<HostTensor>>, SamplingReport) {
        let started = Instant::now();
        let settings = &group[0].settings;
        let mut results: Vec<Option<Result<HostTensor>>> = (0..group.len()).map(|_| None).collect();
        let mut report = SamplingReport {
            requests: group.len(),
            latent_frames: group.iter().map(|p| p.sampler.latent_len).sum(),
            ..Default::default()
        };
        let mut run = || -> Result<()> {
            let requests: Vec<sampler::Request> = group.iter().map(|p| p.sampler.clone()).collect();
            let mut sampling = Some(Sampling::new(&self.backend, &self.dit, &requests, settings)?);
            report.step_flops = sampling.as_ref().map_or(0, Sampling::step_flops);
            report.sampling_arena_bytes = sampling.as_ref().map_or(0, Sampling::arena_bytes);
            // `alive[b]`: the group index of the batch's b-th request.
            let mut alive: Vec<usize> = (0..group.len()).collect();
            while let Some(mut s) = sampling.take() {
                let cancelled: Vec<bool> = alive.iter().map(|&g| group[g].request.is_cancelled()).collect();
                if cancelled.iter().any(|&c| c) {
                    for (&g, _) in alive.iter().zip(&cancelled).filter(|(_, c)| **c) {
                        results[g] = Some(Err(Error::Cancelled));
                    }
                    let mut b = 0;
                    alive.retain(|_| {
                        b += 1;
                        !cancelled[b - 1]
                    });
                    match s.retain(|b| !cancelled[b])? {
                        Some(kept) => s = kept,
                        None => return Ok(()),
                    }
                }
                if !s.step()? {
                    for (&g, latents) in alive.iter().zip(s.latents()?) {
                        results[g] = Some(Ok(latents));
                    }
                    return Ok(());
                }
                for &g in &alive {
                    let event = Event {
                        request: group[g].index,
                        stage: Stage::Sampling,
                        done: s.steps_done(),
                        total: settings.steps,
                    };
                    progress.event(&event);
                }
                sampling = Some(s);
            }
            Ok(())
        };
        let failure = run().err();
        report.sampling_s = started.elapsed().as_secs_f64();
        report.sampling_tflops = tflops_per_s(report.step_flops as f64 * settings.steps as f64, report.sampling_s);
        // A failed run fails every request it had not finished: with its own
        // error when it was alone, with the batch's message otherwise.
        let message = failure.as_ref().map(|e| e.to_string());
        let mut alone = if group.len() == 1 { failure } else { None };
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(alone.take().unwrap_or_else(|| {
                        Error::Batch(message.clone().unwrap_or_else(|| "the sampler stopped early".into()))
                    }))
                })
            })
            .collect();
        (results, report)
    }

    /// Decodes a request's latents with the VAE (in windows when `windows` asks
    /// for them) to audio of exactly its length.
    pub(super) fn finish(
        &self,
        p: Prepared,
        latents: HostTensor,
        sampling: &SamplingReport,
        windows: &VaeWindows,
        progress: &mut dyn Progress,
    ) -> Result<Output> {
        let mut timings = p.timings;
        timings.sampling_s = sampling.sampling_s;
        let latent_len = p.sampler.latent_len;
        let audio = match &self.vae {
            None => None,
            Some(vae) => {
                let started = Instant::now();
                let chunk = windows.chunk_frames(&self.config, latent_len)?;
                let window = chunk.map_or(latent_len, |c| c + 2 * receptive_field(&vae.config));
                timings.vae_arena_bytes = planned_arena_bytes(&vae.config, &[window.min(latent_len)])?;
                // The windows the decode reports (one when the clip fits in one).
                let mut windows_total = 1;
                let audio = {
                    let request = &p.request;
                    let mut before_window = |done: usize, total: usize| -> Result<()> {
                        if request.is_cancelled() {
                            return Err(Error::Cancelled);
                        }
                        windows_total = total;
                        progress.event(&Event { request: p.index, stage: Stage::Vae, done, total });
                        Ok(())
                    };
                    vae.decode_chunked_with(&self.backend, &latents, chunk.unwrap_or(latent_len), &mut before_window)?
                };
                let audio = finish(&audio, samples_for_seconds(p.seconds, self.config.sample_rate), "the VAE decode")?;
                progress.event(&Event {
                    request: p.index,
                    stage: Stage::Vae,
                    done: windows_total,
                    total: windows_total,
                });
                timings.vae_s = started.elapsed().as_secs_f64();
                Some(audio)
            }
        };
        Ok(Output {
            audio,
            sample_rate: self.config.sample_rate,
            seconds: p.seconds,
            frames: p.frames,
            latents,
            features: p.sampler.features,
            seed: p.seed,
            steps: p.settings.steps,
            timings,
            sampling: sampling.clone(),
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
    request: &Request,
    index: usize,
    progress: &mut dyn Progress,
) -> Result<(Duration, Duration, HostTensor)> {
    let n = reader.frames();
    let size = clip.config.image_size;
    let batch = n.clamp(1, CLIP_BATCH);
    let mut clip_time = Duration::ZERO;
    let mut features = Vec::with_capacity(n * clip.config.output_dim);
    let mut encoder = clip.encoder(backend, batch)?;
    let mut done = 0;
    // One batch in the channel and one being prepared: the decoder runs one batch ahead.
    let (send, receive) = std::sync::mpsc::sync_channel::<(usize, Vec<f32>)>(1);
    let decode = std::thread::scope(|scope| -> Result<Duration> {
        let producer = scope.spawn(|| -> Result<Duration> {
            let mut decode = Duration::ZERO;
            let mut chunk = Vec::with_capacity(batch);
            loop {
                let started = Instant::now();
                let frame = reader.next_frame()?;
                let finished = frame.is_none();
                chunk.extend(frame);
                let full = chunk.len() == batch || (finished && !chunk.is_empty());
                let pixels = full.then(|| preprocess_batch(size, &chunk));
                decode += started.elapsed();
                if let Some(pixels) = pixels {
                    if send.send((chunk.len(), pixels)).is_err() {
                        break; // the consumer stopped on an error, which it reports
                    }
                    chunk.clear();
                }
                if finished {
                    break;
                }
            }
            drop(send);
            Ok(decode)
        });
        let mut encoded = Ok(());
        for (count, pixels) in receive.iter() {
            progress.event(&Event { request: index, stage: Stage::Decode, done: done + count, total: n });
            if request.is_cancelled() {
                encoded = Err(Error::Cancelled);
                break;
            }
            let clip_started = Instant::now();
            match encoder.encode(&pixels) {
                Ok(f) => features.extend(f),
                Err(e) => {
                    encoded = Err(e);
                    break;
                }
            }
            clip_time += clip_started.elapsed();
            done += count;
            progress.event(&Event { request: index, stage: Stage::Clip, done, total: n });
        }
        // Dropping the receiver unblocks the decoder if CLIP stopped early.
        drop(receive);
        let decode = producer.join().map_err(|_| Error::InvalidInput("the frame decoding thread panicked".into()))?;
        encoded?;
        decode
    })?;
    let out = clip.config.output_dim;
    Ok((decode, clip_time, HostTensor::new(vec![features.len() / out, out], features)))
}

/// A seed for a request that gave none: from the clock and the process id.
pub fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Keep seeds short enough to retype; the counter keeps requests of one call apart.
    (nanos ^ (std::process::id() as u64).rotate_left(32)).wrapping_add(count.wrapping_mul(0x9E37_79B9)) % 1_000_000_000
}

/// `flop` done in `seconds`, in TFLOP/s (0 when nothing was timed).
pub fn tflops_per_s(flop: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { flop / seconds * 1e-12 } else { 0.0 }
}
