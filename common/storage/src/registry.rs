//! Clusters registered through the API (`PUT /api/v1/clusters/{c}`), so that a
//! cluster is known, shown and alerted on before (and after) its agents
//! report. Clusters registered in the collector's config file are not stored
//! here.
//!
//! A registration is written whole on every change, and a deletion is a
//! version of its own; reads return the latest version of each name, without
//! the deleted ones, so both backends and every collector sharing a store see
//! the same set.

use serde::Serialize;

/// One registered cluster, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationRow {
    /// Cluster name, as its agents' `identity.cluster`.
    pub name: String,
    /// Region.
    pub region: String,
    /// Who to ask about it.
    pub owner: String,
    /// Tags, as a JSON object of strings.
    pub tags_json: String,
    /// Expected member names, as a JSON array of strings.
    pub members_json: String,
    /// When this version was written, ms since the Unix epoch.
    pub updated_ms: i64,
    /// Who wrote it.
    pub updated_by: String,
}

/// Persistence of API registrations. Implemented by both backends.
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Stores `row` as the registration of `row.name`, replacing any earlier one.
    async fn put_registration(&self, row: &RegistrationRow) -> crate::Result<()>;

    /// Deletes the registration of `name` (at `at_ms`, by `by`). `Ok(false)`
    /// when there is none.
    async fn delete_registration(&self, name: &str, at_ms: i64, by: &str) -> crate::Result<bool>;

    /// Every current registration, by name.
    async fn registrations(&self) -> crate::Result<Vec<RegistrationRow>>;
}
