//! The collector under test, in this process on its own tokio runtime, started
//! as `etcdmon-collector` starts it (`Collector::serve`) with the default
//! configuration on `clickhouse://127.0.0.1:PORT/etcdmon`, on free loopback
//! ports, alerts logged only; or (`--collector-bin`) the `etcdmon-collector`
//! binary as a process of its own with the same settings, so that its memory
//! is its own and not shared with the load generator's.

use anyhow::Context as _;
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::ingest::incoming::MAX_AGENT_CONNECTIONS;
use etcdmon_collector::metrics::CollectorMetrics;
use etcdmon_collector::{AlertSink, Collector, Listeners, Running};
use etcdmon_core::shutdown::Shutdown;
use etcdmon_testkit::{free_port, http_get, ChildProcess};
use std::path::Path;

/// A running collector, in this process or a process of its own.
pub struct RunningCollector {
    /// `http://127.0.0.1:PORT` of the gRPC service.
    pub url: String,
    /// Its self-metrics (in-process only; all zero for a process of its own).
    pub metrics: CollectorMetrics,
    running: Option<Running>,
    process: Option<ChildProcess>,
}

/// The default configuration, storing into `etcdmon` on the given server.
pub fn config(clickhouse_http_port: u16) -> anyhow::Result<CollectorConfig> {
    let mut cfg = CollectorConfig::default();
    cfg.storage.url = format!("clickhouse://127.0.0.1:{clickhouse_http_port}/etcdmon");
    // The load generator plays the agents over loopback, all from 127.0.0.1:
    // as many connections from it as a fleet's hosts would make.
    cfg.grpc.allow_plaintext = true;
    cfg.grpc.max_connections_per_address = MAX_AGENT_CONNECTIONS;
    cfg.http.auth.anonymous = Some(etcdmon_collector::config::Role::Admin);
    cfg.validate().context("collector config")?;
    Ok(cfg)
}

/// Opens the store (running migrations) and starts serving. Call inside
/// the collector's runtime: the tasks are spawned there.
pub async fn start(cfg: &CollectorConfig) -> anyhow::Result<RunningCollector> {
    let listeners = Listeners::loopback().await?;
    let running = Collector::serve(cfg, listeners, AlertSink::LogOnly, &Shutdown::new())
        .await
        .context("start the collector on ClickHouse")?
        .context("stopped while opening the store")?;
    Ok(RunningCollector {
        url: running.grpc_url(),
        metrics: running.metrics.clone(),
        running: Some(running),
        process: None,
    })
}

/// Starts the `etcdmon-collector` binary at `bin` with the settings of
/// [`config`] (its defaults, plaintext gRPC, as many connections from
/// 127.0.0.1 as there are agents) and waits until `/healthz` answers.
pub fn start_process(bin: &Path, clickhouse_http_port: u16) -> anyhow::Result<RunningCollector> {
    let (grpc, http) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("ingest-load-collector-{grpc}.log"));
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--storage",
        &format!("clickhouse://127.0.0.1:{clickhouse_http_port}/etcdmon"),
    ])
    .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
    .args(["--http-listen", &format!("127.0.0.1:{http}")])
    .args([
        "--allow-plaintext",
        "--anonymous",
        "admin",
        "--log-level",
        "warn",
    ])
    .env(
        "ETCDMON_COLLECTOR_GRPC__MAX_CONNECTIONS_PER_ADDRESS",
        MAX_AGENT_CONNECTIONS.to_string(),
    );
    let process = ChildProcess::spawn("etcdmon-collector", cmd, &log)?;
    let health = format!("http://127.0.0.1:{http}/healthz");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if matches!(http_get(&health, std::time::Duration::from_secs(2)), Ok(r) if r.status == 200)
        {
            break;
        }
        if !process.is_running() || std::time::Instant::now() > deadline {
            anyhow::bail!(
                "etcdmon-collector did not become healthy: {}",
                process.log_tail(30)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    crate::cpu::set_collector_pid(process.pid().context("collector pid")?);
    Ok(RunningCollector {
        url: format!("http://127.0.0.1:{grpc}"),
        metrics: CollectorMetrics::new(),
        running: None,
        process: Some(process),
    })
}

impl RunningCollector {
    /// Stops serving and lets the writer drain (SIGTERM for a process).
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(running) = self.running {
            running.drain().await?;
        }
        if let Some(process) = self.process {
            process
                .terminate(std::time::Duration::from_secs(30))
                .context("stop etcdmon-collector")?;
        }
        Ok(())
    }
}
