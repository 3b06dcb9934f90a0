//! `[status]`: status, alarms, members and health reads through etcd's gRPC API.

use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// Status through etcd's gRPC API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A call with no answer after this long is recorded as a timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline of one `HashKV` call for the collector's consistency check
    /// (it reads the member's whole store; runs beside the rounds).
    #[serde(with = "humantime_serde")]
    pub hash_timeout: Duration,
    /// Key read by the linearizable and serializable health reads (read only;
    /// it need not exist).
    pub health_key: String,
    /// Keep a watch on `health_key` open so that a member that exits is noticed
    /// the moment its connection closes, not at the next round (see
    /// docs/agent.md, "Event-driven detection").
    pub liveness_watch: bool,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
            hash_timeout: Duration::from_secs(60),
            health_key: "health".into(),
            liveness_watch: true,
        }
    }
}

impl StatusConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("status.interval", self.interval)?;
        positive("status.timeout", self.timeout)?;
        positive("status.hash_timeout", self.hash_timeout)
    }
}
