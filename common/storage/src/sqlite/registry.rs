//! Cluster registrations on SQLite (see [`crate::registry`]): one row per
//! name, replaced on every change and deleted in place.

use rusqlite::params;

use super::{rejected, SqliteStorage};
use crate::{RegistrationRow, RegistryStore, Result};

#[async_trait::async_trait]
impl RegistryStore for SqliteStorage {
    async fn put_registration(&self, row: &RegistrationRow) -> Result<()> {
        let r = row.clone();
        self.with_writer(move |w| {
            w.conn
                .execute(
                    "INSERT OR REPLACE INTO cluster_registrations
                         (name, region, owner, tags_json, members_json, updated_ms, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        r.name,
                        r.region,
                        r.owner,
                        r.tags_json,
                        r.members_json,
                        r.updated_ms,
                        r.updated_by
                    ],
                )
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    async fn delete_registration(&self, name: &str, _at_ms: i64, _by: &str) -> Result<bool> {
        let name = name.to_owned();
        self.with_writer(move |w| {
            let n = w
                .conn
                .execute(
                    "DELETE FROM cluster_registrations WHERE name = ?1",
                    params![name],
                )
                .map_err(rejected)?;
            Ok(n > 0)
        })
        .await
    }

    async fn registrations(&self) -> Result<Vec<RegistrationRow>> {
        self.with_reader(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT name, region, owner, tags_json, members_json, updated_ms, updated_by
                     FROM cluster_registrations ORDER BY name",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map([], |r| {
                    Ok(RegistrationRow {
                        name: r.get(0)?,
                        region: r.get(1)?,
                        owner: r.get(2)?,
                        tags_json: r.get(3)?,
                        members_json: r.get(4)?,
                        updated_ms: r.get(5)?,
                        updated_by: r.get(6)?,
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
