//! Slack incoming webhook: one POST of a Block Kit message.
//!
//! The message has `text` (plain text, always present: Slack shows it in notifications
//! and where blocks cannot be shown) and `blocks`: a `header` with the title, then one
//! `section` (mrkdwn) per alert. Slack rejects a message that breaks its limits with
//! `400 invalid_blocks`, which no retry would fix, so the limits are enforced here: at
//! most [`MAX_BLOCKS`] blocks (alerts beyond that are summed up in a last section,
//! "…and N more alerts"), header text ≤ [`MAX_HEADER_CHARS`], section text ≤
//! [`MAX_SECTION_CHARS`], `text` ≤ [`MAX_TEXT_CHARS`].
//!
//! Slack answers `429` with `Retry-After` when a webhook posts more than about one
//! message per second, and documents 400/403/404/410 for bad payloads, revoked or
//! deleted webhooks and archived channels: see the shared classification in
//! `receivers/http.rs`.

mod config;

use serde_json::{json, Value as Json};

pub use config::SlackConfig;

use super::{http, truncate_chars};
use crate::notification::{Notification, Notifier, NotifyError};
use crate::template::{alert_context, context, MessageTemplate};

/// Slack's limit on blocks per message.
pub const MAX_BLOCKS: usize = 50;
/// Slack's limit on a header block's text.
pub const MAX_HEADER_CHARS: usize = 150;
/// Slack's limit on a section block's text.
pub const MAX_SECTION_CHARS: usize = 3000;
/// Slack's advice for the top-level `text` (it truncates at 40 000).
pub const MAX_TEXT_CHARS: usize = 4000;

/// The Slack receiver; built by [`SlackConfig::build`].
#[derive(Debug)]
pub struct SlackNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
    channel: Option<String>,
    username: Option<String>,
    icon_emoji: Option<String>,
    icon_url: Option<String>,
    title: MessageTemplate,
    text: MessageTemplate,
    alert: MessageTemplate,
}

impl SlackNotifier {
    /// The JSON message for `n`.
    pub fn payload(&self, n: &Notification) -> Json {
        let ctx = context(n);
        let title = non_empty(self.title.render(&ctx), || "etcd-monitor alert".to_owned());
        let text = non_empty(self.text.render(&ctx), || title.clone());

        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate_chars(&title, MAX_HEADER_CHARS), "emoji": true},
        })];
        // Room for the alerts after the header; one less when a note must say how
        // many did not fit.
        let room = MAX_BLOCKS - 1;
        let shown = if n.alerts.len() <= room {
            n.alerts.len()
        } else {
            room - 1
        };
        for (index, alert) in n.alerts.iter().take(shown).enumerate() {
            let section = non_empty(self.alert.render(&alert_context(&ctx, index)), || {
                format!("{}: {}", alert.status.as_str(), alert.fingerprint)
            });
            blocks.push(section_block(&section));
        }
        if shown < n.alerts.len() {
            let mut note = format!("…and {} more alerts", n.alerts.len() - shown);
            if !n.external_url.is_empty() {
                note.push_str(&format!(" (see <{}|etcd-monitor>)", n.external_url));
            }
            blocks.push(section_block(&note));
        }

        let mut message = json!({
            "text": truncate_chars(&text, MAX_TEXT_CHARS),
            "blocks": blocks,
        });
        let overrides = [
            ("channel", &self.channel),
            ("username", &self.username),
            ("icon_emoji", &self.icon_emoji),
            ("icon_url", &self.icon_url),
        ];
        for (key, value) in overrides {
            if let Some(value) = value {
                message[key] = Json::from(value.as_str());
            }
        }
        message
    }
}

fn section_block(text: &str) -> Json {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate_chars(text, MAX_SECTION_CHARS)}})
}

/// Slack rejects empty text fields; a template that renders nothing gets a stand-in.
fn non_empty(text: String, stand_in: impl FnOnce() -> String) -> String {
    if text.trim().is_empty() {
        stand_in()
    } else {
        text
    }
}

#[async_trait::async_trait]
impl Notifier for SlackNotifier {
    fn kind(&self) -> &'static str {
        "slack"
    }

    async fn notify(&self, n: &Notification) -> Result<String, NotifyError> {
        let request = self.client.post(self.url.clone()).json(&self.payload(n));
        let reply = http::send(request).await?;
        Ok(format!("HTTP {}", reply.status))
    }
}
