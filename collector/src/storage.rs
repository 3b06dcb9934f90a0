//! Opens the configured store and runs its migrations.

use crate::config::{StorageConfig, StorageTarget};
use anyhow::Context as _;
use etcdmon_storage::clickhouse::ClickHouseStorage;
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::Storage;
use std::sync::Arc;

/// Opens `cfg`'s store and migrates its schema.
pub async fn open(cfg: &StorageConfig) -> anyhow::Result<Arc<dyn Storage>> {
    let storage: Arc<dyn Storage> = match cfg.target()? {
        StorageTarget::Sqlite(path) => Arc::new(
            SqliteStorage::open(&path, cfg.retention.clone())
                .with_context(|| format!("open sqlite store {}", path.display()))?,
        ),
        StorageTarget::ClickHouse { url, database } => {
            let mut ch = cfg.clickhouse.clone();
            ch.url = url;
            ch.database = database;
            ch.retention = cfg.retention.clone();
            Arc::new(ClickHouseStorage::new(ch).context("configure clickhouse store")?)
        }
    };
    storage
        .migrate()
        .await
        .with_context(|| format!("migrate {} schema", storage.backend()))?;
    tracing::info!(backend = storage.backend(), "storage ready");
    Ok(storage)
}
