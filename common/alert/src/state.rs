//! The two small enums every part agrees on: whether an alert is firing or
//! resolved, and how urgent its rule says it is. Both travel as lowercase words
//! (JSON, labels, store columns, message ids).

use serde::{Deserialize, Serialize};

/// Whether a rule says an alert is active or over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The rule's condition holds (for at least its `for` duration).
    Firing,
    /// The rule's condition no longer holds.
    Resolved,
}

impl AlertState {
    /// `"firing"` or `"resolved"`, as in JSON, the store and message ids.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    /// Whether this is [`AlertState::Firing`].
    pub fn is_firing(self) -> bool {
        self == AlertState::Firing
    }
}

impl std::fmt::Display for AlertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlertState {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "firing" => Ok(AlertState::Firing),
            "resolved" => Ok(AlertState::Resolved),
            other => Err(UnknownName {
                what: "alert state",
                name: other.to_owned(),
            }),
        }
    }
}

/// Severity of a rule, and the `severity` label of its alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Someone must act now.
    Critical,
    /// Needs attention soon.
    Warning,
    /// For context.
    Info,
}

impl Severity {
    /// Lowercase name, as in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no state or severity (read back from a store, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What was expected (`alert state`).
    pub what: &'static str,
    /// The text found.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_words() {
        for s in [AlertState::Firing, AlertState::Resolved] {
            assert_eq!(s.as_str().parse::<AlertState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(AlertState::Firing.is_firing() && !AlertState::Resolved.is_firing());
        let e = "pending".parse::<AlertState>().unwrap_err();
        assert_eq!(e.to_string(), "unknown alert state \"pending\"");
        assert_eq!(Severity::Critical.to_string(), "critical");
        assert_eq!(
            serde_json::from_str::<Severity>("\"info\"").unwrap(),
            Severity::Info
        );
    }
}
