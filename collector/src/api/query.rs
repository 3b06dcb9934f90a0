//! Fleet queries over HTTP (see [`crate::fleet_query`]).
//!
//! - `GET /api/v1/query?metric=M&fn=F&q=Q&window=W&agg=A&by=B&cluster=a,b&region=R&tag=k=v&group=G&member=M&labels=L&from=T&to=T&step=S`:
//!   one metric, each series through `fn` (`value`, `rate`, `increase`,
//!   `quantile` with `q`), then aggregated by `agg` (`none`, `sum`, `avg`,
//!   `min`, `max`) within the groups of `by` (`series`, `member`, `cluster`,
//!   `region`, `node`, `tag:KEY`).
//! - `GET /api/v1/compare?...`: the same, grouped by cluster (`max` unless
//!   told otherwise), plus a table of each group's last, min, mean and max
//!   over the range: clusters side by side, or with `by=region` the fleet's
//!   worst per region.
//! - `GET /api/v1/clusters/{cluster}/metrics/current?window=W`: the USE and
//!   RED view of each member now, in one answer.
//! - `GET /api/v1/clusters/{cluster}/latency?window=W`: each member's
//!   latencies (disk, network, requests, the agent's probes) now.

use super::{bad, parse_range, ApiError, MAX_BUCKETS};
use crate::fleet_query::eval::Aggregate;
use crate::fleet_query::{self, Function, GroupBy, Query, Scope, Series};
use crate::now_ms;
use crate::state::LiveState;
use axum::extract::{Path, Query as Params, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use etcdmon_storage::{MemberInfo, Storage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The longest window a rate or quantile may use.
pub const MAX_WINDOW_MS: i64 = 86_400_000;
/// Most clusters one query may name.
pub const MAX_CLUSTERS: usize = 1_000;

#[derive(Clone)]
struct Queries {
    storage: Arc<dyn Storage>,
    state: LiveState,
}

/// The routes of this module.
pub fn router(storage: Arc<dyn Storage>, state: LiveState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query))
        .route("/api/v1/compare", get(compare))
        .route("/api/v1/clusters/{cluster}/metrics/current", get(current))
        .route("/api/v1/clusters/{cluster}/latency", get(latency))
        .with_state(Queries { storage, state })
}

/// Parameters of `/query` and `/compare`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParams {
    metric: Option<String>,
    #[serde(rename = "fn")]
    function: Option<String>,
    q: Option<f64>,
    window: Option<String>,
    agg: Option<String>,
    by: Option<String>,
    cluster: Option<String>,
    /// `/compare`'s name for `cluster`.
    clusters: Option<String>,
    region: Option<String>,
    tag: Option<String>,
    /// Shorthand for `tag=group=G`.
    group: Option<String>,
    member: Option<String>,
    labels: Option<String>,
    merge_labels: Option<bool>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

#[derive(Serialize)]
struct QueryResponse {
    metric: String,
    #[serde(rename = "fn")]
    function: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    q: Option<f64>,
    window_ms: i64,
    agg: Aggregate,
    by: String,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    series: Vec<Series>,
    /// `/compare` only: each group over the whole range.
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<Vec<Summary>>,
}

/// One group over the range, for the comparison table.
#[derive(Serialize)]
struct Summary {
    group: BTreeMap<String, String>,
    last: f64,
    min: f64,
    avg: f64,
    max: f64,
}

type Rejection = axum::extract::rejection::QueryRejection;

/// The query and scope `p` asks for; `compare` sets the defaults of `/compare`.
fn plan(p: QueryParams, compare: bool) -> Result<(Query, Scope, String), ApiError> {
    let metric = p.metric.filter(|m| !m.is_empty()).ok_or_else(|| {
        bad("query parameter `metric` is required, e.g. metric=etcd_disk_wal_fsync_duration_seconds")
    })?;
    let function = Function::parse(p.function.as_deref().unwrap_or("value"), p.q).map_err(bad)?;
    let (from_ms, to_ms) = parse_range(p.from.as_deref(), p.to.as_deref(), 3_600_000)?;
    let step_ms = match &p.step {
        Some(s) => super::parse_step(s)?,
        None => fleet_query::auto_step(from_ms, to_ms),
    };
    if (to_ms - from_ms) / step_ms > MAX_BUCKETS {
        return Err(bad(format!(
            "too many points: at most {MAX_BUCKETS} steps per query, raise `step`"
        )));
    }
    // A rate wants a few scrapes in its window: half a minute, or the step.
    let window_ms = match &p.window {
        Some(w) => {
            super::parse_step(w).map_err(|_| bad(format!("`window`: bad duration {w:?}")))?
        }
        None => step_ms.max(30_000),
    };
    if window_ms > MAX_WINDOW_MS {
        return Err(bad("`window` may be at most 1d"));
    }
    let aggregate = match &p.agg {
        Some(a) => Aggregate::parse(a).ok_or_else(|| {
            bad(format!(
                "`agg` must be none, sum, avg, min or max; got {a:?}"
            ))
        })?,
        None if compare => Aggregate::Max,
        None => Aggregate::None,
    };
    let by_name = match (&p.by, aggregate) {
        (Some(b), _) => b.clone(),
        (None, _) if compare => "cluster".to_owned(),
        (None, Aggregate::None) => "series".to_owned(),
        (None, _) => "cluster".to_owned(),
    };
    let by = GroupBy::parse(&by_name).map_err(bad)?;
    let clusters: Vec<String> = match (p.cluster, p.clusters) {
        (Some(_), Some(_)) => return Err(bad("give `cluster` or `clusters`, not both")),
        (Some(c), None) | (None, Some(c)) => c
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        (None, None) => Vec::new(),
    };
    if clusters.len() > MAX_CLUSTERS {
        return Err(bad(format!("at most {MAX_CLUSTERS} clusters per query")));
    }
    let mut tags = super::parse_tags(p.tag.as_deref())?
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect::<Vec<_>>();
    if let Some(g) = p.group {
        tags.push(("group".to_owned(), g));
    }
    let query = Query {
        metric,
        labels: p.labels,
        function,
        merge_labels: p.merge_labels.unwrap_or(false),
        window_ms,
        aggregate,
        by,
        from_ms,
        to_ms,
        step_ms,
    };
    let scope = Scope {
        clusters,
        region: p.region,
        tags,
        member: p.member,
    };
    Ok((query, scope, by_name))
}

async fn answer(
    api: &Queries,
    p: Result<Params<QueryParams>, Rejection>,
    compare: bool,
) -> Result<Json<QueryResponse>, ApiError> {
    let Params(p) = p.map_err(|e| bad(e.body_text()))?;
    let (q, scope, by) = plan(p, compare)?;
    let inventory = fleet_query::inventory(api.storage.as_ref(), &api.state, None).await?;
    let clusters = fleet_query::clusters_of(&scope, &inventory, &api.state);
    let series = fleet_query::run(api.storage.as_ref(), &inventory, &clusters, &scope, &q).await?;
    let table = compare.then(|| series.iter().filter_map(summary).collect());
    Ok(Json(QueryResponse {
        metric: q.metric,
        function: q.function.name(),
        q: match q.function {
            Function::Quantile(q) => Some(q),
            _ => None,
        },
        window_ms: q.window_ms,
        agg: q.aggregate,
        by,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        step_ms: q.step_ms,
        series,
        table,
    }))
}

fn summary(s: &Series) -> Option<Summary> {
    let last = s.points.last()?.1;
    let values = s.points.iter().map(|p| p.1);
    Some(Summary {
        group: s.group.clone(),
        last,
        min: values.clone().fold(f64::INFINITY, f64::min),
        avg: values.clone().sum::<f64>() / s.points.len() as f64,
        max: values.fold(f64::NEG_INFINITY, f64::max),
    })
}

async fn query(
    State(api): State<Queries>,
    p: Result<Params<QueryParams>, Rejection>,
) -> Result<Json<QueryResponse>, ApiError> {
    answer(&api, p, false).await
}

async fn compare(
    State(api): State<Queries>,
    p: Result<Params<QueryParams>, Rejection>,
) -> Result<Json<QueryResponse>, ApiError> {
    answer(&api, p, true).await
}

/// One figure of the per-member views: a name, and how it is computed.
struct Figure {
    name: &'static str,
    metric: &'static str,
    function: Function,
    /// Exact labels of the series, if one series of several.
    labels: Option<&'static str>,
    /// How a member's series (gRPC methods, interfaces, ...) become one.
    aggregate: Aggregate,
}

const fn figure(name: &'static str, metric: &'static str, function: Function) -> Figure {
    Figure {
        name,
        metric,
        function,
        labels: None,
        aggregate: Aggregate::Sum,
    }
}

/// The USE and RED view of `/metrics/current`. Request latency needs etcd's
/// `--metrics=extensive` (gRPC handling histograms); without it those
/// figures are absent.
const CURRENT: &[Figure] = &[
    figure("request_rate", "grpc_server_started_total", Function::Rate),
    figure(
        "request_latency_p50_seconds",
        "grpc_server_handling_seconds",
        Function::Quantile(0.5),
    ),
    figure(
        "request_latency_p95_seconds",
        "grpc_server_handling_seconds",
        Function::Quantile(0.95),
    ),
    figure(
        "request_latency_p99_seconds",
        "grpc_server_handling_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "proposals_committed_rate",
        "etcd_server_proposals_committed_total",
        Function::Rate,
    ),
    figure(
        "proposals_applied_rate",
        "etcd_server_proposals_applied_total",
        Function::Rate,
    ),
    figure(
        "proposals_pending",
        "etcd_server_proposals_pending",
        Function::Value,
    ),
    figure(
        "proposals_failed_rate",
        "etcd_server_proposals_failed_total",
        Function::Rate,
    ),
    figure(
        "wal_fsync_p99_seconds",
        "etcd_disk_wal_fsync_duration_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "backend_commit_p99_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "db_size_bytes",
        "etcd_mvcc_db_total_size_in_bytes",
        Function::Value,
    ),
    figure(
        "db_size_in_use_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        Function::Value,
    ),
    figure(
        "watchers",
        "etcd_debugging_mvcc_watcher_total",
        Function::Value,
    ),
    figure(
        "watch_streams",
        "etcd_debugging_mvcc_watch_stream_total",
        Function::Value,
    ),
    figure(
        "client_received_bytes_rate",
        "etcd_network_client_grpc_received_bytes_total",
        Function::Rate,
    ),
    figure(
        "client_sent_bytes_rate",
        "etcd_network_client_grpc_sent_bytes_total",
        Function::Rate,
    ),
    figure(
        "peer_rtt_p99_seconds",
        "etcd_network_peer_round_trip_time_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "host_cpu_utilization",
        "etcdmon_host_cpu_utilization",
        Function::Value,
    ),
    figure(
        "host_memory_available_bytes",
        "etcdmon_host_memory_available_bytes",
        Function::Value,
    ),
    Figure {
        aggregate: Aggregate::Max,
        ..figure(
            "host_disk_utilization",
            "etcdmon_host_disk_utilization",
            Function::Value,
        )
    },
    Figure {
        aggregate: Aggregate::Min,
        ..figure(
            "host_fs_available_bytes",
            "etcdmon_host_fs_available_bytes",
            Function::Value,
        )
    },
    figure(
        "host_net_rx_bytes_rate",
        "etcdmon_host_net_rx_bytes_total",
        Function::Rate,
    ),
    figure(
        "host_net_tx_bytes_rate",
        "etcdmon_host_net_tx_bytes_total",
        Function::Rate,
    ),
    figure(
        "process_open_fds",
        "etcdmon_process_open_fds",
        Function::Value,
    ),
];

/// The figures of `/latency`.
const LATENCY: &[Figure] = &[
    figure(
        "wal_fsync_p50_seconds",
        "etcd_disk_wal_fsync_duration_seconds",
        Function::Quantile(0.5),
    ),
    figure(
        "wal_fsync_p99_seconds",
        "etcd_disk_wal_fsync_duration_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "backend_commit_p50_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        Function::Quantile(0.5),
    ),
    figure(
        "backend_commit_p99_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "peer_rtt_p99_seconds",
        "etcd_network_peer_round_trip_time_seconds",
        Function::Quantile(0.99),
    ),
    figure(
        "request_latency_p50_seconds",
        "grpc_server_handling_seconds",
        Function::Quantile(0.5),
    ),
    figure(
        "request_latency_p99_seconds",
        "grpc_server_handling_seconds",
        Function::Quantile(0.99),
    ),
    Figure {
        labels: Some(r#"quantile="0.99""#),
        aggregate: Aggregate::Max,
        ..figure(
            "fsync_probe_p99_seconds",
            "etcdmon_fsync_probe_seconds",
            Function::Value,
        )
    },
    figure(
        "status_latency_seconds",
        "etcdmon_status_latency_seconds",
        Function::Value,
    ),
    Figure {
        labels: Some(r#"mode="linearizable""#),
        ..figure(
            "read_linearizable_seconds",
            "etcdmon_read_latency_seconds",
            Function::Value,
        )
    },
    Figure {
        labels: Some(r#"mode="serializable""#),
        ..figure(
            "read_serializable_seconds",
            "etcdmon_read_latency_seconds",
            Function::Value,
        )
    },
];

/// Parameters of the per-member views.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewParams {
    window: Option<String>,
}

#[derive(Serialize)]
struct ViewResponse {
    cluster: String,
    window_ms: i64,
    /// When the figures were computed, ms since the epoch.
    at_ms: i64,
    /// Member -> figure -> value; a figure with no data is absent.
    members: BTreeMap<String, BTreeMap<&'static str, f64>>,
}

async fn current(
    State(api): State<Queries>,
    Path(cluster): Path<String>,
    p: Result<Params<ViewParams>, Rejection>,
) -> Result<Json<ViewResponse>, ApiError> {
    view(&api, cluster, p, CURRENT, 60_000).await
}

async fn latency(
    State(api): State<Queries>,
    Path(cluster): Path<String>,
    p: Result<Params<ViewParams>, Rejection>,
) -> Result<Json<ViewResponse>, ApiError> {
    view(&api, cluster, p, LATENCY, 300_000).await
}

/// Each figure's latest value per member of `cluster` over the last window.
async fn view(
    api: &Queries,
    cluster: String,
    p: Result<Params<ViewParams>, Rejection>,
    figures: &[Figure],
    default_window_ms: i64,
) -> Result<Json<ViewResponse>, ApiError> {
    let Params(p) = p.map_err(|e| bad(e.body_text()))?;
    let window_ms = match &p.window {
        Some(w) => super::parse_step(w)?,
        None => default_window_ms,
    };
    if window_ms > MAX_WINDOW_MS {
        return Err(bad("`window` may be at most 1d"));
    }
    let inventory =
        fleet_query::inventory(api.storage.as_ref(), &api.state, Some(&cluster)).await?;
    let known = api.state.snapshot().iter().any(|c| c.name == cluster);
    if !known && inventory.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no cluster named {cluster:?} has reported"),
        ));
    }
    let now = now_ms();
    // Enough steps that the latest point has a full window before it.
    let step_ms = 10_000.min(window_ms);
    let mut members: BTreeMap<String, BTreeMap<&'static str, f64>> = inventory
        .values()
        .map(|m: &MemberInfo| (m.member.clone(), BTreeMap::new()))
        .collect();
    let clusters = [cluster.clone()];
    for f in figures {
        let q = Query {
            metric: f.metric.to_owned(),
            labels: f.labels.map(str::to_owned),
            function: f.function,
            merge_labels: true,
            window_ms,
            aggregate: f.aggregate,
            by: GroupBy::Member,
            from_ms: now - 2 * step_ms,
            to_ms: now,
            step_ms,
        };
        let found = fleet_query::run(
            api.storage.as_ref(),
            &inventory,
            &clusters,
            &Scope::default(),
            &q,
        )
        .await?;
        for s in found {
            let (Some(member), Some(&(_, v))) = (s.group.get("member"), s.points.last()) else {
                continue;
            };
            members.entry(member.clone()).or_default().insert(f.name, v);
        }
    }
    Ok(Json(ViewResponse {
        cluster,
        window_ms,
        at_ms: now,
        members,
    }))
}
