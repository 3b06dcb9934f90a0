//! Silences: matchers plus a time range; matching alerts are not notified meanwhile.

use etcdmon_storage::SilenceRow;
use serde::{Deserialize, Serialize};

use crate::matcher::Matcher;

/// A silence as the engine and the API use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Unique id.
    pub id: String,
    /// Every matcher must match for an alert to be silenced (at least one).
    pub matchers: Vec<Matcher>,
    /// Start, ms since the Unix epoch.
    pub starts_ms: i64,
    /// End, ms since the Unix epoch.
    pub ends_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Version (ms of the last change).
    pub updated_ms: i64,
}

impl Silence {
    /// Whether it mutes alerts at `now_ms`.
    pub fn active_at(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    /// `active`, `pending` or `expired` at `now_ms`.
    pub fn state_at(&self, now_ms: i64) -> &'static str {
        if now_ms < self.starts_ms {
            "pending"
        } else if now_ms < self.ends_ms {
            "active"
        } else {
            "expired"
        }
    }

    /// The stored form.
    pub fn to_row(&self) -> SilenceRow {
        SilenceRow {
            id: self.id.clone(),
            matchers_json: serde_json::to_string(&self.matchers).unwrap_or_default(),
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
            created_by: self.created_by.clone(),
            comment: self.comment.clone(),
            updated_ms: self.updated_ms,
        }
    }

    /// From the stored form; `None` (logged by the caller) when its matchers no longer
    /// parse, so one bad row cannot stop the alerter.
    pub fn from_row(row: &SilenceRow) -> Result<Self, String> {
        let matchers: Vec<Matcher> = serde_json::from_str(&row.matchers_json)
            .map_err(|e| format!("silence {}: invalid matchers: {e}", row.id))?;
        Ok(Self {
            id: row.id.clone(),
            matchers,
            starts_ms: row.starts_ms,
            ends_ms: row.ends_ms,
            created_by: row.created_by.clone(),
            comment: row.comment.clone(),
            updated_ms: row.updated_ms,
        })
    }
}
