//! Maintenance windows: planned work on a cluster or one member mutes the
//! alerts it is expected to cause, for a while, and nothing else.
//!
//! - `POST /api/v1/maintenance` `{"cluster", "member"?, "duration", "reason"}`
//!   (operator) opens one; `GET /api/v1/maintenance` lists the open ones and
//!   those that ended in the last 24 h; `DELETE /api/v1/maintenance/{id}` ends
//!   one early.
//!
//! A window is a silence (the alerter already mutes by silences, and the alert
//! views already show what mutes an alert) with an id starting `mw-` and
//! matchers made from its scope, never written by hand:
//!
//! - `cluster="C"`, and `member="M"` when it is for one member: an alert of
//!   another member, or a cluster-level alert (no `member` label) during a
//!   one-member window, is outside it;
//! - `rule!~"quorum_lost|no_leader|alarm_active"`: an outage or an etcd alarm
//!   is never planned work, whatever the scope.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use etcdmon_alert::{MatchOp, Matcher, Silence};
use etcdmon_storage::{AlertStore, SilenceRow};
use serde::{Deserialize, Serialize};

use super::alerting::{expire, silences_since};
use super::auth::{actor, AuditDetail, Caller};
use super::{bad, ApiError};
use crate::now_ms;

/// What every maintenance window's id starts with.
pub const ID_PREFIX: &str = "mw-";
/// Rules no window mutes: outages and etcd's alarms.
pub const NEVER_MUTED: &str = "quorum_lost|no_leader|alarm_active";
/// Longest window.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
/// How long ended windows stay listed.
const ENDED_LISTED_MS: i64 = 86_400_000;

/// The maintenance routes.
pub fn router(store: Arc<dyn AlertStore>) -> Router {
    Router::new()
        .route("/api/v1/maintenance", get(list).post(open))
        .route("/api/v1/maintenance/{id}", delete(end))
        .with_state(store)
}

/// A window as the API shows it.
#[derive(Debug, Serialize)]
pub struct WindowJson {
    id: String,
    cluster: String,
    /// Empty for the whole cluster.
    member: String,
    reason: String,
    created_by: String,
    starts_ms: i64,
    ends_ms: i64,
    /// `active` or `expired`.
    state: &'static str,
    /// The silence's matchers, as the alerter applies them.
    matchers: Vec<String>,
}

impl WindowJson {
    /// The window a silence is, if it is one (its id says so and its matchers
    /// have the window's shape).
    pub fn of(s: &Silence, now_ms: i64) -> Option<Self> {
        if !s.id.starts_with(ID_PREFIX) {
            return None;
        }
        let value = |name: &str| {
            s.matchers
                .iter()
                .find(|m| m.name == name && m.op == MatchOp::Equal)
                .map(|m| m.value.clone())
        };
        Some(Self {
            id: s.id.clone(),
            cluster: value("cluster")?,
            member: value("member").unwrap_or_default(),
            reason: s.comment.clone(),
            created_by: s.created_by.clone(),
            starts_ms: s.starts_ms,
            ends_ms: s.ends_ms,
            state: if s.active_at(now_ms) {
                "active"
            } else {
                "expired"
            },
            matchers: s.matchers.iter().map(ToString::to_string).collect(),
        })
    }
}

/// The matchers of a window on `cluster` (and `member`).
fn matchers(cluster: &str, member: Option<&str>) -> Result<Vec<Matcher>, ApiError> {
    let quote = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut texts = vec![format!("cluster={}", quote(cluster))];
    if let Some(m) = member {
        texts.push(format!("member={}", quote(m)));
    }
    texts.push(format!("rule!~\"{NEVER_MUTED}\""));
    texts
        .iter()
        .map(|t| Matcher::parse(t).map_err(|e| bad(e.to_string())))
        .collect()
}

/// The body of `POST /api/v1/maintenance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenRequest {
    cluster: String,
    #[serde(default)]
    member: Option<String>,
    /// How long (`30m`, `2h`): the window ends on its own then.
    duration: String,
    /// What is being done (shown with the window and the muted alerts).
    reason: String,
}

async fn open(
    State(store): State<Arc<dyn AlertStore>>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<OpenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Extension<AuditDetail>, Json<WindowJson>), ApiError> {
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    if req.cluster.trim().is_empty() {
        return Err(bad("`cluster` is required"));
    }
    if req.reason.trim().is_empty() {
        return Err(bad("`reason` is required: say what is being done"));
    }
    let member = req.member.as_deref().filter(|m| !m.is_empty());
    let d = humantime::parse_duration(&req.duration)
        .map_err(|e| bad(format!("`duration`: {e}: {:?}", req.duration)))?;
    if d.is_zero() || d > MAX_DURATION {
        return Err(bad("`duration` must be positive and at most 7 days"));
    }
    let now = now_ms();
    let silence = Silence {
        id: format!("{ID_PREFIX}{}", super::alerting::new_id(now)),
        matchers: matchers(&req.cluster, member)?,
        starts_ms: now,
        ends_ms: now + d.as_millis() as i64,
        created_by: actor(caller),
        comment: req.reason,
        updated_ms: now,
    };
    store.put_silence(&SilenceRow::from(&silence)).await?;
    tracing::info!(id = %silence.id, cluster = %req.cluster, member = member.unwrap_or(""),
        by = %silence.created_by, until_ms = silence.ends_ms, "maintenance window opened");
    let window = WindowJson::of(&silence, now).ok_or_else(|| bad("not a window"))?;
    let detail = AuditDetail(format!("opened {}", silence.id));
    Ok((StatusCode::CREATED, Extension(detail), Json(window)))
}

#[derive(Serialize)]
struct WindowList {
    windows: Vec<WindowJson>,
}

/// The windows open now or ended within a day, newest first.
pub async fn windows(store: &dyn AlertStore, now: i64) -> Result<Vec<WindowJson>, ApiError> {
    let mut out: Vec<WindowJson> = silences_since(store, now - ENDED_LISTED_MS)
        .await?
        .iter()
        .filter_map(|s| WindowJson::of(s, now))
        .collect();
    out.sort_by_key(|w| std::cmp::Reverse(w.starts_ms));
    Ok(out)
}

async fn list(State(store): State<Arc<dyn AlertStore>>) -> Result<Json<WindowList>, ApiError> {
    Ok(Json(WindowList {
        windows: windows(store.as_ref(), now_ms()).await?,
    }))
}

async fn end(
    State(store): State<Arc<dyn AlertStore>>,
    Path(id): Path<String>,
) -> Result<(Extension<AuditDetail>, Json<WindowJson>), ApiError> {
    let now = now_ms();
    let not_found = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no maintenance window {id:?}"),
        )
    };
    if !id.starts_with(ID_PREFIX) {
        return Err(not_found());
    }
    let s = silences_since(store.as_ref(), 0)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(not_found)?;
    if s.active_at(now) {
        tracing::info!(%id, "maintenance window ended early");
    }
    let s = expire(store.as_ref(), s, now).await?;
    let window = WindowJson::of(&s, now).ok_or_else(not_found)?;
    Ok((Extension(AuditDetail(format!("ended {id}"))), Json(window)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::{all_match, labels};

    #[test]
    fn a_member_window_mutes_that_member_only_and_never_an_outage() {
        let m = matchers("prod", Some("m1")).expect("valid");
        let alert = |rule: &str, member: &str| {
            labels(&[("cluster", "prod"), ("rule", rule), ("member", member)])
        };
        assert!(all_match(&m, &alert("member_unreachable", "m1")));
        assert!(all_match(&m, &alert("wal_fsync_slow", "m1")));
        assert!(!all_match(&m, &alert("member_unreachable", "m2")));
        assert!(!all_match(
            &m,
            &labels(&[("cluster", "prod"), ("rule", "quorum_lost")])
        ));
        assert!(!all_match(
            &m,
            &labels(&[("cluster", "prod"), ("rule", "quorum_at_risk")])
        ));
        assert!(!all_match(
            &m,
            &labels(&[
                ("cluster", "other"),
                ("rule", "member_unreachable"),
                ("member", "m1")
            ])
        ));
        let whole = matchers("prod", None).expect("valid");
        assert!(all_match(
            &whole,
            &labels(&[("cluster", "prod"), ("rule", "quorum_at_risk")])
        ));
        for outage in ["quorum_lost", "no_leader", "alarm_active"] {
            assert!(!all_match(
                &whole,
                &labels(&[("cluster", "prod"), ("rule", outage)])
            ));
        }
    }

    #[test]
    fn awkward_names_are_quoted() {
        let m = matchers("a\"b", Some("m\\1")).expect("valid");
        assert!(all_match(
            &m,
            &labels(&[("cluster", "a\"b"), ("member", "m\\1"), ("rule", "x")])
        ));
    }
}
