//! Cluster registrations on ClickHouse (see [`crate::registry`]): a
//! ReplacingMergeTree by name whose newest version (`updated_ms`) is the
//! current one; a deletion is a version with `deleted = 1`.

use super::query::Sql;
use super::ClickHouseStorage;
use crate::{RegistrationRow, RegistryStore, Result};

/// A row of `cluster_registrations`, in column order; read back the same way.
#[derive(clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct RegistrationVersion {
    name: String,
    region: String,
    owner: String,
    tags_json: String,
    members_json: String,
    updated_ms: i64,
    updated_by: String,
    deleted: u8,
}

/// The current version of every name, in [`RegistrationVersion`]'s column order.
const CURRENT: &str = "SELECT name, argMax(region, updated_ms), argMax(owner, updated_ms), \
     argMax(tags_json, updated_ms), argMax(members_json, updated_ms), max(updated_ms), \
     argMax(updated_by, updated_ms), argMax(deleted, updated_ms) \
     FROM cluster_registrations";

impl ClickHouseStorage {
    /// The newest version of each name (deleted ones too: a new version must
    /// be newer than a deletion).
    async fn current_registrations(&self, name: Option<&str>) -> Result<Vec<RegistrationVersion>> {
        let mut sql = Sql::default();
        sql.push(CURRENT);
        if let Some(name) = name {
            sql.push(" WHERE name = ").str(name);
        }
        sql.push(" GROUP BY name ORDER BY name");
        self.fetch_alert_rows("read the cluster registrations", &sql)
            .await
    }
}

#[async_trait::async_trait]
impl RegistryStore for ClickHouseStorage {
    async fn put_registration(&self, row: &RegistrationRow) -> Result<()> {
        // Strictly newer than the version it replaces, whatever the clocks say.
        let before = self
            .current_registrations(Some(&row.name))
            .await?
            .pop()
            .map_or(i64::MIN, |v| v.updated_ms);
        let version = RegistrationVersion {
            name: row.name.clone(),
            region: row.region.clone(),
            owner: row.owner.clone(),
            tags_json: row.tags_json.clone(),
            members_json: row.members_json.clone(),
            updated_ms: row.updated_ms.max(before.saturating_add(1)),
            updated_by: row.updated_by.clone(),
            deleted: 0,
        };
        self.insert_alert_rows::<RegistrationVersion>("cluster_registrations", &[version])
            .await
    }

    async fn delete_registration(&self, name: &str, at_ms: i64, by: &str) -> Result<bool> {
        let Some(mut current) = self
            .current_registrations(Some(name))
            .await?
            .pop()
            .filter(|v| v.deleted == 0)
        else {
            return Ok(false);
        };
        current.deleted = 1;
        current.updated_by = by.to_owned();
        current.updated_ms = at_ms.max(current.updated_ms + 1);
        self.insert_alert_rows::<RegistrationVersion>("cluster_registrations", &[current])
            .await?;
        Ok(true)
    }

    async fn registrations(&self) -> Result<Vec<RegistrationRow>> {
        Ok(self
            .current_registrations(None)
            .await?
            .into_iter()
            .filter(|v| v.deleted == 0)
            .map(|v| RegistrationRow {
                name: v.name,
                region: v.region,
                owner: v.owner,
                tags_json: v.tags_json,
                members_json: v.members_json,
                updated_ms: v.updated_ms,
                updated_by: v.updated_by,
            })
            .collect())
    }
}
