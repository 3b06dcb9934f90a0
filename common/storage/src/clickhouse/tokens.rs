//! API tokens on ClickHouse (see [`crate::tokens`]): a ReplacingMergeTree by
//! id whose newest version (`updated_ms`) is the token's current state.

use super::query::Sql;
use super::ClickHouseStorage;
use crate::{Result, TokenRow, TokenStore};

/// A row of `api_tokens`, in column order; read back the same way.
#[derive(clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct TokenVersion {
    id: String,
    name: String,
    role: String,
    sha256: String,
    created_ms: i64,
    created_by: String,
    expires_ms: i64,
    revoked_ms: i64,
    revoked_by: String,
    updated_ms: i64,
}

impl TokenVersion {
    fn row(self) -> TokenRow {
        TokenRow {
            id: self.id,
            name: self.name,
            role: self.role,
            sha256: self.sha256,
            created_ms: self.created_ms,
            created_by: self.created_by,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
            revoked_by: self.revoked_by,
        }
    }
}

/// The current version of every token, in [`TokenVersion`]'s column order.
const CURRENT: &str = "SELECT id, argMax(name, updated_ms), argMax(role, updated_ms), \
     argMax(sha256, updated_ms), argMax(created_ms, updated_ms), \
     argMax(created_by, updated_ms), argMax(expires_ms, updated_ms), \
     argMax(revoked_ms, updated_ms), argMax(revoked_by, updated_ms), max(updated_ms) \
     FROM api_tokens";

impl ClickHouseStorage {
    async fn current_tokens(&self, id: Option<&str>) -> Result<Vec<TokenVersion>> {
        let mut sql = Sql::default();
        sql.push(CURRENT);
        if let Some(id) = id {
            sql.push(" WHERE id = ").str(id);
        }
        sql.push(" GROUP BY id ORDER BY argMax(created_ms, updated_ms), id");
        self.fetch_alert_rows("read the API tokens", &sql).await
    }
}

#[async_trait::async_trait]
impl TokenStore for ClickHouseStorage {
    async fn create_token(&self, row: &TokenRow) -> Result<()> {
        let version = TokenVersion {
            id: row.id.clone(),
            name: row.name.clone(),
            role: row.role.clone(),
            sha256: row.sha256.clone(),
            created_ms: row.created_ms,
            created_by: row.created_by.clone(),
            expires_ms: row.expires_ms,
            revoked_ms: row.revoked_ms,
            revoked_by: row.revoked_by.clone(),
            updated_ms: row.created_ms,
        };
        self.insert_alert_rows::<TokenVersion>("api_tokens", &[version])
            .await
    }

    async fn revoke_token(&self, id: &str, at_ms: i64, by: &str) -> Result<bool> {
        let Some(mut current) = self.current_tokens(Some(id)).await?.pop() else {
            return Ok(false);
        };
        if current.revoked_ms != 0 {
            return Ok(true);
        }
        current.revoked_ms = at_ms;
        current.revoked_by = by.to_owned();
        // Strictly newer than the version it replaces, whatever the clocks say.
        current.updated_ms = at_ms.max(current.updated_ms + 1);
        self.insert_alert_rows::<TokenVersion>("api_tokens", &[current])
            .await?;
        Ok(true)
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(self
            .current_tokens(None)
            .await?
            .into_iter()
            .map(TokenVersion::row)
            .collect())
    }
}
