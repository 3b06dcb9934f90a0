//! The collector under test, in this process on its own tokio runtime:
//! `Collector::build` with the default configuration on
//! `clickhouse://127.0.0.1:PORT/etcdmon`, the tonic ingest service on a
//! loopback port and the writer task, composed as the `etcdmon-collector`
//! binary composes them (the HTTP API is not served: nothing here reads it).

use anyhow::Context as _;
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::metrics::CollectorMetrics;
use etcdmon_collector::Collector;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running in-process collector.
pub struct RunningCollector {
    /// `http://127.0.0.1:PORT` of the gRPC service.
    pub url: String,
    /// Its self-metrics.
    pub metrics: CollectorMetrics,
    shutdown: CancellationToken,
    writer: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The default configuration, storing into `etcdmon` on the given server.
pub fn config(clickhouse_http_port: u16) -> anyhow::Result<CollectorConfig> {
    let mut cfg = CollectorConfig::default();
    cfg.storage.url = format!("clickhouse://127.0.0.1:{clickhouse_http_port}/etcdmon");
    cfg.validate().context("collector config")?;
    Ok(cfg)
}

/// Opens the store (running migrations) and starts serving. Call inside
/// the collector's runtime: the tasks are spawned there.
pub async fn start(cfg: &CollectorConfig) -> anyhow::Result<RunningCollector> {
    let shutdown = CancellationToken::new();
    let c = Collector::build(cfg, shutdown.clone())
        .await
        .context("build the collector on ClickHouse")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the gRPC port")?;
    let url = format!("http://{}", listener.local_addr()?);
    let writer = tokio::spawn(c.writer.run(shutdown.clone()));
    let stop = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(c.ingest)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { stop.cancelled().await },
            ),
    );
    Ok(RunningCollector {
        url,
        metrics: c.metrics,
        shutdown,
        writer,
        server,
    })
}

impl RunningCollector {
    /// Stops serving and lets the writer drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .context("gRPC server task")?
            .context("serve gRPC")?;
        self.writer.await.context("writer task")?;
        Ok(())
    }
}
