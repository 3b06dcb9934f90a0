//! The agent's configuration: who it is (identity), which etcd member it
//! watches, where it streams (upstream), and one section per probe with its
//! interval (each defined beside its probe, in `probes/<name>/config.rs`).
//!
//! Every field has a default so an empty file is a working config for a
//! local etcd on the standard port. See `deploy/config/agent.example.toml`
//! for a commented example (a test parses it) and `docs/agent.md`.

use crate::probes::certs::CertsConfig;
use crate::probes::fsync::FsyncConfig;
use crate::probes::host::HostConfig;
use crate::probes::metrics::MetricsConfig;
use crate::probes::peers::PeersConfig;
use crate::probes::status::StatusConfig;
use etcdmon_core::config::{positive, FieldError};
use etcdmon_core::telemetry::LogConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment prefix: `ETCDMON_AGENT_ETCD__ENDPOINT` sets `etcd.endpoint`.
pub const ENV_PREFIX: &str = "ETCDMON_AGENT_";

/// Sections that were renamed, `(old, new)`: configs, environments and scripts
/// written for the old name keep working (`ETCDMON_AGENT_COLLECTOR__SPOOL_DIR`).
pub const RENAMED: &[(&str, &str)] = &[("collector", "upstream")];

/// The whole agent configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Labels attached to every result.
    pub identity: IdentityConfig,
    /// The etcd member to watch.
    pub etcd: EtcdConfig,
    /// Where to stream results (used by `etcdmon-agent run`); `[collector]`, its
    /// name before, is still read (see [`RENAMED`]).
    pub upstream: UpstreamConfig,
    /// The agent's own `/metrics` and `/healthz`.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Scrape of etcd's Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Status, alarms, members and health reads through the gRPC API.
    pub status: StatusConfig,
    /// Host USE metrics.
    pub host: HostConfig,
    /// fsync probe of the data-dir filesystem.
    pub fsync: FsyncConfig,
    /// TCP connect time to the peers.
    pub peers: PeersConfig,
    /// Certificate expiry.
    pub certs: CertsConfig,
}

/// Labels that say where a result comes from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Logical cluster name, e.g. `prod-eu-1`; every agent of one etcd cluster
    /// must use the same. Defaults to `local`, as `etcdmon up` does.
    pub cluster: String,
    /// Member name; when empty, learned from etcd's member list.
    pub member_name: String,
    /// Node (host) name; when empty, the host name.
    pub node: String,
    /// Region or zone.
    pub region: String,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            cluster: etcdmon_core::DEFAULT_CLUSTER.into(),
            member_name: String::new(),
            node: String::new(),
            region: String::new(),
            tags: BTreeMap::new(),
        }
    }
}

/// How to reach the watched etcd member.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// The member's client URL (one member, not a list: a multi-endpoint
    /// client would route around the very member we watch).
    pub endpoint: String,
    /// Prometheus endpoint; empty means `<endpoint>/metrics`. Set it when etcd
    /// runs with `--listen-metrics-urls`.
    pub metrics_url: String,
    /// etcd's data dir: the fsync probe and disk metrics need it.
    pub data_dir: Option<PathBuf>,
    /// Pid file of the etcd process, if it writes one.
    pub pid_file: Option<PathBuf>,
    /// User name for etcd auth, if enabled.
    pub username: Option<String>,
    /// Password for etcd auth; prefer `password_file`, since a config holding
    /// it must be kept secret. Never printed.
    pub password: Option<etcdmon_core::secret::Secret>,
    /// File holding the etcd password (its trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// TLS towards etcd (client URL and metrics URL).
    pub tls: TlsConfig,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:2379".into(),
            metrics_url: String::new(),
            data_dir: None,
            pid_file: None,
            username: None,
            password: None,
            password_file: None,
            tls: TlsConfig::default(),
        }
    }
}

impl EtcdConfig {
    /// The URL scraped for etcd's metrics.
    pub fn effective_metrics_url(&self) -> String {
        if self.metrics_url.is_empty() {
            format!("{}/metrics", self.endpoint.trim_end_matches('/'))
        } else {
            self.metrics_url.clone()
        }
    }
}

/// PEM files for TLS towards etcd.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA bundle that signed etcd's server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate (for `--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate; defaults to the URL's host.
    pub server_name: Option<String>,
}

/// Where the agent streams to (the collector), and how much it keeps while
/// the collector is away.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The collector's gRPC URL, e.g. `http://collector:7070`; an `http://` or
    /// `https://` URL with a host, checked when the config is read.
    #[serde(deserialize_with = "http_url")]
    pub address: Option<url::Url>,
    /// Stable id of this agent, the key under which the collector tracks
    /// sequence numbers; empty = `<node>/<cluster>/<endpoint host:port>`.
    pub agent_id: String,
    /// Reports are gathered into one batch per interval.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Largest batch sent (the collector may ask for less).
    pub max_batch_bytes: u64,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// Directory of the spool (unacknowledged batches spilled to disk);
    /// empty = `/var/lib/etcdmon-agent/spool` for root, else
    /// `~/.local/share/etcdmon-agent/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Memory for unacknowledged batches before they spill to disk.
    pub spool_memory_bytes: u64,
    /// Disk for unacknowledged batches; beyond it the oldest are dropped
    /// (and counted).
    pub spool_disk_bytes: u64,
    /// On shutdown, how long to wait for the last acks before spilling the
    /// rest to disk.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Compression of the stream: `zstd` (default: several times cheaper than
    /// gzip for the agent and the collector) or `gzip` (for collectors older
    /// than 0.1 that accept only gzip).
    pub compression: Compression,
    /// TLS towards the collector (an `https://` address): the CA that signed
    /// the collector's certificate, and this agent's client certificate when
    /// the collector identifies agents by certificate.
    pub tls: UpstreamTlsConfig,
    /// Bearer token the collector knows (by its hash) in `[[grpc.agents]]`.
    /// Prefer `token_file` (or `ETCDMON_AGENT_UPSTREAM__TOKEN`): a config file
    /// holding it must be kept secret.
    pub token: Option<etcdmon_core::secret::Secret>,
    /// File holding the bearer token (its trailing newline is ignored).
    pub token_file: Option<PathBuf>,
    /// Send the token over plain `http://` anyway (anyone on the path can read
    /// it); the agent warns at start.
    pub allow_plaintext: bool,
}

/// PEM files for TLS towards the collector.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// CA that signed the collector's certificate (required for `https://`).
    pub ca: Option<PathBuf>,
    /// This agent's client certificate.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Name to verify in the collector's certificate; defaults to the address's host.
    pub server_name: Option<String>,
}

/// Compression of the agent's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            address: None,
            agent_id: String::new(),
            batch_interval: Duration::from_secs(1),
            max_batch_bytes: 4 * 1024 * 1024,
            window: 32,
            spool_dir: None,
            spool_memory_bytes: 16 * 1024 * 1024,
            spool_disk_bytes: 512 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            compression: Compression::Zstd,
            tls: UpstreamTlsConfig::default(),
            token: None,
            token_file: None,
            allow_plaintext: false,
        }
    }
}

impl UpstreamConfig {
    /// The spool directory, defaulted as documented.
    pub fn effective_spool_dir(&self) -> PathBuf {
        if let Some(d) = &self.spool_dir {
            return d.clone();
        }
        let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
            || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
        match std::env::var_os("HOME") {
            Some(home) if !is_root => PathBuf::from(home).join(".local/share/etcdmon-agent/spool"),
            _ => PathBuf::from("/var/lib/etcdmon-agent/spool"),
        }
    }
}

/// The agent's own HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of `/metrics` and `/healthz`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9479)),
        }
    }
}

impl AgentConfig {
    /// Loads the config from an optional TOML file, the `ETCDMON_AGENT_*`
    /// environment and `overrides` (flags, or what `etcdmon up` sets), later
    /// winning, and checks it; the error names the field. The one way every
    /// agent's config is made.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let cfg: Self = etcdmon_core::config::load_renamed(file, ENV_PREFIX, overrides, RENAMED)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense. The error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_url("etcd.endpoint", &self.etcd.endpoint)?;
        if !self.etcd.metrics_url.is_empty() {
            check_url("etcd.metrics_url", &self.etcd.metrics_url)?;
        }
        positive("upstream.batch_interval", self.upstream.batch_interval)?;
        if self.upstream.max_batch_bytes < 1024 {
            return Err(FieldError::new(
                "upstream.max_batch_bytes",
                "must be at least 1024",
            ));
        }
        if self.upstream.window == 0 {
            return Err(FieldError::new("upstream.window", "must be positive"));
        }
        if self.upstream.tls.cert.is_some() != self.upstream.tls.key.is_some() {
            return Err(FieldError::new(
                "upstream.tls.key",
                "upstream.tls.cert and upstream.tls.key must be given together",
            ));
        }
        if let Some(addr) = &self.upstream.address {
            let secured = addr.scheme() == "https";
            if secured && self.upstream.tls.ca.is_none() {
                return Err(FieldError::new(
                    "upstream.tls.ca",
                    "is required for an https:// collector: the CA that signed its certificate",
                ));
            }
            let token = self.upstream.token.is_some() || self.upstream.token_file.is_some();
            if token && !secured && !self.upstream.allow_plaintext {
                return Err(FieldError::new(
                    "upstream.token",
                    "would cross the network in plain text: use an https:// address (or set \
                     upstream.allow_plaintext = true)",
                ));
            }
        }
        if self.identity.cluster.is_empty() {
            return Err(FieldError::new("identity.cluster", "must not be empty"));
        }
        if self.etcd.tls.cert.is_some() != self.etcd.tls.key.is_some() {
            return Err(FieldError::new(
                "etcd.tls.key",
                "etcd.tls.cert and etcd.tls.key must be given together",
            ));
        }
        let password = self.etcd.password.is_some() || self.etcd.password_file.is_some();
        if self.etcd.password.is_some() && self.etcd.password_file.is_some() {
            return Err(FieldError::new(
                "etcd.password_file",
                "set either etcd.password or etcd.password_file, not both",
            ));
        }
        if self.etcd.username.is_some() != password {
            return Err(FieldError::new(
                "etcd.password",
                "etcd.username and etcd.password (or etcd.password_file) must be given together",
            ));
        }
        self.metrics.validate()?;
        self.status.validate()?;
        self.host.validate()?;
        self.fsync.validate()?;
        self.peers.validate()?;
        self.certs.validate()?;
        Ok(())
    }

    /// Directory of the fsync probe file, if one is known.
    pub fn fsync_dir(&self) -> Option<&PathBuf> {
        self.fsync.dir.as_ref().or(self.etcd.data_dir.as_ref())
    }
}

/// An optional `http://` or `https://` URL with a host, parsed as it is read, so
/// the error names the field and says what is expected.
fn http_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    url::Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "must be an http:// or https:// URL with a host, got {text:?}"
            ))
        })
}

fn check_url(field: &'static str, value: &str) -> Result<(), FieldError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(FieldError::new(
            field,
            format!(
                "must be an http:// or https:// URL with a host, got {value:?} (scheme {:?})",
                u.scheme()
            ),
        )),
        Err(e) => Err(FieldError::new(
            field,
            format!("is not a URL ({e}): {value:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_core::config::from_toml_str;

    #[test]
    fn empty_config_is_valid_and_has_documented_defaults() {
        let c: AgentConfig = from_toml_str("").expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.status.interval, Duration::from_secs(1));
        assert_eq!(c.status.timeout, Duration::from_millis(800));
        assert_eq!(c.metrics.interval, Duration::from_secs(5));
        assert_eq!(c.host.interval, Duration::from_secs(5));
        assert_eq!(c.fsync.interval, Duration::from_secs(10));
        assert_eq!(c.fsync.block_size, 2300);
        assert_eq!(c.peers.interval, Duration::from_secs(1));
        assert_eq!(c.certs.interval, Duration::from_secs(3600));
        assert_eq!(
            c.etcd.effective_metrics_url(),
            "http://127.0.0.1:2379/metrics"
        );
    }

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../deploy/config/agent.example.toml");
        let c: AgentConfig = from_toml_str(text).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.identity.cluster, "prod-eu-1");
        assert_eq!(c.certs.files.len(), 2);
    }

    #[test]
    fn validation_names_the_field() {
        let c: AgentConfig = from_toml_str("[fsync]\nblock_size = 0\n").expect("parse");
        let e = c.validate().expect_err("invalid");
        assert_eq!(e.field, "fsync.block_size");

        let c: AgentConfig =
            from_toml_str("[etcd]\nendpoint = \"127.0.0.1:2379\"\n").expect("parse");
        assert_eq!(c.validate().expect_err("invalid").field, "etcd.endpoint");

        let c: AgentConfig = from_toml_str("[status]\ninterval = \"0s\"\n").expect("parse");
        assert_eq!(c.validate().expect_err("invalid").field, "status.interval");

        let c: AgentConfig = from_toml_str("[etcd.tls]\ncert = \"/c.pem\"\n").expect("parse");
        assert_eq!(c.validate().expect_err("invalid").field, "etcd.tls.key");
    }

    /// An https collector needs its CA; a token never crosses plain text unasked.
    #[test]
    fn upstream_credentials_need_tls() {
        let field = |toml: &str| {
            let c: AgentConfig = from_toml_str(toml).expect("parse");
            c.validate().err().map(|e| e.field)
        };
        assert_eq!(
            field("[upstream]\naddress = \"https://c:7070\"\n"),
            Some("upstream.tls.ca")
        );
        assert_eq!(
            field("[upstream]\naddress = \"https://c:7070\"\ntls.ca = \"/ca.pem\"\n"),
            None
        );
        let plain_token = "[upstream]\naddress = \"http://c:7070\"\ntoken_file = \"/t\"\n";
        assert_eq!(field(plain_token), Some("upstream.token"));
        assert_eq!(
            field(&format!("{plain_token}allow_plaintext = true\n")),
            None
        );
        assert_eq!(
            field("[upstream.tls]\ncert = \"/c.pem\"\n"),
            Some("upstream.tls.key")
        );
    }

    #[test]
    fn the_old_collector_section_still_configures_the_upstream() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "[collector]\naddress = \"http://c:7070\"\nwindow = 7\n",
        )
        .expect("write");
        let c = AgentConfig::load(Some(&file), &serde_json::json!({})).expect("loads");
        assert_eq!(
            c.upstream.address.as_ref().map(url::Url::as_str),
            Some("http://c:7070/")
        );
        assert_eq!(c.upstream.window, 7);
        // A flag (the new name) beside the file (the old name): both count.
        let flags = serde_json::json!({ "upstream": { "address": "http://d:7070" } });
        let c = AgentConfig::load(Some(&file), &flags).expect("loads");
        assert_eq!(
            c.upstream.address.map(String::from).as_deref(),
            Some("http://d:7070/")
        );
        assert_eq!(c.upstream.window, 7);
    }

    #[test]
    fn bad_duration_is_a_parse_error_naming_the_key() {
        let e =
            from_toml_str::<AgentConfig>("[status]\ntimeout = \"soon\"\n").expect_err("invalid");
        assert!(e.to_string().contains("status.timeout"), "{e}");
    }
}
