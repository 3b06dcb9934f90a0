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
use crate::inhibit::{default_rules, InhibitRule, InhibitTiming};
use crate::notification::Notifier;
use crate::receivers::{EmailConfig, PagerDutyConfig, SlackConfig, WebhookConfig};
use crate::route::{Route, RouteConfig};
use crate::template::Templates;
use crate::watchdog::WatchdogConfig;

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
    /// How long inhibition holds at its edges (`[inhibition]`).
    pub inhibition: InhibitTiming,
    /// Flap detection.
    pub flapping: FlapConfig,
    /// Retries of failed deliveries.
    pub delivery: DeliveryConfig,
    /// How often silences and acknowledgements are re-read from the store.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// The collectors' heartbeats: the watchdog alert for a dead-man's switch and
    /// the `monitoring_pipeline_down` page (`[watchdog]`).
    pub watchdog: WatchdogConfig,
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
            inhibition: InhibitTiming::default(),
            flapping: FlapConfig::default(),
            delivery: DeliveryConfig::default(),
            refresh_interval: Duration::from_secs(1),
            watchdog: WatchdogConfig::default(),
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
    /// Wait before the second attempt; doubles up to `max_backoff`, each wait drawn
    /// from the lower half of its step (jitter).
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

/// One `[[receivers]]` entry: a name and exactly one integration, e.g.
/// `name = "ops"` with a `[receivers.webhook]` table. Checked when the config is
/// read: an entry with no integration or two is an error naming `receivers`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "ReceiverEntry", into = "ReceiverEntry")]
pub struct ReceiverConfig {
    /// Name used by routes and escalation steps.
    pub name: String,
    /// The integration.
    pub kind: ReceiverKind,
}

/// The integration of a receiver.
#[derive(Debug, Clone)]
pub enum ReceiverKind {
    /// Generic webhook (Alertmanager-compatible JSON, version 4).
    Webhook(WebhookConfig),
    /// Slack incoming webhook.
    Slack(SlackConfig),
    /// PagerDuty Events API v2.
    PagerDuty(PagerDutyConfig),
    /// SMTP email.
    Email(EmailConfig),
    /// Writes notifications to the alerter's log (for a first look and for tests).
    Log,
}

impl ReceiverConfig {
    /// A receiver named `name` of `kind`.
    pub fn new(name: impl Into<String>, kind: ReceiverKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

/// The written form of a `[[receivers]]` entry: a table per integration, of which
/// exactly one must be present.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ReceiverEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slack: Option<SlackConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pagerduty: Option<PagerDutyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<EmailConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogReceiverConfig>,
}

/// The `log` receiver has no settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LogReceiverConfig {}

impl TryFrom<ReceiverEntry> for ReceiverConfig {
    type Error = String;

    fn try_from(e: ReceiverEntry) -> Result<Self, String> {
        let mut kinds: Vec<ReceiverKind> = Vec::new();
        kinds.extend(e.webhook.map(ReceiverKind::Webhook));
        kinds.extend(e.slack.map(ReceiverKind::Slack));
        kinds.extend(e.pagerduty.map(ReceiverKind::PagerDuty));
        kinds.extend(e.email.map(ReceiverKind::Email));
        kinds.extend(e.log.map(|_| ReceiverKind::Log));
        match kinds.len() {
            1 => Ok(Self {
                name: e.name,
                kind: kinds.remove(0),
            }),
            n => Err(format!(
                "receiver {:?} must set exactly one of webhook, slack, pagerduty, email, log (it sets {n})",
                e.name
            )),
        }
    }
}

impl From<ReceiverConfig> for ReceiverEntry {
    fn from(r: ReceiverConfig) -> Self {
        let mut e = ReceiverEntry {
            name: r.name,
            ..Default::default()
        };
        match r.kind {
            ReceiverKind::Webhook(c) => e.webhook = Some(c),
            ReceiverKind::Slack(c) => e.slack = Some(c),
            ReceiverKind::PagerDuty(c) => e.pagerduty = Some(c),
            ReceiverKind::Email(c) => e.email = Some(c),
            ReceiverKind::Log => e.log = Some(LogReceiverConfig {}),
        }
        e
    }
}

/// The receivers built from the config, by name.
pub struct Receivers {
    /// Notifier per receiver name.
    pub notifiers: HashMap<String, Arc<dyn Notifier>>,
}

impl AlerterConfig {
    /// Loads the config from an optional TOML file, the `ETCDMON_ALERTER_*`
    /// environment and `overrides` (flags), later winning. Checking it (and
    /// building its receivers) is [`Setup::new`](crate::Setup::new).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        Ok(etcdmon_core::config::load(file, ENV_PREFIX, overrides)?)
    }

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
        self.inhibition.validate()?;
        for rule in self.inhibit_rules.iter().flatten() {
            rule.validate()?;
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
        if let Some(name) = &self.watchdog.receiver {
            if !notifiers.contains_key(name) {
                return Err(FieldError::new(
                    "watchdog.receiver",
                    format!("no receiver named {name:?} is configured"),
                ));
            }
        }
        if self.watchdog.repeat_interval.is_zero() {
            return Err(FieldError::new(
                "watchdog.repeat_interval",
                "must be above 0",
            ));
        }
        let route = Route::build(&self.routes_with_watchdog(), &|n| notifiers.contains_key(n))
            .map_err(|e| FieldError::new("route", e))?;
        Ok((route, Receivers { notifiers }))
    }

    /// Adds `receiver` and routes every alert to it, besides wherever the
    /// configured tree sends it (the old root becomes a catch-all child), as
    /// `etcdmon up --webhook` does. Fails when a receiver of that name exists.
    pub fn send_everything_to(&mut self, receiver: ReceiverConfig) -> anyhow::Result<()> {
        let name = receiver.name.clone();
        anyhow::ensure!(
            self.receivers.iter().all(|r| r.name != name),
            "a receiver named {name:?} is already configured"
        );
        let first = self.receivers.is_empty() && self.route.receiver.is_none();
        self.receivers.push(receiver);
        if first {
            // Nothing else receives: the root's own settings (grouping, timing) stay.
            self.route.receiver = Some(name);
            return Ok(());
        }
        let only = RouteConfig {
            receiver: Some(name),
            ..RouteConfig::default()
        };
        let old_root = std::mem::take(&mut self.route);
        self.route = RouteConfig {
            routes: vec![
                RouteConfig {
                    continue_matching: true,
                    ..only.clone()
                },
                old_root,
            ],
            ..only
        };
        Ok(())
    }

    /// The configured tree with, when `watchdog.receiver` is set, a first child
    /// that takes the watchdog alert to that receiver alone (no `continue`), sent
    /// again every `watchdog.repeat_interval`.
    fn routes_with_watchdog(&self) -> RouteConfig {
        let mut root = self.route.clone();
        if let Some(receiver) = &self.watchdog.receiver {
            let only_the_watchdog = etcdmon_alert::Matcher::new(
                "rule",
                etcdmon_alert::MatchOp::Equal,
                etcdmon_alert::HEARTBEAT_RULE,
            )
            .expect("a valid matcher");
            root.routes.insert(
                0,
                RouteConfig {
                    receiver: Some(receiver.clone()),
                    matchers: vec![only_the_watchdog],
                    group_by: Some(vec!["rule".into()]),
                    group_wait: Some(Duration::ZERO),
                    repeat_interval: Some(self.watchdog.repeat_interval),
                    // A dead-man's switch needs no escalation.
                    escalation: Some(Vec::new()),
                    ..RouteConfig::default()
                },
            );
        }
        root
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
    match &r.kind {
        ReceiverKind::Webhook(c) => c.build(templates).map_err(field_err),
        ReceiverKind::Slack(c) => c.build(templates).map_err(field_err),
        ReceiverKind::PagerDuty(c) => c.build(templates).map_err(field_err),
        ReceiverKind::Email(c) => c.build(templates).map_err(field_err),
        ReceiverKind::Log => Ok(Arc::new(crate::sender::LogNotifier)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::labels;

    fn receivers_for(cfg: &AlerterConfig, pairs: &[(&str, &str)]) -> Vec<String> {
        let (route, _) = cfg.build().expect("builds");
        let mut got: Vec<String> = route
            .matching(&labels(pairs))
            .iter()
            .map(|r| r.receiver.clone())
            .collect();
        got.sort();
        got
    }

    #[test]
    fn everything_goes_to_an_added_receiver_and_still_where_the_tree_sends_it() {
        let mut cfg: AlerterConfig = etcdmon_core::config::from_toml_str(
            r#"
            route.receiver = "team"
            [[route.routes]]
            matchers = ['severity="critical"']
            receiver = "pager"
            [[receivers]]
            name = "team"
            [receivers.log]
            [[receivers]]
            name = "pager"
            [receivers.log]
            "#,
        )
        .expect("parses");
        cfg.send_everything_to(ReceiverConfig::new("hook", ReceiverKind::Log))
            .expect("added");
        assert_eq!(
            receivers_for(&cfg, &[("severity", "critical")]),
            ["hook", "pager"]
        );
        assert_eq!(
            receivers_for(&cfg, &[("severity", "info")]),
            ["hook", "team"]
        );
        let again = cfg.send_everything_to(ReceiverConfig::new("hook", ReceiverKind::Log));
        assert!(again.unwrap_err().to_string().contains("hook"));

        let mut empty = AlerterConfig::default();
        empty
            .send_everything_to(ReceiverConfig::new("log", ReceiverKind::Log))
            .expect("added");
        assert_eq!(receivers_for(&empty, &[("rule", "x")]), ["log"]);
    }
}
