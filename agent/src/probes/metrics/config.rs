//! `[metrics]`: the scrape of etcd's own Prometheus endpoint.

use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// Scrape of etcd's own metrics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Give up on a scrape after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Refuse payloads larger than this many bytes (memory bound).
    pub max_payload_bytes: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(4),
            max_payload_bytes: 16 * 1024 * 1024,
        }
    }
}

impl MetricsConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("metrics.interval", self.interval)?;
        positive("metrics.timeout", self.timeout)?;
        if self.max_payload_bytes == 0 {
            return Err(FieldError::new(
                "metrics.max_payload_bytes",
                "must be positive",
            ));
        }
        Ok(())
    }
}
