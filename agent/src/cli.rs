//! Command line of `etcdmon-agent`: global flags that override the config
//! file and environment, and the subcommands.

use crate::config::{AgentConfig, ENV_PREFIX};
use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
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
    /// Collector gRPC address [collector.address].
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
        let mut root = Map::new();
        let mut set = |section: &str, key: &str, v: Value| {
            let entry = root
                .entry(section.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                m.insert(key.to_string(), v);
            }
        };
        let path = |p: &PathBuf| json!(p.display().to_string());
        if let Some(v) = &self.etcd_endpoint {
            set("etcd", "endpoint", json!(v));
        }
        if let Some(v) = &self.metrics_url {
            set("etcd", "metrics_url", json!(v));
        }
        if let Some(v) = &self.data_dir {
            set("etcd", "data_dir", path(v));
        }
        if let Some(v) = &self.pid_file {
            set("etcd", "pid_file", path(v));
        }
        if let Some(v) = &self.cluster {
            set("identity", "cluster", json!(v));
        }
        if let Some(v) = &self.member_name {
            set("identity", "member_name", json!(v));
        }
        if let Some(v) = &self.node {
            set("identity", "node", json!(v));
        }
        if let Some(v) = &self.region {
            set("identity", "region", json!(v));
        }
        if !self.tags.is_empty() {
            let tags: Map<String, Value> = self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            set("identity", "tags", Value::Object(tags));
        }
        if let Some(v) = &self.collector {
            set("collector", "address", json!(v));
        }
        if let Some(v) = &self.http_listen {
            set("http", "listen", json!(v.to_string()));
        }
        if let Some(v) = &self.log_level {
            set("log", "level", json!(v));
        }
        let mut tls = Map::new();
        for (k, v) in [
            ("ca", &self.cacert),
            ("cert", &self.cert),
            ("key", &self.key),
        ] {
            if let Some(p) = v {
                tls.insert(k.into(), path(p));
            }
        }
        if !tls.is_empty() {
            let etcd = root
                .entry("etcd".to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = etcd {
                m.insert("tls".into(), Value::Object(tls));
            }
        }
        Value::Object(root)
    }
}

/// Loads and validates the config for `cli`; the error names the field.
pub fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let cfg: AgentConfig =
        etcdmon_core::config::load(cli.config.as_deref(), ENV_PREFIX, &cli.flags.overrides())?;
    cfg.validate()?;
    Ok(cfg)
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
