//! Command line of `etcdmon-collector`.

use crate::config::{CollectorConfig, ENV_PREFIX};
use clap::Parser;
use serde_json::{json, Map, Value};
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
}

impl Cli {
    /// The flags that were given, shaped like the config file.
    pub fn overrides(&self) -> Value {
        let mut root = Map::new();
        let mut set = |section: &str, key: &str, v: Value| {
            if let Value::Object(m) = root
                .entry(section.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                m.insert(key.to_string(), v);
            }
        };
        if let Some(a) = self.grpc_listen {
            set("grpc", "listen", json!(a.to_string()));
        }
        if let Some(a) = self.http_listen {
            set("http", "listen", json!(a.to_string()));
        }
        if let Some(s) = &self.storage {
            set("storage", "url", json!(s));
        }
        if let Some(l) = &self.log_level {
            set("log", "level", json!(l));
        }
        if let Some(n) = &self.nats {
            root.insert("alerting".into(), json!({ "jetstream": { "url": n } }));
        }
        Value::Object(root)
    }
}

/// Loads and validates the config; the error names the field.
pub fn load_config(cli: &Cli) -> anyhow::Result<CollectorConfig> {
    let cfg: CollectorConfig =
        etcdmon_core::config::load(cli.config.as_deref(), ENV_PREFIX, &cli.overrides())?;
    cfg.validate()?;
    Ok(cfg)
}
