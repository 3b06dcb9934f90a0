use super::config::{defaults, resolve, RuleOverride, RuleSet};
use super::*;
use crate::state::{LiveState, START_GRACE_MS};
use etcdmon_proto::v1::{
    report::Body, ErrorKind, EtcdStatus, Failure, Identity, Label, Member, MetricFamily,
    MetricsScrape, Report, Sample,
};

const T0: i64 = 1_000_000;

fn id(name: &str, n: u64) -> Identity {
    Identity {
        cluster: "c".into(),
        member_name: name.into(),
        member_id: n,
        node: format!("node-{name}"),
        ..Default::default()
    }
}

fn members() -> Vec<Member> {
    (1..=3)
        .map(|i| Member {
            id: i,
            name: format!("m{i}"),
            ..Default::default()
        })
        .collect()
}

fn up(n: u64, leader: u64, term: u64, index: u64) -> EtcdStatus {
    EtcdStatus {
        reachable: true,
        member_id: n,
        leader_id: leader,
        raft_term: term,
        raft_index: index,
        db_size_bytes: 1_000,
        db_size_in_use_bytes: 1_000,
        members: members(),
        ..Default::default()
    }
}

fn down() -> EtcdStatus {
    EtcdStatus {
        failures: vec![Failure::new(
            "status",
            ErrorKind::Refused,
            "connection refused",
        )],
        ..Default::default()
    }
}

fn report(ts: i64, body: Body) -> Report {
    Report {
        timestamp_unix_ms: ts,
        body: Some(body),
        ..Default::default()
    }
}

fn rules() -> Rules {
    Rules::new(RuleSet::default())
}

/// Applies one status per member and evaluates at `ts`.
fn step(
    st: &LiveState,
    r: &mut Rules,
    ts: i64,
    statuses: [Option<EtcdStatus>; 3],
) -> Vec<(String, bool)> {
    for (i, s) in statuses.into_iter().enumerate() {
        if let Some(s) = s {
            let n = i as u64 + 1;
            st.apply(&id(&format!("m{n}"), n), &report(ts, Body::Status(s)));
        }
    }
    r.evaluate(&st.snapshot_at(ts), ts)
        .into_iter()
        .map(|t| (t.rule.to_string(), t.state.is_firing()))
        .collect()
}

fn healthy(term: u64) -> [Option<EtcdStatus>; 3] {
    [
        Some(up(1, 1, term, 10)),
        Some(up(2, 1, term, 10)),
        Some(up(3, 1, term, 10)),
    ]
}

#[test]
fn healthy_cluster_fires_nothing() {
    let (st, mut r) = (LiveState::default(), rules());
    assert!(step(&st, &mut r, T0, healthy(2)).is_empty());
    assert!(step(&st, &mut r, T0 + 1_000, healthy(2)).is_empty());
}

#[test]
fn a_dead_member_pages_at_once_and_puts_quorum_at_risk() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(up(3, 1, 2, 11))],
    );
    assert!(t.contains(&("member_unreachable".into(), true)), "{t:?}");
    assert!(t.contains(&("quorum_at_risk".into(), true)), "{t:?}");
    assert!(
        !t.iter()
            .any(|(r, _)| r == "quorum_lost" || r == "agent_silent"),
        "{t:?}"
    );
    // A second one down: quorum lost.
    let t = step(
        &st,
        &mut r,
        T0 + 2_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(down())],
    );
    assert!(t.contains(&("quorum_lost".into(), true)), "{t:?}");
    // Both back: everything resolves exactly once.
    let t = step(&st, &mut r, T0 + 3_000, healthy(2));
    let resolved: Vec<&str> = t
        .iter()
        .filter(|(_, f)| !f)
        .map(|(r, _)| r.as_str())
        .collect();
    assert_eq!(
        resolved
            .iter()
            .filter(|r| **r == "member_unreachable")
            .count(),
        2,
        "{t:?}"
    );
    assert!(
        resolved.contains(&"quorum_lost") && resolved.contains(&"quorum_at_risk"),
        "{t:?}"
    );
    assert!(r.firing().is_empty());
}

#[test]
fn a_silent_agent_is_not_a_dead_member() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    st.disconnected(&id("m2", 2), T0 + 500, "stream reset");
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 10)), None, Some(up(3, 1, 2, 10))],
    );
    assert!(!t.iter().any(|(r, _)| r == "member_unreachable"), "{t:?}");
    // agent_silent waits its 15 s.
    assert!(!t.iter().any(|(r, _)| r == "agent_silent"), "{t:?}");
    let t = step(
        &st,
        &mut r,
        T0 + 17_000,
        [Some(up(1, 1, 2, 10)), None, Some(up(3, 1, 2, 10))],
    );
    assert!(t.contains(&("agent_silent".into(), true)), "{t:?}");
}

#[test]
fn no_leader_and_disagreement() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [
            Some(up(1, 0, 3, 10)),
            Some(up(2, 0, 3, 10)),
            Some(up(3, 0, 3, 10)),
        ],
    );
    assert!(
        !t.iter().any(|(r, _)| r == "no_leader"),
        "an election's gap is not paged at once: {t:?}"
    );
    let leaderless = || {
        [
            Some(up(1, 0, 3, 10)),
            Some(up(2, 0, 3, 10)),
            Some(up(3, 0, 3, 10)),
        ]
    };
    let t = step(&st, &mut r, T0 + 1_500, leaderless());
    assert!(!t.iter().any(|(r, _)| r == "no_leader"), "{t:?}");
    assert_eq!(
        r.next_due_ms(),
        Some(T0 + 2_000),
        "judged again when `for` ends"
    );
    let t = step(&st, &mut r, T0 + 2_000, leaderless());
    assert!(t.contains(&("no_leader".into(), true)), "{t:?}");
    // A partition: m3 follows an old leader at an old term, for longer than 10 s.
    let split = || {
        [
            Some(up(1, 2, 4, 20)),
            Some(up(2, 2, 4, 20)),
            Some(up(3, 1, 3, 15)),
        ]
    };
    step(&st, &mut r, T0 + 2_000, split());
    let t = step(&st, &mut r, T0 + 13_000, split());
    assert!(t.contains(&("members_disagree".into(), true)), "{t:?}");
}

fn quota_report(ts: i64, quota: f64) -> Report {
    report(
        ts,
        Body::Metrics(MetricsScrape {
            families: vec![MetricFamily {
                name: "etcd_server_quota_backend_bytes".into(),
                r#type: 2,
                samples: vec![Sample {
                    name: "etcd_server_quota_backend_bytes".into(),
                    labels: Vec::<Label>::new(),
                    value: quota,
                    timestamp_unix_ms: 0,
                }],
            }],
            ..Default::default()
        }),
    )
}

#[test]
fn db_near_quota_has_hysteresis() {
    let (st, mut r) = (LiveState::default(), rules());
    let with_db = |size: i64| {
        let mut s = up(1, 1, 2, 10);
        s.db_size_bytes = size;
        [Some(s), Some(up(2, 1, 2, 10)), Some(up(3, 1, 2, 10))]
    };
    st.apply(&id("m1", 1), &quota_report(T0, 1_000_000.0));
    assert!(step(&st, &mut r, T0, with_db(700_000)).is_empty());
    let t = step(&st, &mut r, T0 + 1_000, with_db(810_000));
    assert_eq!(t, vec![("db_near_quota".to_string(), true)]);
    // Between 75% and 80%: no change, no flapping.
    assert!(step(&st, &mut r, T0 + 2_000, with_db(790_000)).is_empty());
    assert!(step(&st, &mut r, T0 + 3_000, with_db(805_000)).is_empty());
    let t = step(&st, &mut r, T0 + 4_000, with_db(700_000));
    assert_eq!(t, vec![("db_near_quota".to_string(), false)]);
}

#[test]
fn settings_validate_and_override() {
    let mut o = BTreeMap::new();
    o.insert(
        "db_near_quota".to_string(),
        RuleOverride {
            fire: Some(0.9),
            ..Default::default()
        },
    );
    assert_eq!(
        resolve(&o)
            .expect("valid")
            .get("db_near_quota")
            .map(|r| r.fire),
        Some(0.9)
    );
    o.insert(
        "db_near_quota".to_string(),
        RuleOverride {
            clear: Some(0.95),
            ..Default::default()
        },
    );
    assert!(resolve(&o)
        .expect_err("clear above fire")
        .reason
        .contains("db_near_quota"));
    let mut o = BTreeMap::new();
    o.insert("no_such_rule".to_string(), RuleOverride::default());
    assert!(resolve(&o)
        .expect_err("unknown")
        .reason
        .contains("no_such_rule"));
    // Every built-in rule has defaults, and every default a rule.
    let d = defaults();
    assert_eq!(d.len(), builtin::RULES.len());
    assert!(builtin::RULES.iter().all(|r| d.contains_key(r.name)));
}

fn wal_scrape(ts: i64, counts: [f64; 3]) -> Report {
    let n = "etcd_disk_wal_fsync_duration_seconds_bucket";
    let b = |le: &str, v: f64| Sample {
        name: n.into(),
        labels: vec![Label {
            name: "le".into(),
            value: le.into(),
        }],
        value: v,
        timestamp_unix_ms: 0,
    };
    report(
        ts,
        Body::Metrics(MetricsScrape {
            families: vec![MetricFamily {
                name: "etcd_disk_wal_fsync_duration_seconds".into(),
                r#type: 3,
                samples: vec![
                    b("0.008", counts[0]),
                    b("0.064", counts[1]),
                    b("+Inf", counts[2]),
                ],
            }],
            ..Default::default()
        }),
    )
}

#[test]
fn slow_wal_fsync_fires_after_its_for_duration() {
    let (st, mut r) = (LiveState::default(), rules());
    let m1 = id("m1", 1);
    step(&st, &mut r, T0, healthy(2));
    st.apply(&m1, &wal_scrape(T0, [100.0, 100.0, 100.0]));
    // Every fsync of each following interval takes 8..64 ms: p99 ~ 63 ms.
    let mut fired = Vec::new();
    for i in 1..=14 {
        let ts = T0 + i * 5_000;
        let n = 100.0 + 10.0 * i as f64;
        st.apply(&m1, &wal_scrape(ts, [100.0, n, n]));
        fired.extend(step(&st, &mut r, ts, healthy(2)));
    }
    assert_eq!(
        fired
            .iter()
            .filter(|(r, f)| r == "wal_fsync_slow" && *f)
            .count(),
        1,
        "{fired:?}"
    );
}

#[test]
fn frequent_leader_changes_counts_elections() {
    let (st, mut r) = (LiveState::default(), rules());
    let mut all = Vec::new();
    for i in 0..6u64 {
        // Leadership moves between m1 and m2 with a new term each time.
        let leader = 1 + i % 2;
        let term = 2 + i;
        all.extend(step(
            &st,
            &mut r,
            T0 + i as i64 * 60_000,
            [
                Some(up(1, leader, term, 10)),
                Some(up(2, leader, term, 10)),
                Some(up(3, leader, term, 10)),
            ],
        ));
    }
    assert!(
        all.contains(&("frequent_leader_changes".into(), true)),
        "{all:?}"
    );
}

#[test]
fn agents_that_have_not_reported_a_status_yet_do_not_count_as_lost_quorum() {
    let (st, mut r) = (LiveState::default(), rules());
    // Just connected (the first second after a collector or agent start): two agents
    // opened their streams, one also sent metrics; no status yet.
    for n in 1..=3u64 {
        st.connected(&id(&format!("m{n}"), n));
    }
    let scrape = Body::Metrics(MetricsScrape::default());
    st.apply(&id("m3", 3), &report(T0, scrape));
    let t: Vec<(String, bool)> = r
        .evaluate(&st.snapshot_at(T0), T0)
        .into_iter()
        .map(|t| (t.rule.to_string(), t.state.is_firing()))
        .collect();
    assert!(t.is_empty(), "no judgement before the first status: {t:?}");
    assert!(step(&st, &mut r, T0 + 1_000, healthy(2)).is_empty());
    // With statuses in, a real loss still fires.
    let t = step(
        &st,
        &mut r,
        T0 + 2_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(down())],
    );
    assert!(t.contains(&("quorum_lost".into(), true)), "{t:?}");
}

/// At start-up the agents connect one by one: the first one's member list names
/// three members while the other two agents are not connected yet. That is no
/// lost quorum; but members whose agents never come count as unavailable once
/// the start-up grace is over.
#[test]
fn members_whose_agents_are_still_connecting_do_not_lose_quorum_at_start() {
    let (st, mut r) = (LiveState::default(), rules());
    let only_first = || [Some(up(1, 1, 2, 10)), None, None];
    for ts in [T0, T0 + 1_000, T0 + 5_000, T0 + START_GRACE_MS - 1] {
        let t = step(&st, &mut r, ts, only_first());
        assert!(
            !t.iter().any(|(rule, _)| rule.starts_with("quorum")),
            "at +{} ms: {t:?}",
            ts - T0
        );
    }
    let t = step(&st, &mut r, T0 + START_GRACE_MS, only_first());
    assert!(t.contains(&("quorum_lost".into(), true)), "{t:?}");

    // Within the grace, once every agent reported, a real loss is judged at once.
    let (st, mut r) = (LiveState::default(), rules());
    assert!(step(&st, &mut r, T0, healthy(2)).is_empty());
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(down())],
    );
    assert!(t.contains(&("quorum_lost".into(), true)), "{t:?}");
}

/// `clock_skew` fires for a member whose host clock is off by more than 5 s for a
/// minute, with the direction in its summary, and resolves when the clock is fixed.
#[test]
fn clock_skew_fires_for_a_wrong_host_clock_and_resolves() {
    let st = LiveState::default();
    let mut r = rules();
    let at = |r: &mut Rules, st: &LiveState, now: i64, skew: i64| {
        for n in 1..=3u64 {
            let skew = if n == 2 { skew } else { 0 };
            st.apply_at(
                &id(&format!("m{n}"), n),
                &report(now + skew, Body::Status(up(n, 1, 2, 10))),
                now,
            );
        }
        r.evaluate(&st.snapshot_at(now), now)
            .into_iter()
            .filter(|t| t.rule == "clock_skew")
            .collect::<Vec<_>>()
    };
    assert!(
        at(&mut r, &st, T0, -12_000).is_empty(),
        "pending for a minute"
    );
    let fired = at(&mut r, &st, T0 + 61_000, -12_000);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].observation.labels["member"], "m2");
    assert!(
        fired[0].observation.summary.contains("12.0 s behind"),
        "{}",
        fired[0].observation.summary
    );
    // Fixed: the freshest report of the window counts, so it resolves at once.
    let resolved = at(&mut r, &st, T0 + 62_000, 0);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(!resolved[0].state.is_firing());
}

/// A member removed from the cluster (`etcdctl member remove`) no longer counts:
/// its agent, still running beside a stopped etcd, does not page it as
/// unreachable, quorum is counted over the members listed (not "2 of 3" or "4 of
/// 3"), and it leaves the state when its agent goes, instead of `agent_silent`
/// forever.
#[test]
fn a_removed_member_is_not_judged_and_leaves_with_its_agent() {
    let (st, mut r) = (LiveState::default(), rules());
    assert!(step(&st, &mut r, T0, healthy(2)).is_empty());
    // m3 is removed: the others list two members; its etcd stops.
    let two = |n: u64| EtcdStatus {
        members: members().into_iter().filter(|m| m.id != 3).collect(),
        ..up(n, 1, 2, 10)
    };
    let fired = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(two(1)), Some(two(2)), Some(down())],
    );
    // Not member_unreachable for m3; a two-member cluster has no failure margin.
    assert_eq!(fired, [("quorum_at_risk".to_string(), true)], "{fired:?}");
    let m3 = st.snapshot_at(T0 + 1_000)[0].members["m3"].clone();
    assert!(m3.removed, "{m3:?}");
    // Its agent goes: no agent_silent, and it is gone from the state.
    st.disconnected(&id("m3", 3), T0 + 2_000, "stopped");
    let fired = step(&st, &mut r, T0 + 30_000, [Some(two(1)), Some(two(2)), None]);
    assert!(
        !fired.iter().any(|(rule, _)| rule == "agent_silent"),
        "{fired:?}"
    );
    let snap = st.snapshot_at(T0 + 30_000);
    assert_eq!(snap[0].members.len(), 2, "{:?}", snap[0].members.keys());
    // Losing one of the two remaining is a quorum loss of a two-member cluster.
    let fired = step(&st, &mut r, T0 + 31_000, [Some(two(1)), Some(down()), None]);
    assert!(
        fired.contains(&("quorum_lost".to_string(), true)),
        "{fired:?}"
    );
}

#[test]
fn a_re_election_shorter_than_for_is_not_paged() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    // The leader (m1) hangs; the followers lose it for 131 ms, then elect m2.
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [None, Some(up(2, 0, 3, 10)), Some(up(3, 0, 3, 10))],
    );
    assert!(t.is_empty(), "{t:?}");
    let t = step(
        &st,
        &mut r,
        T0 + 1_131,
        [None, Some(up(2, 2, 3, 11)), Some(up(3, 2, 3, 11))],
    );
    assert!(t.is_empty(), "{t:?}");
    let t = step(
        &st,
        &mut r,
        T0 + 2_200,
        [None, Some(up(2, 2, 3, 12)), Some(up(3, 2, 3, 12))],
    );
    assert!(!t.iter().any(|(r, _)| r == "no_leader"), "{t:?}");
}

#[test]
fn quorum_loss_is_published_before_its_member_symptoms() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(down())],
    );
    let rules: Vec<&str> = t.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rules.first(), Some(&"quorum_lost"), "{t:?}");
    assert_eq!(
        rules.iter().filter(|r| **r == "member_unreachable").count(),
        2,
        "{t:?}"
    );
}

#[test]
fn a_resolution_says_what_recovered() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 11)), Some(down()), Some(up(3, 1, 2, 11))],
    );
    for (i, s) in healthy(2).into_iter().enumerate() {
        let n = i as u64 + 1;
        st.apply(
            &id(&format!("m{n}"), n),
            &report(T0 + 2_000, Body::Status(s.expect("status"))),
        );
    }
    let t = r.evaluate(&st.snapshot_at(T0 + 2_000), T0 + 2_000);
    let back = t
        .iter()
        .find(|t| t.rule == "member_unreachable")
        .expect("resolved");
    assert!(!back.state.is_firing());
    assert_eq!(
        back.observation.summary,
        "etcd member m2 is reachable again"
    );
    assert_eq!(
        back.observation.description,
        "The agent on node-m2 reaches etcd again: its status answers."
    );
    let margin = t
        .iter()
        .find(|t| t.rule == "quorum_at_risk")
        .expect("resolved");
    assert!(
        margin.observation.summary.contains("failure margin back"),
        "{margin:?}"
    );
}

#[test]
fn one_alarm_raised_by_two_members_is_one_alert() {
    use etcdmon_proto::v1::Alarm;
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    // etcd keeps one alarm list for the cluster; every member reports all of it.
    let alarmed = |n: u64| {
        let mut s = up(n, 1, 2, 11);
        s.alarms = [1, 2]
            .map(|by| Alarm {
                member_id: by,
                alarm: "NOSPACE".into(),
            })
            .to_vec();
        Some(s)
    };
    st.apply(
        &id("m1", 1),
        &report(T0 + 1_000, Body::Status(up(1, 1, 2, 11))),
    );
    for ts in [T0 + 1_000, T0 + 2_000] {
        for n in 1..=3 {
            st.apply(
                &id(&format!("m{n}"), n),
                &report(ts, Body::Status(alarmed(n).expect("status"))),
            );
        }
    }
    let t = r.evaluate(&st.snapshot_at(T0 + 2_000), T0 + 2_000);
    let alarms: Vec<_> = t.iter().filter(|t| t.rule == "alarm_active").collect();
    assert_eq!(alarms.len(), 1, "{t:?}");
    let a = &alarms[0].observation;
    assert_eq!(a.labels.get("alarm").map(String::as_str), Some("NOSPACE"));
    assert!(!a.labels.contains_key("member"), "{a:?}");
    assert_eq!(a.summary, "etcd alarm NOSPACE in c (raised by m1, m2)");
    // Disarmed: one resolution that says so.
    let t = step(&st, &mut r, T0 + 3_000, healthy(2));
    let alarms: Vec<_> = t.iter().filter(|(r, _)| r == "alarm_active").collect();
    assert_eq!(alarms, [&("alarm_active".to_string(), false)], "{t:?}");
}

#[test]
fn quorum_lost_resolves_when_a_leader_is_elected_not_before() {
    let (st, mut r) = (LiveState::default(), rules());
    step(&st, &mut r, T0, healthy(2));
    let t = step(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 0, 3, 11)), Some(down()), Some(down())],
    );
    assert!(t.contains(&("quorum_lost".into(), true)), "{t:?}");
    // Both back, still electing: the cluster cannot write yet.
    let electing = |n: u64| Some(up(n, 0, 4, 11));
    let t = step(
        &st,
        &mut r,
        T0 + 2_000,
        [electing(1), electing(2), electing(3)],
    );
    assert!(!t.iter().any(|(r, _)| r == "quorum_lost"), "{t:?}");
    // A leader: the outage is over. no_leader (fired under quorum_lost, so
    // inhibited) resolves in the same round, after its cause.
    let t = step(&st, &mut r, T0 + 2_400, healthy(4));
    assert_eq!(
        t,
        [("quorum_lost".into(), false), ("no_leader".into(), false)]
    );
}

#[test]
fn a_learner_neither_counts_towards_quorum_nor_disagrees() {
    let (st, mut r) = (LiveState::default(), rules());
    // Three voters and a learner (m4) in every member list.
    let with_learner = |mut s: EtcdStatus| {
        s.members.push(Member {
            id: 4,
            name: "m4".into(),
            is_learner: true,
            ..Default::default()
        });
        s
    };
    let round = |st: &LiveState, r: &mut Rules, ts: i64, learner: EtcdStatus| {
        st.apply(&id("m4", 4), &report(ts, Body::Status(learner)));
        let statuses = [1, 2, 3].map(|n| Some(with_learner(up(n, 1, 2, 5_000))));
        step(st, r, ts, statuses)
    };
    // The learner catches up: 4,999 entries behind, far beyond the divergence
    // threshold (1,000).
    let mut catching_up = with_learner(up(4, 1, 2, 10));
    catching_up.is_learner = true;
    catching_up.raft_index = 1;
    for ts in [T0, T0 + 31_000, T0 + 62_000] {
        let t = round(&st, &mut r, ts, catching_up.clone());
        assert!(t.is_empty(), "{t:?}");
    }
    let snapshot = st.snapshot_at(T0 + 62_000);
    assert!(snapshot[0].members["m4"].is_learner);
    assert_eq!(snapshot[0].member_count(), 3, "voters only");
    // The learner goes down: its own page, but the voters' margin is intact.
    let t = round(&st, &mut r, T0 + 63_000, down());
    assert!(t.contains(&("member_unreachable".into(), true)), "{t:?}");
    assert!(!t.iter().any(|(r, _)| r.starts_with("quorum")), "{t:?}");
}

/// Applies one status per member and evaluates at `ts`: every transition as
/// (rule, member, firing, summary, description).
fn step_full(
    st: &LiveState,
    r: &mut Rules,
    ts: i64,
    statuses: [Option<EtcdStatus>; 3],
) -> Vec<(String, String, bool, String, String)> {
    for (i, s) in statuses.into_iter().enumerate() {
        if let Some(s) = s {
            let n = i as u64 + 1;
            st.apply(&id(&format!("m{n}"), n), &report(ts, Body::Status(s)));
        }
    }
    r.evaluate(&st.snapshot_at(ts), ts)
        .into_iter()
        .map(|t| {
            let member = t
                .observation
                .labels
                .get("member")
                .cloned()
                .unwrap_or_default();
            (
                t.rule.to_string(),
                member,
                t.state.is_firing(),
                t.observation.summary,
                t.observation.description,
            )
        })
        .collect()
}

/// m3 loses its peers: it follows no leader (a pre-candidate at term 2, or a
/// candidate at term 3) while m1 and m2 follow m1. After two seconds it is
/// named, with what the others' peer probes saw; it resolves when it follows
/// m1 again. Elections (everyone leaderless for a moment) name nobody.
#[test]
fn an_isolated_member_is_named_within_seconds_and_an_election_names_nobody() {
    use etcdmon_proto::v1::{PeerRtt, PeerRttResult};
    let (st, mut r) = (LiveState::default(), rules());
    step_full(
        &st,
        &mut r,
        T0,
        [
            Some(up(1, 1, 2, 10)),
            Some(up(2, 1, 2, 10)),
            Some(up(3, 1, 2, 10)),
        ],
    );
    let cut = || {
        [
            Some(up(1, 1, 2, 12)),
            Some(up(2, 1, 2, 12)),
            Some(up(3, 0, 3, 10)),
        ]
    };
    let t = step_full(&st, &mut r, T0 + 1_000, cut());
    assert!(t.is_empty(), "not before its `for`: {t:?}");
    // m1's agent cannot connect to m3's peer port.
    st.apply(
        &id("m1", 1),
        &report(
            T0 + 2_000,
            Body::PeerRtt(PeerRtt {
                peers: vec![PeerRttResult {
                    member_id: 3,
                    member_name: "m3".into(),
                    failure: Some(Failure::new("connect", ErrorKind::Refused, "refused")),
                    ..Default::default()
                }],
            }),
        ),
    );
    let t = step_full(&st, &mut r, T0 + 3_000, cut());
    let isolated: Vec<_> = t.iter().filter(|x| x.0 == "member_isolated").collect();
    assert_eq!(isolated.len(), 1, "{t:?}");
    let (_, member, firing, summary, description) = isolated[0];
    assert_eq!((member.as_str(), *firing), ("m3", true));
    assert!(summary.contains("m3 is cut off"), "{summary}");
    assert!(
        description.contains("m3 follows no leader at term 3, while m1, m2 follow leader 1")
            && description.contains("The agents of m1 cannot connect to its peer port"),
        "{description}"
    );
    // Healed: it follows m1 again.
    let t = step_full(
        &st,
        &mut r,
        T0 + 4_000,
        [
            Some(up(1, 1, 3, 14)),
            Some(up(2, 1, 3, 14)),
            Some(up(3, 1, 3, 14)),
        ],
    );
    assert!(
        t.iter()
            .any(|x| x.0 == "member_isolated" && x.1 == "m3" && !x.2),
        "{t:?}"
    );

    // An election: nobody has a leader for a moment, then all follow m2.
    let leaderless = || {
        [
            Some(up(1, 0, 4, 14)),
            Some(up(2, 0, 4, 14)),
            Some(up(3, 0, 4, 14)),
        ]
    };
    let mut all = step_full(&st, &mut r, T0 + 10_000, leaderless());
    all.extend(step_full(&st, &mut r, T0 + 13_000, leaderless()));
    assert!(!all.iter().any(|x| x.0 == "member_isolated"), "{all:?}");
    assert!(all.iter().any(|x| x.0 == "no_leader" && x.2), "{all:?}");
    let t = step_full(
        &st,
        &mut r,
        T0 + 14_000,
        [
            Some(up(1, 2, 4, 15)),
            Some(up(2, 2, 4, 15)),
            Some(up(3, 2, 4, 15)),
        ],
    );
    assert!(!t.iter().any(|x| x.0 == "member_isolated"), "{t:?}");
}

/// A rolling restart that happens to stop the leader each time (leadership is
/// handed on before each stop) moves the leader three times: those changes are
/// the restarts', not an unstable cluster. The same changes without members
/// going down fire.
#[test]
fn leader_changes_of_a_rolling_restart_are_not_frequent() {
    let (st, mut r) = (LiveState::default(), rules());
    let mut all = Vec::new();
    let mut t = T0;
    let mut term = 2;
    all.extend(step(
        &st,
        &mut r,
        t,
        [
            Some(up(1, 1, term, 10)),
            Some(up(2, 1, term, 10)),
            Some(up(3, 1, term, 10)),
        ],
    ));
    // The leader (m1, then m2, then m3) hands over to the next and restarts.
    for restarted in 1..=3u64 {
        let next = restarted % 3 + 1;
        term += 1;
        t += 1_000;
        let mut s: [Option<EtcdStatus>; 3] = [1u64, 2, 3].map(|n| Some(up(n, next, term, 10)));
        all.extend(step(&st, &mut r, t, s.clone()));
        t += 500;
        s[restarted as usize - 1] = Some(down());
        all.extend(step(&st, &mut r, t, s.clone()));
        t += 3_000;
        s[restarted as usize - 1] = Some(up(restarted, next, term, 10));
        all.extend(step(&st, &mut r, t, s));
    }
    // One deliberate move-leader on top.
    term += 1;
    t += 1_000;
    all.extend(step(
        &st,
        &mut r,
        t,
        [1u64, 2, 3].map(|n| Some(up(n, 3, term, 10))),
    ));
    all.extend(step(
        &st,
        &mut r,
        t + 60_000,
        [1u64, 2, 3].map(|n| Some(up(n, 3, term, 10))),
    ));
    assert!(
        !all.iter()
            .any(|(rule, _)| rule == "frequent_leader_changes"),
        "{all:?}"
    );

    // Four more changes with nobody going down: an unstable cluster.
    let mut t = t + 60_000;
    for i in 0..4u64 {
        term += 1;
        t += 30_000;
        let leader = 1 + i % 3;
        all.extend(step(
            &st,
            &mut r,
            t,
            [1u64, 2, 3].map(|n| Some(up(n, leader, term, 10))),
        ));
    }
    all.extend(step(
        &st,
        &mut r,
        t + 20_000,
        [1u64, 2, 3].map(|n| Some(up(n, 3, term, 10))),
    ));
    assert!(
        all.contains(&("frequent_leader_changes".into(), true)),
        "{all:?}"
    );
}

/// A host report with `available` of `total` bytes of memory free.
fn memory_report(ts: i64, total: u64, available: u64) -> Report {
    use etcdmon_proto::v1::{HostMetrics, MemoryMetrics};
    report(
        ts,
        Body::Host(HostMetrics {
            memory: Some(MemoryMetrics {
                total_bytes: total,
                available_bytes: available,
                used_bytes: total - available,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

/// `memory_low` on recorded figures (filling the test machine's memory would
/// starve every other test): 95% in use for its 2 minutes fires for that
/// member's host, 87% (between clear and fire) keeps it firing, 50% resolves.
#[test]
fn memory_low_fires_after_two_minutes_of_a_full_host_and_resolves_below_85_percent() {
    const GIB: u64 = 1 << 30;
    let (st, mut r) = (LiveState::default(), rules());
    let mut fired = Vec::new();
    for (t, available) in [
        (0, 8 * GIB),
        (1_000, GIB / 2 + GIB * 3 / 10),
        (60_000, GIB * 8 / 10),
        (121_000, GIB * 8 / 10),
    ] {
        st.apply(&id("m2", 2), &memory_report(T0 + t, 16 * GIB, available));
        fired.extend(step(&st, &mut r, T0 + t, healthy(2)));
    }
    assert_eq!(
        fired,
        [("memory_low".to_string(), true)],
        "fires after 2 minutes at 95%"
    );
    st.apply(
        &id("m2", 2),
        &memory_report(T0 + 130_000, 16 * GIB, GIB * 21 / 10),
    );
    assert!(
        step(&st, &mut r, T0 + 130_000, healthy(2)).is_empty(),
        "87%: in the band"
    );
    st.apply(
        &id("m2", 2),
        &memory_report(T0 + 140_000, 16 * GIB, 8 * GIB),
    );
    assert_eq!(
        step(&st, &mut r, T0 + 140_000, healthy(2)),
        [("memory_low".to_string(), false)]
    );
}

/// Healthy statuses carrying each member's answer to the consistency check.
fn hashed(term: u64, answers: [Option<(i64, u32, i64)>; 3]) -> [Option<EtcdStatus>; 3] {
    let mut out = healthy(term);
    for (s, a) in out.iter_mut().zip(answers) {
        if let (Some(s), Some((revision, hash, compact_revision))) = (s.as_mut(), a) {
            s.kv_hash = Some(etcdmon_proto::v1::KvHash {
                revision,
                hash,
                compact_revision,
                ..Default::default()
            });
        }
    }
    out
}

#[test]
fn a_member_whose_data_differ_from_the_majoritys_is_named_and_resolves_once_it_agrees() {
    let (st, mut r) = (LiveState::default(), rules());
    let same = [
        Some((100, 0xaa, 0)),
        Some((100, 0xaa, 0)),
        Some((100, 0xaa, 0)),
    ];
    assert!(step(&st, &mut r, T0, hashed(2, same)).is_empty());

    // m3 differs at the same revision and compaction: it alone is named.
    let m3_differs = [
        Some((200, 0xbb, 0)),
        Some((200, 0xbb, 0)),
        Some((200, 0xcc, 0)),
    ];
    for (i, s) in hashed(2, m3_differs).into_iter().enumerate() {
        let n = i as u64 + 1;
        let body = Body::Status(s.expect("all three answered"));
        st.apply(&id(&format!("m{n}"), n), &report(T0 + 1_000, body));
    }
    let t = r.evaluate(&st.snapshot_at(T0 + 1_000), T0 + 1_000);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].rule, "data_inconsistent");
    assert!(t[0].state.is_firing());
    assert_eq!(t[0].observation.labels["member"], "m3");
    let d = &t[0].observation.description;
    assert!(
        d.contains("m1, m2 000000bb") && d.contains("m3 000000cc"),
        "{d}"
    );

    // Only m1 has answered the next check: no verdict, the alert stays.
    let partial = [Some((300, 0xdd, 0)), None, None];
    assert!(step(&st, &mut r, T0 + 2_000, hashed(2, partial)).is_empty());
    // A compaction between the hashes: no verdict either.
    let compacted = [
        Some((400, 0x1, 0)),
        Some((400, 0x2, 350)),
        Some((400, 0x3, 350)),
    ];
    assert!(step(&st, &mut r, T0 + 3_000, hashed(2, compacted)).is_empty());
    // All agree again (the member was rebuilt): resolved.
    let agree = [
        Some((500, 0xee, 0)),
        Some((500, 0xee, 0)),
        Some((500, 0xee, 0)),
    ];
    assert_eq!(
        step(&st, &mut r, T0 + 4_000, hashed(2, agree)),
        vec![("data_inconsistent".to_string(), false)]
    );
}

#[test]
fn when_no_majority_agrees_every_answering_member_is_named() {
    let (st, mut r) = (LiveState::default(), rules());
    let split = [Some((100, 0x1, 0)), Some((100, 0x2, 0)), None];
    let t = step(&st, &mut r, T0, hashed(2, split));
    assert_eq!(
        t,
        vec![
            ("data_inconsistent".to_string(), true),
            ("data_inconsistent".to_string(), true)
        ]
    );
}

#[test]
fn a_registered_cluster_without_agents_is_shown_and_fires_until_its_agents_report() {
    let (st, mut r) = (LiveState::default(), rules());
    st.register(&[crate::state::RegisteredCluster {
        name: "c".into(),
        region: "eu".into(),
        members: vec!["m1".into(), "m2".into(), "m3".into()],
        ..Default::default()
    }]);
    let snap = st.snapshot_at(T0);
    assert_eq!(snap.len(), 1, "shown before any agent reports");
    assert!(!snap[0].reporting);
    assert_eq!(snap[0].members_missing, ["m1", "m2", "m3"]);
    assert!(r.evaluate(&snap, T0).is_empty(), "waits its minute");
    let t = r.evaluate(&st.snapshot_at(T0 + 60_000), T0 + 60_000);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].rule, "cluster_not_reporting");
    assert!(t[0].state.is_firing());
    assert!(
        t[0].observation.description.contains("m1, m2, m3"),
        "{}",
        t[0].observation.description
    );
    // The agents come: resolved, and nothing else fires.
    assert_eq!(
        step(&st, &mut r, T0 + 61_000, healthy(2)),
        vec![("cluster_not_reporting".to_string(), false)]
    );
    assert!(st.snapshot_at(T0 + 61_000)[0].members_missing.is_empty());
}

#[tokio::test]
async fn the_first_statuses_of_a_starting_cluster_are_not_judged_one_by_one() {
    // Agents connect one after the other; only a changed view, not a first
    // one, asks for an evaluation before the next tick.
    let st = LiveState::default();
    let wait = std::time::Duration::from_millis(10);
    st.apply(&id("m1", 1), &report(T0, Body::Status(up(1, 1, 2, 10))));
    assert!(
        tokio::time::timeout(wait, st.changed()).await.is_err(),
        "a first status is no news"
    );
    st.apply(&id("m1", 1), &report(T0 + 1, Body::Status(up(1, 0, 3, 10))));
    assert!(
        tokio::time::timeout(wait, st.changed()).await.is_ok(),
        "a member that lost its leader is"
    );
}

/// One peer probe round of member `n`'s agent: `refused` peers could not be
/// connected to, the other two members could.
fn probes(st: &LiveState, ts: i64, n: u64, refused: &[u64]) {
    use etcdmon_proto::v1::{PeerRtt, PeerRttResult};
    let peers = (1..=3)
        .filter(|&p| p != n)
        .map(|p| PeerRttResult {
            member_id: p,
            member_name: format!("m{p}"),
            rtt_seconds: 0.001,
            failure: refused
                .contains(&p)
                .then(|| Failure::new("connect", ErrorKind::Refused, "refused")),
            ..Default::default()
        })
        .collect();
    st.apply(
        &id(&format!("m{n}"), n),
        &report(ts, Body::PeerRtt(PeerRtt { peers })),
    );
}

/// A healthy cluster whose three agents each reached both peers, with nothing
/// firing at T0 + 200 ms.
fn healthy_and_probed() -> (LiveState, Rules) {
    let (st, mut r) = (LiveState::default(), rules());
    step_full(&st, &mut r, T0, healthy(2));
    for n in 1..=3 {
        probes(&st, T0 + 100, n, &[]);
    }
    assert!(step_full(&st, &mut r, T0 + 200, healthy(2)).is_empty());
    (st, r)
}

/// Every other agent failing to connect to m3's peer port, while they reach
/// each other and m3 answers its own agent, names m3 at once: before its
/// election timeout changes any view, and without the rule's `for`. It
/// resolves on the first rounds that reach it again.
#[test]
fn the_peers_probes_name_a_cut_off_member_at_once() {
    let (st, mut r) = healthy_and_probed();

    // m1's round alone is a broken link, not an isolation.
    probes(&st, T0 + 1_100, 1, &[3]);
    let t = step_full(&st, &mut r, T0 + 1_150, healthy(2));
    assert!(!t.iter().any(|x| x.0 == "member_isolated"), "{t:?}");
    probes(&st, T0 + 1_300, 2, &[3]);
    let t = step_full(&st, &mut r, T0 + 1_350, healthy(2));
    let isolated: Vec<_> = t.iter().filter(|x| x.0 == "member_isolated").collect();
    assert_eq!(isolated.len(), 1, "{t:?}");
    let (_, member, firing, summary, description) = isolated[0];
    assert_eq!((member.as_str(), *firing), ("m3", true));
    assert!(summary.contains("m3 is cut off"), "{summary}");
    assert!(
        description.starts_with(
            "The agents of m1, m2 cannot connect to its peer port, while they reach one another."
        ) && description.contains("m3 still follows leader 1 at term 2"),
        "{description}"
    );

    // Healed: a round that reaches it again.
    probes(&st, T0 + 2_100, 1, &[]);
    let t = step_full(&st, &mut r, T0 + 2_150, healthy(2));
    assert!(
        t.iter()
            .any(|x| x.0 == "member_isolated" && x.1 == "m3" && !x.2),
        "{t:?}"
    );
}

/// A restart closes a member's peer port too: the failures its peers saw
/// while it was down do not name it when it is back, nor do agents that
/// cannot reach one another (a three-way split), nor a minority.
#[test]
fn probes_from_before_a_restart_or_without_a_connected_majority_name_nobody() {
    let (st, mut r) = healthy_and_probed();
    // m3 stops; the others' rounds find its port closed; it comes back.
    let t = step_full(
        &st,
        &mut r,
        T0 + 1_000,
        [Some(up(1, 1, 2, 11)), Some(up(2, 1, 2, 11)), Some(down())],
    );
    assert!(
        t.iter().any(|x| x.0 == "member_unreachable" && x.2),
        "{t:?}"
    );
    probes(&st, T0 + 1_100, 1, &[3]);
    probes(&st, T0 + 1_200, 2, &[3]);
    let mut all = step_full(&st, &mut r, T0 + 3_000, healthy(2));
    all.extend(step_full(&st, &mut r, T0 + 3_500, healthy(2)));
    assert!(!all.iter().any(|x| x.0 == "member_isolated"), "{all:?}");
    // The next rounds reach it: still nothing.
    probes(&st, T0 + 4_100, 1, &[]);
    probes(&st, T0 + 4_200, 2, &[]);
    let t = step_full(&st, &mut r, T0 + 4_300, healthy(2));
    assert!(!t.iter().any(|x| x.0 == "member_isolated"), "{t:?}");

    // Nobody reaches anybody: no connected majority to name one member from.
    for n in 1..=3 {
        let others: Vec<u64> = (1..=3).filter(|&p| p != n).collect();
        probes(&st, T0 + 5_000, n, &others);
    }
    let t = step_full(&st, &mut r, T0 + 5_100, healthy(2));
    assert!(!t.iter().any(|x| x.0 == "member_isolated"), "{t:?}");
}
