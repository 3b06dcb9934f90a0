//! Alert endpoints, served from the alert store the alerter writes:
//!
//! - `GET /api/v1/alerts?state=firing|resolved|all&cluster=C&fingerprint=F`: the current
//!   state of every alert (default: firing only), with its silences and acknowledgement.
//! - `GET /api/v1/alerts/history?from=T&to=T&cluster=C&fingerprint=F&limit=N`: every
//!   transition and every delivery attempt, newest first.
//! - `POST /api/v1/alerts/{fingerprint}/ack` `{"by": "...", "comment": "..."}`:
//!   acknowledges the alert's current firing episode (stops repeats and escalation).
//! - `GET /api/v1/silences`, `POST /api/v1/silences`
//!   `{"matchers": ["cluster=\"prod\""], "duration": "2h", "created_by": "...", "comment": "..."}`
//!   (or `starts_at`/`ends_at`), `DELETE /api/v1/silences/{id}` (expires it).
//!
//! The alerter re-reads silences and acknowledgements every `refresh_interval` (1 s by
//! default), so a change takes effect within about a second.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use etcdmon_alert::{all_match, AlertState, Labels, Matcher, Silence};
use etcdmon_storage::{
    AlertAckRow, AlertDeliveryRow, AlertHistoryQuery, AlertStore, AlertTransitionRow, SilenceRow,
};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{bad, parse_range, parse_time, ApiError};
use crate::now_ms;

/// How far back "current" alerts and listed silences reach (firing alerts are always
/// listed, whatever their age).
const CURRENT_WINDOW_MS: i64 = 24 * 3_600_000;
/// Default and largest `limit` of the history endpoint.
const HISTORY_LIMIT: (usize, usize) = (500, 10_000);

#[derive(Clone)]
struct AlertsApi {
    store: Arc<dyn AlertStore>,
}

/// The alert routes.
pub fn router(store: Arc<dyn AlertStore>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(current))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/alerts/{fingerprint}/ack", post(ack))
        .route("/api/v1/silences", get(list_silences).post(create_silence))
        .route(
            "/api/v1/silences/{id}",
            get(get_silence).delete(expire_silence),
        )
        .with_state(AlertsApi { store })
}

/// One alert as the API shows it.
#[derive(Debug, Serialize)]
struct AlertJson {
    fingerprint: String,
    state: AlertState,
    transition: u64,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    value: Option<f64>,
    /// When the current state began, ms since the epoch.
    active_since_ms: i64,
    /// When the alerter received it.
    received_ms: i64,
    /// Ids of the active silences that mute it.
    silenced_by: Vec<String>,
    acknowledged: Option<AckJson>,
}

#[derive(Debug, Clone, Serialize)]
struct AckJson {
    by: String,
    comment: String,
    at_ms: i64,
}

fn alert_json(
    row: AlertTransitionRow,
    silences: &[Silence],
    acks: &[AlertAckRow],
    now: i64,
) -> AlertJson {
    let labels: Labels = serde_json::from_str(&row.labels_json).unwrap_or_default();
    let silenced_by = silences
        .iter()
        .filter(|s| s.active_at(now) && all_match(&s.matchers, &labels))
        .map(|s| s.id.clone())
        .collect();
    let acknowledged = row
        .state
        .is_firing()
        .then(|| {
            acks.iter()
                .find(|a| a.fingerprint == row.fingerprint && a.transition == row.transition)
                .map(|a| AckJson {
                    by: a.by.clone(),
                    comment: a.comment.clone(),
                    at_ms: a.ts_ms,
                })
        })
        .flatten();
    AlertJson {
        fingerprint: row.fingerprint,
        state: row.state,
        transition: row.transition,
        labels,
        annotations: serde_json::from_str(&row.annotations_json).unwrap_or_default(),
        value: row.value.is_finite().then_some(row.value),
        active_since_ms: row.active_since_ms,
        received_ms: row.received_ms,
        silenced_by,
        acknowledged,
    }
}

async fn load_silences(store: &dyn AlertStore, now: i64) -> Result<Vec<Silence>, ApiError> {
    silences_since(store, now - CURRENT_WINDOW_MS).await
}

/// The current version of every silence (and maintenance window) ending at or
/// after `since_ms`.
pub(super) async fn silences_since(
    store: &dyn AlertStore,
    since_ms: i64,
) -> Result<Vec<Silence>, ApiError> {
    let rows = store.silences(since_ms).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Silence::try_from(r).ok())
        .collect())
}

/// Ends `s` at `now` (stored as a new version) unless it has ended already.
pub(super) async fn expire(
    store: &dyn AlertStore,
    mut s: Silence,
    now: i64,
) -> Result<Silence, ApiError> {
    if s.ends_ms > now {
        s.ends_ms = now;
        // A silence that had not started yet is expired too, not left "pending".
        s.starts_ms = s.starts_ms.min(now);
        // The version must grow even if two changes land in the same millisecond.
        s.updated_ms = now.max(s.updated_ms + 1);
        store.put_silence(&SilenceRow::from(&s)).await?;
    }
    Ok(s)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrentParams {
    state: Option<String>,
    cluster: Option<String>,
    fingerprint: Option<String>,
}

#[derive(Debug, Serialize)]
struct AlertsResponse {
    alerts: Vec<AlertJson>,
}

async fn current(
    State(api): State<AlertsApi>,
    params: Result<Query<CurrentParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertsResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    // `None` is "all".
    let wanted: Option<AlertState> = match p.state.as_deref().unwrap_or("firing") {
        "all" => None,
        word => Some(word.parse().map_err(|_| {
            bad(format!(
                "`state` must be firing, resolved or all; got {word:?}"
            ))
        })?),
    };
    let now = now_ms();
    let rows = api
        .store
        .latest_transitions(now - CURRENT_WINDOW_MS)
        .await?;
    let silences = load_silences(api.store.as_ref(), now).await?;
    let acks = api.store.acks(now - CURRENT_WINDOW_MS * 30).await?;
    let mut alerts: Vec<AlertJson> = rows
        .into_iter()
        .filter(|r| wanted.is_none_or(|w| r.state == w))
        .filter(|r| p.cluster.as_ref().is_none_or(|c| &r.cluster == c))
        .filter(|r| p.fingerprint.as_ref().is_none_or(|f| &r.fingerprint == f))
        .map(|r| alert_json(r, &silences, &acks, now))
        .collect();
    alerts.sort_by(|a, b| {
        b.active_since_ms
            .cmp(&a.active_since_ms)
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
    Ok(Json(AlertsResponse { alerts }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
    cluster: Option<String>,
    fingerprint: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct TransitionJson {
    fingerprint: String,
    transition: u64,
    state: AlertState,
    cluster: String,
    rule: String,
    severity: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    value: Option<f64>,
    active_since_ms: i64,
    received_ms: i64,
    /// Ids of the silences and maintenance windows that muted it when the
    /// alerter received it.
    silenced_by: Vec<String>,
}

#[derive(Debug, Serialize)]
struct HistoryResponse {
    from_ms: i64,
    to_ms: i64,
    transitions: Vec<TransitionJson>,
    deliveries: Vec<AlertDeliveryRow>,
    /// Maintenance windows open at some time in the range.
    maintenance: Vec<super::maintenance::WindowJson>,
}

async fn history(
    State(api): State<AlertsApi>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let (from_ms, to_ms) = parse_range(p.from.as_deref(), p.to.as_deref(), CURRENT_WINDOW_MS)?;
    let limit = p.limit.unwrap_or(HISTORY_LIMIT.0);
    if limit == 0 || limit > HISTORY_LIMIT.1 {
        return Err(bad(format!(
            "`limit` must be between 1 and {}",
            HISTORY_LIMIT.1
        )));
    }
    let query = AlertHistoryQuery {
        from_ms,
        to_ms,
        cluster: p.cluster,
        fingerprint: p.fingerprint,
        limit,
    };
    let silences = silences_since(api.store.as_ref(), from_ms).await?;
    let now = now_ms();
    let maintenance = silences
        .iter()
        .filter(|s| s.starts_ms <= to_ms)
        .filter_map(|s| super::maintenance::WindowJson::of(s, now))
        .collect();
    let transitions = api
        .store
        .alert_history(&query)
        .await?
        .into_iter()
        .map(|r| {
            let labels: Labels = serde_json::from_str(&r.labels_json).unwrap_or_default();
            let silenced_by = silences
                .iter()
                .filter(|s| s.active_at(r.received_ms) && all_match(&s.matchers, &labels))
                .map(|s| s.id.clone())
                .collect();
            (r, labels, silenced_by)
        })
        .map(|(r, labels, silenced_by)| TransitionJson {
            labels,
            annotations: serde_json::from_str(&r.annotations_json).unwrap_or_default(),
            value: r.value.is_finite().then_some(r.value),
            fingerprint: r.fingerprint,
            transition: r.transition,
            state: r.state,
            cluster: r.cluster,
            rule: r.rule,
            severity: r.severity,
            active_since_ms: r.active_since_ms,
            received_ms: r.received_ms,
            silenced_by,
        })
        .collect();
    let deliveries = api.store.deliveries(&query).await?;
    Ok(Json(HistoryResponse {
        from_ms,
        to_ms,
        transitions,
        deliveries,
        maintenance,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AckRequest {
    by: String,
    comment: String,
}

#[derive(Debug, Serialize)]
struct AckResponse {
    fingerprint: String,
    transition: u64,
    by: String,
}

async fn ack(
    State(api): State<AlertsApi>,
    Path(fingerprint): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<AckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AckResponse>, ApiError> {
    let Json(mut req) = body.map_err(|e| bad(e.body_text()))?;
    req.by = who(req.by, caller.as_ref().map(|c| &c.0))
        .ok_or_else(|| bad("`by` (who acknowledges) is required"))?;
    let now = now_ms();
    let latest = api
        .store
        .latest_transitions(now - CURRENT_WINDOW_MS)
        .await?
        .into_iter()
        .find(|r| r.fingerprint == fingerprint)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no alert {fingerprint:?}")))?;
    if !latest.state.is_firing() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("alert {fingerprint:?} is {}, not firing", latest.state),
        ));
    }
    api.store
        .put_ack(&AlertAckRow {
            fingerprint: fingerprint.clone(),
            transition: latest.transition,
            by: req.by.clone(),
            comment: req.comment,
            ts_ms: now,
        })
        .await?;
    // The first acknowledgement of an episode is the one kept: answer with it.
    let kept = api
        .store
        .acks(now - CURRENT_WINDOW_MS * 30)
        .await?
        .into_iter()
        .find(|a| a.fingerprint == fingerprint && a.transition == latest.transition);
    Ok(Json(AckResponse {
        fingerprint,
        transition: latest.transition,
        by: kept.map_or(req.by, |a| a.by),
    }))
}

/// Who did it: the name the request gives, else the caller's name when it
/// authenticated (an anonymous caller must say).
fn who(given: String, caller: Option<&Caller>) -> Option<String> {
    if !given.trim().is_empty() {
        return Some(given);
    }
    caller
        .filter(|c| c.via != "anonymous")
        .map(|c| c.name.clone())
}

#[derive(Debug, Serialize)]
struct SilenceJson {
    #[serde(flatten)]
    silence: Silence,
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct SilencesResponse {
    silences: Vec<SilenceJson>,
}

async fn list_silences(State(api): State<AlertsApi>) -> Result<Json<SilencesResponse>, ApiError> {
    let now = now_ms();
    let mut silences: Vec<SilenceJson> = load_silences(api.store.as_ref(), now)
        .await?
        .into_iter()
        .map(|s| SilenceJson {
            state: s.state_at(now),
            silence: s,
        })
        .collect();
    silences.sort_by_key(|s| std::cmp::Reverse(s.silence.starts_ms));
    Ok(Json(SilencesResponse { silences }))
}

async fn find_silence(store: &dyn AlertStore, id: &str, now: i64) -> Result<Silence, ApiError> {
    load_silences(store, now)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no silence {id:?}")))
}

async fn get_silence(
    State(api): State<AlertsApi>,
    Path(id): Path<String>,
) -> Result<Json<SilenceJson>, ApiError> {
    let now = now_ms();
    let s = find_silence(api.store.as_ref(), &id, now).await?;
    Ok(Json(SilenceJson {
        state: s.state_at(now),
        silence: s,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SilenceRequest {
    matchers: Vec<String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    duration: Option<String>,
    created_by: String,
    comment: String,
}

async fn create_silence(
    State(api): State<AlertsApi>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<SilenceRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<SilenceJson>), ApiError> {
    let Json(mut req) = body.map_err(|e| bad(e.body_text()))?;
    req.created_by = who(req.created_by, caller.as_ref().map(|c| &c.0))
        .ok_or_else(|| bad("`created_by` is required"))?;
    let now = now_ms();
    if req.matchers.is_empty() {
        return Err(bad(
            "`matchers` needs at least one matcher, e.g. [\"cluster=\\\"prod\\\"\"]",
        ));
    }
    let matchers = req
        .matchers
        .iter()
        .map(|m| Matcher::parse(m).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let starts_ms = match &req.starts_at {
        Some(t) => parse_time("starts_at", t, now)?,
        None => now,
    };
    let ends_ms = match (&req.ends_at, &req.duration) {
        (Some(_), Some(_)) => return Err(bad("give `ends_at` or `duration`, not both")),
        (Some(t), None) => parse_time("ends_at", t, now)?,
        (None, Some(d)) => {
            let d =
                humantime::parse_duration(d).map_err(|e| bad(format!("`duration`: {e}: {d:?}")))?;
            let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            starts_ms.saturating_add(d)
        }
        (None, None) => return Err(bad("`ends_at` or `duration` is required")),
    };
    if ends_ms > super::MAX_TIME_MS {
        return Err(bad("the silence must end before the year 10000"));
    }
    if ends_ms <= starts_ms || ends_ms <= now {
        return Err(bad(
            "the silence must end after it starts and in the future",
        ));
    }
    let silence = Silence {
        id: new_id(now),
        matchers,
        starts_ms,
        ends_ms,
        created_by: req.created_by,
        comment: req.comment,
        updated_ms: now,
    };
    api.store.put_silence(&SilenceRow::from(&silence)).await?;
    Ok((
        StatusCode::CREATED,
        Json(SilenceJson {
            state: silence.state_at(now),
            silence,
        }),
    ))
}

async fn expire_silence(
    State(api): State<AlertsApi>,
    Path(id): Path<String>,
) -> Result<Json<SilenceJson>, ApiError> {
    let now = now_ms();
    let s = find_silence(api.store.as_ref(), &id, now).await?;
    let s = expire(api.store.as_ref(), s, now).await?;
    Ok(Json(SilenceJson {
        state: s.state_at(now),
        silence: s,
    }))
}

/// A silence id: time-ordered and unique enough for humans and URLs.
pub(super) fn new_id(now_ms: i64) -> String {
    format!("{now_ms:x}-{:08x}", rand::random::<u32>())
}
