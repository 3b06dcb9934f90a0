//! Retention: every `storage.retention_interval`, the store drops what is older
//! than `storage.retention` (partitions on ClickHouse, rows on SQLite).

use std::sync::Arc;
use std::time::Duration;

use etcdmon_storage::Storage;
use tokio_util::sync::CancellationToken;

/// Applies retention every `interval` until `shutdown`; a failed round is logged
/// and retried at the next.
pub async fn run(storage: Arc<dyn Storage>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match storage.apply_retention(crate::now_ms()).await {
            Ok(out) => tracing::info!(removed = ?out.removed, "retention applied"),
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying next interval"),
        }
    }
}
