//! The engine's rules, each with explicit times.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcdmon_alert::{AlertCandidate, AlertState};

use super::{Applied, Engine, EngineConfig, Told};
use crate::flap::FlapConfig;
use crate::inhibit::{default_rules, InhibitTiming};
use crate::notification::{Notification, Reason};
use crate::route::{Route, RouteConfig};
use etcdmon_alert::Matcher;
use etcdmon_alert::Silence;

const S: i64 = 1_000;

fn route(toml_text: &str) -> Route {
    let cfg: RouteConfig = toml::from_str(toml_text).unwrap();
    Route::build(&cfg, &|_| true).unwrap()
}

fn engine(toml_text: &str) -> Engine {
    Engine::new(
        route(toml_text),
        EngineConfig {
            inhibit_rules: default_rules(),
            // The timing at the edges has its own tests below.
            inhibit_timing: InhibitTiming {
                wait: Duration::ZERO,
                linger: Duration::ZERO,
            },
            flapping: FlapConfig::default(),
            ack_receivers: HashSet::from(["pd".to_string()]),
            quiet_resolved: HashSet::new(),
            external_url: "http://etcdmon.test/".into(),
        },
    )
}

fn candidate(rule: &str, member: &str, state: AlertState, transition: u64) -> AlertCandidate {
    let labels: BTreeMap<String, String> = [
        ("cluster", "prod"),
        ("member", member),
        ("rule", rule),
        ("severity", "critical"),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    AlertCandidate {
        fingerprint: format!("{rule}/{member}"),
        state,
        labels,
        annotations: [("summary".to_string(), format!("{rule} on {member}"))].into(),
        value: 1.0,
        active_since_ms: 0,
        transition,
        evaluated_ms: 0,
    }
}

fn firing(rule: &str, member: &str, t: u64) -> AlertCandidate {
    candidate(rule, member, AlertState::Firing, t)
}

fn resolved(rule: &str, member: &str, t: u64) -> AlertCandidate {
    candidate(rule, member, AlertState::Resolved, t)
}

/// (receiver, reason, [(fingerprint, status)]) of one notification.
type Summary = (String, Reason, Vec<(String, AlertState)>);

fn summary(ns: &[Notification]) -> Vec<Summary> {
    ns.iter()
        .map(|n| {
            (
                n.receiver.clone(),
                n.reason,
                n.alerts
                    .iter()
                    .map(|a| (a.fingerprint.clone(), a.status))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn one_notification_per_transition_despite_duplicates_restatements_and_stale_redeliveries() {
    let mut e = engine(r#"receiver = "hook""#);
    let c = firing("member_unreachable", "m1", 10);
    assert!(matches!(e.on_candidate(&c, S), Applied::Transition(_)));
    let ns = e.due(S);
    assert_eq!(
        summary(&ns),
        [(
            "hook".into(),
            Reason::New,
            vec![("member_unreachable/m1".into(), AlertState::Firing)]
        )]
    );
    assert_eq!(
        ns[0].group_key,
        r#"0:{cluster="prod",rule="member_unreachable"}"#
    );
    assert_eq!(
        ns[0].alerts[0].generator_url,
        "http://etcdmon.test/api/v1/alerts?state=all&fingerprint=member_unreachable/m1"
    );
    // The same candidate again (JetStream redelivery): nothing.
    assert_eq!(e.on_candidate(&c, 2 * S), Applied::Unchanged);
    // The collector restarted and restates the firing alert with a new number.
    assert_eq!(
        e.on_candidate(&firing("member_unreachable", "m1", 50), 3 * S),
        Applied::Unchanged
    );
    assert!(e.due(100 * S).is_empty());
    // Resolved, then a stale firing redelivered late: one resolved notification only.
    assert!(matches!(
        e.on_candidate(&resolved("member_unreachable", "m1", 51), 101 * S),
        Applied::Transition(_)
    ));
    assert_eq!(e.on_candidate(&c, 101 * S), Applied::Stale);
    let ns = e.due(101 * S);
    assert_eq!(
        summary(&ns),
        [(
            "hook".into(),
            Reason::New,
            vec![("member_unreachable/m1".into(), AlertState::Resolved)]
        )]
    );
    assert!(e.due(200 * S).is_empty());
}

#[test]
fn group_wait_and_group_interval_batch_alerts_of_a_group() {
    let mut e = engine(
        r#"receiver = "hook"
           group_by = ["cluster"]
           group_wait = "2s"
           group_interval = "10s""#,
    );
    e.on_candidate(&firing("member_unreachable", "m1", 1), 0);
    assert!(
        e.due(S).is_empty(),
        "group_wait holds the first notification"
    );
    e.on_candidate(&firing("db_near_quota", "m3", 1), S);
    let ns = e.due(2 * S);
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].alerts.len(), 2, "both alerts in one notification");
    assert_eq!(
        ns[0].group_labels,
        BTreeMap::from([("cluster".into(), "prod".into())])
    );
    // A change within group_interval waits for it, then all firing alerts are sent.
    e.on_candidate(&firing("member_unreachable", "m2", 1), 3 * S);
    assert!(e.due(11 * S).is_empty());
    let ns = e.due(12 * S);
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].alerts.len(), 3);
    assert_eq!(
        ns[0].common_labels.get("cluster").map(String::as_str),
        Some("prod")
    );
    assert!(!ns[0].common_labels.contains_key("rule"));
}

#[test]
fn the_all_clear_skips_group_interval_but_a_partial_recovery_waits() {
    let mut e = engine(
        r#"receiver = "hook"
           group_by = ["cluster"]
           group_interval = "10s""#,
    );
    e.on_candidate(&firing("member_unreachable", "m1", 1), 0);
    e.on_candidate(&firing("member_unreachable", "m2", 1), 0);
    assert_eq!(e.due(0).len(), 1);
    // One of two recovers: the group still fires, so the change waits.
    e.on_candidate(&resolved("member_unreachable", "m1", 2), S);
    assert!(
        e.due(S).is_empty(),
        "a partial recovery waits for group_interval"
    );
    // The last one recovers: the all-clear goes out at once, with both.
    e.on_candidate(&resolved("member_unreachable", "m2", 2), 2 * S);
    let ns = e.due(2 * S);
    assert_eq!(
        summary(&ns),
        [(
            "hook".to_string(),
            Reason::New,
            vec![
                ("member_unreachable/m1".into(), AlertState::Resolved),
                ("member_unreachable/m2".into(), AlertState::Resolved),
            ]
        )]
    );
    // It fires again at once: that waits for group_interval after the all-clear.
    e.on_candidate(&firing("member_unreachable", "m2", 3), 3 * S);
    assert!(e.due(11 * S).is_empty());
    assert_eq!(e.due(12 * S).len(), 1);
}

#[test]
fn a_quiet_resolved_receiver_hears_repeats_but_never_the_resolution() {
    let mut e = Engine::new(
        route(
            r#"receiver = "dms"
               repeat_interval = "1m""#,
        ),
        EngineConfig {
            quiet_resolved: HashSet::from(["dms".to_string()]),
            ..EngineConfig::default()
        },
    );
    e.on_candidate(&firing("watchdog", "", 1), 0);
    assert_eq!(e.due(0).len(), 1);
    assert_eq!(summary(&e.due(60 * S))[0].1, Reason::Repeat);
    e.on_candidate(&resolved("watchdog", "", 2), 61 * S);
    assert!(e.due(61 * S).is_empty(), "no resolved notice");
    assert_eq!(e.told("dms", "watchdog/"), Some(Told::Resolved(2)));
    assert!(e.due(600 * S).is_empty(), "and no more repeats");
    e.on_candidate(&firing("watchdog", "", 3), 601 * S);
    assert_eq!(summary(&e.due(601 * S))[0].1, Reason::New);
}

#[test]
fn repeats_stop_when_acknowledged_and_pagerduty_is_told_once() {
    let mut e = engine(
        r#"receiver = "pd"
           repeat_interval = "1m""#,
    );
    e.on_candidate(&firing("no_leader", "", 7), 0);
    assert_eq!(e.due(0).len(), 1);
    assert!(e.due(59 * S).is_empty());
    let ns = e.due(60 * S);
    assert_eq!(summary(&ns)[0].1, Reason::Repeat);
    e.set_acks([("no_leader/".to_string(), 7)]);
    let ns = e.due(61 * S);
    assert_eq!(summary(&ns)[0].1, Reason::Acknowledged);
    assert!(ns[0].alerts[0].acknowledged);
    assert_eq!(e.told("pd", "no_leader/"), Some(Told::Acknowledged(7)));
    assert!(
        e.due(10 * 60 * S).is_empty(),
        "no repeats once acknowledged"
    );
    // The resolve is still sent.
    e.on_candidate(&resolved("no_leader", "", 8), 11 * 60 * S);
    assert_eq!(summary(&e.due(11 * 60 * S))[0].2[0].1, AlertState::Resolved);
}

#[test]
fn escalation_goes_to_the_next_receiver_unless_acknowledged() {
    let mut e = engine(
        r#"receiver = "primary"
           escalation = [{ after = "5m", receiver = "secondary" }]"#,
    );
    e.on_candidate(&firing("alarm_active", "", 1), 0);
    e.on_candidate(&firing("quorum_lost", "x", 1), 0);
    e.set_acks([("quorum_lost/x".to_string(), 1)]);
    assert_eq!(e.due(0).len(), 2, "primary, one per group");
    assert!(e.due(299 * S).is_empty());
    let ns = e.due(300 * S);
    assert_eq!(
        summary(&ns),
        [(
            "secondary".into(),
            Reason::Escalation,
            vec![("alarm_active/".into(), AlertState::Firing)]
        )],
        "the acknowledged quorum_lost is not escalated"
    );
    assert!(e.due(400 * S).is_empty(), "escalated once");
    // Both hear about the resolution.
    e.on_candidate(&resolved("alarm_active", "", 2), 500 * S);
    let mut receivers: Vec<String> = e.due(500 * S).into_iter().map(|n| n.receiver).collect();
    receivers.sort();
    assert_eq!(receivers, ["primary", "secondary"]);
}

#[test]
fn silences_mute_while_active_and_alerts_surface_when_they_expire() {
    let mut e = engine(r#"receiver = "hook""#);
    e.set_silences(vec![Silence {
        id: "s1".into(),
        matchers: vec![Matcher::parse(r#"member="m1""#).unwrap()],
        starts_ms: 0,
        ends_ms: 60 * S,
        created_by: "ops".into(),
        comment: "maintenance".into(),
        updated_ms: 0,
    }]);
    e.on_candidate(&firing("member_unreachable", "m1", 1), S);
    e.on_candidate(&firing("member_unreachable", "m2", 1), S);
    let ns = e.due(S);
    assert_eq!(
        summary(&ns)[0].2,
        [("member_unreachable/m2".into(), AlertState::Firing)]
    );
    // Silenced and resolved within the silence: never told, so never resolved either.
    e.on_candidate(&firing("frequent_leader_changes", "m1", 1), 2 * S);
    e.on_candidate(&resolved("frequent_leader_changes", "m1", 2), 3 * S);
    // The silence ends with m1 still down: it is notified (with m2, still firing).
    let ns = e.due(61 * S);
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].alerts.len(), 2);
}

#[test]
fn quorum_lost_inhibits_member_symptoms_of_the_cluster() {
    let mut e = engine(r#"receiver = "hook""#);
    e.on_candidate(&firing("quorum_lost", "", 1), 0);
    e.on_candidate(&firing("wal_fsync_slow", "m1", 1), 0);
    let ns = e.due(0);
    assert_eq!(summary(&ns).len(), 1);
    assert_eq!(ns[0].alerts[0].fingerprint, "quorum_lost/");
    // Quorum back: the latency alert, judged on metrics that trail the cause,
    // stays inhibited for the rule's linger, then is notified.
    e.on_candidate(&resolved("quorum_lost", "", 2), 40 * S);
    let fps = |ns: Vec<Notification>| -> Vec<String> {
        ns.iter()
            .flat_map(|n| n.alerts.iter().map(|a| a.fingerprint.clone()))
            .collect()
    };
    assert_eq!(fps(e.due(40 * S)), ["quorum_lost/"]);
    assert!(fps(e.due(54 * S)).is_empty(), "within the 15 s linger");
    assert_eq!(fps(e.due(55 * S)), ["wal_fsync_slow/m1"]);
}

/// Failed proposals are counted between two scrapes, so they still show in the
/// scrape after quorum is back: that trailing symptom resolves within the
/// metrics linger and is never notified.
#[test]
fn a_metrics_symptom_trailing_its_cause_is_never_notified() {
    let mut e = timed_engine();
    e.on_candidate(&firing("quorum_lost", "", 1), 0);
    e.on_candidate(&firing("proposals_failing", "m2", 1), 3 * S);
    e.on_candidate(&firing("proposals_pending", "m2", 1), 3 * S);
    assert_eq!(due_at(&mut e, &[0, 3 * S, 4 * S]).len(), 1, "quorum_lost");
    e.on_candidate(&resolved("quorum_lost", "", 2), 10 * S);
    e.on_candidate(&resolved("proposals_failing", "m2", 2), 12_400);
    e.on_candidate(&resolved("proposals_pending", "m2", 2), 12_400);
    assert_eq!(
        due_at(&mut e, &[10 * S, 12_400, 30 * S]),
        [(
            "hook".to_string(),
            Reason::New,
            vec![("quorum_lost/".to_string(), AlertState::Resolved)]
        )]
    );
}

#[test]
fn a_flapping_alert_is_reported_once_held_then_notified_when_stable() {
    let mut e = Engine::new(
        route(r#"receiver = "hook""#),
        EngineConfig {
            flapping: FlapConfig {
                max_transitions: 4,
                window: Duration::from_secs(60),
                stable_for: Duration::from_secs(30),
            },
            ..EngineConfig::default()
        },
    );
    let mut reasons = Vec::new();
    for t in 1..=7u64 {
        let c = if t % 2 == 1 {
            firing("member_unreachable", "m1", t)
        } else {
            resolved("member_unreachable", "m1", t)
        };
        let now = t as i64 * 2 * S + 100 * S;
        e.on_candidate(&c, now);
        reasons.extend(e.due(now).iter().map(|n| (n.reason, n.alerts[0].status)));
    }
    // Told about fire 1, resolve 2, fire 3, then flapping (4th transition) and silence.
    assert_eq!(
        reasons,
        [
            (Reason::New, AlertState::Firing),
            (Reason::New, AlertState::Resolved),
            (Reason::New, AlertState::Firing),
            (Reason::Flapping, AlertState::Resolved),
        ]
    );
    // Transition 7 (firing) at 114 s; stable 30 s later: the firing episode 7 is new.
    assert!(e.due(143 * S).is_empty());
    let ns = e.due(144 * S);
    assert_eq!(
        summary(&ns)[0].2,
        [("member_unreachable/m1".into(), AlertState::Firing)]
    );
    assert_eq!(ns[0].alerts[0].transition, 7);
}

#[test]
fn restore_after_restart_neither_resends_nor_forgets() {
    let mut before = engine(r#"receiver = "hook""#);
    let Applied::Transition(row_a) = before.on_candidate(&firing("no_leader", "", 3), 0) else {
        panic!("transition expected")
    };
    let Applied::Transition(row_b) = before.on_candidate(&firing("member_unreachable", "m1", 3), 0)
    else {
        panic!("transition expected")
    };
    let sent = before.due(0);
    assert_eq!(sent.len(), 2);
    // Only no_leader's notification was delivered before the crash.
    let told = vec![(
        "hook".to_string(),
        "no_leader/".to_string(),
        Told::Firing(3),
    )];

    let mut after = engine(r#"receiver = "hook""#);
    after.restore(
        &[row_a.clone(), row_b.clone()],
        &[row_a, row_b],
        told,
        10 * S,
    );
    let ns = after.due(10 * S);
    assert_eq!(
        summary(&ns),
        [(
            "hook".into(),
            Reason::New,
            vec![("member_unreachable/m1".into(), AlertState::Firing)]
        )],
        "the undelivered one is sent, the delivered one is not"
    );
    // A redelivery of the stored transition after the restart is not news.
    assert_eq!(
        after.on_candidate(&firing("no_leader", "", 3), 11 * S),
        Applied::Unchanged
    );
    assert!(after.due(11 * S).is_empty());
}

#[test]
fn the_oldest_firing_start_bounds_the_acks_worth_reading() {
    let mut e = engine(r#"receiver = "hook""#);
    assert_eq!(e.oldest_firing_since_ms(), None);
    let mut early = firing("no_leader", "", 1);
    early.active_since_ms = 5_000;
    let mut late = firing("member_unreachable", "m1", 1);
    late.active_since_ms = 9_000;
    e.on_candidate(&late, 9_000);
    e.on_candidate(&early, 9_000);
    assert_eq!(e.oldest_firing_since_ms(), Some(5_000));
    e.on_candidate(&resolved("no_leader", "", 2), 10_000);
    assert_eq!(
        e.oldest_firing_since_ms(),
        Some(9_000),
        "resolved ones do not count"
    );
}

/// An engine with the default inhibition timing (250 ms wait, 2 s linger).
fn timed_engine() -> Engine {
    Engine::new(
        route(r#"receiver = "hook""#),
        EngineConfig {
            inhibit_rules: default_rules(),
            inhibit_timing: InhibitTiming::default(),
            ..EngineConfig::default()
        },
    )
}

/// Every notification due at each of `times`, in order.
fn due_at(e: &mut Engine, times: &[i64]) -> Vec<Summary> {
    times.iter().flat_map(|t| summary(&e.due(*t))).collect()
}

#[test]
fn a_quorum_loss_is_one_page_and_one_resolution_whatever_the_order_of_arrival() {
    let mut e = timed_engine();
    let fp = |s: &str| s.to_string();
    // Two followers die: their pages reach the alerter a few ms before the cause.
    e.on_candidate(&firing("member_unreachable", "m2", 1), 0);
    let mut got = due_at(&mut e, &[0]);
    assert_eq!(
        e.next_wake_ms(),
        Some(250),
        "held for the wait, woken after it"
    );
    e.on_candidate(&firing("member_unreachable", "m3", 1), 3);
    e.on_candidate(&firing("quorum_at_risk", "", 1), 3);
    got.extend(due_at(&mut e, &[3]));
    e.on_candidate(&firing("quorum_lost", "", 1), 5);
    got.extend(due_at(&mut e, &[5, 250, 300, 5_000]));
    // Recovery: the cause resolves a few ms before the last symptom.
    e.on_candidate(&resolved("quorum_lost", "", 2), 10_000);
    e.on_candidate(&resolved("member_unreachable", "m2", 2), 10_000);
    e.on_candidate(&resolved("quorum_at_risk", "", 2), 10_000);
    got.extend(due_at(&mut e, &[10_000]));
    assert_eq!(e.next_wake_ms(), Some(12_000), "m3 lingers under the cause");
    e.on_candidate(&resolved("member_unreachable", "m3", 2), 10_005);
    got.extend(due_at(&mut e, &[10_005, 12_000, 20_000]));
    assert_eq!(
        got,
        [
            (
                fp("hook"),
                Reason::New,
                vec![(fp("quorum_lost/"), AlertState::Firing)]
            ),
            (
                fp("hook"),
                Reason::New,
                vec![(fp("quorum_lost/"), AlertState::Resolved)]
            ),
        ]
    );
}

#[test]
fn a_symptom_that_outlasts_the_linger_is_paged() {
    let mut e = timed_engine();
    e.on_candidate(&firing("quorum_lost", "", 1), 0);
    e.on_candidate(&firing("member_unreachable", "m3", 1), 0);
    assert_eq!(due_at(&mut e, &[0, 300]).len(), 1);
    e.on_candidate(&resolved("quorum_lost", "", 2), 10_000);
    assert_eq!(
        due_at(&mut e, &[10_000, 11_999]),
        [(
            "hook".to_string(),
            Reason::New,
            vec![("quorum_lost/".to_string(), AlertState::Resolved)]
        )]
    );
    // Quorum is back but m3 is still down two seconds later: that is news.
    assert_eq!(
        due_at(&mut e, &[12_000]),
        [(
            "hook".to_string(),
            Reason::New,
            vec![("member_unreachable/m3".to_string(), AlertState::Firing)]
        )]
    );
}

#[test]
fn a_lone_symptom_waits_only_the_wait_and_a_cause_not_at_all() {
    let mut e = timed_engine();
    e.on_candidate(&firing("member_unreachable", "m1", 1), 1_000);
    assert!(e.due(1_000).is_empty());
    assert!(e.due(1_249).is_empty());
    assert_eq!(e.next_wake_ms(), Some(1_250));
    assert_eq!(e.due(1_250).len(), 1);
    // quorum_lost is no rule's target: it goes out at once.
    e.on_candidate(&firing("quorum_lost", "", 1), 5_000);
    assert_eq!(e.due(5_000).len(), 1);
}
