//! The audit log: who changed what through the API, and every refused login,
//! kept like the alert history and read by admins (`GET /api/v1/audit`).
//!
//! Rows are appended and never updated. A write that timed out may have been
//! stored and is not repeated by the caller, so a row is never lost to a retry
//! and, on ClickHouse, rarely stored twice (identical copies).

use serde::Serialize;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// When it was answered, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Who: the token's or the JWT subject's name, `anonymous`, or what a
    /// refused caller claimed (never a token).
    pub actor: String,
    /// The role it acted with (`viewer`, `operator`, `admin`), empty when refused.
    pub role: String,
    /// How it authenticated: `token`, `jwt`, `anonymous`, or `none`.
    pub via: String,
    /// HTTP method.
    pub method: String,
    /// Path (without the query string).
    pub path: String,
    /// The peer's address.
    pub remote: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// What was refused and why, or what was done (e.g. the silence id).
    pub detail: String,
}

/// Which rows to read: `[from_ms, to_ms)`, newest first, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    /// Inclusive start, ms since the Unix epoch.
    pub from_ms: i64,
    /// Exclusive end.
    pub to_ms: i64,
    /// Most rows returned.
    pub limit: usize,
}

/// Persistence of the audit log. Implemented by both backends.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends one row.
    async fn record_audit(&self, row: &AuditRow) -> crate::Result<()>;

    /// Rows of `query`, newest first.
    async fn audit(&self, query: &AuditQuery) -> crate::Result<Vec<AuditRow>>;
}
