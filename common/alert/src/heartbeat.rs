//! The heartbeat: a candidate every collector publishes every few seconds on the
//! same path as its alerts (outbox, bus, alerter), so that the alerter knows the
//! path works and can tell an external dead-man's switch so, as Alertmanager users
//! do with Prometheus's always-firing `Watchdog` alert. Nothing else is needed to
//! notice that the monitor itself went silent: an absent heartbeat is the signal.

use crate::{labels, AlertCandidate, AlertState};

/// The `rule` label of heartbeats and of the alerter's watchdog alert.
pub const HEARTBEAT_RULE: &str = "watchdog";

/// The label naming the collector that sent a heartbeat.
pub const COLLECTOR_LABEL: &str = "collector";

impl AlertCandidate {
    /// The heartbeat of collector `collector` at `now_ms`.
    ///
    /// Its transition is the time: every heartbeat gets its own message id, which
    /// JetStream would otherwise keep only once within its duplicate window.
    pub fn heartbeat(collector: &str, now_ms: i64) -> Self {
        Self {
            fingerprint: format!("{HEARTBEAT_RULE}/{collector}"),
            state: AlertState::Firing,
            labels: labels(&[
                ("rule", HEARTBEAT_RULE),
                ("severity", "none"),
                (COLLECTOR_LABEL, collector),
            ]),
            annotations: [(
                "summary".to_owned(),
                format!("heartbeat of collector {collector}"),
            )]
            .into(),
            value: 1.0,
            active_since_ms: now_ms,
            transition: u64::try_from(now_ms).unwrap_or(0),
            evaluated_ms: now_ms,
        }
    }

    /// Whether this is a collector's heartbeat rather than an alert.
    pub fn is_heartbeat(&self) -> bool {
        self.labels.get("rule").map(String::as_str) == Some(HEARTBEAT_RULE)
            && self.labels.contains_key(COLLECTOR_LABEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_recognised_and_each_has_its_own_message_id() {
        let a = AlertCandidate::heartbeat("c1", 1_000);
        let b = AlertCandidate::heartbeat("c1", 2_000);
        assert!(a.is_heartbeat() && b.is_heartbeat());
        assert_ne!(a.message_id(), b.message_id());
        assert_eq!(a.fingerprint, b.fingerprint);
        let mut alert = a.clone();
        alert.labels.remove(COLLECTOR_LABEL);
        assert!(
            !alert.is_heartbeat(),
            "a rule named watchdog is not a heartbeat"
        );
    }
}
