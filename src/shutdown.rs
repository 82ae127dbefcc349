//! The shutdown sequence, on SIGTERM or SIGINT, all within `BRIDGE_SHUTDOWN_TIMEOUT_MS`:
//!
//! 1. **Not ready**: readiness turns 503 at once (and the `ready` gauge 0).
//! 2. **Keep serving** for `BRIDGE_SHUTDOWN_DELAY_MS`, so load balancers notice and stop
//!    sending before the listener closes.
//! 3. **Stop accepting, finish in flight**: the public server stops taking connections and
//!    waits for the requests it has.
//! 4. **Flush**: in kafka mode the producer sends what requests answered 503 left queued; in
//!    spool mode the forwarder gets the rest of the budget to drain the spool, and what it
//!    cannot send stays on disk for the next start.
//! 5. **Exit 0**: the admin port closes last.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::ops::{Health, Metrics};

/// The steps above, for one application.
#[derive(Debug)]
pub struct Sequence<'a> {
    pub delay: Duration,
    pub budget: Duration,
    pub health: &'a Health,
    pub metrics: &'a Metrics,
    pub backend: &'a Backend,
}

impl Sequence<'_> {
    /// Runs steps 1 to 4; `stop_serving` is step 3 for the server at hand.
    pub async fn run(self, stop_serving: impl Future<Output = ()>) {
        let started = Instant::now();
        self.health.start_draining();
        self.metrics.ready.set(0);
        tracing::info!(
            delay_ms = self.delay.as_millis() as u64,
            "Shutdown started: not ready, still serving until load balancers notice"
        );
        tokio::time::sleep(self.delay).await;

        tracing::info!("Stopped accepting; finishing in-flight requests");
        let remaining = self.budget.saturating_sub(started.elapsed());
        let drained = tokio::time::timeout(remaining, stop_serving).await;
        if drained.is_err() {
            tracing::error!("In-flight requests did not finish within BRIDGE_SHUTDOWN_TIMEOUT_MS");
        }

        // In kafka mode everything answered 202 is already acknowledged; this flush sends what
        // was queued for requests that were answered 503 or whose senders went away, so fewer
        // come back. In spool mode it gives the forwarder the rest of the budget to drain the
        // spool; what it cannot send stays on disk for the next start.
        let remaining = self
            .budget
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        match self.backend.flush(remaining).await {
            Ok(()) => tracing::info!("Producer flushed"),
            Err(error) => tracing::warn!(error = %error, "Flush incomplete"),
        }
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "Shutdown complete"
        );
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
