//! `lova-fast serve` over real HTTP on loopback: the binary runs as a child
//! process (`--port 0`), a blocking client talks to it. Every wait is bounded;
//! a server is killed when its test ends, passed or not.

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::serve_process::ServeProcess;
use common::{fixture, lova_fast, ok, s};
use lova_fast::tensor::HostTensor;

/// The tiny engine with CLIP, converted once per test run.
fn engine() -> &'static Path {
    static ENGINE: OnceLock<PathBuf> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-engine");
        std::fs::create_dir_all(&dir).unwrap();
        common::tiny_engine_with_clip(&dir)
    })
}

/// A running `lova-fast serve` (stopped on drop), and the token its requests send.
struct Server {
    process: ServeProcess,
    token: Option<String>,
}

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.process
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let token = extra.windows(2).find(|w| w[0] == "--token").map(|w| w[1].to_string());
        Server { process: ServeProcess::start(engine(), extra), token }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn auth(&self, headers: &mut Vec<(String, String)>) {
        if let Some(t) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
    }

    /// (status, body, Retry-After)
    fn request(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Vec<u8>, Option<String>) {
        let mut headers = Vec::new();
        self.auth(&mut headers);
        self.request_with(method, path, body, &headers)
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(String, String)],
    ) -> (u16, Vec<u8>, Option<String>) {
        let url = format!("{}{path}", self.base);
        let agent = Self::agent();
        let result = match (method, body) {
            ("POST", Some((ct, bytes))) => {
                let mut r = agent.post(&url).header("Content-Type", ct);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.send(&bytes[..])
            }
            ("DELETE", _) => {
                let mut r = agent.delete(&url);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.call()
            }
            _ => {
                let mut r = agent.get(&url);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.call()
            }
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let body = response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
        (response.status().as_u16(), body, retry)
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let (status, body, _) = self.request("GET", path, None);
        (status, body)
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn post(&self, query: &str, fields: &[(&str, Part)]) -> (u16, Vec<u8>, Option<String>) {
        let (ct, body) = multipart(fields);
        self.request("POST", &format!("/v1/audio{query}"), Some((&ct, body)))
    }

    /// Posts without waiting; returns the job id.
    fn submit(&self, fields: &[(&str, Part)]) -> String {
        let (status, body, _) = self.post("", fields);
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "queued");
        v["id"].as_str().unwrap().to_string()
    }

    /// Polls the job until `done` says so; panics after `limit`.
    fn wait_for(&self, id: &str, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.json(&format!("/v1/audio/{id}"));
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} stuck at {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_final(&self, id: &str, limit: Duration) -> serde_json::Value {
        self.wait_for(id, limit, |v| matches!(v["status"].as_str(), Some("succeeded" | "failed" | "cancelled")))
    }
}

/// A form field.
enum Part {
    Text(String),
    File(Vec<u8>),
}

fn text(v: impl ToString) -> Part {
    Part::Text(v.to_string())
}

fn file(path: &Path) -> Part {
    Part::File(std::fs::read(path).unwrap())
}

/// A multipart/form-data body.
fn multipart(fields: &[(&str, Part)]) -> (String, Vec<u8>) {
    let boundary = "lova-fast-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, part) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::Text(t) => {
                body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
                body.extend_from_slice(t.as_bytes());
            }
            Part::File(bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"upload.bin\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A features file of `rows` rows cycled from the fixture's (16 rows, 2 s at 8 fps).
fn features_file(dir: &Path, rows: usize) -> PathBuf {
    let full = common::load("tiny/features.safetensors", "features");
    let width = full.shape[1];
    let data: Vec<f32> = (0..rows).flat_map(|r| full.data[(r % full.shape[0]) * width..][..width].to_vec()).collect();
    let path = dir.join(format!("rows{rows}.safetensors"));
    write_features(&path, &HostTensor::new(vec![rows, width], data));
    path
}

fn write_features(path: &Path, t: &HostTensor) {
    lova_fast::weights::write_tensors_atomically(path, &[("features", t)], None).unwrap();
}

fn is_final(v: &serde_json::Value) -> bool {
    matches!(v["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

#[test]
fn concurrent_mixed_lengths_match_infer_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    // 0.5 s to 10 s of features (8 per second), and a video.
    let mut inputs: Vec<PathBuf> = [4, 9, 17, 30, 47, 63, 80].iter().map(|&n| features_file(dir.path(), n)).collect();
    let video = dir.path().join("video.mp4");
    std::fs::copy(fixture("video/h264_0.5s.mp4"), &video).unwrap();
    inputs.push(video);
    // Each seed with its own step count, so that the batch mixes schedules.
    let seeds = [(11u64, 3usize), (12, 5), (13, 4)];
    // (input, seed, steps): 24 jobs from 4 client threads at once.
    let jobs: Vec<(PathBuf, u64, usize)> =
        seeds.iter().flat_map(|&(s, n)| inputs.iter().map(move |i| (i.clone(), s, n))).collect();
    assert_eq!(jobs.len(), 24);
    type Wavs = HashMap<(PathBuf, u64), Vec<u8>>;
    let results: Arc<Mutex<Wavs>> = Default::default();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (server, results, jobs) = (&server, results.clone(), &jobs);
            scope.spawn(move || {
                for (input, seed, steps) in jobs.iter().skip(client).step_by(4) {
                    let field = if input.extension().unwrap() == "mp4" { "video" } else { "features" };
                    let (status, body, _) = server.post(
                        "?wait=true",
                        &[(field, file(input)), ("seed", text(seed)), ("steps", text(steps)), ("cfg", text(5))],
                    );
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    assert_eq!(&body[..4], b"RIFF");
                    results.lock().unwrap().insert((input.clone(), *seed), body);
                }
            });
        }
    });
    // `infer` on the same inputs, one call per seed, each in a folder of its own.
    let results = results.lock().unwrap();
    for (seed, steps) in seeds {
        let out = dir.path().join(format!("seed{seed}"));
        std::fs::create_dir(&out).unwrap();
        let copies: Vec<PathBuf> = inputs
            .iter()
            .map(|i| {
                let c = out.join(i.file_name().unwrap());
                std::fs::copy(i, &c).unwrap();
                c
            })
            .collect();
        let (seed_text, steps_text) = (seed.to_string(), steps.to_string());
        let mut args = vec!["infer", "--weights", s(engine()), "--device", "cpu", "--quiet", "--steps", &steps_text];
        args.extend(["--seed", &seed_text]);
        args.extend(copies.iter().map(|c| s(c)));
        ok(&lova_fast(&args));
        for (input, copy) in inputs.iter().zip(&copies) {
            let want = std::fs::read(copy.with_extension("wav")).unwrap();
            let got = &results[&(input.clone(), seed)];
            assert!(got == &want, "{} seed {seed}: serve's WAV differs from infer's", input.display());
        }
    }
    // The metrics saw the steps and the audio, and the batch held several
    // requests at once (4 clients waiting on their jobs keep it full).
    let (status, metrics) = server.get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("lova_requests_total{status=\"succeeded\"} 24"), "{metrics}");
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mean_requests = value("lova_batch_requests_sum") / value("lova_steps_total");
    assert!(mean_requests > 1.5, "mean requests per step {mean_requests}: the jobs were not batched");
}

#[test]
fn cancel_running_job_and_delete_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let features = features_file(dir.path(), 16);
    let id = server.submit(&[("features", file(&features)), ("steps", text(100000)), ("seed", text(1))]);
    server.wait_for(&id, Duration::from_secs(60), |v| v["status"] == "running" && v["step"].as_u64() > Some(0));
    let (status, _, _) = server.request("DELETE", &format!("/v1/audio/{id}"), None);
    assert_eq!(status, 200);
    let v = server.wait_final(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("DELETE"), "{v}");
    assert_eq!(server.get(&format!("/v1/audio/{id}/content")).0, 409);

    // A finished job's result, deleted: gone.
    let id = server.submit(&[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(server.wait_final(&id, Duration::from_secs(60))["status"], "succeeded");
    assert_eq!(server.get(&format!("/v1/audio/{id}/content")).0, 200);
    assert_eq!(server.request("DELETE", &format!("/v1/audio/{id}"), None).0, 200);
    assert_eq!(server.get(&format!("/v1/audio/{id}/content")).0, 404);
    assert_eq!(server.json(&format!("/v1/audio/{id}"))["status"], "succeeded");
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--max-queue", "1"]);
    let features = features_file(dir.path(), 8);
    let slow = server.submit(&[("features", file(&features)), ("steps", text(100000))]);
    let (status, body, retry) = server.post("", &[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok()));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    server.request("DELETE", &format!("/v1/audio/{slow}"), None);
    server.wait_final(&slow, Duration::from_secs(20));
    // Room again.
    let id = server.submit(&[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(server.wait_final(&id, Duration::from_secs(60))["status"], "succeeded");
}

#[test]
fn every_error_status() {
    let dir = tempfile::tempdir().unwrap();
    // Uploads up to 4000 bytes; a token.
    let server = Server::start(&["--max-upload-mb", "0.004", "--token", "sesame"]);
    let features = features_file(dir.path(), 4);
    let expect = |fields: &[(&str, Part)], want: u16, code: &str, message: &str| {
        let (status, body, _) = server.post("", fields);
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, want, "{text}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(v["error"]["code"], code, "{text}");
        assert!(v["error"]["message"].as_str().unwrap().contains(message), "{text}");
        assert!(!text.contains("lova-fast-serve-"), "the private folder leaks: {text}");
    };
    // 400: not a video (FFmpeg's reason), no input, both inputs, unknown field, bad number.
    expect(&[("video", Part::File(b"hello, not a video".to_vec()))], 400, "unreadable_media", "ffprobe");
    expect(&[("seed", text(1))], 400, "bad_form", "missing the input");
    expect(
        &[("features", file(&features)), ("video", file(&fixture("video/h264_0.5s.mp4")))],
        400,
        "bad_form",
        "exactly one",
    );
    expect(&[("features", file(&features)), ("colour", text("red"))], 400, "bad_form", "unknown field");
    expect(&[("features", file(&features)), ("steps", text("many"))], 400, "bad_form", "steps");
    expect(&[("video", file(&fixture("video/zero_length.mp4")))], 400, "unreadable_media", "");
    // 413: over --max-upload-mb.
    expect(&[("video", file(&fixture("video/h264_25fps.mp4")))], 413, "too_large", "");
    // 422: too long, wrong width, NaN, bad settings.
    expect(&[("video", file(&fixture("video/too_long_150s.mp4")))], 422, "too_long", "");
    let wide = dir.path().join("wide.safetensors");
    write_features(&wide, &HostTensor::new(vec![4, 100], vec![0.1; 400]));
    expect(&[("features", file(&wide))], 422, "invalid_input", "");
    let nan = dir.path().join("nan.safetensors");
    let mut data = vec![0.1; 4 * 128];
    data[5] = f32::NAN;
    write_features(&nan, &HostTensor::new(vec![4, 128], data));
    expect(&[("features", file(&nan))], 422, "invalid_input", "");
    expect(&[("features", file(&features)), ("steps", text(0))], 422, "invalid_input", "");
    expect(&[("features", file(&features)), ("cfg", text("nan"))], 422, "invalid_input", "");
    expect(&[("features", file(&features)), ("format", text("mp4"))], 422, "invalid_input", "mp4");
    // 401: no token, wrong token; /healthz stays open.
    let (ct, body) = multipart(&[("features", file(&features))]);
    for headers in [vec![], vec![("Authorization".to_string(), "Bearer wrong".to_string())]] {
        let (status, _, _) = server.request_with("POST", "/v1/audio", Some((&ct, body.clone())), &headers);
        assert_eq!(status, 401);
        assert_eq!(server.request_with("GET", "/metrics", None, &headers).0, 401);
    }
    assert_eq!(server.request_with("GET", "/healthz", None, &[]).0, 200);
    // 404: unknown id, on every route.
    for path in ["/v1/audio/nope", "/v1/audio/nope/content", "/v1/audio/nope/events"] {
        assert_eq!(server.get(path).0, 404, "{path}");
    }
    assert_eq!(server.request("DELETE", "/v1/audio/nope", None).0, 404);
    // Nothing was queued by any of these; a good request still works.
    let (status, body, _) = server.post("?wait=true", &[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn results_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keep-results", "1"]);
    let features = features_file(dir.path(), 8);
    let id = server.submit(&[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(server.wait_final(&id, Duration::from_secs(60))["status"], "succeeded");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(server.get(&format!("/v1/audio/{id}/content")).0, 404);
}

fn sigterm(server: &Server) {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    let rc = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// Waits for the server to exit; its exit code.
fn exit_code(server: &mut Server, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            // Let the stderr reader catch up with the last lines.
            std::thread::sleep(Duration::from_millis(200));
            return status.code();
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_finishes_accepted_jobs_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&["--grace", "60"]);
    let features = features_file(dir.path(), 8);
    let ids: Vec<String> =
        (0..5).map(|_| server.submit(&[("features", file(&features)), ("steps", text(40))])).collect();
    sigterm(&server);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body, _) = server.post("", &[("features", file(&features)), ("steps", text(2))]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(server.get("/readyz").0, 503);
    assert_eq!(exit_code(&mut server, Duration::from_secs(120)), Some(0), "{}", server.log());
    let log = server.log();
    for id in &ids {
        assert!(log.contains(&format!("job {id} succeeded")), "{id} did not succeed: {log}");
    }
}

#[test]
fn sigterm_cancels_what_the_grace_period_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&["--grace", "1"]);
    let features = features_file(dir.path(), 8);
    let ids: Vec<String> =
        (0..3).map(|_| server.submit(&[("features", file(&features)), ("steps", text(100000))])).collect();
    server.wait_for(&ids[0], Duration::from_secs(60), |v| v["status"] == "running");
    sigterm(&server);
    assert_eq!(exit_code(&mut server, Duration::from_secs(60)), Some(0), "{}", server.log());
    let log = server.log();
    for id in &ids {
        assert!(log.contains(&format!("job {id} cancelled: server shutting down")), "{id}: {log}");
    }
}

#[test]
fn events_stream_steps_and_ends_with_the_final_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--no-batching"]);
    let features = features_file(dir.path(), 8);
    // A blocker keeps the watched job queued until the stream is open.
    let blocker = server.submit(&[("features", file(&features)), ("steps", text(100000))]);
    let id = server.submit(&[("features", file(&features)), ("steps", text(5))]);
    let url = format!("{}/v1/audio/{id}/events", server.base);
    let response = Server::agent().get(&url).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut reader = BufReader::new(response.into_body().into_reader());
    server.request("DELETE", &format!("/v1/audio/{blocker}"), None);
    let mut text = String::new();
    // Ends when the server closes the stream (bounded by the agent's timeout).
    reader.read_to_string(&mut text).unwrap();
    let events: Vec<(String, serde_json::Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let steps: Vec<u64> = events
        .iter()
        .filter(|(e, d)| e == "progress" && d["stage"] == "sampling")
        .map(|(_, d)| d["done"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5], "{text}");
    let (last_event, last) = events.last().unwrap();
    assert_eq!(last_event, "status");
    assert!(is_final(last) && last["status"] == "succeeded", "{text}");
    assert_eq!(events[0].1["status"], "queued", "{text}");
}

#[test]
fn mp4_result_is_the_video_with_the_audio_muxed_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let fields = [
        ("video", file(&fixture("video/h264_0.5s.mp4"))),
        ("format", text("mp4")),
        ("steps", text(2)),
        ("seed", text(3)),
    ];
    let (status, body, _) = server.post("?wait=true", &fields);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[4..8], b"ftyp", "not an mp4");
    let out = dir.path().join("out.mp4");
    std::fs::write(&out, &body).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(streams.contains("video") && streams.contains("audio"), "{streams}");
}
