//! SIGTERM/SIGINT: stop admitting, let the jobs finish within the grace
//! period, cancel the rest, close the scheduler's channel. No accepted job is
//! dropped silently: each one ends succeeded, failed or cancelled (with a
//! reason), and each final status is logged on stderr.

use std::time::{Duration, Instant};

use super::api::AppState;

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Drains the server: new jobs get 503 from now on; queued and running jobs
/// have `grace` to finish, then are cancelled; the job channel is closed.
pub async fn drain(state: &AppState, grace: Duration) {
    state.begin_shutdown();
    let unfinished = state.store.unfinished();
    eprintln!("shutting down: not admitting new jobs; {unfinished} job(s) have {} s to finish", grace.as_secs_f64());
    let deadline = Instant::now() + grace;
    let finished = async {
        while state.store.unfinished() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // A second signal is someone who does not want to wait: cancel now.
    tokio::select! {
        _ = finished => {}
        _ = signal() => eprintln!("shutting down: second signal, not waiting for the grace period"),
    }
    let reason = format!("server shutting down: the grace period of {} s ended", grace.as_secs_f64());
    let cancelled = state.store.cancel_all(&reason);
    if cancelled > 0 {
        eprintln!("shutting down: cancelling {cancelled} job(s)");
    }
    state.close_jobs();
}
