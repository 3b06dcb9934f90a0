//! What the dispatcher hands to a receiver: one notification for one group of alerts.

use std::collections::BTreeMap;
use std::time::Duration;

use etcdmon_alert::AlertState;

/// One alert as a receiver sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NotifiedAlert {
    /// Stable id of the alert.
    pub fingerprint: String,
    /// The transition this notification reports.
    pub transition: u64,
    /// Firing or resolved.
    pub status: AlertState,
    /// Labels (cluster, member, rule, severity, ...).
    pub labels: BTreeMap<String, String>,
    /// Annotations (summary, description, runbook_url).
    pub annotations: BTreeMap<String, String>,
    /// The measured value (NaN when none).
    pub value: f64,
    /// When it started firing, ms since the Unix epoch.
    pub starts_at_ms: i64,
    /// When it resolved, ms since the Unix epoch; `None` while firing.
    pub ends_at_ms: Option<i64>,
    /// Whether someone acknowledged it.
    pub acknowledged: bool,
    /// Link to the alert in etcdmon's UI/API.
    pub generator_url: String,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// New alerts fired or alerts resolved in the group.
    New,
    /// Nothing changed but `repeat_interval` passed and the group still fires.
    Repeat,
    /// Not acknowledged in time: sent to the next level of the escalation policy.
    Escalation,
    /// Someone acknowledged the group's alerts (PagerDuty gets an `acknowledge` event).
    Acknowledged,
    /// An alert changed state too often: it is reported once as flapping and its
    /// notifications are held until it has been stable for a while.
    Flapping,
}

impl Reason {
    /// Lowercase name, as stored in the delivery history.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Repeat => "repeat",
            Reason::Escalation => "escalation",
            Reason::Acknowledged => "acknowledged",
            Reason::Flapping => "flapping",
        }
    }
}

/// One message to one receiver about one group of alerts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notification {
    /// Receiver name (from the config).
    pub receiver: String,
    /// Stable id of the group within the route tree: the route node's position and
    /// the grouping labels, e.g. `0.1:{cluster="prod",rule="no_leader"}`. PagerDuty
    /// derives its `dedup_key` from it, so trigger, acknowledge and resolve of one
    /// group match.
    pub group_key: String,
    /// The labels the group is grouped by, with their values.
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert of the group has with the same value.
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert of the group has with the same value.
    pub common_annotations: BTreeMap<String, String>,
    /// `firing` when at least one alert fires, else `resolved`.
    pub status: AlertState,
    /// Why it is sent.
    pub reason: Reason,
    /// The alerts, firing first.
    pub alerts: Vec<NotifiedAlert>,
    /// Base URL of etcdmon's UI/API for links.
    pub external_url: String,
}

impl Notification {
    /// Alerts that fire.
    pub fn firing(&self) -> impl Iterator<Item = &NotifiedAlert> {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertState::Firing)
    }

    /// Alerts that resolved.
    pub fn resolved(&self) -> impl Iterator<Item = &NotifiedAlert> {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertState::Resolved)
    }
}

/// Why a receiver could not deliver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotifyError {
    /// May succeed later (network error, 429, 5xx, SMTP 4xx). `retry_after` is the
    /// receiver's own hint (HTTP `Retry-After`), which the dispatcher honours.
    #[error("{reason} (will retry)")]
    Retryable {
        /// What happened.
        reason: String,
        /// How long the receiver asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Will not succeed however often it is tried (400, 401, 403, 404, SMTP 5xx, invalid
    /// address): recorded and given up.
    #[error("{0} (not retried)")]
    Permanent(String),
}

impl NotifyError {
    /// Whether the dispatcher should try again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NotifyError::Retryable { .. })
    }
}

/// A receiver integration: turns a [`Notification`] into one request (or email).
///
/// Implementations do one attempt and classify the failure; retries, backoff and the
/// record of every attempt are the dispatcher's job, the same for every receiver.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// `webhook`, `slack`, `pagerduty` or `email`.
    fn kind(&self) -> &'static str;

    /// Delivers one notification. `Ok` carries a short detail for the history (e.g. the
    /// HTTP status or PagerDuty's `dedup_key`).
    async fn notify(&self, notification: &Notification) -> Result<String, NotifyError>;
}
