//! A long-running loop that generates jobs as they arrive: the engine behind
//! `lova-fast serve`. Jobs come through a channel; each reports its progress
//! and its result through its own callback.
//!
//! `SchedulerOptions::continuous` chooses how jobs are sampled: one at a time,
//! or in one running batch that jobs join and leave between sampler steps
//! (step-level continuous batching).
//!
//! One thread does everything, in a loop; each turn:
//! 1. takes the jobs that arrived, and ends the cancelled ones that wait;
//! 2. changes the batch's composition when it must: finished and cancelled
//!    jobs leave, prepared jobs join while their latent rows fit the budget
//!    (first come, first served: a job that does not fit holds the ones
//!    behind it, so a long clip cannot starve). A change re-plans the step
//!    graph for the new composition (`Sampling::recompose`: one planning and
//!    one run of the request constants, about the cost of one step; on CUDA
//!    the step graph is captured again on its next step);
//! 3. runs one sampler step of the batch;
//! 4. runs CLIP for one job whose frames are decoded, and the VAE for one
//!    sampled job (whole, or in the windows of the pipeline's VAE budget).
//!    Both run between two steps, one job each, so a turn is at most one step
//!    plus one job's CLIP plus one job's VAE: the batch stalls for that long,
//!    never for the whole queue.
//!
//! Inputs are opened, decoded and preprocessed for CLIP on a thread of its
//! own (FFmpeg and the resize need no device), up to `DECODED_AHEAD` videos
//! ahead, while the batch samples; features inputs are ready as soon as that
//! thread has read and checked them, and all join at the next step.
//!
//! Every request keeps its own step, schedule, DPM++ history and noise stream
//! (see `sampler::Sampling`), so its audio is the one `generate` gives for the
//! same request, whatever else was in the batch and whenever it joined: the
//! same bytes on the CPU.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use super::run::{Decoded, Loaded, Prepared, decode_input};
use super::{Event, Output, Request, SamplingReport, Stage, VaeWindows};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::sampler::Sampling;
use crate::tensor::HostTensor;

/// One job for the scheduler: a request and where its news goes.
pub struct Job {
    /// What to generate. Its cancel token (if any) is checked between CLIP
    /// batches, sampler steps and VAE windows.
    pub request: Request,
    /// Receives the job's events, on the scheduler's thread; must return quickly.
    pub events: Box<dyn FnMut(JobEvent) + Send>,
}

/// What happens to a job, in this order: `Started`, `Progress`..., `Finished`.
/// Every job received gets exactly one `Finished`, also when it fails early;
/// a job cancelled before the scheduler began on it gets only `Finished`.
#[derive(Debug)]
// `Finished` is sent once per job: boxing the output would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum JobEvent {
    /// The scheduler began working on the job (opening and decoding its input).
    Started,
    /// A stage advanced (`Event::request` is always 0).
    Progress(Event),
    /// The job's result: its output, or why it failed (`Error::Cancelled` when cancelled).
    Finished(Result<Output>),
}

/// One sampler step of the running batch, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Requests in the batch during the step.
    pub requests: usize,
    /// Latent rows in the batch (the sum of their latent lengths, cond only).
    pub rows: usize,
    /// Wall time of the step.
    pub seconds: f64,
    /// Bytes of the batch's arena (activations and sampler state).
    pub arena_bytes: usize,
    /// Bytes in use on the whole device after the step (None on the CPU).
    pub device_memory_used: Option<usize>,
}

/// Receives the stats of every step (metrics).
pub type StepObserver = Box<dyn FnMut(&StepStats) + Send>;

/// How the scheduler batches.
pub struct SchedulerOptions {
    /// Sample jobs together in one running batch that they join and leave
    /// between steps; false: one job at a time, start to end.
    pub continuous: bool,
    /// Most latent rows (sum of the clips' latent lengths) in the running
    /// batch; a job waits while it would not fit. A job longer than this on
    /// its own still runs, alone. None: derived from the device's memory.
    pub max_batch_rows: Option<usize>,
    /// Called after every sampler step of the running batch.
    pub on_step: Option<StepObserver>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { continuous: true, max_batch_rows: None, on_step: None }
    }
}

/// The memory the running batch may plan, as a share of what is free when the scheduler starts.
const MEMORY_SHARE: f64 = 0.5;

/// Videos decoded (or being decoded) ahead of CLIP: bounds the memory their
/// preprocessed frames take (a 139 s clip's are about 0.7 GB).
const DECODED_AHEAD: usize = 2;

/// A job the scheduler has taken, with its input prepared once it is.
struct Taken {
    job: Job,
    prepared: Option<Prepared>,
    /// When it joined the batch.
    joined: Option<Instant>,
}

impl Taken {
    fn new(job: Job) -> Taken {
        Taken { job, prepared: None, joined: None }
    }

    fn cancelled(&self) -> bool {
        self.job.request.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    fn event(&mut self, event: JobEvent) {
        (self.job.events)(event);
    }

    fn finish(mut self, result: Result<Output>) {
        (self.job.events)(JobEvent::Finished(result));
    }

    /// Latent rows the job adds to the batch.
    fn latent_len(&self) -> usize {
        self.prepared.as_ref().map_or(0, |p| p.sampler.latent_len)
    }
}

/// What the decoding thread sends back, tagged with the job's number.
enum Decoder {
    Progress(u64, Event),
    Done(u64, Result<Decoded>),
}

/// The scheduler's state on one backend (see the module doc).
struct Scheduler<'a, B: Backend> {
    loaded: &'a Loaded<B>,
    options: SchedulerOptions,
    windows: VaeWindows,
    /// Half the device memory free at the start.
    memory_budget: Option<usize>,
    /// Bytes per latent row of the batch, measured on the last plan (the arena grows about linearly).
    bytes_per_row: Option<f64>,
    /// Taken, not sent to the decoding thread yet.
    waiting: VecDeque<Taken>,
    /// With the decoding thread, by number.
    at_decoder: Vec<(u64, Taken)>,
    next_number: u64,
    /// Decoded, waiting for CLIP.
    decoded: VecDeque<(Taken, Decoded)>,
    /// Prepared, waiting to join the batch.
    ready: VecDeque<Taken>,
    /// The batch's jobs, in its order.
    in_batch: Vec<Taken>,
    batch: Option<Sampling<'a, B>>,
    /// Sampled, waiting for the VAE.
    sampled: VecDeque<(Taken, Result<HostTensor>)>,
}

/// The scheduler's loop on one backend (see the module doc). Input decoding
/// runs on a thread of its own; everything that uses the device runs here.
pub(super) fn run<B: Backend>(
    loaded: &Loaded<B>,
    jobs: Receiver<Job>,
    options: SchedulerOptions,
    windows: &VaeWindows,
) {
    let decoding = loaded.decoding();
    let (to_decoder, decoder_in) = mpsc::channel::<(u64, Request)>();
    let (decoder_out, from_decoder) = mpsc::channel::<Decoder>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for (number, request) in decoder_in.iter() {
                let out = decoder_out.clone();
                let mut progress = |e: &Event| {
                    let _ = out.send(Decoder::Progress(number, *e));
                };
                let decoded = decode_input(&decoding, &request, &mut progress);
                if decoder_out.send(Decoder::Done(number, decoded)).is_err() {
                    break;
                }
            }
        });
        let mut scheduler = Scheduler {
            loaded,
            memory_budget: loaded.backend.device_memory_free().map(|free| (free as f64 * MEMORY_SHARE) as usize),
            options,
            windows: *windows,
            bytes_per_row: None,
            waiting: VecDeque::new(),
            at_decoder: Vec::new(),
            next_number: 0,
            decoded: VecDeque::new(),
            ready: VecDeque::new(),
            in_batch: Vec::new(),
            batch: None,
            sampled: VecDeque::new(),
        };
        scheduler.run(&jobs, &to_decoder, &from_decoder);
        // Dropping the sender ends the decoding thread; the scope joins it.
        drop(to_decoder);
    });
}

impl<'a, B: Backend> Scheduler<'a, B> {
    fn run(&mut self, jobs: &Receiver<Job>, to_decoder: &Sender<(u64, Request)>, from_decoder: &Receiver<Decoder>) {
        let mut open = true;
        loop {
            // 1. New jobs and decoded inputs; wait when there is nothing to compute.
            let computing =
                self.batch.is_some() || !self.decoded.is_empty() || !self.ready.is_empty() || !self.sampled.is_empty();
            if !computing && self.waiting.is_empty() && self.at_decoder.is_empty() {
                if !open {
                    return;
                }
                match jobs.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => self.take(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(job) => self.take(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.send_to_decoder(to_decoder);
            let wait = if computing { Duration::ZERO } else { Duration::from_millis(20) };
            self.receive_decoded(from_decoder, wait);
            self.end_cancelled_waiting();

            // 2. The batch's composition; 3. one step.
            self.recompose();
            self.step();

            // 4. CLIP for one decoded job, the VAE for one sampled job.
            self.encode_one();
            self.finish_one();
        }
    }

    fn take(&mut self, job: Job) {
        self.waiting.push_back(Taken::new(job));
    }

    /// Hands waiting jobs to the decoding thread, in order: every features
    /// input (small), and frame inputs while fewer than `DECODED_AHEAD` of them
    /// are decoded or being decoded ahead of CLIP (their pixels are large).
    fn send_to_decoder(&mut self, to_decoder: &Sender<(u64, Request)>) {
        let mut frames_ahead =
            self.decoded.len() + self.at_decoder.iter().filter(|(_, t)| t.job.request.input.needs_clip()).count();
        let mut kept = VecDeque::new();
        while let Some(mut t) = self.waiting.pop_front() {
            let frames = t.job.request.input.needs_clip();
            if frames && frames_ahead >= DECODED_AHEAD {
                kept.push_back(t);
                continue;
            }
            frames_ahead += usize::from(frames);
            t.event(JobEvent::Started);
            let number = self.next_number;
            self.next_number += 1;
            if to_decoder.send((number, t.job.request.clone())).is_err() {
                t.finish(Err(Error::InvalidInput("the input decoding thread stopped".into())));
                continue;
            }
            self.at_decoder.push((number, t));
        }
        self.waiting = kept;
    }

    /// Takes what the decoding thread sent (waiting up to `wait` for the
    /// first message): progress goes to its job; a decoded features input is
    /// ready to join at once (it needs no device), a decoded video waits for CLIP.
    fn receive_decoded(&mut self, from_decoder: &Receiver<Decoder>, wait: Duration) {
        let mut next = from_decoder.recv_timeout(wait).ok();
        while let Some(message) = next {
            match message {
                Decoder::Progress(number, e) => {
                    if let Some((_, t)) = self.at_decoder.iter_mut().find(|(n, _)| *n == number) {
                        t.event(JobEvent::Progress(e));
                    }
                }
                Decoder::Done(number, result) => {
                    if let Some(i) = self.at_decoder.iter().position(|(n, _)| *n == number) {
                        let (_, t) = self.at_decoder.remove(i);
                        match result {
                            Ok(d) if d.needs_clip() => self.decoded.push_back((t, d)),
                            Ok(d) => self.prepare(t, d),
                            Err(e) => t.finish(Err(e)),
                        }
                    }
                }
            }
            next = from_decoder.try_recv().ok();
        }
    }

    fn end_cancelled_waiting(&mut self) {
        let cancelled = |q: &mut VecDeque<Taken>| -> Vec<Taken> {
            let (gone, kept): (VecDeque<Taken>, VecDeque<Taken>) = q.drain(..).partition(Taken::cancelled);
            *q = kept;
            gone.into()
        };
        let mut gone = cancelled(&mut self.waiting);
        gone.extend(cancelled(&mut self.ready));
        let (gone_decoded, kept): (VecDeque<_>, VecDeque<_>) =
            self.decoded.drain(..).partition(|(t, _): &(Taken, Decoded)| t.cancelled());
        self.decoded = kept;
        gone.extend(gone_decoded.into_iter().map(|(t, _)| t));
        gone.into_iter().for_each(|t| t.finish(Err(Error::Cancelled)));
    }

    /// The most latent rows the batch may hold: the option, and what the memory budget allows.
    fn row_limit(&self) -> usize {
        let by_memory = match (self.memory_budget, self.bytes_per_row) {
            (Some(budget), Some(per_row)) if per_row > 0.0 => (budget as f64 / per_row) as usize,
            _ => usize::MAX,
        };
        self.options.max_batch_rows.unwrap_or(usize::MAX).min(by_memory)
    }

    /// Finished and cancelled jobs leave the batch, prepared jobs join it while
    /// they fit (in order), and the batch is re-planned when that changed it.
    fn recompose(&mut self) {
        let leaving: Vec<bool> = match &self.batch {
            Some(s) => (0..s.len()).map(|b| s.is_finished(b) || self.in_batch[b].cancelled()).collect(),
            None => Vec::new(),
        };
        let staying = self.in_batch.iter().zip(&leaving).filter(|(_, l)| !**l);
        let (mut members, mut rows) = staying.fold((0, 0), |(n, r), (t, _)| (n + 1, r + t.latent_len()));
        let limit = self.row_limit();
        let mut joining = Vec::new();
        while let Some(next) = self.ready.front() {
            // A job alone always runs, however long; one-at-a-time mode adds no second.
            let fits = members == 0 || (self.options.continuous && rows + next.latent_len() <= limit);
            if !fits {
                break;
            }
            rows += next.latent_len();
            members += 1;
            joining.push(self.ready.pop_front().expect("a front"));
        }
        if !leaving.contains(&true) && joining.is_empty() {
            return;
        }
        // Finished jobs go to the VAE with their latents; cancelled ones end here.
        let mut kept = Vec::new();
        for (b, t) in std::mem::take(&mut self.in_batch).into_iter().enumerate() {
            if !leaving[b] {
                kept.push(t);
            } else if t.cancelled() {
                t.finish(Err(Error::Cancelled));
            } else {
                let latents = self.batch.as_ref().expect("a batch").latents_of(b);
                self.sampled.push_back((t, latents));
            }
        }
        let add: Vec<_> = joining
            .iter()
            .map(|t| {
                let p = t.prepared.as_ref().expect("ready jobs are prepared");
                (p.sampler.clone(), p.settings.clone())
            })
            .collect();
        let now = Instant::now();
        kept.extend(joining.into_iter().map(|t| Taken { joined: Some(now), ..t }));
        let planned = match self.batch.take() {
            Some(s) => s.recompose(|b| !leaving[b], add),
            None if add.is_empty() => Ok(None),
            None => Sampling::with_settings(&self.loaded.backend, self.loaded.dit(), add).map(Some),
        };
        match planned {
            Ok(s) => {
                if let Some(s) = &s {
                    self.bytes_per_row = Some(s.arena_bytes() as f64 / s.rows().max(1) as f64);
                }
                self.batch = s;
                self.in_batch = kept;
            }
            Err(e) => fail_all(kept, e),
        }
    }

    fn step(&mut self) {
        let Some(s) = &mut self.batch else { return };
        let started = Instant::now();
        match s.step() {
            Ok(_) => {
                let stats = StepStats {
                    requests: s.len(),
                    rows: s.rows(),
                    seconds: started.elapsed().as_secs_f64(),
                    arena_bytes: s.arena_bytes(),
                    device_memory_used: self.loaded.backend.device_memory_used(),
                };
                if let Some(on_step) = &mut self.options.on_step {
                    on_step(&stats);
                }
                for (b, t) in self.in_batch.iter_mut().enumerate() {
                    let (done, total) = s.progress_of(b);
                    t.event(JobEvent::Progress(Event { request: 0, stage: Stage::Sampling, done, total }));
                }
            }
            Err(e) => {
                self.batch = None;
                fail_all(std::mem::take(&mut self.in_batch), e);
            }
        }
    }

    /// CLIP for the first decoded video.
    fn encode_one(&mut self) {
        if let Some((t, decoded)) = self.decoded.pop_front() {
            self.prepare(t, decoded);
        }
    }

    /// Makes a decoded job ready to join (running CLIP on its frames, if any).
    fn prepare(&mut self, mut t: Taken, decoded: Decoded) {
        let request = t.job.request.clone();
        let events = &mut t.job.events;
        let mut progress = |e: &Event| events(JobEvent::Progress(*e));
        match self.loaded.prepare_decoded(0, request, decoded, &mut progress) {
            Ok(p) => {
                t.prepared = Some(p);
                self.ready.push_back(t);
            }
            Err(e) => t.finish(Err(e)),
        }
    }

    /// The VAE for the first sampled job, which then ends with its output.
    fn finish_one(&mut self) {
        let Some((mut t, latents)) = self.sampled.pop_front() else { return };
        let p = t.prepared.take().expect("a sampled job is prepared");
        let joined = t.joined.unwrap_or_else(Instant::now);
        let report = SamplingReport {
            requests: 1,
            latent_frames: p.sampler.latent_len,
            sampling_s: joined.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let events = &mut t.job.events;
        let mut progress = |e: &Event| events(JobEvent::Progress(*e));
        let result = latents.and_then(|l| self.loaded.finish(p, l, &report, &self.windows, &mut progress));
        t.finish(result);
    }
}

/// Ends every job of a batch that failed: with the error itself when the job
/// was alone, with the batch's message otherwise.
fn fail_all(mut jobs: Vec<Taken>, error: Error) {
    if jobs.len() == 1 {
        jobs.remove(0).finish(Err(error));
        return;
    }
    let message = error.to_string();
    jobs.into_iter().for_each(|t| t.finish(Err(Error::Batch(message.clone()))));
}
