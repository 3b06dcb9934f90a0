//! The embedded backend: bundled SQLite in WAL mode, so `etcdmon up` needs
//! nothing installed.
//!
//! Same logical schema as ClickHouse, shaped for a B-tree store: `series`
//! holds each series once (with its metadata) and `samples` holds
//! `(series_id, ts_ms, value)` in a `WITHOUT ROWID` table keyed by
//! `(series_id, ts_ms)`. Every write is ONE transaction (rows and batch
//! marks together) with `INSERT OR IGNORE` on natural keys, so a resent
//! batch is stored exactly once and a crash mid-write stores nothing.
//!
//! Reads aggregate raw samples on the fly (no rollup tables: one machine's
//! worth of data is small enough); retention deletes in small steps, one
//! series at a time, so writers are never blocked for long.
//!
//! rusqlite is synchronous: calls run on tokio's blocking pool, with one
//! connection for writes and one for reads (WAL lets them run at once).
//!
//! Alert state and history ([`crate::AlertStore`]) live in four more tables of
//! the same file; see `alert_store.rs`.

mod alert_store;
mod audit;
mod members;
mod registry;
mod schema;
mod tokens;

use crate::{
    BatchMark, EventRow, PointQuery, Result, Retention, RetentionOutcome, SampleCount, SampleRow,
    SeriesPoints, Storage, StorageError, WriteSet,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most series ids kept in the writer's cache; beyond it the cache is
/// cleared (ids are then looked up again), keeping memory bounded.
const SERIES_CACHE_MAX: usize = 200_000;
/// Rows deleted per retention step.
const RETENTION_STEP: usize = 5_000;

/// SQLite storage in one database file.
#[derive(Clone)]
pub struct SqliteStorage {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    reader: Arc<Mutex<Connection>>,
    /// A connection of its own for `stored_through`, which every agent's Hello
    /// waits for: a slow API query on `reader` must not stop agents reconnecting.
    control: Arc<Mutex<Connection>>,
    retention: Retention,
    /// Most points one query may return ([`MAX_POINTS`] unless set).
    max_points: usize,
}

struct Writer {
    conn: Connection,
    cache: SeriesCache,
}

/// (cluster, member, name, labels) -> series id, bounded.
#[derive(Default)]
struct SeriesCache(HashMap<(String, String, String, String), i64>);

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StorageError::Unavailable(format!("open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(rejected)?;
    // WAL: readers never block the writer. synchronous=FULL: a write that
    // returned (and so a batch that was acknowledged) survives power loss.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(rejected)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(rejected)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(rejected)?;
    Ok(conn)
}

/// Most points one query may return by default, as ClickHouse's `max_points`: an
/// absurd range is a clear error, not a reply of millions of rows.
pub const MAX_POINTS: usize = 1_000_000;

/// Maps a SQLite error to the storage error callers branch on. Only what the data
/// itself caused (a constraint, a type, a value too big) is a rejection: a write
/// refused for that is dropped. Everything else about the database (busy, locked,
/// read-only, full, out of memory, I/O, permissions, a missing table) is not the
/// data's fault: the write is retried and the data kept until someone fixes it.
fn rejected(e: rusqlite::Error) -> StorageError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ConstraintViolation | TypeMismatch | TooBig) =>
        {
            StorageError::Rejected(e.to_string())
        }
        rusqlite::Error::SqliteFailure(..) => StorageError::Unavailable(e.to_string()),
        // Binding or reading a value failed on our side: the same data fails again.
        _ => StorageError::Rejected(e.to_string()),
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`. Call
    /// [`Storage::migrate`] before use.
    pub fn open(path: impl AsRef<Path>, retention: Retention) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Unavailable(format!("create {}: {e}", dir.display())))?;
        }
        let writer = open(&path)?;
        let reader = open(&path)?;
        let control = open(&path)?;
        Ok(Self {
            path,
            writer: Arc::new(Mutex::new(Writer {
                conn: writer,
                cache: SeriesCache::default(),
            })),
            reader: Arc::new(Mutex::new(reader)),
            control: Arc::new(Mutex::new(control)),
            retention,
            max_points: MAX_POINTS,
        })
    }

    /// The same store answering at most `max` points per query.
    pub fn with_max_points(mut self, max: usize) -> Self {
        self.max_points = max.max(1);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        })
        .await
        .map_err(|e| StorageError::Unavailable(format!("sqlite task failed: {e}")))?
    }

    async fn with_reader<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        Self::on(&self.reader, f).await
    }

    /// Runs `f` on the connection `conn` on the blocking pool.
    async fn on<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let r = conn.clone();
        tokio::task::spawn_blocking(move || {
            let g = r.lock().unwrap_or_else(|p| p.into_inner());
            f(&g)
        })
        .await
        .map_err(|e| StorageError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

impl SeriesCache {
    /// The id of a series, creating the row if needed.
    fn id(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        cluster: &str,
        member: &str,
        name: &str,
        labels: &str,
    ) -> Result<i64> {
        let key = (
            cluster.to_string(),
            member.to_string(),
            name.to_string(),
            labels.to_string(),
        );
        if let Some(id) = self.0.get(&key) {
            return Ok(*id);
        }
        tx.prepare_cached(
            "INSERT OR IGNORE INTO series (cluster, member, name, labels, metric_type, seen_ms)
             VALUES (?1, ?2, ?3, ?4, '', 0)",
        )
        .and_then(|mut s| s.execute(params![cluster, member, name, labels]))
        .map_err(rejected)?;
        let id: i64 = tx
            .prepare_cached(
                "SELECT id FROM series WHERE cluster = ?1 AND name = ?2 AND member = ?3 AND labels = ?4",
            )
            .and_then(|mut s| s.query_row(params![cluster, name, member, labels], |r| r.get(0)))
            .map_err(rejected)?;
        if self.0.len() >= SERIES_CACHE_MAX {
            self.0.clear();
        }
        self.0.insert(key, id);
        Ok(id)
    }
}

impl Writer {
    fn write(&mut self, set: &WriteSet) -> Result<()> {
        let result = self.write_tx(set);
        if result.is_err() {
            // Ids of series created in the rolled-back transaction are void.
            self.cache.0.clear();
        }
        result
    }

    fn write_tx(&mut self, set: &WriteSet) -> Result<()> {
        let tx = self.conn.transaction().map_err(rejected)?;
        for s in &set.series {
            let id = self
                .cache
                .id(&tx, &s.cluster, &s.member, &s.name, &s.labels)?;
            tx.prepare_cached(
                "UPDATE series SET metric_type = ?2, seen_ms = max(seen_ms, ?3) WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, s.metric_type, s.seen_ms]))
            .map_err(rejected)?;
        }
        for s in &set.samples {
            let id = self
                .cache
                .id(&tx, &s.cluster, &s.member, &s.name, &s.labels)?;
            insert_sample(&tx, id, s)?;
        }
        for e in &set.events {
            insert_event(&tx, e)?;
        }
        for m in &set.marks {
            insert_mark(&tx, m)?;
        }
        tx.commit().map_err(rejected)
    }
}

fn insert_sample(tx: &rusqlite::Transaction<'_>, series_id: i64, s: &SampleRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO samples (series_id, ts_ms, value) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut st| st.execute(params![series_id, s.ts_ms, s.value]))
    .map_err(rejected)?;
    Ok(())
}

fn insert_event(tx: &rusqlite::Transaction<'_>, e: &EventRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO events (cluster, member, ts_ms, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![e.cluster, e.member, e.ts_ms, e.kind, e.message]))
    .map_err(rejected)?;
    Ok(())
}

fn insert_mark(tx: &rusqlite::Transaction<'_>, m: &BatchMark) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO batch_marks (agent_id, sequence, samples, stored_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            m.agent_id,
            i64::try_from(m.sequence).unwrap_or(i64::MAX),
            i64::try_from(m.samples).unwrap_or(i64::MAX),
            m.stored_ms
        ])
    })
    .map_err(rejected)?;
    Ok(())
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        self.with_writer(|w| schema::migrate(&mut w.conn)).await
    }

    async fn stored_through(&self, agent_id: &str) -> Result<u64> {
        let agent = agent_id.to_string();
        Self::on(&self.control, move |c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT max(sequence) FROM batch_marks WHERE agent_id = ?1",
                    params![agent],
                    |r| r.get(0),
                )
                .optional()
                .map_err(rejected)?
                .flatten();
            Ok(v.map(|v| v.max(0) as u64).unwrap_or(0))
        })
        .await
    }

    async fn write(&self, set: &WriteSet) -> Result<()> {
        if set.is_empty() {
            return Ok(());
        }
        let set = set.clone();
        self.with_writer(move |w| w.write(&set)).await
    }

    async fn query(&self, q: &PointQuery) -> Result<Vec<SeriesPoints>> {
        crate::check_range(q.from_ms, q.to_ms)?;
        if q.step_ms < 0 {
            return Err(StorageError::InvalidQuery(
                "step must not be negative".into(),
            ));
        }
        let q = q.clone();
        let max = self.max_points;
        self.with_reader(move |c| query_points(c, &q, max)).await
    }

    async fn count_samples(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SampleCount>> {
        let cluster = cluster.to_string();
        self.with_reader(move |c| {
            let mut st = c
                .prepare(
                    "SELECT s.member, count(*) FROM samples p JOIN series s ON s.id = p.series_id
                     WHERE s.cluster = ?1 AND p.ts_ms BETWEEN ?2 AND ?3
                     GROUP BY s.member ORDER BY s.member",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map(params![cluster, from_ms, to_ms], |r| {
                    Ok(SampleCount {
                        member: r.get(0)?,
                        samples: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })
                .map_err(rejected)?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(rejected)
        })
        .await
    }

    async fn events(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        crate::check_range(from_ms, to_ms)?;
        let cluster = cluster.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |c| {
            let mut st = c
                .prepare(
                    "SELECT cluster, member, ts_ms, kind, message FROM events
                     WHERE cluster = ?1 AND ts_ms BETWEEN ?2 AND ?3
                     ORDER BY ts_ms DESC, member, kind LIMIT ?4",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map(params![cluster, from_ms, to_ms, limit], |r| {
                    Ok(EventRow {
                        cluster: r.get(0)?,
                        member: r.get(1)?,
                        ts_ms: r.get(2)?,
                        kind: r.get(3)?,
                        message: r.get(4)?,
                    })
                })
                .map_err(rejected)?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(rejected)
        })
        .await
    }

    async fn record_member(&self, info: &crate::MemberInfo) -> Result<()> {
        self.upsert_member(info).await
    }

    async fn member_info(&self, cluster: Option<&str>) -> Result<Vec<crate::MemberInfo>> {
        self.read_members(cluster).await
    }

    async fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let r = self.retention.clone();
        let ms = |d: Duration| now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
        let (samples_before, events_before, alerts_before) =
            (ms(r.samples), ms(r.events), ms(r.alerts));
        // Batch marks are only needed while an agent may still resend.
        let marks_before = now_ms - 7 * 86_400_000;
        let series_ids: Vec<i64> = self
            .with_reader(|c| {
                let mut st = c.prepare("SELECT id FROM series").map_err(rejected)?;
                let ids = st
                    .query_map([], |r| r.get(0))
                    .map_err(rejected)?
                    .collect::<std::result::Result<Vec<i64>, _>>()
                    .map_err(rejected)?;
                Ok(ids)
            })
            .await?;
        let mut removed_samples = 0u64;
        // One small transaction per series and step: writers interleave.
        for id in series_ids {
            loop {
                let n = self
                    .with_writer(move |w| {
                        w.conn
                            .execute(
                                "DELETE FROM samples WHERE series_id = ?1 AND ts_ms IN
                                 (SELECT ts_ms FROM samples WHERE series_id = ?1 AND ts_ms < ?2 LIMIT ?3)",
                                params![id, samples_before, RETENTION_STEP as i64],
                            )
                            .map_err(rejected)
                    })
                    .await?;
                removed_samples += n as u64;
                if n < RETENTION_STEP {
                    break;
                }
            }
        }
        let (events, marks) = self
            .with_writer(move |w| {
                let e = w
                    .conn
                    .execute(
                        "DELETE FROM events WHERE ts_ms < ?1",
                        params![events_before],
                    )
                    .map_err(rejected)?;
                let m = w
                    .conn
                    .execute(
                        "DELETE FROM batch_marks WHERE stored_ms < ?1",
                        params![marks_before],
                    )
                    .map_err(rejected)?;
                Ok((e as u64, m as u64))
            })
            .await?;
        let mut removed = vec![
            ("samples".into(), removed_samples),
            ("events".into(), events),
            ("batch_marks".into(), marks),
        ];
        removed.extend(self.alert_retention(alerts_before).await?);
        removed.push(("audit_log".into(), self.audit_retention(ms(r.audit)).await?));
        Ok(RetentionOutcome { removed })
    }
}

fn query_points(c: &Connection, q: &PointQuery, max: usize) -> Result<Vec<SeriesPoints>> {
    // Series by series, each a range of the samples' primary key read in
    // order, and the steps taken here: one statement grouping by step made
    // SQLite sort every sample of the range first (a 24 h quantile over a
    // histogram's buckets took 0.3 s, `bench/fleet-query`).
    let mut series = c
        .prepare_cached(
            "SELECT id, member, labels FROM series
             WHERE cluster = ?1 AND name = ?2 AND (?3 IS NULL OR member = ?3)
               AND (?4 IS NULL OR labels = ?4)
             ORDER BY member, labels",
        )
        .map_err(rejected)?;
    let ids = series
        .query_map(params![q.cluster, q.metric, q.member, q.labels], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(rejected)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(rejected)?;
    let mut samples = c
        .prepare_cached(
            "SELECT ts_ms, value FROM samples
             WHERE series_id = ?1 AND ts_ms BETWEEN ?2 AND ?3 ORDER BY ts_ms",
        )
        .map_err(rejected)?;
    let mut out: Vec<SeriesPoints> = Vec::new();
    let mut total = 0;
    for (id, member, labels) in ids {
        let rows = samples
            .query_map(params![id, q.from_ms, q.to_ms], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })
            .map_err(rejected)?;
        let mut points: Vec<(i64, f64)> = Vec::new();
        for row in rows {
            let (ts, v) = row.map_err(rejected)?;
            // With a step: the last value of each step-aligned bucket, at
            // the bucket's start (rows come in time order).
            let ts = if q.step_ms > 0 {
                ts.div_euclid(q.step_ms) * q.step_ms
            } else {
                ts
            };
            match points.last_mut() {
                Some(last) if last.0 == ts => last.1 = v,
                _ => {
                    total += 1;
                    if total > max {
                        return Err(crate::too_many_points(max));
                    }
                    points.push((ts, v));
                }
            }
        }
        // (cluster, name, member, labels) is unique in `series`: one id each.
        if !points.is_empty() {
            out.push(SeriesPoints {
                member,
                labels,
                points,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
