//! etcdmon-collector: accepts agent streams, stores what they carry, keeps
//! the live state of every cluster, judges it with the rules and serves the API.
//!
//! ```text
//! agent ══gRPC══> ingest session ──rows──> writer ──batched writes──> storage
//!                      │ (acknowledged only once stored)
//!                      ▼
//!                 live state ──> rules (1 s and on change) ──transitions──> candidates ──> bus
//!                      │
//!                      └──> api (REST, page), /metrics, /healthz
//! ```
//!
//! [`Collector::serve`] starts all of it on listeners the caller bound and
//! returns a [`Running`] collector whose [`Running::drain`] stops it in order
//! (see [`service`]); the standalone `etcdmon-collector`, `etcdmon up`, the
//! benchmarks and the tests all start it that way.

pub mod api;
pub mod candidates;
pub mod cli;
pub mod config;
pub mod consistency;
pub mod exporter;
pub mod feed;
pub mod fleet_query;
pub mod glob;
pub mod ingest;
pub mod metrics;
pub mod rates;
pub mod registry;
pub mod retention;
pub mod rules;
pub mod service;
pub mod state;
pub mod writer;

pub use service::{AlertSink, Collector, Listeners, Running};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
