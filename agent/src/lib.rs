//! etcdmon-agent: runs beside one etcd member and gathers everything the
//! collector needs to judge it.
//!
//! ```text
//! probes (status, metrics, host, fsync, peers, certs; each on its interval)
//!   └─> runner: stamps identity and time, counts failures (selfmetrics)
//!         └─> bounded channel ─> stream: batches ─> spool ─gRPC─> collector
//!                               (or `collect`: printed here)
//! ```
//!
//! Each probe in [`probes`] produces one kind of [`Report`] body on its own
//! interval; [`runner`] schedules them, stamps each result with the member's
//! identity and the time, records failures in the agent's own metrics
//! ([`selfmetrics`]) and hands the report to a sink. [`Agent::serve`] starts
//! the probes and the stream to the collector, and [`RunningAgent::drain`]
//! stops them without losing a batch; the `etcdmon-agent` binary and
//! `etcdmon up` both run agents that way.
//!
//! [`Report`]: etcdmon_proto::v1::Report

pub mod allocator;
pub mod cli;
pub mod config;
pub mod error_kind;
pub mod member_view;
pub mod output;
pub mod probes;
pub mod runner;
pub mod selfmetrics;
pub mod service;
pub mod spool;
pub mod stream;
pub mod tls;

pub use config::AgentConfig;
pub use probes::host::process::{
    apply_local_etcd, discover_local_etcd, fill_from_local_etcd, LocalEtcd,
};
pub use service::{Agent, RunningAgent};
