//! Fleet series on the collector's `/metrics`: every cluster and member the
//! collector watches, so an existing Prometheus scrapes one endpoint instead
//! of every etcd.
//!
//! The series are made from the live state at each scrape (a
//! [`prometheus::core::Collector`]), never kept in gauges between scrapes: a
//! member that left the state leaves `/metrics` with it, and nothing is
//! computed for a scrape that does not come. Names follow Prometheus'
//! conventions: the `etcdmon_` prefix (the collector's own metrics are
//! `etcdmon_collector_*`), base units in the name (`_bytes`, `_seconds`),
//! yes/no as 1/0. Member series carry `cluster`, `member`, `region` and
//! `node`; cluster series `cluster` and `region`. A figure the collector does
//! not know (no scrape yet, no quota reported) is left out rather than
//! exported as 0.

use crate::state::{ClusterState, LiveState, MemberState};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Labels of every member series.
const MEMBER_LABELS: [&str; 4] = ["cluster", "member", "region", "node"];
/// Labels of every cluster series.
const CLUSTER_LABELS: [&str; 2] = ["cluster", "region"];

/// One member series: name, help, and the figure (`None`: unknown, left out).
type MemberFigure = (&'static str, &'static str, fn(&MemberState) -> Option<f64>);

fn yes(b: bool) -> Option<f64> {
    Some(if b { 1.0 } else { 0.0 })
}

/// Every member series.
const MEMBER_SERIES: &[MemberFigure] = &[
    (
        "etcdmon_member_up",
        "1 when the member's agent reached etcd in its last status probe.",
        |m| m.reachable.map(|r| if r { 1.0 } else { 0.0 }),
    ),
    (
        "etcdmon_member_agent_connected",
        "1 while the member's agent streams to this collector and is not stale.",
        |m| yes(m.agent_connected && !m.stale),
    ),
    (
        "etcdmon_member_healthy",
        "1 when the agent is connected, etcd reachable and a leader known.",
        |m| yes(m.healthy),
    ),
    (
        "etcdmon_member_is_leader",
        "1 when the member is the leader (by its own status).",
        |m| yes(m.is_leader),
    ),
    (
        "etcdmon_member_has_leader",
        "1 when the member knows a leader.",
        |m| {
            m.reachable
                .map(|_| if m.leader_id.is_empty() { 0.0 } else { 1.0 })
        },
    ),
    (
        "etcdmon_member_is_learner",
        "1 for a learner (does not vote).",
        |m| yes(m.is_learner),
    ),
    (
        "etcdmon_member_raft_term",
        "Raft term the member reports.",
        |m| Some(m.raft_term as f64),
    ),
    (
        "etcdmon_member_raft_index",
        "Raft index the member reports.",
        |m| Some(m.raft_index as f64),
    ),
    (
        "etcdmon_member_revision",
        "Revision of the member's KV store.",
        |m| (m.revision > 0).then_some(m.revision as f64),
    ),
    (
        "etcdmon_member_db_size_bytes",
        "Size of the member's backend database file.",
        |m| Some(m.db_size_bytes as f64),
    ),
    (
        "etcdmon_member_db_size_in_use_bytes",
        "Bytes of the backend database in use (the rest is free pages).",
        |m| Some(m.db_size_in_use_bytes as f64),
    ),
    (
        "etcdmon_member_db_quota_bytes",
        "The member's backend quota (--quota-backend-bytes).",
        |m| (m.quota_bytes > 0.0).then_some(m.quota_bytes),
    ),
    (
        "etcdmon_member_status_latency_seconds",
        "Duration of the agent's last status call to the member.",
        |m| m.status_latency_seconds,
    ),
    (
        "etcdmon_member_wal_fsync_p99_seconds",
        "p99 of WAL fsync between the agent's last two scrapes.",
        |m| m.derived.wal_fsync_p99,
    ),
    (
        "etcdmon_member_backend_commit_p99_seconds",
        "p99 of backend commit between the agent's last two scrapes.",
        |m| m.derived.backend_commit_p99,
    ),
    (
        "etcdmon_member_peer_rtt_p99_seconds",
        "p99 of the peer round-trip time between the agent's last two scrapes.",
        |m| m.derived.peer_rtt_p99,
    ),
    (
        "etcdmon_member_grpc_unary_p99_seconds",
        "p99 of unary gRPC calls between the agent's last two scrapes.",
        |m| m.derived.grpc_unary_p99,
    ),
    (
        "etcdmon_member_fsync_probe_p99_seconds",
        "p99 of the agent's last fsync probe round on the data disk.",
        |m| m.fsync_p99_seconds,
    ),
    (
        "etcdmon_member_clock_skew_seconds",
        "How far the agent's clock is ahead of the collector's (negative: behind).",
        |m| Some(m.clock_skew_ms as f64 / 1000.0),
    ),
    (
        "etcdmon_member_last_seen_timestamp_seconds",
        "When the collector last heard from the member's agent (Unix time).",
        |m| (m.last_seen_ms > 0).then_some(m.last_seen_ms as f64 / 1000.0),
    ),
];

/// Firing alerts by cluster and severity, as the rules last left them.
#[derive(Clone, Default)]
pub struct FiringBoard(Arc<RwLock<BTreeMap<(String, String), usize>>>);

impl FiringBoard {
    /// Replaces the counts with those of the latest evaluation.
    pub fn set(&self, counts: BTreeMap<(String, String), usize>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = counts;
    }

    fn get(&self) -> BTreeMap<(String, String), usize> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The fleet series, made from `state` at each scrape.
pub struct FleetExporter {
    state: LiveState,
    firing: FiringBoard,
    descs: Vec<Desc>,
}

impl FleetExporter {
    /// An exporter of `state` and of the alerts on `firing`.
    pub fn new(state: LiveState, firing: FiringBoard) -> Self {
        let descs = families(&[], &BTreeMap::new())
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        Self {
            state,
            firing,
            descs,
        }
    }

    /// A registry holding only this exporter (no prefix: the names carry it).
    pub fn registry(self) -> prometheus::Registry {
        let r = prometheus::Registry::new();
        r.register(Box::new(self))
            .expect("the fleet series are registered once, with unique names");
        r
    }
}

impl Collector for FleetExporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.state.snapshot(), &self.firing.get())
            .iter()
            .flat_map(|g| g.collect())
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("static, valid metric names")
}

/// The region of a cluster: as registered, else its members' (the first one set).
fn region(c: &ClusterState) -> &str {
    c.registration
        .as_ref()
        .map(|r| r.region.as_str())
        .filter(|r| !r.is_empty())
        .or_else(|| {
            c.members
                .values()
                .map(|m| m.region.as_str())
                .find(|r| !r.is_empty())
        })
        .unwrap_or("")
}

/// Fresh gauges holding the series of `clusters` and `firing`.
fn families(
    clusters: &[ClusterState],
    firing: &BTreeMap<(String, String), usize>,
) -> Vec<GaugeVec> {
    let member: Vec<GaugeVec> = MEMBER_SERIES
        .iter()
        .map(|(name, help, _)| gauge(name, help, &MEMBER_LABELS))
        .collect();
    let members = gauge(
        "etcdmon_cluster_members",
        "Voting members in the cluster's member list.",
        &CLUSTER_LABELS,
    );
    let available = gauge(
        "etcdmon_cluster_members_available",
        "Voting members whose agent reaches them.",
        &CLUSTER_LABELS,
    );
    let reporting = gauge(
        "etcdmon_cluster_reporting",
        "1 while an agent of the cluster streams to this collector and is current.",
        &CLUSTER_LABELS,
    );
    let leader_changes = gauge(
        "etcdmon_cluster_leader_changes_last_hour",
        "Leader changes in the last hour (those of restarts left out).",
        &CLUSTER_LABELS,
    );
    let alerts = gauge(
        "etcdmon_alerts_firing",
        "Alerts firing, by cluster and severity.",
        &["cluster", "severity"],
    );
    let now = crate::now_ms();
    for c in clusters {
        let region = region(c);
        for m in c.members.values().filter(|m| !m.removed) {
            let values = [
                c.name.as_str(),
                m.name.as_str(),
                m.region.as_str(),
                m.node.as_str(),
            ];
            for ((_, _, figure), g) in MEMBER_SERIES.iter().zip(&member) {
                if let Some(v) = figure(m) {
                    g.with_label_values(&values).set(v);
                }
            }
        }
        let labels = [c.name.as_str(), region];
        members
            .with_label_values(&labels)
            .set(c.member_count() as f64);
        let up = c
            .members
            .values()
            .filter(|m| !m.removed && !m.is_learner && m.healthy)
            .count();
        available.with_label_values(&labels).set(up as f64);
        reporting
            .with_label_values(&labels)
            .set(if c.reporting { 1.0 } else { 0.0 });
        leader_changes
            .with_label_values(&labels)
            .set(c.leader_changes_last_hour(now) as f64);
        // Every severity of every cluster, 0 included: a query for critical
        // alerts finds the cluster whether or not one fires.
        for severity in ["critical", "warning", "info"] {
            let n = firing
                .get(&(c.name.clone(), severity.to_owned()))
                .copied()
                .unwrap_or(0);
            alerts
                .with_label_values(&[c.name.as_str(), severity])
                .set(n as f64);
        }
    }
    member
        .into_iter()
        .chain([members, available, reporting, leader_changes, alerts])
        .collect()
}
