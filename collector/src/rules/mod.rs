//! Rules, evaluated every second on the live state.
//!
//! [`builtin`] rules turn the snapshot of every cluster into observations;
//! the [`engine`] turns observations into firing/resolved transitions,
//! applying each rule's `for` duration and hysteresis. Transitions become
//! alert candidates (published for the alerter).

pub mod builtin;
pub mod config;
pub mod engine;

use crate::metrics::CollectorMetrics;
use crate::state::{ClusterState, LiveState};
use config::RuleSet;
use engine::{Engine, Transition};
use std::collections::BTreeMap;

/// The built-in rule set with its settings.
pub struct Rules {
    settings: RuleSet,
    engine: Engine,
}

impl Rules {
    /// Rules with their resolved settings (the config's `rules`).
    pub fn new(settings: RuleSet) -> Self {
        Self {
            settings,
            engine: Engine::default(),
        }
    }

    /// Evaluates every enabled rule on `clusters` at `now_ms`.
    pub fn evaluate(&mut self, clusters: &[ClusterState], now_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        for rule in builtin::RULES {
            let Some(s) = self.settings.get(rule.name) else {
                continue;
            };
            if !s.enabled {
                continue;
            }
            let observations = clusters.iter().flat_map(|c| (rule.check)(c, s)).collect();
            out.extend(
                self.engine
                    .apply(rule.name, s.severity, s.for_, observations, now_ms),
            );
        }
        out
    }

    /// When the earliest pending alert is due to fire, ms since the epoch.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.engine.next_due_ms()
    }

    /// Fingerprints currently firing.
    pub fn firing(&self) -> Vec<String> {
        self.engine.firing()
    }

    /// Alerts firing now, counted by cluster and severity (the fleet exporter's
    /// `etcdmon_alerts_firing`).
    pub fn firing_counts(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for (rule, labels) in self.engine.firing_alerts() {
            let Some(s) = self.settings.get(rule) else {
                continue;
            };
            let cluster = labels.get("cluster").cloned().unwrap_or_default();
            *out.entry((cluster, s.severity.as_str().to_owned()))
                .or_default() += 1;
        }
        out
    }

    /// Takes over the alerts that were firing before this start (see [`restore`]),
    /// as `store` has them; `grace` is how long agents get to reconnect (the
    /// config's `ingest.agent_timeout` is a good value). A store that does not
    /// answer is logged and skipped: ingest must not wait for it.
    ///
    /// [`restore`]: Self::restore
    pub async fn restore_from(
        &mut self,
        store: &dyn etcdmon_storage::AlertStore,
        grace: std::time::Duration,
    ) {
        const WINDOW_MS: i64 = 30 * 24 * 3_600_000;
        let now = crate::now_ms();
        match store.latest_transitions(now - WINDOW_MS).await {
            Ok(rows) => {
                let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
                let n = self.restore(&rows, now, grace_ms);
                if n > 0 {
                    tracing::info!(alerts = n, "took over alerts firing before the restart");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "read firing alerts at start-up; rules start empty")
            }
        }
    }

    /// Takes over the alerts that were firing before a restart, as the alert store
    /// has them (latest transition per fingerprint); returns how many. Without this a
    /// collector restarted during an incident would fire the alert again under a new
    /// number and, worse, never resolve one whose condition cleared while it was down.
    ///
    /// A restored alert whose subject is not observed resolves only after `grace_ms`
    /// from `now_ms` (agents reconnecting to the restarted collector); one whose
    /// condition is observed clear resolves at once.
    pub fn restore(
        &mut self,
        latest: &[etcdmon_storage::AlertTransitionRow],
        now_ms: i64,
        grace_ms: i64,
    ) -> usize {
        let mut restored = 0;
        for row in latest.iter().filter(|r| r.state.is_firing()) {
            let Some(rule) = builtin::RULES.iter().find(|r| r.name == row.rule) else {
                continue;
            };
            let mut labels: BTreeMap<String, String> =
                serde_json::from_str(&row.labels_json).unwrap_or_default();
            labels.remove("rule");
            labels.remove("severity");
            // Only alerts this rule set would compute the same fingerprint for.
            if etcdmon_alert::fingerprint(rule.name, &labels) != row.fingerprint {
                continue;
            }
            let annotations: BTreeMap<String, String> =
                serde_json::from_str(&row.annotations_json).unwrap_or_default();
            let text = |k: &str| annotations.get(k).cloned().unwrap_or_default();
            let observation = engine::Observation {
                labels,
                bad: Some(true),
                value: row.value,
                summary: text("summary"),
                description: text("description"),
                conclusive: false,
            };
            self.engine.restore_firing(
                &row.fingerprint,
                rule.name,
                observation,
                row.transition,
                now_ms + grace_ms,
            );
            restored += 1;
        }
        restored
    }
}

/// Evaluates the rules on the live state every `interval`, and at once when the
/// state reports a change, until `shutdown`, logging and counting each transition and handing it to
/// `sink` when there is one (the alert publisher).
pub async fn run(
    mut rules: Rules,
    state: LiveState,
    interval: std::time::Duration,
    metrics: CollectorMetrics,
    sink: Option<tokio::sync::mpsc::Sender<Transition>>,
    firing: crate::exporter::FiringBoard,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // A pending alert is judged again when its `for` ends (no_leader's one
        // second), not up to a whole interval later.
        let pending_due = etcdmon_core::sleep_until_epoch_ms(rules.next_due_ms());
        tokio::select! {
            // Stopping wins over a pending round: the owner stops the rules before
            // the agents' streams close, and no round may judge those closings.
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            // A member went down or up, a leader changed...: judge it now. This is
            // what makes a dead member page within milliseconds of its agent noticing.
            _ = state.changed() => {}
            _ = pending_due => {}
        }
        let started = std::time::Instant::now();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let transitions = rules.evaluate(&state.snapshot_at(now), now);
        metrics
            .rules_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.alerts_firing.set(rules.firing().len() as i64);
        firing.set(rules.firing_counts());
        for t in transitions {
            let state_name = t.state.as_str();
            metrics
                .alert_transitions
                .with_label_values(&[t.rule, state_name])
                .inc();
            tracing::info!(rule = t.rule, state = state_name, fingerprint = %t.fingerprint,
                summary = %t.observation.summary, "alert transition");
            state.feed().alert(crate::feed::AlertJson {
                rule: t.rule,
                state: state_name,
                severity: t.severity.as_str(),
                labels: &t.observation.labels,
                summary: &t.observation.summary,
                since_ms: t.since_ms,
            });
            if let Some(sink) = &sink {
                if sink.send(t).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
