//! The ClickHouse backend against a real server (Debian's clickhouse-server 18.16, started
//! by the test harness, one per test so tests can stop and freeze theirs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdmon_storage::clickhouse::{ClickHouseConfig, ClickHouseStorage};
use etcdmon_storage::{
    BatchMark, EventRow, PointQuery, Retention, SampleCount, SampleRow, SeriesPoints, SeriesRow,
    Storage, StorageError, WriteSet,
};
use etcdmon_testkit::ClickHouseServer;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01 00:00:00 UTC.
const T0: i64 = 1_704_067_200_000;
const DB: &str = "etcdmon_test";

fn config(server: &ClickHouseServer) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server.http_url(),
        database: DB.to_owned(),
        insert_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(10),
        ..ClickHouseConfig::default()
    }
}

/// A server and a migrated storage on it.
async fn setup() -> (ClickHouseServer, ClickHouseStorage) {
    let server = ClickHouseServer::start().expect("start clickhouse-server");
    let storage = ClickHouseStorage::new(config(&server)).expect("valid config");
    storage.migrate().await.expect("migrate");
    (server, storage)
}

fn sample(member: &str, name: &str, labels: &str, ts_ms: i64, value: f64) -> SampleRow {
    SampleRow {
        cluster: "c1".into(),
        member: member.into(),
        name: name.into(),
        labels: labels.into(),
        ts_ms,
        value,
    }
}

fn series_row(member: &str, name: &str, labels: &str, seen_ms: i64) -> SeriesRow {
    SeriesRow {
        cluster: "c1".into(),
        member: member.into(),
        name: name.into(),
        labels: labels.into(),
        metric_type: "gauge".into(),
        seen_ms,
    }
}

fn mark(agent: &str, sequence: u64, samples: u64, stored_ms: i64) -> BatchMark {
    BatchMark {
        agent_id: agent.into(),
        sequence,
        samples,
        stored_ms,
    }
}

fn query(metric: &str, from_ms: i64, to_ms: i64, step_ms: i64) -> PointQuery {
    PointQuery {
        cluster: "c1".into(),
        metric: metric.into(),
        member: None,
        labels: None,
        from_ms,
        to_ms,
        step_ms,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Three hours of `etcd_db_size` for member `a` (every 10 s, value = index) and member `b`
/// (every 15 s, value = 1000 + index, label `le="1"`), starting at T0.
fn three_hours() -> WriteSet {
    let mut samples = Vec::new();
    for i in 0..(3 * 360) {
        samples.push(sample(
            "a",
            "etcd_db_size",
            "",
            T0 + i * 10 * SECOND,
            i as f64,
        ));
    }
    for i in 0..(3 * 240) {
        samples.push(sample(
            "b",
            "etcd_db_size",
            "le=\"1\"",
            T0 + i * 15 * SECOND,
            1000.0 + i as f64,
        ));
    }
    WriteSet {
        samples,
        series: vec![
            series_row("a", "etcd_db_size", "", T0),
            series_row("b", "etcd_db_size", "le=\"1\"", T0),
        ],
        events: vec![EventRow {
            cluster: "c1".into(),
            member: "a".into(),
            ts_ms: T0 + 5 * SECOND,
            kind: "leader_changed".into(),
            message: "a became leader".into(),
        }],
        marks: vec![mark("agent-a", 1, 1080, T0), mark("agent-b", 7, 720, T0)],
    }
}

/// What a stepped query must return, computed here from raw points: the last point of
/// every step bucket, at the bucket's start.
fn last_per_bucket(raw: &[SeriesPoints], step: i64) -> Vec<SeriesPoints> {
    raw.iter()
        .map(|series| {
            let mut buckets: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
            for &(ts, value) in &series.points {
                let entry = buckets.entry(ts / step * step).or_insert((ts, value));
                if ts >= entry.0 {
                    *entry = (ts, value);
                }
            }
            SeriesPoints {
                member: series.member.clone(),
                labels: series.labels.clone(),
                points: buckets
                    .into_iter()
                    .map(|(bucket, (_, value))| (bucket, value))
                    .collect(),
            }
        })
        .collect()
}

/// Every observable answer for the data of [`three_hours`], to compare before and after
/// a resend.
async fn snapshot(storage: &ClickHouseStorage) -> Vec<String> {
    let mut out = Vec::new();
    for step in [0, SECOND, 7 * SECOND, MINUTE, 5 * MINUTE, HOUR, 2 * HOUR] {
        for (from, to) in [(T0, T0 + 3 * HOUR), (T0 + 37 * SECOND, T0 + 2 * HOUR + 7)] {
            let points = storage
                .query(&query("etcd_db_size", from, to, step))
                .await
                .expect("query");
            out.push(format!("{step} {from} {to}: {points:?}"));
        }
    }
    let counts = storage
        .count_samples("c1", T0, T0 + 3 * HOUR)
        .await
        .expect("count");
    out.push(format!("counts: {counts:?}"));
    let events = storage
        .events("c1", T0, T0 + 3 * HOUR, 10)
        .await
        .expect("events");
    assert_eq!(events.len(), 1, "one event, however often it was written");
    assert_eq!(events[0].kind, "leader_changed");
    assert!(storage
        .events("c1", T0 + 6 * SECOND, T0 + 3 * HOUR, 10)
        .await
        .expect("events")
        .is_empty());
    out.push(format!("events: {events:?}"));
    for agent in ["agent-a", "agent-b"] {
        let through = storage.stored_through(agent).await.expect("marks");
        out.push(format!("{agent}: {through}"));
    }
    out
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() {
    let (server, storage) = setup().await;
    assert!(
        storage
            .server_version()
            .is_some_and(|v| v.starts_with("18.16.")),
        "{:?}",
        storage.server_version()
    );
    storage.migrate().await.expect("second migrate");

    let tables = server
        .query(&format!(
            "SELECT name FROM system.tables WHERE database = '{DB}' ORDER BY name"
        ))
        .unwrap();
    assert_eq!(
        tables,
        "alert_acks\nalert_deliveries\nalert_transitions\napi_tokens\naudit_log\nbatch_marks\ncluster_registrations\nevents\nmember_info\nrollup_1h\n\
         rollup_1h_mv\nrollup_1m\nrollup_1m_mv\nsamples\nschema_migrations\nseries\n\
         silences\n"
    );
    let versions = server
        .query(&format!(
            "SELECT DISTINCT version FROM {DB}.schema_migrations ORDER BY version"
        ))
        .unwrap();
    assert_eq!(versions, "1\n2\n3\n4\n5\n6\n7\n8\n9\n");

    // Two "processes" (separate storages, separate connection pools) migrating a fresh
    // database at the same moment, twice over.
    for round in 0..2 {
        let config = ClickHouseConfig {
            database: "etcdmon_race".to_owned(),
            ..config(&server)
        };
        let first = ClickHouseStorage::new(config.clone()).unwrap();
        let second = ClickHouseStorage::new(config).unwrap();
        let (a, b) = tokio::join!(first.migrate(), second.migrate());
        a.unwrap_or_else(|e| panic!("round {round}, first: {e}"));
        b.unwrap_or_else(|e| panic!("round {round}, second: {e}"));
    }
    let count = server
        .query("SELECT count() FROM system.tables WHERE database = 'etcdmon_race'")
        .unwrap();
    assert_eq!(count, "17\n");
}

/// Migration 5 replaced the string-keyed rollups `samples_1m`/`samples_1h` by
/// `rollup_1m`/`rollup_1h`, keyed by series id. A database written at version 4 keeps
/// its rollups: two processes upgrading it at once copy them over, and the copies answer
/// once the raw samples are gone.
#[tokio::test]
async fn upgrading_to_series_id_rollups_keeps_the_old_rollups() {
    let server = ClickHouseServer::start().expect("start clickhouse-server");
    let old = ClickHouseStorage::new(config(&server)).unwrap();
    old.migrate_through(4).await.expect("migrate to version 4");
    // A day later too, so that the copy spans several partitions.
    let mut set = three_hours();
    let next_day = three_hours();
    set.samples
        .extend(next_day.samples.into_iter().map(|s| SampleRow {
            ts_ms: s.ts_ms + DAY,
            ..s
        }));
    old.write(&set).await.expect("write at version 4");
    let raw = old
        .query(&query("etcd_db_size", T0, T0 + DAY + 3 * HOUR, 0))
        .await
        .expect("raw query at version 4");
    assert_eq!(raw.len(), 2, "both members' raw points: {raw:?}");
    assert_eq!(raw[0].points.len(), 2 * 1080);
    let old_rollup_rows = server
        .query(&format!(
            "SELECT count() FROM {DB}.samples_1m WHERE cluster = 'c1'"
        ))
        .unwrap();
    assert_eq!(old_rollup_rows, format!("{}\n", 2 * 3 * 60 * 2));

    let first = ClickHouseStorage::new(config(&server)).unwrap();
    let second = ClickHouseStorage::new(config(&server)).unwrap();
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.expect("first upgrade");
    b.expect("second upgrade");
    let tables = server
        .query(&format!(
            "SELECT name FROM system.tables WHERE database = '{DB}' AND name LIKE '%_1_%' \
             ORDER BY name"
        ))
        .unwrap();
    assert_eq!(tables, "rollup_1h\nrollup_1h_mv\nrollup_1m\nrollup_1m_mv\n");

    // Only the rollups can answer now.
    for day in ["20240101", "20240102"] {
        server
            .query(&format!("ALTER TABLE {DB}.samples DROP PARTITION {day}"))
            .unwrap();
    }
    for step in [MINUTE, 5 * MINUTE, HOUR] {
        let stepped = first
            .query(&query("etcd_db_size", T0, T0 + DAY + 3 * HOUR - 1, step))
            .await
            .unwrap();
        assert_eq!(stepped, last_per_bucket(&raw, step), "step {step}");
    }

    // Written after the upgrade: the new views roll it up.
    let later = T0 + 2 * DAY;
    let set = WriteSet {
        samples: (0..6)
            .map(|i| sample("a", "etcd_db_size", "", later + i * 10 * SECOND, i as f64))
            .collect(),
        ..WriteSet::default()
    };
    first.write(&set).await.unwrap();
    server
        .query(&format!("ALTER TABLE {DB}.samples DROP PARTITION 20240103"))
        .unwrap();
    let mut only_a = query("etcd_db_size", later, later + MINUTE - 1, MINUTE);
    only_a.member = Some("a".into());
    let stepped = first.query(&only_a).await.unwrap();
    assert_eq!(stepped[0].points, vec![(later, 5.0)]);
}

#[tokio::test]
async fn write_then_query_raw_and_stepped() {
    let (_server, storage) = setup().await;
    storage.write(&three_hours()).await.expect("write");

    // Raw: inclusive bounds, ascending, one list per series, series ordered.
    let raw = storage
        .query(&query("etcd_db_size", T0 + 5 * SECOND, T0 + 60 * SECOND, 0))
        .await
        .unwrap();
    assert_eq!(
        raw,
        vec![
            SeriesPoints {
                member: "a".into(),
                labels: String::new(),
                points: (1..=6).map(|i| (T0 + i * 10 * SECOND, i as f64)).collect(),
            },
            SeriesPoints {
                member: "b".into(),
                labels: "le=\"1\"".into(),
                points: (1..=4)
                    .map(|i| (T0 + i * 15 * SECOND, 1000.0 + i as f64))
                    .collect(),
            },
        ]
    );

    // Member and label filters.
    let mut only_b = query("etcd_db_size", T0, T0 + 30 * SECOND, 0);
    only_b.member = Some("b".into());
    let points = storage.query(&only_b).await.unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(
        points[0].points,
        vec![
            (T0, 1000.0),
            (T0 + 15 * SECOND, 1001.0),
            (T0 + 30 * SECOND, 1002.0)
        ]
    );
    only_b.member = None;
    only_b.labels = Some("le=\"2\"".into());
    assert!(storage.query(&only_b).await.unwrap().is_empty());
    assert!(storage
        .query(&query("no_such_metric", T0, T0 + HOUR, 0))
        .await
        .unwrap()
        .is_empty());

    // 1 s step (raw table): every bucket holds one point, so it equals the raw answer.
    let stepped = storage
        .query(&query(
            "etcd_db_size",
            T0 + 5 * SECOND,
            T0 + 60 * SECOND,
            SECOND,
        ))
        .await
        .unwrap();
    assert_eq!(stepped, raw);

    // 1 min step (1-minute rollup): the last point of minute k of member a is at
    // k*60 + 50 s, index 6k + 5; of member b at k*60 + 45 s, index 4k + 3.
    let mut only_a = query("etcd_db_size", T0, T0 + 10 * MINUTE - 1, MINUTE);
    only_a.member = Some("a".into());
    let minutes = storage.query(&only_a).await.unwrap();
    assert_eq!(
        minutes[0].points,
        (0..10)
            .map(|k| (T0 + k * MINUTE, (6 * k + 5) as f64))
            .collect::<Vec<_>>()
    );
    only_a.member = Some("b".into());
    let minutes = storage.query(&only_a).await.unwrap();
    assert_eq!(
        minutes[0].points,
        (0..10)
            .map(|k| (T0 + k * MINUTE, 1000.0 + (4 * k + 3) as f64))
            .collect::<Vec<_>>()
    );

    // 1 h step (1-hour rollup): last point of hour h of member a at h*3600 + 3590 s.
    let hours = storage
        .query(&query("etcd_db_size", T0, T0 + 3 * HOUR, HOUR))
        .await
        .unwrap();
    assert_eq!(
        hours[0].points,
        (0..3)
            .map(|h| (T0 + h * HOUR, (360 * h + 359) as f64))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        hours[1].points.last(),
        Some(&(T0 + 2 * HOUR, 1000.0 + 719.0))
    );

    // The widest range a caller can pass, raw and stepped.
    let everything = storage
        .query(&query("etcd_db_size", i64::MIN, i64::MAX, 0))
        .await
        .unwrap();
    assert_eq!(everything[0].points.len(), 1080);
    assert_eq!(everything[1].points.len(), 720);
    let everything = storage
        .query(&query("etcd_db_size", i64::MIN, i64::MAX, HOUR))
        .await
        .unwrap();
    assert_eq!(everything, hours);

    // Whichever table answers, the result equals the one computed from raw points, also
    // with range edges that cut buckets in two.
    for (from, to) in [
        (T0, T0 + 3 * HOUR),
        (T0 + 37 * SECOND, T0 + 2 * HOUR + 13 * MINUTE + 7 * SECOND),
        (T0 + HOUR + 1, T0 + 2 * HOUR - 1),
        (T0 + 59 * SECOND, T0 + 61 * SECOND),
    ] {
        let raw = storage
            .query(&query("etcd_db_size", from, to, 0))
            .await
            .unwrap();
        for step in [7 * SECOND, MINUTE, 2 * MINUTE, 7 * MINUTE, HOUR, 2 * HOUR] {
            let stepped = storage
                .query(&query("etcd_db_size", from, to, step))
                .await
                .unwrap();
            assert_eq!(
                stepped,
                last_per_bucket(&raw, step),
                "range [{from}, {to}], step {step}"
            );
        }
    }
}

#[tokio::test]
async fn one_statement_answers_the_same_query_of_many_clusters() {
    let (_server, storage) = setup().await;
    // c1 as in `three_hours`, c2 the same shifted by a million, c3 nothing.
    let c1 = three_hours();
    let mut c2 = c1.clone();
    for s in &mut c2.samples {
        s.cluster = "c2".into();
        s.value += 1e6;
    }
    for s in &mut c2.series {
        s.cluster = "c2".into();
    }
    c2.events.clear();
    c2.marks.clear();
    storage.write(&c1).await.expect("write c1");
    storage.write(&c2).await.expect("write c2");

    let of = |cluster: &str, q: &PointQuery| PointQuery {
        cluster: cluster.into(),
        ..q.clone()
    };
    for step in [0, 7 * SECOND, MINUTE, HOUR] {
        let q = query("etcd_db_size", T0 + 37 * SECOND, T0 + 2 * HOUR + 7, step);
        let one_by_one = [
            storage.query(&of("c1", &q)).await.unwrap(),
            storage.query(&of("c2", &q)).await.unwrap(),
        ];
        assert_ne!(one_by_one[0], one_by_one[1], "step {step}");
        assert_eq!(one_by_one[1].len(), 2, "step {step}");
        // In the order asked, a cluster asked twice answered twice, an unknown
        // one empty.
        let batch = [of("c2", &q), of("c3", &q), of("c1", &q), of("c2", &q)];
        let many = storage.query_many(&batch).await.unwrap();
        assert_eq!(
            many,
            vec![
                one_by_one[1].clone(),
                Vec::new(),
                one_by_one[0].clone(),
                one_by_one[1].clone()
            ],
            "step {step}"
        );
    }
    // Different questions in one batch are answered one by one, in order.
    let a = query("etcd_db_size", T0, T0 + HOUR, MINUTE);
    let b = query("no_such_metric", T0, T0 + HOUR, MINUTE);
    let many = storage
        .query_many(&[of("c2", &a), b.clone()])
        .await
        .unwrap();
    assert_eq!(many[0], storage.query(&of("c2", &a)).await.unwrap());
    assert!(many[1].is_empty());
    assert!(storage.query_many(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn writing_the_same_set_again_changes_no_answer() {
    let (server, storage) = setup().await;
    // Keep the copies apart until the end, so the reads below must deduplicate
    // themselves (otherwise a quick background merge could do it for them).
    server.query("SYSTEM STOP MERGES").unwrap();
    let set = three_hours();
    storage.write(&set).await.expect("first write");
    let before = snapshot(&storage).await;

    // A resend (the collector crashed before acknowledging), twice.
    storage.write(&set).await.expect("second write");
    storage.write(&set).await.expect("third write");

    // The copies really are stored, so the reads below have duplicates to remove.
    let stored = server
        .query(&format!("SELECT count() FROM {DB}.samples"))
        .unwrap();
    assert_eq!(stored, format!("{}\n", 3 * set.samples.len()));
    assert_eq!(snapshot(&storage).await, before);

    // And once merges have collapsed the copies, nothing changes either.
    server.query("SYSTEM START MERGES").unwrap();
    for table in [
        "samples",
        "rollup_1m",
        "rollup_1h",
        "series",
        "events",
        "batch_marks",
    ] {
        server
            .query(&format!("OPTIMIZE TABLE {DB}.{table} FINAL"))
            .unwrap();
    }
    assert_eq!(
        server
            .query(&format!("SELECT count() FROM {DB}.samples"))
            .unwrap(),
        format!("{}\n", set.samples.len())
    );
    assert_eq!(snapshot(&storage).await, before);
}

#[tokio::test]
async fn stored_through_is_the_highest_mark_per_agent() {
    let (_server, storage) = setup().await;
    assert_eq!(storage.stored_through("agent-a").await.unwrap(), 0);

    let set = WriteSet {
        marks: vec![
            mark("agent-a", 1, 10, T0),
            mark("agent-a", 2, 10, T0),
            mark("agent-a", 3, 10, T0),
            mark("agent-b", 5, 10, T0),
        ],
        ..WriteSet::default()
    };
    storage.write(&set).await.unwrap();
    assert_eq!(storage.stored_through("agent-a").await.unwrap(), 3);
    assert_eq!(storage.stored_through("agent-b").await.unwrap(), 5);
    assert_eq!(storage.stored_through("agent-c").await.unwrap(), 0);

    storage
        .write(&WriteSet {
            marks: vec![mark("agent-a", 4, 1, T0 + DAY)],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    // A late resend of an older batch does not move it back.
    storage
        .write(&WriteSet {
            marks: vec![mark("agent-a", 2, 10, T0 + DAY)],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    assert_eq!(storage.stored_through("agent-a").await.unwrap(), 4);
    // An empty set is a no-op, not an error.
    storage.write(&WriteSet::default()).await.unwrap();
}

#[tokio::test]
async fn count_samples_counts_distinct_samples_per_member() {
    let (_server, storage) = setup().await;
    let mut samples = Vec::new();
    for i in 0..10 {
        samples.push(sample("a", "m1", "", T0 + i * SECOND, 1.0));
        samples.push(sample("a", "m2", "x=\"1\"", T0 + i * SECOND, 2.0));
    }
    for i in 0..5 {
        samples.push(sample("b", "m1", "", T0 + i * SECOND, 3.0));
        // The same key twice in one batch is one sample.
        samples.push(sample("b", "m1", "", T0 + i * SECOND, 3.0));
    }
    let mut other = sample("a", "m1", "", T0, 1.0);
    other.cluster = "c2".into();
    samples.push(other);
    storage
        .write(&WriteSet {
            samples,
            ..WriteSet::default()
        })
        .await
        .unwrap();

    let counts = storage.count_samples("c1", T0, T0 + HOUR).await.unwrap();
    assert_eq!(
        counts,
        vec![
            SampleCount {
                member: "a".into(),
                samples: 20
            },
            SampleCount {
                member: "b".into(),
                samples: 5
            },
        ]
    );
    // The widest range a caller can pass.
    let all = storage
        .count_samples("c1", i64::MIN, i64::MAX)
        .await
        .unwrap();
    assert_eq!(all, counts);
    // Inclusive bounds: [T0 + 2 s, T0 + 4 s] holds seconds 2, 3 and 4.
    let counts = storage
        .count_samples("c1", T0 + 2 * SECOND, T0 + 4 * SECOND)
        .await
        .unwrap();
    assert_eq!(counts[0].samples, 6);
    assert_eq!(counts[1].samples, 3);
    assert!(storage
        .count_samples("c3", T0, T0 + HOUR)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        storage.count_samples("c1", T0 + 1, T0).await,
        Err(StorageError::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn retention_drops_old_partitions_and_keeps_recent_ones() {
    let server = ClickHouseServer::start().unwrap();
    let retention = Retention {
        samples: Duration::from_secs(7 * 86_400),
        rollup_1m: Duration::from_secs(30 * 86_400),
        rollup_1h: Duration::from_secs(365 * 86_400),
        events: Duration::from_secs(7 * 86_400),
        ..Retention::default()
    };
    let storage = ClickHouseStorage::new(ClickHouseConfig {
        retention,
        ..config(&server)
    })
    .unwrap();
    storage.migrate().await.unwrap();

    let now = now_ms();
    // Whole minutes ten days and one day ago, 6 samples each (every 10 s).
    let old = (now - 10 * DAY) / MINUTE * MINUTE;
    let recent = (now - DAY) / MINUTE * MINUTE;
    let mut set = WriteSet {
        series: vec![series_row("a", "m", "", old)],
        ..WriteSet::default()
    };
    for start in [old, recent] {
        for i in 0..6 {
            set.samples
                .push(sample("a", "m", "", start + i * 10 * SECOND, i as f64));
        }
        set.events.push(EventRow {
            cluster: "c1".into(),
            member: "a".into(),
            ts_ms: start,
            kind: "member_down".into(),
            message: String::new(),
        });
        set.marks
            .push(mark("agent", (start / DAY) as u64, 6, start));
    }
    storage.write(&set).await.unwrap();

    let outcome = storage.apply_retention(now).await.unwrap();
    let removed: BTreeMap<String, u64> = outcome.removed.into_iter().collect();
    assert_eq!(removed["samples"], 6);
    assert_eq!(removed["events"], 1);
    assert_eq!(removed["batch_marks"], 1);
    assert_eq!(
        removed["rollup_1m"], 0,
        "30-day rollup keeps 10-day-old data"
    );
    assert_eq!(removed["rollup_1h"], 0);

    // Raw samples of ten days ago are gone, yesterday's are intact.
    let raw_old = storage
        .query(&query("m", old, old + MINUTE - 1, 0))
        .await
        .unwrap();
    assert!(raw_old.is_empty(), "{raw_old:?}");
    let raw_recent = storage
        .query(&query("m", recent, recent + MINUTE - 1, 0))
        .await
        .unwrap();
    assert_eq!(raw_recent[0].points.len(), 6);
    // The 1-minute rollup still answers for the dropped day: the last value of the minute.
    let rolled = storage
        .query(&query("m", old, old + MINUTE - 1, MINUTE))
        .await
        .unwrap();
    assert_eq!(rolled[0].points, vec![(old, 5.0)]);
    let events = server
        .query(&format!("SELECT count() FROM {DB}.events"))
        .unwrap();
    assert_eq!(events, "1\n");
    assert_eq!(
        storage.stored_through("agent").await.unwrap(),
        (recent / DAY) as u64
    );

    // Nothing left to drop.
    let again = storage.apply_retention(now).await.unwrap();
    assert!(again.removed.iter().all(|(_, n)| *n == 0), "{again:?}");
}

#[tokio::test]
async fn events_round_trip() {
    let (server, storage) = setup().await;
    let events = vec![
        EventRow {
            cluster: "c1".into(),
            member: "m0".into(),
            ts_ms: T0 + 1,
            kind: "member_down".into(),
            message: "no answer for 3s; it's \"gone\" \\ ünïcödé".into(),
        },
        EventRow {
            cluster: "c1".into(),
            member: String::new(),
            ts_ms: T0 + DAY + 2,
            kind: "leader_changed".into(),
            message: "m1 -> m2".into(),
        },
    ];
    let set = WriteSet {
        events: events.clone(),
        ..WriteSet::default()
    };
    storage.write(&set).await.unwrap();
    storage.write(&set).await.unwrap();

    let rows = server
        .query(&format!(
            "SELECT toString(date), cluster, member, ts_ms, kind, message \
             FROM {DB}.events FINAL ORDER BY ts_ms FORMAT JSONEachRow"
        ))
        .unwrap();
    assert_eq!(
        rows,
        "{\"toString(date)\":\"2024-01-01\",\"cluster\":\"c1\",\"member\":\"m0\",\
         \"ts_ms\":\"1704067200001\",\"kind\":\"member_down\",\
         \"message\":\"no answer for 3s; it's \\\"gone\\\" \\\\ ünïcödé\"}\n\
         {\"toString(date)\":\"2024-01-02\",\"cluster\":\"c1\",\"member\":\"\",\
         \"ts_ms\":\"1704153600002\",\"kind\":\"leader_changed\",\"message\":\"m1 -> m2\"}\n"
    );
}

#[tokio::test]
async fn unavailable_server_is_a_retryable_error_within_the_timeout() {
    let (mut server, storage) = setup().await;
    let set = three_hours();

    // Frozen (SIGSTOP): connects succeed, nothing answers; the insert timeout (2 s)
    // bounds the write.
    server.freeze().unwrap();
    let started = Instant::now();
    let err = storage.write(&set).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    server.thaw().unwrap();

    // Stopped: connections are refused at once.
    server.stop().unwrap();
    let started = Instant::now();
    let err = storage.write(&set).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    for err in [
        storage
            .query(&query("etcd_db_size", T0, T0 + HOUR, 0))
            .await
            .unwrap_err(),
        storage.stored_through("agent-a").await.unwrap_err(),
        storage.migrate().await.unwrap_err(),
        storage.apply_retention(now_ms()).await.unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    }

    // Back on the same port and data: the same storage works again, and the write that
    // may or may not have landed while frozen is deduplicated like any resend.
    server.start_again().unwrap();
    storage.write(&set).await.expect("write after restart");
    let counts = storage
        .count_samples("c1", T0, T0 + 3 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        counts.iter().map(|c| c.samples).collect::<Vec<_>>(),
        vec![1080, 720]
    );
    assert_eq!(storage.stored_through("agent-b").await.unwrap(), 7);
}

/// A write is rejected only for what its rows caused; what the server, the schema or
/// the credentials cause keeps the batch for a retry (it would otherwise be dropped by
/// its agent while an operator fixes a password or a database).
#[tokio::test]
async fn what_the_rows_cause_is_rejected_and_what_the_server_causes_is_kept() {
    let (server, storage) = setup().await;

    // A timestamp a Date column cannot hold: nothing of the set is written.
    let mut set = three_hours();
    set.samples.push(sample("a", "etcd_db_size", "", -5, 1.0));
    let err = storage.write(&set).await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected(_)), "{err}");
    assert_eq!(storage.stored_through("agent-a").await.unwrap(), 0);

    // The last day 18.16's calendar handles is stored and found again; the next is not.
    let last_ms = 49_673 * DAY - 1; // 2105-12-31 23:59:59.999
    for (ts, ok) in [(last_ms, true), (last_ms + 1, false)] {
        let result = storage
            .write(&WriteSet {
                samples: vec![sample("a", "late", "", ts, 1.0)],
                ..WriteSet::default()
            })
            .await;
        assert_eq!(result.is_ok(), ok, "{ts}: {result:?}");
    }
    let late = storage.query(&query("late", 0, i64::MAX, 0)).await.unwrap();
    assert_eq!(late[0].points, vec![(last_ms, 1.0)]);

    assert!(matches!(
        storage.query(&query("m", T0 + 1, T0, 0)).await,
        Err(StorageError::InvalidQuery(_))
    ));

    // A wrong password: a read is refused, a write is kept for a retry (the data is
    // fine; the password will be fixed).
    let wrong = ClickHouseStorage::new(ClickHouseConfig {
        password: "wrong".into(),
        ..config(&server)
    })
    .unwrap();
    let err = wrong.stored_through("x").await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected(_)), "{err}");
    let err = wrong.write(&three_hours()).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Unavailable(m) if m.contains("password")),
        "{err}"
    );

    // A database that was never migrated (or was dropped): kept too.
    let unmigrated = ClickHouseStorage::new(ClickHouseConfig {
        database: "nowhere".into(),
        ..config(&server)
    })
    .unwrap();
    let err = unmigrated.write(&three_hours()).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");

    // Too many points for one answer.
    storage.write(&three_hours()).await.unwrap();
    let capped = ClickHouseStorage::new(ClickHouseConfig {
        max_points: 100,
        ..config(&server)
    })
    .unwrap();
    let err = capped
        .query(&query("etcd_db_size", T0, T0 + 3 * HOUR, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidQuery(_)), "{err}");
    assert_eq!(
        capped
            .query(&query("etcd_db_size", T0, T0 + 3 * HOUR, HOUR))
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn uncompressed_inserts_work_too() {
    let (server, _) = setup().await;
    let plain = ClickHouseStorage::new(ClickHouseConfig {
        lz4: false,
        ..config(&server)
    })
    .unwrap();
    plain.write(&three_hours()).await.unwrap();
    let counts = plain.count_samples("c1", T0, T0 + 3 * HOUR).await.unwrap();
    assert_eq!(
        counts.iter().map(|c| c.samples).collect::<Vec<_>>(),
        vec![1080, 720]
    );
}

/// A password from a file (trailing newline and all) logs in; one given twice or
/// from a missing file is a configuration error naming the field.
#[tokio::test]
async fn the_password_can_come_from_a_file() {
    let (server, _) = setup().await;
    let (user, password) = etcdmon_testkit::clickhouse::PASSWORD_USER;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clickhouse-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let with_file = |password_file: Option<std::path::PathBuf>, inline: &str| ClickHouseConfig {
        user: user.to_owned(),
        password: inline.to_owned(),
        password_file,
        ..config(&server)
    };
    let storage = ClickHouseStorage::new(with_file(Some(file.clone()), "")).unwrap();
    storage
        .migrate()
        .await
        .expect("logged in with the password from the file");
    assert!(!format!("{:?}", storage.config()).contains(password));

    std::fs::write(&file, "not-the-password\n").unwrap();
    let wrong = ClickHouseStorage::new(with_file(Some(file.clone()), "")).unwrap();
    assert!(
        wrong.migrate().await.is_err(),
        "a wrong password from the file"
    );

    for (cfg, field) in [
        (
            with_file(Some(file.clone()), password),
            "storage.clickhouse.password_file",
        ),
        (
            with_file(Some(dir.path().join("missing")), ""),
            "storage.clickhouse.password_file",
        ),
    ] {
        match ClickHouseStorage::new(cfg) {
            Err(StorageError::InvalidConfig(m)) => assert!(m.contains(field), "{m}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        }
    }
}

/// `https://` (`clickhouses://` in `storage.url`): the server's certificate is
/// checked against `ca_file`; without it the system's roots do not know the test
/// CA and nothing is sent.
#[tokio::test]
async fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = etcdmon_testkit::generate_tls(&dir.path().join("tls"), 1).unwrap();
    let server = ClickHouseServer::start_with_tls(&tls).expect("clickhouse with https");
    let https = ClickHouseConfig {
        url: server.https_url().expect("https"),
        ca_file: Some(tls.ca_cert.clone()),
        ..config(&server)
    };
    assert!(https.url.starts_with("https://"));
    let storage = ClickHouseStorage::new(https.clone()).unwrap();
    storage.migrate().await.expect("migrate over https");
    storage
        .write(&three_hours())
        .await
        .expect("write over https");
    let points = storage
        .query(&query("etcd_db_size", T0, T0 + 3_600_000, 0))
        .await
        .unwrap();
    assert!(!points.is_empty(), "read back over https");

    let untrusted = ClickHouseStorage::new(ClickHouseConfig {
        ca_file: None,
        ..https.clone()
    })
    .unwrap();
    let err = untrusted.migrate().await.expect_err("an unknown CA");
    assert!(
        format!("{err}").to_lowercase().contains("certificate"),
        "{err}"
    );

    match ClickHouseStorage::new(ClickHouseConfig {
        ca_file: Some(dir.path().join("missing.pem")),
        ..https
    }) {
        Err(StorageError::InvalidConfig(m)) => assert!(m.contains("ca_file"), "{m}"),
        other => panic!("{other:?}"),
    }
}
