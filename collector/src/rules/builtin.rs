//! The built-in rules that judge the live state. Each is a function from
//! the clusters' snapshot to observations; thresholds come from
//! [`RuleSettings`]. What each rule means and what to do is in
//! `docs/alerts.md`.

use super::config::RuleSettings;
use super::engine::Observation;
use crate::state::{ClusterState, KvHashFigure, MemberState};
use etcdmon_alert::labels;
use etcdmon_alert::Severity::{self, Critical, Info, Warning};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One built-in rule: its name, what it observes, and its settings unless
/// overridden under `[rules.<name>]` (docs/alerts.md lists them).
pub struct Rule {
    /// Name, also the `rule` label.
    pub name: &'static str,
    /// What it observes.
    pub check: fn(&ClusterState, &RuleSettings) -> Vec<Observation>,
    /// Its settings when the config does not override them.
    pub defaults: RuleSettings,
    /// Whether its value counts down (days or hours left): it fires below `fire`
    /// and clears above `clear`, where the others fire above and clear below.
    pub countdown: bool,
}

const fn rule(
    name: &'static str,
    check: fn(&ClusterState, &RuleSettings) -> Vec<Observation>,
    for_secs: u64,
    fire: f64,
    clear: f64,
    severity: Severity,
) -> Rule {
    Rule {
        name,
        check,
        defaults: RuleSettings {
            enabled: true,
            for_: Duration::from_secs(for_secs),
            fire,
            clear,
            severity,
        },
        countdown: false,
    }
}

const fn counting_down(
    name: &'static str,
    check: fn(&ClusterState, &RuleSettings) -> Vec<Observation>,
    for_secs: u64,
    fire: f64,
    clear: f64,
    severity: Severity,
) -> Rule {
    Rule {
        countdown: true,
        ..rule(name, check, for_secs, fire, clear, severity)
    }
}

/// Every built-in rule, in evaluation order: name, check, `for` (seconds), fire
/// and clear thresholds (unused by yes/no rules), severity.
pub const RULES: &[Rule] = &[
    // Yes/no rules: fire/clear unused. Member down and quorum fire at once: these
    // are the pages that must be fast. The cluster-level rules come first, so that
    // a round in which members go down publishes the cause before its symptoms
    // (the alerter's inhibition then holds the symptoms back).
    rule("quorum_lost", quorum_lost, 0, 0.0, 0.0, Critical),
    // An election leaves the cluster without a leader for a few hundred ms after
    // the election timeout (etcd's default: 1 s); that is not an outage. A second
    // without a leader is (quorum_lost speaks first when members are down).
    rule("no_leader", no_leader, 1, 0.0, 0.0, Critical),
    rule("quorum_at_risk", quorum_at_risk, 0, 0.0, 0.0, Warning),
    rule(
        "member_unreachable",
        member_unreachable,
        0,
        0.0,
        0.0,
        Critical,
    ),
    // A follower learns of a new leader within a heartbeat; a member still
    // without the majority's leader two seconds on is cut off.
    rule("member_isolated", member_isolated, 2, 0.0, 0.0, Critical),
    rule("agent_silent", agent_silent, 15, 0.0, 0.0, Warning),
    // A minute: long enough for a collector restart (agents reconnect within
    // seconds) or a rolling upgrade of the agents.
    rule(
        "cluster_not_reporting",
        cluster_not_reporting,
        60,
        0.0,
        0.0,
        Warning,
    ),
    // Elections make views differ for a moment; a partition persists.
    rule("members_disagree", members_disagree, 10, 0.0, 0.0, Critical),
    rule(
        "raft_index_divergence",
        raft_index_divergence,
        30,
        1000.0,
        500.0,
        Warning,
    ),
    // Members' data differ at the same revision: every answer of the
    // consistency check is a fresh comparison, nothing to wait for.
    rule(
        "data_inconsistent",
        data_inconsistent,
        0,
        0.0,
        0.0,
        Critical,
    ),
    rule("alarm_active", alarm_active, 0, 0.0, 0.0, Critical),
    rule("db_near_quota", db_near_quota, 0, 0.8, 0.75, Warning),
    rule("db_fragmented", db_fragmented, 600, 0.5, 0.4, Info),
    rule("fs_nearly_full", fs_nearly_full, 60, 0.9, 0.85, Warning),
    rule("fds_near_limit", fds_near_limit, 60, 0.8, 0.7, Warning),
    rule("memory_low", memory_low, 120, 0.9, 0.85, Warning),
    // etcd's guidance: WAL fsync p99 under 10 ms.
    rule(
        "fsync_probe_slow",
        fsync_probe_slow,
        60,
        0.010,
        0.008,
        Warning,
    ),
    // Counts down, in days: fires when less than two weeks are left.
    counting_down("cert_expiring", cert_expiring, 0, 14.0, 15.0, Warning),
    rule("wal_fsync_slow", wal_fsync_slow, 60, 0.010, 0.008, Warning),
    rule(
        "backend_commit_slow",
        backend_commit_slow,
        60,
        0.025,
        0.020,
        Warning,
    ),
    rule("peer_rtt_high", peer_rtt_high, 60, 0.050, 0.040, Warning),
    rule("grpc_errors", grpc_errors, 120, 0.01, 0.005, Warning),
    rule("grpc_slow_unary", grpc_slow_unary, 120, 0.15, 0.10, Warning),
    rule(
        "proposals_failing",
        proposals_failing,
        120,
        0.01,
        0.001,
        Warning,
    ),
    rule(
        "proposals_pending",
        proposals_pending,
        60,
        5.0,
        2.0,
        Warning,
    ),
    // Counts down, in hours: fires when the quota is less than a day away.
    counting_down(
        "db_quota_exhaustion",
        db_quota_exhaustion,
        300,
        24.0,
        36.0,
        Warning,
    ),
    rule(
        "frequent_leader_changes",
        frequent_leader_changes,
        0,
        3.0,
        2.0,
        Warning,
    ),
    // Seconds between the agent's clock and the collector's.
    rule("clock_skew", clock_skew, 60, 5.0, 2.0, Warning),
];

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
        conclusive: false,
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
        conclusive: false,
    }
}

/// A member whose agent is connected and current: its view can be trusted.
fn watched(m: &MemberState) -> bool {
    m.agent_connected && !m.stale && !m.removed
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
                if down {
                    format!("etcd member {} is unreachable from its agent", m.name)
                } else {
                    format!("etcd member {} is reachable again", m.name)
                },
                if down {
                    format!(
                        "The agent on {} cannot reach etcd: {}",
                        m.node, m.last_error
                    )
                } else {
                    format!(
                        "The agent on {} reaches etcd again: its status answers.",
                        m.node
                    )
                },
            )
        })
        .collect()
}

/// The agent's stream is gone or silent: we do not know how the member is.
fn agent_silent(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    c.members
        .values()
        .filter(|m| !m.removed)
        .map(|m| {
            let silent = !watched(m);
            member_obs(
                c,
                m,
                Some(silent),
                if silent { 1.0 } else { 0.0 },
                if silent {
                    format!("the agent watching {} is silent", m.name)
                } else {
                    format!("the agent watching {} reports again", m.name)
                },
                if !silent {
                    format!("The agent on {} streams its reports again.", m.node)
                } else {
                    format!(
                        "No stream from the agent on {} ({}); the member itself may be fine.",
                        m.node,
                        if m.agent_connected {
                            "stream open but nothing received"
                        } else {
                            "stream closed"
                        }
                    )
                },
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
    let (summary, description) = if leaderless {
        (
            format!("cluster {} has no leader", c.name),
            format!(
                "None of the {} reachable members reports a leader: writes fail.",
                avail.len()
            ),
        )
    } else {
        (
            format!("cluster {} has a leader again", c.name),
            format!("Leader {}: writes are served.", c.leader_id),
        )
    };
    vec![cluster_obs(
        c,
        Some(leaderless),
        if leaderless { 1.0 } else { 0.0 },
        summary,
        description,
    )]
}

/// (available, total) members, and whether every connected agent has reported a
/// status yet. Until then (a collector or agent just started) the count is not
/// judged either way: counting those members as unavailable would page "quorum
/// lost" for the first second after every start.
fn quorum(c: &ClusterState) -> Option<(usize, usize, bool)> {
    // Learners do not vote: they count neither towards the members nor the quorum.
    let voters = || c.members.values().filter(|m| !m.is_learner);
    let n = c
        .member_count()
        .max(voters().filter(|m| !m.removed).count());
    if n == 0 {
        return None;
    }
    let ok = voters().filter(|m| available(m)).count();
    // Connected but no status yet; such an agent is also "stale" until it sends
    // something, so `watched` would not catch it.
    let answered = !c
        .members
        .values()
        .any(|m| m.agent_connected && m.reachable.is_none());
    // Listed members whose agents have not reported yet, just after a start:
    // they are connecting, not down.
    let now = c
        .members
        .values()
        .map(|m| m.last_seen_ms)
        .max()
        .unwrap_or(0);
    let reported = voters().filter(|m| m.reachable.is_some()).count();
    let settled = answered && (reported >= n || !c.starting(now));
    Some((ok, n, settled))
}

/// Fewer available members than a majority: the cluster cannot write. Resolves
/// when a majority answers and a leader is known.
fn quorum_lost(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let Some((ok, n, settled)) = quorum(c) else {
        return Vec::new();
    };
    let majority = n / 2 + 1;
    let lost = ok < majority;
    // The outage ends when the cluster can write again: a majority answers and a
    // leader is elected. Members answer a moment before they elect one; resolving
    // then would release the inhibited `no_leader` as a page of its own.
    let leader_known = c
        .members
        .values()
        .any(|m| available(m) && !m.leader_id.is_empty());
    let state = if lost {
        Some(true)
    } else if leader_known {
        Some(false)
    } else {
        None
    };
    vec![cluster_obs(
        c,
        state.filter(|_| settled),
        ok as f64,
        if lost {
            format!(
                "cluster {} lost quorum ({ok} of {n} members available)",
                c.name
            )
        } else {
            format!(
                "cluster {} has quorum again ({ok} of {n} members available)",
                c.name
            )
        },
        if lost {
            format!("{ok} of {n} members answer; {majority} are needed for a quorum. Members without an agent count as unavailable.")
        } else {
            format!("{ok} of {n} members answer, {majority} are needed: the cluster serves writes again.")
        },
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
    let at_risk = ok <= majority;
    vec![cluster_obs(
        c,
        settled.then_some(at_risk),
        ok as f64,
        if at_risk {
            format!(
                "cluster {} has no failure margin ({ok} of {n} members available)",
                c.name
            )
        } else {
            format!(
                "cluster {} has its failure margin back ({ok} of {n} members available)",
                c.name
            )
        },
        if at_risk {
            format!("{ok} of {n} members answer, exactly the {majority} needed: one more failure loses quorum.")
        } else {
            format!("{ok} of {n} members answer; {majority} are needed.")
        },
    )]
}

/// Available voting members see different leaders or terms: a partition. A
/// learner catching up is not a partition.
fn members_disagree(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let avail: Vec<&MemberState> = c
        .members
        .values()
        .filter(|m| available(m) && !m.is_learner)
        .collect();
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
        if bad {
            format!("members of {} disagree about the leader", c.name)
        } else {
            format!("members of {} agree about the leader again", c.name)
        },
        format!("Views: {}", views.join("; ")),
    )]
}

/// A member cut off from its peers while its agent still reaches it. Two
/// kinds of evidence name it:
/// * The peers' probes: every other available voter's agent has failed to
///   connect to its peer port since it last came up, and they are a majority
///   that reach one another. That is conclusive, and it fires at once: before
///   etcd itself notices (its election timeout, 1 to 2 s by default).
/// * Its own view: it follows no leader (or another one) while a majority of
///   the voting members follow the same leader. An election makes views
///   differ for a moment, so this waits for the rule's `for`.
///
/// Without a majority on the other side (no leader anywhere, a split into
/// minorities) nobody can be named: `no_leader` and `quorum_lost` speak.
fn member_isolated(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let Some((_, n, _)) = quorum(c) else {
        return Vec::new();
    };
    let voters: Vec<&MemberState> = c
        .members
        .values()
        .filter(|m| available(m) && !m.is_learner)
        .collect();
    let mut followers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in &voters {
        if !m.leader_id.is_empty() {
            followers
                .entry(m.leader_id.as_str())
                .or_default()
                .push(m.name.as_str());
        }
    }
    let majority_leader = followers.iter().find(|(_, names)| names.len() > n / 2);
    voters
        .iter()
        .map(|m| {
            let others: Vec<&MemberState> = voters
                .iter()
                .filter(|o| o.name != m.name)
                .copied()
                .collect();
            let by_probes = cut_off_by_probes(m, &others, n);
            let by_view = majority_leader.is_some_and(|(&leader, _)| m.leader_id != leader);
            let isolated = by_probes || by_view;
            let mut obs = member_obs(
                c,
                m,
                Some(isolated),
                if isolated { 1.0 } else { 0.0 },
                if isolated {
                    format!(
                        "etcd member {} is cut off from its peers (its agent still reaches it)",
                        m.name
                    )
                } else if majority_leader.is_none() {
                    format!(
                        "no majority of {} follows one leader: no single member is cut off",
                        c.name
                    )
                } else {
                    format!("etcd member {} is connected to its peers again", m.name)
                },
                isolation_detail(m, &others, majority_leader, by_probes),
            );
            obs.conclusive = by_probes;
            obs
        })
        .collect()
}

/// Whether every one of `others` (the other available voters) has failed to
/// connect to `m`'s peer port since `m` last came up, while they are a
/// majority of the `n` voting members and reach one another. Failures from
/// before `m` came up (a restart) do not count: the next round clears them.
fn cut_off_by_probes(m: &MemberState, others: &[&MemberState], n: usize) -> bool {
    let blind = |o: &&MemberState| {
        o.peers_unreachable_since
            .get(&m.name)
            .is_some_and(|&since| since > m.reachable_since_ms)
    };
    let connected = |o: &&MemberState| {
        others
            .iter()
            .all(|p| p.name == o.name || o.peers_reachable.contains(&p.name))
    };
    others.len() > n / 2 && others.iter().all(blind) && others.iter().all(connected)
}

/// The views and probes behind `member_isolated`, for people.
fn isolation_detail(
    m: &MemberState,
    others: &[&MemberState],
    majority_leader: Option<(&&str, &Vec<&str>)>,
    by_probes: bool,
) -> String {
    let view = match majority_leader {
        Some((&leader, names)) if m.leader_id == leader => format!(
            "{} still follows leader {leader} at term {}, as {} do: etcd notices a cut only \
             after its election timeout.",
            m.name,
            m.raft_term,
            names.join(", ")
        ),
        Some((leader, names)) => format!(
            "{} {} at term {}, while {} follow leader {leader}.",
            m.name,
            follows(m),
            m.raft_term,
            names.join(", ")
        ),
        None => format!(
            "{} {} at term {}; no leader is followed by a majority.",
            m.name,
            follows(m),
            m.raft_term
        ),
    };
    let blind: Vec<&str> = others
        .iter()
        .filter(|o| o.peers_unreachable.contains(&m.name))
        .map(|o| o.name.as_str())
        .collect();
    if by_probes {
        format!(
            "The agents of {} cannot connect to its peer port, while they reach one \
             another. {view}",
            blind.join(", ")
        )
    } else if blind.is_empty() {
        view
    } else {
        format!(
            "{view} The agents of {} cannot connect to its peer port.",
            blind.join(", ")
        )
    }
}

/// "follows no leader" or "follows leader X".
fn follows(m: &MemberState) -> String {
    if m.leader_id.is_empty() {
        "follows no leader".to_owned()
    } else {
        format!("follows leader {}", m.leader_id)
    }
}

/// Raft indexes drift apart: a member falls behind or diverges.
fn raft_index_divergence(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    // A learner is expected to trail while it catches up.
    let idx: Vec<u64> = c
        .members
        .values()
        .filter(|m| available(m) && !m.is_learner)
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

/// A cluster registered ahead of its agents (`[[clusters]]`) none of whose
/// agents reports: never deployed, or all gone. Nothing else can fire for it
/// then, since every other rule judges what the agents report.
fn cluster_not_reporting(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let Some(reg) = &c.registration else {
        return Vec::new();
    };
    let silent = !c.reporting;
    let expected = if reg.members.is_empty() {
        "no members listed".to_owned()
    } else {
        format!("expected members {}", reg.members.join(", "))
    };
    vec![cluster_obs(
        c,
        Some(silent),
        if silent { 1.0 } else { 0.0 },
        if silent {
            format!("no agent reports for registered cluster {}", c.name)
        } else {
            format!("agents report for cluster {} again", c.name)
        },
        format!(
            "Registered with {expected}; not reporting: {}. Deploy or start the agents (docs/install.md).",
            if c.members_missing.is_empty() {
                "none".to_owned()
            } else {
                c.members_missing.join(", ")
            }
        ),
    )]
}

/// Members' data differ: their `HashKV` at the same revision and compaction
/// (the consistency check, see `crate::consistency`) is not the same. Judged
/// at the latest revision asked for, once at least two members answered; the members
/// whose hash differs from the majority's are named, or every answering
/// member when no majority agrees (then nobody can tell which copy is right).
fn data_inconsistent(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let hashed: Vec<(&MemberState, KvHashFigure)> = c
        .members
        .values()
        .filter(|m| !m.removed)
        .filter_map(|m| m.kv_hash.map(|h| (m, h)))
        .collect();
    let mut answers: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, h) in &hashed {
        *answers.entry(h.revision).or_default() += 1;
    }
    // The latest check; while fewer than two members have answered it (the
    // others' answers are on their way, or they are down), no verdict: an
    // older check without the members that moved on would be a minority's.
    let Some((&revision, &answered)) = answers.iter().next_back() else {
        return Vec::new();
    };
    let at: Vec<(&MemberState, KvHashFigure)> = hashed
        .iter()
        .filter(|(_, h)| h.revision == revision)
        .copied()
        .collect();
    // A compaction between two members' hashes changes what they cover: no
    // verdict this time (the next check compares again).
    let comparable = answered >= 2
        && at
            .iter()
            .all(|(_, h)| h.compact_revision == at[0].1.compact_revision);
    let mut counts: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (m, h) in &at {
        counts.entry(h.hash).or_default().push(m.name.as_str());
    }
    let majority = counts
        .iter()
        .find(|(_, names)| names.len() * 2 > at.len())
        .map(|(h, _)| *h);
    let all = counts
        .iter()
        .map(|(h, names)| format!("{} {h:08x}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    hashed
        .iter()
        .map(|(m, h)| {
            // No verdict on this member this time; the state stays as it is.
            if h.revision != revision {
                return member_obs(
                    c,
                    m,
                    None,
                    0.0,
                    format!("etcd member {} has not answered the latest consistency check", m.name),
                    format!("Its last HashKV was at revision {}, the latest compared is {revision}.", h.revision),
                );
            }
            if !comparable {
                return member_obs(
                    c,
                    m,
                    None,
                    0.0,
                    format!("etcd members of {} cannot be compared at revision {revision} yet", c.name),
                    format!("HashKV at revision {revision}: {all}. Fewer than two answers, or a compaction between them: compared again at the next check."),
                );
            }
            let differs = majority != Some(h.hash);
            member_obs(
                c,
                m,
                Some(differs),
                if differs { 1.0 } else { 0.0 },
                if !differs {
                    format!("etcd member {}'s data match its peers' again", m.name)
                } else if majority.is_some() {
                    format!("etcd member {}'s data differ from its peers'", m.name)
                } else {
                    format!(
                        "etcd members of {} hold different data and no majority agrees",
                        c.name
                    )
                },
                format!(
                    "HashKV at revision {revision} (compacted at {}): {all}.",
                    h.compact_revision
                ),
            )
        })
        .collect()
}

/// An etcd alarm (NOSPACE, CORRUPT) is active.
/// The alarm types etcd raises; each is observed in every cluster, so that a
/// disarmed alarm resolves as "disarmed", not as "no longer observed".
const ALARM_TYPES: [&str; 2] = ["NOSPACE", "CORRUPT"];

/// An etcd alarm is active. etcd keeps one alarm list per cluster, and each entry
/// names the member that raised it; several members raising NOSPACE are one
/// condition of the cluster, so this is one alert per cluster and alarm type
/// (`alarm="NOSPACE"`), naming the members in its text.
fn alarm_active(c: &ClusterState, _: &RuleSettings) -> Vec<Observation> {
    let avail: Vec<&MemberState> = c.members.values().filter(|m| available(m)).collect();
    if avail.is_empty() {
        return Vec::new();
    }
    // Raised by whom, per alarm type, from every available member's view.
    let mut raised: BTreeMap<&str, BTreeSet<String>> =
        ALARM_TYPES.iter().map(|t| (*t, BTreeSet::new())).collect();
    for a in avail.iter().flat_map(|m| m.alarms.iter()) {
        let by = c
            .members
            .values()
            .find(|m| m.id == a.member_id)
            .map_or_else(|| a.member_id.clone(), |m| m.name.clone());
        raised.entry(a.alarm.as_str()).or_default().insert(by);
    }
    raised
        .into_iter()
        .map(|(alarm, by)| {
            let active = !by.is_empty();
            let by = by.into_iter().collect::<Vec<_>>().join(", ");
            Observation {
                labels: labels(&[("cluster", &c.name), ("alarm", alarm)]),
                bad: Some(active),
                value: if active { 1.0 } else { 0.0 },
                summary: if active {
                    format!("etcd alarm {alarm} in {} (raised by {by})", c.name)
                } else {
                    format!("etcd alarm {alarm} in {} is disarmed", c.name)
                },
                description: if active {
                    alarm_advice(alarm)
                } else {
                    format!("No member reports {alarm} any more; the cluster accepts writes again.")
                },
                conclusive: false,
            }
        })
        .collect()
}

/// What an active alarm means for the cluster and what to do.
fn alarm_advice(alarm: &str) -> String {
    match alarm {
        "NOSPACE" => "The backend reached its quota: the cluster refuses writes. Compact, \
                      defragment, then `etcdctl alarm disarm` (docs/alerts.md)."
            .into(),
        "CORRUPT" => "A member's data differs from the others': the cluster refuses writes. \
                      Find the corrupt member before disarming (docs/alerts.md)."
            .into(),
        other => {
            format!("etcd raised alarm {other}; the cluster refuses writes until it is disarmed.")
        }
    }
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

/// The clock of a member's host differs from the collector's: sample timestamps
/// are off by as much, and etcd's leases and TLS checks suffer from a wrong
/// host clock. Liveness does not depend on it (it follows receive times).
fn clock_skew(c: &ClusterState, s: &RuleSettings) -> Vec<Observation> {
    per_member_ratio(
        c,
        s,
        |m| (m.last_seen_ms > 0).then(|| (m.clock_skew_ms as f64 / 1000.0).abs()),
        |m, v| {
            let way = if m.clock_skew_ms >= 0 {
                "ahead of"
            } else {
                "behind"
            };
            format!(
                "the clock of {} ({}) is {v:.1} s {way} the collector's",
                m.name, m.node
            )
        },
    )
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
                    conclusive: false,
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
