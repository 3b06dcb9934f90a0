//! Who may call which endpoint, and the audit log of what they did.
//!
//! ```text
//! request ─> endpoint's access (ENDPOINTS; unlisted: admin) ─> public: served
//!         ─> Host allowed? (403)
//!         ─> caller: API token (401 if unknown) or anonymous role (401 if none)
//!         ─> role high enough? (403) ─> served ─> mutating: audit row
//! ```
//!
//! Refused credentials and refused roles are audited too, at most
//! [`FAILURES_AUDITED_PER_SECOND`] a second (a flood of bad tokens must not turn
//! into a flood of store writes; the rest are counted). Tokens are compared by
//! their SHA-256, so the config never holds one.

use crate::api::tokens::{sha256_from_hex, Lookup, StoredTokens};
use crate::api::{bad, parse_range, ApiError};
use crate::config::HttpConfig;
use crate::glob::glob;
use crate::metrics::CollectorMetrics;
use crate::now_ms;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use etcdmon_storage::{AuditLog, AuditQuery, AuditRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What a caller may do; each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything but the audit log.
    Viewer,
    /// Also acknowledge alerts, create or expire silences, open and end
    /// maintenance windows.
    Operator,
    /// Also read the audit log and manage API tokens.
    Admin,
}

impl Role {
    /// The lowercase name, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (probes).
    Public,
    /// At least this role.
    At(Role),
}

/// Every endpoint (method, route) and what it needs: the one place that says
/// who may do what. An endpoint not listed needs admin, so a new route is
/// closed until it is added here (`docs/api.md` has the same table).
pub const ENDPOINTS: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/metrics", Access::At(Role::Viewer)),
    // The web page's files hold no data; the page asks for a token itself.
    ("GET", "/", Access::Public),
    ("GET", "/assets/{file}", Access::Public),
    ("GET", "/status", Access::At(Role::Viewer)),
    ("GET", "/docs/{name}", Access::At(Role::Viewer)),
    ("GET", "/api/v1/whoami", Access::At(Role::Viewer)),
    ("GET", "/api/v1/clusters", Access::At(Role::Viewer)),
    ("GET", "/api/v1/stream", Access::At(Role::Viewer)),
    (
        "GET",
        "/api/v1/clusters/{cluster}",
        Access::At(Role::Viewer),
    ),
    ("PUT", "/api/v1/clusters/{cluster}", Access::At(Role::Admin)),
    (
        "DELETE",
        "/api/v1/clusters/{cluster}",
        Access::At(Role::Admin),
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/members",
        Access::At(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/events",
        Access::At(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/metrics/history",
        Access::At(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/metrics/current",
        Access::At(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/latency",
        Access::At(Role::Viewer),
    ),
    ("GET", "/api/v1/query", Access::At(Role::Viewer)),
    ("GET", "/api/v1/compare", Access::At(Role::Viewer)),
    ("GET", "/api/v1/alerts", Access::At(Role::Viewer)),
    ("GET", "/api/v1/alerts/history", Access::At(Role::Viewer)),
    (
        "POST",
        "/api/v1/alerts/{fingerprint}/ack",
        Access::At(Role::Operator),
    ),
    ("GET", "/api/v1/silences", Access::At(Role::Viewer)),
    ("POST", "/api/v1/silences", Access::At(Role::Operator)),
    ("GET", "/api/v1/silences/{id}", Access::At(Role::Viewer)),
    (
        "DELETE",
        "/api/v1/silences/{id}",
        Access::At(Role::Operator),
    ),
    ("GET", "/api/v1/maintenance", Access::At(Role::Viewer)),
    ("POST", "/api/v1/maintenance", Access::At(Role::Operator)),
    (
        "DELETE",
        "/api/v1/maintenance/{id}",
        Access::At(Role::Operator),
    ),
    ("GET", "/api/v1/audit", Access::At(Role::Admin)),
    ("GET", "/api/v1/tokens", Access::At(Role::Admin)),
    ("POST", "/api/v1/tokens", Access::At(Role::Admin)),
    ("DELETE", "/api/v1/tokens/{id}", Access::At(Role::Admin)),
];

/// What the route `path` needs for `method` (HEAD as GET; unlisted: admin).
pub fn access(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ENDPOINTS
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map_or(Access::At(Role::Admin), |(_, _, a)| *a)
}

/// Refused logins and roles written to the audit log per second, at most.
pub const FAILURES_AUDITED_PER_SECOND: u32 = 10;

/// The caller of a request, for handlers (`Extension<Caller>`) and the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    /// The token's name, or `anonymous`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// `token`, `jwt` or `anonymous`.
    pub via: &'static str,
}

/// Who made a change, for what it records: the caller's name, `anonymous`
/// when the route had no caller.
pub fn actor(caller: Option<Extension<Caller>>) -> String {
    caller.map_or_else(|| "anonymous".to_owned(), |c| c.0.name)
}

/// What a handler tells the audit log about a change it made (the id of what
/// it made or removed), as a response extension. Never a secret.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// The checks of every request, built once from `[http]`.
pub struct ApiAuth {
    tokens: Vec<(String, [u8; 32], Role)>,
    stored: Arc<StoredTokens>,
    jwt: Option<super::jwt::JwtVerifier>,
    anonymous: Option<Role>,
    allowed_hosts: Vec<String>,
    audit: Arc<dyn AuditLog>,
    metrics: CollectorMetrics,
    /// (second, refusals audited in it).
    failures: Mutex<(i64, u32)>,
}

/// Why a request was refused.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    /// Who it claimed to be (a token's name when the role was too low).
    claimed: String,
    /// How it tried: `token`, `jwt` or `anonymous`.
    via: &'static str,
}

impl ApiAuth {
    /// The checks of `cfg` (already validated) and the `stored` tokens,
    /// auditing into `audit`. Fails when a JWT key file cannot be read (naming
    /// the field).
    pub fn new(
        cfg: &HttpConfig,
        stored: Arc<StoredTokens>,
        audit: Arc<dyn AuditLog>,
        metrics: CollectorMetrics,
    ) -> anyhow::Result<Self> {
        let tokens = cfg
            .auth
            .tokens
            .iter()
            .filter_map(|t| Some((t.name.clone(), sha256_from_hex(&t.token_sha256)?, t.role)))
            .collect();
        let jwt = cfg
            .auth
            .jwt
            .as_ref()
            .map(super::jwt::JwtVerifier::new)
            .transpose()?;
        Ok(Self {
            tokens,
            stored,
            jwt,
            anonymous: cfg.auth.anonymous,
            allowed_hosts: cfg.allowed_hosts.clone(),
            audit,
            metrics,
            failures: Mutex::new((0, 0)),
        })
    }

    /// Whether the Host header names this server: an IP address, `localhost`
    /// or one of `http.allowed_hosts`. No Host header (HTTP/1.0) is allowed:
    /// browsers always send one.
    fn host_allowed(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(value) = headers.get(header::HOST) else {
            return Ok(());
        };
        let host = value
            .to_str()
            .map_err(|_| "a Host header that is not text")?;
        let name = host_name(host);
        let allowed = name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|p| glob(&p.to_ascii_lowercase(), &name.to_ascii_lowercase()));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "Host {host:?} is not one of this server's names: add it to http.allowed_hosts"
            ))
        }
    }

    /// The caller: by its API token or JWT, else the anonymous role.
    async fn identify(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let unauthenticated = |message: &str| Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: "unauthenticated",
            message: message.to_owned(),
            claimed: String::new(),
            via: "token",
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return self
                .anonymous
                .map(|role| Caller {
                    name: "anonymous".to_owned(),
                    role,
                    via: "anonymous",
                })
                .ok_or_else(|| Refusal {
                    via: "anonymous",
                    ..unauthenticated(
                        "authentication required: send `Authorization: Bearer <token>` \
                         (an API token, or a JWT of the identity provider)",
                    )
                });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))?;
        // A JWT is three base64url parts; an API token has no dots.
        if let (Some(jwt), 2) = (&self.jwt, token.matches('.').count()) {
            return jwt.verify(token).await.map_err(|refusal| match refusal {
                super::jwt::JwtRefusal::Invalid(message) => Refusal {
                    via: "jwt",
                    ..unauthenticated(&message)
                },
                super::jwt::JwtRefusal::NoRole { name, message } => Refusal {
                    status: StatusCode::FORBIDDEN,
                    reason: "forbidden",
                    message,
                    claimed: name,
                    via: "jwt",
                },
            });
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((name, _, role)) = self.tokens.iter().find(|(_, hash, _)| *hash == digest) {
            return Ok(Caller {
                name: name.clone(),
                role: *role,
                via: "token",
            });
        }
        match self.stored.lookup(&digest, now_ms()).await {
            Lookup::Valid(caller) => Ok(caller),
            Lookup::Refused(message) => Err(unauthenticated(&message)),
            Lookup::Unknown => Err(unauthenticated("unknown API token")),
        }
    }

    /// Writes one audit row; a failure is logged and counted, never the
    /// request's failure (the change it records is already made).
    async fn record(&self, row: AuditRow) {
        if let Err(e) = self.audit.record_audit(&row).await {
            self.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, actor = %row.actor, method = %row.method, path = %row.path,
                status = row.status, "could not write the audit log");
        }
    }

    /// Whether another refusal may be audited this second.
    fn failure_budget(&self) -> bool {
        let second = now_ms() / 1000;
        let mut g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != second {
            *g = (second, 0);
        }
        g.1 += 1;
        g.1 <= FAILURES_AUDITED_PER_SECOND
    }
}

/// The host part of a Host header (`name:port`, `[v6]:port`, `name`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// The middleware: applies [`ApiAuth`] to every routed request (install with
/// `route_layer`, so the matched route is known).
pub async fn guard(State(auth): State<Arc<ApiAuth>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let needed = match access(&method, &route) {
        Access::Public => return next.run(req).await,
        Access::At(role) => role,
    };
    if let Err(message) = auth.host_allowed(req.headers()) {
        auth.metrics.api_refused.with_label_values(&["host"]).inc();
        return ApiError(StatusCode::FORBIDDEN, message).into_response();
    }
    let credentials = req.headers().contains_key(header::AUTHORIZATION);
    let outcome = auth.identify(req.headers()).await.and_then(|caller| {
        if caller.role >= needed {
            Ok(caller)
        } else {
            Err(Refusal {
                status: StatusCode::FORBIDDEN,
                reason: "forbidden",
                message: format!(
                    "{} {path} needs the {} role; {:?} has {}",
                    method,
                    needed.as_str(),
                    caller.name,
                    caller.role.as_str()
                ),
                claimed: caller.name,
                via: caller.via,
            })
        }
    });
    let caller = match outcome {
        Ok(caller) => caller,
        Err(refusal) => {
            auth.metrics
                .api_refused
                .with_label_values(&[refusal.reason])
                .inc();
            // A request without credentials is not a login attempt (a browser
            // opening the page); wrong credentials and too low a role are.
            if credentials || refusal.status == StatusCode::FORBIDDEN {
                if auth.failure_budget() {
                    auth.record(AuditRow {
                        ts_ms: now_ms(),
                        actor: refusal.claimed.clone(),
                        role: String::new(),
                        via: refusal.via.to_owned(),
                        method: method.to_string(),
                        path: path.clone(),
                        remote: remote.clone(),
                        status: refusal.status.as_u16(),
                        detail: refusal.message.clone(),
                    })
                    .await;
                } else {
                    auth.metrics.audit_suppressed.inc();
                }
                tracing::warn!(%remote, %method, %path, reason = refusal.reason, message = %refusal.message, "API request refused");
            }
            let mut response = ApiError(refusal.status, refusal.message).into_response();
            if refusal.status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"etcdmon\""),
                );
            }
            return response;
        }
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if mutating {
        auth.record(AuditRow {
            ts_ms: now_ms(),
            actor: caller.name,
            role: caller.role.as_str().to_owned(),
            via: caller.via.to_owned(),
            method: method.to_string(),
            path,
            remote,
            status: response.status().as_u16(),
            detail: response
                .extensions()
                .get::<AuditDetail>()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
        })
        .await;
    }
    response
}

/// Default and largest `limit` of the audit endpoint.
const AUDIT_LIMIT: (usize, usize) = (500, 10_000);
/// Default reach of the audit endpoint: a week.
const AUDIT_WINDOW_MS: i64 = 7 * 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct AuditResponse {
    entries: Vec<AuditRow>,
}

/// `GET /api/v1/whoami` and `GET /api/v1/audit`.
pub fn router(audit: Arc<dyn AuditLog>) -> Router {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/audit", get(read_audit))
        .with_state(audit)
}

/// The caller as the API sees it: name, role and how it authenticated.
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Caller> {
    Json(caller)
}

async fn read_audit(
    State(audit): State<Arc<dyn AuditLog>>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let (from_ms, to_ms) = parse_range(p.from.as_deref(), p.to.as_deref(), AUDIT_WINDOW_MS)?;
    let limit = p.limit.unwrap_or(AUDIT_LIMIT.0);
    if limit == 0 || limit > AUDIT_LIMIT.1 {
        return Err(bad(format!(
            "`limit` must be between 1 and {}",
            AUDIT_LIMIT.1
        )));
    }
    let entries = audit
        .audit(&AuditQuery {
            from_ms,
            to_ms: to_ms.saturating_add(1),
            limit,
        })
        .await?;
    Ok(Json(AuditResponse { entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("etcdmon.example:8080"), "etcdmon.example");
        assert_eq!(host_name("etcdmon.example"), "etcdmon.example");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn unlisted_endpoints_need_admin_and_head_is_get() {
        assert_eq!(
            access(&Method::POST, "/api/v1/clusters"),
            Access::At(Role::Admin)
        );
        assert_eq!(
            access(&Method::HEAD, "/api/v1/clusters"),
            Access::At(Role::Viewer)
        );
        assert_eq!(access(&Method::GET, "/healthz"), Access::Public);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
