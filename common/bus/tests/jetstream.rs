//! The JetStream bus and the outbox against a real `nats-server -js` (Debian's 2.9),
//! started by the test harness, one server per test so tests can stop theirs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcdmon_alert::{AlertCandidate, AlertState};
use etcdmon_bus::jetstream::{JetStreamBus, JetStreamConfig};
use etcdmon_bus::{BusError, ConsumerLag, Delivery, Outbox, Publisher, Subscriber};
use etcdmon_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const STREAM: &str = "ETCDMON_ALERTS";

/// Short timeouts so outage tests stay fast; ack_wait of 1 s for redelivery tests.
fn config(server: &NatsServer) -> JetStreamConfig {
    JetStreamConfig {
        url: server.url(),
        ack_wait: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        ..JetStreamConfig::default()
    }
}

fn start() -> NatsServer {
    NatsServer::start().expect("start nats-server")
}

fn candidate(fingerprint: &str, transition: u64) -> AlertCandidate {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    AlertCandidate {
        fingerprint: fingerprint.to_owned(),
        state: if transition % 2 == 1 {
            AlertState::Firing
        } else {
            AlertState::Resolved
        },
        labels: map(&[
            ("cluster", "prod.eu-1"),
            ("member", "etcd-0"),
            ("rule", "EtcdNoLeader"),
            ("severity", "critical"),
        ]),
        annotations: map(&[
            ("summary", "etcd member has no leader"),
            (
                "description",
                "member etcd-0 of prod.eu-1 reports no leader: \"quotes\" ✓",
            ),
            ("runbook_url", "https://example.invalid/runbooks/no-leader"),
        ]),
        value: 0.25,
        active_since_ms: 1_704_067_200_000,
        transition,
        evaluated_ms: 1_704_067_201_000 + transition as i64,
    }
}

/// The stream's info as JSON, read through the raw JetStream API (not the code under test).
fn stream_info(server: &NatsServer) -> serde_json::Value {
    let reply = server
        .request(
            &format!("$JS.API.STREAM.INFO.{STREAM}"),
            b"",
            Duration::from_secs(5),
        )
        .expect("stream info");
    serde_json::from_str(&reply).expect("stream info is JSON")
}

/// The next delivery within `within`, skipping transient errors; `None` if none came.
async fn next_within(subscriber: &mut impl Subscriber, within: Duration) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, subscriber.next()).await {
            Err(_) => return None,
            Ok(Ok(delivery)) => return Some(delivery),
            Ok(Err(e)) if e.is_retryable() => continue,
            Ok(Err(e)) => panic!("subscriber failed: {e}"),
        }
    }
}

async fn expect_next(subscriber: &mut impl Subscriber) -> Delivery {
    next_within(subscriber, Duration::from_secs(10))
        .await
        .expect("a delivery within 10 s")
}

#[tokio::test]
async fn stream_creation_is_idempotent_and_survives_a_restart() {
    let mut server = start();
    let first = JetStreamBus::connect(config(&server)).await.unwrap();
    assert!(first.is_connected());
    let second = JetStreamBus::connect(config(&server)).await.unwrap();
    drop((first, second));

    let info = stream_info(&server);
    let cfg = &info["config"];
    assert_eq!(cfg["subjects"], serde_json::json!(["etcdmon.alerts.>"]));
    assert_eq!(cfg["storage"], "file");
    assert_eq!(cfg["discard"], "old");
    assert_eq!(cfg["max_bytes"], 256 << 20);
    assert_eq!(cfg["max_age"], 7 * 86_400 * 1_000_000_000_i64);
    assert_eq!(cfg["duplicate_window"], 120 * 1_000_000_000_i64);

    // The stream is on disk: after a restart, connect finds it (and changes nothing).
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    bus.publisher().publish(&candidate("fp", 1)).await.unwrap();
    drop(bus);
    server.stop().unwrap();
    server.start_again().unwrap();
    JetStreamBus::connect(config(&server)).await.unwrap();
    assert_eq!(stream_info(&server)["state"]["messages"], 1);
}

#[tokio::test]
async fn existing_stream_with_other_limits_is_updated_and_wrong_storage_is_rejected() {
    let server = start();
    JetStreamBus::connect(config(&server)).await.unwrap();
    let changed = JetStreamConfig {
        max_age: Duration::from_secs(86_400),
        max_bytes: 64 << 20,
        ..config(&server)
    };
    JetStreamBus::connect(changed).await.unwrap();
    let cfg = &stream_info(&server)["config"];
    assert_eq!(cfg["max_age"], 86_400 * 1_000_000_000_i64);
    assert_eq!(cfg["max_bytes"], 64 << 20);

    // A memory stream of the same name cannot become a file stream: a clear refusal.
    let other = r#"{"name":"OTHER","subjects":["other.>"],"storage":"memory","num_replicas":1}"#;
    server
        .request(
            "$JS.API.STREAM.CREATE.OTHER",
            other.as_bytes(),
            Duration::from_secs(5),
        )
        .unwrap();
    let err = JetStreamBus::connect(JetStreamConfig {
        stream: "OTHER".into(),
        subject_prefix: "other".into(),
        ..config(&server)
    })
    .await
    .unwrap_err();
    assert!(matches!(err, BusError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("storage"), "{err}");
}

#[tokio::test]
async fn publish_and_subscribe_round_trip_with_all_fields() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    let mut sent = candidate("a1b2", 1);
    sent.value = f64::INFINITY;
    bus.publisher().publish(&sent).await.unwrap();

    let delivery = expect_next(&mut subscriber).await;
    assert_eq!(delivery.candidate.fingerprint, sent.fingerprint);
    assert_eq!(delivery.candidate.value, f64::INFINITY);
    assert_eq!(delivery.candidate, sent);
    assert_eq!(delivery.redelivered(), 0);
    delivery.ack().await.unwrap();

    // Published on the sanitized cluster subject.
    let reply = server
        .request(
            &format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
            br#"{"seq":1}"#,
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        reply.contains(r#""subject":"etcdmon.alerts.prod_eu-1""#),
        "{reply}"
    );
}

#[tokio::test]
async fn the_same_candidate_published_twice_is_delivered_once() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let publisher = bus.publisher();
    let c = candidate("dup", 1);
    publisher.publish(&c).await.unwrap();
    publisher.publish(&c).await.unwrap(); // a retry: the PubAck says duplicate, still Ok
    publisher.publish(&candidate("dup", 2)).await.unwrap(); // the next transition is new
    assert_eq!(stream_info(&server)["state"]["messages"], 2);

    let mut subscriber = bus.subscriber().await.unwrap();
    for transition in [1, 2] {
        let delivery = expect_next(&mut subscriber).await;
        assert_eq!(delivery.candidate.transition, transition);
        delivery.ack().await.unwrap();
    }
    assert!(next_within(&mut subscriber, Duration::from_millis(1500))
        .await
        .is_none());
}

/// What the collector's `alerter_consumer_*` gauges show: no consumer before the
/// first alerter, then what it has not taken or not acknowledged.
#[tokio::test]
async fn the_publisher_sees_whether_the_alerter_consumer_exists_and_how_far_behind_it_is() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let publisher = bus.publisher();
    for t in 1..=3 {
        publisher.publish(&candidate("lag", t)).await.unwrap();
    }
    assert_eq!(publisher.consumer_lag().await, Ok(ConsumerLag::Missing));
    let mut subscriber = bus.subscriber().await.unwrap();
    assert_eq!(
        publisher.consumer_lag().await,
        Ok(ConsumerLag::Present {
            pending: 3,
            unacknowledged: 0
        })
    );
    expect_next(&mut subscriber).await.ack().await.unwrap();
    // The subscriber may have fetched the other two already: they are then
    // delivered but not acknowledged.
    match publisher.consumer_lag().await {
        Ok(ConsumerLag::Present {
            pending,
            unacknowledged,
        }) => assert_eq!(pending + unacknowledged, 2),
        other => panic!("{other:?}"),
    }
    drop(server);
    assert!(matches!(
        publisher.consumer_lag().await,
        Err(BusError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_unacked_delivery_is_redelivered_after_ack_wait_and_an_acked_one_is_not() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let publisher = bus.publisher();
    publisher.publish(&candidate("unacked", 1)).await.unwrap();
    publisher.publish(&candidate("acked", 1)).await.unwrap();

    let mut subscriber = bus.subscriber().await.unwrap();
    let first = expect_next(&mut subscriber).await;
    assert_eq!(first.candidate.fingerprint, "unacked");
    drop(first); // the alerter failed to persist: no ack
    let second = expect_next(&mut subscriber).await;
    assert_eq!(second.candidate.fingerprint, "acked");
    second.ack().await.unwrap();

    let started = Instant::now();
    let again = expect_next(&mut subscriber).await;
    assert_eq!(again.candidate.fingerprint, "unacked");
    assert_eq!(again.redelivered(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    again.ack().await.unwrap();

    // Both acked: nothing comes back after several ack_wait periods.
    assert!(next_within(&mut subscriber, Duration::from_millis(2500))
        .await
        .is_none());
}

#[tokio::test]
async fn the_durable_consumer_resumes_after_the_subscriber_is_recreated() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let publisher = bus.publisher();
    for t in 1..=3 {
        publisher.publish(&candidate("resume", t)).await.unwrap();
    }
    let mut subscriber = bus.subscriber().await.unwrap();
    for t in 1..=2 {
        let delivery = expect_next(&mut subscriber).await;
        assert_eq!(delivery.candidate.transition, t);
        delivery.ack().await.unwrap();
    }
    // The alerter stops (its connection too) before handling transition 3, which its
    // pull may already have fetched.
    drop(subscriber);
    drop(bus);
    publisher.publish(&candidate("resume", 4)).await.unwrap();

    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    let mut got = Vec::new();
    while let Some(delivery) = next_within(&mut subscriber, Duration::from_secs(3)).await {
        got.push(delivery.candidate.transition);
        delivery.ack().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, [3, 4], "no loss, no repeat of acked candidates");
}

#[tokio::test]
async fn outbox_keeps_candidates_while_nats_is_down_and_publishes_them_in_order_after() {
    let mut server = start();
    let bus = JetStreamBus::connect(JetStreamConfig {
        request_timeout: Duration::from_millis(500),
        ..config(&server)
    })
    .await
    .unwrap();
    let (sender, task) = Outbox::new(Arc::new(bus.publisher()), 1 << 20);
    let stats = sender.stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(
        task.with_retry_delays(Duration::from_millis(50), Duration::from_millis(500))
            .run(shutdown.clone()),
    );

    server.stop().unwrap();
    for t in 1..=10 {
        sender.send(candidate("outage", t));
    }
    // Several publish attempts fail while the server is away; nothing is lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((stats.published(), stats.pending()), (0, 10));

    server.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.published() < 10 {
        assert!(Instant::now() < deadline, "outbox did not drain: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (stats.dropped(), stats.rejected(), stats.pending()),
        (0, 0, 0)
    );

    let mut subscriber = bus.subscriber().await.unwrap();
    let mut got = Vec::new();
    while let Some(delivery) = next_within(&mut subscriber, Duration::from_secs(2)).await {
        got.push(delivery.candidate.transition);
        delivery.ack().await.unwrap();
    }
    // In order, each once: publishes that timed out while the server was down and
    // reached it after the reconnect were deduplicated by their message ids.
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    assert_eq!(stream_info(&server)["state"]["messages"], 10);
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn outbox_drops_the_oldest_when_over_max_bytes_and_counts_them() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    // Even transitions are "resolved", the longer state: room for four of any kind.
    let size = serde_json::to_vec(&candidate("full", 2)).unwrap().len();
    let (sender, task) = Outbox::new(Arc::new(bus.publisher()), 4 * size);
    let stats = sender.stats();
    // Queue before the task runs, as if the bus had been away.
    for t in 1..=9 {
        sender.send(candidate("full", t));
    }
    assert_eq!(
        (stats.queued(), stats.dropped(), stats.pending()),
        (9, 5, 4)
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(task.run(shutdown.clone()));

    let mut subscriber = bus.subscriber().await.unwrap();
    let mut got = Vec::new();
    while let Some(delivery) = next_within(&mut subscriber, Duration::from_secs(2)).await {
        got.push(delivery.candidate.transition);
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, [6, 7, 8, 9]);
    assert_eq!(stats.published(), 4);
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn publish_fails_with_unavailable_within_the_timeout_while_nats_is_down() {
    let mut server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let publisher = bus.publisher();

    // Frozen (SIGSTOP): the connection is up, nothing answers.
    server.freeze().unwrap();
    let started = Instant::now();
    let err = publisher.publish(&candidate("down", 1)).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.thaw().unwrap();

    // Stopped: the client is reconnecting.
    server.stop().unwrap();
    let started = Instant::now();
    let err = publisher.publish(&candidate("down", 2)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!bus.is_connected());

    // Connecting to a server that is not there fails fast and retryably too.
    let started = Instant::now();
    let err = JetStreamBus::connect(config(&server)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_waiting_subscriber_recovers_after_nats_restarts() {
    let mut server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    let publisher = bus.publisher();
    publisher.publish(&candidate("restart", 1)).await.unwrap();
    expect_next(&mut subscriber).await.ack().await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(delivery) = next_within(&mut subscriber, Duration::from_secs(30)).await {
            let transition = delivery.candidate.transition;
            delivery.ack().await.ok();
            if tx.send(transition).is_err() {
                break;
            }
        }
    });
    server.stop().unwrap();
    server.start_again().unwrap();
    // Publish once the client has reconnected (publishes fail meanwhile).
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = publisher.publish(&candidate("restart", 2)).await {
        assert!(Instant::now() < deadline, "publisher did not recover: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the subscriber received the candidate published after the restart");
    assert_eq!(got, Some(2));
    reader.abort();
}

#[tokio::test]
async fn a_deleted_consumer_is_created_again() {
    let server = start();
    let bus = JetStreamBus::connect(config(&server)).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    let publisher = bus.publisher();
    publisher.publish(&candidate("deleted", 1)).await.unwrap();
    expect_next(&mut subscriber).await.ack().await.unwrap();

    let reply = server
        .request(
            &format!("$JS.API.CONSUMER.DELETE.{STREAM}.etcdmon-alerter"),
            b"",
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(reply.contains(r#""success":true"#), "{reply}");
    publisher.publish(&candidate("deleted", 2)).await.unwrap();

    // The re-created consumer starts from the oldest retained candidate (deliver all),
    // so transition 1 comes again: at least once, never lost.
    let mut got = Vec::new();
    while let Some(delivery) = next_within(&mut subscriber, Duration::from_secs(15)).await {
        got.push(delivery.candidate.transition);
        delivery.ack().await.unwrap();
        if got.contains(&2) {
            break;
        }
    }
    assert_eq!(got, [1, 2]);
}

/// NATS over TLS with a private CA and client certificates, and a token from a file:
/// the bus connects and round-trips a candidate; a missing token, a wrong one, or no
/// CA are refused with a clear error (Rejected, not retried as an outage).
#[tokio::test]
async fn tls_with_a_private_ca_client_certificates_and_a_token_file() {
    use etcdmon_bus::jetstream::NatsAuth;
    use etcdmon_testkit::{generate_tls, NatsSecurity};
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path(), 30).unwrap();
    let token = "nats-token-for-the-test";
    let server = NatsServer::start_secured(NatsSecurity {
        tls: Some(tls.clone()),
        verify_clients: true,
        token: Some(token.to_owned()),
        user: None,
        nkey: None,
    })
    .expect("start nats-server with TLS and a token");
    // The server really demands both (its own view, on the monitoring port).
    let varz = etcdmon_testkit::http_get(
        &format!("{}/varz", server.monitor_url()),
        Duration::from_secs(2),
    )
    .expect("varz");
    let varz: serde_json::Value = serde_json::from_str(&varz.body).expect("varz json");
    assert_eq!(varz["tls_required"], true, "{varz}");
    assert_eq!(varz["auth_required"], true, "{varz}");
    assert_eq!(varz["tls_verify"], true, "{varz}");
    let token_file = dir.path().join("nats-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let secured = |auth: NatsAuth| JetStreamConfig {
        auth,
        ..config(&server)
    };
    let good = NatsAuth {
        ca_file: Some(tls.ca_cert.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        token_file: Some(token_file.clone()),
        ..NatsAuth::default()
    };

    let bus = JetStreamBus::connect(secured(good.clone())).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    let sent = candidate("tls1", 1);
    bus.publisher().publish(&sent).await.unwrap();
    let delivery = expect_next(&mut subscriber).await;
    assert_eq!(delivery.candidate, sent);
    delivery.ack().await.unwrap();
    // The config's Debug (start-up logs) shows the file, never a secret.
    let shown = format!(
        "{:?}",
        secured(NatsAuth {
            token: Some(etcdmon_core::secret::Secret::new(token)),
            token_file: None,
            ..good.clone()
        })
    );
    assert!(!shown.contains(token), "{shown}");

    let refused = |auth: NatsAuth| {
        let cfg = secured(auth);
        async move {
            match JetStreamBus::connect(cfg).await {
                Ok(_) => panic!("connected"),
                Err(e) => e,
            }
        }
    };
    let no_token = refused(NatsAuth {
        token_file: None,
        ..good.clone()
    })
    .await;
    assert!(matches!(no_token, BusError::Rejected(_)), "{no_token}");
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let wrong_token = refused(NatsAuth {
        token_file: Some(wrong),
        ..good.clone()
    })
    .await;
    assert!(
        matches!(wrong_token, BusError::Rejected(_)),
        "{wrong_token}"
    );
    assert!(
        !wrong_token.to_string().contains("not-the-token"),
        "{wrong_token}"
    );
    let no_ca = refused(NatsAuth {
        ca_file: None,
        ..good.clone()
    })
    .await;
    assert!(no_ca.to_string().contains("connect to NATS"), "{no_ca}");
    // Both a token and a user: a config error naming the field, before connecting.
    let both = refused(NatsAuth {
        user: Some("alerter".into()),
        password: Some(etcdmon_core::secret::Secret::new("pw")),
        ..good
    })
    .await;
    assert!(both.to_string().contains("auth:"), "{both}");
}

/// An NKey user: the bus signs the server's nonce with the seed from a file; a
/// different seed is refused as a config error.
#[tokio::test]
async fn an_nkey_seed_from_a_file_logs_in() {
    use etcdmon_bus::jetstream::NatsAuth;
    use etcdmon_testkit::NatsSecurity;
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_secured(NatsSecurity {
        nkey: Some(user.public_key()),
        ..NatsSecurity::default()
    })
    .expect("start nats-server with an NKey user");
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("nats.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let with_seed = |path: std::path::PathBuf| JetStreamConfig {
        auth: NatsAuth {
            nkey_seed_file: Some(path),
            ..NatsAuth::default()
        },
        ..config(&server)
    };
    let bus = JetStreamBus::connect(with_seed(seed_file)).await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    bus.publisher().publish(&candidate("nk1", 1)).await.unwrap();
    expect_next(&mut subscriber).await.ack().await.unwrap();

    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    match JetStreamBus::connect(with_seed(other)).await {
        Ok(_) => panic!("a stranger's seed connected"),
        Err(e) => assert!(matches!(e, BusError::Rejected(_)), "{e}"),
    }
}
