//! `etcdmon-collector`: wiring only. Loads config, opens the store, serves
//! gRPC (agents) and HTTP (API, /metrics, /healthz) until SIGTERM, then
//! drains the writer so every accepted batch is stored or left unacked.

use anyhow::Context as _;
use clap::Parser as _;
use etcdmon_collector::cli::{load_config, Cli};
use etcdmon_collector::{run_retention, Collector};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: the collector allocates per sample, and glibc's
/// malloc and free took about 40% of the collector's CPU under load (perf,
/// `ingest-load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcdmon-collector: {e:#}");
            return ExitCode::from(2);
        }
    };
    etcdmon_core::telemetry::init(&cfg.log.level, cfg.log.format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdmon-collector: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdmon-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: etcdmon_collector::config::CollectorConfig) -> anyhow::Result<()> {
    let signal = etcdmon_core::shutdown::token_on_signals();
    // The rules stop first, on their own token: the streams that close after
    // them must not be judged as members going down (no alert on shutdown).
    let rules_stop = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let mut c = Collector::build(&cfg, shutdown.clone()).await?;
    c.restore_alerts(cfg.ingest.agent_timeout).await;
    let http = etcdmon_core::ops::bind(cfg.http.listen).await?;
    let grpc = tokio::net::TcpListener::bind(cfg.grpc.listen)
        .await
        .with_context(|| format!("listen on {} (grpc.listen)", cfg.grpc.listen))?;
    tracing::info!(grpc = %cfg.grpc.listen, http = %cfg.http.listen, backend = c.storage.backend(), "collector started");

    let writer = tokio::spawn(c.writer.run(shutdown.clone()));
    // Rules -> candidates -> outbox -> JetStream, when configured.
    let (sink, alert_tasks) = match etcdmon_collector::alerts::outbox(&cfg.alerting) {
        Some((sender, task)) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let publish = tokio::spawn(task.run(shutdown.clone()));
            let convert = tokio::spawn(etcdmon_collector::alerts::run(
                rx,
                sender,
                cfg.alerting.runbook_url_prefix.clone(),
                c.metrics.clone(),
                shutdown.clone(),
            ));
            (Some(tx), vec![publish, convert])
        }
        None => {
            tracing::info!(
                "alerting.jetstream not set: alert transitions are logged and counted only"
            );
            (None, Vec::new())
        }
    };
    let rules = tokio::spawn(etcdmon_collector::rules::run(
        c.rules,
        c.state.clone(),
        cfg.rules_interval,
        c.metrics.clone(),
        sink,
        rules_stop.clone(),
    ));
    let retention = tokio::spawn(run_retention(
        c.storage.clone(),
        cfg.storage.retention_interval,
        shutdown.clone(),
    ));
    let http_task = tokio::spawn(etcdmon_core::ops::serve(http, c.router, shutdown.clone()));
    let grpc_shutdown = shutdown.clone();
    let mut grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(c.ingest)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { grpc_shutdown.cancelled().await },
            ),
    );
    let early = tokio::select! {
        _ = signal.cancelled() => None,
        r = &mut grpc_task => Some(r),
    };
    rules_stop.cancel();
    rules.await.context("rules task")?;
    shutdown.cancel();
    match early {
        Some(r) => r.context("gRPC task")?.context("serve gRPC")?,
        None => grpc_task
            .await
            .context("gRPC task")?
            .context("serve gRPC")?,
    }
    // Sessions end on the token; the writer drains what they queued.
    writer.await.context("writer task")?;
    for t in alert_tasks {
        t.await.context("alert publishing task")?;
    }
    retention.await.context("retention task")?;
    http_task.await.context("http task")??;
    Ok(())
}
