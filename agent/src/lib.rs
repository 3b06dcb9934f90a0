//! etcdmon-agent: runs beside one etcd member and gathers everything the
//! collector needs to judge it.
//!
//! Each collector in [`collectors`] produces one kind of [`Report`] body on
//! its own interval; [`runner`] schedules them, stamps each result with the
//! member's identity and the time, records failures in the agent's own
//! metrics ([`selfmetrics`]) and hands the report to a sink. The sink is a
//! bounded channel: `collect --once` prints what arrives, `run` forwards it.
//!
//! [`Report`]: etcdmon_proto::v1::Report

pub mod classify;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod output;
pub mod runner;
pub mod selfmetrics;
pub mod shared;
pub mod spool;
pub mod stream;
pub mod tls;

pub use config::AgentConfig;
