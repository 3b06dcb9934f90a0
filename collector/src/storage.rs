//! Opens the configured store and runs its migrations.

use crate::config::StorageConfig;
pub use etcdmon_storage::open::Stores;

/// Opens `cfg`'s store and migrates its schema.
pub async fn open(cfg: &StorageConfig) -> anyhow::Result<Stores> {
    etcdmon_storage::open::open(cfg).await
}
