//! API tokens managed through the API (admin only):
//!
//! - `GET /api/v1/tokens`: every token, from the config file and stored, with
//!   its state; never a secret or a hash.
//! - `POST /api/v1/tokens` `{"name", "role", "expires_in"?}`: makes a token and
//!   answers its secret once (201).
//! - `DELETE /api/v1/tokens/{id}`: revokes a stored token (204).
//!
//! Stored tokens are kept by their SHA-256 ([`etcdmon_storage::TokenStore`]).
//! Each collector reads them into memory and reads again at most every
//! [`REFRESH`], and at once after a change it made itself, so a token revoked
//! through one collector stops working on the others within [`REFRESH`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use etcdmon_storage::{TokenRow, TokenStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::auth::{actor, AuditDetail, Caller, Role};
use super::{bad, ApiError, MAX_TIME_MS};
use crate::config::HttpConfig;
use crate::now_ms;

/// Longest a collector goes without reading the stored tokens again.
pub const REFRESH: Duration = Duration::from_secs(10);
/// Longest lifetime a token may be given.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// What every secret starts with, so that a leaked one is easy to recognise
/// (and to search for in repositories).
pub const SECRET_PREFIX: &str = "etm_";

/// The stored tokens by the SHA-256 of their secret, as last read.
type Snapshot = Arc<HashMap<[u8; 32], TokenRow>>;

/// The stored tokens, read through a cache (see the module docs).
pub struct StoredTokens {
    store: Arc<dyn TokenStore>,
    /// The last read and when it was made (`None`: read at the next use).
    cache: Mutex<(Option<Instant>, Snapshot)>,
    /// One read at a time: a burst of requests after [`REFRESH`] reads once.
    reading: tokio::sync::Mutex<()>,
}

/// What a stored token says about a request that presented it.
pub enum Lookup {
    /// Not a stored token.
    Unknown,
    /// A valid token: the caller.
    Valid(Caller),
    /// A stored token that no longer works, and why (expired or revoked).
    Refused(String),
}

impl StoredTokens {
    /// Tokens of `store`, read at first use.
    pub fn new(store: Arc<dyn TokenStore>) -> Self {
        Self {
            store,
            cache: Mutex::new((None, Arc::default())),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// The token whose secret hashes to `digest`, judged at `now_ms`.
    pub async fn lookup(&self, digest: &[u8; 32], now_ms: i64) -> Lookup {
        let tokens = self.current().await;
        let Some(t) = tokens.get(digest) else {
            return Lookup::Unknown;
        };
        if t.revoked_ms != 0 {
            return Lookup::Refused(format!("API token {:?} ({}) was revoked", t.name, t.id));
        }
        if t.expires_ms != 0 && t.expires_ms <= now_ms {
            return Lookup::Refused(format!(
                "API token {:?} ({}) expired at {}",
                t.name,
                t.id,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + Duration::from_millis(t.expires_ms.clamp(0, MAX_TIME_MS) as u64)
                )
            ));
        }
        let Some(role) = parse_role(&t.role) else {
            return Lookup::Refused(format!(
                "API token {:?} ({}) has an unknown role {:?}",
                t.name, t.id, t.role
            ));
        };
        Lookup::Valid(Caller {
            name: t.name.clone(),
            role,
            via: "token",
        })
    }

    /// The cached tokens, read again when older than [`REFRESH`]. A failed
    /// read keeps the previous tokens (a store outage must not lock everyone
    /// out) and is tried again after [`REFRESH`].
    async fn current(&self) -> Snapshot {
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let _one = self.reading.lock().await;
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let previous = self.lock().1.clone();
        let next = match self.store.tokens().await {
            Ok(rows) => Arc::new(
                rows.into_iter()
                    .filter_map(|row| Some((sha256_from_hex(&row.sha256)?, row)))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the API tokens; using the last read");
                previous
            }
        };
        *self.lock() = (Some(Instant::now()), next.clone());
        next
    }

    fn fresh(&self) -> Option<Snapshot> {
        let g = self.lock();
        g.0.filter(|at| at.elapsed() < REFRESH).map(|_| g.1.clone())
    }

    /// Forgets the cache: the next use reads the store.
    fn invalidate(&self) {
        self.lock().0 = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Snapshot)> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A SHA-256 written as 64 hex digits, as tokens are kept; `None` if it is not one.
pub fn sha256_from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex, &mut digest).ok()?;
    Some(digest)
}

fn parse_role(role: &str) -> Option<Role> {
    [Role::Viewer, Role::Operator, Role::Admin]
        .into_iter()
        .find(|r| r.as_str() == role)
}

/// The state of the token routes.
#[derive(Clone)]
struct TokensApi {
    stored: Arc<StoredTokens>,
    /// The config file's tokens: (name, role).
    configured: Arc<Vec<(String, Role)>>,
}

/// `GET/POST /api/v1/tokens` and `DELETE /api/v1/tokens/{id}`.
pub fn router(stored: Arc<StoredTokens>, http: &HttpConfig) -> Router {
    let configured = http
        .auth
        .tokens
        .iter()
        .map(|t| (t.name.clone(), t.role))
        .collect();
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .with_state(TokensApi {
            stored,
            configured: Arc::new(configured),
        })
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Serialize)]
struct TokenJson {
    id: String,
    name: String,
    role: String,
    /// `api` (made through the API) or `config` (the config file).
    source: &'static str,
    /// `active`, `expired` or `revoked`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_ms: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_ms: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    revoked_by: String,
}

impl TokenJson {
    fn stored(t: &TokenRow, now_ms: i64) -> Self {
        let state = if t.revoked_ms != 0 {
            "revoked"
        } else if t.expires_ms != 0 && t.expires_ms <= now_ms {
            "expired"
        } else {
            "active"
        };
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.clone(),
            source: "api",
            state,
            created_ms: Some(t.created_ms),
            created_by: t.created_by.clone(),
            expires_ms: (t.expires_ms != 0).then_some(t.expires_ms),
            revoked_ms: (t.revoked_ms != 0).then_some(t.revoked_ms),
            revoked_by: t.revoked_by.clone(),
        }
    }

    fn configured(name: &str, role: Role) -> Self {
        Self {
            id: format!("config:{name}"),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            source: "config",
            state: "active",
            created_ms: None,
            created_by: String::new(),
            expires_ms: None,
            revoked_ms: None,
            revoked_by: String::new(),
        }
    }
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenJson>,
}

async fn list(State(api): State<TokensApi>) -> Result<Json<TokenList>, ApiError> {
    let now = now_ms();
    let stored = api.stored.store.tokens().await?;
    let tokens = api
        .configured
        .iter()
        .map(|(name, role)| TokenJson::configured(name, *role))
        .chain(stored.iter().map(|t| TokenJson::stored(t, now)))
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// The body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// Who or what will use it: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    name: String,
    role: Role,
    /// A lifetime (`90d`, `12h`); none: until revoked.
    #[serde(default)]
    expires_in: Option<String>,
}

/// The answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Serialize)]
struct Created {
    #[serde(flatten)]
    token: TokenJson,
    /// The secret, for `Authorization: Bearer <token>`.
    token_secret: String,
}

async fn create(
    State(api): State<TokensApi>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    check_name(&req.name)?;
    let now = now_ms();
    let expires_ms = match &req.expires_in {
        None => 0,
        Some(text) => {
            let d = humantime::parse_duration(text)
                .map_err(|e| bad(format!("`expires_in`: {e}: {text:?}")))?;
            if d.is_zero() || d > MAX_LIFETIME {
                return Err(bad(
                    "`expires_in` must be positive and at most 10 years (e.g. 90d)",
                ));
            }
            (now + d.as_millis() as i64).min(MAX_TIME_MS)
        }
    };
    let in_use = |t: &TokenRow| {
        t.name == req.name && t.revoked_ms == 0 && (t.expires_ms == 0 || t.expires_ms > now)
    };
    if api.configured.iter().any(|(n, _)| *n == req.name)
        || api.stored.store.tokens().await?.iter().any(in_use)
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "a token named {:?} is in use: revoke it first or choose another name",
                req.name
            ),
        ));
    }
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let row = TokenRow {
        id: format!("tok_{}", hex::encode(rand::random::<[u8; 6]>())),
        name: req.name,
        role: req.role.as_str().to_owned(),
        sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        created_ms: now,
        created_by: actor(caller),
        expires_ms,
        revoked_ms: 0,
        revoked_by: String::new(),
    };
    api.stored.store.create_token(&row).await?;
    api.stored.invalidate();
    tracing::info!(id = %row.id, name = %row.name, role = %row.role, by = %row.created_by, "API token created");
    let detail = AuditDetail(format!("created {} ({}, {})", row.id, row.name, row.role));
    let body = Created {
        token: TokenJson::stored(&row, now),
        token_secret: secret,
    };
    Ok((StatusCode::CREATED, Extension(detail), Json(body)).into_response())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "`name` must be 1 to 64 of A-Z a-z 0-9 . _ @ - (e.g. grafana or ci-bot)",
        ))
    }
}

async fn revoke(
    State(api): State<TokensApi>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(name) = id.strip_prefix("config:") {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "token {name:?} is defined in the config file (http.auth.tokens): remove it there"
            ),
        ));
    }
    let by = actor(caller);
    if !api.stored.store.revoke_token(&id, now_ms(), &by).await? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no API token {id:?}"),
        ));
    }
    api.stored.invalidate();
    tracing::info!(%id, %by, "API token revoked");
    let detail = AuditDetail(format!("revoked {id}"));
    Ok((StatusCode::NO_CONTENT, Extension(detail)).into_response())
}
