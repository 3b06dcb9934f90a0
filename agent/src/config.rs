//! The agent's configuration: who it is (identity), which etcd member it
//! watches, and one section per collector with its interval.
//!
//! Every field has a default so an empty file is a working config for a
//! local etcd on the standard port. See `deploy/config/agent.example.toml`
//! for a commented example (a test parses it) and `docs/agent.md`.

use etcdmon_core::config::FieldError;
use etcdmon_core::telemetry::LogConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment prefix: `ETCDMON_AGENT_ETCD__ENDPOINT` sets `etcd.endpoint`.
pub const ENV_PREFIX: &str = "ETCDMON_AGENT_";

/// The whole agent configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Labels attached to every result.
    pub identity: IdentityConfig,
    /// The etcd member to watch.
    pub etcd: EtcdConfig,
    /// Where to stream results (used by `etcdmon-agent run`).
    pub collector: CollectorConfig,
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
    /// Password for etcd auth.
    pub password: Option<String>,
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

/// Where the agent streams to, and how much it keeps while the collector
/// is away.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Collector gRPC address, e.g. `http://collector:7070`.
    pub address: Option<String>,
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

impl Default for CollectorConfig {
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
        }
    }
}

impl CollectorConfig {
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

/// Scrape of etcd's own metrics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Give up on a scrape after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Refuse payloads larger than this many bytes (memory bound).
    pub max_payload_bytes: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(4),
            max_payload_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Status through etcd's gRPC API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A call with no answer after this long is recorded as a timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Key read by the linearizable and serializable health reads (read only;
    /// it need not exist).
    pub health_key: String,
    /// Keep a watch on `health_key` open so that a member that exits is noticed
    /// the moment its connection closes, not at the next round (see
    /// docs/agent.md, "Event-driven detection").
    pub liveness_watch: bool,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
            health_key: "health".into(),
            liveness_watch: true,
        }
    }
}

/// Host USE metrics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Name of the etcd process, used when neither a pid file nor the
    /// endpoint's port identifies it.
    pub process_name: String,
    /// Report only these network interfaces; empty means all.
    pub interfaces: Vec<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            process_name: "etcd".into(),
            interfaces: Vec::new(),
        }
    }
}

/// The fsync probe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsyncConfig {
    /// Run this collector (needs `etcd.data_dir` or `fsync.dir`).
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Directory of the probe file; defaults to `etcd.data_dir`.
    pub dir: Option<PathBuf>,
    /// Writes per round, each followed by fdatasync.
    pub writes: u32,
    /// Bytes per write; 2300 is the size etcd's WAL writes are typically near
    /// and what the well-known fio recipe uses.
    pub block_size: u32,
}

impl Default for FsyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            dir: None,
            writes: 20,
            block_size: 2300,
        }
    }
}

/// TCP round-trip to peers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Connect timeout per peer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Certificate expiry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Certificate files besides `etcd.tls.ca` and `etcd.tls.cert`, e.g. the
    /// member's server and peer certificates.
    pub files: Vec<CertFile>,
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
            files: Vec::new(),
        }
    }
}

/// One certificate file to watch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM file (the first certificate in it is checked).
    pub path: PathBuf,
    /// `ca`, `client`, `server` or `peer`.
    pub role: CertRoleConfig,
}

/// Role of a certificate file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRoleConfig {
    /// A CA bundle.
    Ca,
    /// A client certificate.
    Client,
    /// A server certificate.
    Server,
    /// A peer certificate.
    Peer,
}

/// Largest fsync write accepted, so a typo cannot make the probe hurt etcd.
pub const MAX_FSYNC_BLOCK: u32 = 1024 * 1024;
/// Most fsync writes per round.
pub const MAX_FSYNC_WRITES: u32 = 1000;

impl AgentConfig {
    /// Checks values that parse but make no sense. The error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_url("etcd.endpoint", &self.etcd.endpoint)?;
        if !self.etcd.metrics_url.is_empty() {
            check_url("etcd.metrics_url", &self.etcd.metrics_url)?;
        }
        if let Some(addr) = &self.collector.address {
            check_url("collector.address", addr)?;
        }
        positive("collector.batch_interval", self.collector.batch_interval)?;
        if self.collector.max_batch_bytes < 1024 {
            return Err(FieldError::new(
                "collector.max_batch_bytes",
                "must be at least 1024",
            ));
        }
        if self.collector.window == 0 {
            return Err(FieldError::new("collector.window", "must be positive"));
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
        if self.etcd.username.is_some() != self.etcd.password.is_some() {
            return Err(FieldError::new(
                "etcd.password",
                "etcd.username and etcd.password must be given together",
            ));
        }
        positive("metrics.interval", self.metrics.interval)?;
        positive("metrics.timeout", self.metrics.timeout)?;
        positive("status.interval", self.status.interval)?;
        positive("status.timeout", self.status.timeout)?;
        positive("host.interval", self.host.interval)?;
        positive("fsync.interval", self.fsync.interval)?;
        positive("peers.interval", self.peers.interval)?;
        positive("peers.timeout", self.peers.timeout)?;
        positive("certs.interval", self.certs.interval)?;
        if self.metrics.max_payload_bytes == 0 {
            return Err(FieldError::new(
                "metrics.max_payload_bytes",
                "must be positive",
            ));
        }
        if !(1..=MAX_FSYNC_BLOCK).contains(&self.fsync.block_size) {
            return Err(FieldError::new(
                "fsync.block_size",
                format!(
                    "must be between 1 and {MAX_FSYNC_BLOCK}, got {}",
                    self.fsync.block_size
                ),
            ));
        }
        if !(1..=MAX_FSYNC_WRITES).contains(&self.fsync.writes) {
            return Err(FieldError::new(
                "fsync.writes",
                format!(
                    "must be between 1 and {MAX_FSYNC_WRITES}, got {}",
                    self.fsync.writes
                ),
            ));
        }
        Ok(())
    }

    /// Directory of the fsync probe file, if one is known.
    pub fn fsync_dir(&self) -> Option<&PathBuf> {
        self.fsync.dir.as_ref().or(self.etcd.data_dir.as_ref())
    }
}

fn positive(field: &'static str, d: Duration) -> Result<(), FieldError> {
    if d.is_zero() {
        Err(FieldError::new(field, "must be longer than zero"))
    } else {
        Ok(())
    }
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
        assert_eq!(c.peers.interval, Duration::from_secs(5));
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

    #[test]
    fn bad_duration_is_a_parse_error_naming_the_key() {
        let e =
            from_toml_str::<AgentConfig>("[status]\ntimeout = \"soon\"\n").expect_err("invalid");
        assert!(e.to_string().contains("status.timeout"), "{e}");
    }
}
