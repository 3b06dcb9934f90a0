//! Command line of `etcdmon-agent`: global flags that override the config
//! file and environment, and the subcommands.

use crate::config::AgentConfig;
use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use etcdmon_core::config::Overrides;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Watches one etcd member and its host.
#[derive(Debug, Parser)]
#[command(name = "etcdmon-agent", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see deploy/config/agent.example.toml).
    #[arg(long, short = 'c', env = "ETCDMON_AGENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Settings that override the config file and environment.
    #[command(flatten)]
    pub flags: Flags,
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream results to the collector (the default).
    Run,
    /// Run the collectors and print their results here.
    Collect {
        /// Run every collector once, print, and exit (non-zero if etcd is unreachable).
        #[arg(long)]
        once: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Flags that override config fields (each names its config key).
#[derive(Debug, Default, Args)]
pub struct Flags {
    /// etcd client URL of the member to watch [etcd.endpoint].
    #[arg(long, global = true)]
    pub etcd_endpoint: Option<String>,
    /// etcd Prometheus URL, if not <endpoint>/metrics [etcd.metrics_url].
    #[arg(long, global = true)]
    pub metrics_url: Option<String>,
    /// etcd's data dir, for the fsync probe and disk metrics [etcd.data_dir].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// etcd's pid file [etcd.pid_file].
    #[arg(long, global = true)]
    pub pid_file: Option<PathBuf>,
    /// CA certificate for etcd [etcd.tls.ca].
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd [etcd.tls.cert].
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key for etcd [etcd.tls.key].
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Cluster name [identity.cluster].
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// Member name [identity.member_name].
    #[arg(long, global = true)]
    pub member_name: Option<String>,
    /// Node name [identity.node].
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// Region [identity.region].
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Tag KEY=VALUE, repeatable [identity.tags].
    #[arg(long = "tag", global = true, value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Collector gRPC URL [upstream.address].
    #[arg(long, global = true)]
    pub collector: Option<String>,
    /// Listen address of /metrics and /healthz [http.listen].
    #[arg(long, global = true)]
    pub http_listen: Option<SocketAddr>,
    /// Log level or filter [log.level].
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl Flags {
    /// The flags that were given, shaped like the config file.
    pub fn overrides(&self) -> Value {
        let mut o = Overrides::new();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        o.set_opt("etcd.endpoint", self.etcd_endpoint.as_ref())
            .set_opt("etcd.metrics_url", self.metrics_url.as_ref())
            .set_opt("etcd.data_dir", path(&self.data_dir))
            .set_opt("etcd.pid_file", path(&self.pid_file))
            .set_opt("etcd.tls.ca", path(&self.cacert))
            .set_opt("etcd.tls.cert", path(&self.cert))
            .set_opt("etcd.tls.key", path(&self.key))
            .set_opt("identity.cluster", self.cluster.as_ref())
            .set_opt("identity.member_name", self.member_name.as_ref())
            .set_opt("identity.node", self.node.as_ref())
            .set_opt("identity.region", self.region.as_ref())
            .set_opt("upstream.address", self.collector.as_ref())
            .set_opt("http.listen", self.http_listen)
            .set_opt("log.level", self.log_level.as_ref());
        if !self.tags.is_empty() {
            let tags: Map<String, Value> = self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            o.set("identity.tags", Value::Object(tags));
        }
        o.into_value()
    }
}

/// Loads and validates the config for `cli`; the error names the field.
pub fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(cli.config.as_deref(), &cli.flags.overrides())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_land_in_their_config_fields() {
        let cli = Cli::parse_from([
            "etcdmon-agent",
            "--etcd-endpoint",
            "https://10.0.0.1:2379",
            "--data-dir",
            "/var/lib/etcd",
            "--cacert",
            "/ca.pem",
            "--tag",
            "team=db",
            "collect",
            "--once",
            "--format",
            "json",
        ]);
        let cfg = load_config(&cli).expect("config");
        assert_eq!(cfg.etcd.endpoint, "https://10.0.0.1:2379");
        assert_eq!(
            cfg.etcd.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/etcd"))
        );
        assert_eq!(
            cfg.etcd.tls.ca.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            cfg.identity.tags.get("team").map(String::as_str),
            Some("db")
        );
        assert!(matches!(
            cli.command,
            Some(Command::Collect {
                once: true,
                format: Format::Json
            })
        ));
    }

    #[test]
    fn invalid_flag_value_names_the_field() {
        let cli = Cli::parse_from(["etcdmon-agent", "--etcd-endpoint", "localhost:2379"]);
        let e = load_config(&cli).expect_err("invalid");
        assert!(e.to_string().contains("etcd.endpoint"), "{e}");
    }

    #[test]
    fn bad_tag_is_rejected() {
        assert!(Cli::try_parse_from(["etcdmon-agent", "--tag", "novalue"]).is_err());
    }
}
