//! Fleet queries against real data: a 3-member etcd under a write load, its
//! agents in two regions with different tags, the collector binary on SQLite.
//! Rates, quantiles and aggregates come back grouped by region and tag, the
//! comparison table matches its series, the per-member current and latency
//! views hold the figures of every member, a query's plain values equal the
//! stored history, and bad parameters are 400s that say what was wrong.

mod common;

use common::CollectorProc;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_testkit::{http_get, EtcdCluster};
use serde_json::Value;
use std::time::Duration;

const CLUSTER: &str = "fleetq";

fn get(collector: &CollectorProc, path: &str) -> (u16, Value) {
    let r = http_get(&collector.url(path), Duration::from_secs(5)).expect("GET");
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// Groups of a query answer: the group's `key` value -> its last point.
fn last_by(answer: &Value, key: &str) -> Vec<(String, f64)> {
    answer["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| {
                    let last = s["points"].as_array()?.last()?[1].as_f64()?;
                    Some((s["group"][key].as_str()?.to_owned(), last))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_queries_group_by_region_and_tag_and_agree_with_the_stored_history() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start_with_args(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &["--allow-plaintext", "--anonymous", "admin"],
    );
    // m0 and m1 in eu-west for team a, m2 in us-east for team b.
    let _agents: Vec<_> = etcd
        .members()
        .iter()
        .map(|m| {
            let mut cfg = common::agent_config(CLUSTER, m, &collector.grpc_url(), dir.path());
            let (region, team) = if m.name == "m2" {
                ("us-east", "b")
            } else {
                ("eu-west", "a")
            };
            cfg.identity.region = region.into();
            cfg.identity.tags = [("team".to_owned(), team.to_owned())].into();
            Agent::serve_tapped(&cfg, AgentMetrics::new(), None, None, &Shutdown::new())
                .expect("agent")
        })
        .collect();

    // Writes, so that WAL fsyncs and proposals happen on every member.
    let load = {
        let urls = etcd.client_urls().join(",");
        std::thread::spawn(move || {
            for i in 0..200 {
                let _ = std::process::Command::new("etcdctl")
                    .args(["--endpoints", &urls, "put", &format!("k{i}"), "v"])
                    .env("ETCDCTL_API", "3")
                    .output();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The worst WAL fsync p99 per region, over a 10 s window.
    let by_region = common::eventually(Duration::from_secs(40), || {
        let (status, v) = get(
            &collector,
            "/api/v1/query?metric=etcd_disk_wal_fsync_duration_seconds&fn=quantile&q=0.99\
             &window=10s&step=5s&from=now-2m&agg=max&by=region",
        );
        assert_eq!(status, 200, "{v}");
        let groups = last_by(&v, "region");
        (groups.len() == 2 && groups.iter().all(|(_, p99)| *p99 > 0.0)).then_some((groups, v))
    })
    .await;
    let (groups, answer) = by_region.expect("a WAL fsync p99 per region");
    assert_eq!(
        groups.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        ["eu-west", "us-east"],
        "{answer}"
    );
    assert!(
        groups.iter().all(|g| g.1 < 10.0),
        "seconds, not ms: {answer}"
    );
    assert_eq!(
        answer["series"][0]["series"], 2,
        "two members in eu-west: {answer}"
    );
    assert_eq!(answer["series"][1]["series"], 1, "{answer}");

    // Request rate summed per team: every member serves its agent's calls.
    let (status, v) = get(
        &collector,
        "/api/v1/query?metric=grpc_server_started_total&fn=rate&window=10s&step=5s\
         &from=now-1m&agg=sum&by=tag:team",
    );
    assert_eq!(status, 200, "{v}");
    let teams = last_by(&v, "tag:team");
    assert_eq!(teams.len(), 2, "{v}");
    assert!(teams.iter().all(|(_, r)| *r > 0.0), "{v}");

    // Filters: one region, one tag, one member.
    let members_of = |q: &str| {
        let (status, v) = get(
            &collector,
            &format!("/api/v1/query?metric=etcdmon_status_up&from=now-30s&{q}"),
        );
        assert_eq!(status, 200, "{v}");
        let mut m: Vec<String> = v["series"]
            .as_array()
            .expect("series")
            .iter()
            .filter_map(|s| s["group"]["member"].as_str().map(str::to_owned))
            .collect();
        m.sort();
        m.dedup();
        m
    };
    assert_eq!(members_of("region=eu-west"), ["m0", "m1"]);
    assert_eq!(members_of("tag=team=b"), ["m2"]);
    assert_eq!(members_of("member=m1"), ["m1"]);
    assert!(members_of("region=mars").is_empty());

    // Plain values are the stored history's, step for step.
    let (_, q) = get(
        &collector,
        &format!(
            "/api/v1/query?metric=etcdmon_status_raft_index&cluster={CLUSTER}&member=m0\
             &from=now-1m&to=now-5s&step=5s&window=5s"
        ),
    );
    let from = q["from_ms"].as_i64().expect("from");
    let to = q["to_ms"].as_i64().expect("to");
    let (_, h) = get(
        &collector,
        &format!(
            "/api/v1/clusters/{CLUSTER}/metrics/history?metric=etcdmon_status_raft_index\
             &member=m0&from={}&to={}&step=5s",
            from as f64 / 1000.0,
            to as f64 / 1000.0
        ),
    );
    assert_eq!(
        q["series"][0]["points"], h["series"][0]["points"],
        "query {q}\nhistory {h}"
    );

    // The comparison: one series per cluster, and a table that matches it.
    let (status, c) = get(
        &collector,
        &format!(
            "/api/v1/compare?clusters={CLUSTER}&metric=etcd_mvcc_db_total_size_in_bytes&from=now-1m"
        ),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["agg"], "max", "{c}");
    assert_eq!(c["series"].as_array().map(Vec::len), Some(1), "{c}");
    let table = &c["table"][0];
    assert_eq!(table["group"]["cluster"], CLUSTER, "{c}");
    let points = c["series"][0]["points"].as_array().expect("points");
    assert_eq!(table["last"], points.last().expect("a point")[1], "{c}");
    assert!(table["min"].as_f64() <= table["avg"].as_f64(), "{c}");
    assert!(table["avg"].as_f64() <= table["max"].as_f64(), "{c}");

    // Every member's current USE/RED view, from the live state, while the
    // writes go on; then its latencies from storage.
    let figures = [
        "request_rate",
        "proposals_committed_rate",
        "wal_fsync_p99_seconds",
        "db_size_bytes",
        "host_memory_available_bytes",
        "host_cpu_utilization",
        "host_net_rx_bytes_rate",
        "process_open_fds",
    ];
    let current = common::eventually(Duration::from_secs(20), || {
        let (status, cur) = get(
            &collector,
            &format!("/api/v1/clusters/{CLUSTER}/metrics/current"),
        );
        assert_eq!(status, 200, "{cur}");
        ["m0", "m1", "m2"]
            .iter()
            .all(|m| {
                figures
                    .iter()
                    .all(|f| cur["members"][m][f].as_f64().is_some())
            })
            .then_some(cur)
    })
    .await;
    let cur = current.expect("every figure of every member in /metrics/current");
    for m in ["m0", "m1", "m2"] {
        let fig = &cur["members"][m];
        assert!(fig["db_size_bytes"].as_f64() > Some(0.0), "{cur}");
        assert!(fig["request_rate"].as_f64() > Some(0.0), "{cur}");
    }
    load.join().expect("load");
    let (status, lat) = get(&collector, &format!("/api/v1/clusters/{CLUSTER}/latency"));
    assert_eq!(status, 200, "{lat}");
    for m in ["m0", "m1", "m2"] {
        let fig = &lat["members"][m];
        for name in [
            "wal_fsync_p99_seconds",
            "status_latency_seconds",
            "fsync_probe_p99_seconds",
        ] {
            assert!(fig[name].as_f64() > Some(0.0), "{m} lacks {name}: {lat}");
        }
        assert!(
            fig["wal_fsync_p50_seconds"].as_f64() <= fig["wal_fsync_p99_seconds"].as_f64(),
            "{lat}"
        );
    }

    // Bad parameters: 400, saying what was wrong.
    for (query, says) in [
        ("/api/v1/query", "`metric` is required"),
        ("/api/v1/query?metric=x&fn=median", "`fn` must be"),
        ("/api/v1/query?metric=x&fn=quantile", "needs `q`"),
        ("/api/v1/query?metric=x&fn=quantile&q=2", "within 0 and 1"),
        ("/api/v1/query?metric=x&by=planet", "`by` must be"),
        ("/api/v1/query?metric=x&agg=median", "`agg` must be"),
        ("/api/v1/query?metric=x&window=2d", "at most 1d"),
        (
            "/api/v1/query?metric=x&from=now-30d&step=1s",
            "too many points",
        ),
        ("/api/v1/query?metric=x&tag=team", "key=value"),
        ("/api/v1/query?metric=x&planet=1", "unknown field"),
        ("/api/v1/compare?metric=x&cluster=a&clusters=b", "not both"),
    ] {
        let (status, v) = get(&collector, query);
        assert_eq!(status, 400, "{query}: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{query}: {message:?} lacks {says:?}"
        );
    }
    let (status, v) = get(&collector, "/api/v1/clusters/nowhere/metrics/current");
    assert_eq!(status, 404, "{v}");
}
