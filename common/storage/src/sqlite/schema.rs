//! Versioned schema of the SQLite backend. Each migration runs once, in a
//! transaction, and is recorded in `schema_migrations`; running `migrate`
//! again is a no-op.

use super::rejected;
use crate::{Result, StorageError};
use rusqlite::{params, Connection};

/// (version, SQL) in order. Never edit a released migration: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        cluster TEXT NOT NULL,
        member TEXT NOT NULL,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        metric_type TEXT NOT NULL,
        seen_ms INTEGER NOT NULL,
        UNIQUE (cluster, name, member, labels)
    );
    CREATE TABLE samples (
        series_id INTEGER NOT NULL REFERENCES series(id),
        ts_ms INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (series_id, ts_ms)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        cluster TEXT NOT NULL,
        member TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (cluster, ts_ms, member, kind)
    ) WITHOUT ROWID;
    CREATE TABLE batch_marks (
        agent_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        stored_ms INTEGER NOT NULL,
        PRIMARY KEY (agent_id, sequence)
    ) WITHOUT ROWID;",
    ),
    (
        2,
        // Alert state and history (see `crate::alerts`). Ordinary rowid tables: rows carry
        // JSON text, too wide for WITHOUT ROWID to pay off, and retention deletes by rowid.
        // `value` may be NULL because SQLite stores a NaN as NULL.
        "CREATE TABLE alert_transitions (
        fingerprint TEXT NOT NULL,
        transition INTEGER NOT NULL,
        state TEXT NOT NULL,
        cluster TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        annotations_json TEXT NOT NULL,
        value REAL,
        active_since_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (fingerprint, transition)
    );
    CREATE INDEX alert_transitions_received ON alert_transitions (received_ms);
    CREATE INDEX alert_transitions_cluster ON alert_transitions (cluster, received_ms);
    -- Fingerprint first, so the per-alert history uses the key's index.
    CREATE TABLE alert_deliveries (
        receiver TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        transition INTEGER NOT NULL,
        state TEXT NOT NULL,
        group_key TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempt_ms INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (fingerprint, transition, receiver, state, attempt_ms, attempt)
    );
    CREATE INDEX alert_deliveries_attempt ON alert_deliveries (attempt_ms);
    CREATE TABLE silences (
        id TEXT NOT NULL PRIMARY KEY,
        matchers_json TEXT NOT NULL,
        starts_ms INTEGER NOT NULL,
        ends_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX silences_ends ON silences (ends_ms);
    CREATE TABLE alert_acks (
        fingerprint TEXT NOT NULL,
        transition INTEGER NOT NULL,
        acked_by TEXT NOT NULL,
        comment TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (fingerprint, transition)
    );
    CREATE INDEX alert_acks_ts ON alert_acks (ts_ms);",
    ),
    (
        3,
        // The audit log (see `crate::audit`): appended, read newest first by time.
        "CREATE TABLE audit_log (
            ts_ms INTEGER NOT NULL,
            actor TEXT NOT NULL,
            role TEXT NOT NULL,
            via TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            remote TEXT NOT NULL,
            status INTEGER NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX audit_log_ts ON audit_log (ts_ms);",
    ),
    (
        4,
        // API tokens made through the API (see `crate::tokens`).
        "CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created_ms INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            expires_ms INTEGER NOT NULL,
            revoked_ms INTEGER NOT NULL,
            revoked_by TEXT NOT NULL
        );",
    ),
    (
        5,
        // Clusters registered through the API (see `crate::registry`).
        "CREATE TABLE cluster_registrations (
            name TEXT PRIMARY KEY,
            region TEXT NOT NULL,
            owner TEXT NOT NULL,
            tags_json TEXT NOT NULL,
            members_json TEXT NOT NULL,
            updated_ms INTEGER NOT NULL,
            updated_by TEXT NOT NULL
        );",
    ),
    (
        6,
        // Where each member runs (see `Storage::record_member`).
        "CREATE TABLE member_info (
            cluster TEXT NOT NULL,
            member TEXT NOT NULL,
            region TEXT NOT NULL,
            node TEXT NOT NULL,
            tags TEXT NOT NULL,
            seen_ms INTEGER NOT NULL,
            PRIMARY KEY (cluster, member)
        ) WITHOUT ROWID;",
    ),
];

/// Applies the migrations not yet recorded.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_ms INTEGER NOT NULL
        )",
    )
    .map_err(|e| StorageError::Migration(e.to_string()))?;
    for (version, sql) in MIGRATIONS {
        // IMMEDIATE takes the write lock first, so two processes migrating
        // at once apply each version exactly once.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(rejected)?;
        let done: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM schema_migrations WHERE version = ?1",
                params![version],
                |r| r.get(0),
            )
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        if !done {
            tx.execute_batch(sql)
                .map_err(|e| StorageError::Migration(format!("version {version}: {e}")))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                params![version, now_ms()],
            )
            .map_err(|e| StorageError::Migration(e.to_string()))?;
            tracing::info!(version, "sqlite schema migrated");
        }
        tx.commit().map_err(rejected)?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
