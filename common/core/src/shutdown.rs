//! One shutdown policy for every process: a [`CancellationToken`] cancelled on the
//! first SIGTERM or SIGINT, after which the service drains (stops taking work,
//! flushes what it holds) within one grace period; a second signal exits at once,
//! for the operator who does not want to wait.
//!
//! Every loop selects on the token; servers use it for graceful shutdown; whoever
//! holds buffered data flushes it before returning. A task that fails for good
//! cancels the same token (see [`Shutdown::fail`]) instead of returning early on
//! its own, so the rest of the service drains in the same order as on a signal.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a service may take to drain after the first signal, unless configured:
/// long enough for a last write to a slow store, short enough for an init system's
/// stop timeout (systemd's default is 90 s, Kubernetes' 30 s).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Exit status after a second signal: the conventional 128 + SIGINT.
const FORCED_EXIT: i32 = 130;

/// The process-wide shutdown signal and the reason it fired.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Shutdown {
    /// A shutdown that only [`fail`](Self::fail) or [`cancel`](Self::cancel) trigger
    /// (tests, embedded services).
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown triggered by SIGTERM or SIGINT; a second signal exits the process
    /// at once. Must be called inside a tokio runtime.
    pub fn on_signals() -> Self {
        let me = Self::new();
        let token = me.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining (a second signal exits at once)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal: exiting without draining");
            std::process::exit(FORCED_EXIT);
        });
        me
    }

    /// The token every loop ends on.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops the service normally.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Stops the service because a part failed for good; the first reason is kept
    /// for [`failure`](Self::failure) and the exit status.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(reason = %reason, "stopping: a part of the service failed");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(reason);
        }
        self.token.cancel();
    }

    /// Why the service stopped, if a part failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Runs a server (or any task that should only end on shutdown) and, when it
    /// fails, stops the whole service through [`fail`](Self::fail) so the rest
    /// drains in the usual order instead of the caller returning early.
    pub fn spawn_server<E, F>(&self, name: &'static str, server: F) -> tokio::task::JoinHandle<()>
    where
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = server.await {
                me.fail(format!("{name}: {e}"));
            }
        })
    }

    /// Waits until shutdown begins.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT
/// (a second signal exits at once). Must be called inside a tokio runtime.
pub fn token_on_signals() -> CancellationToken {
    Shutdown::on_signals().token()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        // Without signal handlers the process can still be stopped by
        // SIGKILL; waiting forever keeps the service running.
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_cancels_and_keeps_the_first_reason() {
        let s = Shutdown::new();
        assert!(!s.is_cancelled() && s.failure().is_none());
        s.fail("gRPC server: address in use");
        s.fail("second");
        assert!(s.token().is_cancelled());
        assert_eq!(s.failure().as_deref(), Some("gRPC server: address in use"));
        let plain = Shutdown::new();
        assert!(!plain.is_cancelled());
        plain.cancel();
        assert!(plain.is_cancelled() && plain.failure().is_none());
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_server_stops_the_service_with_its_reason() {
        let s = Shutdown::new();
        let task = s.spawn_server("http", async { Err::<(), _>("address in use") });
        task.await.expect("join");
        assert!(s.is_cancelled());
        assert_eq!(s.failure().as_deref(), Some("http: address in use"));
        let ok = Shutdown::new();
        ok.spawn_server("http", async { Ok::<(), String>(()) })
            .await
            .expect("join");
        assert!(!ok.is_cancelled());
    }
}
