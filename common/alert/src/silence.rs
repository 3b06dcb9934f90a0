//! Silences: matchers plus a time range; matching alerts are not notified meanwhile.
//! The API creates and expires them, the store keeps them (its row holds the
//! matchers as JSON text), the alerter applies them.

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_is_pending_then_active_then_expired() {
        let s = Silence {
            id: "s1".into(),
            matchers: vec![Matcher::parse("cluster=\"prod\"").unwrap()],
            starts_ms: 100,
            ends_ms: 200,
            created_by: "ops".into(),
            comment: "upgrade".into(),
            updated_ms: 1,
        };
        assert_eq!(s.state_at(99), "pending");
        assert!(!s.active_at(99));
        assert_eq!(s.state_at(100), "active");
        assert!(s.active_at(199));
        assert_eq!(s.state_at(200), "expired");
        assert!(!s.active_at(200));
    }
}
