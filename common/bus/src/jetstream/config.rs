//! Settings of the JetStream bus.

use std::path::PathBuf;
use std::time::Duration;

use etcdmon_core::secret::{self, Secret};

use crate::BusError;

/// How to reach NATS and how the alert stream and the alerter's consumer look.
///
/// Every field has a default, so an empty table means "a local NATS on port 4222 with the
/// standard stream and consumer names". Unknown fields are errors, so a misspelt setting
/// is reported instead of silently ignored. The stream and consumer are created from
/// these values at start-up and updated when they differ (see
/// [`JetStreamBus::connect`](super::JetStreamBus::connect)), so the config is the source
/// of truth for the limits below.
#[derive(Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// NATS server URL, e.g. `nats://nats.monitoring.svc:4222`; several servers of one
    /// cluster are separated by commas. Credentials may be given in the URL
    /// (`nats://user:password@host:4222`); `Debug` output hides them. `tls://` requires
    /// TLS.
    pub url: String,
    /// Name of the JetStream stream holding alert candidates. Letters, digits, `-` and
    /// `_` only.
    pub stream: String,
    /// Subject prefix: candidates are published on `{subject_prefix}.{cluster}` and the
    /// stream captures `{subject_prefix}.>`. Dot-separated tokens without wildcards.
    pub subject_prefix: String,
    /// Name of the alerter's durable pull consumer. Alerters sharing the name share the
    /// work (each candidate goes to one of them). Letters, digits, `-` and `_` only.
    pub consumer: String,
    /// How long the stream remembers message ids to drop duplicate publishes. Must cover
    /// the time a publisher may retry one candidate after a lost acknowledgement; at most
    /// `max_age`.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long candidates stay in the stream (whether consumed or not): the longest
    /// alerter outage that loses nothing.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Size limit of the stream in bytes; the oldest candidates are discarded beyond it.
    pub max_bytes: u64,
    /// Stream replicas in a clustered NATS (1 to 5); a single server needs 1.
    pub replicas: usize,
    /// How long the server waits for the alerter's ack before it delivers a candidate
    /// again. Longer than the alerter takes to persist one state change.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How often one candidate is delivered at most; -1 for no limit (a candidate the
    /// alerter can never persist is then redelivered every `ack_wait` until `max_age`).
    pub max_deliver: i64,
    /// Upper bound of establishing the connection at start-up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upper bound of one publish (until its PubAck), one ack confirmation and one
    /// JetStream API call: a publish while NATS is down fails with a retryable error
    /// after this long instead of hanging.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TLS and credentials (`[alerting.jetstream.auth]` / `[nats.auth]`).
    pub auth: NatsAuth,
}

/// How the connection to NATS is secured and authenticated. At most one way to log
/// in: a token, a user and password (here or in the URL), or an NKey seed. Every
/// secret can come from a file (`*_file`), so configs can be shared without them.
/// Its `Debug` shows the paths and hides the secrets ([`Secret`] redacts itself).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuth {
    /// Require TLS even for `nats://` URLs (a `tls://` URL always does).
    pub require_tls: bool,
    /// PEM bundle of the CA that signed the servers' certificates, instead of the
    /// system's roots (a private CA). Implies TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (`verify: true`).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Token (`authorization { token: ... }` on the server).
    pub token: Option<Secret>,
    /// The token in a file.
    pub token_file: Option<PathBuf>,
    /// User, with `password` or `password_file`.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<Secret>,
    /// The password in a file.
    pub password_file: Option<PathBuf>,
    /// NKey seed (`SU...`) of a user the server lists by its public key
    /// (`authorization { users = [{ nkey: "U..." }] }`).
    pub nkey_seed: Option<Secret>,
    /// The NKey seed in a file.
    pub nkey_seed_file: Option<PathBuf>,
}

/// The credentials of [`NatsAuth`], read from their files.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Login {
    /// None configured (a password in the URL still works).
    None,
    /// A token.
    Token(Secret),
    /// A user and password.
    UserPassword(String, Secret),
    /// An NKey seed: the client signs the server's nonce with it.
    NKey(Secret),
}

impl NatsAuth {
    /// Whether TLS is required.
    pub(crate) fn tls(&self) -> bool {
        self.require_tls || self.ca_file.is_some() || self.cert_file.is_some()
    }

    /// Reads the secrets; the error names the field.
    pub(crate) fn login(&self) -> Result<Login, BusError> {
        let rejected =
            |e: secret::SecretError| BusError::Rejected(format!("invalid NATS config: auth.{e}"));
        let token = secret::resolve(
            self.token.as_ref(),
            self.token_file.as_deref(),
            "token",
            "token_file",
        )
        .map_err(rejected)?;
        let password = secret::resolve(
            self.password.as_ref(),
            self.password_file.as_deref(),
            "password",
            "password_file",
        )
        .map_err(rejected)?;
        let nkey = secret::resolve(
            self.nkey_seed.as_ref(),
            self.nkey_seed_file.as_deref(),
            "nkey_seed",
            "nkey_seed_file",
        )
        .map_err(rejected)?;
        let invalid = |why: &str| {
            Err(BusError::Rejected(format!(
                "invalid NATS config: auth: {why}"
            )))
        };
        match (token, &self.user, password, nkey) {
            (None, None, None, None) => Ok(Login::None),
            (Some(t), None, None, None) => Ok(Login::Token(t)),
            (None, Some(u), Some(p), None) => Ok(Login::UserPassword(u.clone(), p)),
            (None, None, None, Some(seed)) => Ok(Login::NKey(seed)),
            (None, Some(_), None, None) => invalid("user needs password or password_file"),
            (None, None, Some(_), None) => invalid("password needs user"),
            _ => invalid("set one login: a token, a user and password, or an NKey seed"),
        }
    }
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream: "ETCDMON_ALERTS".to_owned(),
            subject_prefix: "etcdmon.alerts".to_owned(),
            consumer: "etcdmon-alerter".to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 256 << 20,
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            auth: NatsAuth::default(),
        }
    }
}

impl std::fmt::Debug for JetStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configs end up in start-up logs; credentials in the URL must not.
        f.debug_struct("JetStreamConfig")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("consumer", &self.consumer)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_age", &self.max_age)
            .field("max_bytes", &self.max_bytes)
            .field("replicas", &self.replicas)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("auth", &self.auth)
            .finish()
    }
}

impl JetStreamConfig {
    /// Checks the values `serde` cannot; the error is [`BusError::Rejected`] and names
    /// the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let invalid = |field: &str, why: String| {
            Err(BusError::Rejected(format!(
                "invalid NATS config: {field}: {why}"
            )))
        };
        if self.servers().is_empty() {
            return invalid("url", "no server given".to_owned());
        }
        for server in self.servers() {
            if let Err(e) = server.parse::<async_nats::ServerAddr>() {
                return invalid("url", format!("{:?}: {e}", redact_url(server)));
            }
        }
        if !is_valid_name(&self.stream) {
            return invalid(
                "stream",
                format!(
                    "{:?} must be non-empty letters, digits, - and _",
                    self.stream
                ),
            );
        }
        if !is_valid_name(&self.consumer) {
            return invalid(
                "consumer",
                format!(
                    "{:?} must be non-empty letters, digits, - and _",
                    self.consumer
                ),
            );
        }
        let prefix_ok = self.subject_prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
        });
        if !prefix_ok {
            return invalid(
                "subject_prefix",
                format!(
                    "{:?} must be dot-separated non-empty tokens without spaces, * or >",
                    self.subject_prefix
                ),
            );
        }
        for (field, value) in [
            ("duplicate_window", self.duplicate_window),
            ("max_age", self.max_age),
            ("ack_wait", self.ack_wait),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be positive".to_owned());
            }
        }
        if self.duplicate_window > self.max_age {
            return invalid(
                "duplicate_window",
                format!(
                    "{:?} must not exceed max_age ({:?})",
                    self.duplicate_window, self.max_age
                ),
            );
        }
        if self.max_bytes == 0 || i64::try_from(self.max_bytes).is_err() {
            return invalid("max_bytes", "must be between 1 and 2^63-1".to_owned());
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid("replicas", format!("{} must be 1 to 5", self.replicas));
        }
        if self.auth.cert_file.is_some() != self.auth.key_file.is_some() {
            return invalid(
                "auth.cert_file",
                "cert_file and key_file go together".to_owned(),
            );
        }
        for (field, path) in [
            ("auth.ca_file", &self.auth.ca_file),
            ("auth.cert_file", &self.auth.cert_file),
            ("auth.key_file", &self.auth.key_file),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return invalid(field, format!("{} is not a readable file", path.display()));
                }
            }
        }
        self.auth.login()?;
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return invalid(
                "max_deliver",
                format!("{} must be -1 (no limit) or positive", self.max_deliver),
            );
        }
        Ok(())
    }

    /// The comma-separated server URLs, trimmed.
    pub(crate) fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A stream or consumer name JetStream accepts everywhere (it is part of API subjects and
/// of file names in the store).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `url` (possibly a comma-separated list) with any `user:password@` replaced by
/// `<redacted>@`.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.find("://") {
                Some(i) => server.split_at(i + 3),
                None => ("", server),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}<redacted>{}", &rest[at..]),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = JetStreamConfig::default();
        config.validate().unwrap();
        assert_eq!(config.stream, "ETCDMON_ALERTS");
        assert_eq!(config.subject_prefix, "etcdmon.alerts");
        assert_eq!(config.consumer, "etcdmon-alerter");
        assert_eq!(config.max_bytes, 256 * 1024 * 1024);
        assert_eq!(config.max_deliver, -1);
    }

    #[test]
    fn parses_humantime_and_rejects_unknown_fields() {
        let config: JetStreamConfig = serde_json::from_str(
            r#"{"url":"nats://a:4222, nats://b:4222","ack_wait":"1s","max_age":"1day"}"#,
        )
        .unwrap();
        assert_eq!(config.ack_wait, Duration::from_secs(1));
        assert_eq!(config.max_age, Duration::from_secs(86_400));
        assert_eq!(config.servers(), ["nats://a:4222", "nats://b:4222"]);
        config.validate().unwrap();
        let err = serde_json::from_str::<JetStreamConfig>(r#"{"ack_wiat":"1s"}"#).unwrap_err();
        assert!(err.to_string().contains("ack_wiat"), "{err}");
    }

    #[test]
    fn validate_names_the_field() {
        type Breaker = fn(&mut JetStreamConfig);
        let cases: [(&str, Breaker); 9] = [
            ("url", |c| c.url = " , ".into()),
            ("stream", |c| c.stream = "A.B".into()),
            ("consumer", |c| c.consumer = String::new()),
            ("subject_prefix", |c| c.subject_prefix = "a.>".into()),
            ("subject_prefix", |c| c.subject_prefix = "a..b".into()),
            ("ack_wait", |c| c.ack_wait = Duration::ZERO),
            ("duplicate_window", |c| {
                c.duplicate_window = Duration::from_secs(8 * 86_400)
            }),
            ("replicas", |c| c.replicas = 0),
            ("max_deliver", |c| c.max_deliver = 0),
        ];
        for (field, break_it) in cases {
            let mut config = JetStreamConfig::default();
            break_it(&mut config);
            let err = config.validate().unwrap_err();
            assert!(!err.is_retryable());
            assert!(
                err.to_string().contains(&format!("{field}:")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let config = JetStreamConfig {
            url: "nats://alerter:s3cret@a:4222,tls://b:4222".into(),
            ..JetStreamConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("nats://<redacted>@a:4222,tls://b:4222"),
            "{text}"
        );
    }
}
