//! `etcdmon-alerter`: wiring only. Loads and checks the config (building every
//! receiver), opens the store, consumes candidates from JetStream and notifies
//! until SIGTERM, then drains.

use std::process::ExitCode;

use clap::Parser as _;
use etcdmon_alerter::cli::{load, Cli};
use etcdmon_alerter::{Alerter, Candidates, Setup};
use etcdmon_core::shutdown::Shutdown;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let setup = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("etcdmon-alerter: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // A summary, not the config itself: it holds passwords and keys.
        println!("config ok: {}", setup.summary());
        return ExitCode::SUCCESS;
    }
    let log = &setup.config().log;
    etcdmon_core::telemetry::init(&log.level, log.format);
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
    match rt.block_on(run(setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdmon-alerter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(setup: Setup) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let cfg = setup.config().clone();
    // The alerter may start before ClickHouse: the store is waited for, and the
    // ops port opens once it is there.
    let Some(stores) =
        etcdmon_storage::open::open_when_ready(&cfg.storage, &shutdown.token()).await?
    else {
        return Ok(());
    };
    let ops = etcdmon_core::ops::bind(cfg.http.listen).await?;
    tracing::info!(nats = %cfg.nats.url, http = %cfg.http.listen, backend = stores.storage.backend(), "alerter started");
    let running = Alerter::serve(
        setup,
        stores.alerts,
        Candidates::JetStream(Box::new(cfg.nats.clone())),
        Some(ops),
        &shutdown,
    );
    shutdown.cancelled().await;
    running.drain().await?;
    match shutdown.failure() {
        Some(reason) => anyhow::bail!(reason),
        None => Ok(()),
    }
}
