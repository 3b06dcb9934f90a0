//! The REST API (JSON). Current views come from the live state; history
//! comes from storage. Every error is a 4xx/5xx with `{"error": "..."}`.
//!
//! - `GET /api/v1/clusters`
//! - `GET /api/v1/clusters/{cluster}`, `.../members`, `.../events`, and
//!   registration (`PUT`, `DELETE`): see [`fleet`].
//! - `GET /api/v1/stream`: events and alert transitions as they happen, see [`stream`].
//! - `GET /api/v1/clusters/{cluster}/metrics/history?metric=NAME&member=M&labels=L&from=T&to=T&step=S`
//! - `GET /api/v1/query`, `GET /api/v1/compare`, and per cluster
//!   `.../metrics/current` and `.../latency`: fleet queries, see [`query`].
//! - alerts, their history, acknowledgements and silences: see [`alerting`].
//! - `GET /api/v1/whoami`, `GET /api/v1/audit`, and who may call what: see [`auth`].
//! - `GET/POST /api/v1/maintenance`, `DELETE /api/v1/maintenance/{id}`: see [`maintenance`].
//! - `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`: see [`tokens`].
//! - `GET /` and `GET /assets/{file}`: the web page, see [`web`].
//! - `GET /status` and `GET /docs/{name}`: a page without script, see [`home`].

pub mod alerting;
pub mod auth;
pub mod fleet;
pub mod home;
pub mod jwt;
pub mod maintenance;
pub mod query;
pub mod stream;
pub mod tokens;
pub mod web;

use crate::now_ms;
use crate::state::LiveState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use etcdmon_storage::{AlertStore, AuditLog, PointQuery, Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Longest range answered with raw points (no step): beyond it a step is
/// required, so one request cannot pull millions of rows.
pub const MAX_RAW_RANGE: Duration = Duration::from_secs(6 * 3600);
/// Most buckets a stepped query may ask for.
pub const MAX_BUCKETS: i64 = 11_000;

#[derive(Clone)]
struct Api {
    storage: Arc<dyn Storage>,
    state: LiveState,
}

/// The API routes, without the checks of [`auth::guard`] (see [`guarded`]).
pub fn router(
    storage: Arc<dyn Storage>,
    alert_store: Arc<dyn AlertStore>,
    audit: Arc<dyn AuditLog>,
    tokens: Router,
    fleet: Router,
    state: LiveState,
) -> Router {
    Router::new()
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/clusters/{cluster}/metrics/history", get(history))
        .with_state(Api {
            storage: storage.clone(),
            state: state.clone(),
        })
        .merge(query::router(storage, state.clone()))
        .merge(fleet)
        .merge(stream::router(state.feed().clone()))
        .merge(alerting::router(alert_store.clone()))
        .merge(maintenance::router(alert_store))
        .merge(auth::router(audit))
        .merge(tokens)
        .merge(home::router(state))
        .merge(web::router())
}

/// `routes` (the API merged with `/metrics` and `/healthz`) behind the Host,
/// credential and role checks of `auth` on every route.
pub fn guarded(routes: Router, auth: auth::ApiAuth) -> Router {
    routes.route_layer(axum::middleware::from_fn_with_state(
        Arc::new(auth),
        auth::guard,
    ))
}

/// An API error: status plus a one-sentence message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::InvalidQuery(m) => bad(m),
            StorageError::Unavailable(_) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ClustersResponse {
    clusters: Vec<crate::state::ClusterState>,
}

/// Filters of the cluster list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClustersParams {
    /// Only clusters with a member in this region.
    region: Option<String>,
    /// Only clusters with a member tagged so: `key=value`, several separated by
    /// commas (all must hold).
    tag: Option<String>,
}

async fn clusters(
    State(api): State<Api>,
    params: Result<Query<ClustersParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClustersResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let tags = parse_tags(p.tag.as_deref())?;
    let mut clusters = api.state.snapshot();
    // A registered cluster matches by its registration too (it may have no
    // member reporting yet).
    clusters.retain(|c| {
        let reg = c.registration.as_ref();
        let region_ok = p.region.as_deref().is_none_or(|r| {
            reg.is_some_and(|g| g.region == r) || c.members.values().any(|m| m.region == r)
        });
        let tags_ok = tags.iter().all(|(k, v)| {
            let tagged =
                |t: &std::collections::BTreeMap<String, String>| t.get(*k).is_some_and(|x| x == v);
            reg.is_some_and(|g| tagged(&g.tags)) || c.members.values().any(|m| tagged(&m.tags))
        });
        region_ok && tags_ok
    });
    Ok(Json(ClustersResponse { clusters }))
}

/// The `tag` parameter: `key=value` pairs separated by commas, all of which
/// must hold.
pub(crate) fn parse_tags(tag: Option<&str>) -> Result<Vec<(&str, &str)>, ApiError> {
    let Some(t) = tag else {
        return Ok(Vec::new());
    };
    t.split(',')
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    bad(format!(
                        "`tag` takes key=value pairs separated by commas, got {kv:?}"
                    ))
                })
        })
        .collect()
}

/// Query parameters of the history endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    metric: Option<String>,
    member: Option<String>,
    labels: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

#[derive(Serialize)]
struct HistoryResponse {
    cluster: String,
    metric: String,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    series: Vec<SeriesJson>,
}

#[derive(Serialize)]
struct SeriesJson {
    member: String,
    labels: String,
    /// `[ms since the epoch, value]` pairs, ascending.
    points: Vec<(i64, f64)>,
}

async fn history(
    State(api): State<Api>,
    Path(cluster): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let metric = p.metric.filter(|m| !m.is_empty()).ok_or_else(|| {
        bad("query parameter `metric` is required, e.g. metric=etcd_mvcc_db_total_size_in_bytes")
    })?;
    let (from_ms, to_ms) = parse_range(p.from.as_deref(), p.to.as_deref(), 3_600_000)?;
    let step_ms = match &p.step {
        Some(s) => parse_step(s)?,
        None => 0,
    };
    let range = to_ms - from_ms;
    if step_ms == 0 && range > MAX_RAW_RANGE.as_millis() as i64 {
        return Err(bad(format!(
            "ranges over {} need a `step` (e.g. step=1m)",
            humantime_like(MAX_RAW_RANGE)
        )));
    }
    if step_ms > 0 && range / step_ms > MAX_BUCKETS {
        return Err(bad(format!(
            "too many points: at most {MAX_BUCKETS} steps per query, raise `step`"
        )));
    }
    let series = api
        .storage
        .query(&PointQuery {
            cluster: cluster.clone(),
            metric: metric.clone(),
            member: p.member,
            labels: p.labels,
            from_ms,
            to_ms,
            step_ms,
        })
        .await?;
    Ok(Json(HistoryResponse {
        cluster,
        metric,
        from_ms,
        to_ms,
        step_ms,
        series: series
            .into_iter()
            .map(|s| SeriesJson {
                member: s.member,
                labels: s.labels,
                points: s.points,
            })
            .collect(),
    }))
}

fn humantime_like(d: Duration) -> String {
    format!("{}h", d.as_secs() / 3600)
}

/// Latest time a query may name: the end of year 9999, in ms since the epoch. Every
/// time is within `[0, MAX_TIME_MS]`, so no range arithmetic on them can overflow.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The `from`/`to` query parameters as ms since the epoch: `to` defaults to now,
/// `from` to `default_span_ms` before `to`; `from` after `to` is a 400. Public for
/// the fuzz target (`tests/fuzz`).
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    default_span_ms: i64,
) -> Result<(i64, i64), ApiError> {
    let now = now_ms();
    let to_ms = match to {
        Some(t) => parse_time("to", t, now)?,
        None => now,
    };
    let from_ms = match from {
        Some(t) => parse_time("from", t, now)?,
        None => to_ms.saturating_sub(default_span_ms).max(0),
    };
    if from_ms > to_ms {
        return Err(bad(format!("`from` ({from_ms}) is after `to` ({to_ms})")));
    }
    Ok((from_ms, to_ms))
}

/// Accepts RFC 3339 (`2026-11-27T15:00:00Z`), Unix seconds (`1795000000`,
/// fractions allowed), `now`, or `now-DURATION` (`now-15m`). The result is within
/// `[0, MAX_TIME_MS]`: a time before 1970 (`now-300y`) is 1970; one after year 9999
/// is a 400.
pub(crate) fn parse_time(field: &str, s: &str, now_ms: i64) -> Result<i64, ApiError> {
    if s == "now" {
        return Ok(now_ms);
    }
    let too_late = || {
        bad(format!(
            "`{field}` is after the year 9999 (at most {MAX_TIME_MS} ms since the epoch)"
        ))
    };
    if let Some(d) = s.strip_prefix("now-") {
        let d = humantime::parse_duration(d)
            .map_err(|e| bad(format!("`{field}`: bad duration in {s:?}: {e}")))?;
        let back = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(back).max(0));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            let ms = secs * 1000.0;
            if ms > MAX_TIME_MS as f64 {
                return Err(too_late());
            }
            return Ok(ms as i64);
        }
    }
    let ms = humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        })
        .map_err(|_| {
            bad(format!(
                "`{field}` must be RFC 3339, Unix seconds, `now` or `now-15m`; got {s:?}"
            ))
        })?;
    if ms > MAX_TIME_MS {
        return Err(too_late());
    }
    Ok(ms)
}

/// Accepts a duration (`15s`, `1m`) or plain seconds (`15`).
fn parse_step(s: &str) -> Result<i64, ApiError> {
    let ms = if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(bad(format!("`step` must be a finite duration: {s:?}")));
        }
        // Saturates for absurd values, which the bucket check then accepts as one bucket.
        (secs * 1000.0) as i64
    } else {
        humantime::parse_duration(s)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .map_err(|e| bad(format!("`step`: {e}: {s:?}")))?
    };
    if ms <= 0 {
        return Err(bad("`step` must be positive"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps() {
        let now = 1_000_000_000;
        assert_eq!(parse_time("from", "now", now).ok(), Some(now));
        assert_eq!(parse_time("from", "now-1m", now).ok(), Some(now - 60_000));
        assert_eq!(
            parse_time("from", "1700000000.5", now).ok(),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20Z", now).ok(),
            Some(1_700_000_000_000)
        );
        assert!(parse_time("from", "yesterday", now).is_err());
        assert_eq!(parse_step("15s").ok(), Some(15_000));
        assert_eq!(parse_step("2").ok(), Some(2_000));
        assert!(parse_step("0").is_err());
        assert!(parse_step("soon").is_err());
    }

    /// `to=1e300&from=now-300y` overflowed the range arithmetic (a panic in debug,
    /// a negative range that passed every bound in release).
    #[test]
    fn absurd_times_cannot_overflow_a_range() {
        let now = 1_795_000_000_000;
        assert!(parse_time("to", "1e300", now).is_err());
        assert!(parse_time("to", "9999999999999", now).is_err());
        assert_eq!(parse_time("from", "now-300y", now).ok(), Some(0));
        assert_eq!(parse_time("from", "now-100000000000y", now).ok(), Some(0));
        assert!(parse_range(Some("now-300y"), Some("1e300"), 3_600_000).is_err());
        let Ok((from, to)) = parse_range(Some("now-300y"), Some("now"), 3_600_000) else {
            panic!("a range from 1970 to now is valid");
        };
        assert!(from == 0 && to > from && to - from < MAX_TIME_MS);
        assert_eq!(parse_step("1e300").ok(), Some(i64::MAX));
        assert!(parse_step("inf").is_err() && parse_step("NaN").is_err());
    }
}
