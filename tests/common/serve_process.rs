//! A `lova-fast serve` child process on a free loopback port, for the tests
//! that talk to it over HTTP (tests/serve.rs, tests/serve_page.rs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `lova-fast serve`, ready (its `/readyz` answered 200). On drop:
/// SIGTERM twice (the second cancels what runs), so that the server removes
/// its private folder; SIGKILL if it is still there after a few seconds.
pub struct ServeProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, from the line the server prints.
    pub base: String,
    stderr: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `serve --weights ENGINE --port 0 --device cpu EXTRA...` and waits
    /// (at most a minute each) for its address and for it to be ready.
    pub fn start(engine: &Path, extra: &[&str]) -> ServeProcess {
        let bin = std::env::var_os("LOVA_FAST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lova-fast").into());
        let mut child = Command::new(bin)
            .args(["serve", "--weights", super::s(engine), "--port", "0", "--device", "cpu"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lova-fast serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, log) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = ServeProcess { child, base: String::new(), stderr };
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no address: {}", server.log()));
        server.base = line.strip_prefix("listening on ").expect("the address line").to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = || agent.get(format!("{}/readyz", server.base)).call().is_ok_and(|r| r.status() == 200);
        while !ready() {
            assert!(Instant::now() < deadline, "never ready: {}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        for _ in 0..2 {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
