//! The alerter's decision core: from alert candidates to notifications.
//!
//! The engine is a plain state machine driven by the service with explicit times
//! (milliseconds since the epoch), so every rule below is unit-tested without clocks:
//!
//! ```text
//! candidate ──on_candidate──> alerts (by fingerprint) ──> groups (route node × group labels)
//! acks, silences ──set_*────>        │
//!                                    ▼
//!                         due(now) compares, per group and receiver, what should have
//!                         been told with the notification log ──> notifications
//! ```
//!
//! # Exactly one notification per transition per receiver
//!
//! The notification log maps `(receiver, fingerprint)` to the last episode told and
//! how (firing, acknowledged or resolved). A notification is due when an alert's current
//! episode differs from what the log says, so duplicates of a candidate, repeated
//! evaluations and restarts produce nothing new. The log is rebuilt at start-up from
//! the stored successful deliveries, so a restart neither re-sends nor forgets (an
//! attempt that was in flight when the process died is sent again: at least once).
//!
//! # Episodes
//!
//! The collector numbers transitions per fingerprint. A candidate whose state equals the
//! alert's current state (for example the collector restarted and re-evaluated a
//! still-firing alert) restates the current episode instead of starting a new one, so it
//! is not notified again. A candidate with a lower number than the alert's latest is
//! stale (a redelivery) and ignored.
//!
//! # What holds a notification back
//!
//! Silences and inhibition (the alert is left out), flapping (left out until stable,
//! reported once), acknowledgement (no repeats, no escalation), and the group timers
//! `group_wait` (a new group's first notification) and `group_interval` (between two
//! notifications of a group to one receiver, except the all-clear: once every alert a
//! receiver sees of a group has resolved, it is told at once).

mod flush;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use etcdmon_alert::{AlertCandidate, AlertState};
use etcdmon_storage::AlertTransitionRow;

use crate::flap::{FlapConfig, FlapDetector};
use crate::inhibit::{InhibitRule, InhibitTiming};
use crate::route::{EscalationStep, Route};
use etcdmon_alert::all_match;
use etcdmon_alert::Silence;

/// How long a resolved alert is remembered (to recognise stale redeliveries and to
/// let every receiver be told) before it is forgotten.
const RESOLVED_RETENTION_MS: i64 = 3_600_000;
/// Longest a resolved alert is kept for a receiver still to be told (a silence that
/// outlasts it drops the resolution).
const RESOLVED_RETENTION_MAX_MS: i64 = 7 * 24 * 3_600_000;

/// One alert as the engine knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Stable id.
    pub fingerprint: String,
    /// Highest transition number seen (for staleness).
    pub transition: u64,
    /// Transition number that started the current state: the notification identity.
    pub episode: u64,
    /// Firing or resolved.
    pub status: AlertState,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Latest value.
    pub value: f64,
    /// When it (last) started firing, ms.
    pub starts_at_ms: i64,
    /// When it resolved, ms; `None` while firing.
    pub ends_at_ms: Option<i64>,
    /// When the engine last changed it, ms.
    pub updated_ms: i64,
}

impl Alert {
    fn from_candidate(c: &AlertCandidate, now_ms: i64) -> Self {
        let status = c.state;
        Self {
            fingerprint: c.fingerprint.clone(),
            transition: c.transition,
            episode: c.transition,
            status,
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            value: c.value,
            starts_at_ms: c.active_since_ms,
            ends_at_ms: (status == AlertState::Resolved).then_some(c.active_since_ms),
            updated_ms: now_ms,
        }
    }

    /// The row that records this alert's current state in the history.
    pub fn to_row(&self, received_ms: i64) -> AlertTransitionRow {
        let label = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        AlertTransitionRow {
            fingerprint: self.fingerprint.clone(),
            transition: self.episode,
            state: self.status,
            cluster: label("cluster"),
            rule: label("rule"),
            severity: label("severity"),
            labels_json: serde_json::to_string(&self.labels).unwrap_or_default(),
            annotations_json: serde_json::to_string(&self.annotations).unwrap_or_default(),
            value: self.value,
            active_since_ms: match self.status {
                AlertState::Firing => self.starts_at_ms,
                AlertState::Resolved => self.ends_at_ms.unwrap_or(self.starts_at_ms),
            },
            received_ms,
        }
    }

    /// Rebuilds an alert from its stored latest transition (start-up).
    pub fn from_row(row: &AlertTransitionRow) -> Option<Self> {
        let status = row.state;
        Some(Self {
            fingerprint: row.fingerprint.clone(),
            transition: row.transition,
            episode: row.transition,
            status,
            labels: serde_json::from_str(&row.labels_json).ok()?,
            annotations: serde_json::from_str(&row.annotations_json).unwrap_or_default(),
            value: row.value,
            starts_at_ms: row.active_since_ms,
            ends_at_ms: (status == AlertState::Resolved).then_some(row.active_since_ms),
            updated_ms: row.received_ms,
        })
    }
}

/// What a receiver was last told about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// That it fires (this episode).
    Firing(u64),
    /// That this firing episode was acknowledged.
    Acknowledged(u64),
    /// That it resolved (this episode).
    Resolved(u64),
}

impl Told {
    /// The episode told about.
    pub fn episode(self) -> u64 {
        match self {
            Told::Firing(e) | Told::Acknowledged(e) | Told::Resolved(e) => e,
        }
    }

    /// From a stored delivery's state and transition.
    pub fn from_stored(state: &str, transition: u64) -> Option<Self> {
        match state {
            "firing" => Some(Told::Firing(transition)),
            "acknowledged" => Some(Told::Acknowledged(transition)),
            "resolved" => Some(Told::Resolved(transition)),
            _ => None,
        }
    }
}

/// A group: alerts of one route node with the same grouping labels.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    key: String,
    route: RouteSettings,
    labels: BTreeMap<String, String>,
    members: BTreeSet<String>,
    created_ms: i64,
    /// Per receiver: when it was last notified and last repeated.
    timing: HashMap<String, Timing>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    last_notified_ms: Option<i64>,
    last_repeat_ms: i64,
}

/// The parts of a route node a group needs.
#[derive(Debug, Clone)]
struct RouteSettings {
    receiver: String,
    group_wait_ms: i64,
    group_interval_ms: i64,
    repeat_interval_ms: i64,
    escalation: Vec<EscalationStep>,
}

impl RouteSettings {
    fn of(route: &Route) -> Self {
        Self {
            receiver: route.receiver.clone(),
            group_wait_ms: route.group_wait.as_millis() as i64,
            group_interval_ms: route.group_interval.as_millis() as i64,
            repeat_interval_ms: route.repeat_interval.as_millis() as i64,
            escalation: route.escalation.clone(),
        }
    }
}

/// Engine settings besides the route tree.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Inhibition rules.
    pub inhibit_rules: Vec<InhibitRule>,
    /// How long inhibition holds at its edges.
    pub inhibit_timing: InhibitTiming,
    /// Flap detection.
    pub flapping: FlapConfig,
    /// Receivers that are told about acknowledgements (PagerDuty).
    pub ack_receivers: HashSet<String>,
    /// Receivers never told that an alert resolved: the watchdog's dead-man's
    /// switch, for which any request is a ping, so a resolved notice would be
    /// one more sign of life at the moment the pipeline went silent.
    pub quiet_resolved: HashSet<String>,
    /// Base URL for links in notifications.
    pub external_url: String,
}

/// The alerter's state machine. See the module docs.
pub struct Engine {
    route: Route,
    config: EngineConfig,
    flap: FlapDetector,
    alerts: HashMap<String, Alert>,
    groups: BTreeMap<String, Group>,
    told: HashMap<(String, String), Told>,
    silences: Vec<Silence>,
    acks: HashSet<(String, u64)>,
    /// Alerts that started flapping and must be reported, per receiver.
    flap_reports: BTreeSet<String>,
    /// The earliest moment a held-back alert may be notified (an inhibition wait
    /// or linger ending), found by the last [`due`](Self::due).
    next_wake_ms: Option<i64>,
}

/// What `on_candidate` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A new state: record this row, then ack the delivery.
    Transition(AlertTransitionRow),
    /// Same state as known (restated or duplicate): nothing to record.
    Unchanged,
    /// Older than what is known (a redelivery): ignored.
    Stale,
}

impl Engine {
    /// An engine with an empty state.
    pub fn new(route: Route, config: EngineConfig) -> Self {
        Self {
            route,
            flap: FlapDetector::new(config.flapping.clone()),
            config,
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            told: HashMap::new(),
            silences: Vec::new(),
            acks: HashSet::new(),
            flap_reports: BTreeSet::new(),
            next_wake_ms: None,
        }
    }

    /// Restores state at start-up: the latest stored transition of each alert, recent
    /// transitions for flap detection (oldest first), and what each receiver was told.
    /// Restored alerts do not count as news: only differences from `told` are notified.
    pub fn restore(
        &mut self,
        latest: &[AlertTransitionRow],
        recent_history: &[AlertTransitionRow],
        told: impl IntoIterator<Item = (String, String, Told)>,
        now_ms: i64,
    ) {
        for row in recent_history {
            // Rebuilds the flap windows; a flap found here was reported before the
            // restart, so it is not reported again.
            self.flap.record(&row.fingerprint, row.received_ms);
        }
        for (receiver, fp, t) in told {
            let slot = self.told.entry((receiver, fp)).or_insert(t);
            if t.episode() > slot.episode()
                || (t.episode() == slot.episode() && rank(t) > rank(*slot))
            {
                *slot = t;
            }
        }
        // Groups are created now, so repeats count from the restart, not from
        // when the alert began (see `notify_audience`).
        for row in latest {
            if let Some(alert) = Alert::from_row(row) {
                self.insert(alert, now_ms);
            }
        }
    }

    /// Applies one candidate. Returns what to persist before acknowledging it.
    pub fn on_candidate(&mut self, c: &AlertCandidate, now_ms: i64) -> Applied {
        let incoming = Alert::from_candidate(c, now_ms);
        if let Some(known) = self.alerts.get_mut(&c.fingerprint) {
            if c.transition <= known.transition {
                return if c.transition == known.transition {
                    Applied::Unchanged
                } else {
                    Applied::Stale
                };
            }
            known.transition = c.transition;
            if known.status == incoming.status {
                // A restatement of the current episode: refresh what it says.
                known.value = incoming.value;
                known.annotations = incoming.annotations;
                return Applied::Unchanged;
            }
        }
        let mut alert = incoming;
        if alert.status == AlertState::Resolved {
            if let Some(known) = self.alerts.get(&c.fingerprint) {
                alert.starts_at_ms = known.starts_at_ms;
            }
        }
        if self.flap.record(&alert.fingerprint, now_ms) {
            self.flap_reports.insert(alert.fingerprint.clone());
        }
        let row = alert.to_row(now_ms);
        self.insert(alert, now_ms);
        Applied::Transition(row)
    }

    fn insert(&mut self, alert: Alert, now_ms: i64) {
        for node in self.route.matching(&alert.labels) {
            let key = node.group_key(&alert.labels);
            let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
                key,
                route: RouteSettings::of(node),
                labels: node.group_labels(&alert.labels),
                members: BTreeSet::new(),
                created_ms: now_ms,
                timing: HashMap::new(),
            });
            group.members.insert(alert.fingerprint.clone());
        }
        self.alerts.insert(alert.fingerprint.clone(), alert);
    }

    /// Replaces the known silences.
    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    /// Replaces the known acknowledgements (fingerprint, acknowledged episode).
    pub fn set_acks(&mut self, acks: impl IntoIterator<Item = (String, u64)>) {
        self.acks = acks.into_iter().collect();
    }

    /// When the longest-firing alert began firing, ms; `None` when none fires.
    pub fn oldest_firing_since_ms(&self) -> Option<i64> {
        self.alerts
            .values()
            .filter(|a| a.status == AlertState::Firing)
            .map(|a| a.starts_at_ms)
            .min()
    }

    /// Whether the alert's current firing episode is acknowledged.
    pub fn is_acked(&self, alert: &Alert) -> bool {
        alert.status == AlertState::Firing
            && self
                .acks
                .contains(&(alert.fingerprint.clone(), alert.episode))
    }

    /// The silence that mutes `alert` at `now_ms`, if any.
    pub fn silenced_by(&self, alert: &Alert, now_ms: i64) -> Option<&Silence> {
        self.silences
            .iter()
            .find(|s| s.active_at(now_ms) && all_match(&s.matchers, &alert.labels))
    }

    /// Whether `alert` is inhibited at `now_ms`.
    pub fn is_inhibited(&self, alert: &Alert, now_ms: i64) -> bool {
        self.inhibited_until(alert, now_ms).is_some()
    }

    /// Until when `alert` is inhibited: `i64::MAX` while a firing source inhibits
    /// it, the end of the latest linger while only sources that resolved within
    /// their rule's linger (default `inhibit_timing.linger`) do, `None` when
    /// nothing does.
    fn inhibited_until(&self, alert: &Alert, now_ms: i64) -> Option<i64> {
        let mut until = None;
        for rule in &self.config.inhibit_rules {
            let linger = rule
                .linger
                .unwrap_or(self.config.inhibit_timing.linger)
                .as_millis() as i64;
            for source in self.alerts.values() {
                let end = match source.status {
                    AlertState::Firing => i64::MAX,
                    // The alerter's own clock: when the resolution arrived here.
                    AlertState::Resolved => source.updated_ms.saturating_add(linger),
                };
                if end > now_ms
                    && until.is_none_or(|u| end > u)
                    && rule.inhibits(&source.labels, &alert.labels)
                {
                    until = Some(end);
                }
            }
        }
        until
    }

    /// Until when a new firing `alert` waits for a cause that could inhibit it
    /// (`inhibit_timing.wait` after it arrived), if it is such a target at all.
    fn waits_for_cause_until(&self, alert: &Alert) -> Option<i64> {
        let wait = self.config.inhibit_timing.wait.as_millis() as i64;
        (alert.status == AlertState::Firing
            && wait > 0
            && self
                .config
                .inhibit_rules
                .iter()
                .any(|r| r.may_inhibit(&alert.labels)))
        .then(|| alert.updated_ms.saturating_add(wait))
    }

    /// When the alert loop should call [`due`](Self::due) again at the latest for
    /// an alert held back by inhibition timing; `None` when nothing is held.
    pub fn next_wake_ms(&self) -> Option<i64> {
        self.next_wake_ms
    }

    fn wake_at(&mut self, at_ms: i64) {
        self.next_wake_ms = Some(self.next_wake_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    /// Whether `fingerprint` is flapping at `now_ms`.
    pub fn is_flapping(&mut self, fingerprint: &str, now_ms: i64) -> bool {
        self.flap.is_flapping(fingerprint, now_ms)
    }

    /// Every alert the engine knows, firing first.
    pub fn alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.alerts.values().collect();
        v.sort_by(|a, b| {
            (a.status != AlertState::Firing, &a.fingerprint)
                .cmp(&(b.status != AlertState::Firing, &b.fingerprint))
        });
        v
    }

    /// Records that `receiver` was told `told` about `fingerprint` (called for every
    /// alert of a notification when it is handed to the sender).
    pub(crate) fn mark_told(&mut self, receiver: &str, fingerprint: &str, told: Told) {
        self.told
            .insert((receiver.to_owned(), fingerprint.to_owned()), told);
    }

    /// What `receiver` was last told about `fingerprint`.
    pub fn told(&self, receiver: &str, fingerprint: &str) -> Option<Told> {
        self.told
            .get(&(receiver.to_owned(), fingerprint.to_owned()))
            .copied()
    }

    /// Forgets resolved alerts after [`RESOLVED_RETENTION_MS`] once no receiver still
    /// waits for their resolution (one told "firing" while a silence or inhibition
    /// held the resolution back), or after [`RESOLVED_RETENTION_MAX_MS`] regardless;
    /// then empty groups.
    fn collect_garbage(&mut self, now_ms: i64) {
        let waiting: HashSet<&str> = self
            .told
            .iter()
            .filter(|(_, t)| !matches!(t, Told::Resolved(_)))
            .map(|((_, fp), _)| fp.as_str())
            .collect();
        let expired: Vec<String> = self
            .alerts
            .values()
            .filter(|a| {
                let age = now_ms - a.updated_ms;
                a.status == AlertState::Resolved
                    && (age > RESOLVED_RETENTION_MAX_MS
                        || (age > RESOLVED_RETENTION_MS
                            && !waiting.contains(a.fingerprint.as_str())))
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in expired {
            self.alerts.remove(&fp);
            self.flap.forget(&fp, now_ms);
            self.told.retain(|(_, f), _| f != &fp);
            for g in self.groups.values_mut() {
                g.members.remove(&fp);
            }
        }
        self.groups.retain(|_, g| !g.members.is_empty());
    }
}

/// Order of what a receiver can be told within one episode.
fn rank(t: Told) -> u8 {
    match t {
        Told::Firing(_) => 0,
        Told::Acknowledged(_) => 1,
        Told::Resolved(_) => 2,
    }
}
