//! One CUDA graph per repeated part of a graph (a sampler step: the DiT on
//! cond + uncond, CFG and the DPM++ update). The first `run_repeated` of an op
//! range runs it with plain launches, as a warm-up: whatever the libraries
//! initialise on first use (cuBLASLt's kernels, lazily loaded modules) happens
//! outside a capture, as PyTorch's CUDA-graph guide also advises. The second
//! call records its launches on the backend's stream into a CUDA graph (stream
//! capture), launches it, and keeps it in the arena; later calls replay it with
//! one launch instead of hundreds. (A warm-up cannot be a dry run: a step
//! updates the sampler state in place.)
//!
//! A replay is valid because nothing a captured launch refers to moves or
//! changes shape: tensors sit at fixed arena offsets, the fp16 scratch and the
//! constant tables were made by `prepare`, cuBLASLt plans and its workspace
//! exist before the capture, and everything that changes per step (the step
//! scalars, including the step index that selects rows of per-request
//! constant tables, and the noise) is read from device memory, written by the
//! host before the replay. The seeded noise kernel takes its stream (the step)
//! as a launch argument, so it runs outside the graph, before the replay.
//!
//! Capture fails cleanly when an op would allocate, copy from pageable host
//! memory or synchronise: the error ends the capture, is reported once, and
//! this arena runs the part with plain launches from then on.
//! `LOVA_CUDA_GRAPHS=0` (or `CudaBackend::set_graph_capture(false)`) turns
//! capture off, to compare the two.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{CudaGraph, CudaStream};

use super::{CudaBackend, driver_err};
use crate::backend::{Backend, OpContext};
use crate::error::Result;

/// Environment variable that turns capture off when set to `0`.
pub const ENV_SWITCH: &str = "LOVA_CUDA_GRAPHS";

pub fn enabled_by_env() -> bool {
    std::env::var(ENV_SWITCH).map(|v| v.trim() != "0").unwrap_or(true)
}

/// The CUDA graphs captured for one arena, by op range.
#[derive(Default)]
pub struct Recordings {
    graphs: HashMap<(usize, usize), CudaGraph>,
    /// Op ranges that ran once with plain launches (the warm-up).
    warmed_up: HashSet<(usize, usize)>,
    /// Why capture failed for this arena, once it has.
    failure: Option<String>,
}

impl Recordings {
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }
}

/// Whether `stream` is being captured (an op must then not allocate).
pub fn is_capturing(stream: &CudaStream) -> Result<bool> {
    let status = stream.capture_status().map_err(driver_err("querying the stream capture status"))?;
    Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// The failure note is printed once per process, not once per batch.
static FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

impl CudaBackend {
    pub(super) fn run_plain(&self, ops: Range<usize>, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        let graph = ctx.graph;
        for op in &graph.ops[ops] {
            self.run_op(op, ctx)?;
        }
        Ok(())
    }

    /// Replays the graph captured for `ops`; the first call warms up, the second captures.
    pub(super) fn run_captured(&self, ops: Range<usize>, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let key = (ops.start, ops.end);
        if let Some(graph) = ctx.arena.recordings.graphs.get(&key) {
            return graph.launch().map_err(driver_err("launching a captured CUDA graph"));
        }
        if ctx.arena.recordings.warmed_up.insert(key) {
            return self.run_plain(ops, ctx);
        }
        match self.capture(ops.clone(), ctx) {
            Ok(graph) => {
                // Capturing recorded the launches without running them.
                graph.launch().map_err(driver_err("launching a captured CUDA graph"))?;
                ctx.arena.recordings.graphs.insert(key, graph);
                self.captured_graphs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(why) => {
                if !FAILURE_REPORTED.swap(true, Ordering::Relaxed) {
                    eprintln!("note: CUDA graph capture failed ({why}); running with plain launches instead");
                }
                if let Ok(mut last) = self.capture_failure.lock() {
                    *last = Some(why.clone());
                }
                ctx.arena.recordings.failure = Some(why);
                self.run_plain(ops, ctx)
            }
        }
    }

    /// Records the launches of `ops` into a CUDA graph; on failure, why.
    fn capture(&self, ops: Range<usize>, ctx: &mut OpContext<'_, Self>) -> std::result::Result<CudaGraph, String> {
        // Thread-local mode: only this thread's unsafe calls (allocations,
        // synchronisations) invalidate the capture; they are bugs here.
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| format!("cannot begin a stream capture: {e:?}"))?;
        let recorded = self.run_plain(ops, ctx);
        // End the capture whatever happened, so the stream is usable again.
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        recorded.map_err(|e| format!("an op failed while being captured: {e}"))?;
        match ended {
            Ok(Some(graph)) => Ok(graph),
            Ok(None) => Err("the capture recorded nothing".into()),
            Err(e) => Err(format!("cannot end or instantiate the capture: {e:?}")),
        }
    }
}
