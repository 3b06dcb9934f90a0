//! Fleet queries: one metric across members, clusters and regions, with the
//! functions operators use on etcd's metrics (counter rates and increases,
//! histogram quantiles) and aggregation grouped by cluster, region, node or
//! tag. The API's `/api/v1/query`, `/api/v1/compare` and the per-cluster
//! `/metrics/current` and `/latency` views are all made here.
//!
//! Points come from [`Storage::query`] with a step, so every series has
//! step-aligned times (and a long range is read from rollups); region, node
//! and tags come from the stored member descriptions
//! ([`Storage::member_info`]), so a member that stopped reporting still
//! groups its old samples. The arithmetic is in [`eval`].

pub mod eval;

use crate::state::LiveState;
use etcdmon_storage::{MemberInfo, PointQuery, SeriesPoints, Storage, StorageError};
use eval::Aggregate;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What is computed from each series before aggregation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Function {
    /// The stored value (the last one of each step).
    Value,
    /// Per-second rate of a counter over the window.
    Rate,
    /// Increase of a counter over the window.
    Increase,
    /// The quantile (0..=1) of a histogram over the window; the metric is
    /// the histogram's name, without `_bucket`.
    Quantile(f64),
}

impl Function {
    /// `value`, `rate`, `increase` or `quantile` (which takes `q`).
    pub fn parse(name: &str, q: Option<f64>) -> Result<Self, String> {
        match (name, q) {
            ("value", None) => Ok(Self::Value),
            ("rate", None) => Ok(Self::Rate),
            ("increase", None) => Ok(Self::Increase),
            ("quantile", Some(q)) if (0.0..=1.0).contains(&q) => Ok(Self::Quantile(q)),
            ("quantile", Some(q)) => Err(format!("`q` must be within 0 and 1, got {q}")),
            ("quantile", None) => Err("`fn=quantile` needs `q`, e.g. q=0.99".into()),
            ("value" | "rate" | "increase", Some(_)) => Err("`q` is only for `fn=quantile`".into()),
            (other, _) => Err(format!(
                "`fn` must be value, rate, increase or quantile; got {other:?}"
            )),
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Value => "value",
            Self::Rate => "rate",
            Self::Increase => "increase",
            Self::Quantile(_) => "quantile",
        }
    }
}

/// What series are grouped by before aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// Each series: cluster, member and labels.
    Series,
    /// Member (the series of one member, e.g. of every gRPC method, together).
    Member,
    /// Cluster.
    Cluster,
    /// The members' region.
    Region,
    /// The members' node.
    Node,
    /// The value of one of the members' tags.
    Tag(String),
}

impl GroupBy {
    /// `series`, `member`, `cluster`, `region`, `node` or `tag:KEY`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "series" => Self::Series,
            "member" => Self::Member,
            "cluster" => Self::Cluster,
            "region" => Self::Region,
            "node" => Self::Node,
            _ => match s.strip_prefix("tag:") {
                Some(key) if !key.is_empty() => Self::Tag(key.to_owned()),
                _ => {
                    return Err(format!(
                        "`by` must be series, member, cluster, region, node or tag:KEY; got {s:?}"
                    ))
                }
            },
        })
    }
}

/// Which members a query reads.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// These clusters only; every known cluster when empty.
    pub clusters: Vec<String>,
    /// Only members in this region.
    pub region: Option<String>,
    /// Only members carrying every one of these tags.
    pub tags: Vec<(String, String)>,
    /// Only this member.
    pub member: Option<String>,
}

/// One fleet query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Metric name (a histogram's name without `_bucket` for quantiles).
    pub metric: String,
    /// Only series with exactly this canonical label set (`le` aside).
    pub labels: Option<String>,
    /// Applied to each series first.
    pub function: Function,
    /// For quantiles: one histogram per member, every label set's buckets
    /// summed (all gRPC methods, all peers), instead of one per label set.
    pub merge_labels: bool,
    /// The window of rates, increases and quantiles, ms.
    pub window_ms: i64,
    /// How a group's series become one.
    pub aggregate: Aggregate,
    /// The groups.
    pub by: GroupBy,
    /// Inclusive range, ms since the epoch.
    pub from_ms: i64,
    /// Inclusive end.
    pub to_ms: i64,
    /// Step, ms (> 0).
    pub step_ms: i64,
}

/// One resulting series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// What it stands for: `cluster`, `member` and `labels` of a single series,
    /// or the one key of its group (`{"region": "eu-west"}`).
    pub group: BTreeMap<String, String>,
    /// `[ms since the epoch, value]`, ascending.
    pub points: Vec<(i64, f64)>,
    /// The most series that contributed to one point.
    pub series: usize,
}

/// Points, `(ms since the epoch, value)` ascending.
type Points = Vec<(i64, f64)>;
/// A series after its function: (cluster, member, labels) and its points.
type Computed = ((String, String, String), Points);
/// A histogram's buckets: `le` bound and the bucket counter's points.
type Buckets = Vec<(f64, Points)>;

/// The steps a query without one is given: the smallest that keeps it under
/// [`AUTO_POINTS`] points.
pub const AUTO_STEPS_MS: &[i64] = &[
    10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 10_800_000, 21_600_000, 86_400_000,
];
/// Points per series a query without a step aims at.
pub const AUTO_POINTS: i64 = 360;

/// The step for `[from_ms, to_ms]` when none was asked for.
pub fn auto_step(from_ms: i64, to_ms: i64) -> i64 {
    let range = to_ms - from_ms;
    AUTO_STEPS_MS
        .iter()
        .copied()
        .find(|s| range / s <= AUTO_POINTS)
        .unwrap_or(86_400_000)
}

/// Where every known member runs, by (cluster, member): the stored
/// descriptions, completed by the live state for members not stored yet.
pub async fn inventory(
    storage: &dyn Storage,
    state: &LiveState,
    cluster: Option<&str>,
) -> Result<BTreeMap<(String, String), MemberInfo>, StorageError> {
    let mut out: BTreeMap<(String, String), MemberInfo> = storage
        .member_info(cluster)
        .await?
        .into_iter()
        .map(|m| ((m.cluster.clone(), m.member.clone()), m))
        .collect();
    // One cluster's copy when one is asked for, not the whole fleet's.
    let live = match cluster {
        Some(name) => state.cluster(name).into_iter().collect(),
        None => state.snapshot(),
    };
    for c in live {
        let region = c.registration.as_ref().map(|r| r.region.clone());
        for m in c.members.values() {
            let e = out
                .entry((c.name.clone(), m.name.clone()))
                .or_insert_with(|| MemberInfo {
                    cluster: c.name.clone(),
                    member: m.name.clone(),
                    region: m.region.clone(),
                    node: m.node.clone(),
                    tags: etcdmon_storage::canonical_labels(
                        m.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    ),
                    seen_ms: m.last_seen_ms,
                });
            // A member whose agent names no region is in its cluster's registered one.
            if e.region.is_empty() {
                if let Some(r) = &region {
                    e.region = r.clone();
                }
            }
        }
    }
    Ok(out)
}

/// The value of tag `key` in a canonical label string, if set.
fn tag_value<'a>(tags: &'a str, key: &str) -> Option<&'a str> {
    parse_labels(tags)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `k="v",...` as pairs (values left escaped; tags seldom hold quotes).
fn parse_labels(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        // The value ends at the first quote not escaped by a backslash.
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        out.push((k.trim_start_matches(','), &after[..end.min(after.len())]));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// `labels` without its `le` label.
fn without_le(labels: &str) -> String {
    parse_labels(labels)
        .into_iter()
        .filter(|(k, _)| *k != "le")
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `le` bound of a bucket's labels.
fn le_of(labels: &str) -> Option<f64> {
    let (_, v) = parse_labels(labels).into_iter().find(|(k, _)| *k == "le")?;
    crate::rates::parse_le(v)
}

/// Whether a member is in `scope` (its cluster was already chosen).
fn in_scope(scope: &Scope, info: Option<&MemberInfo>, member: &str) -> bool {
    if scope.member.as_deref().is_some_and(|m| m != member) {
        return false;
    }
    if let Some(region) = &scope.region {
        if info.is_none_or(|i| &i.region != region) {
            return false;
        }
    }
    scope.tags.iter().all(|(k, v)| {
        info.and_then(|i| tag_value(&i.tags, k))
            .is_some_and(|x| x == v)
    })
}

/// The clusters `scope` reads: those it names, or every cluster known to
/// the inventory, the live state or the registrations.
pub fn clusters_of(
    scope: &Scope,
    inventory: &BTreeMap<(String, String), MemberInfo>,
    state: &LiveState,
) -> Vec<String> {
    if !scope.clusters.is_empty() {
        return scope.clusters.clone();
    }
    let mut all: BTreeSet<String> = inventory.keys().map(|(c, _)| c.clone()).collect();
    all.extend(state.names());
    all.into_iter().collect()
}

/// Runs `q` over the members `scope` selects.
pub async fn run(
    storage: &dyn Storage,
    inventory: &BTreeMap<(String, String), MemberInfo>,
    clusters: &[String],
    scope: &Scope,
    q: &Query,
) -> Result<Vec<Series>, StorageError> {
    let stored_metric = match q.function {
        Function::Quantile(_) => format!("{}_bucket", q.metric),
        _ => q.metric.clone(),
    };
    // The same question of every cluster, one query each on the store's
    // primary key; the store answers them together (on ClickHouse, one
    // statement: a fleet one cluster after another took seconds).
    let queries: Vec<PointQuery> = clusters
        .iter()
        .map(|cluster| PointQuery {
            cluster: cluster.clone(),
            metric: stored_metric.clone(),
            member: scope.member.clone(),
            labels: match q.function {
                Function::Quantile(_) => None,
                _ => q.labels.clone(),
            },
            // A window's worth earlier, so the first point has its window.
            from_ms: (q.from_ms - q.window_ms).max(0),
            to_ms: q.to_ms,
            step_ms: q.step_ms,
        })
        .collect();
    let reads = clusters.iter().zip(storage.query_many(&queries).await?);
    // One series per (cluster, member, labels) after the function.
    let mut computed: Vec<Computed> = Vec::new();
    for (cluster, read) in reads {
        computed.extend(apply(inventory, cluster, scope, q, read));
    }
    // Points are stamped with the start of their step, so the step holding
    // `from` starts at or before it.
    let first = q.from_ms - q.from_ms.rem_euclid(q.step_ms.max(1));
    for (_, points) in &mut computed {
        points.retain(|(t, _)| *t >= first);
    }
    Ok(group(inventory, q, computed))
}

/// `q.function` on the series of one cluster that are in `scope`.
fn apply(
    inventory: &BTreeMap<(String, String), MemberInfo>,
    cluster: &str,
    scope: &Scope,
    q: &Query,
    read: Vec<SeriesPoints>,
) -> Vec<Computed> {
    let mut computed = Vec::new();
    let mut histograms: BTreeMap<(String, String), Buckets> = BTreeMap::new();
    for s in read {
        let info = inventory.get(&(cluster.to_owned(), s.member.clone()));
        if !in_scope(scope, info, &s.member) {
            continue;
        }
        let key = |member, labels| (cluster.to_owned(), member, labels);
        match q.function {
            Function::Value => computed.push((key(s.member, s.labels), s.points)),
            Function::Rate => {
                let p = eval::rate(&s.points, q.window_ms);
                computed.push((key(s.member, s.labels), p));
            }
            Function::Increase => {
                let p = eval::increase(&s.points, q.window_ms);
                computed.push((key(s.member, s.labels), p));
            }
            Function::Quantile(_) => {
                let Some(le) = le_of(&s.labels) else { continue };
                let mut rest = without_le(&s.labels);
                if q.labels.as_ref().is_some_and(|l| *l != rest) {
                    continue;
                }
                if q.merge_labels {
                    rest.clear();
                }
                histograms
                    .entry((s.member, rest))
                    .or_default()
                    .push((le, s.points));
            }
        }
    }
    if let Function::Quantile(quant) = q.function {
        for ((member, labels), mut buckets) in histograms {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let p = eval::quantile_over(quant, &buckets, q.window_ms);
            computed.push(((cluster.to_owned(), member, labels), p));
        }
    }
    computed
}

/// Groups computed series by `q.by` and aggregates each group.
fn group(
    inventory: &BTreeMap<(String, String), MemberInfo>,
    q: &Query,
    computed: Vec<Computed>,
) -> Vec<Series> {
    if q.aggregate == Aggregate::None || q.by == GroupBy::Series {
        return computed
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|((cluster, member, labels), points)| Series {
                group: BTreeMap::from([
                    ("cluster".to_owned(), cluster),
                    ("member".to_owned(), member),
                    ("labels".to_owned(), labels),
                ]),
                points,
                series: 1,
            })
            .collect();
    }
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Points>> = BTreeMap::new();
    for ((cluster, member, _), points) in computed {
        let info = inventory.get(&(cluster.clone(), member.clone()));
        let field = |f: fn(&MemberInfo) -> &str| info.map(f).unwrap_or_default().to_owned();
        let key = match &q.by {
            GroupBy::Series => unreachable!("handled above"),
            GroupBy::Member => BTreeMap::from([
                ("cluster".to_owned(), cluster),
                ("member".to_owned(), member),
            ]),
            GroupBy::Cluster => BTreeMap::from([("cluster".to_owned(), cluster)]),
            GroupBy::Region => BTreeMap::from([("region".to_owned(), field(|i| &i.region))]),
            GroupBy::Node => BTreeMap::from([("node".to_owned(), field(|i| &i.node))]),
            GroupBy::Tag(k) => BTreeMap::from([(
                format!("tag:{k}"),
                info.and_then(|i| tag_value(&i.tags, k))
                    .unwrap_or_default()
                    .to_owned(),
            )]),
        };
        groups.entry(key).or_default().push(points);
    }
    groups
        .into_iter()
        .filter_map(|(group, members)| {
            let combined = eval::combine(q.aggregate, members.iter().map(Vec::as_slice));
            let series = combined.iter().map(|p| p.2).max()?;
            Some(Series {
                group,
                points: combined.into_iter().map(|(t, v, _)| (t, v)).collect(),
                series,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_and_le_comes_off() {
        assert_eq!(
            parse_labels(r#"a="1",le="0.5",z="x\"y""#),
            vec![("a", "1"), ("le", "0.5"), ("z", r#"x\"y"#)]
        );
        assert_eq!(without_le(r#"a="1",le="0.5""#), r#"a="1""#);
        assert_eq!(without_le(r#"le="+Inf""#), "");
        assert_eq!(le_of(r#"le="+Inf""#), Some(f64::INFINITY));
        assert_eq!(le_of(r#"a="1",le="0.25""#), Some(0.25));
        assert_eq!(tag_value(r#"env="prod",team="db""#, "team"), Some("db"));
        assert_eq!(tag_value("", "team"), None);
    }

    #[test]
    fn functions_and_groups_parse_with_clear_errors() {
        assert_eq!(
            Function::parse("quantile", Some(0.99)),
            Ok(Function::Quantile(0.99))
        );
        assert!(Function::parse("quantile", None)
            .unwrap_err()
            .contains("needs `q`"));
        assert!(Function::parse("quantile", Some(1.5)).is_err());
        assert!(Function::parse("rate", Some(0.5)).is_err());
        assert!(Function::parse("median", None).is_err());
        assert_eq!(GroupBy::parse("tag:team"), Ok(GroupBy::Tag("team".into())));
        assert!(GroupBy::parse("tag:").is_err());
        assert!(GroupBy::parse("planet").is_err());
    }

    #[test]
    fn the_auto_step_keeps_a_range_under_its_points() {
        assert_eq!(auto_step(0, 3_600_000), 10_000);
        assert_eq!(auto_step(0, 86_400_000), 300_000);
        assert_eq!(auto_step(0, 7 * 86_400_000), 3_600_000);
        assert_eq!(auto_step(0, 10_000 * 86_400_000), 86_400_000);
    }

    fn info(cluster: &str, member: &str, region: &str, tags: &str) -> MemberInfo {
        MemberInfo {
            cluster: cluster.into(),
            member: member.into(),
            region: region.into(),
            node: format!("n-{member}"),
            tags: tags.into(),
            seen_ms: 0,
        }
    }

    #[test]
    fn groups_take_region_and_tags_from_the_inventory() {
        let inv: BTreeMap<_, _> = [
            info("a", "m0", "eu", r#"team="db""#),
            info("a", "m1", "eu", r#"team="web""#),
            info("b", "m0", "us", r#"team="db""#),
        ]
        .into_iter()
        .map(|i| ((i.cluster.clone(), i.member.clone()), i))
        .collect();
        let computed = || {
            vec![
                (("a".into(), "m0".into(), String::new()), vec![(0, 1.0)]),
                (("a".into(), "m1".into(), String::new()), vec![(0, 5.0)]),
                (("b".into(), "m0".into(), String::new()), vec![(0, 3.0)]),
            ]
        };
        let q = |by, aggregate| Query {
            metric: "m".into(),
            labels: None,
            function: Function::Value,
            merge_labels: false,
            window_ms: 10_000,
            aggregate,
            by,
            from_ms: 0,
            to_ms: 0,
            step_ms: 10_000,
        };
        let by_region = group(&inv, &q(GroupBy::Region, Aggregate::Max), computed());
        assert_eq!(by_region.len(), 2);
        assert_eq!(by_region[0].group["region"], "eu");
        assert_eq!(by_region[0].points, vec![(0, 5.0)]);
        assert_eq!(by_region[0].series, 2);
        let by_team = group(
            &inv,
            &q(GroupBy::Tag("team".into()), Aggregate::Sum),
            computed(),
        );
        assert_eq!(by_team[0].group["tag:team"], "db");
        assert_eq!(by_team[0].points, vec![(0, 4.0)]);
        let each = group(&inv, &q(GroupBy::Cluster, Aggregate::None), computed());
        assert_eq!(each.len(), 3, "no aggregate: every series");
        let scope = Scope {
            region: Some("eu".into()),
            tags: vec![("team".into(), "web".into())],
            ..Scope::default()
        };
        assert!(in_scope(&scope, inv.get(&("a".into(), "m1".into())), "m1"));
        assert!(!in_scope(&scope, inv.get(&("a".into(), "m0".into())), "m0"));
        assert!(
            !in_scope(&scope, None, "m9"),
            "unknown members have no region"
        );
    }
}
