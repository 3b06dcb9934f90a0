//! Shared plumbing of the etcdmon services (agent, collector, alerter).
//!
//! Every service has the same shape: it reads a typed config through
//! [`config::load`] (file < environment < flags), starts tracing with
//! [`telemetry::init`], creates one shutdown token with
//! [`shutdown::token_on_signals`], and serves its own `/metrics` and
//! `/healthz` through [`ops::router`]. Keeping these here means the three
//! binaries behave alike for operators.

pub mod config;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

/// The cluster name used when none is configured: the agent's
/// `identity.cluster` and `etcdmon up --cluster` default to it, so that a first
/// look through either names the local cluster the same way.
pub const DEFAULT_CLUSTER: &str = "local";
