//! From rule transitions to alert candidates on the bus (NATS JetStream, or the
//! in-process channel of `etcdmon up`).
//!
//! ```text
//! rules (1 s) --Transition--> to_candidate --> Outbox (bounded, in order) --> JetStream
//! ```
//!
//! Each candidate carries labels (cluster, member, rule, severity, ...),
//! annotations (summary, description, runbook URL), a stable fingerprint and
//! a transition number; its message id (`fingerprint-transition-state`) lets
//! JetStream store a retried publish once. While NATS is down the outbox
//! keeps candidates (up to `alerting.outbox_bytes`, oldest dropped and
//! counted) and publishes them in order when it returns. The collector does
//! not need NATS to start: the publisher connects on first use.

use crate::metrics::CollectorMetrics;
use crate::now_ms;
use crate::rules::engine::Transition;
use etcdmon_alert::AlertCandidate;
use etcdmon_bus::jetstream::{JetStreamBus, JetStreamConfig, JetStreamPublisher};
use etcdmon_bus::outbox::{OutboxSender, OutboxStats};
use etcdmon_bus::{BusError, Publisher};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where alert candidates go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// NATS JetStream settings; when absent, transitions are only logged
    /// and counted.
    pub jetstream: Option<JetStreamConfig>,
    /// Memory for candidates waiting while NATS is unreachable; beyond it
    /// the oldest are dropped (and counted).
    pub outbox_bytes: usize,
    /// Prefix of each candidate's runbook link; the rule name is appended.
    pub runbook_url_prefix: String,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            jetstream: None,
            outbox_bytes: 16 * 1024 * 1024,
            runbook_url_prefix: "https://etcd-monitor.invalid/docs/alerts.md#".into(),
        }
    }
}

/// The candidate for one transition.
pub fn to_candidate(t: &Transition, runbook_prefix: &str, now_ms: i64) -> AlertCandidate {
    let mut labels = t.observation.labels.clone();
    labels.insert("rule".into(), t.rule.into());
    labels.insert("severity".into(), t.severity.as_str().into());
    let annotations = [
        ("summary", t.observation.summary.clone()),
        ("description", t.observation.description.clone()),
        ("runbook_url", format!("{runbook_prefix}{}", t.rule)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    AlertCandidate {
        fingerprint: t.fingerprint.clone(),
        state: t.state,
        labels,
        annotations,
        value: t.observation.value,
        active_since_ms: t.since_ms,
        transition: t.transition,
        evaluated_ms: now_ms,
    }
}

/// A JetStream publisher that connects (and creates the stream) on first
/// use and again after a failed connect, so the collector starts while
/// NATS is down; the outbox retries in the meantime.
pub struct LazyJetStream {
    cfg: JetStreamConfig,
    publisher: tokio::sync::Mutex<Option<JetStreamPublisher>>,
}

impl LazyJetStream {
    /// A publisher for `cfg`; no connection yet.
    pub fn new(cfg: JetStreamConfig) -> Self {
        Self {
            cfg,
            publisher: tokio::sync::Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for LazyJetStream {
    async fn publish(&self, c: &AlertCandidate) -> Result<(), BusError> {
        let mut guard = self.publisher.lock().await;
        let publisher = match guard.as_ref() {
            Some(p) => p,
            None => {
                let bus = JetStreamBus::connect(self.cfg.clone()).await?;
                tracing::info!(url = %self.cfg.url, stream = %self.cfg.stream, "connected to NATS JetStream");
                guard.insert(bus.publisher())
            }
        };
        publisher.publish(c).await
    }
}

/// The JetStream publisher when `alerting.jetstream` is set: it connects on first
/// use, so the collector starts while NATS is down.
pub fn jetstream(cfg: &AlertingConfig) -> Option<Arc<dyn Publisher>> {
    let js = cfg.jetstream.clone()?;
    Some(Arc::new(LazyJetStream::new(js)))
}

/// Turns transitions into candidates and hands them to the outbox until
/// the transitions stop (rules ended) or `shutdown`; keeps the outbox
/// gauges current.
pub async fn run(
    mut transitions: mpsc::Receiver<Transition>,
    outbox: OutboxSender,
    runbook_prefix: String,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
) {
    let stats = outbox.stats();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            // Transitions first: the rules stop before the drain cancels this task,
            // and what they sent last must still reach the outbox.
            biased;
            t = transitions.recv() => match t {
                Some(t) => outbox.send(to_candidate(&t, &runbook_prefix, now_ms())),
                None => break,
            },
            _ = tick.tick() => publish_stats(&metrics, &stats),
            _ = shutdown.cancelled() => break,
        }
    }
    publish_stats(&metrics, &stats);
}

fn publish_stats(m: &CollectorMetrics, s: &OutboxStats) {
    m.alerts_outbox_pending.set(s.pending() as i64);
    m.alerts_published.set(s.published() as i64);
    m.alerts_dropped.set((s.dropped() + s.rejected()) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::engine::Observation;
    use etcdmon_alert::{AlertState, Severity};

    #[test]
    fn candidates_carry_labels_annotations_and_identity() {
        let t = Transition {
            fingerprint: "abc".into(),
            rule: "member_unreachable",
            severity: Severity::Critical,
            state: AlertState::Firing,
            observation: Observation {
                labels: [
                    ("cluster".to_string(), "c".to_string()),
                    ("member".to_string(), "m1".to_string()),
                ]
                .into_iter()
                .collect(),
                bad: Some(true),
                value: 1.0,
                summary: "etcd member m1 is unreachable".into(),
                description: "refused".into(),
            },
            transition: 3,
            since_ms: 42,
        };
        let c = to_candidate(&t, "https://docs/alerts.md#", 50);
        assert_eq!(c.labels["rule"], "member_unreachable");
        assert_eq!(c.labels["severity"], "critical");
        assert_eq!(c.labels["member"], "m1");
        assert_eq!(
            c.annotations["runbook_url"],
            "https://docs/alerts.md#member_unreachable"
        );
        assert_eq!(c.state, AlertState::Firing);
        assert_eq!(
            (c.transition, c.active_since_ms, c.evaluated_ms),
            (3, 42, 50)
        );
        assert_eq!(c.message_id(), "abc-3-firing");
    }
}
