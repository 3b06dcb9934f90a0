//! [`AlertStore`] (and the [`AuditLog`]) against both backends: every check below runs once on SQLite (a temp
//! file) and once on a real ClickHouse 18.16 (started per test), through
//! [`both_backends!`], so the two answer the same questions the same way.
//!
//! On ClickHouse the checks that write a key more than once stop background merges first,
//! so the copies sit in separate parts and the reads must deduplicate themselves; they
//! then force the merges (`OPTIMIZE ... FINAL`) and check that no answer moved, which
//! holds only if the reads pick the same copy the merge keeps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdmon_alert::AlertState;
use etcdmon_storage::clickhouse::{ClickHouseConfig, ClickHouseStorage};
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::{
    AlertAckRow, AlertDeliveryRow, AlertHistoryQuery, AlertStore, AlertTransitionRow, AuditLog,
    AuditQuery, AuditRow, MemberInfo, RegistrationRow, RegistryStore, Retention, SilenceRow,
    Storage, StorageError, TokenRow, TokenStore,
};
use etcdmon_testkit::ClickHouseServer;

/// 2024-01-01 00:00:00 UTC.
const T0: i64 = 1_704_067_200_000;
const DAY: i64 = 86_400_000;
const DB: &str = "etcdmon_alerts";
/// Non-ASCII, quotes and backslashes, which must come back byte for byte.
const AWKWARD: &str = "it's \"gone\" \\ ünïcödé 🚨\ttab";

/// A store under test and what the checks need to poke at it.
trait Backend: Sized {
    type Store: Storage + AlertStore + AuditLog + TokenStore + RegistryStore;
    /// A fresh, migrated store.
    async fn open(retention: Retention) -> Self;
    fn store(&self) -> &Self::Store;
    /// Keeps copies of a key in separate parts (ClickHouse), so reads must deduplicate.
    fn stop_merges(&self) {}
    /// Merges everything there is to merge (ClickHouse).
    fn merge_all(&self) {}
}

struct Sqlite {
    _dir: tempfile::TempDir,
    store: SqliteStorage,
}

impl Backend for Sqlite {
    type Store = SqliteStorage;

    async fn open(retention: Retention) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStorage::open(dir.path().join("alerts.sqlite"), retention).expect("open");
        store.migrate().await.expect("migrate");
        Sqlite { _dir: dir, store }
    }

    fn store(&self) -> &SqliteStorage {
        &self.store
    }
}

struct ClickHouse {
    server: ClickHouseServer,
    store: ClickHouseStorage,
}

impl Backend for ClickHouse {
    type Store = ClickHouseStorage;

    async fn open(retention: Retention) -> Self {
        let server = ClickHouseServer::start().expect("start clickhouse-server");
        let store = ClickHouseStorage::new(ClickHouseConfig {
            url: server.http_url(),
            database: DB.to_owned(),
            retention,
            insert_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            ..ClickHouseConfig::default()
        })
        .expect("valid config");
        store.migrate().await.expect("migrate");
        ClickHouse { server, store }
    }

    fn store(&self) -> &ClickHouseStorage {
        &self.store
    }

    fn stop_merges(&self) {
        self.server
            .query("SYSTEM STOP MERGES")
            .expect("stop merges");
    }

    fn merge_all(&self) {
        self.server
            .query("SYSTEM START MERGES")
            .expect("start merges");
        for table in [
            "alert_transitions",
            "alert_deliveries",
            "silences",
            "alert_acks",
            "api_tokens",
            "cluster_registrations",
            "member_info",
        ] {
            self.server
                .query(&format!("OPTIMIZE TABLE {DB}.{table} FINAL"))
                .expect("optimize");
        }
    }
}

/// Generates `sqlite::NAME` and `clickhouse::NAME` for every check `NAME`.
macro_rules! both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $check() {
                super::$check::<super::Sqlite>().await;
            })*
        }
        mod clickhouse {
            $(#[tokio::test]
            async fn $check() {
                super::$check::<super::ClickHouse>().await;
            })*
        }
    };
}

both_backends!(
    writes_are_idempotent_and_the_first_copy_counts,
    latest_transitions_pick_the_highest_and_apply_since_or_firing,
    history_filters_and_orders_newest_first,
    deliveries_round_trip_newest_first,
    silences_latest_version_wins,
    acks_keep_the_earliest,
    retention_removes_old_alert_rows_but_keeps_firing_state,
    the_audit_log_reads_newest_first_and_expires,
    tokens_are_listed_by_their_latest_version_and_revoked_once,
    registrations_are_replaced_deleted_and_made_again,
    member_descriptions_keep_the_latest_per_member,
);

async fn open<B: Backend>() -> B {
    B::open(Retention::default()).await
}

fn transition(
    fingerprint: &str,
    n: u64,
    state: AlertState,
    received_ms: i64,
) -> AlertTransitionRow {
    AlertTransitionRow {
        fingerprint: fingerprint.into(),
        transition: n,
        state,
        cluster: "c1".into(),
        rule: "member_down".into(),
        severity: "critical".into(),
        labels_json: format!(r#"{{"cluster":"c1","fp":"{fingerprint}"}}"#),
        annotations_json: r#"{"summary":"x"}"#.into(),
        value: n as f64,
        active_since_ms: received_ms - 1_000,
        received_ms,
    }
}

fn delivery(fingerprint: &str, receiver: &str, attempt_ms: i64, attempt: u32) -> AlertDeliveryRow {
    AlertDeliveryRow {
        receiver: receiver.into(),
        fingerprint: fingerprint.into(),
        transition: 1,
        state: "firing".into(),
        group_key: format!("{{}}:{{cluster=\"c1\"}} {AWKWARD}"),
        reason: "new".into(),
        attempt_ms,
        attempt,
        outcome: if attempt == 1 { "retry" } else { "ok" }.into(),
        detail: format!("HTTP 503: {AWKWARD}"),
    }
}

fn silence(id: &str, ends_ms: i64, updated_ms: i64, comment: &str) -> SilenceRow {
    SilenceRow {
        id: id.into(),
        matchers_json: format!(r#"[{{"name":"cluster","value":"{id} ünï","op":"="}}]"#),
        starts_ms: T0,
        ends_ms,
        created_by: "ops@example.com".into(),
        comment: comment.into(),
        updated_ms,
    }
}

fn ack(fingerprint: &str, n: u64, by: &str, ts_ms: i64) -> AlertAckRow {
    AlertAckRow {
        fingerprint: fingerprint.into(),
        transition: n,
        by: by.into(),
        comment: format!("on it: {AWKWARD}"),
        ts_ms,
    }
}

fn everything() -> AlertHistoryQuery {
    AlertHistoryQuery {
        from_ms: 0,
        to_ms: i64::MAX,
        cluster: None,
        fingerprint: None,
        limit: 1_000,
    }
}

fn keys(rows: &[AlertTransitionRow]) -> Vec<(String, u64)> {
    rows.iter()
        .map(|r| (r.fingerprint.clone(), r.transition))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Every answer the alert tables give, to compare before and after merges.
async fn snapshot(store: &impl AlertStore) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        store.latest_transitions(0).await.expect("latest"),
        store.alert_history(&everything()).await.expect("history"),
        store.deliveries(&everything()).await.expect("deliveries"),
        store.silences(0).await.expect("silences"),
        store.acks(0).await.expect("acks"),
    )
}

async fn writes_are_idempotent_and_the_first_copy_counts<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();

    let mut first = transition("fp-a", 1, AlertState::Firing, T0 + 1_000);
    // Valid JSON with escaped quotes and backslashes, non-ASCII and an escaped newline.
    first.labels_json = r#"{"cluster":"c1","summary":"it's \"gone\" \\ ünïcödé 🚨"}"#.into();
    first.annotations_json = r#"{"description":"‘quotes’ 'single' \"double\" 日本語\n"}"#.into();
    let second = transition("fp-a", 2, AlertState::Resolved, T0 + 2_000);
    s.record_transitions(&[first.clone(), second.clone()])
        .await
        .expect("record");
    // The same rows again (a retry), then a later copy of the first key with other
    // content (a redelivery received later): neither adds nor changes anything.
    s.record_transitions(&[first.clone(), second.clone()])
        .await
        .expect("record again");
    let mut later = first.clone();
    later.received_ms += 5_000;
    later.annotations_json = "{}".into();
    s.record_transitions(&[later]).await.expect("later copy");
    s.record_transitions(&[]).await.expect("nothing");

    let d1 = delivery("fp-a", "slack", T0 + 1_500, 1);
    let d2 = delivery("fp-a", "slack", T0 + 1_600, 2);
    s.record_deliveries(&[d1.clone(), d2.clone()])
        .await
        .expect("deliveries");
    s.record_deliveries(&[d2.clone(), d1.clone()])
        .await
        .expect("deliveries again");

    let sil = silence("s1", T0 + DAY, T0, AWKWARD);
    s.put_silence(&sil).await.expect("silence");
    s.put_silence(&sil).await.expect("silence again");

    let a = ack("fp-a", 1, "alice", T0 + 1_200);
    s.put_ack(&a).await.expect("ack");
    s.put_ack(&a).await.expect("ack again");

    for label in ["unmerged copies", "merged"] {
        assert_eq!(
            s.alert_history(&everything()).await.expect("history"),
            vec![second.clone(), first.clone()],
            "{label}"
        );
        assert_eq!(
            s.deliveries(&everything()).await.expect("deliveries"),
            vec![d2.clone(), d1.clone()],
            "{label}"
        );
        assert_eq!(
            s.silences(0).await.expect("silences"),
            vec![sil.clone()],
            "{label}"
        );
        assert_eq!(s.acks(0).await.expect("acks"), vec![a.clone()], "{label}");
        let before = snapshot(s).await;
        b.merge_all();
        assert_eq!(
            snapshot(s).await,
            before,
            "{label}: merging changed an answer"
        );
    }
}

async fn latest_transitions_pick_the_highest_and_apply_since_or_firing<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    // Written out of order and in separate inserts (separate parts on ClickHouse).
    s.record_transitions(&[transition("a", 3, AlertState::Firing, T0 + 300)])
        .await
        .expect("a3");
    s.record_transitions(&[
        transition("a", 1, AlertState::Firing, T0 + 100),
        transition("a", 2, AlertState::Resolved, T0 + 200),
        transition("b", 1, AlertState::Firing, T0 + 100),
        transition("b", 2, AlertState::Resolved, T0 + 150),
        transition("d", 1, AlertState::Firing, T0 + 10),
        transition("d", 2, AlertState::Resolved, T0 + 20),
    ])
    .await
    .expect("others");
    // Still firing since long ago, with no value.
    let mut c = transition("c", 1, AlertState::Firing, T0 + 50);
    c.value = f64::NAN;
    s.record_transitions(&[c]).await.expect("c1");
    s.record_transitions(&[transition("a", 3, AlertState::Firing, T0 + 999)])
        .await
        .expect("a3 again, later");

    let latest = |since: i64| async move { s.latest_transitions(since).await.expect("latest") };
    for label in ["unmerged", "merged"] {
        let all = latest(0).await;
        assert_eq!(
            keys(&all),
            [("a", 3), ("b", 2), ("c", 1), ("d", 2)].map(|(f, n)| (f.to_owned(), n)),
            "{label}"
        );
        assert_eq!(
            all[0],
            transition("a", 3, AlertState::Firing, T0 + 300),
            "{label}"
        );
        assert!(
            all[2].value.is_nan(),
            "{label}: NaN round trip: {:?}",
            all[2]
        );
        // d resolved before `since`: gone; c fires whatever its age.
        assert_eq!(
            keys(&latest(T0 + 100).await),
            [("a", 3), ("b", 2), ("c", 1)].map(|(f, n)| (f.to_owned(), n)),
            "{label}"
        );
        // Inclusive bound: b resolved exactly at T0 + 150.
        assert_eq!(keys(&latest(T0 + 150).await).len(), 3, "{label}");
        assert_eq!(
            keys(&latest(T0 + 151).await),
            [("a", 3), ("c", 1)].map(|(f, n)| (f.to_owned(), n)),
            "{label}"
        );
        assert_eq!(keys(&latest(i64::MAX).await).len(), 2, "{label}");
        b.merge_all();
    }
}

async fn history_filters_and_orders_newest_first<B: Backend>() {
    let b = open::<B>().await;
    let s = b.store();
    let mut rows = Vec::new();
    for (i, fp) in ["x", "y", "z"].iter().enumerate() {
        for n in 1..=4u64 {
            let mut t = transition(
                fp,
                n,
                if n % 2 == 1 {
                    AlertState::Firing
                } else {
                    AlertState::Resolved
                },
                0,
            );
            t.received_ms = T0 + (n as i64) * 1_000 + i as i64;
            t.cluster = if *fp == "z" { "c2" } else { "c1" }.into();
            rows.push(t);
        }
    }
    // Two transitions received at the same moment: the higher one comes first.
    let mut tie = transition("x", 5, AlertState::Firing, T0 + 4_000);
    tie.cluster = "c1".into();
    rows.push(tie);
    s.record_transitions(&rows).await.expect("record");

    let all = s.alert_history(&everything()).await.expect("all");
    assert_eq!(all.len(), 13);
    let order: Vec<(i64, u64)> = all.iter().map(|r| (r.received_ms, r.transition)).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "newest first, then the higher transition");
    assert_eq!(keys(&all[..2]), vec![("z".into(), 4), ("y".into(), 4)]);
    assert_eq!(
        (
            all[2].fingerprint.as_str(),
            all[2].transition,
            all[3].transition
        ),
        ("x", 5, 4)
    );

    let q = |f: &dyn Fn(&mut AlertHistoryQuery)| {
        let mut q = everything();
        f(&mut q);
        q
    };
    let cluster = s
        .alert_history(&q(&|q| q.cluster = Some("c2".into())))
        .await
        .expect("cluster");
    assert_eq!(cluster.len(), 4);
    assert!(cluster.iter().all(|r| r.fingerprint == "z"));

    let fp = s
        .alert_history(&q(&|q| q.fingerprint = Some("y".into())))
        .await
        .expect("fingerprint");
    assert_eq!(
        keys(&fp),
        (1..=4)
            .rev()
            .map(|n| ("y".to_owned(), n))
            .collect::<Vec<_>>()
    );

    // Inclusive bounds: y2 at T0+2001 and x3 at T0+3000, z3 at T0+3002 is after `to`.
    let range = s
        .alert_history(&q(&|q| {
            q.from_ms = T0 + 2_001;
            q.to_ms = T0 + 3_000;
        }))
        .await
        .expect("range");
    assert_eq!(
        keys(&range),
        vec![("x".into(), 3), ("z".into(), 2), ("y".into(), 2)]
    );

    let limited = s
        .alert_history(&q(&|q| {
            q.cluster = Some("c1".into());
            q.limit = 3;
        }))
        .await
        .expect("limit");
    assert_eq!(
        keys(&limited),
        vec![("y".into(), 4), ("x".into(), 5), ("x".into(), 4)]
    );
    assert!(s
        .alert_history(&q(&|q| q.limit = 0))
        .await
        .expect("limit 0")
        .is_empty());
    assert!(s
        .alert_history(&q(&|q| q.cluster = Some("nope".into())))
        .await
        .expect("unknown cluster")
        .is_empty());
    let bad = s
        .alert_history(&q(&|q| {
            q.from_ms = 10;
            q.to_ms = 5;
        }))
        .await
        .expect_err("to before from");
    assert!(matches!(bad, StorageError::InvalidQuery(_)), "{bad}");
}

async fn deliveries_round_trip_newest_first<B: Backend>() {
    let b = open::<B>().await;
    let s = b.store();
    let rows = vec![
        delivery("a", "slack", T0 + 1_000, 1),
        delivery("a", "slack", T0 + 5_000, 2),
        delivery("a", "email", T0 + 5_000, 1),
        delivery("b", "pagerduty", T0 + 3_000, 1),
        // Same attempt time, later attempt: comes first among equals.
        delivery("b", "pagerduty", T0 + 3_000, 2),
    ];
    s.record_deliveries(&rows).await.expect("record");

    let all = s.deliveries(&everything()).await.expect("all");
    assert_eq!(
        all,
        vec![
            rows[1].clone(),
            rows[2].clone(),
            rows[4].clone(),
            rows[3].clone(),
            rows[0].clone()
        ]
    );
    let mut q = everything();
    q.fingerprint = Some("a".into());
    // The cluster filter does not apply to deliveries.
    q.cluster = Some("elsewhere".into());
    q.from_ms = T0 + 1_001;
    q.to_ms = T0 + 5_000;
    assert_eq!(
        s.deliveries(&q).await.expect("filtered"),
        vec![rows[1].clone(), rows[2].clone()]
    );
    q.limit = 1;
    assert_eq!(
        s.deliveries(&q).await.expect("limited"),
        vec![rows[1].clone()]
    );
    q.from_ms = T0 + 6_000;
    assert!(matches!(
        s.deliveries(&q).await,
        Err(StorageError::InvalidQuery(_))
    ));
}

async fn silences_latest_version_wins<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    let now = T0 + 3_000;
    s.put_silence(&silence("s1", T0 + 10_000, T0 + 100, "first"))
        .await
        .expect("s1 v1");
    s.put_silence(&silence("s2", T0 + 5_000, T0 + 100, "planned"))
        .await
        .expect("s2");
    let s1 = silence("s1", T0 + 20_000, T0 + 200, "extended");
    s.put_silence(&s1).await.expect("s1 v2");
    // A stale version arriving late changes nothing.
    s.put_silence(&silence("s1", T0 + 1, T0 + 150, "stale"))
        .await
        .expect("s1 stale");
    // Expiring: the same silence again, ending now, with a newer version.
    let s2 = silence("s2", now, now, AWKWARD);
    s.put_silence(&s2).await.expect("expire s2");

    for label in ["unmerged", "merged"] {
        assert_eq!(
            s.silences(0).await.expect("all"),
            vec![s1.clone(), s2.clone()],
            "{label}"
        );
        assert_eq!(
            s.silences(now).await.expect("inclusive"),
            vec![s1.clone(), s2.clone()],
            "{label}"
        );
        // The expired silence's old end (T0 + 5000) no longer counts.
        assert_eq!(
            s.silences(now + 1).await.expect("active"),
            vec![s1.clone()],
            "{label}"
        );
        b.merge_all();
    }
}

async fn acks_keep_the_earliest<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    s.put_ack(&ack("a", 1, "bob", T0 + 200)).await.expect("bob");
    // An earlier acknowledgement arriving later wins; a later one never does.
    let alice = ack("a", 1, "alice", T0 + 100);
    s.put_ack(&alice).await.expect("alice");
    s.put_ack(&ack("a", 1, "carol", T0 + 300))
        .await
        .expect("carol");
    let other = ack("a", 2, "bob", T0 + 50);
    s.put_ack(&other).await.expect("a2");

    for label in ["unmerged", "merged"] {
        assert_eq!(
            s.acks(0).await.expect("all"),
            vec![alice.clone(), other.clone()],
            "{label}"
        );
        assert_eq!(
            s.acks(T0 + 100).await.expect("since"),
            vec![alice.clone()],
            "{label}"
        );
        // The acknowledgement counts from the earliest time, not from a later copy.
        assert!(s.acks(T0 + 101).await.expect("after").is_empty(), "{label}");
        b.merge_all();
    }
}

async fn retention_removes_old_alert_rows_but_keeps_firing_state<B: Backend>() {
    let b = B::open(Retention {
        alerts: Duration::from_secs(30 * 86_400),
        ..Retention::default()
    })
    .await;
    let s = b.store();
    let now = now_ms();
    let old = now - 100 * DAY;
    let recent = now - DAY;

    s.record_transitions(&[
        // x resolved long ago: all of it goes.
        transition("x", 1, AlertState::Firing, old),
        transition("x", 2, AlertState::Resolved, old + 1),
        // y resolved recently: only the old firing goes.
        transition("y", 1, AlertState::Firing, old),
        transition("y", 2, AlertState::Resolved, recent),
        // z still fires since long ago: the alerter needs it, and its acknowledgement.
        transition("z", 1, AlertState::Firing, old),
    ])
    .await
    .expect("transitions");
    s.put_ack(&ack("x", 1, "bob", old)).await.expect("old ack");
    let z_ack = ack("z", 1, "bob", old + 5);
    s.put_ack(&z_ack).await.expect("firing ack");
    let y_ack = ack("y", 2, "bob", recent);
    s.put_ack(&y_ack).await.expect("recent ack");
    let kept_delivery = delivery("y", "slack", recent, 1);
    s.record_deliveries(&[delivery("x", "slack", old, 1), kept_delivery.clone()])
        .await
        .expect("deliveries");
    let long = SilenceRow {
        starts_ms: old,
        ..silence("long", now + 365 * DAY, old, "a year")
    };
    let ended_recently = silence("recent", recent, recent, "ended yesterday");
    s.put_silence(&silence("ended", old, old, "ended long ago"))
        .await
        .expect("ended");
    // Planned for a year, expired long ago: its older version must not come back.
    s.put_silence(&silence("expired", now + 365 * DAY, old - 10, "planned"))
        .await
        .expect("expired v1");
    s.put_silence(&silence("expired", old, old, "expired"))
        .await
        .expect("expired v2");
    s.put_silence(&long).await.expect("long");
    s.put_silence(&ended_recently).await.expect("recent");

    for run in ["first run", "second run"] {
        let outcome = s.apply_retention(now).await.expect("retention");
        let removed: BTreeMap<String, u64> = outcome.removed.into_iter().collect();
        if run == "first run" {
            // SQLite counts rows; ClickHouse counts the rows of dropped partitions, which
            // also held the copies of z it kept elsewhere first.
            assert!(removed["alert_transitions"] >= 3, "{removed:?}");
            assert!(removed["alert_deliveries"] >= 1, "{removed:?}");
            assert!(removed["alert_acks"] >= 1, "{removed:?}");
            assert_eq!(removed["silences"], 2, "{removed:?}");
        } else {
            // Nothing more to remove, and nothing kept is lost.
            assert!(removed.values().all(|n| *n == 0), "{run}: {removed:?}");
        }

        assert_eq!(
            s.latest_transitions(0).await.expect("latest"),
            vec![
                transition("y", 2, AlertState::Resolved, recent),
                transition("z", 1, AlertState::Firing, old)
            ],
            "{run}"
        );
        assert_eq!(
            keys(&s.alert_history(&everything()).await.expect("history")),
            vec![("y".into(), 2), ("z".into(), 1)],
            "{run}"
        );
        assert_eq!(
            s.acks(0).await.expect("acks"),
            vec![y_ack.clone(), z_ack.clone()],
            "{run}"
        );
        assert_eq!(
            s.deliveries(&everything()).await.expect("deliveries"),
            vec![kept_delivery.clone()],
            "{run}"
        );
        // ClickHouse deletes silences with a mutation, applied in the background.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let silences = s.silences(0).await.expect("silences");
            if silences == vec![long.clone(), ended_recently.clone()] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{run}: silences left: {silences:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn audit_row(ts_ms: i64, actor: &str, status: u16) -> AuditRow {
    AuditRow {
        ts_ms,
        actor: actor.to_owned(),
        role: "operator".to_owned(),
        via: "token".to_owned(),
        method: "POST".to_owned(),
        path: "/api/v1/silences".to_owned(),
        remote: "127.0.0.1:4711".to_owned(),
        status,
        detail: AWKWARD.to_owned(),
    }
}

async fn the_audit_log_reads_newest_first_and_expires<B: Backend>() {
    let b = B::open(Retention {
        audit: Duration::from_secs(30 * 86_400),
        ..Retention::default()
    })
    .await;
    let s = b.store();
    let now = now_ms();
    let old = audit_row(now - 100 * DAY, "eve", 401);
    let rows = [
        old.clone(),
        audit_row(now - 2_000, "alice", 201),
        audit_row(now - 1_000, "bob", 204),
    ];
    for row in &rows {
        s.record_audit(row).await.expect("record");
    }
    let all = AuditQuery {
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 10,
    };
    let read = s.audit(&all).await.expect("read");
    assert_eq!(
        read,
        vec![rows[2].clone(), rows[1].clone(), old],
        "newest first, byte for byte"
    );
    let window = s
        .audit(&AuditQuery {
            from_ms: now - 2_000,
            to_ms: now - 1_000,
            limit: 10,
        })
        .await
        .expect("window");
    assert_eq!(window, vec![rows[1].clone()], "[from, to)");
    let limited = s
        .audit(&AuditQuery { limit: 1, ..all })
        .await
        .expect("limit");
    assert_eq!(limited, vec![rows[2].clone()]);

    let outcome = s.apply_retention(now).await.expect("retention");
    let removed: BTreeMap<String, u64> = outcome.removed.into_iter().collect();
    assert_eq!(removed["audit_log"], 1, "{removed:?}");
    assert_eq!(
        s.audit(&all).await.expect("read"),
        vec![rows[2].clone(), rows[1].clone()],
        "the expired row is gone"
    );
}

fn token(id: &str, name: &str, created_ms: i64) -> TokenRow {
    TokenRow {
        id: id.to_owned(),
        name: name.to_owned(),
        role: "viewer".to_owned(),
        sha256: format!("{:064x}", created_ms),
        created_ms,
        created_by: AWKWARD.to_owned(),
        expires_ms: created_ms + DAY,
        revoked_ms: 0,
        revoked_by: String::new(),
    }
}

async fn tokens_are_listed_by_their_latest_version_and_revoked_once<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    assert!(s.tokens().await.expect("none").is_empty());
    let (ci, grafana) = (token("tok_b", "ci", T0), token("tok_a", "grafana", T0 + 1));
    s.create_token(&ci).await.expect("create");
    s.create_token(&grafana).await.expect("create");
    assert_eq!(
        s.tokens().await.expect("list"),
        vec![ci.clone(), grafana.clone()],
        "oldest first, byte for byte"
    );

    // Revoked at a time before its creation (a clock behind): still revoked.
    assert!(s
        .revoke_token("tok_b", T0 - 5, "root")
        .await
        .expect("revoke"));
    assert!(s.revoke_token("tok_b", T0 + 9, "eve").await.expect("again"));
    assert!(!s.revoke_token("tok_zz", T0, "root").await.expect("unknown"));
    let revoked = TokenRow {
        revoked_ms: T0 - 5,
        revoked_by: "root".to_owned(),
        ..ci
    };
    let expected = vec![revoked, grafana];
    assert_eq!(
        s.tokens().await.expect("list"),
        expected,
        "the first revocation"
    );
    b.merge_all();
    assert_eq!(
        s.tokens().await.expect("merged"),
        expected,
        "merges keep it"
    );
}

fn registration(name: &str, region: &str, at: i64) -> RegistrationRow {
    RegistrationRow {
        name: name.to_owned(),
        region: region.to_owned(),
        owner: "team-storage".to_owned(),
        tags_json: r#"{"env":"prod"}"#.to_owned(),
        members_json: r#"["etcd-0","etcd-1"]"#.to_owned(),
        updated_ms: at,
        updated_by: "root".to_owned(),
    }
}

async fn registrations_are_replaced_deleted_and_made_again<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    assert!(s.registrations().await.expect("none").is_empty());
    s.put_registration(&registration("eu-1", "eu", T0))
        .await
        .expect("put");
    s.put_registration(&registration("us-1", "us", T0))
        .await
        .expect("put");
    let changed = registration("eu-1", AWKWARD, T0 + 1);
    s.put_registration(&changed).await.expect("replace");
    assert_eq!(
        s.registrations().await.expect("list"),
        vec![changed.clone(), registration("us-1", "us", T0)],
        "by name, the latest version, byte for byte"
    );

    assert!(s
        .delete_registration("us-1", T0 + 2, "root")
        .await
        .expect("delete"));
    assert!(!s
        .delete_registration("us-1", T0 + 3, "root")
        .await
        .expect("deleted already"));
    assert!(!s
        .delete_registration("nowhere", T0, "root")
        .await
        .expect("unknown"));
    assert_eq!(
        s.registrations().await.expect("list"),
        vec![changed.clone()]
    );

    // Registered again in the same millisecond as its deletion: it is back.
    s.put_registration(&registration("us-1", "us", T0 + 2))
        .await
        .expect("again");
    let names = |rows: Vec<RegistrationRow>| rows.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.registrations().await.expect("list")),
        ["eu-1", "us-1"]
    );
    b.merge_all();
    assert_eq!(
        names(s.registrations().await.expect("merged")),
        ["eu-1", "us-1"],
        "merges keep it"
    );
}

fn member(cluster: &str, member: &str, region: &str, at: i64) -> MemberInfo {
    MemberInfo {
        cluster: cluster.to_owned(),
        member: member.to_owned(),
        region: region.to_owned(),
        node: format!("node-{member}"),
        tags: r#"env="prod",team="storage""#.to_owned(),
        seen_ms: at,
    }
}

async fn member_descriptions_keep_the_latest_per_member<B: Backend>() {
    let b = open::<B>().await;
    b.stop_merges();
    let s = b.store();
    assert!(s.member_info(None).await.expect("none").is_empty());
    for row in [
        member("eu-1", "m0", "eu", T0),
        member("eu-1", "m1", "eu", T0),
        member("us-1", "m0", "us", T0),
    ] {
        s.record_member(&row).await.expect("record");
    }
    // Moved to another region, then an older description arrives late.
    let moved = member("eu-1", "m1", AWKWARD, T0 + 5);
    s.record_member(&moved).await.expect("record");
    s.record_member(&member("eu-1", "m1", "stale", T0 + 1))
        .await
        .expect("record");
    let expected = vec![member("eu-1", "m0", "eu", T0), moved];
    assert_eq!(s.member_info(Some("eu-1")).await.expect("one"), expected);
    let all = s.member_info(None).await.expect("all");
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2], member("us-1", "m0", "us", T0));
    b.merge_all();
    assert_eq!(
        s.member_info(Some("eu-1")).await.expect("merged"),
        expected,
        "a merge keeps the copy the read picked"
    );
}
