//! [`AlertStore`] on ClickHouse: the four alert tables of migration 4.
//!
//! # Writes
//!
//! Each call is one `INSERT` (RowBinary, positional: the structs below list the columns
//! in table order), bounded by `insert_timeout` like sample writes. Writing again after a
//! timeout or a redelivery only adds copies of rows that are already there.
//!
//! # Reads deduplicate
//!
//! Every table is a `ReplacingMergeTree` sorted by its natural key, so copies collapse
//! when parts merge, at an unknown time. Reads therefore deduplicate on the key with
//! `GROUP BY` (not `FINAL`, for the reason given in `query.rs`), choosing the copy the
//! merge will keep, so an answer does not change when a merge happens:
//!
//! | table | key | copy that counts | merge version |
//! |---|---|---|---|
//! | `alert_transitions` | (fingerprint, transition) | earliest `received_ms` (`argMin`) | `first_wins = -received_ms` |
//! | `alert_deliveries` | (fingerprint, transition, receiver, state, attempt_ms, attempt) | any: copies of one attempt are identical | none |
//! | `silences` | id | highest `updated_ms` (`argMax`) | `updated_ms` |
//! | `alert_acks` | (fingerprint, transition) | earliest `ts_ms` (`argMin`) | `first_wins = -ts_ms` |
//!
//! The latest transition of a fingerprint is then `argMax` by transition over the
//! deduplicated rows. Filters on values that may differ between copies (received time,
//! cluster) apply after deduplication; only key columns filter before it.
//!
//! # Retention
//!
//! Transitions, deliveries and acks are partitioned by month and expire with their
//! partitions, like the other tables. Two exceptions:
//!
//! - The latest transition of an alert that is still firing, and its acknowledgement,
//!   must outlive retention: the alerter restores the alert from them. Before such a
//!   partition is dropped, [`ClickHouseStorage::keep_firing_alerts`] copies them into
//!   the current month's partition (`date` = today, times unchanged); reads deduplicate
//!   the copy with the original until the original's partition is gone.
//! - Silences are not partitioned (see the migration): retention deletes every version
//!   of a silence whose current version ended before the horizon, with one
//!   `ALTER TABLE ... DELETE` mutation per [`SILENCE_DELETE_CHUNK`] silences. There are
//!   few, so the mutation (which rewrites the table's parts) stays cheap.

use clickhouse::RowWrite;

use super::alert_sql::{
    acks_sql, carry_acks_sql, carry_transitions_sql, delete_silences_sql, deliveries_sql,
    expired_silences_sql, history_sql, latest_sql, silences_sql,
};
use super::query::Sql;
use super::retention::{date_literal, day_of_ms, month_start, partition_expired, Granularity};
use super::{date_of, ClickHouseStorage, PartitionRow};
use crate::{
    AlertAckRow, AlertDeliveryRow, AlertHistoryQuery, AlertStore, AlertTransitionRow, Result,
    SilenceRow, StorageError,
};

/// Silences per retention mutation; each adds two bound values to the statement.
const SILENCE_DELETE_CHUNK: usize = 100;

/// Tables whose partitions may hold what [`ClickHouseStorage::keep_firing_alerts`] saves.
const KEPT_WHILE_FIRING: [&str; 2] = ["alert_transitions", "alert_acks"];

/// A row of `alert_transitions`, in column order (`first_wins` is computed by the server).
#[derive(clickhouse::Row, serde::Serialize)]
struct TransitionInsert<'a> {
    date: u16,
    fingerprint: &'a str,
    transition: u64,
    state: &'a str,
    cluster: &'a str,
    rule: &'a str,
    severity: &'a str,
    labels_json: &'a str,
    annotations_json: &'a str,
    value: f64,
    active_since_ms: i64,
    received_ms: i64,
}

/// A transition as the reads below return it.
#[derive(clickhouse::Row, serde::Deserialize)]
struct TransitionRead {
    fingerprint: String,
    transition: u64,
    state: String,
    cluster: String,
    rule: String,
    severity: String,
    labels_json: String,
    annotations_json: String,
    value: f64,
    active_since_ms: i64,
    received_ms: i64,
}

impl TryFrom<TransitionRead> for AlertTransitionRow {
    type Error = StorageError;

    fn try_from(r: TransitionRead) -> Result<Self> {
        Ok(AlertTransitionRow {
            state: crate::alert_store::parse_state(&r.state)?,
            fingerprint: r.fingerprint,
            transition: r.transition,
            cluster: r.cluster,
            rule: r.rule,
            severity: r.severity,
            labels_json: r.labels_json,
            annotations_json: r.annotations_json,
            value: r.value,
            active_since_ms: r.active_since_ms,
            received_ms: r.received_ms,
        })
    }
}

/// A row of `alert_deliveries`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct DeliveryInsert<'a> {
    date: u16,
    receiver: &'a str,
    fingerprint: &'a str,
    transition: u64,
    state: &'a str,
    group_key: &'a str,
    reason: &'a str,
    attempt_ms: i64,
    attempt: u32,
    outcome: &'a str,
    detail: &'a str,
}

/// A delivery as `deliveries_sql` returns it.
#[derive(clickhouse::Row, serde::Deserialize)]
struct DeliveryRead {
    receiver: String,
    fingerprint: String,
    transition: u64,
    state: String,
    group_key: String,
    reason: String,
    attempt_ms: i64,
    attempt: u32,
    outcome: String,
    detail: String,
}

/// A row of `silences`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct SilenceInsert<'a> {
    id: &'a str,
    matchers_json: &'a str,
    starts_ms: i64,
    ends_ms: i64,
    created_by: &'a str,
    comment: &'a str,
    updated_ms: i64,
}

/// A silence as `silences_sql` returns it.
#[derive(clickhouse::Row, serde::Deserialize)]
struct SilenceRead {
    id: String,
    matchers_json: String,
    starts_ms: i64,
    ends_ms: i64,
    created_by: String,
    comment: String,
    updated_ms: i64,
}

/// A row of `alert_acks`, in column order (`first_wins` is computed by the server).
#[derive(clickhouse::Row, serde::Serialize)]
struct AckInsert<'a> {
    date: u16,
    fingerprint: &'a str,
    transition: u64,
    acked_by: &'a str,
    comment: &'a str,
    ts_ms: i64,
}

/// An acknowledgement as `acks_sql` returns it.
#[derive(clickhouse::Row, serde::Deserialize)]
struct AckRead {
    fingerprint: String,
    transition: u64,
    acked_by: String,
    comment: String,
    ts_ms: i64,
}

/// A silence to delete: every version up to `updated_ms` goes.
#[derive(clickhouse::Row, serde::Deserialize)]
struct ExpiredSilence {
    id: String,
    updated_ms: i64,
}

impl ClickHouseStorage {
    /// [`ClickHouseStorage::insert_rows`] within `insert_timeout`.
    pub(super) async fn insert_alert_rows<R: RowWrite>(
        &self,
        table: &str,
        rows: &[R::Value<'_>],
    ) -> Result<()> {
        let limit = self.config.insert_timeout;
        match tokio::time::timeout(limit, self.insert_rows::<R>(table, rows)).await {
            Ok(result) => result,
            // Stored or not, writing again is safe: reads deduplicate.
            Err(_) => Err(StorageError::Unavailable(format!(
                "INSERT INTO {table}: no answer from ClickHouse within {limit:?}"
            ))),
        }
    }

    /// Runs a read within `query_timeout`.
    pub(super) async fn fetch_alert_rows<T>(&self, what: &str, sql: &Sql) -> Result<Vec<T>>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.timed(
            what,
            self.config.query_timeout,
            self.bound(sql).fetch_all::<T>(),
        )
        .await
    }

    /// Runs a statement without result within `query_timeout`.
    async fn execute_alert_sql(&self, what: &str, sql: &Sql) -> Result<()> {
        self.timed(what, self.config.query_timeout, self.bound(sql).execute())
            .await
    }

    /// Saves what must outlive retention from the partitions about to be dropped: when a
    /// partition of [`KEPT_WHILE_FIRING`] in `partitions` has expired, copies the latest
    /// firing transitions and their acknowledgements that live only in expired partitions
    /// to today's partition. Running it again copies nothing more.
    pub(super) async fn keep_firing_alerts(
        &self,
        partitions: &[PartitionRow],
        now_ms: i64,
    ) -> Result<()> {
        let keep = self.config.retention.alerts;
        let expiring = partitions.iter().any(|p| {
            KEPT_WHILE_FIRING.contains(&p.table.as_str())
                && partition_expired(Granularity::Month, &p.partition, now_ms, keep) == Some(true)
        });
        if !expiring {
            return Ok(());
        }
        let horizon = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        // Rows dated before the horizon's month are exactly those in expired partitions.
        let cutoff = date_literal(month_start(day_of_ms(horizon)));
        let today = date_literal(day_of_ms(now_ms));
        self.execute_alert_sql(
            "keep acknowledgements of firing alerts",
            &carry_acks_sql(&today, &cutoff),
        )
        .await?;
        self.execute_alert_sql(
            "keep latest transitions of firing alerts",
            &carry_transitions_sql(&today, &cutoff),
        )
        .await?;
        tracing::info!(cutoff = %cutoff, "kept firing alerts out of expiring partitions");
        Ok(())
    }

    /// Deletes every silence that ended before `before_ms`; returns how many.
    pub(super) async fn expire_silences(&self, before_ms: i64) -> Result<u64> {
        let expired: Vec<ExpiredSilence> = self
            .fetch_alert_rows("list expired silences", &expired_silences_sql(before_ms))
            .await?;
        for chunk in expired.chunks(SILENCE_DELETE_CHUNK) {
            // A mutation: it returns once scheduled and is applied in the background.
            let chunk = chunk.iter().map(|s| (s.id.as_str(), s.updated_ms));
            self.execute_alert_sql("delete expired silences", &delete_silences_sql(chunk))
                .await?;
        }
        if !expired.is_empty() {
            tracing::info!(silences = expired.len(), "deleting expired silences");
        }
        Ok(expired.len() as u64)
    }
}

#[async_trait::async_trait]
impl AlertStore for ClickHouseStorage {
    async fn record_transitions(&self, rows: &[AlertTransitionRow]) -> Result<()> {
        let inserts = rows
            .iter()
            .map(|t| {
                Ok(TransitionInsert {
                    date: date_of(t.received_ms, "alert transition")?,
                    fingerprint: &t.fingerprint,
                    transition: t.transition,
                    state: t.state.as_str(),
                    cluster: &t.cluster,
                    rule: &t.rule,
                    severity: &t.severity,
                    labels_json: &t.labels_json,
                    annotations_json: &t.annotations_json,
                    value: t.value,
                    active_since_ms: t.active_since_ms,
                    received_ms: t.received_ms,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.insert_alert_rows::<TransitionInsert<'static>>("alert_transitions", &inserts)
            .await
    }

    async fn latest_transitions(&self, since_ms: i64) -> Result<Vec<AlertTransitionRow>> {
        let rows: Vec<TransitionRead> = self
            .fetch_alert_rows("read latest alert transitions", &latest_sql(since_ms))
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn alert_history(&self, query: &AlertHistoryQuery) -> Result<Vec<AlertTransitionRow>> {
        query.check_range()?;
        let rows: Vec<TransitionRead> = self
            .fetch_alert_rows("read alert history", &history_sql(query))
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn record_deliveries(&self, rows: &[AlertDeliveryRow]) -> Result<()> {
        let inserts = rows
            .iter()
            .map(|d| {
                Ok(DeliveryInsert {
                    date: date_of(d.attempt_ms, "alert delivery")?,
                    receiver: &d.receiver,
                    fingerprint: &d.fingerprint,
                    transition: d.transition,
                    state: &d.state,
                    group_key: &d.group_key,
                    reason: &d.reason,
                    attempt_ms: d.attempt_ms,
                    attempt: d.attempt,
                    outcome: &d.outcome,
                    detail: &d.detail,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.insert_alert_rows::<DeliveryInsert<'static>>("alert_deliveries", &inserts)
            .await
    }

    async fn deliveries(&self, query: &AlertHistoryQuery) -> Result<Vec<AlertDeliveryRow>> {
        query.check_range()?;
        let rows: Vec<DeliveryRead> = self
            .fetch_alert_rows("read alert deliveries", &deliveries_sql(query))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| AlertDeliveryRow {
                receiver: r.receiver,
                fingerprint: r.fingerprint,
                transition: r.transition,
                state: r.state,
                group_key: r.group_key,
                reason: r.reason,
                attempt_ms: r.attempt_ms,
                attempt: r.attempt,
                outcome: r.outcome,
                detail: r.detail,
            })
            .collect())
    }

    async fn put_silence(&self, row: &SilenceRow) -> Result<()> {
        let insert = SilenceInsert {
            id: &row.id,
            matchers_json: &row.matchers_json,
            starts_ms: row.starts_ms,
            ends_ms: row.ends_ms,
            created_by: &row.created_by,
            comment: &row.comment,
            updated_ms: row.updated_ms,
        };
        self.insert_alert_rows::<SilenceInsert<'static>>("silences", &[insert])
            .await
    }

    async fn silences(&self, since_ms: i64) -> Result<Vec<SilenceRow>> {
        let rows: Vec<SilenceRead> = self
            .fetch_alert_rows("read silences", &silences_sql(since_ms))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SilenceRow {
                id: r.id,
                matchers_json: r.matchers_json,
                starts_ms: r.starts_ms,
                ends_ms: r.ends_ms,
                created_by: r.created_by,
                comment: r.comment,
                updated_ms: r.updated_ms,
            })
            .collect())
    }

    async fn put_ack(&self, row: &AlertAckRow) -> Result<()> {
        let insert = AckInsert {
            date: date_of(row.ts_ms, "acknowledgement")?,
            fingerprint: &row.fingerprint,
            transition: row.transition,
            acked_by: &row.by,
            comment: &row.comment,
            ts_ms: row.ts_ms,
        };
        self.insert_alert_rows::<AckInsert<'static>>("alert_acks", &[insert])
            .await
    }

    async fn acks(&self, since_ms: i64) -> Result<Vec<AlertAckRow>> {
        let rows: Vec<AckRead> = self
            .fetch_alert_rows("read acknowledgements", &acks_sql(since_ms))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| AlertAckRow {
                fingerprint: r.fingerprint,
                transition: r.transition,
                by: r.acked_by,
                comment: r.comment,
                ts_ms: r.ts_ms,
            })
            .collect())
    }
}
