//! The fleet series on the collector's `/metrics`: a real 3-member etcd,
//! agents with a region, the collector binary on SQLite. The page passes
//! `promtool check metrics`, follows a member's death, and a real Prometheus
//! scrapes it and answers fleet queries; the API shows the same cluster, its
//! members and its stored timeline.

mod common;

use common::CollectorProc;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_testkit::{free_port, http_get, require_binary, ChildProcess, EtcdCluster};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLUSTER: &str = "fleet";
const REGION: &str = "eu-west";

/// The value of the series `name{labels...}` whose label set contains every
/// `want` pair, from a Prometheus text page.
fn value(page: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn metrics_page(collector: &CollectorProc) -> String {
    http_get(&collector.url("/metrics"), Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default()
}

/// `promtool check metrics` on `page`: its complaints, empty when clean.
fn promtool_check(page: &str) -> String {
    let promtool = require_binary("promtool").expect("promtool (Debian prometheus, scripts/setup)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write the page");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        String::new()
    } else {
        text
    }
}

/// A Prometheus scraping `target` every second, with its data in `dir`.
fn prometheus(dir: &std::path::Path, target: &str) -> (ChildProcess, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: etcdmon\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(require_binary("prometheus").expect("prometheus (scripts/setup)"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let p =
        ChildProcess::spawn("prometheus", cmd, &dir.join("prometheus.log")).expect("prometheus");
    (p, format!("http://127.0.0.1:{port}"))
}

/// The single value of the instant query `q`, once Prometheus has one.
fn query(api: &str, q: &str) -> Option<f64> {
    let url = format!("{api}/api/v1/query?query={}", urlencode(q));
    let r = http_get(&url, Duration::from_secs(2)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let result = v["data"]["result"].as_array()?;
    (result.len() == 1)
        .then(|| result[0]["value"][1].as_str()?.parse().ok())
        .flatten()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_series_pass_promtool_follow_a_dead_member_and_prometheus_and_the_api_agree() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    // A second cluster, registered but without agents.
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "[[clusters]]\nname = \"silent\"\nregion = \"ap-south\"\nowner = \"team-storage\"\n\
         members = [\"s0\", \"s1\", \"s2\"]\ntags = { env = \"staging\" }\n\
         [rules.cluster_not_reporting]\nfor = \"0s\"\n",
    )
    .expect("write collector.toml");
    let config_arg = config.display().to_string();
    let collector = CollectorProc::start_with_args(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[
            "--allow-plaintext",
            "--anonymous",
            "admin",
            "--config",
            &config_arg,
        ],
    );
    let _agents: Vec<_> = etcd
        .members()
        .iter()
        .map(|m| {
            let mut cfg = common::agent_config(CLUSTER, m, &collector.grpc_url(), dir.path());
            cfg.identity.region = REGION.into();
            cfg.identity.tags = [("env".to_owned(), "prod".to_owned())].into();
            Agent::serve_tapped(&cfg, AgentMetrics::new(), None, None, &Shutdown::new())
                .expect("agent")
        })
        .collect();

    // Every member, up, with its region and node; one leader; sizes known.
    let members = ["m0", "m1", "m2"];
    let page = common::eventually(Duration::from_secs(30), || {
        let page = metrics_page(&collector);
        let all_up = members.iter().all(|m| {
            value(
                &page,
                "etcdmon_member_up",
                &[("cluster", CLUSTER), ("member", m), ("region", REGION)],
            ) == Some(1.0)
                && value(
                    &page,
                    "etcdmon_member_wal_fsync_p99_seconds",
                    &[("member", m)],
                )
                .is_some()
        });
        all_up.then_some(page)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "members never all up on /metrics:\n{}",
            metrics_page(&collector)
        )
    });
    let leaders: f64 = members
        .iter()
        .filter_map(|m| value(&page, "etcdmon_member_is_leader", &[("member", m)]))
        .sum();
    assert_eq!(leaders, 1.0, "{page}");
    for m in members {
        let size = value(&page, "etcdmon_member_db_size_bytes", &[("member", m)]).unwrap_or(0.0);
        assert!(size > 0.0, "db size of {m}: {page}");
        assert!(
            page.lines().any(|l| l.starts_with("etcdmon_member_up{")
                && l.contains(&format!("member=\"{m}\""))
                && l.contains("node=\"")),
            "no node label: {page}"
        );
    }
    assert_eq!(
        value(
            &page,
            "etcdmon_cluster_members",
            &[("cluster", CLUSTER), ("region", REGION)]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &page,
            "etcdmon_alerts_firing",
            &[("cluster", CLUSTER), ("severity", "critical")]
        ),
        Some(0.0)
    );
    assert!(
        page.contains("etcdmon_collector_batches_stored_total"),
        "its own metrics too"
    );
    assert_eq!(
        value(
            &page,
            "etcdmon_cluster_reporting",
            &[("cluster", CLUSTER), ("region", REGION)]
        ),
        Some(1.0)
    );
    // The registered cluster no agent reports for: shown, and alerted.
    assert_eq!(
        value(
            &page,
            "etcdmon_cluster_reporting",
            &[("cluster", "silent"), ("region", "ap-south")]
        ),
        Some(0.0),
        "{page}"
    );
    let alerted = common::eventually(Duration::from_secs(10), || {
        value(
            &metrics_page(&collector),
            "etcdmon_alerts_firing",
            &[("cluster", "silent"), ("severity", "warning")],
        )
        .filter(|n| *n == 1.0)
    })
    .await;
    assert_eq!(
        alerted,
        Some(1.0),
        "cluster_not_reporting not counted for silent"
    );
    let complaints = promtool_check(&page);
    assert!(
        complaints.is_empty(),
        "promtool check metrics:\n{complaints}"
    );

    // A real Prometheus scrapes the one endpoint and answers fleet queries.
    let target = collector.url("").trim_start_matches("http://").to_owned();
    let (_prom, api) = prometheus(dir.path(), target.trim_end_matches('/'));
    let up = common::eventually(Duration::from_secs(30), || {
        query(
            &api,
            &format!("sum(etcdmon_member_up{{cluster=\"{CLUSTER}\",region=\"{REGION}\"}})"),
        )
        .filter(|v| *v == 3.0)
    })
    .await;
    assert_eq!(up, Some(3.0), "Prometheus never saw three members up");

    // A member dies: its series says so, and the critical alert is counted.
    etcd.kill(2).expect("kill m2");
    let down = common::eventually(Duration::from_secs(20), || {
        let page = metrics_page(&collector);
        (value(&page, "etcdmon_member_up", &[("member", "m2")]) == Some(0.0)
            && value(
                &page,
                "etcdmon_alerts_firing",
                &[("cluster", CLUSTER), ("severity", "critical")],
            )
            .is_some_and(|n| n >= 1.0)
            && value(
                &page,
                "etcdmon_cluster_members_available",
                &[("cluster", CLUSTER)],
            ) == Some(2.0))
        .then_some(())
    })
    .await;
    assert!(
        down.is_some(),
        "m2's death not on /metrics:\n{}",
        metrics_page(&collector)
    );
    let seen = common::eventually(Duration::from_secs(20), || {
        query(
            &api,
            &format!("sum(etcdmon_member_up{{cluster=\"{CLUSTER}\"}})"),
        )
        .filter(|v| *v == 2.0)
    })
    .await;
    assert_eq!(seen, Some(2.0), "Prometheus never saw m2 down");

    // The same cluster through the API: its state, its members, its timeline.
    let get = |path: &str| {
        let r = http_get(&collector.url(path), Duration::from_secs(2)).expect("GET");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        (r.status, v)
    };
    let (status, c) = get(&format!("/api/v1/clusters/{CLUSTER}"));
    assert_eq!((status, c["name"].as_str()), (200, Some(CLUSTER)), "{c}");
    let (status, m) = get(&format!("/api/v1/clusters/{CLUSTER}/members"));
    assert_eq!(status, 200);
    assert_eq!(m["members"].as_object().map(|m| m.len()), Some(3), "{m}");
    assert_eq!(m["members"]["m2"]["reachable"], false, "{m}");
    assert_eq!(m["members"]["m0"]["tags"]["env"], "prod", "{m}");
    let listed = |query: &str| {
        let (status, v) = get(&format!("/api/v1/clusters?{query}"));
        (status, v["clusters"].as_array().map_or(0, |c| c.len()))
    };
    assert_eq!(listed(&format!("region={REGION}")), (200, 1));
    assert_eq!(listed("region=us-east"), (200, 0));
    assert_eq!(listed(&format!("region={REGION}&tag=env=prod")), (200, 1));
    assert_eq!(listed("tag=env=dev"), (200, 0));
    assert_eq!(listed("tag=env").0, 400, "a tag without a value");
    let (status, s) = get("/api/v1/clusters/silent");
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["reporting"], false, "{s}");
    assert_eq!(
        s["members_missing"].as_array().map(|m| m.len()),
        Some(3),
        "{s}"
    );
    assert_eq!(s["registration"]["owner"], "team-storage", "{s}");
    assert_eq!(listed("region=ap-south"), (200, 1));
    assert_eq!(listed("tag=env=staging"), (200, 1));
    let (status, e) = get("/api/v1/clusters/nowhere");
    assert_eq!(status, 404, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|s| s.contains("nowhere")),
        "{e}"
    );
    let down = common::eventually(Duration::from_secs(10), || {
        let (_, e) = get(&format!("/api/v1/clusters/{CLUSTER}/events?from=now-10m"));
        e["events"]
            .as_array()?
            .iter()
            .any(|e| e["kind"] == "member_down" && e["member"] == "m2")
            .then_some(e)
    })
    .await;
    assert!(down.is_some(), "no stored member_down for m2");
    let (status, e) = get(&format!("/api/v1/clusters/{CLUSTER}/events?limit=0"));
    assert_eq!(status, 400, "{e}");
    let (status, e) = get(&format!(
        "/api/v1/clusters/{CLUSTER}/events?from=now&to=now-1h"
    ));
    assert_eq!(status, 400, "{e}");
}
