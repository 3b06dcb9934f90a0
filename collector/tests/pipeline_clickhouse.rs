//! End to end on ClickHouse (Debian's 18.16): a real 3-member etcd, three
//! agents, the collector binary. Samples are queryable through the API and
//! directly in ClickHouse; killing the collector mid-stream and stopping
//! ClickHouse for 20 seconds loses nothing and counts nothing twice.

mod common;

use common::{Agents, CollectorProc};
use etcdmon_storage::clickhouse::{ClickHouseConfig, ClickHouseStorage};
use etcdmon_testkit::{http_get, ClickHouseServer, EtcdCluster};
use std::collections::BTreeMap;
use std::time::Duration;

fn storage_url(ch: &ClickHouseServer) -> String {
    format!("clickhouse://127.0.0.1:{}/etcdmon", ch.http_port())
}

async fn stored_counts(ch: &ClickHouseServer, cluster: &str) -> BTreeMap<String, usize> {
    let cfg = ClickHouseConfig {
        url: ch.http_url(),
        database: "etcdmon".into(),
        ..Default::default()
    };
    let s = ClickHouseStorage::new(cfg).expect("clickhouse storage");
    common::stored_counts(&s, cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_queryable_through_the_api_and_in_clickhouse() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let ch = ClickHouseServer::start().expect("clickhouse");
    let dir = tempfile::tempdir().expect("tmp");
    let collector = CollectorProc::start(&storage_url(&ch), dir.path());
    let agents = Agents::start("ch", &etcd, &collector.grpc_url(), dir.path());

    for m in etcd.members() {
        let url = collector.url(&format!(
            "/api/v1/clusters/ch/metrics/history?metric=etcd_server_has_leader&member={}&from=now-5m&step=1s",
            m.name
        ));
        let pts = common::eventually(Duration::from_secs(20), || {
            let r = http_get(&url, Duration::from_secs(5)).ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let pts = v["series"][0]["points"].as_array()?.clone();
            (!pts.is_empty()).then_some(pts)
        })
        .await
        .unwrap_or_else(|| panic!("no history for {}: {}", m.name, collector.log_text()));
        assert_eq!(pts[0][1].as_f64(), Some(1.0));
    }

    let (expected, _) = agents.stop().await;
    // Directly in ClickHouse, deduplicated on the natural key.
    for (member, n) in &expected {
        let sql = format!(
            "SELECT count() FROM (SELECT name, labels, ts_ms FROM etcdmon.samples \
             WHERE cluster = 'ch' AND member = '{member}' GROUP BY name, labels, ts_ms)"
        );
        let got: usize = ch
            .query(&sql)
            .expect("query")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(got, *n, "member {member}");
    }
    assert_eq!(stored_counts(&ch, "ch").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_kill_and_a_20_second_clickhouse_outage_lose_and_double_nothing() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let mut ch = ClickHouseServer::start().expect("clickhouse");
    let dir = tempfile::tempdir().expect("tmp");
    let mut collector = CollectorProc::start_with_env(
        &storage_url(&ch),
        dir.path(),
        &[("ETCDMON_COLLECTOR_INGEST__UNHEALTHY_AFTER", "5s")],
    );
    let agents = Agents::start("outage", &etcd, &collector.grpc_url(), dir.path());

    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let health = |c: &CollectorProc| {
        http_get(&c.url("/healthz"), Duration::from_secs(5))
            .map(|r| r.status)
            .unwrap_or(0)
    };
    assert_eq!(health(&collector), 200);
    ch.stop().expect("stop clickhouse");
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Writes have failed for longer than unhealthy_after (5 s).
    assert_eq!(
        health(&collector),
        503,
        "/healthz must report the storage outage"
    );
    // The collector held back; the agents kept everything.
    assert!(
        agents.metrics.iter().all(|m| m.spool_batches.get() > 0),
        "agents should hold unacknowledged batches while ClickHouse is down"
    );
    ch.start_again().expect("start clickhouse");
    // The writer retries with backoff capped at 5 s; allow a few rounds.
    let back = common::eventually(Duration::from_secs(20), || {
        (health(&collector) == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "healthy again once writes succeed");

    let (expected, metrics) = agents.stop().await;
    for m in &metrics {
        assert_eq!(m.spool_dropped_batches.get(), 0);
        assert_eq!(m.batches_rejected.get(), 0);
        assert_eq!(
            m.spool_batches.get(),
            0,
            "everything acknowledged in the end"
        );
    }
    let stored = stored_counts(&ch, "outage").await;
    assert_eq!(
        stored,
        expected,
        "gap or double count: {}",
        collector.log_text()
    );
}
