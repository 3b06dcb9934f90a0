//! Email through SMTP (lettre's async transport on tokio, rustls).
//!
//! Each notification is one message to all `to` addresses: a text/plain body and,
//! unless switched off, a text/html alternative, with the subject and both bodies from
//! templates. Every send opens its own SMTP connection; alert mail is rare enough that
//! a pool would only hold idle connections that servers drop anyway.
//!
//! Failures are classified by what SMTP says: a 4xx reply (mailbox busy, greylisting,
//! rate limit) and anything that kept the conversation from finishing (refused or
//! reset connection, timeout, TLS handshake, garbled reply) is retryable; a 5xx reply
//! (unknown recipient, relaying denied, authentication failed) is permanent, as is a
//! message lettre refuses to build.

mod config;

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub use config::{EmailConfig, TlsMode};

use crate::notification::{Notification, Notifier, NotifyError};
use crate::template::{context, MessageTemplate};

/// The email receiver; built by [`EmailConfig::build`].
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: MessageTemplate,
    body: MessageTemplate,
    html_body: Option<MessageTemplate>,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport's Debug would show the credentials.
        f.debug_struct("EmailNotifier")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl EmailNotifier {
    /// The message for `n`.
    pub fn message(&self, n: &Notification) -> Result<Message, NotifyError> {
        let ctx = context(n);
        // A header is one line; a template's stray newline must not end it.
        let subject = self
            .subject
            .render(&ctx)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let text = self.body.render(&ctx);
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let built = match &self.html_body {
            Some(html) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html.render(&ctx)))
            }
            None => builder.singlepart(SinglePart::plain(text)),
        };
        built.map_err(|e| NotifyError::Permanent(format!("build email: {e}")))
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> NotifyError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_permanent() || e.is_client() {
        NotifyError::Permanent(reason)
    } else {
        NotifyError::Retryable {
            reason,
            retry_after: None,
        }
    }
}

#[async_trait::async_trait]
impl Notifier for EmailNotifier {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn notify(&self, n: &Notification) -> Result<String, NotifyError> {
        let message = self.message(n)?;
        let response = self
            .transport
            .send(message)
            .await
            .map_err(|e| classify(&e))?;
        Ok(format!(
            "SMTP {} {}",
            response.code(),
            response.first_line().unwrap_or_default()
        ))
    }
}
