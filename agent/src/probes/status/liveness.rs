//! Event-driven detection of a member that exits: a long-lived etcd Watch stream.
//!
//! Polling finds a dead member at the next status round, up to a full interval later.
//! A watch on one key holds an HTTP/2 stream open on the member's gRPC port; when the
//! etcd process exits (crash, kill -9, restart) the kernel closes its sockets and the
//! stream ends at once, within a millisecond on the same host and one round trip
//! across the network. That wakes the status collector, whose immediate round then
//! reports the member as refused, and the agent sends that report without waiting for
//! its batch interval. When the watch can be opened again the member is back, and the
//! collector is woken again so the recovery is seen at once too.
//!
//! A hung member (SIGSTOP, a stuck disk) keeps its connection open and is found by the
//! status round's timeout instead; HTTP/2 keep-alive pings (5 s) end a silently dead
//! connection. The watched key is the status collector's health key, so the watch costs
//! etcd one idle watcher and no traffic.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use etcdmon_core::retry::RetryPolicy;
use tokio::sync::Notify;

/// Waits before trying to open the watch again, only while it is broken (a healthy
/// member costs nothing): without jitter, as the agent is its member's only watcher
/// of this kind, and at most 200 ms apart, because the first watch that opens is how
/// the agent learns that a restarted member is back, and the recovery notice waits
/// for it. A refused attempt is one loopback connect (a few microseconds of CPU);
/// one to an unreachable host waits for the client's connect timeout instead of
/// spinning.
const RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(50), Duration::from_millis(200)).without_jitter();
/// Longest wait for the one re-open attempt made before waking the status round.
const REOPEN_WAIT: Duration = Duration::from_millis(200);

/// Keeps a watch on `key` open through `client` and notifies `wake` whenever it
/// breaks or is established again. Runs until its task is aborted.
pub async fn watch(client: Client, key: String, wake: Arc<Notify>) {
    let mut backoff = RETRY.backoff();
    let mut was_broken = false;
    loop {
        let mut watch_client = client.watch_client();
        match watch_client.watch(key.as_bytes(), None).await {
            Ok(mut stream) => {
                backoff.reset();
                if was_broken {
                    tracing::debug!("liveness watch re-established");
                    wake.notify_one();
                }
                // The stream holds the request side too, so the watch stays open as
                // long as we read. Events on the key are irrelevant; only the end matters.
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "liveness watch broke");
                            break;
                        }
                    }
                }
                was_broken = true;
                // Try to re-open once before waking the status round: that request
                // makes the shared channel drop the dead connection and dial again,
                // so the round that follows reports what a new connection meets
                // (`refused` for an exited member) instead of racing the old
                // connection's reset. Bounded: a silent network must not hold the wake.
                let reopen = watch_client.watch(key.as_bytes(), None);
                if let Ok(Ok(stream)) = tokio::time::timeout(REOPEN_WAIT, reopen).await {
                    drop(stream);
                }
                wake.notify_one();
            }
            Err(e) => {
                tracing::trace!(error = %e, "liveness watch not open");
                was_broken = true;
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}
