//! One shutdown signal per process: a [`CancellationToken`] cancelled on
//! SIGTERM or SIGINT. Every loop selects on it; servers use it for graceful
//! shutdown; whoever holds buffered data flushes it before returning.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGTERM or
/// SIGINT. Must be called inside a tokio runtime.
pub fn token_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
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
