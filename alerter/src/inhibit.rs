//! Inhibition: while a source alert fires, matching target alerts are not notified.
//!
//! The default rules encode what an on-call engineer needs during an etcd outage: when
//! quorum is lost, the cluster cannot serve writes and every per-member symptom
//! (latency, proposals, quorum at risk, no leader) is a consequence; one page is enough.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use etcdmon_alert::{all_match, Matcher};

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
        }
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

/// The built-in rules, used when the config has no `inhibit_rules`.
pub fn default_rules() -> Vec<InhibitRule> {
    vec![
        // Quorum lost explains everything else in the cluster.
        InhibitRule::new(
            &[r#"rule="quorum_lost""#],
            &[
                r#"rule=~"quorum_at_risk|no_leader|member_unreachable|members_disagree|wal_fsync_slow|backend_commit_slow|peer_rtt_high|grpc_errors|grpc_slow_unary|proposals_failing|proposals_pending|frequent_leader_changes|raft_index_divergence""#,
            ],
            &["cluster"],
        ),
        // No leader explains proposal failures and slow requests.
        InhibitRule::new(
            &[r#"rule="no_leader""#],
            &[
                r#"rule=~"proposals_failing|proposals_pending|grpc_errors|grpc_slow_unary|frequent_leader_changes""#,
            ],
            &["cluster"],
        ),
        // A member that is down or critical explains its own warnings (its latency,
        // its fsync probe, ...): page for the cause, not the symptoms.
        InhibitRule::new(
            &[r#"severity="critical""#, r#"member=~".+""#],
            &[r#"severity="warning""#],
            &["cluster", "member"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::labels;

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
    }
}
