//! Storage of etcdmon: samples, series metadata, events and batch marks,
//! behind one trait with two backends.
//!
//! - [`clickhouse`]: the production store (scales out; works on ClickHouse
//!   18.16 as Debian packages it and on current releases).
//! - [`sqlite`]: the embedded default (bundled SQLite, WAL mode), so that a
//!   single machine needs nothing installed.
//!
//! ## Delivery guarantee
//! The collector acknowledges an agent's batch only after [`Storage::write`]
//! returned for the [`WriteSet`] that holds its rows *and* its
//! [`BatchMark`]. A batch whose mark is stored is never stored again
//! ([`Storage::stored_through`] lets the collector ack a resend without
//! writing). Where a backend cannot write rows and mark atomically
//! (ClickHouse), a crash between the two leads to a second copy of
//! identical rows; every row has a natural key (series + timestamp) and
//! every query deduplicates on it, so nothing is counted twice either way.

pub mod alert_store;
pub mod audit;
pub mod clickhouse;
pub mod model;
pub mod open;
pub mod registry;
pub mod sqlite;
pub mod tokens;

pub use alert_store::*;
pub use audit::{AuditLog, AuditQuery, AuditRow};
pub use model::*;
pub use registry::{RegistrationRow, RegistryStore};
pub use tokens::{TokenRow, TokenStore};

use std::time::Duration;

/// Why a storage call failed; the caller branches on [`StorageError::is_retryable`].
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be reached or timed out: try again later,
    /// keeping the data (the agent keeps unacknowledged batches).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database refused the data or the query: retrying will not help.
    #[error("storage rejected the request: {0}")]
    Rejected(String),
    /// Creating or upgrading the schema failed.
    #[error("schema migration failed: {0}")]
    Migration(String),
    /// A query parameter was invalid (bad range, unknown metric).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The storage config cannot work (names the field); nothing was opened.
    #[error("invalid storage config: {0}")]
    InvalidConfig(String),
}

impl StorageError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

/// Result of a storage call.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A time range whose `to` is before its `from` is the caller's mistake.
pub(crate) fn check_range(from_ms: i64, to_ms: i64) -> Result<()> {
    if to_ms < from_ms {
        return Err(StorageError::InvalidQuery(format!(
            "`to` ({to_ms}) is before `from` ({from_ms})"
        )));
    }
    Ok(())
}

/// The error of a query that matches more than `max` points, on every backend.
pub(crate) fn too_many_points(max: usize) -> StorageError {
    StorageError::InvalidQuery(format!(
        "the query matches more than {max} points; narrow the range or use a larger step"
    ))
}

/// Queries [`Storage::query_many`] runs at once by default.
const CONCURRENT_QUERIES: usize = 4;

/// [`Storage::query_many`] as one [`Storage::query`] per query, a few at a time.
pub(crate) async fn query_each<S: Storage + ?Sized>(
    storage: &S,
    queries: &[PointQuery],
) -> Result<Vec<Vec<SeriesPoints>>> {
    use futures::{StreamExt as _, TryStreamExt as _};
    // Owned queries: a stream of borrowed ones trips the compiler's
    // higher-ranked `Send` check inside `async_trait`.
    futures::stream::iter(queries.iter().cloned())
        .map(|q| async move { storage.query(&q).await })
        .buffered(CONCURRENT_QUERIES)
        .try_collect()
        .await
}

/// The storage every etcdmon service writes to and reads from.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Backend name for logs and metrics: `clickhouse` or `sqlite`.
    fn backend(&self) -> &'static str;

    /// Creates or upgrades the schema; idempotent, run at start-up.
    async fn migrate(&self) -> Result<()>;

    /// The highest batch sequence stored for `agent_id`, 0 when none.
    async fn stored_through(&self, agent_id: &str) -> Result<u64>;

    /// Stores rows and marks. Rows are written before marks, so a stored
    /// mark always means its rows are stored.
    async fn write(&self, set: &WriteSet) -> Result<()>;

    /// How many `write` calls may usefully run at once. A caller that
    /// writes concurrently writes rows and marks in separate calls, and a
    /// batch's mark only after its rows and every earlier mark are stored.
    fn concurrent_writes(&self) -> usize {
        1
    }

    /// Points of `query.metric` in `[from, to]`, one list per series,
    /// deduplicated on (series, timestamp); with a step, the last value of
    /// each step-aligned bucket.
    async fn query(&self, query: &PointQuery) -> Result<Vec<SeriesPoints>>;

    /// [`Storage::query`] for each of `queries`, answers in the same order.
    /// Fleet reads ask the same question of many clusters; a store that can
    /// answer those in one statement overrides this, the default asks a few
    /// at a time.
    async fn query_many(&self, queries: &[PointQuery]) -> Result<Vec<Vec<SeriesPoints>>> {
        query_each(self, queries).await
    }

    /// Stored samples per (agent-visible) member and metric in a time range;
    /// used by tests and the API to verify completeness. Deduplicated like
    /// [`Storage::query`].
    async fn count_samples(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SampleCount>>;

    /// Deletes data older than the configured retention.
    async fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome>;

    /// The stored events of `cluster` in `[from_ms, to_ms]` (member down and
    /// up, leader changes, alarms, membership, agents disconnecting), newest
    /// first, at most `limit`; an event stored twice (a resent batch) is one.
    async fn events(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>>;

    /// Stores where a member runs (region, node, tags), replacing an older
    /// description of the same member. Kept regardless of retention: a member
    /// that stopped reporting long ago still groups its old samples.
    async fn record_member(&self, info: &MemberInfo) -> Result<()>;

    /// The latest description of every member of `cluster` (every cluster when
    /// `None`), ordered by cluster and member.
    async fn member_info(&self, cluster: Option<&str>) -> Result<Vec<MemberInfo>>;
}

/// How long each kind of data is kept.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Raw samples.
    #[serde(with = "humantime_serde")]
    pub samples: Duration,
    /// 1-minute rollups.
    #[serde(with = "humantime_serde")]
    pub rollup_1m: Duration,
    /// 1-hour rollups.
    #[serde(with = "humantime_serde")]
    pub rollup_1h: Duration,
    /// Events (member up/down, leader changes, alarms).
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Alert history: transitions, delivery attempts and acknowledgements older than
    /// this, and silences that ended before it. The latest transition of an alert that
    /// is still firing (and its acknowledgement) is kept whatever its age, because the
    /// alerter restores its state from it.
    #[serde(with = "humantime_serde")]
    pub alerts: Duration,
    /// The audit log (API changes and refused logins).
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            samples: Duration::from_secs(7 * DAY),
            rollup_1m: Duration::from_secs(30 * DAY),
            rollup_1h: Duration::from_secs(365 * DAY),
            events: Duration::from_secs(90 * DAY),
            alerts: Duration::from_secs(90 * DAY),
            audit: Duration::from_secs(365 * DAY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error as DeError, MapDeserializer};
    use serde::Deserialize as _;

    fn retention(fields: &[(&'static str, &'static str)]) -> Retention {
        Retention::deserialize(MapDeserializer::<_, DeError>::new(fields.iter().copied()))
            .expect("valid retention")
    }

    #[test]
    fn retention_configs_written_before_alerts_existed_still_parse() {
        const DAY: u64 = 86_400;
        let old = retention(&[("samples", "3d"), ("events", "30d")]);
        assert_eq!(old.samples, Duration::from_secs(3 * DAY));
        assert_eq!(old.alerts, Duration::from_secs(90 * DAY));
        let new = retention(&[("alerts", "14d")]);
        assert_eq!(new.alerts, Duration::from_secs(14 * DAY));
        assert_eq!(new.events, Duration::from_secs(90 * DAY));
    }
}
