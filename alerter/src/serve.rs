//! The alerter as a service: a [`Setup`] made once from the config (routes and
//! receivers built, so a bad receiver fails at load naming the field), then
//! [`Alerter::serve`] on a store and a source of candidates, and
//! [`Running::drain`] to stop.
//!
//! ```text
//! serve:  delivery workers (one per receiver) ─> /metrics, /healthz
//!         ─> candidates (JetStream: connected and retried here; or a channel)
//!         ─> alert loop (restores its state from the store first)
//! drain:  1. alert loop   takes no more candidates (unacknowledged ones come again)
//!         2. workers      stop; a notification queued or retrying is sent again
//!                          after the restart (no delivery of it is recorded)
//!         3. HTTP
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use etcdmon_bus::jetstream::{JetStreamBus, JetStreamConfig};
use etcdmon_bus::{BusError, Subscriber};
use etcdmon_core::config::FieldError;
use etcdmon_core::retry::{until_ok, RetryPolicy};
use etcdmon_core::shutdown::Shutdown;
use etcdmon_storage::AlertStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alert_loop::AlertLoop;
use crate::config::{AlerterConfig, ReceiverKind, Receivers};
use crate::engine::{Engine, EngineConfig};
use crate::metrics::AlerterMetrics;
use crate::route::{Route, RouteConfig};
use crate::sender::Sender;
use crate::watchdog::Watchdog;

/// Waits while NATS cannot be reached (the alerter may start before it).
const CONNECT_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(10));

/// How long `drain` waits for an in-process channel to be emptied.
const CHANNEL_DRAIN: Duration = Duration::from_secs(5);

/// A checked config with its route tree and receivers built, once.
pub struct Setup {
    config: AlerterConfig,
    route: Route,
    receivers: Receivers,
}

impl Setup {
    /// Checks `config` and builds its routes and receivers (reading secret files,
    /// compiling templates); the error names the field.
    pub fn new(config: AlerterConfig) -> Result<Self, FieldError> {
        let (route, receivers) = config.build()?;
        Ok(Self {
            config,
            route,
            receivers,
        })
    }

    /// The config it was made from.
    pub fn config(&self) -> &AlerterConfig {
        &self.config
    }

    /// One line for `--check-config` and start-up logs: counts and names, never
    /// the secrets the config holds.
    pub fn summary(&self) -> String {
        let mut receivers: Vec<&str> = self
            .config
            .receivers
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        receivers.sort_unstable();
        format!(
            "{} receiver(s) ({}), {} route(s) below the root, {} inhibition rule(s)",
            receivers.len(),
            receivers.join(", "),
            count_routes(&self.config.route),
            self.config.inhibit_rules().len()
        )
    }
}

fn count_routes(r: &RouteConfig) -> usize {
    r.routes.iter().map(|c| 1 + count_routes(c)).sum()
}

/// Where the candidates come from.
pub enum Candidates {
    /// The durable JetStream consumer (created if missing, so the alerter may start
    /// before the collector; connected with retries).
    JetStream(Box<JetStreamConfig>),
    /// A subscriber made by the caller (the in-process channel of `etcdmon up`).
    Subscriber(Box<dyn Subscriber>),
}

/// Starts alerters.
pub struct Alerter;

impl Alerter {
    /// Starts the delivery workers, the ops server on `ops` (when given) and the
    /// alert loop over `store` and `candidates`. Must be called inside a tokio
    /// runtime.
    pub fn serve(
        setup: Setup,
        store: Arc<dyn AlertStore>,
        candidates: Candidates,
        ops: Option<TcpListener>,
        shutdown: &Shutdown,
    ) -> Running {
        let Setup {
            config,
            route,
            receivers,
        } = setup;
        let metrics = AlerterMetrics::new();
        let stop = CancellationToken::new();
        // PagerDuty incidents are acknowledged when the alert is.
        let ack_receivers: HashSet<String> = config
            .receivers
            .iter()
            .filter(|r| matches!(r.kind, ReceiverKind::PagerDuty(_)))
            .map(|r| r.name.clone())
            .collect();
        let engine = Engine::new(
            route,
            EngineConfig {
                inhibit_rules: config.inhibit_rules(),
                inhibit_timing: config.inhibition,
                flapping: config.flapping.clone(),
                ack_receivers,
                quiet_resolved: config.watchdog.receiver.iter().cloned().collect(),
                external_url: config.external_url.clone(),
            },
        );
        let workers_stop = CancellationToken::new();
        let (sender, workers) = Sender::start(
            &receivers.notifiers,
            store.clone(),
            &config.delivery,
            metrics.clone(),
            workers_stop.clone(),
        );
        let alert_loop = AlertLoop::new(
            engine,
            Watchdog::new(config.watchdog.clone(), crate::sender::now_ms()),
            store,
            sender,
            metrics.clone(),
            config.refresh_interval,
        );
        // Unhealthy once the store has failed for 30 s: transitions are then held
        // (candidates stay unacknowledged) and an operator must look.
        let health = alert_loop.store_health().health(
            "the alert store (transitions are held)",
            Duration::from_secs(30),
            "alerting",
        );
        let http = ops.map(|listener| {
            let router = etcdmon_core::ops::router(metrics.registry().clone(), health);
            shutdown.spawn_server(
                "HTTP server",
                etcdmon_core::ops::serve(listener, router, workers_stop.clone()),
            )
        });
        let ends_with_its_channel = matches!(candidates, Candidates::Subscriber(_));
        let loop_stop = stop.clone();
        let failed = shutdown.clone();
        let main = tokio::spawn(async move {
            let subscriber = match candidates {
                Candidates::Subscriber(s) => s,
                Candidates::JetStream(cfg) => match connect(*cfg, &loop_stop).await {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => return failed.fail(format!("NATS: {e}")),
                    None => return,
                },
            };
            alert_loop.run(subscriber, loop_stop).await;
        });
        Running {
            metrics,
            ends_with_its_channel,
            stop,
            workers_stop,
            main,
            workers,
            http,
        }
    }
}

/// Connects to NATS and opens the consumer, retrying while it is unreachable.
async fn connect(
    cfg: JetStreamConfig,
    stop: &CancellationToken,
) -> Option<Result<Box<dyn Subscriber>, BusError>> {
    let url = cfg.url.clone();
    let got = until_ok(
        CONNECT_RETRY,
        stop,
        "connect to NATS and open the consumer",
        BusError::is_retryable,
        || {
            let cfg = cfg.clone();
            async move { JetStreamBus::connect(cfg).await?.subscriber().await }
        },
    )
    .await?;
    if got.is_ok() {
        tracing::info!(nats = %url, "consuming alert candidates");
    }
    Some(got.map(|s| Box::new(s) as Box<dyn Subscriber>))
}

/// A serving alerter.
pub struct Running {
    /// Self-metrics.
    pub metrics: AlerterMetrics,
    /// An in-process channel closes when its publisher (the collector) is gone:
    /// the loop then takes what is left in it and ends by itself.
    ends_with_its_channel: bool,
    stop: CancellationToken,
    workers_stop: CancellationToken,
    main: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops taking candidates, then the delivery workers, then the ops server (see
    /// the module docs for what is sent again after a restart).
    pub async fn drain(mut self) -> anyhow::Result<()> {
        let mut ended = None;
        if self.ends_with_its_channel {
            // The channel has no redelivery: let the loop take what the collector
            // sent last (its publisher is gone after its own drain).
            ended = tokio::time::timeout(CHANNEL_DRAIN, &mut self.main)
                .await
                .ok();
        }
        self.stop.cancel();
        match ended {
            Some(joined) => joined.context("alert loop task")?,
            None => self.main.await.context("alert loop task")?,
        }
        self.workers_stop.cancel();
        for w in self.workers {
            w.await.context("delivery worker")?;
        }
        if let Some(http) = self.http {
            http.await.context("HTTP server task")?;
        }
        tracing::info!("alerter stopped");
        Ok(())
    }
}
