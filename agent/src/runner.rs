//! Schedules the probes and stamps their results.
//!
//! `run` mode: one task per probe, each on its own interval
//! (missed ticks are delayed, not bunched), pushing reports into a bounded
//! channel; when the channel is full the report is dropped and counted
//! (`etcdmon_agent_reports_dropped_total`) rather than buffering without
//! bound. `once` mode: status first (it learns the member list the peer
//! probe needs), then everything else concurrently, peers last.

use crate::config::AgentConfig;
use crate::member_view::MemberView;
use crate::probes::{self, Probe};
use crate::selfmetrics::AgentMetrics;
use etcdmon_core::ops::{Health, HealthFn};
use etcdmon_proto::v1::Report;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The agent's probes, what they share, and their schedule.
pub struct Probes {
    shared: MemberView,
    metrics: AgentMetrics,
    probes: Vec<Box<dyn Probe>>,
    progress: Progress,
}

/// When each collector last finished a round, for `/healthz`.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<HashMap<&'static str, (Instant, Duration)>>>);

impl Progress {
    fn record(&self, name: &'static str, interval: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(name, (Instant::now(), interval));
        }
    }

    /// Collectors that have not finished a round in three intervals (plus
    /// slack for the first round): a stuck loop, not a failing etcd.
    fn stalled(&self) -> Vec<&'static str> {
        let Ok(m) = self.0.lock() else {
            return vec!["(lock poisoned)"];
        };
        let mut v: Vec<&'static str> = m
            .iter()
            .filter(|(_, (at, every))| at.elapsed() > *every * 3 + Duration::from_secs(10))
            .map(|(n, _)| *n)
            .collect();
        v.sort_unstable();
        v
    }
}

impl Probes {
    /// Builds the enabled probes. Fails on unreadable TLS files or bad URLs.
    pub fn new(cfg: &AgentConfig, metrics: AgentMetrics) -> anyhow::Result<Self> {
        let shared = MemberView::new(&cfg.identity);
        let probes = probes::build(cfg, &shared)?;
        Ok(Self {
            shared,
            metrics,
            probes,
            progress: Progress::default(),
        })
    }

    /// The state shared by the probes (identity, member list).
    pub fn shared(&self) -> MemberView {
        self.shared.clone()
    }

    /// Names of the enabled probes.
    pub fn names(&self) -> Vec<&'static str> {
        self.probes.iter().map(|c| c.name()).collect()
    }

    /// Runs every probe once and returns the reports in a stable order.
    pub async fn collect_once(&mut self) -> Vec<Report> {
        let (shared, metrics) = (&self.shared, &self.metrics);
        let mut reports = Vec::with_capacity(self.probes.len());
        let (first, rest): (Vec<_>, Vec<_>) =
            self.probes.iter_mut().partition(|c| c.name() == "status");
        for c in first {
            reports.push(run_one(c.as_mut(), shared, metrics).await);
        }
        let (last, middle): (Vec<_>, Vec<_>) = rest.into_iter().partition(|c| c.name() == "peers");
        reports.extend(
            futures::future::join_all(
                middle
                    .into_iter()
                    .map(|c| run_one(c.as_mut(), shared, metrics)),
            )
            .await,
        );
        for c in last {
            reports.push(run_one(c.as_mut(), shared, metrics).await);
        }
        reports
    }

    /// A `/healthz` function: healthy while every probe loop keeps going.
    pub fn health(&self) -> HealthFn {
        let progress = self.progress.clone();
        Arc::new(move || {
            let stalled = progress.stalled();
            if stalled.is_empty() {
                Health {
                    healthy: true,
                    detail: "collecting".into(),
                }
            } else {
                Health {
                    healthy: false,
                    detail: format!("probes stalled: {}", stalled.join(", ")),
                }
            }
        })
    }

    /// Starts one task per probe, sending reports to `sink` until
    /// `shutdown` is cancelled.
    pub fn spawn(
        self,
        sink: mpsc::Sender<Report>,
        shutdown: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let Probes {
            shared,
            metrics,
            probes,
            progress,
        } = self;
        // Reports carry the member's identity, which the first status round
        // completes (member id, and name unless configured). The other
        // probes wait for that round, so even their first reports are
        // attributed to the right member; the wait is bounded, because an
        // unreachable etcd must not stop host metrics.
        let has_status = probes.iter().any(|c| c.name() == "status");
        let (first_status, _) = tokio::sync::watch::channel(!has_status);
        probes
            .into_iter()
            .map(|c| {
                let ctx = (shared.clone(), metrics.clone(), progress.clone());
                let (sink, shutdown) = (sink.clone(), shutdown.clone());
                let gate = if c.name() == "status" {
                    Gate::Opens(first_status.clone())
                } else {
                    Gate::Waits(first_status.subscribe())
                };
                tokio::spawn(run_loop(c, ctx, sink, shutdown, gate))
            })
            .collect()
    }
}

/// Ordering of the first rounds: status opens the gate, others wait for it.
enum Gate {
    Opens(tokio::sync::watch::Sender<bool>),
    Waits(tokio::sync::watch::Receiver<bool>),
}

/// Longest wait for the first status round before other probes start.
const FIRST_STATUS_WAIT: Duration = Duration::from_secs(3);

async fn run_loop(
    mut c: Box<dyn Probe>,
    (shared, metrics, progress): (MemberView, AgentMetrics, Progress),
    sink: mpsc::Sender<Report>,
    shutdown: CancellationToken,
    gate: Gate,
) {
    let name = c.name();
    let every = c.interval();
    progress.record(name, every);
    if let Gate::Waits(rx) = &gate {
        let mut rx = rx.clone();
        let _ = tokio::time::timeout(FIRST_STATUS_WAIT, rx.wait_for(|open| *open)).await;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wake = c.wake();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            // An event (a broken liveness watch): run now, then resume the rhythm.
            _ = async { match &wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {
                tick.reset();
            }
        }
        let report = tokio::select! {
            r = run_one(c.as_mut(), &shared, &metrics) => r,
            _ = shutdown.cancelled() => break,
        };
        progress.record(name, every);
        if let Gate::Opens(tx) = &gate {
            tx.send_replace(true);
        }
        if !report.body.as_ref().is_none_or(|b| c.worth_sending(b)) {
            continue;
        }
        match sink.try_send(report) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.reports_dropped.inc();
                tracing::warn!(collector = name, "report dropped: sink full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    tracing::debug!(collector = name, "collector stopped");
}

/// One round of one collector, stamped and recorded in the self-metrics.
async fn run_one(c: &mut dyn Probe, shared: &MemberView, metrics: &AgentMetrics) -> Report {
    let started = Instant::now();
    let timestamp_unix_ms = unix_ms();
    let body = c.collect().await;
    let seconds = started.elapsed().as_secs_f64();
    metrics.observe(c.name(), &body, seconds, timestamp_unix_ms / 1000);
    Report {
        timestamp_unix_ms,
        // After the round, so a status round's newly learned id is included.
        identity: Some(shared.identity()),
        duration_seconds: seconds,
        body: Some(body),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
