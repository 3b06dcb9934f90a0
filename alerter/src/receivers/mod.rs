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

pub use etcdmon_core::secret::Secret;

/// Resolves a secret given inline (`field`) or in a file (`file_field`); see
/// [`etcdmon_core::secret::resolve`].
pub(crate) fn resolve_secret(
    inline: Option<&Secret>,
    file: Option<&Path>,
    field: &'static str,
    file_field: &'static str,
) -> Result<Option<String>, BuildError> {
    etcdmon_core::secret::resolve(inline, file, field, file_field)
        .map(|s| s.map(|s| s.expose().to_owned()))
        .map_err(|e| BuildError::new(e.field, e.message))
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
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        assert_eq!(truncate_chars("ééééé", 4), "ééé…");
        assert_eq!(truncate_chars("ééééé", 4).chars().count(), 4);
    }
}
