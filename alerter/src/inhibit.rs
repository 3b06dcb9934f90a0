//! Inhibition: while a source alert fires, matching target alerts are not notified.
//!
//! The default rules encode what an on-call engineer needs during an etcd outage: when
//! quorum is lost, the cluster cannot serve writes and every per-member symptom
//! (latency, proposals, quorum at risk, no leader) is a consequence; one page is enough.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use etcdmon_alert::{all_match, Matcher};
use etcdmon_core::config::FieldError;

/// `[inhibition]`: how long inhibition holds at its two edges.
///
/// The alerts of one incident reach the alerter a few milliseconds apart: when two
/// members of three die at once, the first member's `member_unreachable` is judged
/// before the second member is seen down, and so before `quorum_lost` exists to
/// inhibit it; at recovery `quorum_lost` resolves a moment before the last member's
/// `member_unreachable` does. Inhibition therefore holds on both edges, as
/// Alertmanager's `group_wait` does for grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InhibitTiming {
    /// A new firing alert that some rule could inhibit waits this long before it is
    /// notified, so that a cause arriving just after it can still hold it back. It
    /// adds to the notification latency of those alerts only; 0 disables it.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// A resolved source alert keeps inhibiting this long, so that the symptoms
    /// resolving just after their cause are never notified. A symptom still firing
    /// after it is notified then; 0 disables it.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for InhibitTiming {
    fn default() -> Self {
        Self {
            // Agents see members die within milliseconds of each other; a quarter
            // of a second covers that with room, and keeps a page well under a second.
            wait: Duration::from_millis(250),
            // Restarted members rejoin within about a second of each other.
            linger: Duration::from_secs(2),
        }
    }
}

impl InhibitTiming {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.wait > Duration::from_secs(60) {
            return Err(FieldError::new(
                "inhibition.wait",
                format!("{:?} holds pages too long (at most 60s)", self.wait),
            ));
        }
        check_linger("inhibition.linger", self.linger)
    }
}

/// Longest linger, of `inhibition` or of one rule.
const MAX_LINGER: Duration = Duration::from_secs(3600);

fn check_linger(field: &'static str, linger: Duration) -> Result<(), FieldError> {
    if linger > MAX_LINGER {
        return Err(FieldError::new(
            field,
            format!("{linger:?} is longer than an hour"),
        ));
    }
    Ok(())
}

/// One inhibition rule (`[[inhibit_rules]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// What the inhibiting (firing) alert must match.
    pub source_matchers: Vec<Matcher>,
    /// What an inhibited alert must match.
    pub target_matchers: Vec<Matcher>,
    /// Labels that must be equal on source and target (e.g. `cluster`).
    #[serde(default)]
    pub equal: Vec<String>,
    /// How long a resolved source of this rule keeps inhibiting, instead of
    /// `inhibition.linger`: longer for targets judged on etcd's metrics, which
    /// trail their cause by up to two scrapes.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub linger: Option<Duration>,
}

impl InhibitRule {
    fn new(source: &[&str], target: &[&str], equal: &[&str]) -> Self {
        let parse = |list: &[&str]| {
            list.iter()
                .map(|t| Matcher::parse(t).expect("built-in matchers are valid"))
                .collect()
        };
        Self {
            source_matchers: parse(source),
            target_matchers: parse(target),
            equal: equal.iter().map(|s| s.to_string()).collect(),
            linger: None,
        }
    }

    /// This rule with its own linger (see [`InhibitRule::linger`]).
    fn lingering(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self.linger {
            Some(linger) => check_linger("inhibit_rules.linger", linger),
            None => Ok(()),
        }
    }

    /// Whether some alert matching the source matchers could inhibit `target` (it
    /// matches the target matchers): such an alert waits [`InhibitTiming::wait`].
    pub fn may_inhibit(&self, target: &BTreeMap<String, String>) -> bool {
        all_match(&self.target_matchers, target)
    }

    /// Whether `source` (a firing alert) inhibits `target`. An alert never inhibits
    /// itself, so a rule whose matchers overlap cannot silence both alerts.
    pub fn inhibits(
        &self,
        source: &BTreeMap<String, String>,
        target: &BTreeMap<String, String>,
    ) -> bool {
        source != target
            && all_match(&self.source_matchers, source)
            && all_match(&self.target_matchers, target)
            && self.equal.iter().all(|l| source.get(l) == target.get(l))
    }
}

/// How long the built-in rules keep inhibiting symptoms judged on etcd's
/// metrics after their cause resolved: such a symptom is measured over the
/// interval between two scrapes, so it trails its cause by up to two of the
/// agent's default 5 s scrape intervals (failed proposals counted during an
/// outage show in the scrape after it ends).
pub const METRICS_LINGER: Duration = Duration::from_secs(15);

/// The built-in rules, used when the config has no `inhibit_rules`.
pub fn default_rules() -> Vec<InhibitRule> {
    vec![
        // Quorum lost explains everything else in the cluster: the symptoms
        // seen in the members' status...
        InhibitRule::new(
            &[r#"rule="quorum_lost""#],
            &[
                r#"rule=~"quorum_at_risk|no_leader|member_unreachable|member_isolated|members_disagree|frequent_leader_changes|raft_index_divergence""#,
            ],
            &["cluster"],
        ),
        // ...and those measured on etcd's metrics, which trail it.
        InhibitRule::new(
            &[r#"rule="quorum_lost""#],
            &[
                r#"rule=~"wal_fsync_slow|backend_commit_slow|peer_rtt_high|grpc_errors|grpc_slow_unary|proposals_failing|proposals_pending""#,
            ],
            &["cluster"],
        )
        .lingering(METRICS_LINGER),
        // A member down is paged on its own; that the cluster has no failure
        // margin left is its consequence (a rolling restart would otherwise
        // warn once per member).
        InhibitRule::new(
            &[r#"rule="member_unreachable""#],
            &[r#"rule="quorum_at_risk""#],
            &["cluster"],
        ),
        // An isolated member is the disagreement: its views differ from the rest.
        InhibitRule::new(
            &[r#"rule="member_isolated""#],
            &[r#"rule="members_disagree""#],
            &["cluster"],
        ),
        // No leader explains proposal failures and slow requests.
        InhibitRule::new(
            &[r#"rule="no_leader""#],
            &[r#"rule="frequent_leader_changes""#],
            &["cluster"],
        ),
        InhibitRule::new(
            &[r#"rule="no_leader""#],
            &[r#"rule=~"proposals_failing|proposals_pending|grpc_errors|grpc_slow_unary""#],
            &["cluster"],
        )
        .lingering(METRICS_LINGER),
        // A member that is down or critical explains its own warnings (its latency,
        // its fsync probe, ...): page for the cause, not the symptoms, most of
        // which are measured on metrics.
        InhibitRule::new(
            &[r#"severity="critical""#, r#"member=~".+""#],
            &[r#"severity="warning""#],
            &["cluster", "member"],
        )
        .lingering(METRICS_LINGER),
        // A raised NOSPACE alarm makes the quota warnings redundant.
        InhibitRule::new(
            &[r#"rule="alarm_active""#, r#"alarm="NOSPACE""#],
            &[r#"rule=~"db_near_quota|db_quota_exhaustion""#],
            &["cluster"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::labels;

    #[test]
    fn a_rules_linger_is_checked_like_the_global_one() {
        for rule in default_rules() {
            rule.validate().expect("built-in rules are valid");
        }
        let long = InhibitRule::new(&[r#"rule="a""#], &[r#"rule="b""#], &[])
            .lingering(Duration::from_secs(7200));
        let e = long.validate().expect_err("two hours");
        assert_eq!(e.field, "inhibit_rules.linger");
        let timing = InhibitTiming {
            linger: Duration::from_secs(7200),
            ..InhibitTiming::default()
        };
        assert_eq!(
            timing.validate().expect_err("two hours").field,
            "inhibition.linger"
        );
    }

    #[test]
    fn quorum_lost_inhibits_member_symptoms_of_its_own_cluster_only() {
        let rules = default_rules();
        let lost = labels(&[("cluster", "a"), ("rule", "quorum_lost")]);
        let slow_a = labels(&[
            ("cluster", "a"),
            ("member", "m1"),
            ("rule", "wal_fsync_slow"),
        ]);
        let slow_b = labels(&[
            ("cluster", "b"),
            ("member", "m1"),
            ("rule", "wal_fsync_slow"),
        ]);
        let full_a = labels(&[("cluster", "a"), ("rule", "fs_nearly_full")]);
        let any = |s: &BTreeMap<String, String>, t: &BTreeMap<String, String>| {
            rules.iter().any(|r| r.inhibits(s, t))
        };
        assert!(any(&lost, &slow_a));
        assert!(!any(&lost, &slow_b), "other cluster");
        assert!(!any(&lost, &full_a), "not a consequence of quorum loss");
        assert!(!any(&lost, &lost), "never itself");

        // A critical alert of a member hides that member's warnings only.
        let down_m1 = labels(&[
            ("cluster", "a"),
            ("member", "m1"),
            ("rule", "member_unreachable"),
            ("severity", "critical"),
        ]);
        let warn = |m: &str| {
            labels(&[
                ("cluster", "a"),
                ("member", m),
                ("rule", "fsync_probe_slow"),
                ("severity", "warning"),
            ])
        };
        assert!(any(&down_m1, &warn("m1")));
        assert!(!any(&down_m1, &warn("m2")));

        // NOSPACE, by its own label, hides the quota warnings; CORRUPT does not.
        let alarm = |a: &str| labels(&[("cluster", "a"), ("rule", "alarm_active"), ("alarm", a)]);
        let near = labels(&[
            ("cluster", "a"),
            ("member", "m1"),
            ("rule", "db_near_quota"),
        ]);
        assert!(any(&alarm("NOSPACE"), &near));
        assert!(!any(&alarm("CORRUPT"), &near));
    }
}
