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
