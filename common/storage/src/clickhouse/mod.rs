//! The production backend: ClickHouse over its HTTP interface, with the official
//! `clickhouse` crate.
//!
//! # Data flow
//!
//! ```text
//! write(set) ──INSERT──> samples ──rollup_1m_mv──> rollup_1m   (ReplacingMergeTree(ts_ms))
//!            │                  └─rollup_1h_mv──> rollup_1h   (ReplacingMergeTree(ts_ms))
//!            ├─INSERT──> series
//!            ├─INSERT──> events
//!            └─INSERT──> batch_marks   (last)
//!
//! query(step 0)            <── samples, deduplicated by GROUP BY on the natural key
//! query(step k*1m / k*1h)  <── rollup_1m / rollup_1h for whole buckets (series ids
//!                              resolved through series), samples for the edges
//! count_samples            <── samples, deduplicated
//! stored_through           <── max(sequence) of batch_marks
//! apply_retention          ──> ALTER TABLE ... DROP PARTITION (daily, monthly for 1h
//!                               and the alert tables)
//! ```
//!
//! The alert state and history ([`crate::AlertStore`]: `alert_transitions`,
//! `alert_deliveries`, `silences`, `alert_acks`) follow the same rules; `alert_store.rs`
//! describes their keys, deduplication and retention.
//!
//! `write` sends each non-empty kind of row as ONE `INSERT` (RowBinary, LZ4-compressed,
//! streamed), so a batch of thousands of samples is one part per day it touches rather
//! than thousands of tiny ones. The batch marks go last: a stored mark therefore always
//! means its rows are stored.
//!
//! # Resends and deduplication
//!
//! ClickHouse cannot write rows and marks atomically, and a write that timed out may still
//! have been stored. The collector then writes the same rows again. Every table's sort
//! key is the natural key of its rows (`samples`: cluster, name, member, labels, ts_ms)
//! and the engine is a `ReplacingMergeTree`, so the copies collapse when parts merge. That
//! happens at an unknown time, so every read also deduplicates on the key: raw queries
//! and counts with `GROUP BY` on it (measured faster than `FINAL` on 18.16 whenever
//! unmerged parts exist; see `query.rs`), stepped queries with `argMax`, which a duplicate
//! (same time, same value) cannot change. The test suite writes every set twice and
//! checks that no query or count moves.
//!
//! # Rollups
//!
//! Materialized views copy every sample INSERTed into `samples` into 1-minute and
//! 1-hour rollups, with the start of its bucket (`bucket_ms`, computed with integer
//! division so it is independent of the server's time zone). The rollups are
//! `ReplacingMergeTree(ts_ms)` sorted by (series_id, bucket_ms), so merging keeps the
//! last sample of every bucket: exactly what a stepped query returns (the last value of
//! each step bucket), and a resent sample is the same row and changes nothing. Readers
//! take `argMax(value, ts_ms)`, which gives the same answer before and after merges, so
//! a step that is a whole multiple of the bucket gives the same answer from a rollup as
//! from raw samples (see `query.rs` for the range edges). The rollups outlive raw
//! samples (30 days and one year by default against 7), which is what long-range
//! dashboards need.
//!
//! The rollups are keyed by `series_id`, a `MATERIALIZED cityHash64(cluster, member,
//! name, labels)` column of `samples` and `series`, and hold no strings. Migration 5
//! replaced the first rollups, which grouped every INSERT by the four strings into five
//! aggregate states (min, max, first, last, latest time): they cost ClickHouse about
//! four times the CPU of storing the samples, and only the last value was ever read
//! (docs/benchmarks.md). Readers find a metric's series ids in `series`.
//!
//! # Old and new servers
//!
//! The schema and every query must work on Debian's 18.16 and on current releases, so
//! there is no TTL, CODEC, DateTime64, Map, skip index, async insert, LowCardinality or
//! server-side parameter: values are bound on the client (`?` and `bind`), retention drops
//! partitions, strings are plain `String`. The client runs with `with_validation(false)`
//! (18.16 cannot produce `RowBinaryWithNamesAndTypes`), so the private row structs below
//! must list their fields in the order and with the types of the table's columns. LZ4
//! compression of INSERT bodies (`decompress=1`) works on 18.16. Timestamps must fall
//! between 1970-01-01 and 2105-12-31, where 18.16's calendar functions end (writes
//! outside are rejected; query ranges are clamped). `migrate` reads `SELECT
//! version()` and keeps it ([`ClickHouseStorage::server_version`]) so that a future
//! migration can use newer features only where the server has them.
//!
//! # Errors
//!
//! A write is [`StorageError::Rejected`] only when the rows themselves caused the error
//! (a value the server cannot parse or store: [`DATA_CODES`]); the collector then
//! acknowledges the batch with the reason and the agent drops it. Everything else is
//! [`StorageError::Unavailable`]: connection failures, timeouts (`insert_timeout`),
//! a busy server, and also a wrong password, a missing table or database, a full disk
//! or a proxy's 401/403/404. Those are not the batch's fault, so the batch is kept and
//! retried (the agent holds it meanwhile), and they show in `/healthz` and the write
//! failure metrics until someone fixes them. Reads keep the old split: the server
//! errors that mean "busy, try later" are unavailable, every other server error is a
//! rejection.

mod alert_sql;
mod alert_store;
mod audit;
mod config;
mod https;
mod members;
mod migrate;
mod query;
mod registry;
mod retention;
mod schema;
#[cfg(test)]
mod tests;
mod tokens;

pub use config::ClickHouseConfig;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clickhouse::{Client, Compression, RowWrite};

use crate::{
    PointQuery, Result, RetentionOutcome, SampleCount, SeriesPoints, Storage, StorageError,
    WriteSet,
};
use query::{Arg, Sql};
use retention::{date_column, partition_expired, Granularity, BATCH_MARKS_RETENTION};

/// ClickHouse error codes that mean "overloaded or interrupted, the same request may
/// succeed later"; any other server error is a rejection.
const TRANSIENT_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    164, // READONLY (a replica in read-only mode, e.g. during ZooKeeper loss)
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    236, // ABORTED
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    394, // QUERY_WAS_CANCELLED
];

/// ClickHouse error codes a write's rows cause: retrying the same rows fails the same
/// way, so only these reject a batch (see the module docs).
pub const DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF (a truncated row)
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
];

/// Tables with a retention, with their partition granularity.
const RETAINED_TABLES: &[(&str, Granularity)] = &[
    ("samples", Granularity::Day),
    ("rollup_1m", Granularity::Day),
    ("rollup_1h", Granularity::Month),
    ("events", Granularity::Day),
    ("batch_marks", Granularity::Day),
    ("alert_transitions", Granularity::Month),
    ("alert_deliveries", Granularity::Month),
    ("alert_acks", Granularity::Month),
    ("audit_log", Granularity::Month),
];

/// A row of `samples`, in column order (validation is off, RowBinary is positional).
#[derive(clickhouse::Row, serde::Serialize)]
struct SampleInsert<'a> {
    date: u16,
    cluster: &'a str,
    member: &'a str,
    name: &'a str,
    labels: &'a str,
    ts_ms: i64,
    value: f64,
}

/// A row of `series`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct SeriesInsert<'a> {
    cluster: &'a str,
    member: &'a str,
    name: &'a str,
    labels: &'a str,
    metric_type: &'a str,
    seen_ms: i64,
}

/// A row of `events`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct EventInsert<'a> {
    date: u16,
    cluster: &'a str,
    member: &'a str,
    ts_ms: i64,
    kind: &'a str,
    message: &'a str,
}

/// A row of `batch_marks`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct MarkInsert<'a> {
    date: u16,
    agent_id: &'a str,
    sequence: u64,
    samples: u64,
    stored_ms: i64,
}

/// A row of [`query::points`].
#[derive(clickhouse::Row, serde::Deserialize)]
struct PointRow {
    cluster: String,
    member: String,
    labels: String,
    ts_ms: i64,
    value: f64,
}

/// A row of [`query::events`].
#[derive(clickhouse::Row, serde::Deserialize)]
struct EventSelect {
    cluster: String,
    member: String,
    ts_ms: i64,
    kind: String,
    message: String,
}

/// A row of [`query::count_samples`].
#[derive(clickhouse::Row, serde::Deserialize)]
struct CountRow {
    member: String,
    samples: u64,
}

/// Active rows per partition, from `system.parts`.
#[derive(clickhouse::Row, serde::Deserialize)]
struct PartitionRow {
    table: String,
    partition: String,
    rows: u64,
}

/// Storage in a ClickHouse database (see the module docs for the schema and why).
///
/// Cheap to share: the HTTP client inside pools its connections; wrap the storage in an
/// `Arc` rather than creating one per task.
pub struct ClickHouseStorage {
    /// Requests in the configured database.
    client: Client,
    /// Requests without a database, for creating it.
    server: Client,
    config: ClickHouseConfig,
    /// `SELECT version()` as of the last `migrate`.
    server_version: Mutex<Option<String>>,
}

impl std::fmt::Debug for ClickHouseStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStorage")
            .field("config", &self.config)
            .field("server_version", &self.server_version())
            .finish_non_exhaustive()
    }
}

impl ClickHouseStorage {
    /// The points of `q`'s metric in each of `clusters`, in one statement, by cluster.
    async fn read_points(
        &self,
        clusters: &[&str],
        q: &PointQuery,
    ) -> Result<HashMap<String, Vec<SeriesPoints>>> {
        let max = self.config.max_points;
        // One row more than allowed tells "too many" from "exactly the limit".
        let Some(sql) = query::points(clusters, q, max as u64 + 1)? else {
            return Ok(HashMap::new());
        };
        let rows = self
            .timed(
                "query points",
                self.config.query_timeout,
                self.bound(&sql).fetch_all::<PointRow>(),
            )
            .await?;
        if rows.len() > max {
            return Err(crate::too_many_points(max));
        }
        // Rows come ordered by cluster, series and time.
        let mut out: HashMap<String, Vec<SeriesPoints>> = HashMap::new();
        for row in rows {
            let series = out.entry(row.cluster).or_default();
            match series.last_mut() {
                Some(last) if last.member == row.member && last.labels == row.labels => {
                    last.points.push((row.ts_ms, row.value));
                }
                _ => series.push(SeriesPoints {
                    member: row.member,
                    labels: row.labels,
                    points: vec![(row.ts_ms, row.value)],
                }),
            }
        }
        Ok(out)
    }

    /// A storage for `config` after [`ClickHouseConfig::validate`]. Does not connect:
    /// call [`Storage::migrate`] first, which also tells whether the server is reachable.
    pub fn new(config: ClickHouseConfig) -> Result<Self> {
        config.validate()?;
        let base = if config.url.starts_with("https://") {
            https::client(config.ca_file.as_deref())?
        } else {
            Client::default()
        };
        let mut server = base
            .with_url(config.url.trim_end_matches('/'))
            .with_user(&config.user)
            // Required for 18.16, which cannot send RowBinaryWithNamesAndTypes.
            .with_validation(false)
            .with_compression(if config.lz4 {
                Compression::Lz4
            } else {
                Compression::None
            });
        let password = config.resolved_password()?;
        if !password.is_empty() {
            server = server.with_password(password);
        }
        let client = server.clone().with_database(&config.database);
        Ok(Self {
            client,
            server,
            config,
            server_version: Mutex::new(None),
        })
    }

    /// The settings this storage was created with.
    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }

    /// The server's `SELECT version()`, e.g. `18.16.1`, as read by the last successful
    /// [`Storage::migrate`]; `None` before that.
    pub fn server_version(&self) -> Option<String> {
        self.server_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `fut`, giving up after `limit`; errors are classified for the caller.
    async fn timed<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = std::result::Result<T, clickhouse::error::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result.map_err(|e| classify(what, e)),
            Err(_) => Err(StorageError::Unavailable(format!(
                "{what}: no answer from ClickHouse within {limit:?}"
            ))),
        }
    }

    /// Sends one INSERT with all `rows` (nothing for an empty slice). `R` names the row
    /// type; `rows` may borrow with any lifetime.
    async fn insert_rows<R: RowWrite>(&self, table: &str, rows: &[R::Value<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let what = format!("INSERT INTO {table}");
        let mut insert = self
            .client
            .insert::<R>(table)
            .await
            .map_err(|e| classify_write(&what, e))?
            // The rollup views of `samples` then work the INSERT's block in
            // threads of their own, not one after the other in the INSERT's
            // thread: measured on 18.16 with 250,000-row INSERTs, 25% less
            // time per INSERT for 5% more CPU. Known to 18.16 and current
            // servers alike; tables without views ignore it.
            .with_setting("parallel_view_processing", "1");
        for row in rows {
            insert
                .write(row)
                .await
                .map_err(|e| classify_write(&what, e))?;
        }
        insert.end().await.map_err(|e| classify_write(&what, e))
    }

    async fn write_all(&self, set: &WriteSet) -> Result<()> {
        let samples = set
            .samples
            .iter()
            .map(|s| {
                Ok(SampleInsert {
                    date: date_of(s.ts_ms, "sample")?,
                    cluster: &s.cluster,
                    member: &s.member,
                    name: &s.name,
                    labels: &s.labels,
                    ts_ms: s.ts_ms,
                    value: s.value,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let series: Vec<_> = set
            .series
            .iter()
            .map(|s| SeriesInsert {
                cluster: &s.cluster,
                member: &s.member,
                name: &s.name,
                labels: &s.labels,
                metric_type: &s.metric_type,
                seen_ms: s.seen_ms,
            })
            .collect();
        let events = set
            .events
            .iter()
            .map(|e| {
                Ok(EventInsert {
                    date: date_of(e.ts_ms, "event")?,
                    cluster: &e.cluster,
                    member: &e.member,
                    ts_ms: e.ts_ms,
                    kind: &e.kind,
                    message: &e.message,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let marks = set
            .marks
            .iter()
            .map(|m| {
                Ok(MarkInsert {
                    date: date_of(m.stored_ms, "batch mark")?,
                    agent_id: &m.agent_id,
                    sequence: m.sequence,
                    samples: m.samples,
                    stored_ms: m.stored_ms,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        self.insert_rows::<SampleInsert<'static>>("samples", &samples)
            .await?;
        self.insert_rows::<SeriesInsert<'static>>("series", &series)
            .await?;
        self.insert_rows::<EventInsert<'static>>("events", &events)
            .await?;
        // Last, so that a stored mark always means the rows above are stored.
        self.insert_rows::<MarkInsert<'static>>("batch_marks", &marks)
            .await
    }

    /// The partitions of this database's tables that hold rows, ordered by table and
    /// partition.
    async fn active_partitions(&self) -> Result<Vec<PartitionRow>> {
        self.timed(
            "list partitions",
            self.config.query_timeout,
            self.server
                .query(
                    "SELECT table, partition, sum(rows) AS rows FROM system.parts \
                     WHERE database = ? AND active \
                     GROUP BY table, partition ORDER BY table, partition",
                )
                .bind(self.config.database.as_str())
                .fetch_all::<PartitionRow>(),
        )
        .await
    }

    /// A client query for `sql` with its arguments bound.
    fn bound(&self, sql: &Sql) -> clickhouse::query::Query {
        let mut query = self
            .client
            .query(&sql.text)
            // Also stop the server's work when the client gives up waiting.
            .with_setting(
                "max_execution_time",
                self.config.query_timeout.as_secs().max(1).to_string(),
            );
        for arg in &sql.args {
            query = match arg {
                Arg::Str(s) => query.bind(s.as_str()),
                Arg::Int(i) => query.bind(*i),
            };
        }
        query
    }
}

#[async_trait::async_trait]
impl Storage for ClickHouseStorage {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn migrate(&self) -> Result<()> {
        self.migrate_through(u32::MAX).await
    }

    async fn stored_through(&self, agent_id: &str) -> Result<u64> {
        // max() over no rows is 0 for a UInt64 column, which is what "none" means here.
        self.timed(
            "read batch marks",
            self.config.query_timeout,
            self.client
                .query("SELECT max(sequence) FROM batch_marks WHERE agent_id = ?")
                .bind(agent_id)
                .fetch_one::<u64>(),
        )
        .await
    }

    async fn write(&self, set: &WriteSet) -> Result<()> {
        if set.is_empty() {
            return Ok(());
        }
        let limit = self.config.insert_timeout;
        match tokio::time::timeout(limit, self.write_all(set)).await {
            Ok(result) => result,
            // The INSERT may or may not have been stored; the caller resends and reads
            // deduplicate, so both outcomes are fine.
            Err(_) => Err(StorageError::Unavailable(format!(
                "write: no answer from ClickHouse within {limit:?}"
            ))),
        }
    }

    fn concurrent_writes(&self) -> usize {
        self.config.concurrent_inserts
    }

    async fn query(&self, q: &PointQuery) -> Result<Vec<SeriesPoints>> {
        let mut read = self.read_points(&[q.cluster.as_str()], q).await?;
        Ok(read.remove(&q.cluster).unwrap_or_default())
    }

    async fn query_many(&self, queries: &[PointQuery]) -> Result<Vec<Vec<SeriesPoints>>> {
        let Some(first) = queries.first() else {
            return Ok(Vec::new());
        };
        // The same question of several clusters is one statement: a fleet of
        // them one query each took about a second for a week (`bench/fleet-query`).
        let same_but_cluster = |q: &PointQuery| {
            PointQuery {
                cluster: first.cluster.clone(),
                ..q.clone()
            } == *first
        };
        if !queries.iter().all(same_but_cluster) {
            return crate::query_each(self, queries).await;
        }
        let mut clusters: Vec<&str> = queries.iter().map(|q| q.cluster.as_str()).collect();
        clusters.sort_unstable();
        clusters.dedup();
        let mut read = self.read_points(&clusters, first).await?;
        // A cluster asked twice gets its series twice; only then is one copied.
        let mut answers = Vec::with_capacity(queries.len());
        for (i, q) in queries.iter().enumerate() {
            let again = queries[i + 1..]
                .iter()
                .any(|later| later.cluster == q.cluster);
            answers.push(if again {
                read.get(&q.cluster).cloned().unwrap_or_default()
            } else {
                read.remove(&q.cluster).unwrap_or_default()
            });
        }
        Ok(answers)
    }

    async fn count_samples(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SampleCount>> {
        crate::check_range(from_ms, to_ms)?;
        let sql = query::count_samples(cluster, from_ms, to_ms);
        let rows = self
            .timed(
                "count samples",
                self.config.query_timeout,
                self.bound(&sql).fetch_all::<CountRow>(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| SampleCount {
                member: row.member,
                samples: row.samples,
            })
            .collect())
    }

    async fn events(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::EventRow>> {
        crate::check_range(from_ms, to_ms)?;
        let sql = query::events(cluster, from_ms, to_ms, limit);
        let rows = self
            .timed(
                "read events",
                self.config.query_timeout,
                self.bound(&sql).fetch_all::<EventSelect>(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|e| crate::EventRow {
                cluster: e.cluster,
                member: e.member,
                ts_ms: e.ts_ms,
                kind: e.kind,
                message: e.message,
            })
            .collect())
    }

    async fn record_member(&self, info: &crate::MemberInfo) -> Result<()> {
        self.insert_member(info).await
    }

    async fn member_info(&self, cluster: Option<&str>) -> Result<Vec<crate::MemberInfo>> {
        self.read_members(cluster).await
    }

    async fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let partitions = self.active_partitions().await?;
        let retention = &self.config.retention;
        // Before any alert partition goes: copy out what a firing alert still needs.
        self.keep_firing_alerts(&partitions, now_ms).await?;
        let mut outcome = RetentionOutcome::default();
        for &(table, granularity) in RETAINED_TABLES {
            let keep = match table {
                "samples" => retention.samples,
                "rollup_1m" => retention.rollup_1m,
                "rollup_1h" => retention.rollup_1h,
                "events" => retention.events,
                "alert_transitions" | "alert_deliveries" | "alert_acks" => retention.alerts,
                "audit_log" => retention.audit,
                _ => BATCH_MARKS_RETENTION,
            };
            let mut removed = 0;
            for part in partitions.iter().filter(|p| p.table == table) {
                match partition_expired(granularity, &part.partition, now_ms, keep) {
                    Some(true) => {}
                    Some(false) => continue,
                    None => {
                        tracing::warn!(
                            table,
                            partition = %part.partition,
                            "skipping a partition this schema does not create"
                        );
                        continue;
                    }
                }
                // The id is all digits (checked by partition_expired), so it is a valid
                // literal of the partition expression, on 18.16 and later alike.
                let sql = format!(
                    "ALTER TABLE `{}`.`{table}` DROP PARTITION {}",
                    self.config.database, part.partition
                );
                self.timed(
                    "drop partition",
                    self.config.query_timeout,
                    self.server.query(&sql).execute(),
                )
                .await?;
                tracing::info!(
                    table,
                    partition = %part.partition,
                    rows = part.rows,
                    "dropped expired partition"
                );
                removed += part.rows;
            }
            outcome.removed.push((table.to_owned(), removed));
        }
        let alerts_ms = i64::try_from(retention.alerts.as_millis()).unwrap_or(i64::MAX);
        let silences = self
            .expire_silences(now_ms.saturating_sub(alerts_ms))
            .await?;
        outcome.removed.push(("silences".to_owned(), silences));
        Ok(outcome)
    }
}

/// The `date` column for a timestamp, or a rejection naming what was out of range.
fn date_of(ts_ms: i64, what: &str) -> Result<u16> {
    date_column(ts_ms).ok_or_else(|| {
        StorageError::Rejected(format!(
            "{what} timestamp {ts_ms} ms is outside the days this store can hold \
             (1970-01-01 to 2105-12-31, the range of ClickHouse 18.16's Date)"
        ))
    })
}

/// Maps a client error to the storage error the caller branches on.
fn classify(what: &str, error: clickhouse::error::Error) -> StorageError {
    use clickhouse::error::Error;
    let message = with_causes(what, &error);
    match &error {
        Error::Network(_) | Error::TimedOut | Error::Other(_) => StorageError::Unavailable(message),
        Error::BadResponse(reason) => match server_code(reason) {
            Some(code) if TRANSIENT_CODES.contains(&code) => StorageError::Unavailable(message),
            Some(_) => StorageError::Rejected(message),
            // No ClickHouse code: an HTTP status from something in between (a proxy's
            // 502/503/504) is worth retrying, anything else is not.
            None if reason.starts_with('5') => StorageError::Unavailable(message),
            None => StorageError::Rejected(message),
        },
        _ => StorageError::Rejected(message),
    }
}

/// Maps a write's client error to the storage error the writer branches on: only a
/// server error the rows caused ([`DATA_CODES`]) or rows the client cannot encode
/// reject the batch; anything about the server, the schema, the credentials or the
/// network keeps it for a retry (see the module docs).
fn classify_write(what: &str, error: clickhouse::error::Error) -> StorageError {
    use clickhouse::error::Error;
    let message = with_causes(what, &error);
    match &error {
        Error::BadResponse(reason) => match server_code(reason) {
            Some(code) if DATA_CODES.contains(&code) => StorageError::Rejected(message),
            _ => StorageError::Unavailable(message),
        },
        Error::Network(_) | Error::TimedOut | Error::Other(_) => StorageError::Unavailable(message),
        // Encoding a row failed on our side: the same rows fail again.
        _ => StorageError::Rejected(message),
    }
}

/// `what: error: cause: cause...`: the client's network errors say only
/// "client error (Connect)"; the reason (refused, a certificate the CA does not
/// sign, ...) is in their sources.
fn with_causes(what: &str, error: &clickhouse::error::Error) -> String {
    let mut message = format!("{what}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The `N` of `Code: N` in a ClickHouse error message.
fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
