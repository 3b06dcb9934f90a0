//! `[host]`: the host's USE metrics and the etcd process.

use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// Host USE metrics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Name of the etcd process, used when neither a pid file nor the
    /// endpoint's port identifies it.
    pub process_name: String,
    /// Report only these network interfaces; empty means all.
    pub interfaces: Vec<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            process_name: "etcd".into(),
            interfaces: Vec::new(),
        }
    }
}

impl HostConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("host.interval", self.interval)
    }
}
