//! Alert candidates on a real NATS JetStream: a killed etcd member becomes
//! exactly one firing candidate with its labels and annotations; its
//! recovery, happening while NATS is down, is kept in the outbox and
//! published once NATS is back.

mod common;

use common::{Agents, CollectorProc};
use etcdmon_alert::{AlertCandidate, AlertState};
use etcdmon_bus::jetstream::{JetStreamBus, JetStreamConfig};
use etcdmon_bus::Subscriber;
use etcdmon_testkit::{EtcdCluster, NatsServer};
use std::time::Duration;

fn js(nats: &NatsServer) -> JetStreamConfig {
    JetStreamConfig {
        url: nats.url(),
        ..Default::default()
    }
}

/// Candidates received within `d`, acked, heartbeats included.
async fn receive_all(sub: &mut impl Subscriber, d: Duration) -> Vec<AlertCandidate> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok(delivery)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(delivery.candidate.clone());
        delivery.ack().await.expect("ack");
    }
    out
}

/// Alert candidates received within `d`, acked: the collector's heartbeats
/// (every 10 s, for the alerter's watchdog) left out.
async fn receive(sub: &mut impl Subscriber, d: Duration) -> Vec<AlertCandidate> {
    let mut got = receive_all(sub, d).await;
    got.retain(|c| !c.is_heartbeat());
    got
}

fn of_rule<'a>(c: &'a [AlertCandidate], rule: &str, member: &str) -> Vec<&'a AlertCandidate> {
    c.iter()
        .filter(|c| c.labels.get("rule").map(String::as_str) == Some(rule))
        .filter(|c| c.labels.get("member").map(String::as_str) == Some(member))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_published_once_and_its_recovery_survives_a_nats_outage() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let collector = CollectorProc::start_with_env(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[("ETCDMON_COLLECTOR_ALERTING__JETSTREAM__URL", &nats.url())],
    );
    let agents = Agents::start("alerts", &etcd, &collector.grpc_url(), dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let bus = JetStreamBus::connect(js(&nats)).await.expect("connect");
    let mut sub = bus.subscriber().await.expect("subscriber");
    assert!(
        receive(&mut sub, Duration::from_secs(1)).await.is_empty(),
        "healthy cluster, no alerts"
    );

    let victim = etcd.member(1).name.clone();
    etcd.kill(1).expect("kill");
    let got = receive(&mut sub, Duration::from_secs(5)).await;
    let fired = of_rule(&got, "member_unreachable", &victim);
    assert_eq!(fired.len(), 1, "exactly one firing candidate: {got:?}");
    let c = fired[0];
    assert_eq!(c.state, AlertState::Firing);
    assert_eq!(c.labels["cluster"], "alerts");
    assert_eq!(c.labels["severity"], "critical");
    assert!(
        c.annotations["summary"].contains(&victim),
        "{:?}",
        c.annotations
    );
    // The cause depends on where the kill caught the agent: a poll in flight
    // sees the connection closed, the next one sees it refused.
    let description = &c.annotations["description"];
    assert!(
        description.contains("cannot reach etcd")
            && (description.contains("refused") || description.contains("closed")),
        "{:?}",
        c.annotations
    );
    assert!(c.annotations["runbook_url"].ends_with("#member_unreachable"));
    let fingerprint = c.fingerprint.clone();
    drop(sub);

    // NATS goes away; the member recovers meanwhile.
    nats.stop().expect("stop nats");
    etcd.restart(1).expect("restart member");
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.start_again().expect("start nats");

    let bus = JetStreamBus::connect(js(&nats)).await.expect("reconnect");
    let mut sub = bus.subscriber().await.expect("subscriber");
    let got = receive(&mut sub, Duration::from_secs(15)).await;
    let resolved: Vec<_> = of_rule(&got, "member_unreachable", &victim)
        .into_iter()
        .filter(|c| c.state == AlertState::Resolved)
        .collect();
    assert_eq!(
        resolved.len(),
        1,
        "the recovery was kept and published once: {got:?}"
    );
    assert_eq!(resolved[0].fingerprint, fingerprint, "same alert");
    assert!(resolved[0].transition > 1);
    agents.stop().await;
}

/// Stopping the collector is not an incident: with a healthy cluster, SIGTERM
/// publishes no alert candidate and logs no transition, although every agent's
/// stream closes as the collector goes (the rules stop before the streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_healthy_cluster_publishes_no_alert() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let mut collector = CollectorProc::start_with_env(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[("ETCDMON_COLLECTOR_ALERTING__JETSTREAM__URL", &nats.url())],
    );
    let agents = Agents::start("calm", &etcd, &collector.grpc_url(), dir.path());
    let healthy = common::eventually(Duration::from_secs(20), || {
        let r =
            etcdmon_testkit::http_get(&collector.url("/api/v1/clusters"), Duration::from_secs(2))
                .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let members = v["clusters"][0]["members"].as_object()?.clone();
        (members.len() == 3 && members.values().all(|m| m["healthy"] == true)).then_some(())
    })
    .await;
    assert!(healthy.is_some(), "{}", collector.log_text());
    // A few rule rounds on the healthy cluster.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let status = collector.terminate();
    assert!(status.success(), "{status:?}: {}", collector.log_text());
    let log = collector.log_text();
    assert!(!log.contains("alert transition"), "{log}");

    let bus = JetStreamBus::connect(js(&nats)).await.expect("connect");
    let mut sub = bus.subscriber().await.expect("subscriber");
    let got = receive_all(&mut sub, Duration::from_secs(2)).await;
    let (beats, alerts): (Vec<_>, Vec<_>) = got.into_iter().partition(|c| c.is_heartbeat());
    assert!(alerts.is_empty(), "stopping published {alerts:?}");
    // The heartbeat (one at start, every 10 s after) took the same path.
    assert!(
        !beats.is_empty() && beats.iter().all(|c| c.labels["rule"] == "watchdog"),
        "no heartbeat on the stream"
    );
    drop(agents); // their tasks end with the test's runtime
}
