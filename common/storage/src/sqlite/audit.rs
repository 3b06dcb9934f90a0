//! The audit log on SQLite (see [`crate::audit`]).

use rusqlite::params;

use super::{rejected, SqliteStorage, RETENTION_STEP};
use crate::{AuditLog, AuditQuery, AuditRow, Result};

#[async_trait::async_trait]
impl AuditLog for SqliteStorage {
    async fn record_audit(&self, row: &AuditRow) -> Result<()> {
        let r = row.clone();
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "INSERT INTO audit_log
                     (ts_ms, actor, role, via, method, path, remote, status, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        r.ts_ms, r.actor, r.role, r.via, r.method, r.path, r.remote, r.status,
                        r.detail
                    ],
                )
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRow>> {
        let q = *query;
        self.with_reader(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT ts_ms, actor, role, via, method, path, remote, status, detail
                     FROM audit_log WHERE ts_ms >= ?1 AND ts_ms < ?2
                     ORDER BY ts_ms DESC, rowid DESC LIMIT ?3",
                )
                .map_err(rejected)?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows = st
                .query_map(params![q.from_ms, q.to_ms, limit], |r| {
                    Ok(AuditRow {
                        ts_ms: r.get(0)?,
                        actor: r.get(1)?,
                        role: r.get(2)?,
                        via: r.get(3)?,
                        method: r.get(4)?,
                        path: r.get(5)?,
                        remote: r.get(6)?,
                        status: r.get(7)?,
                        detail: r.get(8)?,
                    })
                })
                .map_err(rejected)?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(rejected)?;
            Ok(rows)
        })
        .await
    }
}

impl SqliteStorage {
    /// Deletes audit rows older than `before_ms`, in small steps; returns how many.
    pub(super) async fn audit_retention(&self, before_ms: i64) -> Result<u64> {
        let mut removed = 0u64;
        loop {
            let n = self
                .with_writer(move |w| {
                    w.conn
                        .execute(
                            "DELETE FROM audit_log WHERE rowid IN (
                                 SELECT rowid FROM audit_log WHERE ts_ms < ?1 LIMIT ?2)",
                            params![before_ms, RETENTION_STEP as i64],
                        )
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
