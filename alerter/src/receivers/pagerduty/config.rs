//! The `pagerduty` receiver's config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PagerDutyNotifier;
use crate::notification::Notifier;
use crate::receivers::{http, resolve_secret, BuildError, Secret};
use crate::template::{defaults, MessageTemplate, Templates};

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A PagerDuty service, through the Events API v2.
///
/// ```toml
/// routing_key_file = "/etc/etcdmon/pagerduty.key"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The Events API v2 endpoint (change it for PagerDuty's EU service region,
    /// `https://events.eu.pagerduty.com/v2/enqueue`, or a proxy).
    #[serde(default = "default_url")]
    pub url: String,
    /// The integration key of the PagerDuty service (Events API v2). Exactly one of
    /// `routing_key` and `routing_key_file` must be set.
    #[serde(default)]
    pub routing_key: Option<Secret>,
    /// File holding the integration key (a trailing newline is ignored).
    #[serde(default)]
    pub routing_key_file: Option<PathBuf>,
    /// Template for `payload.summary`, the incident title (cut at 1024 characters).
    /// Default: the title, plus the alert's summary when only one fires.
    #[serde(default)]
    pub summary: Option<String>,
    /// Template for `payload.source`. Default: the cluster, else `etcd-monitor`.
    #[serde(default)]
    pub source: Option<String>,
    /// Template for `payload.component`; left out when it renders empty. Default: the
    /// member, when all alerts concern the same one.
    #[serde(default)]
    pub component: Option<String>,
    /// Template for `payload.group`; left out when empty. Default: the cluster.
    #[serde(default)]
    pub group: Option<String>,
    /// Template for `payload.class`; left out when empty. Default: the rule.
    #[serde(default)]
    pub class: Option<String>,
    /// `client`: the name of the monitoring tool shown on the incident.
    #[serde(default = "default_client")]
    pub client: String,
    /// `client_url`: a link back to etcd-monitor. Default: the alerter's external URL.
    #[serde(default)]
    pub client_url: Option<String>,
    /// Limit for the whole request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_url() -> String {
    DEFAULT_URL.to_owned()
}

fn default_client() -> String {
    "etcd-monitor".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PagerDutyConfig {
    /// Validates the config (URL, key, templates) and builds the receiver.
    pub fn build(&self, templates: &Templates) -> Result<Arc<dyn Notifier>, BuildError> {
        Ok(Arc::new(self.notifier(templates)?))
    }

    pub(super) fn notifier(&self, templates: &Templates) -> Result<PagerDutyNotifier, BuildError> {
        let url = http::parse_url(&self.url, "url")?;
        let routing_key = resolve_secret(
            self.routing_key.as_ref(),
            self.routing_key_file.as_deref(),
            "routing_key",
            "routing_key_file",
        )?
        .ok_or_else(|| BuildError::new("routing_key", "set routing_key or routing_key_file"))?;
        if self.timeout.is_zero() {
            return Err(BuildError::new("timeout", "must be greater than zero"));
        }
        let template = |field: &'static str, default, custom: &Option<String>| {
            MessageTemplate::new(templates, "pagerduty", field, default, custom.as_deref())
                .map_err(|e| BuildError::new(field, e.to_string()))
        };
        Ok(PagerDutyNotifier {
            client: http::client(self.timeout, None, "url")?,
            url,
            routing_key,
            summary: template("summary", defaults::PAGERDUTY_SUMMARY, &self.summary)?,
            source: template("source", defaults::PAGERDUTY_SOURCE, &self.source)?,
            component: template("component", defaults::PAGERDUTY_COMPONENT, &self.component)?,
            group: template("group", defaults::PAGERDUTY_GROUP, &self.group)?,
            class: template("class", defaults::PAGERDUTY_CLASS, &self.class)?,
            client_name: self.client.clone(),
            client_url: self.client_url.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let t = Templates::new();
        let cfg: PagerDutyConfig = serde_json::from_str(r#"{"routing_key": "k"}"#).unwrap();
        assert_eq!(cfg.url, DEFAULT_URL);
        assert_eq!(cfg.client, "etcd-monitor");
        assert!(cfg.notifier(&t).is_ok());

        let cfg: PagerDutyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.notifier(&t).unwrap_err().field, "routing_key");
        let cfg: PagerDutyConfig =
            serde_json::from_str(r#"{"routing_key": "k", "summary": "{% for %}"}"#).unwrap();
        assert_eq!(cfg.notifier(&t).unwrap_err().field, "summary");
        assert!(serde_json::from_str::<PagerDutyConfig>(r#"{"service_key": "k"}"#).is_err());
    }
}
