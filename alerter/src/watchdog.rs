//! Watching the watcher: the collectors' heartbeats, the watchdog alert for an
//! external dead-man's switch, and the page when the pipeline goes silent.
//!
//! ```text
//! collector ──heartbeat every 10 s──> bus ──> alerter: Watchdog::on_heartbeat
//!                                                 │ poll (every loop turn, 200 ms)
//!                                                 ▼
//!         watchdog             firing while heartbeats arrive, resolved when they stop:
//!                              routed only to `[watchdog] receiver`, repeated every
//!                              `repeat_interval`; the external service pages when the
//!                              repeats stop (the monitor is down or cut off)
//!         monitoring_pipeline_down  firing when no heartbeat came for `pipeline_down_after`
//!                              (since the last one, or since start): routed like any
//!                              alert, so the alerter's own receivers page
//! ```
//!
//! Both are candidates the alerter makes itself and feeds to its engine, so they are
//! recorded, grouped, silenced and delivered exactly like the collector's. Their
//! transition numbers are the alerter's clock in milliseconds, which keeps them
//! increasing across restarts. Heartbeats themselves are not recorded anywhere.

use std::time::Duration;

use etcdmon_alert::{labels, AlertCandidate, AlertState, COLLECTOR_LABEL, HEARTBEAT_RULE};
use serde::{Deserialize, Serialize};

/// The `rule` label of the alert raised when heartbeats stop.
pub const PIPELINE_DOWN_RULE: &str = "monitoring_pipeline_down";
/// Fingerprint of the watchdog alert (one per alerter, whichever collector beats).
pub const WATCHDOG_FINGERPRINT: &str = "watchdog/";
/// Fingerprint of the pipeline-down alert.
pub const PIPELINE_DOWN_FINGERPRINT: &str = "monitoring_pipeline_down/";

/// `[watchdog]`: what the alerter does with the collectors' heartbeats.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// The dead-man's-switch receiver (a webhook to healthchecks.io, PagerDuty or
    /// Opsgenie heartbeats, ...): it gets the always-firing `watchdog` alert, and
    /// nothing else gets it. Unset: no watchdog alert is made.
    pub receiver: Option<String>,
    /// How often the watchdog alert is sent again to that receiver.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Silence after which `monitoring_pipeline_down` fires (and the watchdog
    /// alert resolves); 0 turns it off. Keep it several times the collectors'
    /// `alerting.heartbeat_interval` (10 s by default).
    #[serde(with = "humantime_serde")]
    pub pipeline_down_after: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            receiver: None,
            repeat_interval: Duration::from_secs(60),
            pipeline_down_after: Duration::from_secs(60),
        }
    }
}

/// The heartbeat state of one alerter.
#[derive(Debug)]
pub struct Watchdog {
    config: WatchdogConfig,
    started_ms: i64,
    /// The latest heartbeat: when it arrived (alerter's clock) and from whom.
    last: Option<(i64, String)>,
    /// Whether each alert was last said to be firing.
    watchdog_firing: bool,
    pipeline_down: bool,
    last_transition: u64,
}

impl Watchdog {
    /// A watchdog started at `now_ms` that has heard nothing yet.
    pub fn new(config: WatchdogConfig, now_ms: i64) -> Self {
        Self {
            config,
            started_ms: now_ms,
            last: None,
            watchdog_firing: false,
            pipeline_down: false,
            last_transition: 0,
        }
    }

    /// Starts the clock again at `now_ms`: when the alerter begins to take
    /// candidates (connected to the bus, state restored), since it cannot have
    /// heard a heartbeat before. Until then the dead-man's switch, which hears
    /// nothing either, is what pages.
    pub fn listening_since(&mut self, now_ms: i64) {
        self.started_ms = now_ms;
    }

    /// Takes what the store says is firing after a restart, so that a
    /// `monitoring_pipeline_down` (or watchdog) alert raised before is resolved
    /// (or kept) by what happens next, not forgotten.
    pub fn restore(&mut self, firing: impl Fn(&str) -> Option<u64>) {
        if let Some(t) = firing(PIPELINE_DOWN_FINGERPRINT) {
            self.pipeline_down = true;
            self.last_transition = self.last_transition.max(t);
        }
        if let Some(t) = firing(WATCHDOG_FINGERPRINT) {
            self.watchdog_firing = true;
            self.last_transition = self.last_transition.max(t);
        }
    }

    /// Records a heartbeat that arrived at `now_ms`.
    pub fn on_heartbeat(&mut self, heartbeat: &AlertCandidate, now_ms: i64) {
        let collector = heartbeat
            .labels
            .get(COLLECTOR_LABEL)
            .cloned()
            .unwrap_or_default();
        self.last = Some((now_ms, collector));
    }

    /// When the latest heartbeat arrived, in ms since the epoch.
    pub fn last_heartbeat_ms(&self) -> Option<i64> {
        self.last.as_ref().map(|(at, _)| *at)
    }

    /// The candidates the heartbeat state calls for at `now_ms`: each alert's
    /// change since the last call, if any.
    pub fn poll(&mut self, now_ms: i64) -> Vec<AlertCandidate> {
        let down = self
            .down_after_ms()
            .is_some_and(|after| now_ms - self.silent_since() >= after);
        let alive = self.last.is_some() && !down;
        let mut out = Vec::new();
        // Also resolved when the receiver was taken out of the config.
        let watchdog = self.config.receiver.is_some() && alive;
        if self.watchdog_firing != watchdog {
            self.watchdog_firing = watchdog;
            out.push(self.watchdog(watchdog, now_ms));
        }
        if self.pipeline_down != down {
            self.pipeline_down = down;
            out.push(self.pipeline_down(down, now_ms));
        }
        out
    }

    fn down_after_ms(&self) -> Option<i64> {
        let after = self.config.pipeline_down_after;
        (!after.is_zero()).then_some(after.as_millis() as i64)
    }

    /// Since when nothing has been heard: the latest heartbeat, or the start.
    fn silent_since(&self) -> i64 {
        self.last_heartbeat_ms().unwrap_or(self.started_ms)
    }

    fn next_transition(&mut self, now_ms: i64) -> u64 {
        let t = u64::try_from(now_ms)
            .unwrap_or(0)
            .max(self.last_transition + 1);
        self.last_transition = t;
        t
    }

    fn watchdog(&mut self, firing: bool, now_ms: i64) -> AlertCandidate {
        let summary = if firing {
            "etcd-monitor's alerting pipeline works (collector heartbeats arrive)".to_owned()
        } else {
            "etcd-monitor's alerting pipeline is silent: no collector heartbeat".to_owned()
        };
        self.candidate(
            WATCHDOG_FINGERPRINT,
            &[("rule", HEARTBEAT_RULE), ("severity", "none")],
            firing,
            summary,
            now_ms,
        )
    }

    fn pipeline_down(&mut self, down: bool, now_ms: i64) -> AlertCandidate {
        let since = self.silent_since();
        let silent_s = (now_ms - since) / 1000;
        let description = match &self.last {
            Some((_, collector)) => format!(
                "The last heartbeat came from collector {collector:?} {silent_s} s ago. \
                 Until heartbeats return, etcd-monitor may not see or alert on your \
                 clusters: check the collectors, NATS and the alerter's connection to it."
            ),
            None => format!(
                "No collector heartbeat since this alerter started {silent_s} s ago. \
                 Check that the collectors run and publish to the same NATS stream."
            ),
        };
        let mut c = self.candidate(
            PIPELINE_DOWN_FINGERPRINT,
            &[("rule", PIPELINE_DOWN_RULE), ("severity", "critical")],
            down,
            "etcd-monitor's alerting pipeline is down: no collector heartbeat".to_owned(),
            now_ms,
        );
        c.annotations.insert("description".into(), description);
        if down {
            c.active_since_ms = since;
        }
        c
    }

    fn candidate(
        &mut self,
        fingerprint: &str,
        pairs: &[(&str, &str)],
        firing: bool,
        summary: String,
        now_ms: i64,
    ) -> AlertCandidate {
        AlertCandidate {
            fingerprint: fingerprint.to_owned(),
            state: if firing {
                AlertState::Firing
            } else {
                AlertState::Resolved
            },
            labels: labels(pairs),
            annotations: [("summary".to_owned(), summary)].into(),
            value: f64::from(u8::from(firing)),
            active_since_ms: now_ms,
            transition: self.next_transition(now_ms),
            evaluated_ms: now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;

    fn config(receiver: Option<&str>) -> WatchdogConfig {
        WatchdogConfig {
            receiver: receiver.map(str::to_owned),
            repeat_interval: Duration::from_secs(60),
            pipeline_down_after: Duration::from_secs(30),
        }
    }

    fn said(cs: &[AlertCandidate]) -> Vec<(&str, AlertState)> {
        cs.iter()
            .map(|c| (c.labels["rule"].as_str(), c.state))
            .collect()
    }

    #[test]
    fn heartbeats_keep_the_watchdog_firing_and_silence_pages() {
        let mut w = Watchdog::new(config(Some("dms")), 0);
        assert!(w.poll(S).is_empty(), "nothing heard, nothing late yet");
        w.on_heartbeat(&AlertCandidate::heartbeat("c1", 2 * S), 2 * S);
        assert_eq!(said(&w.poll(2 * S)), [("watchdog", AlertState::Firing)]);
        w.on_heartbeat(&AlertCandidate::heartbeat("c1", 12 * S), 12 * S);
        assert!(w.poll(41 * S).is_empty(), "29 s of silence is not 30");
        let down = w.poll(42 * S);
        assert_eq!(
            said(&down),
            [
                ("watchdog", AlertState::Resolved),
                (PIPELINE_DOWN_RULE, AlertState::Firing)
            ]
        );
        assert_eq!(down[1].active_since_ms, 12 * S);
        assert!(down[1].annotations["description"].contains("\"c1\" 30 s ago"));
        assert!(w.poll(100 * S).is_empty(), "said once");
        w.on_heartbeat(&AlertCandidate::heartbeat("c2", 101 * S), 101 * S);
        let back = w.poll(101 * S);
        assert_eq!(
            said(&back),
            [
                ("watchdog", AlertState::Firing),
                (PIPELINE_DOWN_RULE, AlertState::Resolved)
            ]
        );
        // Transitions only grow, whatever the clock does.
        assert!(back[0].transition > down[1].transition);
    }

    #[test]
    fn an_alerter_that_never_hears_a_heartbeat_pages_after_the_wait() {
        let mut w = Watchdog::new(config(None), 1_000 * S);
        assert!(w.poll(1_029 * S).is_empty());
        let down = w.poll(1_030 * S);
        assert_eq!(said(&down), [(PIPELINE_DOWN_RULE, AlertState::Firing)]);
        assert!(down[0].annotations["description"].contains("since this alerter started"));
    }

    #[test]
    fn without_a_receiver_there_is_no_watchdog_alert_and_zero_turns_paging_off() {
        let mut w = Watchdog::new(
            WatchdogConfig {
                pipeline_down_after: Duration::ZERO,
                ..config(None)
            },
            0,
        );
        w.on_heartbeat(&AlertCandidate::heartbeat("c1", 0), 0);
        assert!(w.poll(S).is_empty());
        assert!(w.poll(10_000 * S).is_empty());
    }

    #[test]
    fn a_pipeline_down_alert_restored_as_firing_resolves_when_heartbeats_return() {
        let mut w = Watchdog::new(config(None), 0);
        w.restore(|fp| (fp == PIPELINE_DOWN_FINGERPRINT).then_some(5_000 * 1_000));
        w.on_heartbeat(&AlertCandidate::heartbeat("c1", S), S);
        let back = w.poll(S);
        assert_eq!(said(&back), [(PIPELINE_DOWN_RULE, AlertState::Resolved)]);
        assert!(back[0].transition > 5_000 * 1_000, "after the restored one");
    }
}
