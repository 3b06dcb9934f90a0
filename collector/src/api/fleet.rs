//! One cluster at a time: its live state, its members, and its stored
//! timeline of events.
//!
//! - `GET /api/v1/clusters/{cluster}`: the cluster as `GET /api/v1/clusters`
//!   shows it, or 404.
//! - `GET /api/v1/clusters/{cluster}/members`: its members by name, or 404.
//! - `GET /api/v1/clusters/{cluster}/events?from=T&to=T&limit=N`: what
//!   happened to it (member down and up, leader changes, alarms raised and
//!   cleared, members added and removed, agents disconnected), newest first,
//!   from storage: also for a cluster no agent reports any more.

use super::{bad, parse_range, ApiError};
use crate::state::{ClusterState, LiveState, MemberState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use etcdmon_storage::Storage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Events answered by default, and at most.
pub const DEFAULT_EVENTS: usize = 1_000;
/// The most events one request may ask for.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Clone)]
struct Fleet {
    storage: Arc<dyn Storage>,
    state: LiveState,
}

/// The routes of this module.
pub fn router(storage: Arc<dyn Storage>, state: LiveState) -> Router {
    Router::new()
        .route("/api/v1/clusters/{cluster}", get(cluster))
        .route("/api/v1/clusters/{cluster}/members", get(members))
        .route("/api/v1/clusters/{cluster}/events", get(events))
        .with_state(Fleet { storage, state })
}

fn live(fleet: &Fleet, name: &str) -> Result<ClusterState, ApiError> {
    fleet
        .state
        .snapshot()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
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
    Ok(Json(EventsResponse {
        cluster: name,
        from_ms,
        to_ms,
        events: rows
            .into_iter()
            .map(|e| EventJson {
                ts_ms: e.ts_ms,
                member: e.member,
                kind: e.kind,
                message: e.message,
            })
            .collect(),
    }))
}
