//! Which store a service uses (`[storage]` in the collector's and the alerter's config)
//! and opening it: one connection pool serving both [`Storage`] and [`AlertStore`].

use crate::clickhouse::{ClickHouseConfig, ClickHouseStorage};
use crate::sqlite::SqliteStorage;
use crate::{AlertStore, AuditLog, RegistryStore, Retention, Storage, StorageError, TokenStore};
use etcdmon_core::config::FieldError;
use etcdmon_core::retry::{until_ok, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which store, and how long data is kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite:PATH` or `clickhouse://HOST:PORT/DATABASE`; user, password
    /// and timeouts of ClickHouse are in `[storage.clickhouse]`.
    pub url: String,
    /// ClickHouse connection settings beyond the URL.
    pub clickhouse: ClickHouseConfig,
    /// How long each kind of data is kept.
    pub retention: Retention,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:etcdmon.sqlite".into(),
            clickhouse: ClickHouseConfig::default(),
            retention: Retention::default(),
            retention_interval: Duration::from_secs(3600),
        }
    }
}

/// The parsed form of `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageTarget {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A ClickHouse server: HTTP URL and database.
    ClickHouse {
        /// `http://HOST:PORT`, or `https://HOST:PORT` for `clickhouses://`.
        url: String,
        /// Database name.
        database: String,
    },
}

impl StorageConfig {
    /// Parses `url`; the error names the field. The ClickHouse section's
    /// own server, database and retention fields must stay unset: the
    /// collector takes them from `storage.url` and `storage.retention`, and
    /// a value silently overridden would mislead.
    pub fn target(&self) -> Result<StorageTarget, FieldError> {
        let defaults = ClickHouseConfig::default();
        if self.clickhouse.url != defaults.url {
            return Err(FieldError::new(
                "storage.clickhouse.url",
                "is set from storage.url; write clickhouse://HOST:PORT/DATABASE there",
            ));
        }
        if self.clickhouse.database != defaults.database {
            return Err(FieldError::new(
                "storage.clickhouse.database",
                "is set from storage.url; write clickhouse://HOST:PORT/DATABASE there",
            ));
        }
        if format!("{:?}", self.clickhouse.retention) != format!("{:?}", defaults.retention) {
            return Err(FieldError::new(
                "storage.clickhouse.retention",
                "is set from storage.retention; configure retention there",
            ));
        }
        if let Some(path) = self.url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(FieldError::new(
                    "storage.url",
                    "sqlite: needs a path, e.g. sqlite:/var/lib/etcdmon/etcdmon.sqlite",
                ));
            }
            return Ok(StorageTarget::Sqlite(PathBuf::from(path)));
        }
        let clickhouse = [("clickhouse://", "http"), ("clickhouses://", "https")]
            .into_iter()
            .find_map(|(prefix, scheme)| self.url.strip_prefix(prefix).map(|rest| (rest, scheme)));
        if let Some((rest, scheme)) = clickhouse {
            let (hostport, db) = rest.split_once('/').unwrap_or((rest, "etcdmon"));
            if hostport.is_empty() {
                return Err(FieldError::new(
                    "storage.url",
                    "clickhouse:// needs HOST:PORT",
                ));
            }
            let db = if db.is_empty() { "etcdmon" } else { db };
            if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(FieldError::new(
                    "storage.url",
                    format!("database name {db:?} may only hold letters, digits and _"),
                ));
            }
            return Ok(StorageTarget::ClickHouse {
                url: format!("{scheme}://{hostport}"),
                database: db.to_string(),
            });
        }
        Err(FieldError::new(
            "storage.url",
            format!(
                "must be sqlite:PATH, clickhouse://HOST:PORT/DATABASE or \
                 clickhouses://HOST:PORT/DATABASE (HTTPS), got {:?}",
                self.url
            ),
        ))
    }
}

/// An opened store, as both traits.
#[derive(Clone)]
pub struct Stores {
    /// Samples, series, events, batch marks.
    pub storage: Arc<dyn Storage>,
    /// Alert state and history.
    pub alerts: Arc<dyn AlertStore>,
    /// Who changed what through the API.
    pub audit: Arc<dyn AuditLog>,
    /// API tokens made through the API.
    pub tokens: Arc<dyn TokenStore>,
    /// Clusters registered through the API.
    pub registry: Arc<dyn RegistryStore>,
}

/// How long a start waits between attempts to reach a store that is not up yet.
const OPEN_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(10));

/// Opens `cfg`'s store and migrates its schema (idempotent). An invalid config is
/// [`StorageError::InvalidConfig`]; a store that cannot be reached is
/// [`StorageError::Unavailable`] (see [`open_when_ready`]).
pub async fn open(cfg: &StorageConfig) -> Result<Stores, StorageError> {
    let invalid = |e: &dyn std::fmt::Display| StorageError::InvalidConfig(e.to_string());
    let stores = match cfg.target().map_err(|e| invalid(&e))? {
        StorageTarget::Sqlite(path) => {
            let s = Arc::new(SqliteStorage::open(&path, cfg.retention.clone())?);
            Stores {
                storage: s.clone(),
                alerts: s.clone(),
                audit: s.clone(),
                tokens: s.clone(),
                registry: s,
            }
        }
        StorageTarget::ClickHouse { url, database } => {
            let mut ch = cfg.clickhouse.clone();
            ch.url = url;
            ch.database = database;
            ch.retention = cfg.retention.clone();
            let s = Arc::new(ClickHouseStorage::new(ch)?);
            Stores {
                storage: s.clone(),
                alerts: s.clone(),
                audit: s.clone(),
                tokens: s.clone(),
                registry: s,
            }
        }
    };
    let backend = stores.storage.backend();
    stores.storage.migrate().await?;
    tracing::info!(backend, "storage ready");
    Ok(stores)
}

/// [`open`], retrying while a ClickHouse server is unreachable, so that a service
/// may start before its database; any other error ends the start (a SQLite file
/// that cannot be opened will not open by waiting). `None` when `shutdown` fires
/// while waiting.
pub async fn open_when_ready(
    cfg: &StorageConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Stores>, StorageError> {
    let server = matches!(cfg.target(), Ok(StorageTarget::ClickHouse { .. }));
    until_ok(
        OPEN_RETRY,
        shutdown,
        "open the store",
        |e: &StorageError| server && e.is_retryable(),
        || open(cfg),
    )
    .await
    .transpose()
}
