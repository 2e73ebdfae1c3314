//! A long-running loop that generates jobs as they arrive: the engine behind
//! `lova-fast serve`. Jobs come through a channel; each reports its progress
//! and its result through its own callback.
//!
//! `SchedulerOptions::continuous` chooses how jobs are sampled: one at a time,
//! or in one running batch that jobs join and leave between sampler steps
//! (step-level continuous batching).

use std::sync::mpsc::Receiver;

use super::{Event, Output, Pipeline, Request};
use crate::error::Result;

/// One job for the scheduler: a request and where its news goes.
pub struct Job {
    /// What to generate. Its cancel token (if any) is checked between CLIP
    /// batches, sampler steps and VAE windows.
    pub request: Request,
    /// Receives the job's events, on the scheduler's thread; must return quickly.
    pub events: Box<dyn FnMut(JobEvent) + Send>,
}

/// What happens to a job, in this order: `Started`, `Progress`..., `Finished`.
/// Every job received gets exactly one `Finished`, also when it fails early.
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

impl Pipeline {
    /// Runs jobs from `jobs` until the channel is closed (every sender dropped)
    /// and every job received has finished. Each job's audio is the one
    /// `generate` gives for the same request: byte for byte on the CPU.
    pub fn run_scheduler(&mut self, jobs: Receiver<Job>, options: SchedulerOptions) {
        // First cut: one job at a time (continuous batching lands next).
        let _ = options;
        for mut job in jobs.iter() {
            (job.events)(JobEvent::Started);
            let result = {
                let events = &mut job.events;
                let mut progress = |e: &Event| events(JobEvent::Progress(*e));
                self.generate_with_progress(job.request, &mut progress)
            };
            (job.events)(JobEvent::Finished(result));
        }
    }
}
