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
//! - `GET /api/v1/clusters/{cluster}/metrics/current`: the USE and RED view
//!   of each member now, in one answer, from the live state.
//! - `GET /api/v1/clusters/{cluster}/latency?window=W`: each member's
//!   latencies (disk, network, requests, the agent's probes) over the last
//!   window, from storage.

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
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The longest window a rate or quantile may use.
pub const MAX_WINDOW_MS: i64 = 86_400_000;
/// Figures of a per-member view read at once.
const CONCURRENT_FIGURES: usize = 4;
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
    let window_ms = parse_window(p.window.as_deref(), step_ms.max(30_000))?;
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

/// The `window` parameter in ms (`default_ms` without one), at most a day.
fn parse_window(window: Option<&str>, default_ms: i64) -> Result<i64, ApiError> {
    let ms = match window {
        Some(w) => {
            super::parse_step(w).map_err(|_| bad(format!("`window`: bad duration {w:?}")))?
        }
        None => default_ms,
    };
    if ms > MAX_WINDOW_MS {
        return Err(bad("`window` may be at most 1d"));
    }
    Ok(ms)
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

/// `/metrics/current`: each member's USE and RED figures from the live state
/// (what the rules judge), so it answers in microseconds whatever the store.
async fn current(
    State(api): State<Queries>,
    Path(cluster): Path<String>,
    p: Result<Params<NoParams>, Rejection>,
) -> Result<Json<CurrentResponse>, ApiError> {
    p.map_err(|e| bad(e.body_text()))?;
    let c = api.state.cluster(&cluster).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no cluster named {cluster:?} is known"),
        )
    })?;
    let members = c
        .members
        .values()
        .map(|m| (m.name.clone(), current_figures(m)))
        .collect();
    Ok(Json(CurrentResponse {
        cluster,
        at_ms: now_ms(),
        members,
    }))
}

/// No parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Serialize)]
struct CurrentResponse {
    cluster: String,
    at_ms: i64,
    /// Member -> figure -> value; a figure not known (yet) is absent.
    members: BTreeMap<String, BTreeMap<&'static str, f64>>,
}

/// The figures of one member: rates and quantiles over the interval between
/// its last two scrapes, everything else as last reported.
fn current_figures(m: &crate::state::MemberState) -> BTreeMap<&'static str, f64> {
    let d = &m.derived;
    let host = m.host.as_ref();
    let mut f = BTreeMap::new();
    let mut put = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            f.insert(name, v);
        }
    };
    put("request_rate", d.request_rate);
    put("request_error_ratio", d.grpc_error_ratio);
    put("request_latency_p50_seconds", d.grpc_unary_p50);
    put("request_latency_p95_seconds", d.grpc_unary_p95);
    put("request_latency_p99_seconds", d.grpc_unary_p99);
    put("proposals_committed_rate", d.proposals_committed_rate);
    put("proposals_applied_rate", d.proposals_applied_rate);
    put("proposals_pending", d.proposals_pending);
    put("proposals_failed_rate", d.proposals_failed_rate);
    put("wal_fsync_p50_seconds", d.wal_fsync_p50);
    put("wal_fsync_p99_seconds", d.wal_fsync_p99);
    put("backend_commit_p50_seconds", d.backend_commit_p50);
    put("backend_commit_p99_seconds", d.backend_commit_p99);
    put("peer_rtt_p99_seconds", d.peer_rtt_p99);
    put("watchers", d.watchers);
    put("watch_streams", d.watch_streams);
    put("client_received_bytes_rate", d.client_received_bytes_rate);
    put("client_sent_bytes_rate", d.client_sent_bytes_rate);
    put("db_growth_bytes_per_second", d.db_growth_bytes_per_second);
    let known = |v: f64| (v > 0.0).then_some(v);
    put("db_size_bytes", known(m.db_size_bytes as f64));
    put("db_size_in_use_bytes", known(m.db_size_in_use_bytes as f64));
    put("db_quota_bytes", known(m.quota_bytes));
    put("status_latency_seconds", m.status_latency_seconds);
    put("fsync_probe_p99_seconds", m.fsync_p99_seconds);
    if let Some(h) = host {
        put("host_cpu_utilization", Some(h.cpu_utilization));
        put("host_disk_utilization", Some(h.disk_utilization));
        put(
            "host_memory_available_bytes",
            known(h.memory_available_bytes as f64),
        );
        put(
            "host_memory_total_bytes",
            known(h.memory_total_bytes as f64),
        );
        put(
            "host_fs_available_bytes",
            known(h.fs_available_bytes as f64),
        );
        put("host_fs_total_bytes", known(h.fs_total_bytes as f64));
        put("host_net_rx_bytes_rate", h.net_rx_bytes_per_second);
        put("host_net_tx_bytes_rate", h.net_tx_bytes_per_second);
        put("process_open_fds", known(h.open_fds as f64));
        put("process_max_fds", known(h.max_fds as f64));
    }
    f
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
    let window_ms = parse_window(p.window.as_deref(), default_window_ms)?;
    let inventory =
        fleet_query::inventory(api.storage.as_ref(), &api.state, Some(&cluster)).await?;
    let known = api.state.names().contains(&cluster);
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
    // The figures are independent reads: a few at a time (each is one query
    // on the store) rather than two dozen one after another.
    let inventory = &inventory;
    let clusters = &clusters;
    // By index: a closure taking `&Figure` trips rustc's higher-ranked
    // lifetime check for the handler's future (rust-lang/rust#102211).
    let answers = futures::stream::iter(0..figures.len())
        .map(|i: usize| {
            let f = &figures[i];
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
            async move {
                fleet_query::run(
                    api.storage.as_ref(),
                    inventory,
                    clusters,
                    &Scope::default(),
                    &q,
                )
                .await
                .map(|found| (f.name, found))
            }
        })
        .buffered(CONCURRENT_FIGURES)
        .try_collect::<Vec<_>>()
        .await?;
    for (name, found) in answers {
        for s in found {
            let (Some(member), Some(&(_, v))) = (s.group.get("member"), s.points.last()) else {
                continue;
            };
            members.entry(member.clone()).or_default().insert(name, v);
        }
    }
    Ok(Json(ViewResponse {
        cluster,
        window_ms,
        at_ms: now,
        members,
    }))
}
