//! `[peers]`: TCP connect time to the other members.

use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// TCP round-trip to peers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often. Every second by default: the collector names a member cut
    /// off from its peers from these rounds before etcd's own election
    /// timeout notices (`member_isolated`), and a TCP connect per peer per
    /// second costs etcd nothing.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Connect timeout per peer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }
}

impl PeersConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("peers.interval", self.interval)?;
        positive("peers.timeout", self.timeout)
    }
}
