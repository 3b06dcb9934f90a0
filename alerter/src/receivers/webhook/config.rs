//! The `webhook` receiver's config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::WebhookNotifier;
use crate::notification::Notifier;
use crate::receivers::{http, read_ca_file, resolve_secret, BuildError, Secret};
use crate::template::Templates;

/// A generic webhook: POSTs an Alertmanager-compatible (version 4) JSON message.
///
/// ```toml
/// url = "https://hooks.example.com/etcd"
/// hmac_secret_file = "/etc/etcdmon/webhook.key"
/// max_alerts = 50
/// headers = { "X-Team" = "storage" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST the message (`http` or `https`). Redirects are not followed.
    pub url: String,
    /// Limit for the whole request, from connecting to reading the reply.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Send at most this many alerts per message (firing ones first); the number left
    /// out is in `truncatedAlerts`. `0` sends all.
    #[serde(default)]
    pub max_alerts: usize,
    /// Key for the `X-Etcdmon-Signature: sha256=<hex>` header, an HMAC-SHA256 of the
    /// exact body bytes. No signature when neither this nor `hmac_secret_file` is set.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    /// File holding the HMAC key (a trailing newline is ignored); instead of
    /// `hmac_secret`.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Extra HTTP headers sent with every request (e.g. an `Authorization` token).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file with extra CA certificates to trust for an `https` URL (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WebhookConfig {
    /// Validates the config and builds the receiver. `_templates` is unused: the body
    /// is a fixed JSON format; it is taken so every receiver is built the same way.
    pub fn build(&self, _templates: &Templates) -> Result<Arc<dyn Notifier>, BuildError> {
        Ok(Arc::new(self.notifier()?))
    }

    pub(super) fn notifier(&self) -> Result<WebhookNotifier, BuildError> {
        let url = http::parse_url(&self.url, "url")?;
        if self.timeout.is_zero() {
            return Err(BuildError::new("timeout", "must be greater than zero"));
        }
        let hmac_key = resolve_secret(
            self.hmac_secret.as_ref(),
            self.hmac_secret_file.as_deref(),
            "hmac_secret",
            "hmac_secret_file",
        )?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| BuildError::new("headers", format!("{name:?}: {e}")))?;
            let mut value = HeaderValue::try_from(value.as_str())
                .map_err(|e| BuildError::new("headers", format!("{name}: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let ca = self
            .ca_file
            .as_ref()
            .map(|path| read_ca_file(path, "ca_file"))
            .transpose()?;
        Ok(WebhookNotifier {
            client: http::client(self.timeout, ca.as_deref(), "ca_file")?,
            url,
            max_alerts: self.max_alerts,
            hmac_key: hmac_key.map(String::into_bytes),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let cfg: WebhookConfig =
            serde_json::from_str(r#"{"url": "http://127.0.0.1:1/hook"}"#).unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.max_alerts, 0);
        assert!(cfg.notifier().is_ok());

        let err =
            serde_json::from_str::<WebhookConfig>(r#"{"url": "http://x", "urll": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `urll`"), "{err}");
        let cfg: WebhookConfig =
            serde_json::from_str(r#"{"url": "http://x", "timeout": "2s 500ms"}"#).unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn build_names_the_bad_field() {
        let base = WebhookConfig {
            url: "http://127.0.0.1:1/hook".into(),
            timeout: default_timeout(),
            max_alerts: 0,
            hmac_secret: None,
            hmac_secret_file: None,
            headers: BTreeMap::new(),
            ca_file: None,
        };
        let field = |cfg: WebhookConfig| cfg.notifier().err().map(|e| e.field);
        assert_eq!(
            field(WebhookConfig {
                url: "mailto:x@y".into(),
                ..base.clone()
            }),
            Some("url")
        );
        assert_eq!(
            field(WebhookConfig {
                headers: [("bad header".into(), "v".into())].into(),
                ..base.clone()
            }),
            Some("headers")
        );
        assert_eq!(
            field(WebhookConfig {
                hmac_secret_file: Some("/nonexistent/key".into()),
                ..base.clone()
            }),
            Some("hmac_secret_file")
        );
        assert_eq!(
            field(WebhookConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..base.clone()
            }),
            Some("ca_file")
        );
        assert_eq!(
            field(WebhookConfig {
                timeout: Duration::ZERO,
                ..base
            }),
            Some("timeout")
        );
    }
}
