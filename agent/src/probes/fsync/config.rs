//! `[fsync]`: the fsync probe of the data-dir filesystem.

use std::path::PathBuf;
use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// The fsync probe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsyncConfig {
    /// Run this collector (needs `etcd.data_dir` or `fsync.dir`).
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Directory of the probe file; defaults to `etcd.data_dir`.
    pub dir: Option<PathBuf>,
    /// Writes per round, each followed by fdatasync.
    pub writes: u32,
    /// Bytes per write; 2300 is the size etcd's WAL writes are typically near
    /// and what the well-known fio recipe uses.
    pub block_size: u32,
}

impl Default for FsyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            dir: None,
            writes: 20,
            block_size: 2300,
        }
    }
}

/// Largest fsync write accepted, so a typo cannot make the probe hurt etcd.
pub const MAX_FSYNC_BLOCK: u32 = 1024 * 1024;
/// Most fsync writes per round.
pub const MAX_FSYNC_WRITES: u32 = 1000;

impl FsyncConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("fsync.interval", self.interval)?;
        if !(1..=MAX_FSYNC_BLOCK).contains(&self.block_size) {
            return Err(FieldError::new(
                "fsync.block_size",
                format!(
                    "must be between 1 and {MAX_FSYNC_BLOCK}, got {}",
                    self.block_size
                ),
            ));
        }
        if !(1..=MAX_FSYNC_WRITES).contains(&self.writes) {
            return Err(FieldError::new(
                "fsync.writes",
                format!(
                    "must be between 1 and {MAX_FSYNC_WRITES}, got {}",
                    self.writes
                ),
            ));
        }
        Ok(())
    }
}
