//! The live state of every cluster and member, derived from the agent
//! streams, so current views (the API, the web page, rules) never touch
//! the database.
//!
//! Applying a report also yields the events its transitions imply (member
//! down/up, leader changed, alarm raised/cleared, member added/removed);
//! the ingest path stores them with the report's samples.

use etcdmon_proto::v1::{report::Body, ErrorKind, EtcdStatus, Identity, PeerRtt, Report};
use etcdmon_storage::EventRow;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

/// Shared live state; cheap to clone.
#[derive(Clone)]
pub struct LiveState {
    inner: Arc<RwLock<BTreeMap<String, ClusterState>>>,
    /// A member whose agent sent nothing for this long is stale.
    stale_after_ms: i64,
    /// Signalled when something happened that the rules should judge now (a member
    /// went down or came back, a new leader, an alarm, an agent's stream ended)
    /// rather than at their next tick.
    changed: Arc<tokio::sync::Notify>,
    /// Where the events of [`LiveState::apply`] and the rules' transitions go
    /// out live (`GET /api/v1/stream`).
    feed: crate::feed::Feed,
}

impl Default for LiveState {
    fn default() -> Self {
        Self::new(std::time::Duration::from_secs(30))
    }
}

/// One cluster as the collector currently sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// Leader id (hex) as last reported by any member; empty if unknown.
    pub leader_id: String,
    /// Raft term of that report.
    pub raft_term: u64,
    /// Members by name.
    pub members: BTreeMap<String, MemberState>,
    /// How the cluster was registered ahead of its agents (`[[clusters]]`), if it was.
    pub registration: Option<RegisteredCluster>,
    /// Whether an agent of the cluster streams and is current (set by the snapshot).
    pub reporting: bool,
    /// Registered members whose agent is not reporting (set by the snapshot).
    pub members_missing: Vec<String>,
    /// Member ids (hex) in the last member list seen.
    #[serde(skip)]
    member_ids: BTreeSet<u64>,
    /// The learners among them (`member add --learner`): they receive
    /// the log but do not vote, so they do not count towards quorum.
    #[serde(skip)]
    learner_ids: BTreeSet<u64>,
    /// When the leader changed (ms since the epoch) and the leader it replaced
    /// (hex id), within the last hour.
    #[serde(skip)]
    leader_changes: std::collections::VecDeque<(i64, String)>,
    /// When this collector received the cluster's first report, ms since the
    /// epoch (collector clock); 0 before any.
    #[serde(skip)]
    first_report_ms: i64,
}

/// How long after a cluster's first report its members without a reporting
/// agent are not yet counted as unavailable: a collector or `etcdmon up` that
/// just started sees the agents connect one by one, and the first one's
/// member list names members whose agents are a moment behind.
pub const START_GRACE_MS: i64 = 10_000;

/// A cluster known before its agents report (the collector's `[[clusters]]`):
/// shown while silent, and `cluster_not_reporting` fires for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisteredCluster {
    /// Cluster name, as its agents' `identity.cluster`.
    pub name: String,
    /// Region.
    pub region: String,
    /// Who to ask about it (a team, a person).
    pub owner: String,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// The member names expected to report.
    pub members: Vec<String>,
}

/// Window of the leader-change count.
const LEADER_CHANGE_WINDOW_MS: i64 = 3_600_000;

/// A leader change this close to its old leader going down is that member's
/// restart or failure: a leader stopped with SIGTERM hands leadership on just
/// before it exits, one that crashed is replaced just after.
const RESTART_GRACE_MS: i64 = 10_000;

impl ClusterState {
    /// Voting members in the cluster's member list, learners left out (0 until a
    /// list was seen).
    pub fn member_count(&self) -> usize {
        self.member_ids.difference(&self.learner_ids).count()
    }

    /// Whether `now_ms` is within [`START_GRACE_MS`] of the cluster's first
    /// report to this collector: its agents may still be connecting.
    pub fn starting(&self, now_ms: i64) -> bool {
        self.first_report_ms == 0 || now_ms - self.first_report_ms < START_GRACE_MS
    }

    /// Leader changes in the hour before `now_ms` that no restart explains. A
    /// change within [`RESTART_GRACE_MS`] of its old leader going down belongs to
    /// that member's restart or failure (a rolling restart moves leadership
    /// once per member), which is seen as the member going down, not as an
    /// unstable cluster. Changes younger than that grace are not counted yet.
    pub fn leader_changes_last_hour(&self, now_ms: i64) -> usize {
        self.leader_changes
            .iter()
            .filter(|(t, old)| {
                let age = now_ms - t;
                (RESTART_GRACE_MS..=LEADER_CHANGE_WINDOW_MS).contains(&age)
                    && !self.went_down_near(old, *t)
            })
            .count()
    }

    /// Whether the member with id `id` went down within the grace of `ts_ms`.
    fn went_down_near(&self, id: &str, ts_ms: i64) -> bool {
        self.members.values().any(|m| {
            m.id == id
                && m.down_ms
                    .iter()
                    .any(|d| (d - ts_ms).abs() <= RESTART_GRACE_MS)
        })
    }

    fn record_leader_change(&mut self, ts: i64, old_leader: String) {
        self.leader_changes.push_back((ts, old_leader));
        while self
            .leader_changes
            .front()
            .is_some_and(|(t, _)| ts - t > LEADER_CHANGE_WINDOW_MS)
        {
            self.leader_changes.pop_front();
        }
    }
}

/// One member as the collector currently sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberState {
    /// Member name.
    pub name: String,
    /// Member id in hex; empty until known.
    pub id: String,
    /// Node the agent runs on.
    pub node: String,
    /// Region.
    pub region: String,
    /// Free-form tags of the agent's identity (`identity.tags`: team,
    /// environment, ...).
    pub tags: BTreeMap<String, String>,
    /// Whether an agent stream for this member is open.
    pub agent_connected: bool,
    /// When the collector last received a report from its agent, ms since the
    /// epoch, by the collector's clock (an agent's clock may be off).
    pub last_seen_ms: i64,
    /// How far the agent's clock is ahead of the collector's (negative: behind),
    /// ms: the largest `report timestamp - receive time` over the last minute or
    /// two, so a batch resent late does not count and the estimate is at most a
    /// batch interval off. 0 until a report arrived.
    pub clock_skew_ms: i64,
    /// The window behind `clock_skew_ms`.
    #[serde(skip)]
    skew: SkewWindow,
    /// Whether the last status probe reached etcd; null until probed.
    pub reachable: Option<bool>,
    /// Whether this member is the leader (by its own status).
    pub is_leader: bool,
    /// Whether it is a learner: it does not vote and does not count
    /// towards quorum; by its own status or any member's list.
    pub is_learner: bool,
    /// Leader id (hex) this member reports.
    pub leader_id: String,
    /// Raft term.
    pub raft_term: u64,
    /// Raft index.
    pub raft_index: u64,
    /// Duration of the agent's last successful status call, seconds.
    pub status_latency_seconds: Option<f64>,
    /// Revision of the KV store (seen by the serializable read); 0 if unknown.
    pub revision: i64,
    /// The member's last answer to the consistency check (`HashKV`), if any.
    pub kv_hash: Option<KvHashFigure>,
    /// Database size.
    pub db_size_bytes: i64,
    /// Database size in use.
    pub db_size_in_use_bytes: i64,
    /// etcd version.
    pub version: String,
    /// The cluster's active alarms as this member reports them (etcd keeps one
    /// list for the whole cluster; each alarm names the member that raised it).
    pub alarms: Vec<ActiveAlarm>,
    /// Last failure of the status probe: "kind: message".
    pub last_error: String,
    /// Healthy: agent connected and not stale, etcd reachable, a leader known.
    pub healthy: bool,
    /// The agent's stream is open but it sent nothing for
    /// `ingest.agent_timeout` (a hung agent or a stuck network).
    pub stale: bool,
    /// No longer in the cluster's member list (`etcdctl member remove`): no rule
    /// judges it, and it leaves the state when its agent disconnects.
    pub removed: bool,
    /// etcd's backend quota (`etcd_server_quota_backend_bytes`); 0 if unknown.
    pub quota_bytes: f64,
    /// Latest host figures of the member's host, if its agent reports them.
    pub host: Option<HostFigures>,
    /// p99 of the agent's last fsync probe round, seconds.
    pub fsync_p99_seconds: Option<f64>,
    /// Days left per certificate file the agent watches.
    pub certificates: Vec<CertFigure>,
    /// When it went down (its status probe failed after success), within the
    /// last hour and a bit: to tell restarts from unstable leadership.
    #[serde(skip)]
    pub down_ms: std::collections::VecDeque<i64>,
    /// The other members whose peer port this member's agent could not
    /// connect to in its last peer probe round, by name.
    pub peers_unreachable: Vec<String>,
    /// Those it could connect to in that round.
    pub peers_reachable: Vec<String>,
    /// Since when (the collector's clock) each member in `peers_unreachable`
    /// has been so, without a round in between that reached it.
    #[serde(skip)]
    pub peers_unreachable_since: BTreeMap<String, i64>,
    /// When its own agent last found it reachable after it was not (or
    /// first), by the collector's clock; 0 while it is not reachable.
    #[serde(skip)]
    pub reachable_since_ms: i64,
    /// Quantiles and rates from etcd's own metrics, between scrapes.
    pub derived: crate::rates::Derived,
}

/// The largest `timestamp - receive time` of the reports received in the current
/// and the previous minute.
#[derive(Debug, Clone, Copy, Default)]
struct SkewWindow {
    /// Start of the current minute, by the collector's clock.
    minute_ms: i64,
    current: Option<i64>,
    previous: Option<i64>,
}

impl SkewWindow {
    const MINUTE_MS: i64 = 60_000;

    /// Records one report; returns the estimate.
    fn record(&mut self, report_ms: i64, received_ms: i64) -> i64 {
        let minute = received_ms - received_ms.rem_euclid(Self::MINUTE_MS);
        if minute != self.minute_ms {
            self.previous = if minute - self.minute_ms == Self::MINUTE_MS {
                self.current
            } else {
                None
            };
            self.current = None;
            self.minute_ms = minute;
        }
        let skew = report_ms.saturating_sub(received_ms);
        self.current = Some(self.current.map_or(skew, |c| c.max(skew)));
        self.current.max(self.previous).unwrap_or(skew)
    }
}

/// A member's `HashKV` at a revision, as the consistency check compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KvHashFigure {
    /// The revision hashed.
    pub revision: i64,
    /// etcd's hash of the keyspace up to `revision`.
    pub hash: u32,
    /// The compaction revision the hash starts from.
    pub compact_revision: i64,
    /// When the agent reported it (its clock), ms since the epoch.
    pub at_ms: i64,
}

/// The host figures rules look at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostFigures {
    /// Available bytes on the data-dir filesystem.
    pub fs_available_bytes: u64,
    /// Size of that filesystem.
    pub fs_total_bytes: u64,
    /// Open file descriptors of the etcd process.
    pub open_fds: u64,
    /// Its limit.
    pub max_fds: u64,
    /// Available memory.
    pub memory_available_bytes: u64,
    /// Total memory.
    pub memory_total_bytes: u64,
    /// Busy share of all CPUs over the agent's last interval, 0..1.
    pub cpu_utilization: f64,
    /// Busy share of the data dir's disk, 0..1.
    pub disk_utilization: f64,
    /// Bytes per second received on all interfaces since the previous report.
    pub net_rx_bytes_per_second: Option<f64>,
    /// Bytes per second sent, likewise.
    pub net_tx_bytes_per_second: Option<f64>,
    /// The previous report's (ms, received, sent) totals.
    #[serde(skip)]
    net_totals: Option<(i64, u64, u64)>,
}

/// One active etcd alarm: its type and the member that raised it. Kept apart so
/// that rules and inhibition match on the type (`alarm="NOSPACE"`) and one alarm
/// raised by several members is one alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ActiveAlarm {
    /// `NOSPACE`, `CORRUPT`, ...
    pub alarm: String,
    /// The member that raised it, in hex.
    pub member_id: String,
}

impl std::fmt::Display for ActiveAlarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.alarm, self.member_id)
    }
}

/// Expiry of one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertFigure {
    /// File.
    pub path: String,
    /// Days until it expires.
    pub days_left: f64,
}

/// Whether the member with hex id `id` is in the member list `ids`. A member
/// whose id is not known yet, or a cluster whose list has not been seen, counts
/// as listed.
fn listed(ids: &BTreeSet<u64>, id: &str) -> bool {
    ids.is_empty()
        || id.is_empty()
        || u64::from_str_radix(id, 16).map_or(true, |n| ids.contains(&n))
}

/// Whether the hex id `id` is in `ids` (false when unknown).
fn among(ids: &BTreeSet<u64>, id: &str) -> bool {
    u64::from_str_radix(id, 16).is_ok_and(|n| ids.contains(&n))
}

/// Name under which a member's rows are stored: its name, or its id.
pub fn member_key(id: &Identity) -> String {
    if !id.member_name.is_empty() {
        id.member_name.clone()
    } else if id.member_id != 0 {
        format!("{:x}", id.member_id)
    } else {
        id.node.clone()
    }
}

impl LiveState {
    /// Live state in which members go stale after `agent_timeout` of silence.
    pub fn new(agent_timeout: std::time::Duration) -> Self {
        Self {
            inner: Arc::default(),
            stale_after_ms: i64::try_from(agent_timeout.as_millis()).unwrap_or(i64::MAX),
            changed: Arc::default(),
            feed: crate::feed::Feed::default(),
        }
    }

    /// The live feed of events and alert transitions.
    pub fn feed(&self) -> &crate::feed::Feed {
        &self.feed
    }

    /// Resolves when the state changed in a way the rules should judge at once
    /// (see [`LiveState::apply`]); changes while nobody waits are kept (one permit).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// An agent opened its stream. An identity without member name or id
    /// (the agent has not reached etcd yet) creates no entry: the member
    /// appears with its first report that says who it is.
    pub fn connected(&self, id: &Identity) {
        if id.member_name.is_empty() && id.member_id == 0 {
            return;
        }
        self.with_member(id, |_, m| {
            m.agent_connected = true;
            m.healthy = m.reachable == Some(true) && !m.leader_id.is_empty();
        });
    }

    /// An agent's stream ended. Returns the event to store.
    pub fn disconnected(&self, id: &Identity, now_ms: i64, reason: &str) -> EventRow {
        if !id.member_name.is_empty() || id.member_id != 0 {
            self.with_member(id, |_, m| {
                m.agent_connected = false;
                m.healthy = false;
            });
            self.forget_removed(id);
            self.changed.notify_one();
        }
        let event = EventRow {
            cluster: id.cluster.clone(),
            member: member_key(id),
            ts_ms: now_ms,
            kind: "agent_disconnected".into(),
            message: reason.to_string(),
        };
        self.feed.events(std::slice::from_ref(&event));
        event
    }

    /// [`apply_at`](Self::apply_at) for a report received when it was made (its
    /// timestamp is its receive time): replaying reports in tests and tools.
    pub fn apply(&self, id: &Identity, report: &Report) -> Vec<EventRow> {
        self.apply_at(id, report, report.timestamp_unix_ms)
    }

    /// Applies one report received at `received_ms` (the collector's clock);
    /// returns the events its transitions imply. Liveness follows the receive
    /// time, so an agent whose clock is behind is not taken for silent and one
    /// ahead cannot hide its silence; the difference is kept as the member's
    /// clock skew. Reports that do not say which member they are from (no name,
    /// no id: the agent had not reached etcd yet) leave the state alone.
    pub fn apply_at(&self, id: &Identity, report: &Report, received_ms: i64) -> Vec<EventRow> {
        if id.member_name.is_empty() && id.member_id == 0 {
            return Vec::new();
        }
        let ts = report.timestamp_unix_ms;
        let mut events = Vec::new();
        let mut judge_now = false;
        let cluster_name = id.cluster.clone();
        let member_name = member_key(id);
        let ev = |member: &str, kind: &str, message: String| EventRow {
            cluster: cluster_name.clone(),
            member: member.to_string(),
            ts_ms: ts,
            kind: kind.into(),
            message,
        };
        self.with_member(id, |cluster, m| {
            if cluster.first_report_ms == 0 {
                cluster.first_report_ms = received_ms;
            }
            m.last_seen_ms = m.last_seen_ms.max(received_ms);
            m.clock_skew_ms = m.skew.record(ts, received_ms);
            m.agent_connected = true;
            if id.member_id != 0 {
                m.id = format!("{:x}", id.member_id);
            }
            let s = match &report.body {
                Some(Body::Status(s)) => s,
                Some(Body::PeerRtt(p)) => {
                    // A peer port that stops or starts answering may decide
                    // `member_isolated` at once.
                    judge_now = record_peers(m, p, received_ms);
                    return;
                }
                Some(other) => {
                    record_other(m, other, ts);
                    return;
                }
                None => return,
            };
            if let Some(h) = s.kv_hash.as_ref().filter(|h| h.failure.is_none()) {
                m.kv_hash = Some(KvHashFigure {
                    revision: h.revision,
                    hash: h.hash,
                    compact_revision: h.compact_revision,
                    at_ms: ts,
                });
                judge_now = true;
            }
            let was = m.reachable;
            m.reachable = Some(s.reachable);
            if !s.reachable {
                m.reachable_since_ms = 0;
            } else if was != Some(true) || m.reachable_since_ms == 0 {
                m.reachable_since_ms = received_ms;
            }
            match (was, s.reachable) {
                (Some(true) | None, false) => {
                    let why = status_error(s);
                    m.last_error = why.clone();
                    m.down_ms.push_back(ts);
                    while m
                        .down_ms
                        .front()
                        .is_some_and(|d| ts - d > LEADER_CHANGE_WINDOW_MS + RESTART_GRACE_MS)
                    {
                        m.down_ms.pop_front();
                    }
                    events.push(ev(&member_name, "member_down", why));
                }
                (Some(false), true) => {
                    m.last_error.clear();
                    events.push(ev(&member_name, "member_up", "etcd reachable again".into()));
                }
                _ => {}
            }
            if s.reachable {
                let followed = std::mem::take(&mut m.leader_id);
                update_member(m, s);
                // A member that lost its leader or follows another one (an
                // isolated member after its election timeout) is judged now.
                // Not its first status: while the agents of a starting
                // collector or `etcdmon up` connect one by one, judging at the
                // first one would see the others as down (quorum lost).
                judge_now |= was.is_some() && m.leader_id != followed;
                // Leader changes, seen by any member.
                if s.leader_id != 0 {
                    let leader = format!("{:x}", s.leader_id);
                    if cluster.leader_id != leader && s.raft_term >= cluster.raft_term {
                        if !cluster.leader_id.is_empty() {
                            let old = cluster.leader_id.clone();
                            cluster.record_leader_change(ts, old);
                            events.push(ev(
                                "",
                                "leader_changed",
                                format!(
                                    "leader {} -> {leader} (term {})",
                                    cluster.leader_id, s.raft_term
                                ),
                            ));
                        }
                        cluster.leader_id = leader;
                    }
                    cluster.raft_term = cluster.raft_term.max(s.raft_term);
                }
                // Alarms raised and cleared on this member's view.
                let now: BTreeSet<ActiveAlarm> = s
                    .alarms
                    .iter()
                    .map(|a| ActiveAlarm {
                        alarm: a.alarm.clone(),
                        member_id: format!("{:x}", a.member_id),
                    })
                    .collect();
                let before: BTreeSet<ActiveAlarm> = m.alarms.iter().cloned().collect();
                for a in now.difference(&before) {
                    events.push(ev(&member_name, "alarm_raised", a.to_string()));
                }
                for a in before.difference(&now) {
                    events.push(ev(&member_name, "alarm_cleared", a.to_string()));
                }
                m.alarms = now.into_iter().collect();
            } else {
                m.last_error = status_error(s);
            }
            // Membership changes, from any member's list.
            if !s.members.is_empty() {
                let ids: BTreeSet<u64> = s.members.iter().map(|x| x.id).collect();
                let learners: BTreeSet<u64> = s
                    .members
                    .iter()
                    .filter(|x| x.is_learner)
                    .map(|x| x.id)
                    .collect();
                for promoted in cluster.learner_ids.intersection(&ids) {
                    if !learners.contains(promoted) {
                        events.push(ev("", "member_promoted", format!("{promoted:x}")));
                    }
                }
                if !cluster.member_ids.is_empty() {
                    for added in ids.difference(&cluster.member_ids) {
                        let name = s
                            .members
                            .iter()
                            .find(|x| x.id == *added)
                            .map(|x| x.name.as_str())
                            .unwrap_or("");
                        events.push(ev("", "member_added", format!("{added:x} {name}")));
                    }
                    for removed in cluster.member_ids.difference(&ids) {
                        events.push(ev("", "member_removed", format!("{removed:x}")));
                    }
                }
                // Members no longer listed: gone with their agent, else kept as
                // removed (no rule judges them) until their agent goes.
                cluster.members.retain(|_, other| {
                    other.removed = !listed(&ids, &other.id);
                    other.is_learner = among(&learners, &other.id);
                    !other.removed || other.agent_connected
                });
                cluster.member_ids = ids;
                cluster.learner_ids = learners;
            }
            m.removed = !listed(&cluster.member_ids, &m.id);
            m.is_learner |= among(&cluster.learner_ids, &m.id);
            m.healthy = m.agent_connected && m.reachable == Some(true) && !m.leader_id.is_empty();
        });
        // Every event (member down or up, leader change, alarm, membership) is
        // something a rule may fire or resolve on: evaluate now, not at the next tick.
        // So are a member's changed view of its leader and a hash answer (it
        // completes a consistency check).
        if !events.is_empty() || judge_now {
            self.changed.notify_one();
        }
        self.feed.events(&events);
        events
    }

    /// A copy of every cluster as of `now_ms`, for the API.
    pub fn snapshot_at(&self, now_ms: i64) -> Vec<ClusterState> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ClusterState> = g.values().cloned().collect();
        for c in &mut out {
            self.settle(c, now_ms);
        }
        out
    }

    /// A copy of cluster `name` as of now, as [`snapshot`](Self::snapshot)
    /// shows it, without copying the others.
    pub fn cluster(&self, name: &str) -> Option<ClusterState> {
        let mut c = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()?;
        self.settle(&mut c, crate::now_ms());
        Some(c)
    }

    /// Fills in what a copy shows as of `now_ms`: stale members, whether the
    /// cluster reports, and which registered members are missing.
    fn settle(&self, c: &mut ClusterState, now_ms: i64) {
        for m in c.members.values_mut() {
            m.stale = m.agent_connected && now_ms - m.last_seen_ms > self.stale_after_ms;
            if m.stale {
                m.healthy = false;
            }
        }
        let current = |m: &MemberState| m.agent_connected && !m.stale;
        c.reporting = c.members.values().any(current);
        c.members_missing = c
            .registration
            .iter()
            .flat_map(|r| r.members.iter())
            .filter(|n| !c.members.get(*n).is_some_and(current))
            .cloned()
            .collect();
    }

    /// Drops the registration of `name`; a cluster no agent reports for leaves
    /// the state with it.
    pub fn unregister(&self, name: &str) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get_mut(name) {
            c.registration = None;
            if c.members.is_empty() {
                g.remove(name);
            }
        }
    }

    /// Names of every cluster known (reporting or registered), without
    /// copying their state.
    pub fn names(&self) -> Vec<String> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.keys().cloned().collect()
    }

    /// Names of the registered clusters.
    pub fn registered_names(&self) -> Vec<String> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.values()
            .filter(|c| c.registration.is_some())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Registers clusters ahead of their agents: each is shown (and judged by
    /// `cluster_not_reporting`) whether or not an agent reports for it.
    pub fn register(&self, clusters: &[RegisteredCluster]) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for r in clusters {
            let c = g.entry(r.name.clone()).or_insert_with(|| ClusterState {
                name: r.name.clone(),
                ..Default::default()
            });
            c.registration = Some(r.clone());
        }
    }

    /// A copy of every cluster as of now.
    pub fn snapshot(&self) -> Vec<ClusterState> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.snapshot_at(now)
    }

    /// Drops a member that is no longer in its cluster's member list once its
    /// agent has gone too.
    fn forget_removed(&self, id: &Identity) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = g.get_mut(&id.cluster) {
            let key = member_key(id);
            if cluster
                .members
                .get(&key)
                .is_some_and(|m| m.removed && !m.agent_connected)
            {
                cluster.members.remove(&key);
            }
        }
    }

    fn with_member(&self, id: &Identity, f: impl FnOnce(&mut ClusterState, &mut MemberState)) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let cluster = g.entry(id.cluster.clone()).or_insert_with(|| ClusterState {
            name: id.cluster.clone(),
            ..Default::default()
        });
        let key = member_key(id);
        let mut m = cluster.members.remove(&key).unwrap_or_else(|| MemberState {
            name: key.clone(),
            ..Default::default()
        });
        m.node = id.node.clone();
        m.region = id.region.clone();
        // Every report carries them; copied only when they changed.
        if m.tags.len() != id.tags.len() || id.tags.iter().any(|(k, v)| m.tags.get(k) != Some(v)) {
            m.tags = id
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        f(cluster, &mut m);
        cluster.members.insert(key, m);
    }
}

/// Records one peer probe round of `m`'s agent, received at `received_ms`;
/// whether the set of peers it cannot reach changed.
fn record_peers(m: &mut MemberState, p: &PeerRtt, received_ms: i64) -> bool {
    let named = || p.peers.iter().filter(|r| !r.member_name.is_empty());
    let unreachable: Vec<String> = named()
        .filter(|r| r.failure.is_some())
        .map(|r| r.member_name.clone())
        .collect();
    m.peers_reachable = named()
        .filter(|r| r.failure.is_none())
        .map(|r| r.member_name.clone())
        .collect();
    m.peers_unreachable_since
        .retain(|name, _| unreachable.contains(name));
    for name in &unreachable {
        m.peers_unreachable_since
            .entry(name.clone())
            .or_insert(received_ms);
    }
    let changed = m.peers_unreachable != unreachable;
    m.peers_unreachable = unreachable;
    changed
}

/// Keeps what the rules need from reports other than status and peer rounds.
fn record_other(m: &mut MemberState, body: &Body, ts_ms: i64) {
    match body {
        Body::Metrics(mx) => {
            if mx.failure.is_none() {
                m.derived.update(&mx.families, ts_ms);
            }
            if let Some(q) = mx
                .families
                .iter()
                .find(|f| f.name == "etcd_server_quota_backend_bytes")
                .and_then(|f| f.samples.first())
            {
                m.quota_bytes = q.value;
            }
        }
        Body::Host(h) => {
            let mut f = m.host.clone().unwrap_or_default();
            if let Some(fs) = &h.filesystem {
                f.fs_available_bytes = fs.available_bytes;
                f.fs_total_bytes = fs.total_bytes;
            }
            if let Some(p) = h.process.as_ref().filter(|p| p.pid != 0) {
                f.open_fds = p.open_fds;
                f.max_fds = p.max_fds;
            }
            if let Some(mem) = &h.memory {
                f.memory_available_bytes = mem.available_bytes;
                f.memory_total_bytes = mem.total_bytes;
            }
            if let Some(cpu) = &h.cpu {
                f.cpu_utilization = cpu.utilization;
            }
            if let Some(disk) = &h.disk {
                f.disk_utilization = disk.utilization;
            }
            if !h.interfaces.is_empty() {
                let rx = h.interfaces.iter().map(|i| i.rx_bytes).sum::<u64>();
                let tx = h.interfaces.iter().map(|i| i.tx_bytes).sum::<u64>();
                // Counters that went down (a reboot, an interface gone) give no rate.
                if let Some((t, prev_rx, prev_tx)) = f.net_totals {
                    let secs = (ts_ms - t) as f64 / 1000.0;
                    let rate = |prev: u64, cur: u64| {
                        crate::rates::per_second(prev as f64, cur as f64, secs)
                    };
                    f.net_rx_bytes_per_second = rate(prev_rx, rx);
                    f.net_tx_bytes_per_second = rate(prev_tx, tx);
                }
                f.net_totals = Some((ts_ms, rx, tx));
            }
            m.host = Some(f);
        }
        Body::Fsync(f) => {
            m.fsync_p99_seconds = (f.failure.is_none() && f.writes > 0).then_some(f.p99_seconds);
        }
        Body::Certs(c) => {
            m.certificates = c
                .certificates
                .iter()
                .filter(|c| c.failure.is_none())
                .map(|c| CertFigure {
                    path: c.path.clone(),
                    days_left: c.days_left,
                })
                .collect();
        }
        // Handled by the caller.
        Body::Status(_) | Body::PeerRtt(_) => {}
    }
}

fn update_member(m: &mut MemberState, s: &EtcdStatus) {
    m.is_leader = s.leader_id != 0 && s.leader_id == s.member_id;
    m.is_learner = s.is_learner;
    m.leader_id = if s.leader_id == 0 {
        String::new()
    } else {
        format!("{:x}", s.leader_id)
    };
    m.raft_term = s.raft_term;
    m.raft_index = s.raft_index;
    m.status_latency_seconds = Some(s.status_latency_seconds);
    if s.revision > 0 {
        // 0: the serializable read failed this round.
        m.revision = s.revision;
    }
    m.db_size_bytes = s.db_size_bytes;
    m.db_size_in_use_bytes = s.db_size_in_use_bytes;
    m.version = s.version.clone();
    if s.member_id != 0 {
        m.id = format!("{:x}", s.member_id);
    }
}

fn status_error(s: &EtcdStatus) -> String {
    s.failures
        .first()
        .map(|f| {
            let kind = ErrorKind::try_from(f.kind)
                .unwrap_or(ErrorKind::Other)
                .short_name();
            format!("{kind}: {}", f.message)
        })
        .unwrap_or_else(|| "unreachable".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_proto::v1::{Alarm, Failure, Member};

    fn id(name: &str) -> Identity {
        Identity {
            cluster: "c".into(),
            member_name: name.into(),
            member_id: 1,
            ..Default::default()
        }
    }

    fn status(ts: i64, s: EtcdStatus) -> Report {
        Report {
            timestamp_unix_ms: ts,
            body: Some(Body::Status(s)),
            ..Default::default()
        }
    }

    fn up(leader: u64, term: u64) -> EtcdStatus {
        EtcdStatus {
            reachable: true,
            member_id: 1,
            leader_id: leader,
            raft_term: term,
            members: vec![
                Member {
                    id: 1,
                    ..Default::default()
                },
                Member {
                    id: 2,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn kinds(e: &[EventRow]) -> Vec<&str> {
        e.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn transitions_become_events() {
        let st = LiveState::default();
        assert!(st.apply(&id("m1"), &status(1, up(1, 2))).is_empty());
        let snap = st.snapshot_at(10);
        let m = &snap[0].members["m1"];
        assert!(m.healthy && m.is_leader && m.agent_connected);

        let down = EtcdStatus {
            failures: vec![Failure::new(
                "status",
                ErrorKind::Refused,
                "connection refused",
            )],
            ..Default::default()
        };
        let e = st.apply(&id("m1"), &status(2, down.clone()));
        assert_eq!(kinds(&e), ["member_down"]);
        assert_eq!(e[0].message, "refused: connection refused");
        assert!(
            st.apply(&id("m1"), &status(3, down)).is_empty(),
            "no repeat while down"
        );
        assert!(!st.snapshot_at(10)[0].members["m1"].healthy);

        assert_eq!(
            kinds(&st.apply(&id("m1"), &status(4, up(2, 3)))),
            ["member_up", "leader_changed"]
        );

        let mut alarmed = up(2, 3);
        alarmed.alarms = vec![Alarm {
            member_id: 1,
            alarm: "NOSPACE".into(),
        }];
        alarmed.members.push(Member {
            id: 3,
            ..Default::default()
        });
        assert_eq!(
            kinds(&st.apply(&id("m1"), &status(5, alarmed))),
            ["alarm_raised", "member_added"]
        );
        assert_eq!(
            kinds(&st.apply(&id("m1"), &status(6, up(2, 3)))),
            ["alarm_cleared", "member_removed"]
        );
    }

    #[test]
    fn silent_agents_go_stale() {
        let st = LiveState::new(std::time::Duration::from_secs(30));
        st.apply(&id("m1"), &status(1_000, up(1, 2)));
        assert!(st.snapshot_at(20_000)[0].members["m1"].healthy);
        let m = &st.snapshot_at(40_000)[0].members["m1"];
        assert!(m.stale && !m.healthy);
    }

    /// Liveness follows the collector's clock: an agent 40 s behind is not taken
    /// for silent, and one 10 min ahead cannot hide its silence.
    #[test]
    fn an_agents_clock_does_not_decide_its_liveness_and_its_skew_is_kept() {
        const T0: i64 = 1_800_000_000_000;
        let st = LiveState::new(std::time::Duration::from_secs(30));
        st.apply_at(&id("late"), &status(T0 - 40_000, up(1, 2)), T0);
        let m = &st.snapshot_at(T0 + 1_000)[0].members["late"];
        assert!(m.healthy && !m.stale, "{m:?}");
        assert_eq!(m.clock_skew_ms, -40_000);

        st.apply_at(&id("early"), &status(T0 + 600_000, up(1, 2)), T0);
        let m = &st.snapshot_at(T0 + 60_000)[0].members["early"];
        assert!(m.stale && !m.healthy, "silent for a minute: {m:?}");
        assert_eq!(m.clock_skew_ms, 600_000);

        // A batch resent an hour late does not move the estimate: the freshest
        // report of the last minute or two counts.
        st.apply_at(&id("late"), &status(T0 - 3_600_000, up(1, 2)), T0 + 2_000);
        let m = &st.snapshot_at(T0 + 2_000)[0].members["late"];
        assert_eq!(m.clock_skew_ms, -40_000);
        // Two minutes later only new reports count.
        st.apply_at(&id("late"), &status(T0 + 150_000, up(1, 2)), T0 + 150_500);
        let m = &st.snapshot_at(T0 + 150_500)[0].members["late"];
        assert_eq!(m.clock_skew_ms, -500);
    }

    #[test]
    fn disconnect_marks_unhealthy() {
        let st = LiveState::default();
        st.apply(&id("m1"), &status(1, up(1, 2)));
        let e = st.disconnected(&id("m1"), 9, "stream reset");
        assert_eq!(e.kind, "agent_disconnected");
        let m = &st.snapshot_at(10)[0].members["m1"];
        assert!(!m.agent_connected && !m.healthy);
    }
}
