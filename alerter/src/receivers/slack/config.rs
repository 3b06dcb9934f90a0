//! The `slack` receiver's config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SlackNotifier;
use crate::notification::Notifier;
use crate::receivers::{http, resolve_secret, BuildError, Secret};
use crate::template::{defaults, MessageTemplate, Templates};

/// A Slack incoming webhook.
///
/// ```toml
/// url_file = "/etc/etcdmon/slack-webhook-url"
/// channel = "#etcd-alerts"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook URL (`https://hooks.slack.com/services/...`). It contains a
    /// token, so prefer `url_file`. Exactly one of the two must be set.
    #[serde(default)]
    pub url: Option<Secret>,
    /// File holding the webhook URL (a trailing newline is ignored).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Channel override (`#channel` or `@user`); only legacy webhooks honour it, app
    /// webhooks always post to the channel they were created for.
    #[serde(default)]
    pub channel: Option<String>,
    /// Sender name override (legacy webhooks only).
    #[serde(default)]
    pub username: Option<String>,
    /// Sender icon as an emoji code, e.g. `:fire:` (legacy webhooks only).
    #[serde(default)]
    pub icon_emoji: Option<String>,
    /// Sender icon as an image URL (legacy webhooks only).
    #[serde(default)]
    pub icon_url: Option<String>,
    /// Template for the header block (plain text, cut at 150 characters). Default:
    /// `[FIRING:2] NoLeader cluster=prod`.
    #[serde(default)]
    pub title: Option<String>,
    /// Template for the plain-text `text` shown in notifications and by clients that
    /// cannot show blocks (cut at 4000 characters). Default: the title and one line per
    /// alert.
    #[serde(default)]
    pub text: Option<String>,
    /// Template for each alert's section block (mrkdwn, cut at 3000 characters), with
    /// the alert as `alert`. Default: summary, description, value, member, times, links.
    #[serde(default)]
    pub alert: Option<String>,
    /// Limit for the whole request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SlackConfig {
    /// Validates the config (URL, templates) and builds the receiver.
    pub fn build(&self, templates: &Templates) -> Result<Arc<dyn Notifier>, BuildError> {
        Ok(Arc::new(self.notifier(templates)?))
    }

    pub(super) fn notifier(&self, templates: &Templates) -> Result<SlackNotifier, BuildError> {
        let url = resolve_secret(
            self.url.as_ref(),
            self.url_file.as_deref(),
            "url",
            "url_file",
        )?
        .ok_or_else(|| BuildError::new("url", "set url or url_file"))?;
        // The URL holds a token: say what is wrong without echoing it.
        let field = if self.url_file.is_some() {
            "url_file"
        } else {
            "url"
        };
        let url = http::parse_url(&url, field).map_err(|e| {
            BuildError::new(field, format!("not a valid http(s) URL ({})", e.message))
        })?;
        if self.timeout.is_zero() {
            return Err(BuildError::new("timeout", "must be greater than zero"));
        }
        let template = |field: &'static str, default, custom: &Option<String>| {
            MessageTemplate::new(templates, "slack", field, default, custom.as_deref())
                .map_err(|e| BuildError::new(field, e.to_string()))
        };
        Ok(SlackNotifier {
            client: http::client(self.timeout, None, "url")?,
            url,
            channel: self.channel.clone(),
            username: self.username.clone(),
            icon_emoji: self.icon_emoji.clone(),
            icon_url: self.icon_url.clone(),
            title: template("title", defaults::TITLE, &self.title)?,
            text: template("text", defaults::SLACK_TEXT, &self.text)?,
            alert: template("alert", defaults::SLACK_ALERT, &self.alert)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SlackConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn url_is_required_and_templates_must_parse() {
        let t = Templates::new();
        let err = parse("{}").notifier(&t).unwrap_err();
        assert_eq!(err.to_string(), "url: set url or url_file");
        let err = parse(r#"{"url": "hooks.slack.com/T0/B0/secret"}"#)
            .notifier(&t)
            .unwrap_err();
        assert_eq!(err.field, "url");
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = parse(r#"{"url": "https://hooks.slack.invalid/x", "title": "{{ oops"}"#)
            .notifier(&t)
            .unwrap_err();
        assert_eq!(err.field, "title");
        assert!(
            parse(r##"{"url": "https://hooks.slack.invalid/x", "channel": "#a"}"##)
                .notifier(&t)
                .is_ok()
        );
        assert!(serde_json::from_str::<SlackConfig>(r#"{"webhook": "x"}"#).is_err());
    }
}
