//! API tokens on SQLite (see [`crate::tokens`]): one row per token, revoked
//! in place.

use rusqlite::{params, OptionalExtension as _};

use super::{rejected, SqliteStorage};
use crate::{Result, TokenRow, TokenStore};

#[async_trait::async_trait]
impl TokenStore for SqliteStorage {
    async fn create_token(&self, row: &TokenRow) -> Result<()> {
        let r = row.clone();
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "INSERT INTO api_tokens (id, name, role, sha256, created_ms, created_by,
                         expires_ms, revoked_ms, revoked_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        r.id,
                        r.name,
                        r.role,
                        r.sha256,
                        r.created_ms,
                        r.created_by,
                        r.expires_ms,
                        r.revoked_ms,
                        r.revoked_by
                    ],
                )
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at_ms: i64, by: &str) -> Result<bool> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "UPDATE api_tokens SET revoked_ms = ?2, revoked_by = ?3
                     WHERE id = ?1 AND revoked_ms = 0",
                    params![id, at_ms, by],
                )
                .map_err(rejected)?;
            let exists = w
                .conn
                .query_row(
                    "SELECT 1 FROM api_tokens WHERE id = ?1",
                    params![id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(rejected)?;
            Ok(exists.is_some())
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.with_reader(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, name, role, sha256, created_ms, created_by, expires_ms,
                         revoked_ms, revoked_by
                     FROM api_tokens ORDER BY created_ms, id",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map([], |r| {
                    Ok(TokenRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        role: r.get(2)?,
                        sha256: r.get(3)?,
                        created_ms: r.get(4)?,
                        created_by: r.get(5)?,
                        expires_ms: r.get(6)?,
                        revoked_ms: r.get(7)?,
                        revoked_by: r.get(8)?,
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
