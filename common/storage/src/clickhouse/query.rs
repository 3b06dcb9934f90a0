//! SQL for reads: range queries (raw or stepped, from raw samples or a rollup) and
//! sample counts.
//!
//! Values are never formatted into the SQL text here. Each builder returns the text with
//! `?` placeholders and the arguments in order; [`super::ClickHouseStorage`] binds them
//! with the `clickhouse` crate's client-side binding, which quotes and escapes them (18.16
//! has no server-side query parameters). That keeps the SQL testable as plain strings.
//!
//! # Deduplication
//!
//! `samples` is a `ReplacingMergeTree`, so a resent row disappears only when its part is
//! merged with the original, at an unknown time. Every query here therefore deduplicates
//! on the natural key itself, with `GROUP BY cluster, member, labels, ts_ms` (the name
//! is fixed by the `WHERE`) rather than `FINAL`. Measured on 18.16 with 1 M distinct rows
//! (50 metrics, 3 members, 4 label sets), median of 9 runs:
//!
//! | FINAL / GROUP BY              | one series, 12 k rows | 5 metrics, 100 k | count all |
//! |-------------------------------|-----------------------|------------------|-----------|
//! | 8 copies of every row, 8 parts | 75 / 30 ms           | 350 / 300 ms     | 2.0 / 2.0 s |
//! | merged + 5 small fresh parts  | 27 / 16 ms            | 162 / 128 ms     | 291 / 191 ms |
//! | fully merged                  | 12 / 15 ms            | 55 / 89 ms       | 93 / 126 ms |
//!
//! Unmerged parts are the normal state of recent data, which is what dashboards and the
//! completeness checks ask for, and there GROUP BY wins by 1.2 to 2.5 times; it loses (up
//! to 1.6 times, tens of milliseconds) only on fully merged old data.
//!
//! # Stepped queries and rollups
//!
//! With a step, each series yields the last value (by time) of every step-aligned bucket
//! `[k*step, (k+1)*step)` that has points in `[from, to]`, the bucket's start being the
//! point's timestamp. The rollups hold the last sample (time and value) of every minute
//! or hour, and the last sample of a union of buckets is the latest of their last
//! samples, so a step that is a whole multiple of a rollup's bucket can be answered from
//! the rollup with the same `argMax(value, ts_ms)`: every step bucket is a union of
//! whole rollup buckets. Until the rollup's parts merge it holds more samples per bucket
//! than the last, which `argMax` does not mind. Only
//! the step buckets that lie entirely inside `[from, to]` come from the rollup; the
//! (at most two) buckets cut by the range edges come from raw samples, because the rollup
//! cannot tell which of a bucket's points lie before `from` or after `to`. The result is
//! then identical to computing it from raw samples, as long as raw samples exist; beyond
//! raw retention the interior still comes from the rollup and only the edge buckets are
//! missing. Steps that are not a multiple of a minute are answered from raw samples.
//!
//! The rollups know a series only by its id (`cityHash64` of cluster, member, name and
//! labels, computed by ClickHouse), so their part of a query finds its series through
//! `series`. A series the rollups hold but `series` does not is therefore missing from
//! the rollup buckets; writers store a series' metadata row with its first samples, and
//! the collector writes it again on every new agent stream and after a batch that
//! carried it was not stored.

use crate::{PointQuery, StorageError};

use super::retention::{date_literal, day_of_ms};

/// Milliseconds in a minute.
pub(super) const MINUTE_MS: i64 = 60_000;
/// Milliseconds in an hour.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    /// A string literal.
    Str(String),
    /// An integer literal.
    Int(i64),
}

/// SQL text with `?` placeholders and their values, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) args: Vec<Arg>,
}

impl Sql {
    /// Appends SQL text.
    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a `?` bound to a string.
    pub(super) fn str(&mut self, value: &str) -> &mut Self {
        self.text.push('?');
        self.args.push(Arg::Str(value.to_owned()));
        self
    }

    /// Appends a `?` bound to an integer.
    pub(super) fn int(&mut self, value: i64) -> &mut Self {
        self.text.push('?');
        self.args.push(Arg::Int(value));
        self
    }
}

/// Which table answers a stepped query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// `samples`.
    Raw,
    /// `rollup_1m`.
    Rollup1m,
    /// `rollup_1h`.
    Rollup1h,
}

impl Source {
    /// The coarsest rollup whose bucket divides `step_ms`, else raw.
    pub(super) fn for_step(step_ms: i64) -> Source {
        if step_ms >= HOUR_MS && step_ms % HOUR_MS == 0 {
            Source::Rollup1h
        } else if step_ms >= MINUTE_MS && step_ms % MINUTE_MS == 0 {
            Source::Rollup1m
        } else {
            Source::Raw
        }
    }

    fn table(self) -> &'static str {
        match self {
            Source::Raw => "samples",
            Source::Rollup1m => "rollup_1m",
            Source::Rollup1h => "rollup_1h",
        }
    }
}

/// The step buckets lying entirely inside `[from, to]`, as `[start, end)`; `None` when
/// there is none. Expects `0 <= from <= to` and `step > 0`.
pub(super) fn inner_buckets(from_ms: i64, to_ms: i64, step_ms: i64) -> Option<(i64, i64)> {
    let start = if from_ms % step_ms == 0 {
        from_ms
    } else {
        (from_ms / step_ms + 1).checked_mul(step_ms)?
    };
    let end = (to_ms.checked_add(1)? / step_ms).checked_mul(step_ms)?;
    (start < end).then_some((start, end))
}

/// The `WHERE` conditions every read of one metric from `samples` shares: series
/// selection, the day range (so ClickHouse skips whole partitions) and nothing else.
fn series_filter(sql: &mut Sql, clusters: &[&str], q: &PointQuery, from_ms: i64, to_ms: i64) {
    series_key_filter(sql, clusters, q);
    day_filter(sql, from_ms, to_ms);
}

/// The conditions on (cluster, name, member, labels) that select the series of a query
/// in `clusters`, in `samples` or in `series`.
fn series_key_filter(sql: &mut Sql, clusters: &[&str], q: &PointQuery) {
    match clusters {
        [one] => {
            sql.push("cluster = ").str(one);
        }
        many => {
            sql.push("cluster IN (");
            for (i, c) in many.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.str(c);
            }
            sql.push(")");
        }
    }
    sql.push(" AND name = ").str(&q.metric);
    if let Some(member) = &q.member {
        sql.push(" AND member = ").str(member);
    }
    if let Some(labels) = &q.labels {
        sql.push(" AND labels = ").str(labels);
    }
}

/// ` AND date >= toDate('from day') AND date <= toDate('to day')`, so ClickHouse skips
/// whole partitions.
pub(super) fn day_filter(sql: &mut Sql, from_ms: i64, to_ms: i64) {
    sql.push(" AND date >= toDate(")
        .str(&date_literal(day_of_ms(from_ms)))
        .push(") AND date <= toDate(")
        .str(&date_literal(day_of_ms(to_ms)))
        .push(")");
}

/// Checks a query and clamps its range to timestamps that can be stored (writes reject
/// negative ones). `None` when nothing can match.
fn checked_range(clusters: &[&str], q: &PointQuery) -> Result<Option<(i64, i64)>, StorageError> {
    crate::check_range(q.from_ms, q.to_ms)?;
    if q.step_ms < 0 {
        return Err(StorageError::InvalidQuery(format!(
            "step must not be negative, got {}",
            q.step_ms
        )));
    }
    if clusters.is_empty() || clusters.iter().any(|c| c.is_empty()) || q.metric.is_empty() {
        return Err(StorageError::InvalidQuery(
            "cluster and metric must not be empty".to_owned(),
        ));
    }
    if q.to_ms < 0 {
        return Ok(None);
    }
    Ok(Some((q.from_ms.max(0), q.to_ms)))
}

/// The SQL for [`crate::Storage::query`] of `q`'s metric in each of `clusters` (which
/// stand for `q.cluster`: one statement reads a fleet), returning rows
/// `(cluster, member, labels, ts, value)` ordered by series and time, at most `limit` of
/// them. `None` when nothing can match.
pub(super) fn points(
    clusters: &[&str],
    q: &PointQuery,
    limit: u64,
) -> Result<Option<Sql>, StorageError> {
    let Some((from, to)) = checked_range(clusters, q)? else {
        return Ok(None);
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut sql = Sql::default();
    if q.step_ms == 0 {
        sql.push(
            "SELECT cluster, member, labels, ts_ms, any(value) AS v \
             FROM samples WHERE ",
        );
        series_filter(&mut sql, clusters, q, from, to);
        sql.push(" AND ts_ms >= ")
            .int(from)
            .push(" AND ts_ms <= ")
            .int(to)
            .push(
                " GROUP BY cluster, member, labels, ts_ms \
                 ORDER BY cluster, member, labels, ts_ms LIMIT ",
            )
            .int(limit);
        return Ok(Some(sql));
    }

    let step = q.step_ms;
    let source = Source::for_step(step);
    let inner = match source {
        Source::Raw => None,
        _ => inner_buckets(from, to, step),
    };
    sql.push("SELECT cluster, member, labels, b, v FROM (");
    match inner {
        Some((inner_start, inner_end)) => {
            rollup_buckets(&mut sql, clusters, q, source, step, inner_start, inner_end);
            // Raw samples only for the edge buckets around the rollup's part, each
            // edge its own narrow scan: one scan with `ts_ms < a OR ts_ms >= b`
            // read every raw sample of the range (18.16 prunes neither partitions
            // nor the primary key on it), seconds for a week of a fleet.
            if from < inner_start {
                sql.push(" UNION ALL ");
                raw_buckets(&mut sql, clusters, q, step, from, inner_start - 1);
            }
            if inner_end <= to {
                sql.push(" UNION ALL ");
                raw_buckets(&mut sql, clusters, q, step, inner_end, to);
            }
        }
        None => raw_buckets(&mut sql, clusters, q, step, from, to),
    }
    sql.push(") ORDER BY cluster, member, labels, b LIMIT ")
        .int(limit);
    Ok(Some(sql))
}

/// `SELECT cluster, member, labels, b, v` of the step buckets of the raw samples
/// in `[from, to]`. Duplicates need no GROUP BY on the key here: a resent row has
/// the same time and value, so it cannot change argMax.
fn raw_buckets(sql: &mut Sql, clusters: &[&str], q: &PointQuery, step: i64, from: i64, to: i64) {
    sql.push("SELECT cluster, member, labels, toInt64(intDiv(ts_ms, ")
        .int(step)
        .push(") * ")
        .int(step)
        .push(") AS b, argMax(value, ts_ms) AS v FROM samples WHERE ");
    series_filter(sql, clusters, q, from, to);
    sql.push(" AND ts_ms >= ")
        .int(from)
        .push(" AND ts_ms <= ")
        .int(to)
        .push(" GROUP BY cluster, member, labels, b");
}

/// `SELECT cluster, member, labels, b, v` of the whole step buckets
/// `[inner_start, inner_end)` from a rollup. Rollups are keyed by series id alone, so the ids of the query's series
/// come from `series`, twice: as an `IN` set, which lets the rollup's primary key skip
/// every other series, and joined back to their member and labels.
///
/// The join is `ANY LEFT` with aliased subqueries because that means the same on 18.16
/// and on current servers: later releases made `ANY INNER` keep one row per key from
/// both sides (one bucket per series here; the old meaning is behind
/// `any_join_distinct_right_table_keys`), and refuse unaliased subqueries in a join by
/// default (`joined_subquery_requires_alias`). The `IN` set uses the same filter as the
/// right side, so every left row has its match.
fn rollup_buckets(
    sql: &mut Sql,
    clusters: &[&str],
    q: &PointQuery,
    source: Source,
    step: i64,
    inner_start: i64,
    inner_end: i64,
) {
    sql.push(
        "SELECT cluster, member, labels, b, v FROM (SELECT series_id, toInt64(intDiv(bucket_ms, ",
    )
    .int(step)
    .push(") * ")
    .int(step)
    .push(") AS b, argMax(value, ts_ms) AS v FROM ")
    .push(source.table())
    .push(" WHERE series_id IN (SELECT series_id FROM series WHERE ");
    series_key_filter(sql, clusters, q);
    sql.push(")");
    day_filter(sql, inner_start, inner_end - 1);
    sql.push(" AND bucket_ms >= ")
        .int(inner_start)
        .push(" AND bucket_ms < ")
        .int(inner_end)
        // `series` may hold a series more than once until its parts merge: DISTINCT.
        .push(
            " GROUP BY series_id, b) AS rollup ANY LEFT JOIN (\
             SELECT DISTINCT series_id, cluster, member, labels FROM series WHERE ",
        );
    series_key_filter(sql, clusters, q);
    sql.push(") AS ids USING series_id");
}

/// ` AND` the rows of `[from_ms, to_ms]`: their days (the partition key) and
/// their timestamps.
fn time_filter(sql: &mut Sql, from_ms: i64, to_ms: i64) {
    day_filter(sql, from_ms.max(0), to_ms.max(0));
    sql.push(" AND ts_ms >= ")
        .int(from_ms)
        .push(" AND ts_ms <= ")
        .int(to_ms);
}

/// The events of `cluster` in `[from_ms, to_ms]`, newest first, at most
/// `limit`. `DISTINCT`: a resent event is a second row until a merge.
pub(super) fn events(cluster: &str, from_ms: i64, to_ms: i64, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT DISTINCT cluster, member, ts_ms, kind, message FROM events WHERE cluster = ")
        .str(cluster);
    time_filter(&mut sql, from_ms, to_ms);
    sql.push(" ORDER BY ts_ms DESC, member, kind LIMIT ")
        .int(i64::try_from(limit).unwrap_or(i64::MAX));
    sql
}

/// The SQL for [`crate::Storage::count_samples`]: rows `(member, count)` of distinct
/// `(name, labels, ts_ms)` per member, ordered by member.
pub(super) fn count_samples(cluster: &str, from_ms: i64, to_ms: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT member, count() AS n FROM (\
         SELECT member, name, labels, ts_ms FROM samples WHERE cluster = ",
    )
    .str(cluster);
    time_filter(&mut sql, from_ms, to_ms);
    sql.push(
        " GROUP BY member, name, labels, ts_ms) \
             GROUP BY member ORDER BY member",
    );
    sql
}
