//! Delivery: one worker per receiver sends its notifications in order, retries
//! failures with backoff and records every attempt.
//!
//! Order matters per receiver (a resolved notice must not overtake its firing one), and
//! a receiver that is down must not hold back the others, hence one queue and one task
//! per receiver. Every attempt writes one `alert_deliveries` row per alert it carried;
//! successful rows are what a restarted alerter rebuilds its notification log from, so
//! a notification that was queued or retrying when the process stopped is sent again
//! after the restart rather than lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcdmon_alert::AlertState;
use etcdmon_core::retry::RetryPolicy;
use etcdmon_storage::{AlertDeliveryRow, AlertStore};
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::metrics::AlerterMetrics;
use crate::notification::{Notification, Notifier, NotifyError, Reason};

/// Waits between attempts to record a delivery in an unavailable store, and how
/// many attempts: a delivery not recorded is sent again after a restart.
const RECORD_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(3));
const RECORD_ATTEMPTS: usize = 5;

/// Hands notifications to the per-receiver workers.
#[derive(Clone)]
pub struct Sender {
    queues: HashMap<String, mpsc::Sender<Notification>>,
    metrics: AlerterMetrics,
}

/// Shared by the workers.
struct Worker {
    receiver: String,
    notifier: Arc<dyn Notifier>,
    store: Arc<dyn AlertStore>,
    policy: DeliveryConfig,
    metrics: AlerterMetrics,
}

impl Sender {
    /// Starts one worker per notifier; they stop at `shutdown` (an attempt in progress
    /// finishes or times out first).
    pub fn start(
        notifiers: &HashMap<String, Arc<dyn Notifier>>,
        store: Arc<dyn AlertStore>,
        policy: &DeliveryConfig,
        metrics: AlerterMetrics,
        shutdown: CancellationToken,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let mut queues = HashMap::new();
        let mut tasks = Vec::new();
        for (name, notifier) in notifiers {
            let (tx, rx) = mpsc::channel(policy.queue);
            queues.insert(name.clone(), tx);
            let worker = Worker {
                receiver: name.clone(),
                notifier: notifier.clone(),
                store: store.clone(),
                policy: policy.clone(),
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(worker.run(rx, shutdown.clone())));
        }
        (Self { queues, metrics }, tasks)
    }

    /// Queues `n` for its receiver without waiting. A full queue drops it (counted and
    /// logged); it is sent again after a restart since no delivery of it is recorded.
    pub fn send(&self, n: Notification) {
        let Some(queue) = self.queues.get(&n.receiver) else {
            tracing::error!(receiver = %n.receiver, "no such receiver; notification dropped");
            return;
        };
        let receiver = n.receiver.clone();
        if let Err(e) = queue.try_send(n) {
            self.metrics
                .notifications
                .with_label_values(&[&receiver, "dropped"])
                .inc();
            tracing::error!(%receiver, error = %e, "delivery queue full or closed; notification dropped");
        }
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Notification>, shutdown: CancellationToken) {
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            if !self.deliver(&n, &shutdown).await {
                return;
            }
        }
    }

    /// Delivers with retries; false when interrupted by shutdown.
    async fn deliver(&self, n: &Notification, shutdown: &CancellationToken) -> bool {
        let mut backoff =
            RetryPolicy::new(self.policy.initial_backoff, self.policy.max_backoff).backoff();
        for attempt in 1..=self.policy.max_attempts {
            let started_ms = now_ms();
            let timer = std::time::Instant::now();
            let result = self.notifier.notify(n).await;
            self.metrics
                .delivery_seconds
                .with_label_values(&[&self.receiver])
                .observe(timer.elapsed().as_secs_f64());
            let last = attempt == self.policy.max_attempts;
            let (outcome, detail, wait) = match &result {
                Ok(detail) => ("ok", detail.clone(), None),
                Err(e @ NotifyError::Retryable { retry_after, .. }) if !last => {
                    // The receiver's Retry-After, when it gave one (with up to 20%
                    // more, so many alerters do not return in step); else our
                    // backoff, which has its own jitter.
                    let wait = match retry_after {
                        Some(hint) => (*hint)
                            .min(self.policy.max_retry_after)
                            .mul_f64(rand::rng().random_range(1.0..1.2)),
                        None => backoff.next_wait(),
                    };
                    ("retry", e.to_string(), Some(wait))
                }
                Err(e) => ("failed", e.to_string(), None),
            };
            self.metrics
                .notifications
                .with_label_values(&[&self.receiver, outcome])
                .inc();
            match outcome {
                "ok" => {
                    tracing::info!(receiver = %self.receiver, group = %n.group_key, reason = n.reason.as_str(), alerts = n.alerts.len(), attempt, "notified")
                }
                _ => {
                    tracing::warn!(receiver = %self.receiver, group = %n.group_key, attempt, outcome, %detail, "notification failed")
                }
            }
            self.record(n, started_ms, attempt, outcome, &detail).await;
            let Some(wait) = wait else {
                return true;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        true
    }

    /// Records one attempt, one row per alert. A failure to record is logged: the
    /// notification then counts as not delivered after a restart and is sent again
    /// (at least once rather than at most once).
    async fn record(
        &self,
        n: &Notification,
        attempt_ms: i64,
        attempt: u32,
        outcome: &str,
        detail: &str,
    ) {
        let rows: Vec<AlertDeliveryRow> = n
            .alerts
            .iter()
            .map(|a| AlertDeliveryRow {
                receiver: self.receiver.clone(),
                fingerprint: a.fingerprint.clone(),
                transition: a.transition,
                state: match (a.status, n.reason) {
                    (AlertState::Resolved, _) => "resolved",
                    (AlertState::Firing, Reason::Acknowledged) => "acknowledged",
                    // A flapping report is not the firing notification of the episode.
                    (AlertState::Firing, Reason::Flapping) => "flapping",
                    (AlertState::Firing, _) => "firing",
                }
                .to_owned(),
                group_key: n.group_key.clone(),
                reason: n.reason.as_str().to_owned(),
                attempt_ms,
                attempt,
                outcome: outcome.to_owned(),
                detail: detail.chars().take(1000).collect(),
            })
            .collect();
        let mut backoff = RECORD_RETRY.backoff();
        for _ in 0..RECORD_ATTEMPTS {
            match self.store.record_deliveries(&rows).await {
                Ok(()) => return,
                Err(e) if e.is_retryable() => tokio::time::sleep(backoff.next_wait()).await,
                Err(e) => {
                    self.metrics.record_failures.inc();
                    tracing::error!(receiver = %self.receiver, error = %e, "record delivery");
                    return;
                }
            }
        }
        self.metrics.record_failures.inc();
        tracing::error!(receiver = %self.receiver, "could not record a delivery; it may be sent again after a restart");
    }
}

/// A receiver that writes notifications to the log (`[[receivers]] log = {}`).
pub struct LogNotifier;

#[async_trait::async_trait]
impl Notifier for LogNotifier {
    fn kind(&self) -> &'static str {
        "log"
    }

    async fn notify(&self, n: &Notification) -> Result<String, NotifyError> {
        for a in &n.alerts {
            tracing::warn!(
                target: "etcdmon::alert",
                status = a.status.as_str(),
                reason = n.reason.as_str(),
                rule = a.labels.get("rule").map(String::as_str).unwrap_or(""),
                cluster = a.labels.get("cluster").map(String::as_str).unwrap_or(""),
                member = a.labels.get("member").map(String::as_str).unwrap_or(""),
                summary = a.annotations.get("summary").map(String::as_str).unwrap_or(""),
                "alert"
            );
        }
        Ok("logged".into())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
