//! The collector's configuration. Sources, later ones winning: TOML file,
//! `ETCDMON_COLLECTOR_*` environment (nested with `__`), flags. See
//! `deploy/config/collector.example.toml` (parsed by a test) and
//! `docs/storage.md`.

pub use crate::api::auth::Role;
use etcdmon_core::config::FieldError;
use etcdmon_core::telemetry::LogConfig;
pub use etcdmon_storage::open::{StorageConfig, StorageTarget};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment prefix: `ETCDMON_COLLECTOR_GRPC__LISTEN` sets `grpc.listen`.
pub const ENV_PREFIX: &str = "ETCDMON_COLLECTOR_";

/// The whole collector configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// The agents' gRPC endpoint.
    pub grpc: GrpcConfig,
    /// REST API, web page, `/metrics`, `/healthz`.
    pub http: HttpConfig,
    /// Where samples and events go.
    pub storage: StorageConfig,
    /// Batching and limits of the ingest path.
    pub ingest: IngestConfig,
    /// Logging.
    pub log: LogConfig,
    /// Overrides of the built-in rules, by rule name (see docs/alerts.md):
    /// `[rules.db_near_quota] fire = 0.9`; resolved against the defaults when
    /// the config is loaded.
    pub rules: crate::rules::config::RuleSet,
    /// How often the rules are evaluated.
    #[serde(with = "humantime_serde")]
    pub rules_interval: Duration,
    /// The consistency check: members' `HashKV` compared at a common revision.
    pub consistency: ConsistencyConfig,
    /// Clusters registered ahead of their agents (`[[clusters]]`): shown while
    /// silent, and `cluster_not_reporting` fires while none of their agents
    /// reports.
    pub clusters: Vec<crate::state::RegisteredCluster>,
    /// Where alert candidates are published.
    pub alerting: crate::candidates::AlertingConfig,
    /// After SIGTERM, how long the last writes to an unavailable store are
    /// retried, and how long the alert outbox gets to publish what it holds,
    /// before the collector exits (batches not stored by then stay
    /// unacknowledged, and their agents send them again).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            rules: Default::default(),
            rules_interval: Duration::from_secs(1),
            consistency: ConsistencyConfig::default(),
            clusters: Vec::new(),
            alerting: Default::default(),
            shutdown_grace: etcdmon_core::shutdown::DEFAULT_GRACE,
        }
    }
}

/// `[consistency]`: how often members' data are compared (see
/// `crate::consistency` and the `data_inconsistent` rule).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// Ask the agents for their members' `HashKV`.
    pub enabled: bool,
    /// How often. Each check makes every member read its whole store once
    /// (etcd's own periodic corruption check has the same cost), so minutes,
    /// not seconds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(300),
        }
    }
}

/// The agents' gRPC listener, and who may report there.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address for agents.
    pub listen: SocketAddr,
    /// TLS of the listener; required unless `allow_plaintext`.
    pub tls: Option<GrpcTlsConfig>,
    /// Who may report, and for which clusters: each agent (or group of agents)
    /// by its client certificate or a bearer token. Required unless
    /// `allow_plaintext`; with entries here every stream must present one.
    pub agents: Vec<AgentGrant>,
    /// Accept agents without TLS and, when `agents` is empty, without
    /// credentials: anyone who reaches the port can then write any cluster's
    /// data. For a trusted network or a test; the collector warns at start.
    pub allow_plaintext: bool,
    /// Connections at once from one IP address, so that one host cannot take
    /// every slot. Raise it when many agents reach the collector through one
    /// NAT address.
    pub max_connections_per_address: usize,
}

/// TLS of the gRPC listener (PEM files).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// The collector's certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that signs agents' client certificates; agents identified by a
    /// certificate in `agents` need it. Agents with a token need no client
    /// certificate.
    pub client_ca: Option<PathBuf>,
}

/// Agents allowed to report, by one credential, for some clusters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGrant {
    /// A name for logs and errors, e.g. `prod-eu agents`.
    pub name: String,
    /// A DNS name (subject alternative name) or the common name of the agents'
    /// client certificate (signed by `grpc.tls.client_ca`).
    pub certificate: Option<String>,
    /// SHA-256 (hex) of the agents' bearer token: the token itself is never in
    /// the config. `etcdmon-collector --hash-token` prints it.
    pub token_sha256: Option<String>,
    /// Clusters these agents may report for; `*` and `?` are wildcards
    /// (`prod-eu-*`).
    pub clusters: Vec<String>,
    /// Members (by name) these agents may report for, with the same
    /// wildcards; empty: any member of `clusters`. A certificate per member
    /// with `members = ["etcd-0"]` keeps one member's agent from speaking for
    /// another; such agents must set `identity.member_name`.
    #[serde(default)]
    pub members: Vec<String>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7070)),
            tls: None,
            agents: Vec::new(),
            allow_plaintext: false,
            max_connections_per_address: crate::ingest::incoming::MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

impl GrpcConfig {
    /// Agents must authenticate over TLS unless plain text is allowed, and each
    /// grant names one credential and some clusters.
    fn validate(&self) -> Result<(), FieldError> {
        if self.max_connections_per_address == 0 {
            return Err(FieldError::new(
                "grpc.max_connections_per_address",
                "must be at least 1",
            ));
        }
        if !self.allow_plaintext {
            if self.tls.is_none() {
                return Err(FieldError::new(
                    "grpc.tls",
                    "is required: agents' data and credentials cross the network (set \
                     grpc.allow_plaintext = true, or --allow-plaintext, to accept plain \
                     text from anyone who reaches the port)",
                ));
            }
            if self.agents.is_empty() {
                return Err(FieldError::new(
                    "grpc.agents",
                    "is required: say which client certificates or tokens may report for \
                     which clusters (or set grpc.allow_plaintext = true to accept anyone)",
                ));
            }
        }
        for g in &self.agents {
            if g.name.is_empty() {
                return Err(FieldError::new("grpc.agents.name", "must not be empty"));
            }
            match (&g.certificate, &g.token_sha256) {
                (Some(_), None) => {
                    if self
                        .tls
                        .as_ref()
                        .and_then(|t| t.client_ca.as_ref())
                        .is_none()
                    {
                        return Err(FieldError::new(
                            "grpc.tls.client_ca",
                            format!(
                                "is required to identify agents by certificate ({:?})",
                                g.name
                            ),
                        ));
                    }
                }
                (None, Some(hash)) => {
                    if !is_sha256_hex(hash) {
                        return Err(FieldError::new(
                            "grpc.agents.token_sha256",
                            format!(
                                "{:?}: must be 64 hex digits (etcdmon-collector --hash-token prints them)",
                                g.name
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        "grpc.agents",
                        format!(
                            "{:?} must set exactly one of certificate, token_sha256",
                            g.name
                        ),
                    ))
                }
            }
            if g.clusters.is_empty() {
                return Err(FieldError::new(
                    "grpc.agents.clusters",
                    format!("{:?}: name at least one cluster (\"*\" for all)", g.name),
                ));
            }
        }
        Ok(())
    }
}

/// HTTP listener of the API, the page and `/metrics`, and who may use them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of the API and `/metrics`.
    pub listen: SocketAddr,
    /// Host names requests may address besides IP addresses and `localhost`
    /// (globs, e.g. `etcdmon.example.internal`, `*.svc.cluster.local`; `*`
    /// for any). A request for any other Host is refused: a web page cannot
    /// then reach the API through a name it controls (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Who may call which endpoint.
    pub auth: HttpAuthConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_hosts: Vec::new(),
            auth: HttpAuthConfig::default(),
        }
    }
}

/// API credentials and roles (see `docs/api.md`, "Authentication").
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// The role of a request without credentials; unset: such requests are
    /// refused (401). Above `viewer` only on a loopback listener.
    pub anonymous: Option<Role>,
    /// API tokens, each with a role; the config holds only their SHA-256.
    pub tokens: Vec<ApiToken>,
    /// OIDC/JWT bearer tokens of an identity provider.
    pub jwt: Option<JwtConfig>,
}

/// OIDC/JWT login (see `docs/api.md`): tokens signed by the provider's key for
/// `issuer` and `audience`, with a role in `role_claim`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry, e.g. `https://login.example.com/realms/ops`.
    pub issuer: String,
    /// The `aud` every token must include, e.g. `etcdmon`.
    pub audience: String,
    /// The provider's JWKS (its `jwks_uri`), fetched on first use, on an
    /// unknown key id and every 10 minutes. One of `jwks_url`, `jwks_file`,
    /// `key_file`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA of the `jwks_url` server's certificate; default: the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A JWKS document on disk.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// One PEM public key (with `algorithm`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The algorithm of `key_file`: `RS256` (default), `RS384`, `RS512`,
    /// `PS256`, `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`.
    #[serde(default = "default_jwt_algorithm")]
    pub algorithm: String,
    /// Claim holding the caller's role(s): a string or a list of strings.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim naming the caller (for the audit log and authors), e.g. `email`.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Claim values (e.g. group names) and the role each grants; empty: the
    /// values must be role names themselves. The highest role found counts.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Role>,
}

fn default_jwt_algorithm() -> String {
    "RS256".to_owned()
}

fn default_role_claim() -> String {
    "etcdmon_role".to_owned()
}

fn default_name_claim() -> String {
    "sub".to_owned()
}

impl JwtConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if self.issuer.is_empty() {
            return Err(FieldError::new("http.auth.jwt.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(FieldError::new(
                "http.auth.jwt.audience",
                "must not be empty",
            ));
        }
        let sources = [
            self.jwks_url.is_some(),
            self.jwks_file.is_some(),
            self.key_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(FieldError::new(
                "http.auth.jwt",
                "set exactly one of jwks_url, jwks_file, key_file",
            ));
        }
        if let Some(url) = &self.jwks_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| FieldError::new("http.auth.jwt.jwks_url", e.to_string()))?;
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
                return Err(FieldError::new(
                    "http.auth.jwt.jwks_url",
                    "must be https:// (whoever could change the keys in transit could \
                     log in as anyone); http:// only on loopback",
                ));
            }
        }
        if self.key_file.is_some()
            && !matches!(
                self.algorithm.as_str(),
                "RS256"
                    | "RS384"
                    | "RS512"
                    | "PS256"
                    | "PS384"
                    | "PS512"
                    | "ES256"
                    | "ES384"
                    | "EdDSA"
            )
        {
            return Err(FieldError::new(
                "http.auth.jwt.algorithm",
                format!(
                    "{:?} is not a public-key signature algorithm",
                    self.algorithm
                ),
            ));
        }
        Ok(())
    }
}

/// One API token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who uses it (for the audit log), e.g. `grafana` or `alice`.
    pub name: String,
    /// SHA-256 (hex) of the token (`etcdmon-collector --hash-token`).
    pub token_sha256: String,
    /// What it may do.
    pub role: Role,
}

impl HttpConfig {
    /// Someone must be able to use the API, and nobody anonymous may change
    /// anything from another host.
    fn validate(&self) -> Result<(), FieldError> {
        let auth = &self.auth;
        if auth.anonymous.is_none() && auth.tokens.is_empty() && auth.jwt.is_none() {
            return Err(FieldError::new(
                "http.auth",
                "nobody could use the API: add [[http.auth.tokens]] or [http.auth.jwt], or \
                 set http.auth.anonymous = \"viewer\" (--anonymous viewer) for read-only \
                 access without credentials",
            ));
        }
        if let Some(jwt) = &auth.jwt {
            jwt.validate()?;
        }
        if auth.anonymous.is_some_and(|r| r > Role::Viewer) && !self.listen.ip().is_loopback() {
            return Err(FieldError::new(
                "http.auth.anonymous",
                format!(
                    "may be above viewer only on a loopback listener (http.listen is {}): \
                     anyone who reaches it could silence every alert",
                    self.listen
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &auth.tokens {
            if t.name.is_empty() {
                return Err(FieldError::new(
                    "http.auth.tokens.name",
                    "must not be empty",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(FieldError::new(
                    "http.auth.tokens.name",
                    format!(
                        "{:?} is given twice: the audit log could not tell them apart",
                        t.name
                    ),
                ));
            }
            if !is_sha256_hex(&t.token_sha256) {
                return Err(FieldError::new(
                    "http.auth.tokens.token_sha256",
                    format!(
                        "{:?}: must be 64 hex digits (etcdmon-collector --hash-token prints them)",
                        t.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a SHA-256 in hex.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Ingest path.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest encoded batch accepted from an agent; larger ones end the
    /// stream with RESOURCE_EXHAUSTED.
    pub max_batch_bytes: usize,
    /// An idle writer writes as soon as this many rows are gathered,
    /// across agents, without waiting for `flush_interval`.
    pub flush_rows: usize,
    /// Longest a batch waits for its write while the writer is idle (about
    /// one insert per second per table at low load).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Largest write. A writer that was busy takes everything queued
    /// meanwhile, up to this many rows, so the INSERTs grow with the load
    /// instead of falling behind it.
    pub max_write_rows: usize,
    /// Batches waiting for the writer, across agents. When full, agents
    /// wait (backpressure through gRPC flow control) instead of the
    /// collector's memory growing.
    pub queue_batches: usize,
    /// Memory of the rows waiting for the writer or being written, across
    /// agents, estimated from their sizes. When it is used up, agents wait as
    /// for `queue_batches`: a few batches of very many rows cannot exhaust
    /// memory where a count of batches would let them.
    pub queue_bytes: usize,
    /// Samples one batch may hold once decoded. A batch with more is refused
    /// (acknowledged with the reason; its agent drops it): a default sample is
    /// two bytes on the wire and some hundred in memory, so one message within
    /// `max_batch_bytes` could otherwise turn into millions of rows. An agent's
    /// batch holds a few thousand.
    pub max_batch_samples: usize,
    /// A member whose agent sent nothing for this long is shown stale and
    /// unhealthy in the live state, even if its stream is still open.
    #[serde(with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// `/healthz` turns unhealthy when storage writes have failed this long.
    #[serde(with = "humantime_serde")]
    pub unhealthy_after: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch_bytes: 8 * 1024 * 1024,
            flush_rows: 50_000,
            flush_interval: Duration::from_secs(1),
            max_write_rows: 500_000,
            queue_batches: 256,
            queue_bytes: 256 * 1024 * 1024,
            max_batch_samples: 250_000,
            agent_timeout: Duration::from_secs(30),
            unhealthy_after: Duration::from_secs(30),
        }
    }
}

impl CollectorConfig {
    /// Loads the config from an optional TOML file, the `ETCDMON_COLLECTOR_*`
    /// environment and `overrides` (flags, or what `etcdmon up` sets), later
    /// winning, and checks it (the rules are resolved as they are read); the
    /// error names the field. The one way every collector's config is made.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let cfg: Self = etcdmon_core::config::load(file, ENV_PREFIX, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.storage.target()?;
        self.grpc.validate()?;
        self.http.validate()?;
        if self.ingest.max_batch_bytes < 1024 {
            return Err(FieldError::new(
                "ingest.max_batch_bytes",
                "must be at least 1024",
            ));
        }
        if self.ingest.flush_rows == 0 {
            return Err(FieldError::new("ingest.flush_rows", "must be positive"));
        }
        if self.ingest.max_write_rows < self.ingest.flush_rows {
            return Err(FieldError::new(
                "ingest.max_write_rows",
                "must be at least ingest.flush_rows",
            ));
        }
        if self.ingest.queue_batches == 0 {
            return Err(FieldError::new("ingest.queue_batches", "must be positive"));
        }
        if self.ingest.queue_bytes < 1024 * 1024 {
            return Err(FieldError::new(
                "ingest.queue_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.ingest.max_batch_samples < 1000 {
            return Err(FieldError::new(
                "ingest.max_batch_samples",
                "must be at least 1000",
            ));
        }
        if self.ingest.flush_interval.is_zero() {
            return Err(FieldError::new(
                "ingest.flush_interval",
                "must be longer than zero",
            ));
        }
        if let Some(js) = &self.alerting.jetstream {
            js.validate()
                .map_err(|e| FieldError::new("alerting.jetstream", e.to_string()))?;
        }
        if self.alerting.outbox_bytes < 4096 {
            return Err(FieldError::new(
                "alerting.outbox_bytes",
                "must be at least 4096",
            ));
        }
        if self.rules_interval.is_zero() {
            return Err(FieldError::new(
                "rules_interval",
                "must be longer than zero",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for c in &self.clusters {
            if c.name.is_empty() {
                return Err(FieldError::new("clusters.name", "must not be empty"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(FieldError::new(
                    "clusters.name",
                    format!("{:?} is registered twice", c.name),
                ));
            }
        }
        if self.consistency.interval.is_zero() {
            return Err(FieldError::new(
                "consistency.interval",
                "must be longer than zero (set consistency.enabled = false to turn the check off)",
            ));
        }
        if self.storage.retention_interval.is_zero() {
            return Err(FieldError::new(
                "storage.retention_interval",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_core::config::from_toml_str;

    #[test]
    fn storage_urls() {
        let mut s = StorageConfig {
            url: "sqlite:/var/lib/etcdmon/db.sqlite".into(),
            ..Default::default()
        };
        assert_eq!(
            s.target().expect("sqlite"),
            StorageTarget::Sqlite("/var/lib/etcdmon/db.sqlite".into())
        );
        s.url = "clickhouse://ch:8123/metrics".into();
        assert_eq!(
            s.target().expect("ch"),
            StorageTarget::ClickHouse {
                url: "http://ch:8123".into(),
                database: "metrics".into()
            }
        );
        s.url = "clickhouses://ch.example:8443/metrics".into();
        assert_eq!(
            s.target().expect("ch over https"),
            StorageTarget::ClickHouse {
                url: "https://ch.example:8443".into(),
                database: "metrics".into()
            }
        );
        s.url = "clickhouse://ch:8123".into();
        assert!(
            matches!(s.target(), Ok(StorageTarget::ClickHouse { database, .. }) if database == "etcdmon")
        );
        for bad in [
            "postgres://x",
            "sqlite:",
            "clickhouse:///db",
            "clickhouses:///db",
            "clickhouse://h:1/bad-name",
        ] {
            s.url = bad.into();
            assert_eq!(s.target().expect_err(bad).field, "storage.url");
        }
    }

    #[test]
    fn example_file_parses_and_validates() {
        let c: CollectorConfig =
            from_toml_str(include_str!("../../deploy/config/collector.example.toml"))
                .expect("parse");
        c.validate().expect("valid");
        assert!(matches!(
            c.storage.target(),
            Ok(StorageTarget::ClickHouse { .. })
        ));
    }

    /// Agents must authenticate over TLS unless plain text is asked for.
    #[test]
    fn defaults_need_agent_credentials_or_plain_text() {
        let mut c = CollectorConfig::default();
        assert_eq!(c.validate().unwrap_err().field, "grpc.tls");
        c.grpc.tls = Some(GrpcTlsConfig {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
            client_ca: None,
        });
        assert_eq!(c.validate().unwrap_err().field, "grpc.agents");
        let grant = |cert: Option<&str>, token: Option<&str>, clusters: &[&str]| AgentGrant {
            name: "a".into(),
            certificate: cert.map(str::to_owned),
            token_sha256: token.map(str::to_owned),
            clusters: clusters.iter().map(|c| (*c).to_owned()).collect(),
            members: Vec::new(),
        };
        c.grpc.agents = vec![grant(Some("agent"), None, &["*"])];
        assert_eq!(c.validate().unwrap_err().field, "grpc.tls.client_ca");
        c.grpc.agents = vec![grant(None, Some("abc"), &["*"])];
        assert_eq!(c.validate().unwrap_err().field, "grpc.agents.token_sha256");
        c.grpc.agents = vec![grant(None, Some(&"a".repeat(64)), &[])];
        assert_eq!(c.validate().unwrap_err().field, "grpc.agents.clusters");
        c.grpc.agents = vec![grant(Some("x"), Some(&"a".repeat(64)), &["*"])];
        assert_eq!(c.validate().unwrap_err().field, "grpc.agents");
        c.grpc.agents = vec![grant(None, Some(&"a".repeat(64)), &["lab"])];
        c.http.auth.anonymous = Some(Role::Viewer);
        c.validate().expect("TLS and a token grant");

        let mut open = CollectorConfig::default();
        open.grpc.allow_plaintext = true;
        open.http.auth.anonymous = Some(Role::Viewer);
        open.validate().expect("plain text, anyone");
    }

    /// Somebody must be able to use the API; anonymous changes only on loopback.
    #[test]
    fn the_api_needs_tokens_or_an_anonymous_role() {
        let mut c = CollectorConfig::default();
        c.grpc.allow_plaintext = true;
        assert_eq!(c.validate().unwrap_err().field, "http.auth");
        c.http.auth.anonymous = Some(Role::Admin);
        c.validate().expect("anonymous admin on loopback");
        c.http.listen = "0.0.0.0:8080".parse().expect("address");
        assert_eq!(c.validate().unwrap_err().field, "http.auth.anonymous");
        c.http.auth.anonymous = Some(Role::Viewer);
        c.validate().expect("anonymous viewer anywhere");
        let token = |name: &str, hash: &str| ApiToken {
            name: name.into(),
            token_sha256: hash.into(),
            role: Role::Operator,
        };
        c.http.auth.tokens = vec![token("alice", "abc")];
        assert_eq!(
            c.validate().unwrap_err().field,
            "http.auth.tokens.token_sha256"
        );
        c.http.auth.tokens = vec![
            token("alice", &"a".repeat(64)),
            token("alice", &"b".repeat(64)),
        ];
        assert_eq!(c.validate().unwrap_err().field, "http.auth.tokens.name");
        c.http.auth.tokens.pop();
        c.http.auth.anonymous = None;
        c.validate().expect("a token and no anonymous access");

        let jwt = |url: Option<&str>, key_file: Option<&str>| JwtConfig {
            issuer: "https://idp".into(),
            audience: "etcdmon".into(),
            jwks_url: url.map(str::to_owned),
            ca_file: None,
            jwks_file: None,
            key_file: key_file.map(Into::into),
            algorithm: default_jwt_algorithm(),
            role_claim: default_role_claim(),
            name_claim: default_name_claim(),
            roles: Default::default(),
        };
        c.http.auth.tokens.clear();
        c.http.auth.jwt = Some(jwt(Some("https://idp/certs"), None));
        c.validate().expect("a JWT provider alone lets people in");
        c.http.auth.jwt = Some(jwt(Some("http://idp/certs"), None));
        assert_eq!(c.validate().unwrap_err().field, "http.auth.jwt.jwks_url");
        c.http.auth.jwt = Some(jwt(Some("http://127.0.0.1:9/certs"), None));
        c.validate().expect("plain http on loopback");
        c.http.auth.jwt = Some(jwt(Some("https://idp/certs"), Some("/k.pem")));
        assert_eq!(c.validate().unwrap_err().field, "http.auth.jwt");
        c.http.auth.jwt = Some(JwtConfig {
            algorithm: "HS256".into(),
            ..jwt(None, Some("/k.pem"))
        });
        assert_eq!(c.validate().unwrap_err().field, "http.auth.jwt.algorithm");
    }

    #[test]
    fn the_largest_write_is_at_least_flush_rows() {
        let mut c = CollectorConfig::default();
        c.grpc.allow_plaintext = true;
        c.http.auth.anonymous = Some(Role::Viewer);
        c.ingest.max_write_rows = c.ingest.flush_rows - 1;
        assert_eq!(c.validate().unwrap_err().field, "ingest.max_write_rows");
        c.ingest.max_write_rows = c.ingest.flush_rows;
        c.validate().expect("equal is fine");
    }
}
