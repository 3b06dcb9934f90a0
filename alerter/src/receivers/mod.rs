//! Receiver integrations: webhook, Slack, PagerDuty and email.
//!
//! ```text
//! [[receivers]] config ──XConfig::build(&Templates)──> Arc<dyn Notifier>
//! dispatcher ──notify(&Notification)──> one HTTP request / one email
//!            <── Ok(detail) | NotifyError::{Retryable{retry_after}, Permanent}
//! ```
//!
//! Each receiver is a folder with `config.rs` (the `[[receivers]]` table, validated by
//! `build`, which reads secret files, parses URLs and addresses and compiles templates,
//! so a bad config fails at startup naming the field) and `mod.rs` (the [`Notifier`]:
//! one attempt, its failure classified). The three HTTP receivers share
//! `http.rs`: a client without redirects, a bounded read of the reply and the
//! same classification (2xx ok; 408, 429, 5xx and network errors retryable, with
//! `Retry-After` honoured; other statuses permanent).
//!
//! [`Notifier`]: crate::notification::Notifier

pub mod email;
mod http;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

pub use email::{EmailConfig, TlsMode};
pub use pagerduty::PagerDutyConfig;
pub use slack::SlackConfig;
pub use webhook::WebhookConfig;

/// A receiver config that cannot work: `field` names the offending config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    /// The config field, e.g. `hmac_secret_file`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl BuildError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A secret from the config (a key, password or webhook URL with a token in it).
///
/// Its `Debug` and `Serialize` print `<redacted>`, so logging or dumping the effective
/// config does not leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Resolves a secret given inline (`field`) or in a file (`file_field`): at most one of
/// them may be set. A file's trailing newline is dropped (editors and `echo` add one).
/// Returns `None` when neither is set; an empty secret is an error.
pub(crate) fn resolve_secret(
    inline: Option<&Secret>,
    file: Option<&Path>,
    field: &'static str,
    file_field: &'static str,
) -> Result<Option<String>, BuildError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(BuildError::new(
                file_field,
                format!("set either {field} or {file_field}, not both"),
            ))
        }
        (Some(secret), None) => secret.expose().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| BuildError::new(file_field, format!("read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        let which = if file.is_some() { file_field } else { field };
        return Err(BuildError::new(which, "is empty"));
    }
    Ok(Some(value))
}

/// Reads a PEM CA bundle for `field`.
pub(crate) fn read_ca_file(path: &PathBuf, field: &'static str) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| BuildError::new(field, format!("read {}: {e}", path.display())))
}

/// The first `max` characters of `text`; when cut, the last one is `…`. Counts
/// characters, not bytes, as Slack and PagerDuty do.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_resolved() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let resolve = |inline, file| resolve_secret(inline, file, "key", "key_file");
        assert_eq!(
            resolve(Some(&secret), None).unwrap().as_deref(),
            Some("hunter2")
        );
        assert_eq!(
            resolve(None, Some(&file)).unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(resolve(None, None).unwrap(), None);
        assert_eq!(
            resolve(Some(&secret), Some(&file)).unwrap_err().field,
            "key_file"
        );
        let nope = dir.path().join("nope");
        let missing = resolve(None, Some(&nope)).unwrap_err();
        assert!(
            missing.to_string().starts_with("key_file: read "),
            "{missing}"
        );
        assert_eq!(
            resolve(Some(&Secret::new("")), None)
                .unwrap_err()
                .to_string(),
            "key: is empty"
        );
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        assert_eq!(truncate_chars("ééééé", 4), "ééé…");
        assert_eq!(truncate_chars("ééééé", 4).chars().count(), 4);
    }
}
