//! Command line of `etcdmon-alerter`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Map, Value};

use crate::config::{AlerterConfig, ENV_PREFIX};

/// Turns alert candidates into notifications.
#[derive(Debug, Parser)]
#[command(name = "etcdmon-alerter", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see deploy/config/alerter.example.toml).
    #[arg(long, short = 'c', env = "ETCDMON_ALERTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server with the candidates' JetStream stream [nats.url].
    #[arg(long)]
    pub nats: Option<String>,
    /// sqlite:PATH or clickhouse://HOST:PORT/DATABASE: the collector's store [storage.url].
    #[arg(long)]
    pub storage: Option<String>,
    /// Listen address of /metrics and /healthz [http.listen].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Log level or filter [log.level].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Check the config (and build every receiver), print it and exit.
    #[arg(long)]
    pub check_config: bool,
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
        if let Some(n) = &self.nats {
            set("nats", "url", json!(n));
        }
        if let Some(s) = &self.storage {
            set("storage", "url", json!(s));
        }
        if let Some(a) = self.http_listen {
            set("http", "listen", json!(a.to_string()));
        }
        if let Some(l) = &self.log_level {
            set("log", "level", json!(l));
        }
        Value::Object(root)
    }
}

/// Loads and validates the config; the error names the field.
pub fn load_config(cli: &Cli) -> anyhow::Result<AlerterConfig> {
    let cfg: AlerterConfig =
        etcdmon_core::config::load(cli.config.as_deref(), ENV_PREFIX, &cli.overrides())?;
    cfg.build()?;
    Ok(cfg)
}
