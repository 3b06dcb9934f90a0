//! Shared plumbing of the etcdmon services (agent, collector, alerter).
//!
//! Every service has the same shape: it reads a typed config through
//! [`config::load`] (file < environment < flags), starts tracing with
//! [`telemetry::init`], creates one shutdown token with
//! [`shutdown::token_on_signals`], and serves its own `/metrics` and
//! `/healthz` through [`ops::router`]. Keeping these here means the three
//! binaries behave alike for operators.

pub mod config;
pub mod http_server;
pub mod ops;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

/// The cluster name used when none is configured: the agent's
/// `identity.cluster` and `etcdmon up --cluster` default to it, so that a first
/// look through either names the local cluster the same way.
pub const DEFAULT_CLUSTER: &str = "local";

/// `name` as one safe token for a file name or a NATS subject: every character
/// other than ASCII letters, digits, `-` and `_` becomes `_` (so no `.`, `/`,
/// wildcard or whitespace survives). Different names may map to the same token.
pub fn safe_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Waits until `at_ms` (ms since the Unix epoch) when there is one, forever when
/// there is none: the branch of a `select!` that wakes a loop at its next
/// deadline (a rule's pending `for`, an inhibition hold). One ms is added because
/// the wall clock the loop then reads may lag the monotonic timer.
pub async fn sleep_until_epoch_ms(at_ms: Option<i64>) {
    let Some(at_ms) = at_ms else {
        return std::future::pending().await;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let wait = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0) + 1;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}
