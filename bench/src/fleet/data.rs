//! The fleet's stored week: the series the fleet queries and the Grafana
//! panels read, for every member, at the agent's default metrics interval,
//! written straight into the collector's schema.
//!
//! On ClickHouse the rows are made by the server itself (`INSERT ... SELECT
//! FROM numbers(N)`, one day at a time), so the rollup views fill as they do
//! under ingest and the week is stored in minutes rather than hours of
//! HTTP. On SQLite they go through `Storage::write`, the collector's own
//! write path.
//!
//! Per member, every [`INTERVAL_MS`]: the 15 cumulative buckets of
//! `etcd_disk_wal_fsync_duration_seconds` (slower on some clusters, so
//! quantiles differ), `etcd_mvcc_db_total_size_in_bytes` (growing) and
//! `grpc_server_started_total` (a counter).

use etcdmon_storage::{MemberInfo, SampleRow, SeriesRow, Storage, WriteSet};
use etcdmon_testkit::ClickHouseServer;
use std::sync::Arc;
use std::time::Instant;

/// The agent's default metrics interval.
pub const INTERVAL_MS: i64 = 5_000;
/// Members per cluster.
pub const MEMBERS: usize = 3;
/// Upper bounds of etcd's WAL fsync histogram.
pub const LE: [&str; 15] = [
    "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
    "1.024", "2.048", "4.096", "8.192", "+Inf",
];
/// Share of fsyncs at or under each bound on a healthy disk; a slower cluster
/// shifts it by one or two buckets.
const CDF: [f64; 15] = [
    0.05, 0.30, 0.62, 0.86, 0.95, 0.985, 0.995, 0.998, 0.999, 0.9995, 1.0, 1.0, 1.0, 1.0, 1.0,
];
/// Regions, round-robin over the clusters.
pub const REGIONS: [&str; 5] = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"];
/// Series per member.
pub const SERIES: usize = LE.len() + 2;
const GRPC_LABELS: &str = r#"grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary""#;

/// Name of cluster `i`.
pub fn cluster_name(i: usize) -> String {
    format!("fleet-{:03}", i)
}

/// The shape of the stored fleet.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Clusters of [`MEMBERS`] members.
    pub clusters: usize,
    /// Days of data, ending now.
    pub days: i64,
    /// The newest point, ms since the epoch.
    pub end_ms: i64,
}

impl Fleet {
    /// Points per series.
    pub fn points(&self) -> i64 {
        self.days * 86_400_000 / INTERVAL_MS
    }

    /// Sample rows in all.
    pub fn rows(&self) -> i64 {
        self.points() * (self.clusters * MEMBERS * SERIES) as i64
    }

    fn start_ms(&self) -> i64 {
        self.end_ms - self.points() * INTERVAL_MS
    }

    /// Where each member runs.
    pub fn members(&self) -> Vec<MemberInfo> {
        (0..self.clusters)
            .flat_map(|c| {
                (0..MEMBERS).map(move |m| MemberInfo {
                    cluster: cluster_name(c),
                    member: format!("m{m}"),
                    region: REGIONS[c % REGIONS.len()].to_owned(),
                    node: format!("node-{c}-{m}"),
                    tags: format!(r#"team="t{}""#, c % 4),
                    seen_ms: self.end_ms,
                })
            })
            .collect()
    }
}

/// Stores the fleet into `db` on `server`, a few hours per statement (the
/// test kit's HTTP client waits a minute at most for an answer).
pub fn fill_clickhouse(server: &ClickHouseServer, db: &str, fleet: &Fleet) -> anyhow::Result<()> {
    let members = fleet.clusters * MEMBERS;
    let chunk = 4 * 3_600_000 / INTERVAL_MS;
    let le = LE.map(|l| format!("'{l}'")).join(",");
    let cdf = CDF.map(|c| c.to_string()).join(",");
    let started = Instant::now();
    let mut first = 0;
    while first < fleet.points() {
        let points = chunk.min(fleet.points() - first);
        let n = points * (members * SERIES) as i64;
        // n -> (member, series, point): the point varies fastest, so each
        // statement writes long sorted runs of one series.
        server.query(&format!(
            "INSERT INTO {db}.samples (date, cluster, member, name, labels, ts_ms, value)
             SELECT toDate(intDiv(ts, 1000)), cluster, member, name, labels, ts, value FROM (
               SELECT
                 {start} + i * {INTERVAL_MS} AS ts,
                 concat('fleet-', substring(toString(1000 + intDiv(m, {MEMBERS})), 2)) AS cluster,
                 concat('m', toString(m % {MEMBERS})) AS member,
                 intDiv(m, {MEMBERS}) % 3 AS slow,
                 multiIf(s < {nle}, 'etcd_disk_wal_fsync_duration_seconds_bucket',
                         s = {nle}, 'etcd_mvcc_db_total_size_in_bytes',
                         'grpc_server_started_total') AS name,
                 multiIf(s < {nle}, concat('le=\"', [{le}][s + 1], '\"'),
                         s = {nle}, '',
                         '{grpc}') AS labels,
                 multiIf(s < {nle}, floor(i * 20 * [{cdf}][greatest(1, toInt64(s) + 1 - slow)]),
                         s = {nle}, toFloat64(100000000 + i * 16 + intDiv(m, {MEMBERS}) * 1000000),
                         toFloat64(i * 40 + m)) AS value
               FROM (SELECT {first} + number % {points} AS i,
                            intDiv(number, {points}) % {SERIES} AS s,
                            intDiv(number, {points} * {SERIES}) AS m
                     FROM numbers({n}))
             )",
            start = fleet.start_ms(),
            nle = LE.len(),
            grpc = GRPC_LABELS.replace('"', "\\\""),
        ))?;
        first += points;
        eprintln!(
            "fleet-query: {:.0}% stored ({:.1?})",
            100.0 * first as f64 / fleet.points() as f64,
            started.elapsed()
        );
    }
    Ok(())
}

/// The series rows (metadata), for both backends.
pub fn series_rows(fleet: &Fleet) -> Vec<SeriesRow> {
    let mut out = Vec::new();
    for c in 0..fleet.clusters {
        for m in 0..MEMBERS {
            for (name, labels, ty) in series_of() {
                out.push(SeriesRow {
                    cluster: cluster_name(c),
                    member: format!("m{m}"),
                    name: name.to_owned(),
                    labels,
                    metric_type: ty.to_owned(),
                    seen_ms: fleet.end_ms,
                });
            }
        }
    }
    out
}

fn series_of() -> Vec<(&'static str, String, &'static str)> {
    let mut v: Vec<_> = LE
        .iter()
        .map(|le| {
            (
                "etcd_disk_wal_fsync_duration_seconds_bucket",
                format!("le=\"{le}\""),
                "histogram",
            )
        })
        .collect();
    v.push(("etcd_mvcc_db_total_size_in_bytes", String::new(), "gauge"));
    v.push((
        "grpc_server_started_total",
        GRPC_LABELS.to_owned(),
        "counter",
    ));
    v
}

/// Stores the fleet through `storage.write`, `rows_per_write` rows at a time,
/// with the same values as [`fill_clickhouse`].
pub async fn fill_through_writes(storage: &dyn Storage, fleet: &Fleet) -> anyhow::Result<()> {
    storage
        .write(&WriteSet {
            series: series_rows(fleet),
            ..WriteSet::default()
        })
        .await?;
    let series = series_of();
    let started = Instant::now();
    let mut set = WriteSet::default();
    for c in 0..fleet.clusters {
        let cluster: Arc<str> = cluster_name(c).into();
        let slow = c % 3;
        for m in 0..MEMBERS {
            let member: Arc<str> = format!("m{m}").into();
            let mi = (c * MEMBERS + m) as i64;
            for i in 0..fleet.points() {
                let ts_ms = fleet.start_ms() + i * INTERVAL_MS;
                for (s, (name, labels, _)) in series.iter().enumerate() {
                    let value = if s < LE.len() {
                        (i as f64 * 20.0 * CDF[(s + 1).saturating_sub(slow).max(1) - 1]).floor()
                    } else if s == LE.len() {
                        (100_000_000 + i * 16 + c as i64 * 1_000_000) as f64
                    } else {
                        (i * 40 + mi) as f64
                    };
                    set.samples.push(SampleRow {
                        cluster: cluster.clone(),
                        member: member.clone(),
                        name: (*name).to_owned(),
                        labels: labels.clone(),
                        ts_ms,
                        value,
                    });
                }
                if set.samples.len() >= 100_000 {
                    storage.write(&std::mem::take(&mut set)).await?;
                }
            }
        }
        eprintln!(
            "fleet-query: cluster {}/{} stored in {:.1?}",
            c + 1,
            fleet.clusters,
            started.elapsed()
        );
    }
    storage.write(&set).await?;
    Ok(())
}
