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
use etcdmon_bus::{BusError, ConsumerLag, Publisher};
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
    /// How often a heartbeat goes to the alerter on the same path as the alerts
    /// (its watchdog, and its "monitoring pipeline down" page when heartbeats
    /// stop); 0 turns heartbeats off.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// This collector's name in its heartbeats; the host name when empty.
    pub instance: String,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            jetstream: None,
            outbox_bytes: 16 * 1024 * 1024,
            runbook_url_prefix: "https://etcd-monitor.invalid/docs/alerts.md#".into(),
            heartbeat_interval: Duration::from_secs(10),
            instance: String::new(),
        }
    }
}

impl AlertingConfig {
    /// The heartbeat settings, `None` when heartbeats are off.
    pub fn heartbeat(&self) -> Option<Heartbeat> {
        (!self.heartbeat_interval.is_zero()).then(|| Heartbeat {
            interval: self.heartbeat_interval,
            instance: if self.instance.is_empty() {
                host_name()
            } else {
                self.instance.clone()
            },
        })
    }
}

/// What [`run`] needs to send heartbeats.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Between two heartbeats.
    pub interval: Duration,
    /// The collector's name in them.
    pub instance: String,
}

/// The kernel's host name, `collector` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "collector".into())
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

impl LazyJetStream {
    /// The publisher, connecting first if there is none yet.
    async fn connected(&self) -> Result<JetStreamPublisher, BusError> {
        let mut guard = self.publisher.lock().await;
        if let Some(p) = guard.as_ref() {
            return Ok(p.clone());
        }
        let bus = JetStreamBus::connect(self.cfg.clone()).await?;
        tracing::info!(url = %self.cfg.url, stream = %self.cfg.stream, "connected to NATS JetStream");
        Ok(guard.insert(bus.publisher()).clone())
    }
}

#[async_trait::async_trait]
impl Publisher for LazyJetStream {
    async fn publish(&self, c: &AlertCandidate) -> Result<(), BusError> {
        self.connected().await?.publish(c).await
    }

    async fn consumer_lag(&self) -> Option<Result<ConsumerLag, BusError>> {
        Some(match self.connected().await {
            Ok(p) => p.consumer_lag().await,
            Err(e) => Err(e),
        })
    }
}

/// How often the alerter's consumer is looked at.
const CONSUMER_CHECK: Duration = Duration::from_secs(15);

/// Keeps the `alerter_consumer_*` gauges current until `shutdown`: whether the
/// alerter's durable consumer exists and how far behind it is. An alert about the
/// alerter cannot travel through the alerter, so this is for Prometheus (and the
/// dead-man's switch covers an alerter that hears nothing).
pub async fn watch_consumer(
    publisher: Arc<dyn Publisher>,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CONSUMER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match publisher.consumer_lag().await {
            None => break,
            Some(Ok(ConsumerLag::Missing)) => {
                metrics.alerter_consumer.set(0);
                metrics.alerter_consumer_pending.set(0);
                metrics.alerter_consumer_unacknowledged.set(0);
            }
            Some(Ok(ConsumerLag::Present {
                pending,
                unacknowledged,
            })) => {
                metrics.alerter_consumer.set(1);
                metrics.alerter_consumer_pending.set(pending as i64);
                metrics
                    .alerter_consumer_unacknowledged
                    .set(unacknowledged as i64);
            }
            // The outbox's own gauges and logs tell about NATS trouble; the
            // gauges keep the last answer.
            Some(Err(e)) => tracing::debug!(error = %e, "look at the alerter's consumer"),
        }
    }
}

/// The JetStream publisher when `alerting.jetstream` is set: it connects on first
/// use, so the collector starts while NATS is down.
pub fn jetstream(cfg: &AlertingConfig) -> Option<Arc<dyn Publisher>> {
    let js = cfg.jetstream.clone()?;
    Some(Arc::new(LazyJetStream::new(js)))
}

/// Most alerts whose latest candidate is kept for a re-statement.
const LATEST_MAX: usize = 100_000;

/// Turns transitions into candidates and hands them to the outbox until
/// the transitions stop (rules ended) or `shutdown`; keeps the outbox
/// gauges current.
///
/// The outbox drops its oldest candidates when NATS is away for longer than it
/// can hold, and a dropped firing (or resolution) would be a lost page (or an
/// alert that never ends). So the latest candidate of every alert is kept, and
/// once the outbox has dropped some and then emptied again (NATS is back), every
/// one of them is sent again. The alerter takes a candidate it has seen (same
/// fingerprint and transition) as a repeat and notifies nothing for it.
///
/// Every `heartbeat.interval` a heartbeat goes into the outbox too, behind the
/// alerts before it, so that its arrival proves the whole path works. It is not
/// kept for restating: a lost heartbeat is replaced by the next.
pub async fn run(
    mut transitions: mpsc::Receiver<Transition>,
    outbox: OutboxSender,
    outbox_bytes: usize,
    runbook_prefix: String,
    heartbeat: Option<Heartbeat>,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
) {
    let stats = outbox.stats();
    let mut latest: std::collections::HashMap<String, AlertCandidate> = Default::default();
    // Fingerprints still to state again, fed to the outbox a tick at a time so a
    // re-statement never overflows the outbox itself.
    let mut restating: std::collections::VecDeque<String> = Default::default();
    let mut dropped_seen = 0;
    let mut restate = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Never ticks when heartbeats are off.
    let mut beat = tokio::time::interval(
        heartbeat
            .as_ref()
            .map_or(Duration::from_secs(3600 * 24 * 365), |h| h.interval),
    );
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Transitions first: the rules stop before the drain cancels this task,
            // and what they sent last must still reach the outbox.
            biased;
            t = transitions.recv() => match t {
                Some(t) => {
                    let c = to_candidate(&t, &runbook_prefix, now_ms());
                    if latest.len() < LATEST_MAX || latest.contains_key(&c.fingerprint) {
                        latest.insert(c.fingerprint.clone(), c.clone());
                    }
                    outbox.send(c);
                }
                None => break,
            },
            _ = tick.tick() => {
                publish_stats(&metrics, &stats);
                let dropped = stats.dropped() + stats.rejected();
                if dropped > dropped_seen {
                    dropped_seen = dropped;
                    restate = true;
                }
                if restate && restating.is_empty() && stats.pending() == 0 {
                    restate = false;
                    tracing::warn!(
                        alerts = latest.len(),
                        "the alert outbox dropped candidates while NATS was away; \
                         stating every alert again"
                    );
                    restating.extend(latest.keys().cloned());
                }
                // Up to half the outbox per tick.
                while let Some(fp) = restating.front() {
                    if stats.pending_bytes() as usize >= outbox_bytes / 2 {
                        break;
                    }
                    if let Some(c) = latest.get(fp) {
                        let mut again = c.clone();
                        again.evaluated_ms = now_ms();
                        outbox.send(again);
                        metrics.alerts_restated.inc();
                    }
                    restating.pop_front();
                }
                // Resolved alerts need not be stated again after a day.
                let day_ago = now_ms() - 24 * 3_600_000;
                latest.retain(|_, c| c.state.is_firing() || c.active_since_ms > day_ago);
            },
            _ = beat.tick(), if heartbeat.is_some() => {
                if let Some(h) = &heartbeat {
                    outbox.send(AlertCandidate::heartbeat(&h.instance, now_ms()));
                    metrics.heartbeats.inc();
                }
            },
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
                conclusive: false,
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

#[cfg(test)]
mod restate_tests {
    use super::*;
    use crate::rules::engine::Observation;
    use etcdmon_alert::{AlertState, Severity};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// A bus that is down until told otherwise, and records what it took.
    #[derive(Default)]
    struct Flaky {
        up: AtomicBool,
        taken: Mutex<Vec<AlertCandidate>>,
    }

    #[async_trait::async_trait]
    impl Publisher for Flaky {
        async fn publish(&self, c: &AlertCandidate) -> Result<(), BusError> {
            if !self.up.load(Ordering::SeqCst) {
                return Err(BusError::Unavailable("down".into()));
            }
            self.taken.lock().unwrap().push(c.clone());
            Ok(())
        }
    }

    fn transition(fp: &str, n: u64, state: AlertState) -> Transition {
        Transition {
            fingerprint: fp.into(),
            rule: "member_unreachable",
            severity: Severity::Critical,
            state,
            observation: Observation {
                labels: etcdmon_alert::labels(&[("cluster", "c"), ("member", fp)]),
                bad: Some(state.is_firing()),
                value: 1.0,
                summary: format!("{fp} is down, with a long summary to fill the outbox"),
                description: "x".repeat(200),
                conclusive: false,
            },
            transition: n,
            since_ms: now_ms(),
        }
    }

    /// NATS away longer than the outbox holds: its oldest candidates are dropped,
    /// among them firings of alerts still firing. When NATS is back, every alert's
    /// latest state is published again, so no page and no resolution is lost.
    #[tokio::test]
    async fn after_the_outbox_dropped_candidates_every_alert_is_stated_again() {
        let bus = Arc::new(Flaky::default());
        let (sender, task) = etcdmon_bus::outbox::Outbox::new(bus.clone(), 4096);
        let stop = CancellationToken::new();
        let outbox = tokio::spawn(
            task.with_retry_delays(Duration::from_millis(10), Duration::from_millis(50))
                .run(stop.clone()),
        );
        let (tx, rx) = mpsc::channel(64);
        let metrics = CollectorMetrics::new();
        let run = tokio::spawn(run(
            rx,
            sender,
            4096,
            "r#".into(),
            Some(Heartbeat {
                interval: Duration::from_millis(200),
                instance: "c-test".into(),
            }),
            metrics.clone(),
            stop.clone(),
        ));
        for i in 0..10 {
            tx.send(transition(&format!("a{i}"), 1, AlertState::Firing))
                .await
                .unwrap();
        }
        for i in 0..5 {
            tx.send(transition(&format!("a{i}"), 2, AlertState::Resolved))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        bus.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        drop(tx);
        run.await.unwrap();
        stop.cancel();
        outbox.await.unwrap();

        let taken = bus.taken.lock().unwrap().clone();
        let mut last: std::collections::BTreeMap<String, (u64, AlertState)> = Default::default();
        for c in &taken {
            let e = last.entry(c.fingerprint.clone()).or_insert((0, c.state));
            if c.transition >= e.0 {
                *e = (c.transition, c.state);
            }
        }
        for i in 0..10 {
            let want = if i < 5 {
                (2, AlertState::Resolved)
            } else {
                (1, AlertState::Firing)
            };
            assert_eq!(last.get(&format!("a{i}")), Some(&want), "a{i}: {taken:?}");
        }
        assert!(metrics.alerts_restated.get() >= 10);
        // Heartbeats took the same way once NATS was back.
        let beats = taken.iter().filter(|c| c.is_heartbeat()).count();
        assert!(
            beats > 0 && beats as u64 <= metrics.heartbeats.get(),
            "{beats}"
        );
        assert!(taken
            .iter()
            .filter(|c| c.is_heartbeat())
            .all(|c| c.labels["collector"] == "c-test"));
    }
}
