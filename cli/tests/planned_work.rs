//! Planned work pages nobody: against a real 3-member cluster under
//! `etcdmon up --webhook` at the default rules and agent settings, an operator
//! defragments each member in turn, compacts, moves the leader, opens and
//! cancels 200 watches, writes a burst of 5,000 keys, and restarts every member
//! one at a time as `systemctl restart` does (SIGTERM: a leader hands over its
//! leadership first). The only notifications are each restarted member's
//! `member_unreachable` and its resolution (a maintenance window would hold
//! those back too); no leader is lost, nothing else fires.

use std::time::Duration;

use etcdmon_testkit::{EtcdCluster, HttpSink};

mod support;
use support::{notified, Up};

#[test]
fn planned_maintenance_pages_only_the_restarted_members() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[],
    );
    up.wait_healthy(3);
    let endpoints: Vec<String> = etcd
        .members()
        .iter()
        .map(|m| m.client_url.clone())
        .collect();

    // Defragment each member in turn, then compact.
    for e in &endpoints {
        etcd.etcdctl(&["--endpoints", e, "defrag"]).expect("defrag");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect(endpoints.clone(), None)
            .await
            .expect("connect");
        // A burst of 5,000 writes, 50 at a time.
        for batch in 0..100 {
            let puts = (0..50).map(|i| {
                let mut c = client.clone();
                async move {
                    c.put(format!("burst/{batch}/{i}"), vec![b'b'; 256], None)
                        .await
                }
            });
            for r in futures::future::join_all(puts).await {
                r.expect("put");
            }
        }
        let revision = client
            .get("burst/0/0", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        client.compact(revision, None).await.expect("compact");
        // 200 watches opened, then cancelled.
        let mut watches = Vec::new();
        for i in 0..200 {
            let mut stream = client
                .watch(format!("watched/{i}"), None)
                .await
                .expect("watch");
            let created = stream
                .message()
                .await
                .expect("created")
                .expect("a response");
            watches.push((created.watch_id(), stream));
        }
        for (id, mut stream) in watches {
            stream.cancel(id).await.expect("cancel");
        }
    });
    // Move the leader to a follower.
    let leader = support::poll(Duration::from_secs(20), || {
        etcd.leader_index().ok().flatten()
    })
    .expect("a leader");
    let target = (leader + 1) % 3;
    let target_id = etcd
        .etcdctl(&[
            "--endpoints",
            &endpoints[target],
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .expect("status");
    let target_id: serde_json::Value = serde_json::from_str(&target_id).expect("json");
    let target_id = target_id[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member id");
    etcd.etcdctl(&[
        "--endpoints",
        &endpoints[leader],
        "move-leader",
        &format!("{target_id:x}"),
    ])
    .expect("move-leader");
    std::thread::sleep(Duration::from_secs(6));
    let before_restarts = notified(&sink.requests("/hook"));
    assert!(
        before_restarts.is_empty(),
        "defrag, compaction, burst, watches, move-leader: {before_restarts:?}\n{}",
        up.log()
    );

    // A rolling restart, one member at a time.
    for i in 0..3 {
        etcd.restart_gracefully(i).expect("restart");
        up.wait_healthy(3);
    }
    // Longer than a metrics scrape and the alerter's group wait.
    std::thread::sleep(Duration::from_secs(8));
    let mut got: Vec<(String, String, String)> = notified(&sink.requests("/hook"))
        .into_iter()
        .map(|(r, s, labels)| (r, s, labels["member"].as_str().unwrap_or("").to_owned()))
        .collect();
    got.sort();
    let mut allowed: Vec<(String, String, String)> = (0..3)
        .flat_map(|i| {
            let m = format!("m{i}");
            [
                (
                    "member_unreachable".to_owned(),
                    "firing".to_owned(),
                    m.clone(),
                ),
                ("member_unreachable".to_owned(), "resolved".to_owned(), m),
            ]
        })
        .collect();
    allowed.sort();
    let unexpected: Vec<_> = got.iter().filter(|g| !allowed.contains(g)).collect();
    assert!(unexpected.is_empty(), "{unexpected:?}\n{}", up.log());
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), got.len(), "each at most once: {got:?}");
}
