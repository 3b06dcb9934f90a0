//! Generic webhook: one POST of an Alertmanager-compatible JSON message.
//!
//! The body is Alertmanager's webhook format, version `"4"` (`version, groupKey,
//! truncatedAlerts, status, receiver, groupLabels, commonLabels, commonAnnotations,
//! externalURL, alerts[]`), so tools written for Alertmanager's webhooks work unchanged.
//! One field is added: `reason` (`new`, `repeat`, `escalation` or `acknowledged`), which
//! Alertmanager has no notion of and its consumers ignore.
//!
//! With a key configured, `X-Etcdmon-Signature: sha256=<hex>` carries the HMAC-SHA256 of
//! the exact body bytes (like GitHub's `X-Hub-Signature-256`). A receiver verifies it by
//! computing the same HMAC over the raw body before parsing it, comparing in constant
//! time.

mod config;

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde::Serialize;
use sha2::Sha256;

pub use config::WebhookConfig;

use super::http;
use etcdmon_alert::AlertState;

use crate::notification::{Notification, Notifier, NotifyError};
use crate::template::format_time_ms;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Etcdmon-Signature";

/// Alertmanager's `endsAt` for alerts that have not ended (Go's zero time).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The webhook receiver; built by [`WebhookConfig::build`].
#[derive(Debug)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
    max_alerts: usize,
    hmac_key: Option<Vec<u8>>,
    headers: HeaderMap,
}

/// Alertmanager's webhook message, version 4.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    version: &'static str,
    group_key: &'a str,
    truncated_alerts: usize,
    status: &'static str,
    receiver: &'a str,
    group_labels: &'a BTreeMap<String, String>,
    common_labels: &'a BTreeMap<String, String>,
    common_annotations: &'a BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: Vec<Alert<'a>>,
    /// etcdmon's addition.
    reason: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Alert<'a> {
    status: &'static str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
    fingerprint: &'a str,
}

/// The JSON body for `n`, keeping at most `max_alerts` alerts (0: all).
pub fn body(n: &Notification, max_alerts: usize) -> Vec<u8> {
    let keep = if max_alerts == 0 {
        n.alerts.len()
    } else {
        max_alerts.min(n.alerts.len())
    };
    let alerts = n.alerts[..keep]
        .iter()
        .map(|a| Alert {
            status: a.status.as_str(),
            labels: &a.labels,
            annotations: &a.annotations,
            starts_at: format_time_ms(a.starts_at_ms),
            ends_at: match (a.status, a.ends_at_ms) {
                (AlertState::Resolved, Some(ms)) => format_time_ms(ms),
                _ => ZERO_TIME.to_owned(),
            },
            generator_url: &a.generator_url,
            fingerprint: &a.fingerprint,
        })
        .collect();
    let message = Message {
        version: "4",
        group_key: &n.group_key,
        truncated_alerts: n.alerts.len() - keep,
        status: n.status.as_str(),
        receiver: &n.receiver,
        group_labels: &n.group_labels,
        common_labels: &n.common_labels,
        common_annotations: &n.common_annotations,
        external_url: &n.external_url,
        alerts,
        reason: n.reason.as_str(),
    };
    serde_json::to_vec(&message).expect("string maps and strings always serialize to JSON")
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Notifier for WebhookNotifier {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn notify(&self, n: &Notification) -> Result<String, NotifyError> {
        let body = body(n, self.max_alerts);
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(key) = &self.hmac_key {
            request = request.header(SIGNATURE_HEADER, signature(key, &body));
        }
        let reply = http::send(request.body(body)).await?;
        Ok(format!("HTTP {}", reply.status))
    }
}
