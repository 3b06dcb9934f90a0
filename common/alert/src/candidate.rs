//! What the collector's rules say about one alert at one moment: the message on the
//! bus between collector and alerter, serialized as JSON.
//!
//! JSON rather than a binary format because the stream is an operator's view into
//! alerting too (`nats stream view ETCDMON_ALERTS` shows readable candidates), the volume
//! is tiny (a candidate per alert state change, plus repeats), and unknown fields added
//! by a newer collector are ignored by an older alerter during a rolling upgrade.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AlertState, Labels};

/// One alert candidate: what a rule says about one alert at one moment.
///
/// The collector computes it; the alerter decides what to do with it (pending, firing,
/// grouping, silences, notifications). A candidate is self-contained: the alerter needs
/// nothing else to render a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertCandidate {
    /// Stable id of the alert: a hash of the rule and its identifying labels, computed by
    /// the caller. The same alert keeps the same fingerprint across restarts.
    pub fingerprint: String,
    /// Firing or resolved.
    pub state: AlertState,
    /// Identifying and routing labels: `cluster`, `member`, `rule`, `severity`, ...
    pub labels: Labels,
    /// Human-readable text: `summary`, `description`, `runbook_url`.
    pub annotations: BTreeMap<String, String>,
    /// The measured value that made the rule fire or resolve. Non-finite values travel
    /// as the strings `"NaN"`, `"+Inf"` and `"-Inf"` (JSON has no such numbers).
    #[serde(with = "float")]
    pub value: f64,
    /// When the current state began, in ms since the Unix epoch.
    pub active_since_ms: i64,
    /// Increases with every state change of this fingerprint, so
    /// `(fingerprint, transition)` identifies one transition; repeats of the same state
    /// carry the same number.
    pub transition: u64,
    /// When the rule was evaluated, in ms since the Unix epoch.
    pub evaluated_ms: i64,
}

impl AlertCandidate {
    /// The `cluster` label, or `""` when there is none.
    pub fn cluster(&self) -> &str {
        self.labels.get("cluster").map_or("", String::as_str)
    }

    /// The JetStream message id, `{fingerprint}-{transition}-{state}`.
    ///
    /// A publish retried after a lost acknowledgement carries the same id, so the
    /// stream stores it once (within its duplicate window). Repeats of the same state
    /// also share the id and collapse, which is what the alerter wants: a repeat tells it
    /// nothing new.
    pub fn message_id(&self) -> String {
        format!("{}-{}-{}", self.fingerprint, self.transition, self.state)
    }
}

/// Serde for an `f64` that may be NaN or infinite (JSON numbers cannot).
mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value > 0.0 {
            serializer.serialize_str("+Inf")
        } else {
            serializer.serialize_str("-Inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        match Repr::deserialize(deserializer)? {
            Repr::Number(n) => Ok(n),
            Repr::Text(text) => match text.as_str() {
                "NaN" => Ok(f64::NAN),
                "+Inf" | "Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "invalid value {other:?}: expected a number, \"NaN\", \"+Inf\" or \"-Inf\""
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(cluster: &str) -> AlertCandidate {
        AlertCandidate {
            fingerprint: "f00d".into(),
            state: AlertState::Firing,
            labels: crate::labels(&[("cluster", cluster), ("rule", "NoLeader")]),
            annotations: BTreeMap::new(),
            value: 1.5,
            active_since_ms: 1,
            transition: 3,
            evaluated_ms: 2,
        }
    }

    #[test]
    fn message_id_and_cluster() {
        let c = candidate("eu.prod *1");
        assert_eq!(c.message_id(), "f00d-3-firing");
        assert_eq!(c.cluster(), "eu.prod *1");
        let mut no_cluster = candidate("x");
        no_cluster.labels.clear();
        assert_eq!(no_cluster.cluster(), "");
    }

    #[test]
    fn json_round_trip_with_lowercase_state_and_non_finite_values() {
        let mut c = candidate("c1");
        c.state = AlertState::Resolved;
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""state":"resolved""#), "{json}");
        assert_eq!(serde_json::from_str::<AlertCandidate>(&json).unwrap(), c);

        for (value, text) in [
            (f64::INFINITY, "\"+Inf\""),
            (f64::NEG_INFINITY, "\"-Inf\""),
            (f64::NAN, "\"NaN\""),
        ] {
            c.value = value;
            let json = serde_json::to_string(&c).unwrap();
            assert!(json.contains(&format!("\"value\":{text}")), "{json}");
            let back: AlertCandidate = serde_json::from_str(&json).unwrap();
            assert!(
                back.value.to_bits() == value.to_bits() || value.is_nan() && back.value.is_nan()
            );
        }
        let bad = serde_json::to_string(&candidate("c1"))
            .unwrap()
            .replace("1.5", "\"many\"");
        let err = serde_json::from_str::<AlertCandidate>(&bad).unwrap_err();
        assert!(err.to_string().contains("many"), "{err}");
    }
}
