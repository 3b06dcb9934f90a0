//! One cluster at a time: its live state, its members, and its stored
//! timeline of events.
//!
//! - `GET /api/v1/clusters/{cluster}`: the cluster as `GET /api/v1/clusters`
//!   shows it, or 404.
//! - `PUT /api/v1/clusters/{cluster}` (`{"region", "owner", "tags",
//!   "members"}`, each optional): registers it ahead of its agents, or
//!   changes its registration; stored, see [`crate::registry`].
//! - `DELETE /api/v1/clusters/{cluster}`: drops a registration made through
//!   the API (one from the config file is the file's to change: 409).
//! - `GET /api/v1/clusters/{cluster}/members`: its members by name, or 404.
//! - `GET /api/v1/clusters/{cluster}/events?from=T&to=T&limit=N`: what
//!   happened to it (member down and up, leader changes, alarms raised and
//!   cleared, members added and removed, agents disconnected) and its alerts
//!   firing and resolving, newest first, from storage: also for a cluster no
//!   agent reports any more.

use super::auth::{actor, AuditDetail, Caller};
use super::{bad, parse_range, ApiError};
use crate::state::{ClusterState, LiveState, MemberState, RegisteredCluster};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use etcdmon_storage::{AlertHistoryQuery, AlertStore, RegistryStore, Storage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Events answered by default, and at most.
pub const DEFAULT_EVENTS: usize = 1_000;
/// The most events one request may ask for.
pub const MAX_EVENTS: usize = 10_000;

/// Longest cluster name a registration takes.
pub const MAX_NAME: usize = 253;

#[derive(Clone)]
struct Fleet {
    storage: Arc<dyn Storage>,
    registry: Arc<dyn RegistryStore>,
    alerts: Arc<dyn AlertStore>,
    /// Clusters registered in the config file.
    fixed: Arc<BTreeSet<String>>,
    state: LiveState,
}

/// The routes of this module; `fixed` names the clusters registered in the
/// config file.
pub fn router(
    storage: Arc<dyn Storage>,
    registry: Arc<dyn RegistryStore>,
    alerts: Arc<dyn AlertStore>,
    fixed: BTreeSet<String>,
    state: LiveState,
) -> Router {
    Router::new()
        .route(
            "/api/v1/clusters/{cluster}",
            get(cluster).put(register).delete(unregister),
        )
        .route("/api/v1/clusters/{cluster}/members", get(members))
        .route("/api/v1/clusters/{cluster}/events", get(events))
        .with_state(Fleet {
            storage,
            registry,
            alerts,
            fixed: Arc::new(fixed),
            state,
        })
}

/// The body of `PUT /api/v1/clusters/{cluster}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RegistrationBody {
    region: String,
    owner: String,
    tags: BTreeMap<String, String>,
    members: Vec<String>,
}

fn from_config(fleet: &Fleet, name: &str) -> Result<(), ApiError> {
    if fleet.fixed.contains(name) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("cluster {name:?} is registered in the collector's config file ([[clusters]]); change it there"),
        ));
    }
    Ok(())
}

async fn register(
    State(fleet): State<Fleet>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<RegistrationBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(Extension<AuditDetail>, Json<RegisteredCluster>), ApiError> {
    let Json(b) = body.map_err(|e| bad(e.body_text()))?;
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(bad(format!(
            "a cluster name has 1 to {MAX_NAME} characters, none of them control characters"
        )));
    }
    if b.members.iter().any(|m| m.is_empty()) {
        return Err(bad("`members` holds member names; an empty one is not"));
    }
    from_config(&fleet, &name)?;
    let reg = RegisteredCluster {
        name: name.clone(),
        region: b.region,
        owner: b.owner,
        tags: b.tags,
        members: b.members,
    };
    fleet
        .registry
        .put_registration(&crate::registry::to_row(
            &reg,
            crate::now_ms(),
            &actor(caller),
        ))
        .await?;
    fleet.state.register(std::slice::from_ref(&reg));
    Ok((
        Extension(AuditDetail(format!("registered {name}"))),
        Json(reg),
    ))
}

async fn unregister(
    State(fleet): State<Fleet>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<(StatusCode, Extension<AuditDetail>), ApiError> {
    from_config(&fleet, &name)?;
    if !fleet
        .registry
        .delete_registration(&name, crate::now_ms(), &actor(caller))
        .await?
    {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("cluster {name:?} is not registered through the API"),
        ));
    }
    fleet.state.unregister(&name);
    Ok((
        StatusCode::NO_CONTENT,
        Extension(AuditDetail(format!("unregistered {name}"))),
    ))
}

fn live(fleet: &Fleet, name: &str) -> Result<ClusterState, ApiError> {
    fleet.state.cluster(name).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no cluster {name:?}: it is not registered and no agent reports for it (GET /api/v1/clusters lists those known)"),
            )
        })
}

async fn cluster(
    State(fleet): State<Fleet>,
    Path(name): Path<String>,
) -> Result<Json<ClusterState>, ApiError> {
    live(&fleet, &name).map(Json)
}

#[derive(Serialize)]
struct MembersResponse {
    cluster: String,
    members: BTreeMap<String, MemberState>,
}

async fn members(
    State(fleet): State<Fleet>,
    Path(name): Path<String>,
) -> Result<Json<MembersResponse>, ApiError> {
    let c = live(&fleet, &name)?;
    Ok(Json(MembersResponse {
        cluster: c.name,
        members: c.members,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventJson {
    ts_ms: i64,
    member: String,
    kind: String,
    message: String,
}

#[derive(Serialize)]
struct EventsResponse {
    cluster: String,
    from_ms: i64,
    to_ms: i64,
    events: Vec<EventJson>,
}

async fn events(
    State(fleet): State<Fleet>,
    Path(name): Path<String>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsResponse>, ApiError> {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    // The last day unless asked otherwise.
    let (from_ms, to_ms) = parse_range(p.from.as_deref(), p.to.as_deref(), 86_400_000)?;
    let limit = p.limit.unwrap_or(DEFAULT_EVENTS);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(bad(format!("`limit` must be 1 to {MAX_EVENTS}")));
    }
    let rows = fleet.storage.events(&name, from_ms, to_ms, limit).await?;
    let alerts = fleet
        .alerts
        .alert_history(&AlertHistoryQuery {
            from_ms,
            to_ms,
            cluster: Some(name.clone()),
            fingerprint: None,
            limit,
        })
        .await?;
    let mut events: Vec<EventJson> = rows
        .into_iter()
        .map(|e| EventJson {
            ts_ms: e.ts_ms,
            member: e.member,
            kind: e.kind,
            message: e.message,
        })
        .chain(alerts.into_iter().map(alert_event))
        .collect();
    // Newest first; at one instant, cluster events before the alerts they caused.
    events.sort_by_key(|e| std::cmp::Reverse(e.ts_ms));
    events.truncate(limit);
    Ok(Json(EventsResponse {
        cluster: name,
        from_ms,
        to_ms,
        events,
    }))
}

/// An alert transition as a timeline entry: `alert_firing` or
/// `alert_resolved`, with the rule, severity and summary in the message.
fn alert_event(t: etcdmon_storage::AlertTransitionRow) -> EventJson {
    let text = |json: &str, key: &str| {
        serde_json::from_str::<BTreeMap<String, String>>(json)
            .ok()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_default()
    };
    let summary = text(&t.annotations_json, "summary");
    EventJson {
        ts_ms: t.received_ms,
        member: text(&t.labels_json, "member"),
        kind: format!("alert_{}", t.state.as_str()),
        message: format!("{} ({}): {summary}", t.rule, t.severity),
    }
}
