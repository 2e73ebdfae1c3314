//! `lova-fast serve`: an HTTP API in front of one [`Pipeline`].
//!
//! One scheduler thread owns the pipeline and runs
//! [`Pipeline::run_scheduler`]; HTTP handlers (axum on tokio) validate
//! uploads, queue jobs through a channel and read the job store that the
//! scheduler's events update. Progress also goes out on a broadcast channel
//! for Server-Sent Events.
//!
//! Modules: [`api`] routes and error replies, [`jobs`] the job store,
//! [`form`] multipart parsing and validation, [`metrics`] Prometheus text,
//! [`auth`] the bearer token, [`shutdown`] draining on SIGTERM/SIGINT,
//! [`page`] the demo web page at `/`.

pub mod api;
pub mod auth;
pub mod form;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::{Pipeline, SchedulerOptions, StepStats};

/// How to run the server (the CLI's flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind; port 0 picks a free one (printed on stdout).
    pub addr: SocketAddr,
    /// Largest upload (the whole request body), bytes.
    pub max_upload_bytes: u64,
    /// Most jobs not yet in a final state; one more is answered 429.
    pub max_queue: usize,
    /// How long a result stays downloadable after its job finished.
    pub keep_results: Duration,
    /// Bearer token every route but `/healthz` and `/readyz` requires.
    pub token: Option<String>,
    /// Passed to `SchedulerOptions::max_batch_rows`.
    pub max_batch_rows: Option<usize>,
    /// Passed to `SchedulerOptions::continuous` (false: one job at a time).
    pub batching: bool,
    /// After SIGTERM/SIGINT, how long running and queued jobs may still finish
    /// before they are cancelled.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_upload_bytes: 512 << 20,
            max_queue: 64,
            keep_results: Duration::from_secs(3600),
            token: None,
            max_batch_rows: None,
            batching: true,
            grace: Duration::from_secs(30),
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The private folder for uploads and results could not be made.
    #[error("cannot create the upload folder: {0}")]
    TempDir(std::io::Error),
    /// The tokio runtime could not start or the server failed.
    #[error("server: {0}")]
    Runtime(std::io::Error),
    /// The pipeline could not be opened (weights, device).
    #[error("loading the model: {0}")]
    Pipeline(crate::Error),
}

/// Opens the pipeline on the scheduler thread (weights are loaded there so that
/// the port is open, and `/readyz` answers 503, while they load).
pub type OpenPipeline = Box<dyn FnOnce() -> crate::Result<Pipeline> + Send>;

/// Runs the server until SIGTERM/SIGINT, then drains (see [`shutdown`]) and
/// returns. `on_listening` is called with the bound address once the port is open.
pub fn serve(
    options: ServeOptions,
    open: OpenPipeline,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // HTTP work is light (the model runs on the scheduler thread and rayon's pool).
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(run(options, open, on_listening))
}

async fn run(
    options: ServeOptions,
    open: OpenPipeline,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind { addr: options.addr, source })?;
    let addr = listener.local_addr().map_err(ServeError::Runtime)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let store = jobs::Store::new(&options, metrics.clone()).map_err(ServeError::TempDir)?;
    let state = api::AppState::new(options.clone(), store.clone(), metrics.clone());

    // The scheduler thread: opens the pipeline, says so, runs jobs until the channel closes.
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let scheduler_options = SchedulerOptions {
        continuous: options.batching,
        max_batch_rows: options.max_batch_rows,
        on_step: Some(Box::new({
            let metrics = metrics.clone();
            move |s: &StepStats| metrics.record_step(s)
        })),
    };
    let scheduler = std::thread::Builder::new()
        .name("lova-scheduler".into())
        .spawn(move || match open() {
            Ok(mut pipeline) => {
                let _ = ready_tx.send(Ok((pipeline.config().clone(), pipeline.has_clip(), pipeline.device_name())));
                pipeline.run_scheduler(job_rx, scheduler_options);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(ServeError::Runtime)?;

    let app = api::router(state.clone());
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_http_rx.await;
            })
            .await
    });
    on_listening(addr);

    // Wait for the model, or for a signal while it loads.
    let loaded = tokio::select! {
        r = ready_rx => r,
        _ = shutdown::signal() => {
            eprintln!("shutting down before the model finished loading");
            state.begin_shutdown();
            drop(job_tx);
            let _ = stop_http_tx.send(());
            let _ = server.await;
            // The thread is still loading; the process exits without waiting for it.
            return Ok(());
        }
    };
    match loaded {
        Ok(Ok((config, has_clip, device))) => {
            eprintln!("model loaded on {device}; ready");
            state.set_ready(config, has_clip, job_tx);
        }
        Ok(Err(e)) => {
            let _ = stop_http_tx.send(());
            let _ = server.await;
            return Err(ServeError::Pipeline(e));
        }
        Err(_) => {
            let _ = stop_http_tx.send(());
            return Err(ServeError::Runtime(std::io::Error::other("the scheduler thread ended while loading")));
        }
    }

    let expiry = tokio::spawn(jobs::expire_results(store.clone()));
    shutdown::signal().await;
    shutdown::drain(&state, options.grace).await;
    // Every sender is gone once the state drops its own: the scheduler finishes and returns.
    let joined = tokio::task::spawn_blocking(move || scheduler.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        eprintln!("error: the scheduler thread panicked");
    }
    store.wait_for_writers().await;
    expiry.abort();
    let _ = stop_http_tx.send(());
    // Open SSE streams end with their jobs; a bounded wait keeps a stuck client from holding exit.
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    store.remove_all_files();
    eprintln!("shut down");
    Ok(())
}
