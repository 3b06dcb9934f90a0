//! Settings of the built-in rules: every threshold and `for` duration can
//! be changed, and every rule can be turned off, under `[rules.<name>]`.

use super::engine::Severity;
use etcdmon_core::config::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of one rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Evaluate this rule.
    pub enabled: bool,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// Firing threshold (unit depends on the rule; unused by yes/no rules).
    pub fire: f64,
    /// Clear threshold; between `clear` and `fire` the state does not
    /// change (hysteresis).
    pub clear: f64,
    /// Severity label.
    pub severity: Severity,
}

/// Overrides of one rule's defaults; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    /// Evaluate this rule.
    pub enabled: Option<bool>,
    /// How long the condition must hold.
    #[serde(rename = "for", default, with = "humantime_serde::option")]
    pub for_: Option<Duration>,
    /// Firing threshold.
    pub fire: Option<f64>,
    /// Clear threshold.
    pub clear: Option<f64>,
    /// Severity.
    pub severity: Option<Severity>,
}

fn s(for_secs: u64, fire: f64, clear: f64, severity: Severity) -> RuleSettings {
    RuleSettings {
        enabled: true,
        for_: Duration::from_secs(for_secs),
        fire,
        clear,
        severity,
    }
}

/// The defaults of every built-in rule.
pub fn defaults() -> BTreeMap<&'static str, RuleSettings> {
    use Severity::*;
    [
        // Yes/no rules: fire/clear unused. Member down, no leader and
        // quorum fire at once: these are the pages that must be fast.
        ("member_unreachable", s(0, 0.0, 0.0, Critical)),
        ("agent_silent", s(15, 0.0, 0.0, Warning)),
        ("no_leader", s(0, 0.0, 0.0, Critical)),
        ("quorum_lost", s(0, 0.0, 0.0, Critical)),
        ("quorum_at_risk", s(0, 0.0, 0.0, Warning)),
        // Elections make views differ for a moment; a partition persists.
        ("members_disagree", s(10, 0.0, 0.0, Critical)),
        ("raft_index_divergence", s(30, 1000.0, 500.0, Warning)),
        ("alarm_active", s(0, 0.0, 0.0, Critical)),
        ("db_near_quota", s(0, 0.8, 0.75, Warning)),
        ("db_fragmented", s(600, 0.5, 0.4, Info)),
        ("fs_nearly_full", s(60, 0.9, 0.85, Warning)),
        ("fds_near_limit", s(60, 0.8, 0.7, Warning)),
        ("memory_low", s(120, 0.9, 0.85, Warning)),
        // etcd's guidance: WAL fsync p99 under 10 ms.
        ("fsync_probe_slow", s(60, 0.010, 0.008, Warning)),
        ("cert_expiring", s(0, 14.0, 15.0, Warning)),
        ("wal_fsync_slow", s(60, 0.010, 0.008, Warning)),
        ("backend_commit_slow", s(60, 0.025, 0.020, Warning)),
        ("peer_rtt_high", s(60, 0.050, 0.040, Warning)),
        ("grpc_errors", s(120, 0.01, 0.005, Warning)),
        ("grpc_slow_unary", s(120, 0.15, 0.10, Warning)),
        ("proposals_failing", s(120, 0.01, 0.001, Warning)),
        ("proposals_pending", s(60, 5.0, 2.0, Warning)),
        // Counts down, in hours: fires when the quota is less than a day away.
        ("db_quota_exhaustion", s(300, 24.0, 36.0, Warning)),
        ("frequent_leader_changes", s(0, 3.0, 2.0, Warning)),
    ]
    .into_iter()
    .collect()
}

/// Rules whose value counts down (days, hours left): they fire below.
pub const COUNTDOWN: &[&str] = &["cert_expiring", "db_quota_exhaustion"];

/// Applies overrides to the defaults; an unknown rule name or a clear
/// threshold on the wrong side of the fire threshold is an error naming
/// the field.
pub fn resolve(
    overrides: &BTreeMap<String, RuleOverride>,
) -> Result<BTreeMap<&'static str, RuleSettings>, FieldError> {
    let mut all = defaults();
    for (name, o) in overrides {
        let Some(r) = all.get_mut(name.as_str()) else {
            return Err(FieldError::new(
                "rules",
                format!("unknown rule {name:?}; see docs/alerts.md for the names"),
            ));
        };
        if let Some(v) = o.enabled {
            r.enabled = v;
        }
        if let Some(v) = o.for_ {
            r.for_ = v;
        }
        if let Some(v) = o.fire {
            r.fire = v;
        }
        if let Some(v) = o.clear {
            r.clear = v;
        }
        if let Some(v) = o.severity {
            r.severity = v;
        }
    }
    // Count-down rules fire below their threshold; the rest fire above.
    for (name, r) in &all {
        let ok = if COUNTDOWN.contains(name) {
            r.clear >= r.fire
        } else {
            r.clear <= r.fire
        };
        if !ok {
            return Err(FieldError::new(
                "rules",
                format!(
                    "rules.{name}: clear ({}) must be on the safe side of fire ({})",
                    r.clear, r.fire
                ),
            ));
        }
    }
    Ok(all)
}
