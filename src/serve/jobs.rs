//! The job store: every accepted job's state, its files, and the broadcast of
//! its events. The scheduler thread writes through `on_event`; HTTP handlers read.
//!
//! A job's files live in its own folder inside the server's private temporary
//! folder (mode 0700): the upload until the job ends, the result until it
//! expires or is deleted. Paths are never taken from a request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use super::ServeOptions;
use super::metrics::Metrics;
use crate::audio::SampleFormat;
use crate::pipeline::{CancelToken, JobEvent, Output, Stage};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Accepted, waiting for the scheduler.
    Queued,
    /// The scheduler is working on it.
    Running,
    /// Done; the result is downloadable until it expires.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Ended by `DELETE` or by shutdown.
    Cancelled,
}

impl Status {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// What the result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `audio/wav`, 16-bit PCM (what `lova-fast infer` writes by default).
    Wav,
    /// `video/mp4`: the uploaded video with the audio muxed in.
    Mp4,
}

impl Format {
    /// The result's MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Wav => "audio/wav",
            Format::Mp4 => "video/mp4",
        }
    }
}

/// An error to show a client: HTTP status, a stable code and a message.
#[derive(Debug, Clone)]
pub struct JobError {
    /// HTTP status it maps to.
    pub http: u16,
    /// Short machine-readable code (`invalid_input`, `cancelled`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

/// One job.
#[derive(Debug)]
pub struct Record {
    /// Its id.
    pub id: String,
    /// Where it is.
    pub status: Status,
    /// Sampler steps done.
    pub step: usize,
    /// Sampler steps asked for.
    pub steps: usize,
    /// Unix seconds.
    pub queued_at: f64,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub finished_at: Option<f64>,
    /// Length of the audio it makes.
    pub seconds_of_audio: f64,
    /// The request's seed, or the one drawn for it once known.
    pub seed: Option<u64>,
    /// Why it failed or was cancelled.
    pub error: Option<JobError>,
    /// What the result is.
    pub format: Format,
    /// Cancels it in the pipeline.
    pub cancel: CancelToken,
    /// Said when the scheduler reports the cancellation.
    pub cancel_reason: Option<String>,
    /// Its private folder.
    pub dir: PathBuf,
    /// The uploaded video (kept until the mux is done).
    pub video: Option<PathBuf>,
    /// The result file, while downloadable.
    pub result: Option<PathBuf>,
    /// When the result goes.
    pub expires_at: Option<Instant>,
    /// The scheduler sent `Finished` (and its files may be removed).
    pub scheduler_done: bool,
}

impl Record {
    /// A queued job.
    pub fn new(id: String, dir: PathBuf, format: Format, steps: usize, seconds: f64, seed: Option<u64>) -> Self {
        Record {
            id,
            status: Status::Queued,
            step: 0,
            steps,
            queued_at: unix_now(),
            started_at: None,
            finished_at: None,
            seconds_of_audio: seconds,
            seed,
            error: None,
            format,
            cancel: CancelToken::new(),
            cancel_reason: None,
            dir,
            video: None,
            result: None,
            expires_at: None,
            scheduler_done: false,
        }
    }

    /// The job as the API shows it (times in unix seconds).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "status": self.status.name(),
            "step": self.step,
            "steps": self.steps,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds_of_audio": self.seconds_of_audio,
            "seed": self.seed,
            "format": match self.format { Format::Wav => "wav", Format::Mp4 => "mp4" },
            "result_available": self.result.is_some(),
        });
        if let Some(e) = &self.error {
            v["error"] = json!({"code": e.code, "message": e.message});
        }
        v
    }
}

/// Where a job ended up, for `content`.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its status.
    pub status: Status,
    /// The result file and its format, while downloadable.
    pub result: Option<(PathBuf, Format)>,
    /// Why it failed or was cancelled.
    pub error: Option<JobError>,
}

/// One event of one job, for SSE and `?wait=true`.
#[derive(Debug, Clone)]
pub struct Update {
    /// The job.
    pub id: String,
    /// SSE event name: `status` or `progress`.
    pub event: &'static str,
    /// JSON text.
    pub data: String,
    /// This is the job's final status.
    pub is_final: bool,
}

/// Why a job was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// `--max-queue` jobs are not final yet.
    QueueFull,
}

/// The shared job store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<HashMap<String, Record>>,
    events: broadcast::Sender<Update>,
    // Removed (with everything in it) at shutdown or when the process ends.
    dir: Mutex<Option<tempfile::TempDir>>,
    dir_path: PathBuf,
    keep: Duration,
    metrics: Arc<Metrics>,
    // Results being written on blocking threads; shutdown waits for them.
    writers: AtomicUsize,
    writers_done: Notify,
    ids: AtomicU64,
    id_keys: RandomState,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Store {
    /// An empty store with a new private folder.
    pub fn new(options: &ServeOptions, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("lova-fast-serve-").tempdir()?;
        // Uploads are other people's videos: only this user may read them.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let dir_path = dir.path().to_path_buf();
        Ok(Store {
            inner: Arc::new(Inner {
                jobs: Mutex::new(HashMap::new()),
                events: broadcast::channel(4096).0,
                dir: Mutex::new(Some(dir)),
                dir_path,
                keep: options.keep_results,
                metrics,
                writers: AtomicUsize::new(0),
                writers_done: Notify::new(),
                ids: AtomicU64::new(0),
                id_keys: RandomState::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The private folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir_path
    }

    /// A fresh id (unguessable: a per-process random key hashes a counter) and its folder.
    pub fn new_job_dir(&self) -> std::io::Result<(String, PathBuf)> {
        let n = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{:04x}", self.inner.id_keys.hash_one(n), n & 0xffff);
        let dir = self.inner.dir_path.join(&id);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok((id, dir))
    }

    /// Adds `record` unless `max_queue` jobs are already not final.
    pub fn admit(&self, record: Record, max_queue: usize) -> Result<(), Refused> {
        let mut jobs = self.lock();
        if jobs.values().filter(|r| !r.status.is_final()).count() >= max_queue {
            return Err(Refused::QueueFull);
        }
        jobs.insert(record.id.clone(), record);
        Ok(())
    }

    /// Removes a job that was admitted but could not be queued (the scheduler is gone).
    pub fn forget(&self, id: &str) {
        if let Some(r) = self.lock().remove(id) {
            let _ = std::fs::remove_dir_all(&r.dir);
        }
    }

    /// Jobs queued and running.
    pub fn counts(&self) -> (usize, usize) {
        let jobs = self.lock();
        let queued = jobs.values().filter(|r| r.status == Status::Queued).count();
        let running = jobs.values().filter(|r| r.status == Status::Running).count();
        (queued, running)
    }

    /// The job's JSON, if it exists.
    pub fn json(&self, id: &str) -> Option<Value> {
        self.lock().get(id).map(Record::to_json)
    }

    /// Status and result file of the job, if it exists.
    pub fn result(&self, id: &str) -> Option<Outcome> {
        self.lock().get(id).map(|r| Outcome {
            status: r.status,
            result: r.result.clone().map(|p| (p, r.format)),
            error: r.error.clone(),
        })
    }

    /// New events of every job.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.inner.events.subscribe()
    }

    fn send_status(&self, r: &Record) {
        let _ = self.inner.events.send(Update {
            id: r.id.clone(),
            event: "status",
            data: r.to_json().to_string(),
            is_final: r.status.is_final(),
        });
    }

    /// What DELETE does: cancels a queued or running job (true), or removes a
    /// finished job's result. None: no such job.
    pub fn delete(&self, id: &str, reason: &str) -> Option<Value> {
        let mut jobs = self.lock();
        let r = jobs.get_mut(id)?;
        match r.status {
            Status::Queued => {
                // Final at once: it may wait long behind running jobs. The
                // scheduler still gets it, sees the token and drops it; its
                // upload is removed then.
                r.cancel.cancel();
                self.end(r, Status::Cancelled, Some(cancelled(reason)));
            }
            Status::Running => {
                // Final when the scheduler stops it (within a step).
                r.cancel_reason = Some(reason.to_string());
                r.cancel.cancel();
            }
            _ => {
                if let Some(path) = r.result.take() {
                    let _ = std::fs::remove_file(path);
                    let _ = std::fs::remove_dir(&r.dir);
                }
            }
        }
        Some(r.to_json())
    }

    /// Cancels every job not final yet (shutdown); returns how many.
    pub fn cancel_all(&self, reason: &str) -> usize {
        let ids: Vec<String> = self.lock().values().filter(|r| !r.status.is_final()).map(|r| r.id.clone()).collect();
        for id in &ids {
            self.delete(id, reason);
        }
        ids.len()
    }

    /// Jobs not final.
    pub fn unfinished(&self) -> usize {
        self.lock().values().filter(|r| !r.status.is_final()).count()
    }

    /// Marks `r` final, logs it, counts it, tells subscribers.
    fn end(&self, r: &mut Record, status: Status, error: Option<JobError>) {
        r.status = status;
        r.error = error;
        r.finished_at = Some(unix_now());
        self.inner
            .metrics
            .record_final(status.name(), if status == Status::Succeeded { r.seconds_of_audio } else { 0.0 });
        match &r.error {
            Some(e) => eprintln!("job {} {}: {}", r.id, status.name(), e.message),
            None => eprintln!("job {} {}", r.id, status.name()),
        }
        self.send_status(r);
    }

    /// The callback the scheduler calls with job `id`'s events.
    pub fn events_for(&self, id: String, runtime: tokio::runtime::Handle) -> Box<dyn FnMut(JobEvent) + Send> {
        let store = self.clone();
        Box::new(move |event| store.on_event(&id, event, &runtime))
    }

    fn on_event(&self, id: &str, event: JobEvent, runtime: &tokio::runtime::Handle) {
        match event {
            JobEvent::Started => {
                let mut jobs = self.lock();
                if let Some(r) = jobs.get_mut(id)
                    && r.status == Status::Queued
                {
                    r.status = Status::Running;
                    r.started_at = Some(unix_now());
                    self.send_status(r);
                }
            }
            JobEvent::Progress(e) => {
                let mut jobs = self.lock();
                let Some(r) = jobs.get_mut(id) else { return };
                if r.status.is_final() {
                    return;
                }
                if e.stage == Stage::Sampling {
                    r.step = e.done;
                }
                let stage = match e.stage {
                    Stage::Decode => "decode",
                    Stage::Clip => "clip",
                    Stage::Sampling => "sampling",
                    Stage::Vae => "vae",
                };
                let data = json!({"id": id, "stage": stage, "done": e.done, "total": e.total}).to_string();
                let _ = self.inner.events.send(Update { id: id.to_string(), event: "progress", data, is_final: false });
            }
            JobEvent::Finished(result) => {
                // Writing the WAV (and muxing) takes a while: off the scheduler's thread.
                self.inner.writers.fetch_add(1, Ordering::SeqCst);
                let store = self.clone();
                let id = id.to_string();
                runtime.spawn_blocking(move || {
                    store.finish(&id, result);
                    if store.inner.writers.fetch_sub(1, Ordering::SeqCst) == 1 {
                        store.inner.writers_done.notify_waiters();
                    }
                });
            }
        }
    }

    /// Writes the result of a job the scheduler finished, marks it final and
    /// removes its upload.
    fn finish(&self, id: &str, result: crate::Result<Output>) {
        let (dir, format, video, already_final) = {
            let mut jobs = self.lock();
            let Some(r) = jobs.get_mut(id) else { return };
            r.scheduler_done = true;
            (r.dir.clone(), r.format, r.video.clone(), r.status.is_final())
        };
        let written = match result {
            Ok(output) if !already_final => {
                write_result(&dir, format, video.as_deref(), &output).map(|p| (p, output.seed))
            }
            Ok(_) => Err(crate::Error::Cancelled),
            Err(e) => Err(e),
        };
        let mut jobs = self.lock();
        let Some(r) = jobs.get_mut(id) else { return };
        // The upload is not needed any more (the result, if any, stays).
        remove_uploads(&dir, written.as_ref().ok().map(|(p, _)| p.as_path()));
        // Gone when empty (no result): a failed job leaves nothing behind.
        let _ = std::fs::remove_dir(&dir);
        if r.status.is_final() {
            return;
        }
        match written {
            Ok((path, seed)) => {
                r.result = Some(path);
                r.seed = Some(seed);
                r.step = r.steps;
                r.expires_at = Some(Instant::now() + self.inner.keep);
                self.end(r, Status::Succeeded, None);
            }
            Err(crate::Error::Cancelled) => {
                let reason = r.cancel_reason.clone().unwrap_or_else(|| "cancelled".into());
                self.end(r, Status::Cancelled, Some(cancelled(&reason)));
            }
            Err(e) => {
                let error = super::api::job_error(&e, self.dir());
                self.end(r, Status::Failed, Some(error));
            }
        }
    }

    /// Waits until every result being written is written.
    pub async fn wait_for_writers(&self) {
        loop {
            let notified = self.inner.writers_done.notified();
            if self.inner.writers.load(Ordering::SeqCst) == 0 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Removes results past their time.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut jobs = self.lock();
        for r in jobs.values_mut() {
            if r.expires_at.is_some_and(|t| t <= now)
                && let Some(path) = r.result.take()
            {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_dir(&r.dir);
            }
        }
    }

    /// Removes the private folder and everything in it (shutdown).
    pub fn remove_all_files(&self) {
        let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(dir);
    }
}

fn cancelled(reason: &str) -> JobError {
    JobError { http: 409, code: "cancelled", message: reason.to_string() }
}

/// Writes `output` into `dir` as asked: the WAV, and the mp4 with it muxed in.
fn write_result(dir: &Path, format: Format, video: Option<&Path>, output: &Output) -> crate::Result<PathBuf> {
    let wav = dir.join("audio.wav");
    // 16-bit PCM: `lova-fast infer`'s default, so the bytes are the same.
    output.write_wav(&wav, SampleFormat::Pcm16)?;
    match (format, video) {
        (Format::Wav, _) => Ok(wav),
        (Format::Mp4, Some(video)) => {
            let mp4 = dir.join("audio.mp4");
            crate::video::mux::mux_audio(video, &wav, &mp4)?;
            let _ = std::fs::remove_file(&wav);
            Ok(mp4)
        }
        (Format::Mp4, None) => Err(crate::Error::InvalidInput("format mp4 needs a video upload".into())),
    }
}

/// Removes every file of a job folder but `keep`.
fn remove_uploads(dir: &Path, keep: Option<&Path>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if Some(entry.path().as_path()) != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Removes expired results, twice a second, until aborted.
pub async fn expire_results(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        store.expire();
    }
}
