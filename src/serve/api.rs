//! The routes, the shared state they read, and the JSON error replies.

use std::convert::Infallible;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::ServeOptions;
use super::form;
use super::jobs::{JobError, Record, Refused, Status, Store, Update};
use super::metrics::Metrics;
use crate::config::LovaConfig;
use crate::error::Error;
use crate::pipeline::Job;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The server's flags.
    pub options: Arc<ServeOptions>,
    /// The jobs.
    pub store: Store,
    /// The counters.
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

struct Shared {
    // Set once the pipeline is open: the model's config and whether it has CLIP.
    model: OnceLock<(LovaConfig, bool)>,
    // None before loading and after shutdown closed it.
    jobs: Mutex<Option<Sender<Job>>>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// A state that is not ready yet (no model).
    pub fn new(options: ServeOptions, store: Store, metrics: Arc<Metrics>) -> Self {
        AppState {
            options: Arc::new(options),
            store,
            metrics,
            shared: Arc::new(Shared {
                model: OnceLock::new(),
                jobs: Mutex::new(None),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// The model is loaded: jobs may come.
    pub fn set_ready(&self, config: LovaConfig, has_clip: bool, jobs: Sender<Job>) {
        let _ = self.shared.model.set((config, has_clip));
        *self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(jobs);
    }

    /// New jobs get 503 from now on; `/readyz` too.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Drops the job channel's sender: the scheduler returns once its jobs are done.
    pub fn close_jobs(&self) {
        self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    fn ready(&self) -> bool {
        self.shared.model.get().is_some() && !self.shutting_down()
    }
}

/// An error reply: `{"error": {"code", "message"}}` with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with HTTP status `status`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        ApiError::new(e.http, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// How a library error shows to a client. Messages name uploads by their
/// place in the job's folder, not by the server's private path.
pub fn job_error(e: &Error, private_dir: &FsPath) -> JobError {
    let (http, code) = match e {
        Error::Video { .. } => (400, "unreadable_media"),
        Error::BadSafetensors { .. } => (400, "malformed_file"),
        Error::Limit(_) => (422, "too_long"),
        Error::InvalidInput(_)
        | Error::NonFinite { .. }
        | Error::OutOfRange { .. }
        | Error::ShapeMismatch { .. }
        | Error::MissingTensor { .. }
        | Error::UnsupportedDtype { .. } => (422, "invalid_input"),
        Error::Cancelled => (409, "cancelled"),
        Error::ToolMissing { .. } => (500, "ffmpeg_missing"),
        _ => (500, "internal"),
    };
    let mut prefix = private_dir.display().to_string();
    prefix.push('/');
    JobError { http, code, message: e.to_string().replace(&prefix, "") }
}

/// Every route; all but `/healthz`, `/readyz` and the page behind the token (if any).
pub fn router(state: AppState) -> Router {
    // Room for the text fields and the multipart framing beside the file.
    let body_limit = usize::try_from(state.options.max_upload_bytes).unwrap_or(usize::MAX).saturating_add(64 << 10);
    let protected = Router::new()
        .route("/v1/audio", axum::routing::post(post_audio))
        .route("/v1/audio/{id}", get(get_audio).delete(delete_audio))
        .route("/v1/audio/{id}/events", get(events))
        .route("/v1/audio/{id}/content", get(content))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), super::auth::require_token));
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(super::page::routes())
        .merge(protected)
        .fallback(|| async { ApiError::new(404, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        let why = if state.shutting_down() { "shutting down" } else { "loading the model" };
        ApiError::new(503, "not_ready", why).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let (queued, running) = state.store.counts();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(queued, running)).into_response()
}

fn unavailable(state: &AppState) -> Option<ApiError> {
    if state.shutting_down() {
        return Some(ApiError::new(503, "shutting_down", "the server is shutting down and takes no new jobs"));
    }
    if state.shared.model.get().is_none() {
        return Some(ApiError::new(503, "not_ready", "the model is still loading; see /readyz"));
    }
    None
}

fn queue_full(max_queue: usize) -> ApiError {
    let mut e = ApiError::new(429, "queue_full", format!("{max_queue} jobs are queued or running (--max-queue)"));
    e.retry_after = Some(5);
    e
}

#[derive(serde::Deserialize)]
struct PostQuery {
    #[serde(default)]
    wait: bool,
}

async fn post_audio(
    State(state): State<AppState>,
    Query(query): Query<PostQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    if let Some(e) = unavailable(&state) {
        return Err(e);
    }
    // Refuse before reading the upload: under overload that is the cheap part.
    if state.store.unfinished() >= state.options.max_queue {
        return Err(queue_full(state.options.max_queue));
    }
    let multipart = multipart.map_err(|e| ApiError::new(400, "bad_form", e.body_text()))?;
    let (id, dir) = state
        .store
        .new_job_dir()
        .map_err(|e| ApiError::new(500, "internal", format!("cannot make the job's folder: {e}")))?;
    let admitted = admit(&state, &id, &dir, multipart).await;
    if admitted.is_err() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    let (record_json, mut updates) = admitted?;
    if !query.wait {
        let mut response = (StatusCode::ACCEPTED, axum::Json(record_json)).into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("/v1/audio/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Ok(response);
    }
    // ?wait=true: hold the connection until the job is final.
    loop {
        if let Some(outcome) = state.store.result(&id)
            && outcome.status.is_final()
        {
            break;
        }
        match updates.recv().await {
            Ok(u) if u.id == id && u.is_final => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => break,
        }
    }
    content_of(&state, &id).await
}

/// Reads and checks the form, admits the job and queues it. Returns its JSON
/// and a subscription made before queueing (so `?wait=true` misses nothing).
async fn admit(
    state: &AppState,
    id: &str,
    dir: &FsPath,
    multipart: Multipart,
) -> Result<(serde_json::Value, tokio::sync::broadcast::Receiver<Update>), ApiError> {
    let form = form::read(multipart, dir, state.options.max_upload_bytes).await?;
    let Some((config, has_clip)) = state.shared.model.get().cloned() else {
        return Err(ApiError::new(503, "not_ready", "the model is still loading"));
    };
    let request = form.request();
    let checked = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || form::validate(&request, &config, has_clip))
            .await
            .map_err(|e| ApiError::new(500, "internal", format!("validation failed: {e}")))?
    };
    let plan = checked.map_err(|e| ApiError::from(job_error(&e, state.store.dir())))?;
    let mut record =
        Record::new(id.to_string(), dir.to_path_buf(), form.format, request.sampler.steps, plan.seconds, request.seed);
    if let form::Upload::Video(path) = &form.upload {
        record.video = Some(path.clone());
    }
    let request = request.cancel_token(record.cancel.clone());
    let updates = state.store.subscribe();
    let json = record.to_json();
    state
        .store
        .admit(record, state.options.max_queue)
        .map_err(|Refused::QueueFull| queue_full(state.options.max_queue))?;
    let events = state.store.events_for(id.to_string(), tokio::runtime::Handle::current());
    let sent = match state.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(jobs) => jobs.send(Job { request, events }).is_ok(),
        None => false,
    };
    if !sent {
        state.store.forget(id);
        return Err(ApiError::new(503, "shutting_down", "the server is shutting down and takes no new jobs"));
    }
    eprintln!("job {id} queued: {:.2} s of audio, {} steps", plan.seconds, json["steps"]);
    Ok((json, updates))
}

async fn get_audio(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    state.store.json(&id).map(|v| axum::Json(v).into_response()).ok_or_else(|| unknown(&id))
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("no job `{id}`"))
}

async fn delete_audio(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    state.store.delete(&id, "cancelled by DELETE").map(|v| axum::Json(v).into_response()).ok_or_else(|| unknown(&id))
}

async fn content(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    content_of(&state, &id).await
}

/// The job's result, or why there is none.
async fn content_of(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let Some(outcome) = state.store.result(id) else { return Err(unknown(id)) };
    match (outcome.status, outcome.result, outcome.error) {
        (Status::Succeeded, Some((path, format)), _) => {
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|_| ApiError::new(404, "gone", "the result expired or was deleted"))?;
            Ok(([(header::CONTENT_TYPE, format.content_type())], Body::from(bytes)).into_response())
        }
        (Status::Succeeded, None, _) => Err(ApiError::new(404, "gone", "the result expired or was deleted")),
        (_, _, Some(e)) => Err(e.into()),
        (s, _, None) => Err(ApiError::new(409, "not_ready", format!("the job is {}", s.name()))),
    }
}

/// Server-Sent Events of one job: its status now, then every status change
/// and progress event; the stream ends after the final status.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribe first, then read the status: nothing falls between the two.
    let updates = state.store.subscribe();
    let now = state.store.json(&id).ok_or_else(|| unknown(&id))?;
    let done = now["status"].as_str().is_some_and(is_final_name);
    let first = Some(SseEvent::default().event("status").data(now.to_string()));
    let stream = futures_util::stream::unfold(
        (updates, first, done, state.store.clone(), id),
        |(mut updates, pending, done, store, id)| async move {
            if let Some(event) = pending {
                return Some((Ok(event), (updates, None, done, store, id)));
            }
            if done {
                return None;
            }
            loop {
                match updates.recv().await {
                    Ok(u) if u.id == id => {
                        let event = SseEvent::default().event(u.event).data(u.data);
                        return Some((Ok(event), (updates, None, u.is_final, store, id)));
                    }
                    Ok(_) => {}
                    // Missed events (a slow client): the status now says where the job is.
                    Err(RecvError::Lagged(_)) => {
                        let now = store.json(&id)?;
                        let is_final = now["status"].as_str().is_some_and(is_final_name);
                        if is_final {
                            let event = SseEvent::default().event("status").data(now.to_string());
                            return Some((Ok(event), (updates, None, true, store, id)));
                        }
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn is_final_name(name: &str) -> bool {
    matches!(name, "succeeded" | "failed" | "cancelled")
}
