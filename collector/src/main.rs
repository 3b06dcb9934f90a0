//! `etcdmon-collector`: wiring only. Loads config, binds the listeners, serves
//! until SIGTERM (or a part fails), then drains in order: every accepted batch is
//! stored or left unacknowledged, and stopping makes no alert.

use anyhow::Context as _;
use clap::Parser as _;
use etcdmon_collector::cli::{load_config, Cli};
use etcdmon_collector::{AlertSink, Collector, Listeners};
use etcdmon_core::shutdown::Shutdown;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the collector allocates per sample, and glibc's
/// malloc and free took about 40% of the collector's CPU under load (perf,
/// `ingest-load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hash_token {
        let mut token = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut token) {
            eprintln!("etcdmon-collector: read the token from standard input: {e}");
            return ExitCode::from(2);
        }
        println!("{}", etcdmon_collector::cli::hash_token(&token));
        return ExitCode::SUCCESS;
    }
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
    let shutdown = Shutdown::on_signals();
    // The store first: while a ClickHouse server is not up yet, the ports stay
    // closed (agents keep their data and retry) instead of accepting and hanging.
    let Some(stores) = etcdmon_storage::open::open_when_ready(&cfg.storage, &shutdown.token())
        .await
        .context("open the store")?
    else {
        return Ok(()); // stopped while waiting for the store
    };
    let listeners = Listeners::bind(&cfg).await?;
    let sink = AlertSink::from_config(&cfg);
    let running = Collector::serve_on(&cfg, stores, listeners, sink, &shutdown).await?;
    shutdown.cancelled().await;
    running.drain().await?;
    match shutdown.failure() {
        Some(reason) => anyhow::bail!(reason),
        None => Ok(()),
    }
}
