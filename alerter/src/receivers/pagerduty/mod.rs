//! PagerDuty Events API v2: one event per notification.
//!
//! ```text
//! status resolved          -> {"event_action": "resolve",     routing_key, dedup_key}
//! reason acknowledged      -> {"event_action": "acknowledge", routing_key, dedup_key}
//! otherwise (firing)       -> {"event_action": "trigger",     routing_key, dedup_key,
//!                              payload{summary, source, severity, timestamp, component,
//!                                      group, class, custom_details}, links, client, client_url}
//! ```
//!
//! `dedup_key` is the hex SHA-256 of the notification's group key, so every event of a
//! group lands on the same incident, across alerter restarts. A group that resolved is
//! resolved even when the reason is an acknowledgement: resolving is the stronger fact.
//!
//! `severity` is the highest `severity` label among the firing alerts (all alerts when
//! none fires): `critical`, `error`, `warning` and `info` map to themselves; a missing
//! or unknown value counts as `error`, so an unlabelled alert neither pages as critical
//! nor hides as a warning.
//!
//! PagerDuty answers `202 {"status":"success","dedup_key":...}`; it documents `400` as
//! "do not retry" and `429` and `5xx` as "retry later", which is the shared
//! classification of `receivers/http.rs`.

mod config;

use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

pub use config::{PagerDutyConfig, DEFAULT_URL};

use super::{http, truncate_chars};
use etcdmon_alert::AlertState;

use crate::notification::{Notification, Notifier, NotifyError, Reason};
use crate::template::{context, format_time_ms, MessageTemplate};

/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY_CHARS: usize = 1024;

/// Alerts listed in `custom_details` (the event may be 512 KB at most).
pub const MAX_DETAIL_ALERTS: usize = 20;

/// Runbook links attached to a trigger.
const MAX_LINKS: usize = 5;

/// The PagerDuty receiver; built by [`PagerDutyConfig::build`].
#[derive(Debug)]
pub struct PagerDutyNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
    routing_key: String,
    summary: MessageTemplate,
    source: MessageTemplate,
    component: MessageTemplate,
    group: MessageTemplate,
    class: MessageTemplate,
    client_name: String,
    client_url: Option<String>,
}

/// `trigger`, `acknowledge` or `resolve` for `n`.
pub fn event_action(n: &Notification) -> &'static str {
    if n.status == AlertState::Resolved {
        "resolve"
    } else if n.reason == Reason::Acknowledged {
        "acknowledge"
    } else {
        "trigger"
    }
}

/// The incident key of a group: hex SHA-256 of `group_key` (64 characters, within
/// PagerDuty's 255).
pub fn dedup_key(group_key: &str) -> String {
    hex::encode(Sha256::digest(group_key.as_bytes()))
}

/// PagerDuty's severity for `n`; see the module docs.
pub fn severity(n: &Notification) -> &'static str {
    const ORDER: [&str; 4] = ["info", "warning", "error", "critical"];
    let rank = |label: Option<&String>| {
        label
            .and_then(|s| ORDER.iter().position(|known| known == s))
            .unwrap_or(2)
    };
    let firing: Vec<_> = n.firing().collect();
    let alerts: Vec<_> = if firing.is_empty() {
        n.alerts.iter().collect()
    } else {
        firing
    };
    let highest = alerts
        .iter()
        .map(|a| rank(a.labels.get("severity")))
        .max()
        .unwrap_or(2);
    ORDER[highest]
}

impl PagerDutyNotifier {
    /// The Events API v2 event for `n`.
    pub fn event(&self, n: &Notification) -> Json {
        let action = event_action(n);
        let mut event = json!({
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": dedup_key(&n.group_key),
        });
        if action != "trigger" {
            return event;
        }
        let ctx = context(n);
        let summary = self.summary.render(&ctx);
        let source = self.source.render(&ctx);
        let mut payload = json!({
            "summary": truncate_chars(if summary.trim().is_empty() { &n.group_key } else { &summary }, MAX_SUMMARY_CHARS),
            "source": if source.trim().is_empty() { "etcd-monitor" } else { source.trim() },
            "severity": severity(n),
            "custom_details": custom_details(n),
        });
        if let Some(start) = n.firing().map(|a| a.starts_at_ms).min() {
            payload["timestamp"] = Json::from(format_time_ms(start));
        }
        for (key, template) in [
            ("component", &self.component),
            ("group", &self.group),
            ("class", &self.class),
        ] {
            let value = template.render(&ctx);
            if !value.trim().is_empty() {
                payload[key] = Json::from(value.trim());
            }
        }
        event["payload"] = payload;
        event["links"] = Json::from(links(n));
        event["client"] = Json::from(self.client_name.as_str());
        let client_url = self.client_url.as_deref().unwrap_or(&n.external_url);
        if !client_url.is_empty() {
            event["client_url"] = Json::from(client_url);
        }
        event
    }
}

fn custom_details(n: &Notification) -> Json {
    let alerts: Vec<Json> = n
        .alerts
        .iter()
        .take(MAX_DETAIL_ALERTS)
        .map(|a| {
            let mut alert = json!({
                "status": a.status.as_str(),
                "labels": a.labels,
                "annotations": a.annotations,
                "starts_at": format_time_ms(a.starts_at_ms),
                "generator_url": a.generator_url,
            });
            if !a.value.is_nan() {
                alert["value"] = Json::from(a.value);
            }
            alert
        })
        .collect();
    let mut details = Map::new();
    details.insert("num_firing".into(), n.firing().count().into());
    details.insert("num_resolved".into(), n.resolved().count().into());
    details.insert("reason".into(), n.reason.as_str().into());
    details.insert("group_labels".into(), json!(n.group_labels));
    details.insert("common_annotations".into(), json!(n.common_annotations));
    details.insert("alerts".into(), alerts.into());
    if n.alerts.len() > MAX_DETAIL_ALERTS {
        details.insert(
            "truncated_alerts".into(),
            (n.alerts.len() - MAX_DETAIL_ALERTS).into(),
        );
    }
    Json::Object(details)
}

/// Distinct runbook links of the firing alerts, then the first alert's page.
fn links(n: &Notification) -> Vec<Json> {
    let mut links: Vec<Json> = Vec::new();
    let mut seen = Vec::new();
    for alert in n.firing() {
        let Some(url) = alert.annotations.get("runbook_url") else {
            continue;
        };
        if seen.contains(&url) || seen.len() == MAX_LINKS {
            continue;
        }
        seen.push(url);
        let rule = alert
            .labels
            .get("rule")
            .map(String::as_str)
            .unwrap_or("alert");
        links.push(json!({"href": url, "text": format!("Runbook: {rule}")}));
    }
    if let Some(alert) = n.alerts.first().filter(|a| !a.generator_url.is_empty()) {
        links.push(json!({"href": alert.generator_url, "text": "Alert in etcd-monitor"}));
    }
    links
}

#[async_trait::async_trait]
impl Notifier for PagerDutyNotifier {
    fn kind(&self) -> &'static str {
        "pagerduty"
    }

    async fn notify(&self, n: &Notification) -> Result<String, NotifyError> {
        // A flapping report would trigger or resolve the incident on a state that is
        // about to change again; the incident stays as it is until the alert settles.
        if n.reason == crate::notification::Reason::Flapping {
            return Ok("flapping report not sent to PagerDuty".into());
        }
        let event = self.event(n);
        let reply = http::send(self.client.post(self.url.clone()).json(&event)).await?;
        let key = serde_json::from_str::<Json>(&reply.body)
            .ok()
            .and_then(|body| body.get("dedup_key")?.as_str().map(str::to_owned));
        Ok(match key {
            Some(key) => format!(
                "HTTP {} {} dedup_key={key}",
                reply.status,
                event["event_action"].as_str().unwrap_or_default()
            ),
            None => format!("HTTP {}", reply.status),
        })
    }
}
