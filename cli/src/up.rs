//! `etcdmon up`: discover the members, then run the collector (on the embedded
//! store), the alerter (over an in-process channel) and an agent per member in
//! one process, each started through its service's own entry point with a
//! config made by the service's own loading and checks.
//!
//! ```text
//! start:  collector ─> alerter ─> agents (one per member)
//! stop:   rules ─> agents (flush their last batches) ─> collector (drains) ─> alerter
//! ```
//!
//! The rules stop first so that the agents' streams closing is never judged as
//! members going down: stopping the monitor makes no alert.

use anyhow::Context as _;
use clap::Args;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::{Agent, AgentConfig};
use etcdmon_alerter::config::{AlerterConfig, ReceiverConfig, ReceiverKind};
use etcdmon_alerter::{Alerter, Candidates, Setup};
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::{AlertSink, Collector, Listeners};
use etcdmon_core::config::Overrides;
use etcdmon_core::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Options of `etcdmon up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Client URL of any member of the cluster to watch.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
    /// Name shown for the cluster (the agent's `identity.cluster` has the same default).
    #[arg(long, default_value = etcdmon_core::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// Where the embedded store and the agents' spools live
    /// [default: ~/.local/share/etcdmon, /var/lib/etcdmon for root].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the API, web page and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// CA certificate for etcd.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Send every alert to this webhook (Alertmanager-compatible JSON); without it and
    /// without --alerter-config, alerts are written to the log. Every user of this
    /// machine sees it in `ps`: for a URL with a token in it, use --webhook-file.
    #[arg(long, conflicts_with = "webhook_file")]
    pub webhook: Option<String>,
    /// Like --webhook, with the URL read from this file (kept out of `ps`).
    #[arg(long, value_name = "FILE")]
    pub webhook_file: Option<PathBuf>,
    /// Alerter config file (routes, receivers, inhibition; see
    /// deploy/config/alerter.example.toml). Its `nats` and `storage` sections are not
    /// used: `up` runs the alerter in-process on its own store.
    #[arg(long)]
    pub alerter_config: Option<PathBuf>,
}

/// A member found through the member list.
#[derive(Debug, Clone)]
pub struct DiscoveredMember {
    /// Member name.
    pub name: String,
    /// First client URL.
    pub client_url: String,
}

fn default_data_dir() -> PathBuf {
    let root = std::env::var("HOME").map(|h| h == "/root").unwrap_or(true);
    match std::env::var_os("HOME") {
        Some(h) if !root => PathBuf::from(h).join(".local/share/etcdmon"),
        _ => PathBuf::from("/var/lib/etcdmon"),
    }
}

fn tls_options(a: &UpArgs) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    if a.cacert.is_none() && a.cert.is_none() {
        return Ok(None);
    }
    let mut t = etcd_client::TlsOptions::new();
    if let Some(ca) = &a.cacert {
        let pem = std::fs::read(ca).with_context(|| format!("read --cacert {}", ca.display()))?;
        t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
    }
    if let (Some(c), Some(k)) = (&a.cert, &a.key) {
        let cert = std::fs::read(c).with_context(|| format!("read --cert {}", c.display()))?;
        let key = std::fs::read(k).with_context(|| format!("read --key {}", k.display()))?;
        t = t.identity(etcd_client::Identity::from_pem(cert, key));
    }
    Ok(Some(t))
}

/// Reads the member list through `args.etcd`.
pub async fn discover(args: &UpArgs) -> anyhow::Result<Vec<DiscoveredMember>> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    if let Some(t) = tls_options(args)? {
        opts = opts.with_tls(t);
    }
    let mut client = etcd_client::Client::connect([args.etcd.as_str()], Some(opts))
        .await
        .with_context(|| format!("connect to etcd at {}", args.etcd))?;
    let list = tokio::time::timeout(Duration::from_secs(5), client.member_list())
        .await
        .with_context(|| format!("no answer from etcd at {} within 5 s", args.etcd))?
        .with_context(|| format!("read the member list from {}", args.etcd))?;
    let mut out = Vec::new();
    for m in list.members() {
        let Some(url) = m.client_urls().first() else {
            tracing::warn!(
                member = m.name(),
                "member has no client URL yet (not started?); skipped"
            );
            continue;
        };
        out.push(DiscoveredMember {
            name: m.name().to_string(),
            client_url: url.clone(),
        });
    }
    anyhow::ensure!(
        !out.is_empty(),
        "etcd at {} lists no started member",
        args.etcd
    );
    Ok(out)
}

/// The agent config for one discovered member, made as `etcdmon-agent` makes
/// its own (environment `ETCDMON_AGENT_*` included), with what `up` knows set as
/// flags would.
pub fn agent_config(
    args: &UpArgs,
    m: &DiscoveredMember,
    data_dir: &Path,
    collector: &str,
) -> anyhow::Result<AgentConfig> {
    // Host metrics, the etcd process and the fsync probe only make sense
    // for members on this host; the data dir and the member's own certificate
    // files come from etcd's own flags. The certificate it serves is checked
    // for every member, local or not (`certs.served`).
    let local = etcdmon_agent::discover_local_etcd(&m.client_url).unwrap_or_default();
    let local_dir = local.data_dir.clone();
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut o = Overrides::new();
    o.set("identity.cluster", args.cluster.as_str())
        .set("identity.member_name", m.name.as_str())
        .set("etcd.endpoint", m.client_url.as_str())
        .set_opt("etcd.tls.ca", path(&args.cacert))
        .set_opt("etcd.tls.cert", path(&args.cert))
        .set_opt("etcd.tls.key", path(&args.key))
        .set_opt("etcd.data_dir", path(&local_dir))
        .set("host.enabled", local_dir.is_some())
        .set("fsync.enabled", local_dir.is_some())
        .set("upstream.address", collector)
        .set(
            "upstream.spool_dir",
            data_dir
                .join("spool")
                .join(etcdmon_core::safe_token(&m.name))
                .display()
                .to_string(),
        )
        .set("http.listen", "127.0.0.1:0");
    let mut cfg = AgentConfig::load(None, &o.into_value())
        .with_context(|| format!("agent config for {}", m.name))?;
    etcdmon_agent::apply_local_etcd(&mut cfg, local);
    Ok(cfg)
}

/// The collector config of `up`, made as `etcdmon-collector` makes its own:
/// the embedded store in the data dir, the API on `--listen`.
pub fn collector_config(args: &UpArgs, data_dir: &Path) -> anyhow::Result<CollectorConfig> {
    let mut o = Overrides::new();
    o.set(
        "storage.url",
        format!("sqlite:{}", data_dir.join("etcdmon.sqlite").display()),
    )
    .set("http.listen", args.listen.to_string())
    .set("grpc.listen", "127.0.0.1:0")
    // Agents and collector are this process, over loopback.
    .set("grpc.allow_plaintext", true);
    // One person's machine: the API needs no credentials on loopback. On any
    // other address the collector's own rules apply (tokens or an anonymous
    // viewer from ETCDMON_COLLECTOR_HTTP__AUTH__*).
    if args.listen.ip().is_loopback() {
        o.set("http.auth.anonymous", "admin");
    }
    CollectorConfig::load(None, &o.into_value()).context("collector config")
}

/// Runs until `shutdown`, then stops in the order in the module docs.
pub async fn run(args: UpArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data dir {}", data_dir.display()))?;
    let members = discover(&args).await?;
    let ccfg = collector_config(&args, &data_dir)?;
    let setup = Setup::new(alerter_config(&args)?).context("alerter config")?;
    let describe = format!(
        "alerts go to receiver(s) {}",
        receiver_names(setup.config())
    );

    let listeners = Listeners {
        grpc: tokio::net::TcpListener::bind(ccfg.grpc.listen)
            .await
            .context("bind the internal gRPC port")?,
        http: etcdmon_core::ops::bind(args.listen)
            .await
            .context("--listen")?,
    };
    let (publisher, subscriber) = etcdmon_bus::memory::channel(1024);
    let sink = AlertSink::Publish(Arc::new(publisher));
    let Some(mut collector) = Collector::serve(&ccfg, listeners, sink, &shutdown).await? else {
        return Ok(());
    };
    let alerter = Alerter::serve(
        setup,
        collector.stores.alerts.clone(),
        Candidates::Subscriber(Box::new(subscriber)),
        None,
        &shutdown,
    );
    let grpc_url = collector.grpc_url();
    let mut agents = Vec::new();
    for m in &members {
        let cfg = agent_config(&args, m, &data_dir, &grpc_url)?;
        let local = if cfg.etcd.data_dir.is_some() {
            "on this host"
        } else {
            "remote: no host metrics"
        };
        println!(
            "etcdmon up: watching {} at {} ({local})",
            m.name, m.client_url
        );
        let agent = Agent::serve(&cfg, AgentMetrics::new(), None, &shutdown)
            .with_context(|| format!("agent for {}", m.name))?;
        agents.push(agent);
    }
    println!(
        "etcdmon up: cluster {:?} with {} member(s); API on http://{}/api/v1/clusters; data in {}",
        args.cluster,
        members.len(),
        args.listen,
        data_dir.display()
    );
    println!("etcdmon up: {describe}");

    shutdown.cancelled().await;
    println!("etcdmon up: stopping (rules first, then agents flush and the collector drains)");
    collector.stop_rules().await?;
    // All at once: each waits up to `upstream.shutdown_grace` for its last acks.
    for drained in futures::future::join_all(agents.into_iter().map(|a| a.drain())).await {
        drained?;
    }
    collector.drain().await?;
    alerter.drain().await?;
    match shutdown.failure() {
        Some(reason) => anyhow::bail!(reason),
        None => Ok(()),
    }
}

fn receiver_names(cfg: &AlerterConfig) -> String {
    let mut names: Vec<&str> = cfg.receivers.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.join(", ")
}

/// The alerter's config for `up`: the file given, plus `--webhook` (or
/// `--webhook-file`), else a log receiver.
pub fn alerter_config(args: &UpArgs) -> anyhow::Result<AlerterConfig> {
    let mut cfg = AlerterConfig::load(args.alerter_config.as_deref(), &serde_json::json!({}))?;
    let url = match (&args.webhook, &args.webhook_file) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--webhook-file: read {}", path.display()))?;
            Some(text.trim().to_owned())
        }
        (None, None) => None,
    };
    if let Some(url) = &url {
        let webhook =
            serde_json::from_value(serde_json::json!({ "url": url })).context("--webhook")?;
        cfg.send_everything_to(ReceiverConfig::new(
            "up-webhook",
            ReceiverKind::Webhook(webhook),
        ))
        .context("--webhook")?;
    }
    if cfg.receivers.is_empty() {
        cfg.send_everything_to(ReceiverConfig::new("log", ReceiverKind::Log))?;
    }
    cfg.external_url = format!("http://{}", args.listen);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        up: UpArgs,
    }

    /// A webhook URL with a token in it need not show in `ps`.
    #[test]
    fn a_webhook_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("hook-url");
        std::fs::write(&file, "http://127.0.0.1:9/hook?token=s3cret\n").expect("write");
        let cmd = Cmd::try_parse_from(["up", "--webhook-file", file.to_str().expect("utf-8")])
            .expect("parse");
        let cfg = alerter_config(&cmd.up).expect("config");
        let urls: Vec<&str> = cfg
            .receivers
            .iter()
            .filter_map(|r| match &r.kind {
                ReceiverKind::Webhook(w) if r.name == "up-webhook" => Some(w.url.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(urls, ["http://127.0.0.1:9/hook?token=s3cret"]);
        assert!(
            Cmd::try_parse_from(["up", "--webhook", "http://a/", "--webhook-file", "/f"]).is_err(),
            "both at once"
        );
        let missing =
            Cmd::try_parse_from(["up", "--webhook-file", "/nonexistent/hook"]).expect("parse");
        let err = alerter_config(&missing.up).expect_err("unreadable file");
        assert!(format!("{err:#}").contains("--webhook-file"), "{err:#}");
    }
}
