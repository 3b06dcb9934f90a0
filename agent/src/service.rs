//! The agent as a service: [`Agent::serve`] starts the probes and the stream to
//! the collector (and the ops server when given a listener); [`RunningAgent::drain`]
//! stops them without losing a batch.
//!
//! ```text
//! serve:  probes ──reports──> [tap] ──> stream (batches, spool, gRPC) ──> collector
//!         ops: /metrics, /healthz
//! drain:  1. probes stop; the stream seals what they sent
//!         2. the stream waits up to `upstream.shutdown_grace` for the last acks,
//!            then keeps what is unacknowledged in the spool on disk for the next start
//!         3. ops server
//! ```
//!
//! The `etcdmon-agent run` command, `etcdmon up` (one agent per member) and the
//! tests all start agents this way. A stream that fails for good (the spool
//! cannot be opened) stops the whole service through the shared [`Shutdown`].

use anyhow::Context as _;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_proto::v1::Report;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::runner::Probes;
use crate::selfmetrics::AgentMetrics;

/// Reports waiting for the stream, at most; beyond it the probes drop and count
/// (`etcdmon_agent_reports_dropped_total`) rather than buffer without bound.
const REPORT_QUEUE: usize = 256;

/// Called with every report before it is streamed.
pub type Tap = Box<dyn FnMut(&Report) + Send>;

/// Starts agents.
pub struct Agent;

impl Agent {
    /// Starts the probes of `cfg` and streams their reports to `upstream.address`
    /// (which must be set). Fails on unreadable TLS files or bad URLs, before
    /// anything runs. Must be called inside a tokio runtime.
    pub fn serve(
        cfg: &AgentConfig,
        metrics: AgentMetrics,
        ops: Option<TcpListener>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<RunningAgent> {
        Self::serve_tapped(cfg, metrics, ops, None, shutdown)
    }

    /// [`serve`](Self::serve), with `tap` seeing every report before the stream
    /// does (tests that must know exactly what was sent).
    pub fn serve_tapped(
        cfg: &AgentConfig,
        metrics: AgentMetrics,
        ops: Option<TcpListener>,
        tap: Option<Tap>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<RunningAgent> {
        anyhow::ensure!(
            cfg.upstream.address.is_some(),
            "no collector address: set --collector or upstream.address \
             (or use `etcdmon-agent collect` to print results here)"
        );
        let probes = Probes::new(cfg, metrics.clone())?;
        let view = probes.shared();
        let ops = ops.map(|listener| {
            let router = etcdmon_core::ops::router(metrics.registry().clone(), probes.health());
            (listener, router)
        });
        let probes_stop = CancellationToken::new();
        let stream_stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(REPORT_QUEUE);
        let probe_tasks = probes.spawn(tx, probes_stop.clone());
        if let Some(mut tap) = tap {
            let (tapped_tx, tapped_rx) = mpsc::channel(REPORT_QUEUE);
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    tap(&r);
                    if tapped_tx.send(r).await.is_err() {
                        break;
                    }
                }
            });
            rx = tapped_rx;
        }
        let stream = {
            let (cfg, metrics, stop, failed) = (
                cfg.clone(),
                metrics.clone(),
                stream_stop.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let result = crate::stream::run(&cfg, view, rx, metrics, stop).await;
                if let Err(e) = &result {
                    failed.fail(format!("stream to the collector: {e:#}"));
                }
                result
            })
        };
        let ops = ops.map(|(listener, router)| {
            shutdown.spawn_server(
                "ops server",
                etcdmon_core::ops::serve(listener, router, stream_stop.clone()),
            )
        });
        Ok(RunningAgent {
            probes_stop,
            probe_tasks,
            stream_stop,
            stream,
            ops,
        })
    }
}

/// A running agent.
pub struct RunningAgent {
    probes_stop: CancellationToken,
    probe_tasks: Vec<JoinHandle<()>>,
    stream_stop: CancellationToken,
    stream: JoinHandle<anyhow::Result<()>>,
    ops: Option<JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops the probes, lets the stream deliver or keep on disk what they sent
    /// (see the module docs), then stops the ops server.
    pub async fn drain(self) -> anyhow::Result<()> {
        self.probes_stop.cancel();
        futures::future::join_all(self.probe_tasks).await;
        self.stream_stop.cancel();
        let streamed = self.stream.await.context("stream task")?;
        if let Some(ops) = self.ops {
            ops.await.context("ops server task")?;
        }
        // A stream that failed early already stopped the service; its error is the
        // reason given there, not a second one here.
        streamed.or_else(|e| {
            tracing::debug!(error = %format!("{e:#}"), "stream ended with an error");
            Ok(())
        })
    }
}
