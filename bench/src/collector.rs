//! The collector under test, in this process on its own tokio runtime, started
//! as `etcdmon-collector` starts it (`Collector::serve`) with the default
//! configuration on `clickhouse://127.0.0.1:PORT/etcdmon`, on free loopback
//! ports, alerts logged only.

use anyhow::Context as _;
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::metrics::CollectorMetrics;
use etcdmon_collector::{AlertSink, Collector, Listeners, Running};
use etcdmon_core::shutdown::Shutdown;

/// A running in-process collector.
pub struct RunningCollector {
    /// `http://127.0.0.1:PORT` of the gRPC service.
    pub url: String,
    /// Its self-metrics.
    pub metrics: CollectorMetrics,
    running: Running,
}

/// The default configuration, storing into `etcdmon` on the given server.
pub fn config(clickhouse_http_port: u16) -> anyhow::Result<CollectorConfig> {
    let mut cfg = CollectorConfig::default();
    cfg.storage.url = format!("clickhouse://127.0.0.1:{clickhouse_http_port}/etcdmon");
    // The load generator plays the agents over loopback, all from 127.0.0.1:
    // as many connections from it as a fleet's hosts would make.
    cfg.grpc.allow_plaintext = true;
    cfg.grpc.max_connections_per_address =
        etcdmon_collector::ingest::incoming::MAX_AGENT_CONNECTIONS;
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
        running,
    })
}

impl RunningCollector {
    /// Stops serving and lets the writer drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.drain().await
    }
}
