//! End to end on the embedded store: a real 3-member etcd, three agents,
//! the collector binary on SQLite. Every member's samples become queryable
//! through the API and in the database; killing the collector mid-stream
//! loses nothing and counts nothing twice.

mod common;

use common::{Agents, CollectorProc};
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::Retention;
use etcdmon_testkit::{http_get, EtcdCluster};
use std::time::Duration;

async fn stored_counts(
    db: &std::path::Path,
    cluster: &str,
) -> std::collections::BTreeMap<String, usize> {
    let s = SqliteStorage::open(db, Retention::default()).expect("open db");
    common::stored_counts(&s, cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_is_queryable_through_the_api_and_in_sqlite() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start(&format!("sqlite:{}", db.display()), dir.path());
    let agents = Agents::start("e2e", &etcd, &collector.grpc_url(), dir.path());

    // All three members show up healthy in the live state.
    let url = collector.url("/api/v1/clusters");
    let mut last = String::new();
    let clusters = common::eventually(Duration::from_secs(20), || {
        let r = http_get(&url, Duration::from_secs(2)).ok()?;
        last = r.body.clone();
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let members = v["clusters"][0]["members"].as_object()?.clone();
        (members.len() == 3 && members.values().all(|m| m["healthy"] == true)).then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("members never all healthy: {last}"));
    assert_eq!(clusters["clusters"][0]["name"], "e2e");
    let leader = clusters["clusters"][0]["leader_id"]
        .as_str()
        .expect("leader")
        .to_string();
    assert!(!leader.is_empty());

    // History of an etcd metric, per member, from storage.
    for m in etcd.members() {
        let url = collector.url(&format!(
            "/api/v1/clusters/e2e/metrics/history?metric=etcd_mvcc_db_total_size_in_bytes&member={}&from=now-5m",
            m.name
        ));
        let body = common::eventually(Duration::from_secs(15), || {
            let r = http_get(&url, Duration::from_secs(2)).ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let pts = v["series"][0]["points"].as_array()?.clone();
            (!pts.is_empty()).then_some(pts)
        })
        .await
        .unwrap_or_else(|| panic!("no history for {}", m.name));
        assert!(body[0][1].as_f64().unwrap_or(0.0) > 0.0, "{body:?}");
    }

    let (expected, metrics) = agents.stop().await;
    for m in &metrics {
        assert_eq!(m.spool_dropped_batches.get(), 0);
        assert_eq!(m.batches_rejected.get(), 0);
        assert_eq!(m.spool_batches.get(), 0, "everything acknowledged");
    }
    let stored = stored_counts(&db, "e2e").await;
    assert_eq!(
        stored, expected,
        "stored samples differ from what the agents produced"
    );
    assert_eq!(stored.len(), 3);
    assert!(stored.values().all(|n| *n > 1000), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_collector_mid_stream_loses_and_doubles_nothing() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let mut collector = CollectorProc::start(&format!("sqlite:{}", db.display()), dir.path());
    let agents = Agents::start("kill", &etcd, &collector.grpc_url(), dir.path());

    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.kill();
    // Agents keep collecting into their spools while the collector is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agents.metrics.iter().all(|m| m.spool_batches.get() > 0),
        "nothing spooled while down"
    );
    collector.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (expected, metrics) = agents.stop().await;
    for m in &metrics {
        assert_eq!(m.spool_dropped_batches.get(), 0);
        assert_eq!(
            m.spool_batches.get(),
            0,
            "everything acknowledged after restart"
        );
        assert!(m.stream_errors.get() >= 1, "the kill was noticed");
    }
    let stored = stored_counts(&db, "kill").await;
    assert_eq!(
        stored, expected,
        "gap or double count after collector restart"
    );
}

fn transitions(collector: &CollectorProc, rule: &str, state: &str) -> u64 {
    let body = http_get(&collector.url("/metrics"), Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default();
    let key =
        format!("etcdmon_collector_alert_transitions_total{{rule=\"{rule}\",state=\"{state}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_fires_member_unreachable_once_and_resolves_once() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start(&format!("sqlite:{}", db.display()), dir.path());
    let agents = Agents::start("rules", &etcd, &collector.grpc_url(), dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        transitions(&collector, "member_unreachable", "firing"),
        0,
        "healthy cluster"
    );

    etcd.kill(2).expect("kill");
    let fired = common::eventually(Duration::from_secs(10), || {
        (transitions(&collector, "member_unreachable", "firing") == 1).then_some(())
    })
    .await;
    assert!(
        fired.is_some(),
        "member_unreachable did not fire: {}",
        collector.log_text()
    );
    assert_eq!(transitions(&collector, "quorum_at_risk", "firing"), 1);
    assert_eq!(transitions(&collector, "quorum_lost", "firing"), 0);
    assert_eq!(
        transitions(&collector, "agent_silent", "firing"),
        0,
        "the agent still talks"
    );

    etcd.restart(2).expect("restart");
    let resolved = common::eventually(Duration::from_secs(15), || {
        (transitions(&collector, "member_unreachable", "resolved") == 1).then_some(())
    })
    .await;
    assert!(resolved.is_some(), "member_unreachable did not resolve");
    // Exactly one of each: no repeats while down, no flapping.
    assert_eq!(transitions(&collector, "member_unreachable", "firing"), 1);
    agents.stop().await;
}

/// A batch larger than the collector accepts (here every scrape of etcd's metrics,
/// against a 64 KiB `ingest.max_batch_bytes`) used to end the stream at every resend,
/// so the agent never got past it and nothing after it was stored. It is now sent
/// without its reports (counted), and the status reports behind it keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gets_past_a_batch_larger_than_the_collector_accepts() {
    let etcd = EtcdCluster::start(1).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start_with_env(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[("ETCDMON_COLLECTOR_INGEST__MAX_BATCH_BYTES", "65536")],
    );
    let agents = Agents::start("small", &etcd, &collector.grpc_url(), dir.path());
    let url = collector
        .url("/api/v1/clusters/small/metrics/history?metric=etcdmon_status_raft_term&from=now-5m");
    let points = |min: usize| {
        let url = url.clone();
        async move {
            common::eventually(Duration::from_secs(20), || {
                let r = http_get(&url, Duration::from_secs(2)).ok()?;
                let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
                let n = v["series"][0]["points"].as_array()?.len();
                (n >= min).then_some(n)
            })
            .await
        }
    };
    let first = points(1).await.expect("status reports stored");
    // Several metrics scrapes later, status reports are still being stored.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = points(first + 3).await;
    let (_, metrics) = agents.stop().await;
    assert!(
        later.is_some(),
        "status reports stopped being stored after {first}: {}",
        collector.log_text()
    );
    assert!(
        metrics[0].batches_too_large.get() > 0,
        "no batch was too large"
    );
    assert_eq!(metrics[0].spool_batches.get(), 0, "everything acknowledged");
}

/// A batch mark under an agent's id that the agent never numbered (forged, or
/// written by another agent with a copied config) used to make the agent discard
/// its spool at the next Welcome, and every later batch was acknowledged as a
/// resend without being stored. The agent now keeps everything and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_its_batches_when_the_collector_claims_more_than_it_sent() {
    use etcdmon_storage::Storage as _;
    let etcd = EtcdCluster::start(1).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    {
        let store = SqliteStorage::open(&db, Retention::default()).expect("open db");
        store.migrate().await.expect("migrate");
        store
            .write(&etcdmon_storage::WriteSet {
                marks: vec![etcdmon_storage::BatchMark {
                    agent_id: "victim".into(),
                    sequence: i64::MAX as u64,
                    samples: 0,
                    // Recent, or retention would remove it at start-up.
                    stored_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_millis() as i64,
                }],
                ..Default::default()
            })
            .await
            .expect("forge a mark");
    }
    let collector = CollectorProc::start(&format!("sqlite:{}", db.display()), dir.path());
    let mut cfg = common::agent_config("forged", etcd.member(0), &collector.grpc_url(), dir.path());
    cfg.upstream.agent_id = "victim".into();
    let metrics = etcdmon_agent::selfmetrics::AgentMetrics::new();
    let agent = etcdmon_agent::Agent::serve(
        &cfg,
        metrics.clone(),
        None,
        &etcdmon_core::shutdown::Shutdown::new(),
    )
    .expect("agent");
    let refused = common::eventually(Duration::from_secs(15), || {
        (metrics.stored_through_ahead.get() > 0 && metrics.spool_batches.get() > 2).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "refusals {}, spooled {}\n{}",
        metrics.stored_through_ahead.get(),
        metrics.spool_batches.get(),
        collector.log_text()
    );
    assert_eq!(metrics.batches_acked.get(), 0, "nothing taken for stored");
    assert_eq!(metrics.spool_dropped_batches.get(), 0, "nothing discarded");
    drop(agent);
}

/// The agent beside m1 stops (its process gone, the member fine): `agent_silent`
/// fires for m1 once its `for` (1 s here) passes, and `member_unreachable` does
/// not (nobody saw the member fail); an agent for m1 again resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_fires_agent_silent_not_member_unreachable_and_its_return_resolves_it() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start_with_env(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[("ETCDMON_COLLECTOR_RULES__AGENT_SILENT__FOR", "1s")],
    );
    let mut agents = Agents::start("silent", &etcd, &collector.grpc_url(), dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        transitions(&collector, "agent_silent", "firing"),
        0,
        "all agents report"
    );

    agents
        .running
        .remove(1)
        .drain()
        .await
        .expect("agent drained");
    let fired = common::eventually(Duration::from_secs(15), || {
        (transitions(&collector, "agent_silent", "firing") == 1).then_some(())
    })
    .await;
    assert!(
        fired.is_some(),
        "agent_silent did not fire: {}",
        collector.log_text()
    );
    assert_eq!(
        transitions(&collector, "member_unreachable", "firing"),
        0,
        "the member itself was never seen failing"
    );
    assert!(
        collector.log_text().contains("rule=\"agent_silent\""),
        "{}",
        collector.log_text()
    );

    let cfg = common::agent_config("silent", etcd.member(1), &collector.grpc_url(), dir.path());
    let back = etcdmon_agent::Agent::serve(
        &cfg,
        etcdmon_agent::selfmetrics::AgentMetrics::new(),
        None,
        &etcdmon_core::shutdown::Shutdown::new(),
    )
    .expect("agent");
    let resolved = common::eventually(Duration::from_secs(15), || {
        (transitions(&collector, "agent_silent", "resolved") == 1).then_some(())
    })
    .await;
    assert!(
        resolved.is_some(),
        "agent_silent did not resolve: {}",
        collector.log_text()
    );
    back.drain().await.expect("drained");
    agents.stop().await;
}

/// An agent whose host clock is 30 s ahead (the agent binary under libfaketime,
/// which moves the clock of that process only): `clock_skew` fires for its
/// member (its `for`, 1 minute by default, is 1 s here) and no liveness rule is
/// fooled (liveness is judged by receive time); with its clock set right, the
/// skew ages out of the estimate (the last minute or two) and it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_clock_30_s_ahead_fires_clock_skew_and_a_right_clock_resolves_it() {
    let libfaketime = std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        libfaketime.exists(),
        "libfaketime missing: run scripts/setup (Debian package faketime)"
    );
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start_with_env(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[("ETCDMON_COLLECTOR_RULES__CLOCK_SKEW__FOR", "1s")],
    );
    // Built (or found fresh) first: m1 must not go without an agent for long.
    let agent_bin =
        etcdmon_testkit::workspace_bin("etcdmon-agent", "etcdmon-agent").expect("agent binary");
    let mut agents = Agents::start("skew", &etcd, &collector.grpc_url(), dir.path());
    agents
        .running
        .remove(1)
        .drain()
        .await
        .expect("agent drained");
    // The agent's clock comes from a file libfaketime reads at every call, so
    // the same process can be set right again (its member stays observed).
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+30s").expect("write offset");
    let m1 = etcd.member(1);
    let mut agent = std::process::Command::new(&agent_bin)
        .arg("run")
        .args(["--etcd-endpoint", &m1.client_url])
        .args(["--cluster", "skew", "--member-name", "m1"])
        .args(["--collector", &collector.grpc_url()])
        .args(["--http-listen", "127.0.0.1:0"])
        .env(
            "ETCDMON_AGENT_UPSTREAM__SPOOL_DIR",
            dir.path().join("spool-m1"),
        )
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        // Monotonic clocks stay real: timers and timeouts behave.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent");
    let fired = common::eventually(Duration::from_secs(30), || {
        (transitions(&collector, "clock_skew", "firing") == 1).then_some(())
    })
    .await;
    assert!(
        fired.is_some(),
        "clock_skew did not fire: {}",
        collector.log_text()
    );
    assert!(
        collector
            .log_text()
            .contains("is 30.0 s ahead of the collector's")
            || collector.log_text().contains("rule=\"clock_skew\""),
        "{}",
        collector.log_text()
    );
    for fooled in ["agent_silent", "member_unreachable"] {
        assert_eq!(transitions(&collector, fooled, "firing"), 0, "{fooled}");
    }

    // The clock set right: the skew of the last minute or two ages out.
    std::fs::write(&offset, "+0s").expect("write offset");
    let resolved = common::eventually(Duration::from_secs(180), || {
        (transitions(&collector, "clock_skew", "resolved") == 1).then_some(())
    })
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        resolved.is_some(),
        "clock_skew did not resolve: {}",
        collector.log_text()
    );
    let log = collector.log_text();
    let resolution = log
        .lines()
        .find(|l| l.contains("rule=\"clock_skew\"") && l.contains("state=\"resolved\""))
        .expect("the resolution in the log");
    assert!(!resolution.contains("no longer observed"), "{resolution}");
    agents.stop().await;
}
