//! The built-in rules that judge the live state. Each is a function from
//! the clusters' snapshot to observations; thresholds come from
//! [`RuleSettings`]. What each rule means and what to do is in
//! `docs/alerts.md`.

use super::config::RuleSettings;
use super::engine::Observation;
use crate::state::{ClusterState, MemberState};
use std::collections::{BTreeMap, BTreeSet};

/// A rule's identity and its observation function.
pub struct Rule {
    /// Name, also the `rule` label.
    pub name: &'static str,
    /// What it observes.
    pub check: fn(&ClusterState, &RuleSettings) -> Vec<Observation>,
}

/// Every built-in rule, in evaluation order.
pub const RULES: &[Rule] = &[
    Rule {
        name: "member_unreachable",
        check: member_unreachable,
    },
    Rule {
        name: "agent_silent",
        check: agent_silent,
    },
    Rule {
        name: "no_leader",
        check: no_leader,
    },
    Rule {
        name: "quorum_lost",
        check: quorum_lost,
    },
    Rule {
        name: "quorum_at_risk",
        check: quorum_at_risk,
    },
    Rule {
        name: "members_disagree",
        check: members_disagree,
    },
    Rule {
        name: "raft_index_divergence",
        check: raft_index_divergence,
    },
    Rule {
        name: "alarm_active",
        check: alarm_active,
    },
    Rule {
        name: "db_near_quota",
        check: db_near_quota,
    },
    Rule {
        name: "db_fragmented",
        check: db_fragmented,
    },
    Rule {
        name: "fs_nearly_full",
        check: fs_nearly_full,
    },
    Rule {
        name: "fds_near_limit",
        check: fds_near_limit,
    },
    Rule {
        name: "memory_low",
        check: memory_low,
    },
    Rule {
        name: "fsync_probe_slow",
        check: fsync_probe_slow,
    },
    Rule {
        name: "cert_expiring",
        check: cert_expiring,
    },
    Rule {
        name: "wal_fsync_slow",
        check: wal_fsync_slow,
    },
    Rule {
        name: "backend_commit_slow",
        check: backend_commit_slow,
    },
    Rule {
        name: "peer_rtt_high",
        check: peer_rtt_high,
    },
    Rule {
        name: "grpc_errors",
        check: grpc_errors,
    },
    Rule {
        name: "grpc_slow_unary",
        check: grpc_slow_unary,
    },
    Rule {
        name: "proposals_failing",
        check: proposals_failing,
    },
    Rule {
        name: "proposals_pending",
        check: proposals_pending,
    },
    Rule {
        name: "db_quota_exhaustion",
        check: db_quota_exhaustion,
    },
    Rule {
        name: "frequent_leader_changes",
        check: frequent_leader_changes,
    },
];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn member_obs(
    c: &ClusterState,
    m: &MemberState,
    bad: Option<bool>,
    value: f64,
    summary: String,
    description: String,
) -> Observation {
    Observation {
        labels: labels(&[("cluster", &c.name), ("member", &m.name)]),
        bad,
        value,
        summary,
        description,
    }
}

fn cluster_obs(
    c: &ClusterState,
    bad: Option<bool>,
    value: f64,
    summary: String,
    description: String,
) -> Observation {
    Observation {
        labels: labels(&[("cluster", &c.name)]),
        bad,
        value,
        summary,
        description,
    }
}

/// A member whose agent is connected and current: its view can be trusted.
fn watched(m: &MemberState) -> bool {
    m.agent_connected && !m.stale
}

/// A member that answers: watched and reachable.
fn available(m: &MemberState) -> bool {
    watched(m) && m.reachable == Some(true)
}

/// Count-down threshold with hysteresis: bad below `fire`, fine above
/// `clear` (days or hours left).
fn countdown(value: f64, fire: f64, clear: f64) -> Option<bool> {
    band(-value, -fire, -clear)
}

/// Threshold with hysteresis: bad above `fire`, fine below `clear`.
fn band(value: f64, fire: f64, clear: f64) -> Option<bool> {
    if value > fire {
        Some(true)
    } else if value < clear {
        Some(false)
    } else {
        None
    }
}

/// The agent beside the member cannot reach etcd (process gone, hung, TLS
/// or auth broken). Distinct from [`agent_silent`]: here the agent talks.
fn member_unreachable(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| watched(m) && m.reachable.is_some())
        .map(|m| {
            let down = m.reachable == Some(false);
            member_obs(
                c,
                m,
                Some(down),
                if down { 1.0 } else { 0.0 },
                format!("etcd member {} is unreachable from its agent", m.name),
                format!(
                    "The agent on {} cannot reach etcd: {}",
                    m.node, m.last_error
                ),
            )
        })
        .collect()
}

/// The agent's stream is gone or silent: we do not know how the member is.
fn agent_silent(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    c.members
        .values()
        .map(|m| {
            let silent = !watched(m);
            member_obs(
                c,
                m,
                Some(silent),
                if silent { 1.0 } else { 0.0 },
                format!("the agent watching {} is silent", m.name),
                format!(
                    "No stream from the agent on {} ({}); the member itself may be fine.",
                    m.node,
                    if m.agent_connected {
                        "stream open but nothing received"
                    } else {
                        "stream closed"
                    }
                ),
            )
        })
        .collect()
}

/// No available member knows a leader.
fn no_leader(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let avail: Vec<&MemberState> = c.members.values().filter(|m| available(m)).collect();
    if avail.is_empty() {
        return Vec::new(); // nothing to judge by; quorum_lost / member_unreachable speak
    }
    let leaderless = avail.iter().all(|m| m.leader_id.is_empty());
    vec![cluster_obs(
        c,
        Some(leaderless),
        if leaderless { 1.0 } else { 0.0 },
        format!("cluster {} has no leader", c.name),
        format!(
            "None of the {} reachable members reports a leader: writes fail.",
            avail.len()
        ),
    )]
}

/// (available, total) members, and whether every connected agent has reported a
/// status yet. Until then (a collector or agent just started) the count is not
/// judged either way: counting those members as unavailable would page "quorum
/// lost" for the first second after every start.
fn quorum(c: &ClusterState) -> Option<(usize, usize, bool)> {
    let n = c.member_count().max(c.members.len());
    if n == 0 {
        return None;
    }
    let ok = c.members.values().filter(|m| available(m)).count();
    // Connected but no status yet; such an agent is also "stale" until it sends
    // something, so `watched` would not catch it.
    let settled = !c
        .members
        .values()
        .any(|m| m.agent_connected && m.reachable.is_none());
    Some((ok, n, settled))
}

/// Fewer available members than a majority: the cluster cannot write.
fn quorum_lost(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let Some((ok, n, settled)) = quorum(c) else {
        return Vec::new();
    };
    let majority = n / 2 + 1;
    vec![cluster_obs(
        c,
        settled.then_some(ok < majority),
        ok as f64,
        format!("cluster {} lost quorum ({ok} of {n} members available)", c.name),
        format!("{ok} of {n} members answer; {majority} are needed for a quorum. Members without an agent count as unavailable."),
    )]
}

/// No failure margin left: exactly a majority available (one more failure
/// loses quorum), or worse. It keeps firing while quorum is lost, so it
/// never "resolves" as things get worse; the alerter's inhibition lets
/// `quorum_lost` silence it.
fn quorum_at_risk(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let Some((ok, n, settled)) = quorum(c) else {
        return Vec::new();
    };
    let majority = n / 2 + 1;
    if n < 2 {
        return Vec::new();
    }
    vec![cluster_obs(
        c,
        settled.then_some(ok <= majority),
        ok as f64,
        format!("cluster {} has no failure margin ({ok} of {n} members available)", c.name),
        format!("{ok} of {n} members answer, exactly the {majority} needed: one more failure loses quorum."),
    )]
}

/// Available members see different leaders or terms: a partition.
fn members_disagree(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let avail: Vec<&MemberState> = c.members.values().filter(|m| available(m)).collect();
    if avail.len() < 2 {
        return Vec::new();
    }
    let leaders: BTreeSet<&str> = avail
        .iter()
        .map(|m| m.leader_id.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    let terms: BTreeSet<u64> = avail.iter().map(|m| m.raft_term).collect();
    let bad = leaders.len() > 1 || terms.len() > 1;
    let views: Vec<String> = avail
        .iter()
        .map(|m| {
            format!(
                "{}: leader {} term {}",
                m.name,
                if m.leader_id.is_empty() {
                    "-"
                } else {
                    &m.leader_id
                },
                m.raft_term
            )
        })
        .collect();
    vec![cluster_obs(
        c,
        Some(bad),
        leaders.len().max(terms.len()) as f64,
        format!("members of {} disagree about the leader", c.name),
        format!("Views: {}", views.join("; ")),
    )]
}

/// Raft indexes drift apart: a member falls behind or diverges.
fn raft_index_divergence(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    let idx: Vec<u64> = c
        .members
        .values()
        .filter(|m| available(m))
        .map(|m| m.raft_index)
        .collect();
    if idx.len() < 2 {
        return Vec::new();
    }
    let spread =
        (idx.iter().max().copied().unwrap_or(0) - idx.iter().min().copied().unwrap_or(0)) as f64;
    vec![cluster_obs(
        c,
        band(spread, s.fire, s.clear),
        spread,
        format!("raft indexes of {} differ by {spread}", c.name),
        format!("Largest minus smallest raft index among available members: {spread} (fires above {}, clears below {}).", s.fire, s.clear),
    )]
}

/// An etcd alarm (NOSPACE, CORRUPT) is active.
fn alarm_active(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let avail: Vec<&MemberState> = c.members.values().filter(|m| available(m)).collect();
    if avail.is_empty() {
        return Vec::new();
    }
    let active: BTreeSet<&str> = avail
        .iter()
        .flat_map(|m| m.alarms.iter().map(String::as_str))
        .collect();
    let known: BTreeSet<&str> = active.iter().copied().collect();
    // Observe every active alarm as bad; a resolved one disappears and the
    // engine resolves it.
    known
        .into_iter()
        .map(|a| Observation {
            labels: labels(&[("cluster", &c.name), ("alarm", a)]),
            bad: Some(true),
            value: 1.0,
            summary: format!("etcd alarm {a} in {}", c.name),
            description: format!(
                "etcd raised alarm {a}; the cluster refuses writes until it is disarmed."
            ),
        })
        .collect()
}

fn per_member_ratio(
    c: &ClusterState,
    s: &RuleSettings,
    ratio: impl Fn(&MemberState) -> Option<f64>,
    summary: impl Fn(&MemberState, f64) -> String,
) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| watched(m))
        .filter_map(|m| {
            let r = ratio(m)?;
            Some(member_obs(
                c,
                m,
                band(r, s.fire, s.clear),
                r,
                summary(m, r),
                format!(
                    "Measured {r:.4} (fires above {}, clears below {}).",
                    s.fire, s.clear
                ),
            ))
        })
        .collect()
}

/// The database approaches its quota (NOSPACE follows).
fn db_near_quota(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| {
            (m.quota_bytes > 0.0 && m.reachable == Some(true))
                .then(|| m.db_size_bytes as f64 / m.quota_bytes)
        },
        |m, r| format!("db of {} at {:.0}% of its quota", m.name, r * 100.0),
    )
}

/// Much of the database file is free space: defragment.
fn db_fragmented(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    const MIN_SIZE: i64 = 100 * 1024 * 1024;
    per_member_ratio(
        c,
        s,
        |m| {
            (m.reachable == Some(true) && m.db_size_bytes >= MIN_SIZE)
                .then(|| 1.0 - m.db_size_in_use_bytes as f64 / m.db_size_bytes as f64)
        },
        |m, r| format!("db of {} is {:.0}% free space", m.name, r * 100.0),
    )
}

/// The data-dir filesystem is nearly full.
fn fs_nearly_full(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| {
            m.host
                .as_ref()
                .filter(|h| h.fs_total_bytes > 0)
                .map(|h| 1.0 - h.fs_available_bytes as f64 / h.fs_total_bytes as f64)
        },
        |m, r| {
            format!(
                "data-dir filesystem of {} is {:.0}% full",
                m.name,
                r * 100.0
            )
        },
    )
}

/// etcd's open file descriptors approach the limit.
fn fds_near_limit(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| {
            m.host
                .as_ref()
                .filter(|h| h.max_fds > 0 && h.max_fds != u64::MAX)
                .map(|h| h.open_fds as f64 / h.max_fds as f64)
        },
        |m, r| {
            format!(
                "etcd on {} uses {:.0}% of its file descriptors",
                m.name,
                r * 100.0
            )
        },
    )
}

/// Little memory left on the member's host.
fn memory_low(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| {
            m.host
                .as_ref()
                .filter(|h| h.memory_total_bytes > 0)
                .map(|h| 1.0 - h.memory_available_bytes as f64 / h.memory_total_bytes as f64)
        },
        |m, r| {
            format!(
                "host of {} has {:.0}% of its memory in use",
                m.name,
                r * 100.0
            )
        },
    )
}

/// The agent's fsync probe is too slow for etcd.
fn fsync_probe_slow(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| m.fsync_p99_seconds,
        |m, v| {
            format!(
                "fsync p99 on the disk of {} is {:.1} ms",
                m.name,
                v * 1000.0
            )
        },
    )
}

/// A certificate expires soon.
fn cert_expiring(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| watched(m))
        .flat_map(|m| {
            m.certificates.iter().map(move |cert| {
                let bad = countdown(cert.days_left, s.fire, s.clear);
                Observation {
                    labels: labels(&[
                        ("cluster", &c.name),
                        ("member", &m.name),
                        ("path", &cert.path),
                    ]),
                    bad,
                    value: cert.days_left,
                    summary: format!(
                        "certificate {} on {} expires in {:.1} days",
                        cert.path, m.name, cert.days_left
                    ),
                    description: format!(
                        "Renew it; fires below {} days, clears above {}.",
                        s.fire, s.clear
                    ),
                }
            })
        })
        .collect()
}

/// A per-member figure from etcd's own metrics against a threshold.
fn derived(
    c: &ClusterState,
    s: &RuleSettings,
    figure: impl Fn(&MemberState) -> Option<f64>,
    what: &str,
    unit: impl Fn(f64) -> String,
) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| watched(m))
        .filter_map(|m| {
            let v = figure(m)?;
            Some(member_obs(
                c,
                m,
                band(v, s.fire, s.clear),
                v,
                format!("{what} on {} is {}", m.name, unit(v)),
                format!(
                    "Measured {} (fires above {}, clears below {}).",
                    unit(v),
                    unit(s.fire),
                    unit(s.clear)
                ),
            ))
        })
        .collect()
}

fn ms(v: f64) -> String {
    format!("{:.1} ms", v * 1000.0)
}

/// WAL fsync p99 over the last scrape interval (etcd: under 10 ms).
fn wal_fsync_slow(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(c, s, |m| m.derived.wal_fsync_p99, "WAL fsync p99", ms)
}

/// Backend commit p99 (etcd: under 25 ms).
fn backend_commit_slow(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(
        c,
        s,
        |m| m.derived.backend_commit_p99,
        "backend commit p99",
        ms,
    )
}

/// Peer round-trip p99.
fn peer_rtt_high(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(c, s, |m| m.derived.peer_rtt_p99, "peer round-trip p99", ms)
}

/// Server-side gRPC errors, without cancelled Watch/LeaseKeepAlive streams.
fn grpc_errors(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(
        c,
        s,
        |m| m.derived.grpc_error_ratio,
        "gRPC error ratio",
        |v| format!("{:.2}%", v * 100.0),
    )
}

/// Slow unary gRPC calls, without Defragment (which is slow by nature).
fn grpc_slow_unary(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(c, s, |m| m.derived.grpc_unary_p99, "unary gRPC p99", ms)
}

/// Raft proposals failing.
fn proposals_failing(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(
        c,
        s,
        |m| m.derived.proposals_failed_rate,
        "failed proposals",
        |v| format!("{v:.3}/s"),
    )
}

/// Raft proposals piling up.
fn proposals_pending(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    derived(
        c,
        s,
        |m| m.derived.proposals_pending,
        "pending proposals",
        |v| format!("{v:.0}"),
    )
}

/// At the current growth, the db reaches its quota within the horizon.
fn db_quota_exhaustion(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| watched(m) && m.reachable == Some(true) && m.quota_bytes > 0.0)
        .filter_map(|m| {
            let growth = m.derived.db_growth_bytes_per_second?;
            let hours = if growth > 0.0 {
                (m.quota_bytes - m.db_size_bytes as f64).max(0.0) / growth / 3600.0
            } else {
                f64::INFINITY
            };
            let bad = countdown(hours, s.fire, s.clear);
            Some(member_obs(
                c,
                m,
                bad,
                hours,
                format!(
                    "db of {} reaches its quota in {hours:.1} h at the current growth",
                    m.name
                ),
                format!(
                    "Growing {growth:.0} B/s over the last hour; {} of {} used (fires below {} h).",
                    m.db_size_bytes, m.quota_bytes, s.fire
                ),
            ))
        })
        .collect()
}

/// Leader elections happen too often (unstable network or disk, or
/// planned maintenance: silence it then).
fn frequent_leader_changes(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    let now = c
        .members
        .values()
        .map(|m| m.last_seen_ms)
        .max()
        .unwrap_or(0);
    let n = c.leader_changes_last_hour(now) as f64;
    vec![cluster_obs(
        c,
        band(n, s.fire, s.clear),
        n,
        format!("{n} leader changes in {} in the last hour", c.name),
        format!(
            "Fires above {} changes per hour, clears below {}.",
            s.fire, s.clear
        ),
    )]
}
