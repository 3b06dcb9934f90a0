//! The collector as a service: [`Collector::serve`] starts every part on
//! listeners its caller bound, and [`Running::drain`] stops them in the one
//! order in which no accepted batch is lost and stopping pages nobody.
//!
//! ```text
//! serve:  store (retried while unreachable) ─> alerts firing before the restart
//!         ─> writer, rules, alert publishing, retention, HTTP, gRPC (agents)
//! drain:  1. rules        a stream that closes from now on is not a member going down
//!         2. gRPC         no new batches; each session ends after its last ack
//!         3. writer       stores what the sessions queued (unavailable store: `grace`)
//!         4. publishing   flushes alert candidates (within `grace`)
//!         5. retention, HTTP
//! ```
//!
//! The standalone `etcdmon-collector`, `etcdmon up`, the benchmarks and the
//! tests all start the collector this way. A server that fails (a listener
//! error) stops the whole service through the shared [`Shutdown`] rather than
//! returning on its own, so the drain order holds for failures too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use etcdmon_bus::outbox::Outbox;
use etcdmon_bus::Publisher;
use etcdmon_core::ops::HealthFn;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_storage::open::Stores;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::ingest::Ingest;
use crate::metrics::CollectorMetrics;
use crate::state::LiveState;
use crate::{api, candidates, rules, writer};

/// HTTP/2 streams one agent connection may open at once (an agent uses one).
const GRPC_STREAMS_PER_CONNECTION: u32 = 8;

/// HTTP/2 flow-control windows of an agent's stream and connection. They are
/// what the collector buffers per agent once its write queue is full and the
/// agent's session stops reading; hyper's default of 1 MiB each took some
/// 500 MiB at 500 agents in `ingest-load`'s overload soak. 256 KiB holds
/// several compressed batches, ample for one batch a second even at 100 ms
/// of round trip (2.5 MB/s).
const GRPC_FLOW_WINDOW: u32 = 256 * 1024;

/// The collector's two listeners, bound by the caller: a taken port fails before
/// anything starts, naming the config field, and tests can bind port 0.
pub struct Listeners {
    /// Agents' gRPC streams.
    pub grpc: TcpListener,
    /// REST API, page, `/metrics`, `/healthz`.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds `grpc.listen` and `http.listen`.
    pub async fn bind(cfg: &CollectorConfig) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(cfg.grpc.listen)
            .await
            .with_context(|| format!("listen on {} (grpc.listen)", cfg.grpc.listen))?;
        let http = TcpListener::bind(cfg.http.listen)
            .await
            .with_context(|| format!("listen on {} (http.listen)", cfg.http.listen))?;
        Ok(Self { grpc, http })
    }

    /// Both on free loopback ports (tests, benchmarks, `etcdmon up`'s gRPC).
    pub async fn loopback() -> anyhow::Result<Self> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(Self {
            grpc: TcpListener::bind(any).await.context("bind a gRPC port")?,
            http: TcpListener::bind(any).await.context("bind an HTTP port")?,
        })
    }
}

/// Where alert candidates go.
pub enum AlertSink {
    /// Nowhere: transitions are logged and counted only.
    LogOnly,
    /// Through the bounded outbox to this publisher (JetStream, or the in-process
    /// channel of `etcdmon up`).
    Publish(Arc<dyn Publisher>),
}

impl AlertSink {
    /// JetStream when `alerting.jetstream` is set, else [`AlertSink::LogOnly`].
    pub fn from_config(cfg: &CollectorConfig) -> Self {
        match candidates::jetstream(&cfg.alerting) {
            Some(p) => AlertSink::Publish(p),
            None => AlertSink::LogOnly,
        }
    }
}

/// Starts collectors.
pub struct Collector;

impl Collector {
    /// Opens the configured store (waiting for a ClickHouse server that is not up
    /// yet) and serves. `None` when `shutdown` fired while waiting for the store.
    /// The listeners accept connections meanwhile without answering them, so a
    /// binary that may wait long opens the store first and then calls
    /// [`serve_on`](Self::serve_on), as `etcdmon-collector` does.
    pub async fn serve(
        cfg: &CollectorConfig,
        listeners: Listeners,
        sink: AlertSink,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Option<Running>> {
        let Some(stores) = etcdmon_storage::open::open_when_ready(&cfg.storage, &shutdown.token())
            .await
            .context("open the store")?
        else {
            return Ok(None);
        };
        Ok(Some(
            Self::serve_on(cfg, stores, listeners, sink, shutdown).await?,
        ))
    }

    /// Serves on an opened (and migrated) store. Fails only when the TLS files of
    /// `grpc.tls` cannot be read (naming the field), before anything starts.
    pub async fn serve_on(
        cfg: &CollectorConfig,
        stores: Stores,
        listeners: Listeners,
        sink: AlertSink,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Running> {
        let tls = grpc_tls(cfg)?;
        if cfg.grpc.allow_plaintext {
            tracing::warn!(
                tls = tls.is_some(),
                credentials = !cfg.grpc.agents.is_empty(),
                "grpc.allow_plaintext: agents may connect without TLS{}",
                if cfg.grpc.agents.is_empty() {
                    " and without credentials: anyone who reaches the port can write any cluster's data"
                } else {
                    ""
                }
            );
        }
        let metrics = CollectorMetrics::new();
        let state = LiveState::new(cfg.ingest.agent_timeout);
        state.register(&cfg.clusters);
        // Registered through the API: read now, and again now and then (another
        // collector sharing the store may change them).
        let fixed: std::collections::BTreeSet<String> =
            cfg.clusters.iter().map(|c| c.name.clone()).collect();
        if let Err(e) = crate::registry::sync(stores.registry.as_ref(), &state, &fixed).await {
            tracing::warn!(error = %e, "reading the cluster registrations; read again in 30 s");
        }
        // Everything but the rules stops on `serving`, which only `drain` cancels.
        let serving = CancellationToken::new();
        let rules_stop = CancellationToken::new();
        let grace = cfg.shutdown_grace;

        let (tx, writer, storage_health) =
            writer::channel(stores.storage.clone(), cfg.ingest.clone(), metrics.clone());
        // Open live streams end when serving stops, or the HTTP server's
        // graceful shutdown would wait for them.
        tokio::spawn({
            let (feed, serving) = (state.feed().clone(), serving.clone());
            async move {
                serving.cancelled().await;
                feed.close();
            }
        });
        tokio::spawn(crate::registry::run(
            stores.registry.clone(),
            state.clone(),
            fixed.clone(),
            serving.clone(),
        ));
        let askers = crate::consistency::HashAskers::default();
        // Holds nothing to drain: it ends when serving stops.
        tokio::spawn(crate::consistency::run(
            cfg.consistency.clone(),
            state.clone(),
            askers.clone(),
            serving.clone(),
        ));
        let ingest = Ingest::new(
            stores.storage.clone(),
            tx,
            state.clone(),
            metrics.clone(),
            &cfg.ingest,
            crate::ingest::auth::AgentAuth::new(&cfg.grpc),
            serving.clone(),
        )
        .with_hash_askers(askers)
        .into_service();
        // Unhealthy while storage writes have failed for a while: agents are then
        // holding data back and an operator must look.
        let health: HealthFn = storage_health.health(
            "storage writes (agents are holding their data)",
            cfg.ingest.unhealthy_after,
            "serving",
        );
        let stored_tokens = Arc::new(api::tokens::StoredTokens::new(stores.tokens.clone()));
        let firing = crate::exporter::FiringBoard::default();
        let fleet = crate::exporter::FleetExporter::new(state.clone(), firing.clone()).registry();
        let routes = etcdmon_core::ops::router_of(vec![metrics.registry().clone(), fleet], health)
            .merge(api::router(
                stores.storage.clone(),
                stores.alerts.clone(),
                stores.audit.clone(),
                api::tokens::router(stored_tokens.clone(), &cfg.http),
                api::fleet::router(
                    stores.storage.clone(),
                    stores.registry.clone(),
                    stores.alerts.clone(),
                    fixed.clone(),
                    state.clone(),
                ),
                state.clone(),
            ));
        let router = api::guarded(
            routes,
            api::auth::ApiAuth::new(
                &cfg.http,
                stored_tokens,
                stores.audit.clone(),
                metrics.clone(),
            )?,
        );

        let mut rule_set = rules::Rules::new(cfg.rules.clone());
        rule_set
            .restore_from(stores.alerts.as_ref(), cfg.ingest.agent_timeout)
            .await;
        let (transitions, publishing) = match sink {
            AlertSink::LogOnly => {
                tracing::info!(
                    "alerting.jetstream not set: alert transitions are logged and counted only"
                );
                (None, Vec::new())
            }
            AlertSink::Publish(publisher) => {
                let (sender, outbox) = Outbox::new(publisher.clone(), cfg.alerting.outbox_bytes);
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let tasks = vec![
                    tokio::spawn(candidates::watch_consumer(
                        publisher,
                        metrics.clone(),
                        serving.clone(),
                    )),
                    tokio::spawn(outbox.with_shutdown_grace(grace).run(serving.clone())),
                    tokio::spawn(candidates::run(
                        rx,
                        sender,
                        cfg.alerting.outbox_bytes,
                        cfg.alerting.runbook_url_prefix.clone(),
                        cfg.alerting.heartbeat(),
                        metrics.clone(),
                        serving.clone(),
                    )),
                ];
                (Some(tx), tasks)
            }
        };

        let grpc_addr = local_addr(&listeners.grpc);
        let http_addr = local_addr(&listeners.http);
        let writer = tokio::spawn(writer.run(serving.clone(), grace));
        let rules_task = tokio::spawn(rules::run(
            rule_set,
            state.clone(),
            cfg.rules_interval,
            metrics.clone(),
            transitions,
            firing,
            rules_stop.clone(),
        ));
        let retention = tokio::spawn(crate::retention::run(
            stores.storage.clone(),
            cfg.storage.retention_interval,
            serving.clone(),
        ));
        let http = shutdown.spawn_server(
            "HTTP server",
            etcdmon_core::ops::serve(listeners.http, router, serving.clone()),
        );
        let stop = serving.clone();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).context("grpc.tls")?;
        }
        let grpc = shutdown.spawn_server(
            "gRPC server",
            server
                // An agent holds one stream; a client opening hundreds on one
                // connection is not an agent.
                .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION))
                .initial_stream_window_size(Some(GRPC_FLOW_WINDOW))
                .initial_connection_window_size(Some(GRPC_FLOW_WINDOW))
                // Pings find a connection whose agent vanished (a partition, a
                // power cut) within about 20 s: its stream ends and its agent id
                // is free again for the agent's next connection.
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(ingest)
                .serve_with_incoming_shutdown(
                    crate::ingest::incoming::limited(
                        listeners.grpc,
                        crate::ingest::incoming::MAX_AGENT_CONNECTIONS,
                        cfg.grpc.max_connections_per_address,
                    ),
                    async move { stop.cancelled().await },
                ),
        );
        tracing::info!(grpc = %grpc_addr, http = %http_addr, backend = stores.storage.backend(), "collector started");
        Ok(Running {
            grpc_addr,
            http_addr,
            state,
            metrics,
            stores,
            grace,
            rules: Some((rules_stop, rules_task)),
            serving,
            grpc,
            writer,
            publishing,
            retention,
            http,
        })
    }
}

/// The gRPC listener's TLS: its certificate and key, and the CA of agents'
/// client certificates (optional for a client: agents with a token need none).
fn grpc_tls(cfg: &CollectorConfig) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let Some(t) = &cfg.grpc.tls else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, field: &str| {
        std::fs::read(path).with_context(|| format!("{field}: read {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&t.cert, "grpc.tls.cert")?,
        read(&t.key, "grpc.tls.key")?,
    );
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &t.client_ca {
        tls = tls
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "grpc.tls.client_ca",
            )?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

fn local_addr(l: &TcpListener) -> SocketAddr {
    // A bound listener always has an address; 0.0.0.0:0 would only mislabel logs.
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A serving collector. Drop it only after [`drain`](Self::drain): its tasks keep
/// running otherwise.
pub struct Running {
    /// Where agents connect.
    pub grpc_addr: SocketAddr,
    /// Where the API is served.
    pub http_addr: SocketAddr,
    /// The live state of every cluster.
    pub state: LiveState,
    /// Self-metrics.
    pub metrics: CollectorMetrics,
    /// The store (samples and alert state).
    pub stores: Stores,
    grace: Duration,
    rules: Option<(CancellationToken, JoinHandle<()>)>,
    serving: CancellationToken,
    grpc: JoinHandle<()>,
    writer: JoinHandle<()>,
    publishing: Vec<JoinHandle<()>>,
    retention: JoinHandle<()>,
    http: JoinHandle<()>,
}

impl Running {
    /// `http://` URL of the gRPC listener, for agents.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Stops the rules and waits until their last round is over; from then on no
    /// transition is made. `etcdmon up` calls it before stopping its agents;
    /// [`drain`](Self::drain) calls it first.
    pub async fn stop_rules(&mut self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.rules.take() {
            stop.cancel();
            task.await.context("rules task")?;
        }
        Ok(())
    }

    /// Stops serving in the order described in the module docs: every batch an
    /// agent sent is stored or left unacknowledged (so the agent sends it again),
    /// and no alert is made by the shutdown itself. The store gets `grace` (the
    /// config's `shutdown_grace`) to take the last writes.
    pub async fn drain(mut self) -> anyhow::Result<()> {
        self.stop_rules().await?;
        self.serving.cancel();
        self.grpc.await.context("gRPC server task")?;
        // Sessions end with the server; the writer stores what they queued.
        self.writer.await.context("writer task")?;
        for t in self.publishing {
            t.await.context("alert publishing task")?;
        }
        self.retention.await.context("retention task")?;
        self.http.await.context("HTTP server task")?;
        tracing::info!(grace = ?self.grace, "collector stopped");
        Ok(())
    }
}
