//! API tokens made through the API (`POST /api/v1/tokens`): stored by the
//! SHA-256 of their secret, never the secret, and revoked by a second write.
//! Tokens from the config file are not stored here.
//!
//! A token is written once when created and once more when revoked; reads
//! return the latest version of each (revoked wins), so the two backends and
//! every collector sharing a store see the same set.

use serde::Serialize;

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// A short public id (`tok_` + hex), used to revoke it and in the audit log.
    pub id: String,
    /// Who or what uses it (shown as the caller's name).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// SHA-256 of the secret, 64 lowercase hex digits.
    #[serde(skip)]
    pub sha256: String,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// When it stops working (ms since the epoch); 0 for never.
    pub expires_ms: i64,
    /// When it was revoked; 0 while it is not.
    pub revoked_ms: i64,
    /// Who revoked it; empty while it is not.
    pub revoked_by: String,
}

/// Persistence of API tokens. Implemented by both backends.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new token (its id is new).
    async fn create_token(&self, row: &TokenRow) -> crate::Result<()>;

    /// Marks token `id` revoked at `at_ms` by `by`. `Ok(false)` when no such
    /// token exists; revoking a revoked token keeps the first revocation.
    async fn revoke_token(&self, id: &str, at_ms: i64, by: &str) -> crate::Result<bool>;

    /// Every stored token (revoked and expired ones too), oldest first.
    async fn tokens(&self) -> crate::Result<Vec<TokenRow>>;
}
