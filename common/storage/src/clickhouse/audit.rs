//! The audit log on ClickHouse (see [`crate::audit`]): a plain MergeTree by
//! time, partitioned by month like the alert history.

use super::query::Sql;
use super::{date_of, ClickHouseStorage};
use crate::{AuditLog, AuditQuery, AuditRow, Result};

/// A row of `audit_log`, in column order.
#[derive(clickhouse::Row, serde::Serialize)]
struct AuditInsert<'a> {
    date: u16,
    ts_ms: i64,
    actor: &'a str,
    role: &'a str,
    via: &'a str,
    method: &'a str,
    path: &'a str,
    remote: &'a str,
    status: u16,
    detail: &'a str,
}

/// A row as read back.
#[derive(clickhouse::Row, serde::Deserialize)]
struct AuditRead {
    ts_ms: i64,
    actor: String,
    role: String,
    via: String,
    method: String,
    path: String,
    remote: String,
    status: u16,
    detail: String,
}

#[async_trait::async_trait]
impl AuditLog for ClickHouseStorage {
    async fn record_audit(&self, row: &AuditRow) -> Result<()> {
        let insert = AuditInsert {
            date: date_of(row.ts_ms, "audit")?,
            ts_ms: row.ts_ms,
            actor: &row.actor,
            role: &row.role,
            via: &row.via,
            method: &row.method,
            path: &row.path,
            remote: &row.remote,
            status: row.status,
            detail: &row.detail,
        };
        self.insert_alert_rows::<AuditInsert<'static>>("audit_log", &[insert])
            .await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRow>> {
        let mut sql = Sql::default();
        sql.push(
            "SELECT ts_ms, actor, role, via, method, path, remote, status, detail \
             FROM audit_log WHERE ts_ms >= ",
        )
        .int(query.from_ms)
        .push(" AND ts_ms < ")
        .int(query.to_ms)
        .push(" ORDER BY ts_ms DESC LIMIT ")
        .int(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows: Vec<AuditRead> = self.fetch_alert_rows("read the audit log", &sql).await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                ts_ms: r.ts_ms,
                actor: r.actor,
                role: r.role,
                via: r.via,
                method: r.method,
                path: r.path,
                remote: r.remote,
                status: r.status,
                detail: r.detail,
            })
            .collect())
    }
}
