//! Unit tests of the parts that need no server: SQL building, calendar arithmetic, error
//! classification and config checks. The behaviour against a real server is tested in
//! `tests/clickhouse.rs`.

use std::time::Duration;

use super::alert_sql;
use super::query::{self, inner_buckets, Arg, Source, HOUR_MS, MINUTE_MS};
use super::retention::{
    civil_from_days, date_column, date_literal, days_from_civil, month_start, partition_end_day,
    partition_expired, Granularity, DAY_MS, MAX_DAY,
};
use super::*;

fn point_query(step_ms: i64, from_ms: i64, to_ms: i64) -> PointQuery {
    PointQuery {
        cluster: "prod".into(),
        metric: "etcd_up".into(),
        member: None,
        labels: None,
        from_ms,
        to_ms,
        step_ms,
    }
}

#[test]
fn civil_dates_round_trip() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(i64::from(u16::MAX)), (2149, 6, 6));
    for day in (-1000..80_000).step_by(17) {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
    }
    assert_eq!(date_literal(19_723), "2024-01-01");
    assert_eq!(date_literal(-5), "1970-01-01");
    assert_eq!(date_literal(1 << 40), "2105-12-31");
    assert_eq!(civil_from_days(MAX_DAY), (2105, 12, 31));
    assert_eq!(date_column(DAY_MS - 1), Some(0));
    assert_eq!(date_column(19_723 * DAY_MS + 5), Some(19_723));
    assert_eq!(date_column(-1), None);
    assert_eq!(date_column(MAX_DAY * DAY_MS + DAY_MS - 1), Some(49_672));
    assert_eq!(date_column((MAX_DAY + 1) * DAY_MS), None);
    assert_eq!(date_column(70_000 * DAY_MS), None);
}

#[test]
fn partition_ends_and_expiry() {
    let jan5 = days_from_civil(2024, 1, 5);
    assert_eq!(
        partition_end_day(Granularity::Day, "20240105"),
        Some(jan5 + 1)
    );
    assert_eq!(
        partition_end_day(Granularity::Day, "20240229"),
        Some(days_from_civil(2024, 3, 1))
    );
    assert_eq!(partition_end_day(Granularity::Day, "20230229"), None);
    assert_eq!(partition_end_day(Granularity::Day, "2024010"), None);
    assert_eq!(partition_end_day(Granularity::Day, "tuple()"), None);
    assert_eq!(
        partition_end_day(Granularity::Month, "202312"),
        Some(days_from_civil(2024, 1, 1))
    );
    assert_eq!(
        partition_end_day(Granularity::Month, "202402"),
        Some(days_from_civil(2024, 3, 1))
    );
    assert_eq!(partition_end_day(Granularity::Month, "202413"), None);

    let week = Duration::from_secs(7 * 86_400);
    // The partition of Jan 5 holds rows up to Jan 5 23:59:59.999; it expires once that is
    // more than a week ago, i.e. from Jan 13 00:00 on.
    let jan13 = days_from_civil(2024, 1, 13) * DAY_MS;
    assert_eq!(
        partition_expired(Granularity::Day, "20240105", jan13 - 1, week),
        Some(false)
    );
    assert_eq!(
        partition_expired(Granularity::Day, "20240105", jan13, week),
        Some(true)
    );
    assert_eq!(
        partition_expired(Granularity::Day, "junk", jan13, week),
        None
    );
}

#[test]
fn rows_before_the_horizons_month_are_exactly_the_expired_partitions() {
    assert_eq!(
        month_start(days_from_civil(2024, 3, 17)),
        days_from_civil(2024, 3, 1)
    );
    assert_eq!(
        month_start(days_from_civil(2024, 3, 1)),
        days_from_civil(2024, 3, 1)
    );
    assert_eq!(
        month_start(days_from_civil(2024, 2, 29)),
        days_from_civil(2024, 2, 1)
    );
    // With the horizon anywhere in March, February expires and March does not.
    let keep = Duration::from_secs(30 * 86_400);
    for horizon_day in [days_from_civil(2024, 3, 1), days_from_civil(2024, 3, 31)] {
        let now = horizon_day * DAY_MS + 30 * DAY_MS + 5;
        let cutoff = month_start(horizon_day);
        assert_eq!(cutoff, days_from_civil(2024, 3, 1));
        assert_eq!(
            partition_expired(Granularity::Month, "202402", now, keep),
            Some(true)
        );
        assert_eq!(
            partition_expired(Granularity::Month, "202403", now, keep),
            Some(false)
        );
    }
}

#[test]
fn alert_history_filters_the_copy_that_counts() {
    let q = crate::AlertHistoryQuery {
        from_ms: 5,
        to_ms: 9,
        cluster: Some("prod".into()),
        fingerprint: Some("fp".into()),
        limit: 3,
    };
    let sql = alert_sql::history_sql(&q);
    let grouped = sql.text.find("GROUP BY fingerprint, transition").unwrap();
    // The key column narrows the scan; received time and cluster may differ between
    // copies, so they filter the deduplicated row.
    assert!(
        sql.text.find("WHERE fingerprint = ?").unwrap() < grouped,
        "{}",
        sql.text
    );
    for outer in ["d_received_ms >= ?", "d_received_ms <= ?", "d_cluster = ?"] {
        assert!(
            sql.text.find(outer).unwrap() > grouped,
            "{outer}: {}",
            sql.text
        );
    }
    assert!(
        sql.text.contains("argMin(state, received_ms) AS d_state"),
        "{}",
        sql.text
    );
    assert_eq!(
        sql.args,
        vec![
            Arg::Str("fp".into()),
            Arg::Int(5),
            Arg::Int(9),
            Arg::Str("prod".into()),
            Arg::Int(3),
        ]
    );
    let delete = alert_sql::delete_silences_sql([("a", 1), ("b", 2)]);
    assert_eq!(
        delete.text,
        "ALTER TABLE silences DELETE WHERE (id = ? AND updated_ms <= ?) OR \
         (id = ? AND updated_ms <= ?)"
    );
}

#[test]
fn source_follows_the_step() {
    assert_eq!(Source::for_step(1_000), Source::Raw);
    assert_eq!(Source::for_step(59_999), Source::Raw);
    assert_eq!(Source::for_step(90_000), Source::Raw);
    assert_eq!(Source::for_step(MINUTE_MS), Source::Rollup1m);
    assert_eq!(Source::for_step(5 * MINUTE_MS), Source::Rollup1m);
    assert_eq!(Source::for_step(90 * MINUTE_MS), Source::Rollup1m);
    assert_eq!(Source::for_step(HOUR_MS), Source::Rollup1h);
    assert_eq!(Source::for_step(24 * HOUR_MS), Source::Rollup1h);
}

#[test]
fn inner_buckets_lie_inside_the_range() {
    // [0, 180000] with 1-minute steps: buckets 0 and 60000 are whole, 120000 is whole
    // too (it ends at 179999), 180000 is cut.
    assert_eq!(inner_buckets(0, 180_000, 60_000), Some((0, 180_000)));
    assert_eq!(inner_buckets(0, 179_999, 60_000), Some((0, 180_000)));
    assert_eq!(inner_buckets(1, 179_998, 60_000), Some((60_000, 120_000)));
    assert_eq!(inner_buckets(1, 119_998, 60_000), None);
    assert_eq!(inner_buckets(5, 10, 60_000), None);
    assert_eq!(inner_buckets(0, i64::MAX, 60_000), None);
}

#[test]
fn raw_query_deduplicates_with_group_by() {
    let mut q = point_query(0, 1_000, 2_000);
    q.member = Some("m1".into());
    let sql = query::points(&[q.cluster.as_str()], &q, 11)
        .unwrap()
        .unwrap();
    assert_eq!(
        sql.text,
        "SELECT cluster, member, labels, ts_ms, any(value) AS v FROM samples WHERE \
         cluster = ? AND name = ? AND member = ? AND date >= toDate(?) \
         AND date <= toDate(?) AND ts_ms >= ? AND ts_ms <= ? \
         GROUP BY cluster, member, labels, ts_ms \
         ORDER BY cluster, member, labels, ts_ms LIMIT ?"
    );
    assert_eq!(
        sql.args,
        vec![
            Arg::Str("prod".into()),
            Arg::Str("etcd_up".into()),
            Arg::Str("m1".into()),
            Arg::Str("1970-01-01".into()),
            Arg::Str("1970-01-01".into()),
            Arg::Int(1_000),
            Arg::Int(2_000),
            Arg::Int(11),
        ]
    );
}

#[test]
fn one_statement_reads_many_clusters() {
    let q = point_query(HOUR_MS, 0, 10 * HOUR_MS);
    let sql = query::points(&["a", "b"], &q, 5).unwrap().unwrap();
    // Every part of the statement (the rollup's series ids, their names, the
    // raw edge at 10 h) selects the clusters, and keeps them apart.
    assert_eq!(
        sql.text.matches("cluster IN (?, ?) AND name = ?").count(),
        3,
        "{}",
        sql.text
    );
    assert!(!sql.text.contains("cluster = ?"), "{}", sql.text);
    assert!(
        sql.text.contains("ORDER BY cluster, member, labels, b"),
        "{}",
        sql.text
    );
    assert!(
        sql.text.contains("GROUP BY cluster, member, labels, b"),
        "{}",
        sql.text
    );
    // No cluster, or an empty name, is a mistake, not a read of everything.
    assert!(matches!(
        query::points(&[], &q, 5),
        Err(StorageError::InvalidQuery(_))
    ));
    assert!(matches!(
        query::points(&["a", ""], &q, 5),
        Err(StorageError::InvalidQuery(_))
    ));
}

#[test]
fn stepped_queries_pick_tables_and_split_edges() {
    let raw = query::points(&["prod"], &point_query(1_000, 0, 10_000), 5)
        .unwrap()
        .unwrap();
    assert!(!raw.text.contains("rollup_"), "{}", raw.text);
    assert!(!raw.text.contains("UNION ALL"), "{}", raw.text);

    // 1-minute step over [30 s, 5 min 30 s]: minutes 1..5 from the rollup, the cut
    // minutes 0 and 5 from raw samples.
    let q = point_query(MINUTE_MS, 30_000, 330_000);
    let sql = query::points(&[q.cluster.as_str()], &q, 5)
        .unwrap()
        .unwrap();
    assert!(sql.text.contains("FROM rollup_1m WHERE"), "{}", sql.text);
    // The rollup knows series by id only: they come from `series`.
    assert!(
        sql.text
            .contains("series_id IN (SELECT series_id FROM series WHERE"),
        "{}",
        sql.text
    );
    assert_eq!(sql.text.matches("UNION ALL").count(), 2, "{}", sql.text);
    // Each cut edge is its own narrow scan, which ClickHouse prunes by partition
    // and primary key (an OR of the two did neither).
    assert!(!sql.text.contains(" OR "), "{}", sql.text);
    let ints: Vec<i64> = sql
        .args
        .iter()
        .filter_map(|a| match a {
            Arg::Int(i) => Some(*i),
            Arg::Str(_) => None,
        })
        .collect();
    assert_eq!(
        ints,
        vec![
            MINUTE_MS, MINUTE_MS, 60_000, 300_000, // rollup: step, step, inner range
            MINUTE_MS, MINUTE_MS, 30_000, 59_999, // raw: step, step, the first cut minute
            MINUTE_MS, MINUTE_MS, 300_000, 330_000, // raw: the last cut minute
            5,       // limit
        ]
    );

    let sql = query::points(&["prod"], &point_query(2 * HOUR_MS, 0, 10 * HOUR_MS), 5)
        .unwrap()
        .unwrap();
    assert!(sql.text.contains("FROM rollup_1h WHERE"), "{}", sql.text);

    // A range inside one bucket has no whole bucket: raw only.
    let sql = query::points(&["prod"], &point_query(HOUR_MS, 1_000, 2_000), 5)
        .unwrap()
        .unwrap();
    assert!(!sql.text.contains("rollup_1h"), "{}", sql.text);
}

#[test]
fn invalid_queries_are_refused_before_any_sql() {
    assert!(matches!(
        query::points(&["prod"], &point_query(0, 10, 5), 1),
        Err(StorageError::InvalidQuery(_))
    ));
    assert!(matches!(
        query::points(&["prod"], &point_query(-1, 0, 5), 1),
        Err(StorageError::InvalidQuery(_))
    ));
    let mut q = point_query(0, 0, 5);
    q.metric.clear();
    assert!(matches!(
        query::points(&[q.cluster.as_str()], &q, 1),
        Err(StorageError::InvalidQuery(_))
    ));
    // Nothing can be stored before the epoch.
    assert_eq!(
        query::points(&["prod"], &point_query(0, -10, -5), 1).unwrap(),
        None
    );
}

#[test]
fn errors_are_classified_for_retries() {
    use clickhouse::error::Error;
    let unavailable = |e: Error| classify("x", e).is_retryable();
    assert!(unavailable(Error::TimedOut));
    assert!(unavailable(Error::Network("connection refused".into())));
    assert!(unavailable(Error::BadResponse(
        "Code: 252, e.displayText() = DB::Exception: Too many parts".into()
    )));
    assert!(unavailable(Error::BadResponse(
        "503 Service Unavailable".into()
    )));
    assert!(!unavailable(Error::BadResponse(
        "Code: 62, e.displayText() = DB::Exception: Syntax error".into()
    )));
    assert!(!unavailable(Error::BadResponse("404 Not Found".into())));
    assert!(!unavailable(Error::NotEnoughData));
    assert!(matches!(
        classify("x", Error::BadResponse("Code: 60, unknown table".into())),
        StorageError::Rejected(m) if m.contains("x: ") && m.contains("Code: 60")
    ));
    assert_eq!(server_code("Code: 57, e.displayText() = ..."), Some(57));

    // A write is rejected only for what its rows caused; credentials, schema, disk and
    // proxies keep the batch for a retry.
    let write_kept = |e: Error| classify_write("x", e).is_retryable();
    for kept in [
        "Code: 516, e.displayText() = DB::Exception: default: Authentication failed",
        "Code: 193, e.displayText() = DB::Exception: Wrong password for user default",
        "Code: 497, e.displayText() = DB::Exception: Not enough privileges",
        "Code: 243, e.displayText() = DB::Exception: Cannot reserve 1.00 MiB, not enough space",
        "Code: 60, e.displayText() = DB::Exception: Table etcdmon.samples doesn't exist",
        "Code: 81, e.displayText() = DB::Exception: Database etcdmon doesn't exist",
        "Code: 62, e.displayText() = DB::Exception: Syntax error",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "503 Service Unavailable",
    ] {
        assert!(write_kept(Error::BadResponse(kept.into())), "{kept}");
    }
    for refused in [
        "Code: 27, e.displayText() = DB::Exception: Cannot parse input",
        "Code: 53, e.displayText() = DB::Exception: Type mismatch",
        "Code: 321, e.displayText() = DB::Exception: Value is out of range",
    ] {
        assert!(!write_kept(Error::BadResponse(refused.into())), "{refused}");
    }
    assert!(write_kept(Error::TimedOut));
    assert!(!write_kept(Error::Custom("cannot serialize".into())));
    assert_eq!(server_code("Code: 516. DB::Exception: ..."), Some(516));
    assert_eq!(server_code("no code"), None);
}

#[test]
fn config_is_validated_and_hides_the_password() {
    let config = ClickHouseConfig::default();
    config.validate().unwrap();
    assert_eq!(config.database, "etcdmon");

    let with = |f: &dyn Fn(&mut ClickHouseConfig)| {
        let mut c = ClickHouseConfig::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(with(&|c| c.url = "ftp://x:8443".into()).contains("url"));
    ClickHouseConfig {
        url: "https://x:8443".into(),
        ..ClickHouseConfig::default()
    }
    .validate()
    .expect("https is supported");
    assert!(with(&|c| c.ca_file = Some("/ca.pem".into())).contains("ca_file"));
    assert!(with(&|c| c.url = "http://".into()).contains("url"));
    assert!(with(&|c| c.database = "a-b".into()).contains("database"));
    assert!(with(&|c| c.database = "x`; DROP".into()).contains("database"));
    assert!(with(&|c| c.insert_timeout = Duration::ZERO).contains("insert_timeout"));
    assert!(with(&|c| c.max_points = 0).contains("max_points"));
    assert!(with(&|c| c.concurrent_inserts = 0).contains("concurrent_inserts"));
    assert!(with(&|c| c.concurrent_inserts = 9).contains("concurrent_inserts"));
    assert!(ClickHouseStorage::new(ClickHouseConfig {
        url: "ftp://x".into(),
        ..ClickHouseConfig::default()
    })
    .is_err());

    let secret = ClickHouseConfig {
        password: "hunter2".into(),
        ..ClickHouseConfig::default()
    };
    let shown = format!("{secret:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
}

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    use serde::de::value::{Error as DeError, MapDeserializer};
    use serde::Deserialize as _;

    let fields = [
        ("url", "http://ch:8123"),
        ("insert_timeout", "3s"),
        ("password", "p"),
    ];
    let config =
        ClickHouseConfig::deserialize(MapDeserializer::<_, DeError>::new(fields.into_iter()))
            .unwrap();
    assert_eq!(config.url, "http://ch:8123");
    assert_eq!(config.insert_timeout, Duration::from_secs(3));
    assert_eq!(config.query_timeout, Duration::from_secs(30));
    assert_eq!(config.database, "etcdmon");

    let unknown = [("insert_timout", "3s")];
    let err =
        ClickHouseConfig::deserialize(MapDeserializer::<_, DeError>::new(unknown.into_iter()))
            .unwrap_err()
            .to_string();
    assert!(err.contains("insert_timout"), "{err}");
}

#[test]
fn the_old_rollups_are_skipped_once_migration_5_has_run_or_runs_in_the_same_call() {
    use super::migrate::superseded;
    use super::schema::MIGRATIONS;
    use std::collections::BTreeSet;
    let by_version = |v: u32| MIGRATIONS.iter().find(|m| m.version == v).unwrap();
    let none = BTreeSet::new();
    // A fresh database migrated to the end: versions 2 and 3 are recorded only.
    assert!(superseded(by_version(2), u32::MAX, &none));
    assert!(superseded(by_version(3), u32::MAX, &none));
    assert!(!superseded(by_version(1), u32::MAX, &none));
    assert!(!superseded(by_version(4), u32::MAX, &none));
    // Stopping at version 4 (an upgrade test): they run.
    assert!(!superseded(by_version(2), 4, &none));
    // Version 5 recorded already: creating the old rollups now would leave
    // them behind for good.
    let five: BTreeSet<u32> = [5].into();
    assert!(superseded(by_version(2), 4, &five));
}
