//! The web page of `lova-fast serve` in a real headless browser: Chromium
//! driven by chromedriver over its W3C WebDriver HTTP API (plain JSON over
//! loopback with `ureq`). The server runs the tiny model on the CPU.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install -y chromium
//! chromium-driver`; CI installs them). Without them the tests fail saying so,
//! unless `LOVA_SKIP_BROWSER=1`, when they print SKIPPED. `CHROME_BIN` and
//! `CHROMEDRIVER` name other binaries. Every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::serve_process::ServeProcess;
use common::{fixture, s};
use serde_json::{Value, json};

/// The tiny engine with CLIP, converted once per test run.
fn engine() -> &'static Path {
    static ENGINE: OnceLock<PathBuf> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-page-engine");
        std::fs::create_dir_all(&dir).unwrap();
        common::tiny_engine_with_clip(&dir)
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A running `lova-fast serve` (stopped on drop).
struct Server(ServeProcess);

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.0
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server(ServeProcess::start(engine(), extra))
    }

    /// (status, headers we look at, body) of a GET without a token.
    fn get(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        let mut response = agent().get(format!("{}{path}", self.base)).call().expect("GET");
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), headers, body)
    }
}

/// Chromium and chromedriver, or `None` (after printing SKIPPED) when they are
/// missing and `LOVA_SKIP_BROWSER=1`. Missing without that is a failure.
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let first = |var: &str, candidates: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        candidates.iter().map(PathBuf::from).find(|p| p.is_file())
    };
    let chromium = first("CHROME_BIN", &["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]);
    let driver = first("CHROMEDRIVER", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let missing = [(c.is_none(), "chromium"), (d.is_none(), "chromedriver")]
                .iter()
                .filter(|m| m.0)
                .map(|m| m.1)
                .collect::<Vec<_>>()
                .join(" and ");
            if std::env::var("LOVA_SKIP_BROWSER").as_deref() == Ok("1") {
                common::loud(&format!("SKIPPED {test}: {missing} not found (LOVA_SKIP_BROWSER=1)"));
                return None;
            }
            panic!(
                "{test}: {missing} not found. Install them (Debian/Ubuntu: `apt-get install -y chromium \
                 chromium-driver`; CI does), point CHROME_BIN / CHROMEDRIVER at them, or set \
                 LOVA_SKIP_BROWSER=1 to skip the browser tests"
            );
        }
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    url: String,
    session: String,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path, width: u32, height: u32) -> Browser {
        // A free port for chromedriver (it has no "pick one and say which").
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let mut browser = Browser { driver, url: format!("http://127.0.0.1:{port}"), session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = agent()
                .get(format!("{}/status", browser.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let created = browser.call("POST", "/session", Some(capabilities));
        browser.session = created["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// A WebDriver command; returns its `value`, panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let response = match method {
            "POST" => agent()
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
            "DELETE" => agent().delete(&url).call(),
            _ => agent().get(&url).call(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = response.body_mut().with_config().limit(64 << 20).read_to_string().expect("WebDriver reply");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        if v["value"]["error"].is_string() {
            panic!("{method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}; page: {}", self.page_text())).to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.session("POST", &format!("/element/{id}/click"), None);
    }

    /// Types `text` into a field (for a file input: gives it that file).
    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.session("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    /// Empties a text or number field.
    fn clear(&self, css: &str) {
        let id = self.find(css);
        self.session("POST", &format!("/element/{id}/clear"), None);
    }

    fn script(&self, body: &str) -> Value {
        self.session("POST", "/execute/sync", Some(json!({"script": body, "args": []})))
    }

    /// Runs `body` until it returns something other than null/false; panics after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, body: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.script(body);
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {limit:?} for {what}; page: {}", self.page_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn page_text(&self) -> Value {
        self.script("return document.body.innerText")
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.session("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = agent().delete(format!("{}/session/{}", self.url, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver screenshots), padding and whitespace ignored.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut bits, mut acc) = (Vec::with_capacity(text.len() * 3 / 4), 0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Where test artifacts go: `LOVA_TEST_ARTIFACTS`, else the target folder.
fn artifact(name: &str) -> PathBuf {
    let dir = std::env::var_os("LOVA_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn page_makes_plays_draws_and_cancels() {
    let Some((chromium, chromedriver)) = browser("page_makes_plays_draws_and_cancels") else { return };
    let server = Server::start(&[]);

    // The page and its files: open, with a strict CSP, and nothing else leaks out.
    let (status, headers, html) = server.get("/");
    assert_eq!(status, 200);
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(header("content-type").starts_with("text/html"), "{headers:?}");
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'") && csp.contains("media-src 'self' blob:"), "{csp}");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page must not load anything from elsewhere");
    for path in ["/page.js", "/page.css"] {
        let (status, _, body) = server.get(path);
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} refers to another site");
    }

    let browser = Browser::start(&chromium, &chromedriver, 1280, 1200);
    browser.goto(&format!("{}/", server.base));
    assert_eq!(browser.script("return document.title"), json!("lova-fast: sound for your videos"));

    // One video, 4 steps, seed 7, the video with its soundtrack.
    browser.type_into("#seed", "7");
    browser.type_into("#steps", "4");
    browser.click("#format option[value=mp4]");
    let video = fixture("video/h264_0.5s.mp4").canonicalize().unwrap();
    browser.type_into("#files", s(&video));
    browser.click("#submit");

    // Completion, as the page's own progress UI shows it (fed by the job's events).
    let status = browser.wait_for(
        "the job to finish",
        Duration::from_secs(240),
        "const li = document.querySelector('li.job'); \
         return li && ['succeeded', 'failed', 'cancelled', 'refused'].includes(li.dataset.status) ? li.dataset.status : null;",
    );
    assert_eq!(status, json!("succeeded"), "page: {}\nserver: {}", browser.page_text(), server.log());
    let card = browser.script(
        "const li = document.querySelector('li.job'); return {progress: li.querySelector('progress').value, \
         status: li.querySelector('.job-status').textContent, seed: li.querySelector('.job-seed').textContent, \
         link: li.querySelector('.job-result a').getAttribute('href'), download: li.querySelector('.job-result a').download};",
    );
    assert_eq!(card["progress"].as_f64(), Some(1.0), "{card}");
    assert_eq!(card["status"], json!("Done"), "{card}");
    assert!(card["seed"].as_str().unwrap().contains("Seed 7"), "{card}");
    assert!(card["link"].as_str().unwrap().starts_with("blob:"), "{card}");
    assert!(card["download"].as_str().unwrap().ends_with(".mp4"), "{card}");

    // The muxed video plays in the page, 0.5 s long.
    let duration = browser.wait_for(
        "the video's metadata",
        Duration::from_secs(30),
        "const v = document.querySelector('li.job video'); return v && v.readyState >= 1 ? v.duration : null;",
    );
    let duration = duration.as_f64().unwrap();
    assert!((duration - 0.5).abs() <= 0.1, "video duration {duration} s");

    // The audio picture was drawn: many pixels unlike the first one.
    let drawn = browser.wait_for(
        "the audio picture",
        Duration::from_secs(30),
        "const c = document.querySelector('li.job canvas[data-drawn]'); if (!c) return null; \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
         for (let i = 0; i < d.length; i += 4) if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) n++; \
         return {changed: n, total: d.length / 4};",
    );
    let (changed, total) = (drawn["changed"].as_f64().unwrap(), drawn["total"].as_f64().unwrap());
    assert!(changed > 0.05 * total, "the canvas is (nearly) blank: {drawn}");

    // A second job of many steps, cancelled from its card's button.
    browser.clear("#steps");
    browser.type_into("#steps", "100000");
    browser.type_into("#files", s(&video));
    browser.click("#submit");
    browser.wait_for(
        "the second job to be queued",
        Duration::from_secs(60),
        "const li = document.querySelectorAll('li.job'); \
         return li.length === 2 && li[0].dataset.id && ['queued', 'running'].includes(li[0].dataset.status);",
    );
    browser.click("li.job:first-child .job-cancel");
    let status = browser.wait_for(
        "the cancel",
        Duration::from_secs(60),
        "const li = document.querySelector('li.job'); \
         return li && ['succeeded', 'failed', 'cancelled'].includes(li.dataset.status) ? li.dataset.status : null;",
    );
    assert_eq!(status, json!("cancelled"), "page: {}", browser.page_text());
    let text = browser.script("return document.querySelector('li.job .job-status').textContent");
    assert_eq!(text, json!("Cancelled"));

    // The finished page, for the record (and the README).
    browser.script("window.scrollTo(0, 0)");
    let png = browser.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    let path = artifact("serve-page-screenshot.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    common::loud(&format!("serve_page: screenshot written to {}", path.display()));

    // A phone-sized window: one column, nothing wider than the screen.
    browser.session("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
    let overflow = browser.script("return document.documentElement.scrollWidth - document.documentElement.clientWidth");
    assert!(overflow.as_i64().unwrap() <= 0, "the page is wider than a phone's window by {overflow} px");
}

#[test]
fn page_asks_for_the_token_and_says_what_went_wrong() {
    let Some((chromium, chromedriver)) = browser("page_asks_for_the_token_and_says_what_went_wrong") else { return };
    let token = "page-test-token-5b1";
    let server = Server::start(&["--token", token]);
    // The page is public; the API is not.
    assert_eq!(server.get("/").0, 200);
    assert_eq!(server.get("/page.js").0, 200);
    assert_eq!(server.get("/v1/audio/nope").0, 401);

    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.mp4");
    std::fs::write(&notes, "these are notes, not a video\n").unwrap();

    let browser = Browser::start(&chromium, &chromedriver, 1024, 900);
    browser.goto(&format!("{}/", server.base));
    browser.type_into("#files", s(&notes));
    browser.click("#submit");

    // A 401: the page asks for the token once, then sends the upload again with it.
    browser.wait_for(
        "the token form",
        Duration::from_secs(30),
        "return !document.getElementById('token-form').hidden;",
    );
    let why = browser.script("return document.getElementById('token-why').textContent");
    assert!(why.as_str().unwrap().contains("needs an access token"), "{why}");
    browser.type_into("#token", token);
    browser.click("#token-save");

    // The server's 400, in plain words, on the card and in the page's alert.
    browser.wait_for(
        "the refusal",
        Duration::from_secs(30),
        "const li = document.querySelector('li.job'); return li && li.dataset.status === 'refused';",
    );
    let shown = browser.script(
        "return {alert: document.getElementById('error').textContent, card: document.querySelector('li.job .job-error').textContent, \
         stored: sessionStorage.getItem('lova-fast-token'), url: location.href, form_hidden: document.getElementById('token-form').hidden};",
    );
    let alert = shown["alert"].as_str().unwrap();
    assert!(alert.starts_with("notes.mp4: This file could not be read as a video"), "{shown}");
    assert!(shown["card"].as_str().unwrap().starts_with("This file could not be read as a video"), "{shown}");
    assert!(!alert.contains("/tmp"), "the message names a private path: {alert}");
    // Kept in the tab, never in the URL.
    assert_eq!(shown["stored"], json!(token));
    assert!(!shown["url"].as_str().unwrap().contains(token), "{shown}");
    assert_eq!(shown["form_hidden"], json!(true));
}
