//! The `email` receiver's config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::EmailNotifier;
use crate::notification::Notifier;
use crate::receivers::{read_ca_file, resolve_secret, BuildError, Secret};
use crate::template::{defaults, MessageTemplate, Templates};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text throughout; only for a trusted relay on the same host or network.
    None,
    /// Plain connect, then `STARTTLS`, which must succeed (no silent downgrade).
    /// Default port 587.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", implicit TLS). Default port 465.
    Tls,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// Email through an SMTP server.
///
/// ```toml
/// host = "smtp.example.com"
/// username = "etcdmon"
/// password_file = "/etc/etcdmon/smtp-password"
/// from = "etcd-monitor <etcdmon@example.com>"
/// to = ["oncall@example.com"]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's host name (also the name its certificate must carry).
    pub host: String,
    /// The SMTP port. Default: 25 for `tls = "none"`, 587 for `starttls`, 465 for `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file with extra CA certificates to trust (a private CA); the public web
    /// roots are trusted anyway.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// User for SMTP AUTH; needs `password` or `password_file`. No AUTH when unset.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password (a trailing newline is ignored); instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender, `addr@example.com` or `Name <addr@example.com>`.
    pub from: String,
    /// The recipients (at least one), in the same forms as `from`.
    pub to: Vec<String>,
    /// The name we greet the server with (EHLO). Default: this machine's host name.
    #[serde(default)]
    pub hello_name: Option<String>,
    /// Limit for each step of the SMTP conversation (connect, every command).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Template for the subject (newlines become spaces). Default:
    /// `[FIRING:2] NoLeader cluster=prod`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Template for the text/plain body. Default: every alert with summary,
    /// description, value, member, times and links.
    #[serde(default)]
    pub body: Option<String>,
    /// Template for the text/html body (values are HTML-escaped). Default: the same
    /// content as the text body.
    #[serde(default)]
    pub html_body: Option<String>,
    /// Send a text/html alternative next to the text/plain body.
    #[serde(default = "yes")]
    pub send_html: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

impl EmailConfig {
    /// Validates the config (addresses, credentials, TLS, templates) and builds the
    /// receiver.
    pub fn build(&self, templates: &Templates) -> Result<Arc<dyn Notifier>, BuildError> {
        Ok(Arc::new(self.notifier(templates)?))
    }

    pub(super) fn notifier(&self, templates: &Templates) -> Result<EmailNotifier, BuildError> {
        if self.host.trim().is_empty() {
            return Err(BuildError::new("host", "is empty"));
        }
        if self.timeout.is_zero() {
            return Err(BuildError::new("timeout", "must be greater than zero"));
        }
        let from: Mailbox = self
            .from
            .parse()
            .map_err(|e| BuildError::new("from", format!("{:?}: {e}", self.from)))?;
        if self.to.is_empty() {
            return Err(BuildError::new("to", "needs at least one address"));
        }
        let to = self
            .to
            .iter()
            .map(|addr| {
                addr.parse::<Mailbox>()
                    .map_err(|e| BuildError::new("to", format!("{addr:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port.unwrap_or(self.tls.default_port()))
            .timeout(Some(self.timeout))
            .tls(self.tls()?);
        let password = resolve_secret(
            self.password.as_ref(),
            self.password_file.as_deref(),
            "password",
            "password_file",
        )?;
        if self.tls == TlsMode::None && self.username.is_some() && !is_loopback(&self.host) {
            return Err(BuildError::new(
                "tls",
                format!(
                    "\"none\" would send the SMTP password to {} in plain text: use \
                     \"starttls\" or \"tls\" (plain text with credentials only to a local relay)",
                    self.host
                ),
            ));
        }
        match (&self.username, password) {
            (Some(user), Some(password)) => {
                transport = transport.credentials(Credentials::new(user.clone(), password));
            }
            (Some(_), None) => {
                return Err(BuildError::new(
                    "password",
                    "username is set but no password",
                ))
            }
            (None, Some(_)) => {
                return Err(BuildError::new(
                    "username",
                    "a password is set but no username",
                ))
            }
            (None, None) => {}
        }
        if let Some(name) = &self.hello_name {
            transport = transport.hello_name(ClientId::Domain(name.clone()));
        }

        let template = |field: &'static str, default, custom: &Option<String>, html: bool| {
            let custom = custom.as_deref();
            if html {
                MessageTemplate::new_html(templates, "email", field, default, custom)
            } else {
                MessageTemplate::new(templates, "email", field, default, custom)
            }
            .map_err(|e| BuildError::new(field, e.to_string()))
        };
        Ok(EmailNotifier {
            transport: transport.build(),
            from,
            to,
            subject: template("subject", defaults::TITLE, &self.subject, false)?,
            body: template("body", defaults::EMAIL_TEXT, &self.body, false)?,
            html_body: if self.send_html {
                Some(template(
                    "html_body",
                    defaults::EMAIL_HTML,
                    &self.html_body,
                    true,
                )?)
            } else {
                None
            },
        })
    }

    fn tls(&self) -> Result<Tls, BuildError> {
        if self.tls == TlsMode::None {
            return Ok(Tls::None);
        }
        let mut params = TlsParameters::builder(self.host.clone());
        if let Some(path) = &self.ca_file {
            let pem = read_ca_file(path, "ca_file")?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| BuildError::new("ca_file", format!("parse PEM certificates: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build()
            .map_err(|e| BuildError::new("tls", format!("set up TLS for {}: {e}", self.host)))?;
        Ok(match self.tls {
            TlsMode::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        })
    }
}

/// Whether `host` is this machine (`localhost` or a loopback address).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> EmailConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let t = Templates::new();
        let cfg =
            parse(r#"{"host": "smtp.invalid", "from": "a@b.invalid", "to": ["c@d.invalid"]}"#);
        assert_eq!(cfg.tls, TlsMode::Starttls);
        assert_eq!(cfg.port, None);
        assert!(cfg.send_html);
        assert_eq!(cfg.timeout, Duration::from_secs(30));
        assert!(cfg.notifier(&t).is_ok());

        let field = |json: &str| parse(json).notifier(&t).err().map(|e| e.field);
        assert_eq!(
            field(r#"{"host": "h", "from": "not an address", "to": ["c@d.invalid"]}"#),
            Some("from")
        );
        assert_eq!(
            field(r#"{"host": "h", "from": "a@b.invalid", "to": []}"#),
            Some("to")
        );
        assert_eq!(
            field(r#"{"host": "h", "from": "a@b.invalid", "to": ["x"]}"#),
            Some("to")
        );
        assert_eq!(
            field(
                r#"{"host": "h", "from": "a@b.invalid", "to": ["c@d.invalid"], "username": "u"}"#
            ),
            Some("password")
        );
        assert_eq!(
            field(r#"{"host": "h", "from": "a@b.invalid", "to": ["c@d.invalid"], "body": "{{"}"#),
            Some("body")
        );
        assert_eq!(
            field(
                r#"{"host": "h", "from": "a@b.invalid", "to": ["c@d.invalid"], "ca_file": "/nonexistent"}"#
            ),
            Some("ca_file")
        );
        let plain = |host: &str| {
            format!(
                r#"{{"host": "{host}", "from": "a@b.invalid", "to": ["c@d.invalid"], "tls": "none",
                    "username": "u", "password": "p"}}"#
            )
        };
        assert_eq!(field(&plain("smtp.example.com")), Some("tls"));
        assert_eq!(field(&plain("127.0.0.1")), None, "a local relay");
        assert_eq!(field(&plain("localhost")), None, "a local relay");
        let err = serde_json::from_str::<EmailConfig>(
            r#"{"host": "h", "from": "a@b.invalid", "to": ["c@d.invalid"], "tls": "ssl"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `ssl`"), "{err}");
    }
}
