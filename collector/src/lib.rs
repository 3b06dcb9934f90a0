//! etcdmon-collector: accepts agent streams, stores what they carry, keeps
//! the live state of every cluster, and serves the API.
//!
//! Data flow: agent --gRPC--> [`ingest`] session --rows--> [`writer`] --
//! batched writes--> storage (ClickHouse or SQLite). A batch is
//! acknowledged to its agent only after its rows are stored. The session
//! also updates [`state`], which the [`api`] reads.
//!
//! [`Collector::build`] returns the parts (gRPC service, HTTP router,
//! writer and retention tasks) for a binary to compose: the standalone
//! `etcdmon-collector` and the all-in-one `etcdmon up` both do.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod config;
pub mod derive;
pub mod ingest;
pub mod metrics;
pub mod rules;
pub mod state;
pub mod storage;
pub mod writer;

use crate::config::CollectorConfig;
use crate::ingest::Ingest;
use crate::metrics::CollectorMetrics;
use crate::state::LiveState;
use etcdmon_core::ops::HealthFn;
use etcdmon_proto::v1::ingest_service_server::IngestServiceServer;
use etcdmon_storage::{AlertStore, Storage};
use std::sync::Arc;
use storage::Stores;
use tokio_util::sync::CancellationToken;

/// The collector's parts, ready to run.
pub struct Collector {
    /// The agents' gRPC service.
    pub ingest: IngestServiceServer<Ingest>,
    /// API, `/metrics` and `/healthz`.
    pub router: axum::Router,
    /// The storage writer; run it until shutdown.
    pub writer: writer::Writer,
    /// Live state (shared with the API and, later, the rules).
    pub state: LiveState,
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// Alert state and history in the same store (written by the alerter, read by the
    /// API and by the rules at start-up).
    pub alert_store: Arc<dyn AlertStore>,
    /// Self-metrics.
    pub metrics: CollectorMetrics,
    /// The rule set, ready to run with [`rules::run`].
    pub rules: rules::Rules,
}

impl Collector {
    /// Opens the store (running migrations) and builds the parts.
    pub async fn build(cfg: &CollectorConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let stores = storage::open(&cfg.storage).await?;
        Self::with_storage(cfg, stores, shutdown)
    }

    /// Builds the parts over an already opened store.
    pub fn with_storage(
        cfg: &CollectorConfig,
        stores: Stores,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let Stores {
            storage,
            alerts: alert_store,
        } = stores;
        let settings = rules::config::resolve(&cfg.rules)?;
        let metrics = CollectorMetrics::new();
        let state = LiveState::new(cfg.ingest.agent_timeout);
        let (tx, writer, storage_health) =
            writer::channel(storage.clone(), cfg.ingest.clone(), metrics.clone());
        let ingest = Ingest::new(
            storage.clone(),
            tx,
            state.clone(),
            metrics.clone(),
            cfg.ingest.max_batch_bytes,
            shutdown,
        )
        .into_service();
        // Unhealthy while storage writes have failed for a while: agents
        // are then holding data back and an operator must look.
        let health: HealthFn = storage_health.health(
            "storage writes (agents are holding their data)",
            cfg.ingest.unhealthy_after,
            "serving",
        );
        let router = etcdmon_core::ops::router(metrics.registry().clone(), health).merge(
            api::router(storage.clone(), alert_store.clone(), state.clone()),
        );
        Ok(Self {
            ingest,
            router,
            writer,
            state,
            storage,
            alert_store,
            metrics,
            rules: rules::Rules::new(settings),
        })
    }
}

impl Collector {
    /// Hands the alerts that were firing before this start to the rules (see
    /// [`rules::Rules::restore`]); `grace` is how long agents get to reconnect (the
    /// config's `ingest.agent_timeout` is a good value). A store that does not answer is logged and skipped:
    /// ingest must not wait for it.
    pub async fn restore_alerts(&mut self, grace: std::time::Duration) {
        const WINDOW_MS: i64 = 30 * 24 * 3_600_000;
        let now = now_ms();
        match self.alert_store.latest_transitions(now - WINDOW_MS).await {
            Ok(rows) => {
                let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
                let n = self.rules.restore(&rows, now, grace_ms);
                if n > 0 {
                    tracing::info!(alerts = n, "took over alerts firing before the restart");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "read firing alerts at start-up; rules start empty")
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs retention every `interval` until `shutdown`.
pub async fn run_retention(
    storage: Arc<dyn Storage>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        match storage.apply_retention(now).await {
            Ok(out) => tracing::info!(removed = ?out.removed, "retention applied"),
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying next interval"),
        }
    }
}
