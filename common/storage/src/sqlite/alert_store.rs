//! [`AlertStore`] on SQLite: the four alert tables of schema version 2.
//!
//! Each table's primary key is its natural key, and a second write of a key resolves
//! the same way ClickHouse's reads and merges do, so both backends answer alike:
//!
//! - transitions and acknowledgements: the copy with the earliest time (`received_ms`,
//!   `ts_ms`) wins; an upsert replaces the stored row only with an earlier one;
//! - silences: the copy with the highest `updated_ms` wins; an upsert replaces the
//!   stored row only with a newer one;
//! - deliveries: a key names one attempt, so a second write is the same row again and
//!   `INSERT OR IGNORE` drops it.
//!
//! Writes go through the writer connection, one transaction per call; reads through the
//! reader, both on the blocking pool like the rest of the backend. Retention deletes in
//! steps of [`RETENTION_STEP`] rows so that writers interleave.

use rusqlite::{params, Connection, Row};

use super::{rejected, SqliteStorage, RETENTION_STEP};
use crate::{
    AlertAckRow, AlertDeliveryRow, AlertHistoryQuery, AlertStore, AlertTransitionRow, Result,
    SilenceRow, StorageError,
};

/// Columns of `alert_transitions` in the order [`transition_from_row`] reads them.
const TRANSITION_COLUMNS: &str = "fingerprint, transition, state, cluster, rule, severity, \
     labels_json, annotations_json, value, active_since_ms, received_ms";

/// The transition is the fingerprint's latest and says `firing`: the alerter restores
/// the alert from it, so retention keeps it (and its acknowledgement) whatever its age.
/// `t` names the `alert_transitions` row (or the key of an ack) being checked.
const LATEST_FIRING: &str = "EXISTS (SELECT 1 FROM alert_transitions l
     WHERE l.fingerprint = t.fingerprint AND l.transition = t.transition AND l.state = 'firing'
       AND l.transition = (SELECT max(transition) FROM alert_transitions m
                           WHERE m.fingerprint = t.fingerprint))";

/// A transition number as SQLite's signed INTEGER.
fn transition_to_sql(transition: u64) -> Result<i64> {
    i64::try_from(transition).map_err(|_| {
        StorageError::Rejected(format!(
            "alert transition {transition} is beyond what the store can hold ({})",
            i64::MAX
        ))
    })
}

/// Writes never store a negative transition, so the fallback is unreachable in practice.
fn transition_from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn transition_from_row(r: &Row<'_>) -> rusqlite::Result<AlertTransitionRow> {
    Ok(AlertTransitionRow {
        fingerprint: r.get(0)?,
        transition: transition_from_sql(r.get(1)?),
        state: crate::alert_store::parse_state(&r.get::<_, String>(2)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        cluster: r.get(3)?,
        rule: r.get(4)?,
        severity: r.get(5)?,
        labels_json: r.get(6)?,
        annotations_json: r.get(7)?,
        // SQLite keeps a NaN as NULL.
        value: r.get::<_, Option<f64>>(8)?.unwrap_or(f64::NAN),
        active_since_ms: r.get(9)?,
        received_ms: r.get(10)?,
    })
}

fn limit_of(q: &AlertHistoryQuery) -> i64 {
    i64::try_from(q.limit).unwrap_or(i64::MAX)
}

fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<T>>) -> Result<Vec<T>> {
    rows.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(rejected)
}

fn history(c: &Connection, q: &AlertHistoryQuery) -> Result<Vec<AlertTransitionRow>> {
    let sql = format!(
        "SELECT {TRANSITION_COLUMNS} FROM alert_transitions
         WHERE received_ms BETWEEN ?1 AND ?2 AND (?3 IS NULL OR cluster = ?3)
           AND (?4 IS NULL OR fingerprint = ?4)
         ORDER BY received_ms DESC, transition DESC, fingerprint LIMIT ?5"
    );
    let mut st = c.prepare_cached(&sql).map_err(rejected)?;
    let rows = st
        .query_map(
            params![q.from_ms, q.to_ms, q.cluster, q.fingerprint, limit_of(q)],
            transition_from_row,
        )
        .map_err(rejected)?;
    collect(rows)
}

fn deliveries(c: &Connection, q: &AlertHistoryQuery) -> Result<Vec<AlertDeliveryRow>> {
    let mut st = c
        .prepare_cached(
            "SELECT receiver, fingerprint, transition, state, group_key, reason, attempt_ms,
                    attempt, outcome, detail
             FROM alert_deliveries
             WHERE attempt_ms BETWEEN ?1 AND ?2 AND (?3 IS NULL OR fingerprint = ?3)
             ORDER BY attempt_ms DESC, attempt DESC, receiver, fingerprint, transition DESC,
                      state
             LIMIT ?4",
        )
        .map_err(rejected)?;
    let rows = st
        .query_map(
            params![q.from_ms, q.to_ms, q.fingerprint, limit_of(q)],
            |r| {
                Ok(AlertDeliveryRow {
                    receiver: r.get(0)?,
                    fingerprint: r.get(1)?,
                    transition: transition_from_sql(r.get(2)?),
                    state: r.get(3)?,
                    group_key: r.get(4)?,
                    reason: r.get(5)?,
                    attempt_ms: r.get(6)?,
                    attempt: r.get(7)?,
                    outcome: r.get(8)?,
                    detail: r.get(9)?,
                })
            },
        )
        .map_err(rejected)?;
    collect(rows)
}

#[async_trait::async_trait]
impl AlertStore for SqliteStorage {
    async fn record_transitions(&self, rows: &[AlertTransitionRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows
            .iter()
            .map(|t| Ok((transition_to_sql(t.transition)?, t.clone())))
            .collect::<Result<Vec<_>>>()?;
        self.with_writer(move |w| {
            let tx = w.conn.transaction().map_err(rejected)?;
            for (transition, t) in &rows {
                tx.prepare_cached(
                    "INSERT INTO alert_transitions (fingerprint, transition, state, cluster,
                         rule, severity, labels_json, annotations_json, value,
                         active_since_ms, received_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (fingerprint, transition) DO UPDATE SET
                         state = excluded.state, cluster = excluded.cluster,
                         rule = excluded.rule, severity = excluded.severity,
                         labels_json = excluded.labels_json,
                         annotations_json = excluded.annotations_json,
                         value = excluded.value, active_since_ms = excluded.active_since_ms,
                         received_ms = excluded.received_ms
                     WHERE excluded.received_ms < alert_transitions.received_ms",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        t.fingerprint,
                        transition,
                        t.state.as_str(),
                        t.cluster,
                        t.rule,
                        t.severity,
                        t.labels_json,
                        t.annotations_json,
                        t.value,
                        t.active_since_ms,
                        t.received_ms
                    ])
                })
                .map_err(rejected)?;
            }
            tx.commit().map_err(rejected)
        })
        .await
    }

    async fn latest_transitions(&self, since_ms: i64) -> Result<Vec<AlertTransitionRow>> {
        self.with_reader(move |c| {
            let sql = format!(
                "SELECT {TRANSITION_COLUMNS} FROM alert_transitions t
                 WHERE t.transition = (SELECT max(transition) FROM alert_transitions m
                                       WHERE m.fingerprint = t.fingerprint)
                   AND (t.received_ms >= ?1 OR t.state = 'firing')
                 ORDER BY t.fingerprint"
            );
            let mut st = c.prepare_cached(&sql).map_err(rejected)?;
            let rows = st
                .query_map(params![since_ms], transition_from_row)
                .map_err(rejected)?;
            collect(rows)
        })
        .await
    }

    async fn alert_history(&self, query: &AlertHistoryQuery) -> Result<Vec<AlertTransitionRow>> {
        query.check_range()?;
        let q = query.clone();
        self.with_reader(move |c| history(c, &q)).await
    }

    async fn record_deliveries(&self, rows: &[AlertDeliveryRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows
            .iter()
            .map(|d| Ok((transition_to_sql(d.transition)?, d.clone())))
            .collect::<Result<Vec<_>>>()?;
        self.with_writer(move |w| {
            let tx = w.conn.transaction().map_err(rejected)?;
            for (transition, d) in &rows {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO alert_deliveries (receiver, fingerprint, transition,
                         state, group_key, reason, attempt_ms, attempt, outcome, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        d.receiver,
                        d.fingerprint,
                        transition,
                        d.state,
                        d.group_key,
                        d.reason,
                        d.attempt_ms,
                        d.attempt,
                        d.outcome,
                        d.detail
                    ])
                })
                .map_err(rejected)?;
            }
            tx.commit().map_err(rejected)
        })
        .await
    }

    async fn deliveries(&self, query: &AlertHistoryQuery) -> Result<Vec<AlertDeliveryRow>> {
        query.check_range()?;
        let q = query.clone();
        self.with_reader(move |c| deliveries(c, &q)).await
    }

    async fn put_silence(&self, row: &SilenceRow) -> Result<()> {
        let s = row.clone();
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "INSERT INTO silences (id, matchers_json, starts_ms, ends_ms, created_by,
                         comment, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (id) DO UPDATE SET
                         matchers_json = excluded.matchers_json,
                         starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms,
                         created_by = excluded.created_by, comment = excluded.comment,
                         updated_ms = excluded.updated_ms
                     WHERE excluded.updated_ms > silences.updated_ms",
                    params![
                        s.id,
                        s.matchers_json,
                        s.starts_ms,
                        s.ends_ms,
                        s.created_by,
                        s.comment,
                        s.updated_ms
                    ],
                )
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    async fn silences(&self, since_ms: i64) -> Result<Vec<SilenceRow>> {
        self.with_reader(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, matchers_json, starts_ms, ends_ms, created_by, comment,
                            updated_ms
                     FROM silences WHERE ends_ms >= ?1 ORDER BY id",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map(params![since_ms], |r| {
                    Ok(SilenceRow {
                        id: r.get(0)?,
                        matchers_json: r.get(1)?,
                        starts_ms: r.get(2)?,
                        ends_ms: r.get(3)?,
                        created_by: r.get(4)?,
                        comment: r.get(5)?,
                        updated_ms: r.get(6)?,
                    })
                })
                .map_err(rejected)?;
            collect(rows)
        })
        .await
    }

    async fn put_ack(&self, row: &AlertAckRow) -> Result<()> {
        let transition = transition_to_sql(row.transition)?;
        let a = row.clone();
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "INSERT INTO alert_acks (fingerprint, transition, acked_by, comment, ts_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (fingerprint, transition) DO UPDATE SET
                         acked_by = excluded.acked_by, comment = excluded.comment,
                         ts_ms = excluded.ts_ms
                     WHERE excluded.ts_ms < alert_acks.ts_ms",
                    params![a.fingerprint, transition, a.by, a.comment, a.ts_ms],
                )
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    async fn acks(&self, since_ms: i64) -> Result<Vec<AlertAckRow>> {
        self.with_reader(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT fingerprint, transition, acked_by, comment, ts_ms
                     FROM alert_acks WHERE ts_ms >= ?1 ORDER BY fingerprint, transition",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map(params![since_ms], |r| {
                    Ok(AlertAckRow {
                        fingerprint: r.get(0)?,
                        transition: transition_from_sql(r.get(1)?),
                        by: r.get(2)?,
                        comment: r.get(3)?,
                        ts_ms: r.get(4)?,
                    })
                })
                .map_err(rejected)?;
            collect(rows)
        })
        .await
    }
}

impl SqliteStorage {
    /// Deletes alert rows older than `before_ms` (see [`crate::Retention::alerts`]) and
    /// returns (table, rows deleted) for the retention outcome.
    pub(super) async fn alert_retention(&self, before_ms: i64) -> Result<Vec<(String, u64)>> {
        let acks = self
            .delete_in_steps(
                format!(
                    "DELETE FROM alert_acks WHERE rowid IN (
                         SELECT t.rowid FROM alert_acks t
                         WHERE t.ts_ms < ?1 AND NOT {LATEST_FIRING} LIMIT ?2)"
                ),
                before_ms,
            )
            .await?;
        let transitions = self
            .delete_in_steps(
                format!(
                    "DELETE FROM alert_transitions WHERE rowid IN (
                         SELECT t.rowid FROM alert_transitions t
                         WHERE t.received_ms < ?1 AND NOT {LATEST_FIRING} LIMIT ?2)"
                ),
                before_ms,
            )
            .await?;
        let deliveries = self
            .delete_in_steps(
                "DELETE FROM alert_deliveries WHERE rowid IN (
                     SELECT rowid FROM alert_deliveries WHERE attempt_ms < ?1 LIMIT ?2)"
                    .to_owned(),
                before_ms,
            )
            .await?;
        let silences = self
            .delete_in_steps(
                "DELETE FROM silences WHERE rowid IN (
                     SELECT rowid FROM silences WHERE ends_ms < ?1 LIMIT ?2)"
                    .to_owned(),
                before_ms,
            )
            .await?;
        Ok(vec![
            ("alert_transitions".into(), transitions),
            ("alert_deliveries".into(), deliveries),
            ("silences".into(), silences),
            ("alert_acks".into(), acks),
        ])
    }

    /// Runs `sql` (a `DELETE` taking `?1` = before, `?2` = step size) until a step deletes
    /// less than a full step; each step is its own short transaction.
    async fn delete_in_steps(&self, sql: String, before_ms: i64) -> Result<u64> {
        let sql = std::sync::Arc::new(sql);
        let mut removed = 0u64;
        loop {
            let sql = sql.clone();
            let n = self
                .with_writer(move |w| {
                    w.conn
                        .prepare_cached(&sql)
                        .and_then(|mut st| st.execute(params![before_ms, RETENTION_STEP as i64]))
                        .map_err(rejected)
                })
                .await?;
            removed += n as u64;
            if n < RETENTION_STEP {
                return Ok(removed);
            }
        }
    }
}
