//! The alerter's configuration. Sources, later ones winning: TOML file,
//! `ETCDMON_ALERTER_*` environment (nested with `__`), flags. See
//! `deploy/config/alerter.example.toml` (parsed by a test) and `docs/notifications.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcdmon_bus::jetstream::JetStreamConfig;
use etcdmon_core::config::FieldError;
use etcdmon_core::telemetry::LogConfig;
use etcdmon_storage::open::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::flap::FlapConfig;
use crate::inhibit::{default_rules, InhibitRule};
use crate::notification::Notifier;
use crate::receivers::{EmailConfig, PagerDutyConfig, SlackConfig, WebhookConfig};
use crate::route::{Route, RouteConfig};
use crate::template::Templates;

/// Environment prefix: `ETCDMON_ALERTER_NATS__URL` sets `nats.url`.
pub const ENV_PREFIX: &str = "ETCDMON_ALERTER_";

/// The whole alerter configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// Where candidates come from (the collector's `alerting.jetstream`, same values).
    pub nats: JetStreamConfig,
    /// Where alert state, history, silences and acknowledgements are kept: the same
    /// store as the collector's, whose API serves them.
    pub storage: StorageConfig,
    /// `/metrics` and `/healthz`.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Base URL of etcdmon's API for links in notifications.
    pub external_url: String,
    /// The routing tree.
    pub route: RouteConfig,
    /// Receivers, referenced by name from the routes.
    pub receivers: Vec<ReceiverConfig>,
    /// Inhibition rules; when absent, the built-in ones (see docs/notifications.md).
    /// An empty list disables inhibition.
    pub inhibit_rules: Option<Vec<InhibitRule>>,
    /// Flap detection.
    pub flapping: FlapConfig,
    /// Retries of failed deliveries.
    pub delivery: DeliveryConfig,
    /// How often silences and acknowledgements are re-read from the store.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        Self {
            nats: JetStreamConfig::default(),
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            external_url: "http://127.0.0.1:8080".into(),
            route: RouteConfig::default(),
            receivers: Vec::new(),
            inhibit_rules: None,
            flapping: FlapConfig::default(),
            delivery: DeliveryConfig::default(),
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// HTTP listener of `/metrics` and `/healthz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
        }
    }
}

/// Retry policy of every receiver.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts per notification before it is given up (recorded as `failed`).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles up to `max_backoff` (with jitter).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts (a receiver's `Retry-After` may ask for more, up
    /// to `max_retry_after`).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a receiver asking for longer is retried after this.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Notifications waiting per receiver; beyond it new ones are dropped and counted
    /// (they are sent after a restart, as nothing recorded them as delivered).
    pub queue: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            queue: 10_000,
        }
    }
}

/// One `[[receivers]]` entry: a name and exactly one integration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Name used by routes and escalation steps.
    pub name: String,
    /// Generic webhook (Alertmanager-compatible JSON, version 4).
    pub webhook: Option<WebhookConfig>,
    /// Slack incoming webhook.
    pub slack: Option<SlackConfig>,
    /// PagerDuty Events API v2.
    pub pagerduty: Option<PagerDutyConfig>,
    /// SMTP email.
    pub email: Option<EmailConfig>,
    /// Writes notifications to the alerter's log (for a first look and for tests).
    pub log: Option<LogReceiverConfig>,
}

/// The `log` receiver has no settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogReceiverConfig {}

/// The receivers built from the config, by name.
pub struct Receivers {
    /// Notifier per receiver name.
    pub notifiers: HashMap<String, Arc<dyn Notifier>>,
}

impl AlerterConfig {
    /// Checks the config and builds the route tree and the receivers; the error names
    /// the field.
    pub fn build(&self) -> Result<(Route, Receivers), FieldError> {
        self.storage.target()?;
        self.nats
            .validate()
            .map_err(|e| FieldError::new("nats", e.to_string()))?;
        if self.delivery.max_attempts == 0 {
            return Err(FieldError::new(
                "delivery.max_attempts",
                "must be at least 1",
            ));
        }
        if self.delivery.queue == 0 {
            return Err(FieldError::new("delivery.queue", "must be at least 1"));
        }
        if self.refresh_interval.is_zero() {
            return Err(FieldError::new("refresh_interval", "must be above 0"));
        }
        if self.receivers.is_empty() {
            return Err(FieldError::new(
                "receivers",
                "configure at least one [[receivers]] entry (see docs/notifications.md)",
            ));
        }
        let templates = Templates::default();
        let mut notifiers: HashMap<String, Arc<dyn Notifier>> = HashMap::new();
        for r in &self.receivers {
            if r.name.is_empty() {
                return Err(FieldError::new("receivers.name", "must not be empty"));
            }
            let built = build_receiver(r, &templates)?;
            if notifiers.insert(r.name.clone(), built).is_some() {
                return Err(FieldError::new(
                    "receivers.name",
                    format!("{:?} is defined twice", r.name),
                ));
            }
        }
        let route = Route::build(&self.route, &|n| notifiers.contains_key(n))
            .map_err(|e| FieldError::new("route", e))?;
        Ok((route, Receivers { notifiers }))
    }

    /// The inhibition rules in force.
    pub fn inhibit_rules(&self) -> Vec<InhibitRule> {
        self.inhibit_rules.clone().unwrap_or_else(default_rules)
    }
}

fn build_receiver(
    r: &ReceiverConfig,
    templates: &Templates,
) -> Result<Arc<dyn Notifier>, FieldError> {
    let field_err = |e: crate::receivers::BuildError| {
        FieldError::new("receivers", format!("{:?}: {e}", r.name))
    };
    let mut built: Vec<Arc<dyn Notifier>> = Vec::new();
    if let Some(c) = &r.webhook {
        built.push(c.build(templates).map_err(field_err)?);
    }
    if let Some(c) = &r.slack {
        built.push(c.build(templates).map_err(field_err)?);
    }
    if let Some(c) = &r.pagerduty {
        built.push(c.build(templates).map_err(field_err)?);
    }
    if let Some(c) = &r.email {
        built.push(c.build(templates).map_err(field_err)?);
    }
    if r.log.is_some() {
        built.push(Arc::new(crate::sender::LogNotifier));
    }
    match built.len() {
        1 => Ok(built.remove(0)),
        n => Err(FieldError::new(
            "receivers",
            format!(
                "{:?} must set exactly one of webhook, slack, pagerduty, email, log (it sets {n})",
                r.name
            ),
        )),
    }
}
