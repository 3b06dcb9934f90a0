//! `etcdmon-alerter`: wiring only. Loads config, opens the store, consumes candidates
//! from JetStream and notifies until SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use etcdmon_alerter::cli::{load_config, Cli};
use etcdmon_alerter::config::AlerterConfig;
use etcdmon_bus::jetstream::JetStreamBus;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcdmon-alerter: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // A summary, not the config itself: it holds passwords and keys.
        let mut receivers: Vec<&str> = cfg.receivers.iter().map(|r| r.name.as_str()).collect();
        receivers.sort_unstable();
        println!(
            "config ok: {} receiver(s) ({}), {} route(s) below the root, {} inhibition rule(s)",
            receivers.len(),
            receivers.join(", "),
            count_routes(&cfg.route),
            cfg.inhibit_rules().len()
        );
        return ExitCode::SUCCESS;
    }
    etcdmon_core::telemetry::init(&cfg.log.level, cfg.log.format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdmon-alerter: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdmon-alerter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: AlerterConfig) -> anyhow::Result<()> {
    let shutdown = etcdmon_core::shutdown::token_on_signals();
    let Some(stores) = open_store(&cfg, &shutdown).await? else {
        return Ok(());
    };
    let parts = etcdmon_alerter::build(&cfg, stores.alerts.clone(), shutdown.clone())?;
    let http = etcdmon_core::ops::bind(cfg.http.listen).await?;
    // Unhealthy once the store has failed for 30 s: transitions are then held
    // (candidates stay unacknowledged in JetStream) and an operator must look.
    let health = parts.alerter.store_health().health(
        "the alert store (transitions are held)",
        std::time::Duration::from_secs(30),
        "alerting",
    );
    let router = etcdmon_core::ops::router(parts.metrics.registry().clone(), health);
    let http_task = tokio::spawn(etcdmon_core::ops::serve(http, router, shutdown.clone()));
    // The stream and consumer are created if missing, so the alerter may start first.
    let subscriber = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        s = connect(&cfg) => s?,
    };
    tracing::info!(nats = %cfg.nats.url, http = %cfg.http.listen, backend = stores.storage.backend(), "alerter started");
    parts.alerter.run(subscriber, shutdown.clone()).await;
    shutdown.cancel();
    for w in parts.workers {
        w.await.context("delivery worker")?;
    }
    http_task.await.context("http task")??;
    Ok(())
}

fn count_routes(r: &etcdmon_alerter::route::RouteConfig) -> usize {
    r.routes.iter().map(|c| 1 + count_routes(c)).sum()
}

/// Opens the store, retrying while it is unreachable (the alerter may start before
/// ClickHouse); a config or schema error ends the start.
async fn open_store(
    cfg: &AlerterConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<etcdmon_storage::open::Stores>> {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match etcdmon_storage::open::open(&cfg.storage).await {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                let retryable = e
                    .chain()
                    .filter_map(|c| c.downcast_ref::<etcdmon_storage::StorageError>())
                    .any(|se| se.is_retryable());
                if !retryable {
                    return Err(e);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "open the store; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}

/// Connects to NATS, retrying while it is unreachable.
async fn connect(cfg: &AlerterConfig) -> anyhow::Result<Box<dyn etcdmon_bus::Subscriber>> {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match JetStreamBus::connect(cfg.nats.clone()).await {
            Ok(bus) => match bus.subscriber().await {
                Ok(s) => return Ok(Box::new(s)),
                Err(e) if !e.is_retryable() => return Err(e).context("create the consumer"),
                Err(e) => tracing::warn!(error = %e, "create the consumer; retrying"),
            },
            Err(e) if !e.is_retryable() => return Err(e).context("connect to NATS"),
            Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "connect to NATS; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}
