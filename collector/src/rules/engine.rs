//! The rule engine's state machine: one entry per alert fingerprint.
//!
//! Each evaluation, every rule reports [`Observation`]s: "this subject (a
//! member, a cluster) looks bad / looks fine, with this value". The engine
//! turns them into transitions:
//!
//! ```text
//! inactive --bad--> pending --bad for `for`--> firing --fine (clear)--> resolved (emitted)
//!              \--fine--> inactive (nothing emitted)
//! ```
//!
//! Only firing and resolved are emitted, each once, with a transition
//! number that increases per fingerprint, so the bus can deduplicate
//! retried publishes and the alerter can tell a new incident from a repeat.
//! Hysteresis lives in the observation: a threshold rule says `bad` above
//! its firing threshold and `fine` only below its (lower) clear threshold;
//! in between it says neither and the state stays as it is.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcdmon_alert::{fingerprint, AlertState, Severity};

/// What a rule sees about one subject in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Identifying labels of the subject (cluster, member, ...); with the
    /// rule name they make the fingerprint.
    pub labels: BTreeMap<String, String>,
    /// `Some(true)`: the condition holds; `Some(false)`: it clearly does
    /// not (below the clear threshold); `None`: in the hysteresis band.
    pub bad: Option<bool>,
    /// The measured value, for the description.
    pub value: f64,
    /// One line for people, e.g. "m1 unreachable: refused: connection refused".
    pub summary: String,
    /// Detail with the measured value and thresholds.
    pub description: String,
    /// The evidence is conclusive on its own: fire at once, without the
    /// rule's `for`. A `for` waits out views that are briefly wrong (an
    /// election in progress); some evidence cannot be (every peer's probe
    /// failing to reach a member that still answers its own agent).
    pub conclusive: bool,
}

/// A state change to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Stable id of the alert: rule + identifying labels.
    pub fingerprint: String,
    /// Rule name.
    pub rule: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// The observation that caused it.
    pub observation: Observation,
    /// Increases with each emitted transition of this fingerprint.
    pub transition: u64,
    /// When the emitted state began, ms since the epoch.
    pub since_ms: i64,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Bad since `since_ms`; fires at `fires_at_ms` if still bad then.
    Pending {
        since_ms: i64,
        fires_at_ms: i64,
    },
    Firing,
}

#[derive(Debug, Clone)]
struct Entry {
    rule: &'static str,
    phase: Phase,
    last: Observation,
    /// A restored alert whose subject is not observed yet is not resolved before
    /// this time: after a collector restart the agents need a moment to reconnect.
    hold_until_ms: i64,
}

/// State of every alert the engine knows.
#[derive(Debug, Default)]
pub struct Engine {
    entries: HashMap<String, Entry>,
    /// Transition counters survive an entry going back to inactive, so a
    /// fingerprint's numbers never repeat within this process.
    counters: HashMap<String, u64>,
}

impl Engine {
    /// Applies one rule's observations at `now_ms` and returns the
    /// transitions to publish. Subjects of this rule that are firing but no
    /// longer observed (a member removed) resolve.
    pub fn apply(
        &mut self,
        rule: &'static str,
        severity: Severity,
        for_: Duration,
        observations: Vec<Observation>,
        now_ms: i64,
    ) -> Vec<Transition> {
        let for_ms = i64::try_from(for_.as_millis()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut seen = Vec::with_capacity(observations.len());
        for obs in observations {
            let fp = fingerprint(rule, &obs.labels);
            seen.push(fp.clone());
            let entry = self.entries.get(&fp).cloned();
            match (entry, obs.bad) {
                (None, Some(true)) => {
                    let phase = Phase::Pending {
                        since_ms: now_ms,
                        fires_at_ms: now_ms.saturating_add(for_ms),
                    };
                    self.entries.insert(
                        fp.clone(),
                        Entry {
                            rule,
                            phase,
                            last: obs.clone(),
                            hold_until_ms: 0,
                        },
                    );
                    // A `for` of zero, or conclusive evidence, fires in the same
                    // evaluation.
                    if for_ms == 0 || obs.conclusive {
                        out.extend(self.fire(&fp, rule, severity, now_ms, now_ms));
                    }
                }
                (None, _) => {}
                (Some(e), Some(true)) => {
                    let conclusive = obs.conclusive;
                    if let Some(entry) = self.entries.get_mut(&fp) {
                        entry.last = obs;
                    }
                    if let Phase::Pending { since_ms, .. } = e.phase {
                        if now_ms - since_ms >= for_ms || conclusive {
                            out.extend(self.fire(&fp, rule, severity, since_ms, now_ms));
                        }
                    }
                }
                (Some(e), Some(false)) => match e.phase {
                    Phase::Pending { .. } => {
                        self.entries.remove(&fp);
                    }
                    Phase::Firing => out.push(self.resolve(&fp, rule, severity, obs, now_ms)),
                },
                (Some(_), None) => {
                    if let Some(entry) = self.entries.get_mut(&fp) {
                        entry.last = obs;
                    }
                }
            }
        }
        // Subjects that disappeared.
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(fp, e)| e.rule == rule && !seen.contains(fp))
            .map(|(fp, _)| fp.clone())
            .collect();
        for fp in gone {
            let Some(e) = self.entries.get(&fp).cloned() else {
                continue;
            };
            match e.phase {
                Phase::Pending { .. } => {
                    self.entries.remove(&fp);
                }
                Phase::Firing if now_ms < e.hold_until_ms => {}
                Phase::Firing => {
                    let mut obs = e.last.clone();
                    obs.bad = Some(false);
                    obs.summary = format!("{} (no longer observed)", obs.summary);
                    out.push(self.resolve(&fp, rule, severity, obs, now_ms));
                }
            }
        }
        out
    }

    /// When the earliest pending alert is due to fire, ms since the epoch: the rule
    /// loop evaluates then, so a `for` of one second fires after one second, not
    /// at the next periodic round.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.entries
            .values()
            .filter_map(|e| match e.phase {
                Phase::Pending { fires_at_ms, .. } => Some(fires_at_ms),
                Phase::Firing => None,
            })
            .min()
    }

    /// The rule and labels of every alert firing now.
    pub fn firing_alerts(&self) -> impl Iterator<Item = (&'static str, &BTreeMap<String, String>)> {
        self.entries
            .values()
            .filter(|e| matches!(e.phase, Phase::Firing))
            .map(|e| (e.rule, &e.last.labels))
    }

    /// Fingerprints currently firing, for the API and tests.
    pub fn firing(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.phase, Phase::Firing))
            .map(|(fp, _)| fp.clone())
            .collect();
        v.sort();
        v
    }

    /// The next transition number of `fp`: above every earlier one and at least
    /// `now_ms`, so numbers keep increasing across collector restarts (the alerter
    /// treats a lower number as a stale redelivery) without being stored anywhere.
    fn next_transition(&mut self, fp: &str, now_ms: i64) -> u64 {
        let c = self.counters.entry(fp.to_string()).or_insert(0);
        *c = (*c + 1).max(u64::try_from(now_ms).unwrap_or(0));
        *c
    }

    /// Takes over an alert that was firing before a restart (from the alert store):
    /// it is firing without a new transition, so it is not announced twice, and it
    /// resolves when its condition clears, or when its subject is still not observed
    /// at `hold_until_ms`.
    pub fn restore_firing(
        &mut self,
        fingerprint: &str,
        rule: &'static str,
        observation: Observation,
        transition: u64,
        hold_until_ms: i64,
    ) {
        let c = self.counters.entry(fingerprint.to_string()).or_insert(0);
        *c = (*c).max(transition);
        self.entries.insert(
            fingerprint.to_string(),
            Entry {
                rule,
                phase: Phase::Firing,
                last: observation,
                hold_until_ms,
            },
        );
    }

    fn fire(
        &mut self,
        fp: &str,
        rule: &'static str,
        severity: Severity,
        since_ms: i64,
        now_ms: i64,
    ) -> Option<Transition> {
        let transition = self.next_transition(fp, now_ms);
        let e = self.entries.get_mut(fp)?;
        e.phase = Phase::Firing;
        Some(Transition {
            fingerprint: fp.to_string(),
            rule,
            severity,
            state: AlertState::Firing,
            observation: e.last.clone(),
            transition,
            since_ms,
        })
    }

    fn resolve(
        &mut self,
        fp: &str,
        rule: &'static str,
        severity: Severity,
        obs: Observation,
        now_ms: i64,
    ) -> Transition {
        self.entries.remove(fp);
        let transition = self.next_transition(fp, now_ms);
        Transition {
            fingerprint: fp.to_string(),
            rule,
            severity,
            state: AlertState::Resolved,
            observation: obs,
            transition,
            since_ms: now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(member: &str, bad: Option<bool>) -> Observation {
        Observation {
            labels: [
                ("cluster".to_string(), "c".to_string()),
                ("member".to_string(), member.to_string()),
            ]
            .into_iter()
            .collect(),
            bad,
            value: 1.0,
            summary: format!("{member} bad"),
            description: String::new(),
            conclusive: false,
        }
    }

    const R: &str = "member_unreachable";

    #[test]
    fn zero_for_fires_at_once_and_resolves_once() {
        let mut e = Engine::default();
        let t = e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(true))],
            1_000,
        );
        assert_eq!(t.len(), 1);
        // Transition numbers are at least the evaluation time (restart-safe).
        assert!(t[0].state.is_firing() && t[0].transition == 1_000 && t[0].since_ms == 1_000);
        // Still bad: nothing new.
        assert!(e
            .apply(
                R,
                Severity::Critical,
                Duration::ZERO,
                vec![obs("m1", Some(true))],
                2_000
            )
            .is_empty());
        let t = e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(false))],
            3_000,
        );
        assert_eq!(t.len(), 1);
        assert!(!t[0].state.is_firing() && t[0].transition == 3_000);
        assert!(e
            .apply(
                R,
                Severity::Critical,
                Duration::ZERO,
                vec![obs("m1", Some(false))],
                4_000
            )
            .is_empty());
        // A new incident gets new transition numbers, increasing even if the clock
        // stepped back.
        let t = e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(true))],
            2_500,
        );
        assert_eq!(t[0].transition, 3_001);
    }

    #[test]
    fn a_restored_alert_is_not_fired_again_and_resolves_after_the_grace() {
        let fp = fingerprint(R, &obs("m1", Some(true)).labels);
        // Still bad after the restart: no transition.
        let mut e = Engine::default();
        e.restore_firing(&fp, R, obs("m1", Some(true)), 7_000, 20_000);
        let bad = || vec![obs("m1", Some(true))];
        assert!(e
            .apply(R, Severity::Critical, Duration::ZERO, bad(), 10_000)
            .is_empty());
        assert_eq!(e.firing(), std::slice::from_ref(&fp));
        // Condition clear: resolves at once, with a higher number.
        let t = e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(false))],
            11_000,
        );
        assert_eq!(
            (t[0].state, t[0].transition),
            (AlertState::Resolved, 11_000)
        );

        // Not observed (agents reconnecting): held until the grace ends, then resolved.
        let mut e = Engine::default();
        e.restore_firing(&fp, R, obs("m1", Some(true)), 50_000, 20_000);
        assert!(e
            .apply(R, Severity::Critical, Duration::ZERO, vec![], 19_999)
            .is_empty());
        let t = e.apply(R, Severity::Critical, Duration::ZERO, vec![], 20_000);
        assert_eq!(
            (t[0].state, t[0].transition),
            (AlertState::Resolved, 50_001)
        );
    }

    #[test]
    fn for_delays_and_a_short_blip_emits_nothing() {
        let mut e = Engine::default();
        let f = Duration::from_secs(30);
        assert!(e
            .apply(R, Severity::Warning, f, vec![obs("m1", Some(true))], 0)
            .is_empty());
        assert!(e
            .apply(
                R,
                Severity::Warning,
                f,
                vec![obs("m1", Some(false))],
                10_000
            )
            .is_empty());
        assert!(e
            .apply(R, Severity::Warning, f, vec![obs("m1", Some(true))], 20_000)
            .is_empty());
        assert!(e
            .apply(R, Severity::Warning, f, vec![obs("m1", Some(true))], 40_000)
            .is_empty());
        let t = e.apply(R, Severity::Warning, f, vec![obs("m1", Some(true))], 50_000);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].since_ms, 20_000,
            "pending since the start of the bad streak"
        );
    }

    #[test]
    fn hysteresis_band_keeps_the_state() {
        let mut e = Engine::default();
        e.apply(
            R,
            Severity::Warning,
            Duration::ZERO,
            vec![obs("m1", Some(true))],
            0,
        );
        // Between clear and fire thresholds: neither.
        for t in 1..10 {
            assert!(e
                .apply(
                    R,
                    Severity::Warning,
                    Duration::ZERO,
                    vec![obs("m1", None)],
                    t * 1_000
                )
                .is_empty());
        }
        assert_eq!(e.firing().len(), 1);
    }

    #[test]
    fn a_firing_subject_that_disappears_resolves() {
        let mut e = Engine::default();
        e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(true)), obs("m2", Some(false))],
            0,
        );
        let t = e.apply(
            R,
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m2", Some(false))],
            1_000,
        );
        assert_eq!(t.len(), 1);
        assert!(!t[0].state.is_firing());
        assert!(t[0].observation.summary.contains("no longer observed"));
    }

    #[test]
    fn rules_do_not_resolve_each_others_alerts() {
        let mut e = Engine::default();
        e.apply(
            "a",
            Severity::Critical,
            Duration::ZERO,
            vec![obs("m1", Some(true))],
            0,
        );
        // Rule b observes nothing: a's alert must stay.
        assert!(e
            .apply("b", Severity::Critical, Duration::ZERO, vec![], 1_000)
            .is_empty());
        assert_eq!(e.firing().len(), 1);
    }
}
