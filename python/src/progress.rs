//! Progress events -> the Python callback, and Ctrl-C -> cancellation.
//!
//! The pipeline calls `event` on the thread that called generate, between
//! frames, CLIP batches, sampler steps and VAE windows, with the GIL
//! released. Each event takes the GIL back briefly: to run Python's signal
//! handlers (a pending SIGINT raises KeyboardInterrupt there) and to call the
//! callback. An exception from either cancels every request of the call; the
//! pipeline notices before its next step, and the call then raises it.

use lova_fast::{CancelToken, Event, Progress, Stage};
use pyo3::prelude::*;

pub struct PyProgress {
    callback: Option<Py<PyAny>>,
    tokens: Vec<CancelToken>,
    /// generate_many's callback also takes the input's index.
    with_index: bool,
    /// The input index of each request (inputs that failed to convert have none).
    positions: Option<Vec<usize>>,
    error: Option<PyErr>,
}

impl PyProgress {
    pub fn new(callback: Option<Py<PyAny>>, tokens: Vec<CancelToken>, with_index: bool) -> Self {
        PyProgress { callback, tokens, with_index, positions: None, error: None }
    }

    pub fn with_positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// The exception that cancelled the call, if one did.
    pub fn take_error(&mut self) -> Option<PyErr> {
        self.error.take()
    }

    fn report(&self, py: Python<'_>, event: &Event) -> PyResult<()> {
        py.check_signals()?;
        let Some(callback) = &self.callback else { return Ok(()) };
        let stage = stage_name(event.stage);
        if self.with_index {
            let index = self.positions.as_ref().and_then(|p| p.get(event.request).copied()).unwrap_or(event.request);
            callback.call1(py, (index, stage, event.done, event.total))?;
        } else {
            callback.call1(py, (stage, event.done, event.total))?;
        }
        Ok(())
    }
}

pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Decode => "decode",
        Stage::Clip => "clip",
        Stage::Sampling => "sampling",
        Stage::Vae => "vae",
    }
}

impl Progress for PyProgress {
    fn event(&mut self, event: &Event) {
        if self.error.is_some() {
            return; // cancelled already: no more callbacks
        }
        if let Err(err) = Python::attach(|py| self.report(py, event)) {
            self.error = Some(err);
            for token in &self.tokens {
                token.cancel();
            }
        }
    }
}
