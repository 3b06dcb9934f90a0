//! The operations endpoints every service serves: `/metrics` (Prometheus
//! text of the service's own registry) and `/healthz` (200 with a JSON body
//! when healthy, 503 otherwise).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/healthz` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// Whether the service is doing its job.
    pub healthy: bool,
    /// Short explanation, e.g. "collecting" or "etcd endpoint unreachable".
    pub detail: String,
}

/// Since when a dependency (the store) has been failing, for `/healthz`: one
/// outage is one timestamp, cleared by the next success. Cheap to clone and to
/// update from the hot path.
#[derive(Debug, Clone, Default)]
pub struct FailingSince(Arc<std::sync::atomic::AtomicI64>);

impl FailingSince {
    /// Milliseconds since the epoch of the first failure of the current outage, or
    /// `None` while calls succeed.
    pub fn since_ms(&self) -> Option<i64> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// A call succeeded: the outage (if any) is over.
    pub fn ok(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// A call failed: starts the outage unless one is running.
    pub fn failing(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(1)
            .max(1);
        let _ = self.0.compare_exchange(
            0,
            now,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A health function: unhealthy once failures of `what` have lasted longer than
    /// `after`.
    pub fn health(
        &self,
        what: &'static str,
        after: std::time::Duration,
        ok: &'static str,
    ) -> HealthFn {
        let me = self.clone();
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        Arc::new(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            match me.since_ms() {
                Some(since) if now - since > after_ms => Health {
                    healthy: false,
                    detail: format!("{what} failing for {} s", (now - since) / 1000),
                },
                _ => Health {
                    healthy: true,
                    detail: ok.into(),
                },
            }
        })
    }
}

/// Computes the current health on each `/healthz` request.
pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registries: Arc<[Registry]>,
    health: HealthFn,
}

/// A router with `/metrics` and `/healthz`; services merge their own routes into it.
pub fn router(registry: Registry, health: HealthFn) -> Router {
    router_of(vec![registry], health)
}

/// [`router`] whose `/metrics` serves several registries, one after the other
/// (each with its own prefix: the collector's own metrics and its fleet series).
pub fn router_of(registries: Vec<Registry>, health: HealthFn) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(OpsState {
            registries: registries.into(),
            health,
        })
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut buf = Vec::with_capacity(8 * 1024);
    let families: Vec<_> = state.registries.iter().flat_map(|r| r.gather()).collect();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<OpsState>) -> Response {
    let health = (state.health)();
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health)).into_response()
}

/// Binds `addr`, failing with the address in the message.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish, within the default
/// [`Limits`](crate::http_server::Limits) (header-read timeout, connection
/// limit). Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::http_server::serve(
        listener,
        router,
        crate::http_server::Limits::default(),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_turns_unhealthy_after_the_grace_and_recovers() {
        let f = FailingSince::default();
        let strict = f.health("the store", std::time::Duration::ZERO, "fine");
        let lenient = f.health("the store", std::time::Duration::from_secs(3600), "fine");
        assert!(strict().healthy && f.since_ms().is_none());
        f.failing();
        let first = f.since_ms().expect("failing");
        std::thread::sleep(std::time::Duration::from_millis(5));
        f.failing(); // the same outage keeps its start
        assert_eq!(f.since_ms(), Some(first));
        let h = strict();
        assert!(
            !h.healthy && h.detail.starts_with("the store failing for"),
            "{h:?}"
        );
        assert!(lenient().healthy, "within the grace");
        f.ok();
        assert!(strict().healthy);
        assert_eq!(strict().detail, "fine");
    }
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("etcdmon_test_total", "test").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(3);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let health: HealthFn = Arc::new(move || Health {
            healthy: h.load(Ordering::SeqCst),
            detail: "test".into(),
        });
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router(registry, health), token.clone()));

        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(body.contains("etcdmon_test_total 3"), "{body}");

        let r = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        healthy.store(false, Ordering::SeqCst);
        let r = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .expect("get");
        assert_eq!(r.status(), 503);

        token.cancel();
        server.await.expect("join").expect("serve");
    }
}
