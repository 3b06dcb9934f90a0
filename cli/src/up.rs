//! `etcdmon up`: discover the members, start the collector and an agent per
//! member, serve until SIGTERM, then stop agents first (they flush their
//! last batches) and the collector last (it drains its writer).

use anyhow::Context as _;
use clap::Args;
use etcdmon_agent::runner::Agent;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::AgentConfig;
use etcdmon_alerter::config::{AlerterConfig, ReceiverConfig};
use etcdmon_alerter::route::RouteConfig;
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::Collector;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// without --alerter-config, alerts are written to the log.
    #[arg(long)]
    pub webhook: Option<String>,
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

/// The agent config for one discovered member.
pub fn agent_config(
    args: &UpArgs,
    m: &DiscoveredMember,
    data_dir: &std::path::Path,
    collector: &str,
) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.identity.cluster = args.cluster.clone();
    cfg.identity.member_name = m.name.clone();
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.tls.ca = args.cacert.clone();
    cfg.etcd.tls.cert = args.cert.clone();
    cfg.etcd.tls.key = args.key.clone();
    // Host metrics, the etcd process and the fsync probe only make sense
    // for members on this host; the data dir comes from etcd's own flags.
    let local_dir = etcdmon_agent::collectors::host::process::discover_data_dir(&m.client_url);
    cfg.host.enabled = local_dir.is_some();
    cfg.fsync.enabled = local_dir.is_some();
    cfg.etcd.data_dir = local_dir;
    cfg.collector.address = Some(collector.to_string());
    cfg.collector.spool_dir = Some(data_dir.join("spool").join(sanitize(&m.name)));
    cfg.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs until `shutdown`.
pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data dir {}", data_dir.display()))?;
    let members = discover(&args).await?;

    let mut ccfg = CollectorConfig::default();
    ccfg.storage.url = format!("sqlite:{}", data_dir.join("etcdmon.sqlite").display());
    ccfg.http.listen = args.listen;
    ccfg.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    ccfg.validate()?;

    let acfg = alerter_config(&args)?;

    // The rules stop first, so that the agents' streams closing is never judged
    // as members going down; then the agents, so their last batches reach a
    // running collector, whose last alert candidates reach a running alerter.
    let rules_stop = CancellationToken::new();
    let collector_stop = CancellationToken::new();
    let alerter_stop = CancellationToken::new();
    let mut c = Collector::build(&ccfg, collector_stop.clone()).await?;
    c.restore_alerts(ccfg.ingest.agent_timeout).await;
    let alerting = start_alerting(&ccfg, &acfg, &c, &collector_stop, &alerter_stop)?;
    let http = etcdmon_core::ops::bind(args.listen).await?;
    let grpc = tokio::net::TcpListener::bind(ccfg.grpc.listen)
        .await
        .context("bind internal gRPC port")?;
    let grpc_url = format!("http://{}", grpc.local_addr().context("gRPC address")?);
    let writer = tokio::spawn(c.writer.run(collector_stop.clone()));
    let rules = tokio::spawn(etcdmon_collector::rules::run(
        c.rules,
        c.state.clone(),
        ccfg.rules_interval,
        c.metrics.clone(),
        Some(alerting.transitions),
        rules_stop.clone(),
    ));
    let retention = tokio::spawn(etcdmon_collector::run_retention(
        c.storage.clone(),
        ccfg.storage.retention_interval,
        collector_stop.clone(),
    ));
    let http_task = tokio::spawn(etcdmon_core::ops::serve(
        http,
        c.router,
        collector_stop.clone(),
    ));
    let grpc_stop = collector_stop.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(c.ingest)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { grpc_stop.cancelled().await },
            ),
    );

    let mut agents = Vec::new();
    let agent_stop = CancellationToken::new();
    for m in &members {
        let cfg = agent_config(&args, m, &data_dir, &grpc_url);
        let local = if cfg.etcd.data_dir.is_some() {
            "on this host"
        } else {
            "remote: no host metrics"
        };
        println!(
            "etcdmon up: watching {} at {} ({local})",
            m.name, m.client_url
        );
        let metrics = AgentMetrics::new();
        let agent =
            Agent::new(&cfg, metrics.clone()).with_context(|| format!("agent for {}", m.name))?;
        let shared = agent.shared();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let loops = agent.spawn(tx, agent_stop.clone());
        let stop = agent_stop.clone();
        agents.push(tokio::spawn(async move {
            let r = etcdmon_agent::stream::run(&cfg, shared, rx, metrics, stop).await;
            futures::future::join_all(loops).await;
            r
        }));
    }
    println!(
        "etcdmon up: cluster {:?} with {} member(s); API on http://{}/api/v1/clusters; data in {}",
        args.cluster,
        members.len(),
        args.listen,
        data_dir.display()
    );
    println!("etcdmon up: {}", alerting.describe);

    shutdown.cancelled().await;
    println!("etcdmon up: stopping (rules first, then agents flush and the collector drains)");
    rules_stop.cancel();
    rules.await.context("rules task")?;
    agent_stop.cancel();
    for a in agents {
        if let Err(e) = a.await.context("agent task")? {
            tracing::warn!(error = %format!("{e:#}"), "agent stopped with an error");
        }
    }
    collector_stop.cancel();
    writer.await.context("writer task")?;
    for t in alerting.collector_tasks {
        t.await.context("alert publishing task")?;
    }
    alerter_stop.cancel();
    for t in alerting.alerter_tasks {
        t.await.context("alerter task")?;
    }
    retention.await.context("retention task")?;
    grpc_task
        .await
        .context("gRPC task")?
        .context("serve gRPC")?;
    http_task.await.context("HTTP task")??;
    Ok(())
}

/// The alerter's config for `up`: the file given, plus `--webhook`, else a log receiver.
pub fn alerter_config(args: &UpArgs) -> anyhow::Result<AlerterConfig> {
    let mut cfg: AlerterConfig = match &args.alerter_config {
        Some(path) => etcdmon_core::config::load(
            Some(path),
            etcdmon_alerter::config::ENV_PREFIX,
            &serde_json::json!({}),
        )?,
        None => AlerterConfig::default(),
    };
    if let Some(url) = &args.webhook {
        const NAME: &str = "up-webhook";
        anyhow::ensure!(
            cfg.receivers.iter().all(|r| r.name != NAME),
            "--webhook adds a receiver named {NAME:?}; the alerter config already has one"
        );
        let webhook =
            serde_json::from_value(serde_json::json!({ "url": url })).context("--webhook")?;
        cfg.receivers.push(ReceiverConfig {
            name: NAME.into(),
            webhook: Some(webhook),
            ..ReceiverConfig::default()
        });
        cfg.route = if args.alerter_config.is_some() {
            // Every alert goes to the webhook and, as before, wherever the
            // configured tree sends it (the old root becomes a catch-all child).
            let old_root = std::mem::take(&mut cfg.route);
            RouteConfig {
                receiver: Some(NAME.into()),
                routes: vec![
                    RouteConfig {
                        receiver: Some(NAME.into()),
                        continue_matching: true,
                        ..RouteConfig::default()
                    },
                    old_root,
                ],
                ..RouteConfig::default()
            }
        } else {
            RouteConfig {
                receiver: Some(NAME.into()),
                ..RouteConfig::default()
            }
        };
    }
    if cfg.receivers.is_empty() {
        cfg.receivers.push(ReceiverConfig {
            name: "log".into(),
            log: Some(Default::default()),
            ..ReceiverConfig::default()
        });
        cfg.route.receiver = Some("log".into());
    }
    cfg.external_url = format!("http://{}", args.listen);
    Ok(cfg)
}

/// The running alert pipeline of `up`.
struct Alerting {
    /// Where the rules send transitions.
    transitions: tokio::sync::mpsc::Sender<etcdmon_collector::rules::engine::Transition>,
    /// Candidate conversion and publishing; they end with the collector.
    collector_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The alerter and its delivery workers; they end after the collector's.
    alerter_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// One line for the start-up banner.
    describe: String,
}

/// Rules -> outbox -> in-process channel -> alerter, on the collector's own store.
fn start_alerting(
    ccfg: &CollectorConfig,
    acfg: &AlerterConfig,
    c: &Collector,
    collector_stop: &CancellationToken,
    alerter_stop: &CancellationToken,
) -> anyhow::Result<Alerting> {
    let (publisher, subscriber) = etcdmon_bus::memory::channel(1024);
    let (sender, outbox) =
        etcdmon_bus::Outbox::new(std::sync::Arc::new(publisher), ccfg.alerting.outbox_bytes);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let collector_tasks = vec![
        tokio::spawn(outbox.run(collector_stop.clone())),
        tokio::spawn(etcdmon_collector::alerts::run(
            rx,
            sender,
            ccfg.alerting.runbook_url_prefix.clone(),
            c.metrics.clone(),
            collector_stop.clone(),
        )),
    ];
    let parts = etcdmon_alerter::build(acfg, c.alert_store.clone(), alerter_stop.clone())
        .context("alerter config")?;
    let mut alerter_tasks = parts.workers;
    alerter_tasks.push(tokio::spawn(
        parts
            .alerter
            .run(Box::new(subscriber), alerter_stop.clone()),
    ));
    let mut names: Vec<&str> = acfg.receivers.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    Ok(Alerting {
        transitions: tx,
        collector_tasks,
        alerter_tasks,
        describe: format!("alerts go to receiver(s) {}", names.join(", ")),
    })
}
