//! Command line of `etcdmon-alerter`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use etcdmon_core::config::Overrides;
use serde_json::Value;

use crate::config::AlerterConfig;
use crate::Setup;

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
        let mut o = Overrides::new();
        o.set_opt("nats.url", self.nats.as_ref())
            .set_opt("storage.url", self.storage.as_ref())
            .set_opt("http.listen", self.http_listen)
            .set_opt("log.level", self.log_level.as_ref());
        o.into_value()
    }
}

/// Loads the config, checks it and builds its routes and receivers (once); the
/// error names the field.
pub fn load(cli: &Cli) -> anyhow::Result<Setup> {
    let cfg = AlerterConfig::load(cli.config.as_deref(), &cli.overrides())?;
    Ok(Setup::new(cfg)?)
}
