//! Command line of `etcdmon-collector`.

use crate::config::CollectorConfig;
use clap::Parser;
use etcdmon_core::config::Overrides;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Accepts agent streams, stores them, serves the API.
#[derive(Debug, Parser)]
#[command(name = "etcdmon-collector", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see deploy/config/collector.example.toml).
    #[arg(long, short = 'c', env = "ETCDMON_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address for agents [grpc.listen].
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Listen address of the API and /metrics [http.listen].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// sqlite:PATH or clickhouse://HOST:PORT/DATABASE [storage.url].
    #[arg(long)]
    pub storage: Option<String>,
    /// Publish alert candidates to this NATS server [alerting.jetstream.url].
    #[arg(long)]
    pub nats: Option<String>,
    /// Log level or filter [log.level].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Accept agents without TLS (and, with no [[grpc.agents]], without
    /// credentials) [grpc.allow_plaintext].
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Role of API requests without credentials: viewer (read-only), or
    /// operator or admin on a loopback listener [http.auth.anonymous].
    #[arg(long, value_name = "ROLE")]
    pub anonymous: Option<String>,
    /// Read a token from standard input, print its SHA-256 for
    /// `grpc.agents.token_sha256` or `http.auth.tokens.token_sha256`, and exit.
    #[arg(long)]
    pub hash_token: bool,
}

impl Cli {
    /// The flags that were given, shaped like the config file.
    pub fn overrides(&self) -> Value {
        let mut o = Overrides::new();
        o.set_opt("grpc.listen", self.grpc_listen)
            .set_opt("http.listen", self.http_listen)
            .set_opt("storage.url", self.storage.as_ref())
            .set_opt("log.level", self.log_level.as_ref())
            .set_opt("alerting.jetstream.url", self.nats.as_ref())
            .set_opt("http.auth.anonymous", self.anonymous.as_ref());
        if self.allow_plaintext {
            o.set("grpc.allow_plaintext", true);
        }
        o.into_value()
    }
}

/// Loads and validates the config; the error names the field.
pub fn load_config(cli: &Cli) -> anyhow::Result<CollectorConfig> {
    CollectorConfig::load(cli.config.as_deref(), &cli.overrides())
}

/// The SHA-256 (hex) of a token as `grpc.agents.token_sha256` wants it; a
/// trailing newline (from `echo` or a file) is not part of the token.
pub fn hash_token(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(
        token.trim_end_matches(['\n', '\r']).as_bytes(),
    ))
}
