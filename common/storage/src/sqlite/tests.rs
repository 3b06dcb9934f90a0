use super::*;
use crate::{BatchMark, EventRow, SeriesRow};
use std::collections::BTreeMap;

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

async fn store(dir: &tempfile::TempDir) -> SqliteStorage {
    let s = SqliteStorage::open(dir.path().join("db/etcdmon.sqlite"), Retention::default())
        .expect("open");
    s.migrate().await.expect("migrate");
    s
}

fn set(agent: &str, seq: u64, samples: Vec<SampleRow>) -> WriteSet {
    let n = samples.len() as u64;
    WriteSet {
        samples,
        marks: vec![BatchMark {
            agent_id: agent.into(),
            sequence: seq,
            samples: n,
            stored_ms: 1,
        }],
        ..Default::default()
    }
}

fn q(metric: &str, from_ms: i64, to_ms: i64, step_ms: i64) -> PointQuery {
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

#[tokio::test]
async fn migrate_is_idempotent_across_opens() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = store(&dir).await;
    a.migrate().await.expect("again");
    let b = store(&dir).await;
    b.migrate().await.expect("second process");
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.expect("concurrent a");
    rb.expect("concurrent b");
}

#[tokio::test]
async fn resending_a_batch_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let rows: Vec<SampleRow> = (0..100)
        .map(|i| sample("m1", "etcd_x", "", 1_000 + i * 1_000, i as f64))
        .collect();
    let w = set("agent-1", 7, rows);
    s.write(&w).await.expect("write");
    let before = s.query(&q("etcd_x", 0, 1_000_000, 0)).await.expect("query");
    let count_before = s.count_samples("c1", 0, 1_000_000).await.expect("count");
    s.write(&w).await.expect("resend");
    assert_eq!(
        s.query(&q("etcd_x", 0, 1_000_000, 0)).await.expect("query"),
        before
    );
    assert_eq!(
        s.count_samples("c1", 0, 1_000_000).await.expect("count"),
        count_before
    );
    assert_eq!(
        count_before,
        vec![SampleCount {
            member: "m1".into(),
            samples: 100
        }]
    );
    assert_eq!(s.stored_through("agent-1").await.expect("marks"), 7);
    assert_eq!(s.stored_through("agent-2").await.expect("marks"), 0);
}

#[tokio::test]
async fn raw_and_stepped_queries() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut rows = Vec::new();
    for i in 0..10 {
        rows.push(sample("m1", "g", "a=\"1\"", i * 500, i as f64));
        rows.push(sample("m2", "g", "a=\"1\"", i * 500, 100.0 + i as f64));
    }
    rows.push(sample("m1", "other", "", 0, 5.0));
    s.write(&set("a", 1, rows)).await.expect("write");

    let raw = s.query(&q("g", 0, 10_000, 0)).await.expect("raw");
    assert_eq!(raw.len(), 2);
    assert_eq!(raw[0].member, "m1");
    assert_eq!(raw[0].points.len(), 10);
    assert_eq!(raw[0].points[3], (1_500, 3.0));

    // 1 s buckets: last value of [0,1000) is the sample at 500 (1.0).
    let stepped = s.query(&q("g", 0, 10_000, 1_000)).await.expect("stepped");
    assert_eq!(stepped[0].points.len(), 5);
    assert_eq!(stepped[0].points[0], (0, 1.0));
    assert_eq!(stepped[0].points[4], (4_000, 9.0));
    assert_eq!(stepped[1].points[0], (0, 101.0));

    let mut one = q("g", 1_000, 2_000, 0);
    one.member = Some("m2".into());
    let r = s.query(&one).await.expect("member filter");
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].points,
        vec![(1_000, 102.0), (1_500, 103.0), (2_000, 104.0)]
    );

    let mut lab = q("g", 0, 10_000, 0);
    lab.labels = Some("a=\"2\"".into());
    assert!(s.query(&lab).await.expect("labels").is_empty());

    let err = s.query(&q("g", 10, 5, 0)).await.expect_err("bad range");
    assert!(matches!(err, StorageError::InvalidQuery(_)));
}

#[tokio::test]
async fn stepped_answers_are_the_last_point_of_each_bucket_and_batches_match() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    // Irregular times (every 7 s, then every 3 s), two clusters apart.
    let mut rows = Vec::new();
    for (cluster, offset) in [("c1", 0.0), ("c2", 1e6)] {
        let mut ts = 0;
        for i in 0..400 {
            ts += if i < 200 { 7_000 } else { 3_000 };
            for member in ["m1", "m2"] {
                let mut row = sample(member, "g", "", ts, offset + i as f64);
                row.cluster = cluster.into();
                rows.push(row);
            }
        }
    }
    s.write(&set("a", 1, rows)).await.expect("write");
    for (from, to) in [(0, 3_000_000), (12_345, 1_234_567), (61_000, 61_500)] {
        let raw = s.query(&q("g", from, to, 0)).await.expect("raw");
        for step in [1_000, 60_000, 7 * 60_000, 3_600_000] {
            let stepped = s.query(&q("g", from, to, step)).await.expect("stepped");
            let want: Vec<SeriesPoints> = raw
                .iter()
                .map(|series| {
                    let mut last: BTreeMap<i64, f64> = BTreeMap::new();
                    for &(ts, v) in &series.points {
                        last.insert(ts / step * step, v);
                    }
                    SeriesPoints {
                        points: last.into_iter().collect(),
                        ..series.clone()
                    }
                })
                .collect();
            assert_eq!(stepped, want, "[{from}, {to}] step {step}");
        }
    }
    // A batch answers as its queries one by one, in order.
    let mut other = q("g", 0, 3_000_000, 60_000);
    other.cluster = "c2".into();
    let batch = [
        other.clone(),
        q("g", 0, 3_000_000, 60_000),
        q("none", 0, 10, 0),
    ];
    let many = s.query_many(&batch).await.expect("batch");
    for (query, answer) in batch.iter().zip(&many) {
        assert_eq!(*answer, s.query(query).await.expect("one"));
    }
    assert_ne!(many[0], many[1]);
}

#[tokio::test]
async fn series_metadata_and_events() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let w = WriteSet {
        series: vec![SeriesRow {
            cluster: "c1".into(),
            member: "m1".into(),
            name: "etcd_server_has_leader".into(),
            labels: String::new(),
            metric_type: "gauge".into(),
            seen_ms: 10,
        }],
        samples: vec![sample("m1", "etcd_server_has_leader", "", 10, 1.0)],
        events: vec![EventRow {
            cluster: "c1".into(),
            member: "m1".into(),
            ts_ms: 10,
            kind: "member_down".into(),
            message: "refused".into(),
        }],
        marks: vec![],
    };
    s.write(&w).await.expect("write");
    s.write(&w).await.expect("again");
    let (t, events): (String, i64) = {
        let c = s.reader.lock().expect("lock");
        let t = c
            .query_row(
                "SELECT metric_type FROM series WHERE name = 'etcd_server_has_leader'",
                [],
                |r| r.get(0),
            )
            .expect("series");
        let n = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("events");
        (t, n)
    };
    assert_eq!(t, "gauge");
    assert_eq!(events, 1);
    let read = s.events("c1", 0, 100, 10).await.expect("events");
    assert_eq!(read, w.events, "written twice, read once");
    assert!(s
        .events("c1", 11, 100, 10)
        .await
        .expect("events")
        .is_empty());
    assert!(s
        .events("other", 0, 100, 10)
        .await
        .expect("events")
        .is_empty());
    assert!(s.events("c1", 100, 0, 10).await.is_err(), "to before from");
}

#[tokio::test]
async fn retention_deletes_old_rows_in_steps_and_keeps_recent_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let retention = Retention {
        samples: Duration::from_secs(3600),
        ..Retention::default()
    };
    let s = SqliteStorage::open(dir.path().join("r.sqlite"), retention).expect("open");
    s.migrate().await.expect("migrate");
    let now = 100 * 3_600_000;
    let old = now - 2 * 3_600_000;
    // More than one retention step of old rows in one series.
    let mut rows: Vec<SampleRow> = (0..(RETENTION_STEP as i64 + 10))
        .map(|i| sample("m1", "x", "", old + i, 1.0))
        .collect();
    rows.push(sample("m1", "x", "", now - 1_000, 2.0));
    s.write(&set("a", 1, rows)).await.expect("write");
    let out = s.apply_retention(now).await.expect("retention");
    assert_eq!(
        out.removed[0],
        ("samples".to_string(), RETENTION_STEP as u64 + 10)
    );
    let left = s.query(&q("x", 0, now, 0)).await.expect("query");
    assert_eq!(left[0].points, vec![(now - 1_000, 2.0)]);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let s = store(&dir).await;
        s.write(&set("a", 3, vec![sample("m1", "x", "", 5, 1.0)]))
            .await
            .expect("write");
    }
    let s = store(&dir).await;
    assert_eq!(s.stored_through("a").await.expect("marks"), 3);
    assert_eq!(
        s.query(&q("x", 0, 10, 0)).await.expect("q")[0].points,
        vec![(5, 1.0)]
    );
}

fn sqlite_failure(code: std::ffi::c_int) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
}

#[test]
fn only_errors_the_data_caused_reject_a_write() {
    use rusqlite::ffi;
    for kept in [
        ffi::SQLITE_READONLY,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_FULL,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_BUSY,
        ffi::SQLITE_PERM,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_ERROR, // e.g. no such table
    ] {
        assert!(
            super::rejected(sqlite_failure(kept)).is_retryable(),
            "code {kept}"
        );
    }
    for refused in [
        ffi::SQLITE_CONSTRAINT,
        ffi::SQLITE_MISMATCH,
        ffi::SQLITE_TOOBIG,
    ] {
        assert!(
            !super::rejected(sqlite_failure(refused)).is_retryable(),
            "code {refused}"
        );
    }
    assert!(!super::rejected(rusqlite::Error::InvalidParameterCount(1, 2)).is_retryable());
}

#[tokio::test]
async fn a_query_over_the_point_limit_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await.with_max_points(100);
    let samples = (0..300)
        .map(|i| sample("m1", "etcd_db", "", 1_020_000 + i * 10_000, i as f64))
        .collect();
    s.write(&WriteSet {
        samples,
        ..WriteSet::default()
    })
    .await
    .expect("write");
    let q = |step_ms| PointQuery {
        cluster: "c1".into(),
        metric: "etcd_db".into(),
        member: None,
        labels: None,
        from_ms: 0,
        to_ms: i64::MAX,
        step_ms,
    };
    let err = s.query(&q(0)).await.expect_err("300 points, 100 allowed");
    assert!(
        matches!(&err, StorageError::InvalidQuery(m) if m.contains("more than 100 points")),
        "{err}"
    );
    // A step that folds them under the limit answers.
    let stepped = s.query(&q(60_000)).await.expect("stepped");
    assert_eq!(stepped[0].points.len(), 50);
}

/// Every agent's Hello asks `stored_through`; it must not queue behind a slow API
/// query on the reader connection (one slow query would stop agents reconnecting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_through_does_not_wait_for_a_slow_query() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Arc::new(store(&dir).await);
    let slow_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = {
        let (s, done) = (s.clone(), slow_done.clone());
        tokio::spawn(async move {
            s.with_reader(|c| {
                // Seconds of work in SQLite itself, holding the reader.
                c.query_row(
                    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n \
                     WHERE x < 30000000) SELECT count(*) FROM n",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(super::rejected)
            })
            .await
            .expect("slow query");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(s.stored_through("agent").await.expect("answers"), 0);
    assert!(
        !slow_done.load(std::sync::atomic::Ordering::SeqCst),
        "stored_through waited for the slow query"
    );
    slow.await.expect("join");
}
