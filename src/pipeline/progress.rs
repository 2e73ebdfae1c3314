//! Progress reports and cancellation of requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The stages a request goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Video frames decoded and preprocessed (`done`/`total` frames).
    Decode,
    /// Frames encoded by CLIP (`done`/`total` frames).
    Clip,
    /// Sampler steps (`done`/`total` steps).
    Sampling,
    /// VAE windows decoded (`done`/`total` windows; one for a short clip).
    Vae,
}

/// One progress report: request `request` (its index in the call) reached
/// `done` of `total` in `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Index of the request in the `generate_many` call (0 for `generate`).
    pub request: usize,
    /// Stage the request is in.
    pub stage: Stage,
    /// Units of the stage finished so far (frames, steps or windows).
    pub done: usize,
    /// Units the stage has in all.
    pub total: usize,
}

/// Receives progress events, on the thread that called `generate`. Events of
/// one request come in stage order, `done` increasing within a stage; the
/// sampler reports every step of every request of a batch.
pub trait Progress {
    /// Called once per progress report; should return quickly (it runs between steps).
    fn event(&mut self, event: &Event);
}

impl<F: FnMut(&Event)> Progress for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// Ignores every event.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&mut self, _: &Event) {}
}

/// Cancels a request from another thread: the pipeline checks it between CLIP
/// batches, between sampler steps and between VAE windows, and then ends the
/// request with `Error::Cancelled` (a sampled batch goes on without it).
/// Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation; takes effect at the pipeline's next check. Idempotent.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether `cancel` was called on this token or a clone of it.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
