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
//! 4. prepares one waiting job (video decoding, overlapped with CLIP on a
//!    helper thread, then CLIP; or its features) and VAE-decodes one finished
//!    job. Both run between two steps, one job each, so a turn is at most one
//!    step plus one job's CLIP plus one job's VAE: the batch stalls for that
//!    long, never for the whole queue.
//!
//! Every request keeps its own step, schedule, DPM++ history and noise stream
//! (see `sampler::Sampling`), so its audio is the one `generate` gives for the
//! same request, whatever else was in the batch and whenever it joined: the
//! same bytes on the CPU.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::run::{Loaded, Prepared};
use super::{Event, Output, Request, SamplingReport, Stage, VaeWindows};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::sampler::Sampling;

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
    /// The scheduler began working on the job (decoding its input).
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

/// A job the scheduler has taken, with its input prepared once it is.
struct Taken {
    job: Job,
    prepared: Option<Prepared>,
    /// When it joined the batch.
    joined: Option<Instant>,
}

impl Taken {
    fn cancelled(&self) -> bool {
        self.job.request.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    fn progress(&mut self, event: Event) {
        (self.job.events)(JobEvent::Progress(event));
    }

    fn finish(mut self, result: Result<Output>) {
        (self.job.events)(JobEvent::Finished(result));
    }
}

/// The scheduler's loop on one backend (see the module doc).
pub(super) fn run<B: Backend>(
    loaded: &Loaded<B>,
    jobs: Receiver<Job>,
    mut options: SchedulerOptions,
    windows: &VaeWindows,
) {
    let memory_budget = loaded.backend.device_memory_free().map(|free| (free as f64 * MEMORY_SHARE) as usize);
    // Bytes per latent row of the batch, measured on the last plan (the arena grows about linearly).
    let mut bytes_per_row: Option<f64> = None;
    let mut waiting: VecDeque<Taken> = VecDeque::new();
    let mut ready: VecDeque<Taken> = VecDeque::new();
    let mut in_batch: Vec<Taken> = Vec::new();
    let mut decoding: VecDeque<(Taken, Result<crate::tensor::HostTensor>)> = VecDeque::new();
    let mut batch: Option<Sampling<B>> = None;
    let mut open = true;
    loop {
        // 1. New jobs: wait for one when there is nothing else to do.
        let idle = batch.is_none() && waiting.is_empty() && ready.is_empty() && decoding.is_empty();
        if idle && !open {
            return;
        }
        if idle {
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => waiting.push_back(Taken { job, prepared: None, joined: None }),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(Taken { job, prepared: None, joined: None }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for queue in [&mut waiting, &mut ready] {
            let (cancelled, kept): (VecDeque<Taken>, VecDeque<Taken>) = queue.drain(..).partition(Taken::cancelled);
            *queue = kept;
            cancelled.into_iter().for_each(|t| t.finish(Err(Error::Cancelled)));
        }

        // 2. The batch's composition.
        let limit = row_limit(&options, memory_budget, bytes_per_row);
        let leaving: Vec<bool> = match &batch {
            Some(s) => (0..s.len()).map(|b| s.is_finished(b) || in_batch[b].cancelled()).collect(),
            None => Vec::new(),
        };
        let mut rows = batch.as_ref().map_or(0, |s| s.rows())
            - leaving.iter().zip(&in_batch).filter(|(l, _)| **l).map(|(_, t)| latent_len(t)).sum::<usize>();
        let mut members = in_batch.len() - leaving.iter().filter(|&&l| l).count();
        let mut joining = Vec::new();
        while let Some(next) = ready.front() {
            let fits = members == 0 || (options.continuous && rows + latent_len(next) <= limit);
            if !fits {
                break;
            }
            rows += latent_len(next);
            members += 1;
            joining.push(ready.pop_front().expect("a front"));
        }
        if leaving.iter().any(|&l| l) || !joining.is_empty() {
            // Finished jobs take their latents with them; cancelled ones end here.
            let mut kept = Vec::new();
            for (b, t) in std::mem::take(&mut in_batch).into_iter().enumerate() {
                if !leaving[b] {
                    kept.push(t);
                } else if t.cancelled() {
                    t.finish(Err(Error::Cancelled));
                } else {
                    let latents = batch.as_ref().expect("a batch").latents_of(b);
                    decoding.push_back((t, latents));
                }
            }
            let add: Vec<_> = joining
                .iter()
                .map(|t: &Taken| {
                    let p = t.prepared.as_ref().expect("ready jobs are prepared");
                    (p.sampler.clone(), p.settings.clone())
                })
                .collect();
            let now = Instant::now();
            for t in &mut joining {
                t.joined = Some(now);
            }
            kept.extend(joining);
            let planned = match batch.take() {
                Some(s) => s.recompose(|b| !leaving[b], add),
                None if add.is_empty() => Ok(None),
                None => Sampling::with_settings(&loaded.backend, loaded.dit(), add).map(Some),
            };
            match planned {
                Ok(s) => {
                    if let Some(s) = &s {
                        bytes_per_row = Some(s.arena_bytes() as f64 / s.rows().max(1) as f64);
                    }
                    batch = s;
                    in_batch = kept;
                }
                Err(e) => fail_all(kept, e),
            }
        }

        // 3. One step of the batch.
        if let Some(s) = &mut batch {
            let started = Instant::now();
            match s.step() {
                Ok(_) => {
                    let stats = StepStats {
                        requests: s.len(),
                        rows: s.rows(),
                        seconds: started.elapsed().as_secs_f64(),
                        arena_bytes: s.arena_bytes(),
                    };
                    if let Some(on_step) = &mut options.on_step {
                        on_step(&stats);
                    }
                    for (b, t) in in_batch.iter_mut().enumerate() {
                        let (done, total) = s.progress_of(b);
                        t.progress(Event { request: 0, stage: Stage::Sampling, done, total });
                    }
                }
                Err(e) => {
                    batch = None;
                    fail_all(std::mem::take(&mut in_batch), e);
                }
            }
        }

        // 4. Prepare one waiting job, VAE-decode one finished job.
        if let Some(mut t) = waiting.pop_front() {
            (t.job.events)(JobEvent::Started);
            let request = t.job.request.clone();
            let events = &mut t.job.events;
            let mut progress = |e: &Event| events(JobEvent::Progress(*e));
            match loaded.prepare(0, request, &mut progress) {
                Ok(p) => {
                    t.prepared = Some(p);
                    ready.push_back(t);
                }
                Err(e) => t.finish(Err(e)),
            }
        }
        if let Some((mut t, latents)) = decoding.pop_front() {
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
            let result = latents.and_then(|l| loaded.finish(p, l, &report, windows, &mut progress));
            t.finish(result);
        }
    }
}

/// Latent rows a job adds to the batch.
fn latent_len(t: &Taken) -> usize {
    t.prepared.as_ref().map_or(0, |p| p.sampler.latent_len)
}

/// The most latent rows the batch may hold: the option, and what the memory budget allows.
fn row_limit(options: &SchedulerOptions, memory_budget: Option<usize>, bytes_per_row: Option<f64>) -> usize {
    let by_memory = match (memory_budget, bytes_per_row) {
        (Some(budget), Some(per_row)) if per_row > 0.0 => (budget as f64 / per_row) as usize,
        _ => usize::MAX,
    };
    options.max_batch_rows.unwrap_or(usize::MAX).min(by_memory)
}

/// Ends every job of a batch that failed: with the error itself when the job
/// was alone, with the batch's message otherwise.
fn fail_all(jobs: Vec<Taken>, error: Error) {
    let mut jobs = jobs;
    if jobs.len() == 1 {
        jobs.remove(0).finish(Err(error));
        return;
    }
    let message = error.to_string();
    jobs.into_iter().for_each(|t| t.finish(Err(Error::Batch(message.clone()))));
}
