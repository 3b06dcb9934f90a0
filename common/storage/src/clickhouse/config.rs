//! Settings of the ClickHouse backend.

use std::time::Duration;

use crate::{Retention, StorageError};

/// How to reach ClickHouse and how long to keep data there.
///
/// Every field has a default, so an empty table (`[storage.clickhouse]`) means "a local
/// server on the default HTTP port, database `etcdmon`". Unknown fields are errors, so a
/// misspelt setting is reported instead of silently ignored.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// Base URL of ClickHouse's HTTP interface (not the native TCP port), e.g.
    /// `http://clickhouse.monitoring.svc:8123`, or its HTTPS interface
    /// (`https_port`, e.g. `https://clickhouse.example.internal:8443`).
    pub url: String,
    /// PEM file of the CA that signed the server's certificate, for `https://`;
    /// unset: the system's trusted roots (Debian's `ca-certificates`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Database holding etcdmon's tables; created by `migrate` if missing. Letters,
    /// digits and `_` only.
    pub database: String,
    /// User to authenticate as (sent in the `X-ClickHouse-User` header).
    pub user: String,
    /// Password of `user`; empty for none. Never printed by `Debug`. Prefer
    /// `password_file`: a config holding the password must be kept secret.
    pub password: String,
    /// File holding the password of `user` (its trailing newline is ignored);
    /// instead of `password`. Read when the store is opened.
    pub password_file: Option<std::path::PathBuf>,
    /// How long raw samples, rollups and events are kept. Enforced by dropping whole
    /// daily (monthly for the 1-hour rollup) partitions, so data lives up to one
    /// partition longer than this.
    pub retention: Retention,
    /// Upper bound of one `write` call: all INSERTs of the set together, including
    /// connecting. A server that does not answer in time makes `write` fail with a
    /// retryable error, so the caller keeps the batch and tries again later.
    #[serde(with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// Upper bound of one read or DDL statement (queries, counts, migrations,
    /// retention); on expiry the call fails with a retryable error.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Most points one `query` may return; a query that would return more fails with
    /// an invalid-query error asking for a larger step, so a careless request cannot
    /// exhaust the collector's memory.
    pub max_points: usize,
    /// Compress INSERT bodies with ClickHouse's LZ4 block format (`decompress=1`).
    /// Works with 18.16 and current servers; turn off only for a proxy that cannot pass
    /// the compressed body through.
    pub lz4: bool,
    /// INSERTs the collector's writer may have running at once. ClickHouse works one
    /// INSERT on about one core; the writer starts another beside a running one only
    /// when it has gathered `ingest.max_write_rows` rows meanwhile, i.e. for load that
    /// even the largest INSERTs cannot keep up with one at a time. Batch marks are
    /// still written one write after the other.
    pub concurrent_inserts: usize,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            ca_file: None,
            database: "etcdmon".to_owned(),
            user: "default".to_owned(),
            password: String::new(),
            password_file: None,
            retention: Retention::default(),
            insert_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            max_points: 1_000_000,
            lz4: true,
            concurrent_inserts: 2,
        }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configs end up in start-up logs; the password must not.
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("password_file", &self.password_file)
            .field("retention", &self.retention)
            .field("insert_timeout", &self.insert_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("max_points", &self.max_points)
            .field("lz4", &self.lz4)
            .field("concurrent_inserts", &self.concurrent_inserts)
            .finish()
    }
}

impl ClickHouseConfig {
    /// The password: `password`, or the contents of `password_file`.
    pub fn resolved_password(&self) -> Result<String, StorageError> {
        let inline = (!self.password.is_empty())
            .then(|| etcdmon_core::secret::Secret::new(self.password.clone()));
        etcdmon_core::secret::resolve(
            inline.as_ref(),
            self.password_file.as_deref(),
            "storage.clickhouse.password",
            "storage.clickhouse.password_file",
        )
        .map(|p| p.map(|p| p.expose().to_owned()).unwrap_or_default())
        .map_err(|e| StorageError::InvalidConfig(e.to_string()))
    }

    /// Checks the values `serde` cannot: URL scheme, database name, non-zero timeouts.
    /// The error names the field.
    pub fn validate(&self) -> Result<(), StorageError> {
        let invalid = |field: &str, why: String| {
            Err(StorageError::Rejected(format!(
                "invalid ClickHouse config: {field}: {why}"
            )))
        };
        let Some(rest) = ["http://", "https://"]
            .into_iter()
            .find_map(|scheme| self.url.strip_prefix(scheme))
        else {
            return invalid(
                "url",
                format!("{:?} must start with http:// or https://", self.url),
            );
        };
        if self.ca_file.is_some() && !self.url.starts_with("https://") {
            return invalid(
                "ca_file",
                "is only used for an https:// server (clickhouses:// in storage.url)".to_owned(),
            );
        }
        if rest.is_empty() || rest.starts_with('/') {
            return invalid("url", format!("{:?} has no host", self.url));
        }
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(
                "database",
                format!(
                    "{:?} must be non-empty and contain only letters, digits and _",
                    self.database
                ),
            );
        }
        if self.user.is_empty() {
            return invalid("user", "must not be empty".to_owned());
        }
        if self.insert_timeout.is_zero() {
            return invalid("insert_timeout", "must be positive".to_owned());
        }
        if self.query_timeout.is_zero() {
            return invalid("query_timeout", "must be positive".to_owned());
        }
        if self.max_points == 0 {
            return invalid("max_points", "must be positive".to_owned());
        }
        if !(1..=8).contains(&self.concurrent_inserts) {
            return invalid("concurrent_inserts", "must be 1 to 8".to_owned());
        }
        Ok(())
    }
}
