//! Delivery with retries against a real HTTP receiver and a real store: a 500 is retried
//! after the backoff, a 429's `Retry-After` is honoured, a 400 is not retried, and every
//! attempt is recorded with its outcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcdmon_alert::AlertState;
use etcdmon_alerter::config::DeliveryConfig;
use etcdmon_alerter::metrics::AlerterMetrics;

use etcdmon_alerter::notification::{Notification, NotifiedAlert, Notifier, Reason};
use etcdmon_alerter::receivers::WebhookConfig;
use etcdmon_alerter::sender::Sender;
use etcdmon_alerter::template::Templates;
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::{AlertDeliveryRow, AlertHistoryQuery, AlertStore, Retention, Storage};
use etcdmon_testkit::{HttpSink, SinkAnswer};
use tokio_util::sync::CancellationToken;

fn notification(fingerprint: &str) -> Notification {
    let labels: BTreeMap<String, String> = [("cluster", "c"), ("rule", "no_leader")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Notification {
        receiver: "hook".into(),
        group_key: "0:{cluster=\"c\"}".into(),
        group_labels: BTreeMap::new(),
        common_labels: labels.clone(),
        common_annotations: BTreeMap::new(),
        status: AlertState::Firing,
        reason: Reason::New,
        alerts: vec![NotifiedAlert {
            fingerprint: fingerprint.into(),
            transition: 7,
            status: AlertState::Firing,
            labels,
            annotations: BTreeMap::new(),
            value: 1.0,
            starts_at_ms: 1_000,
            ends_at_ms: None,
            acknowledged: false,
            generator_url: String::new(),
        }],
        external_url: String::new(),
    }
}

async fn attempts(store: &dyn AlertStore, fingerprint: &str, n: usize) -> Vec<AlertDeliveryRow> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut rows = store
            .deliveries(&AlertHistoryQuery {
                from_ms: 0,
                to_ms: i64::MAX,
                fingerprint: Some(fingerprint.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("deliveries");
        if rows.len() >= n || Instant::now() > deadline {
            rows.reverse(); // oldest first
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_as_classified_and_every_attempt_is_recorded() {
    let sink = HttpSink::start().expect("sink");
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(
        SqliteStorage::open(dir.path().join("db.sqlite"), Retention::default()).expect("db"),
    );
    store.migrate().await.expect("migrate");
    let webhook: WebhookConfig =
        serde_json::from_value(serde_json::json!({ "url": sink.url("/hook") })).expect("config");
    let notifier: Arc<dyn Notifier> = webhook.build(&Templates::default()).expect("build");
    let policy = DeliveryConfig {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        ..DeliveryConfig::default()
    };
    let shutdown = CancellationToken::new();
    let (sender, _workers) = Sender::start(
        &HashMap::from([("hook".to_string(), notifier)]),
        store.clone(),
        &policy,
        AlerterMetrics::new(),
        shutdown.clone(),
    );

    // 500, then 429 asking for 1 s, then success: three attempts, in that order.
    sink.respond_once("/hook", SinkAnswer::new(500, "{}"));
    let mut limited = SinkAnswer::new(429, "{}");
    limited.headers.push(("Retry-After".into(), "1".into()));
    sink.respond_once("/hook", limited);
    sender.send(notification("a"));
    let rows = attempts(store.as_ref(), "a", 3).await;
    let outcomes: Vec<(u32, &str)> = rows
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [(1, "retry"), (2, "retry"), (3, "ok")],
        "{rows:?}"
    );
    assert!(rows[0].detail.contains("500"), "{:?}", rows[0].detail);
    assert!(
        rows.iter()
            .all(|r| r.receiver == "hook" && r.transition == 7 && r.state == "firing"),
        "{rows:?}"
    );
    let requests = sink.requests("/hook");
    assert_eq!(requests.len(), 3);
    // Retry-After: 1 is honoured (never shortened by jitter).
    let waited = requests[2].received_ms - requests[1].received_ms;
    assert!(
        waited >= 1_000,
        "waited {waited} ms after a 429 asking for 1 s"
    );

    // A 400 is not retried: one attempt, recorded as failed.
    sink.respond_once("/hook", SinkAnswer::new(400, r#"{"error":"bad"}"#));
    sender.send(notification("b"));
    let rows = attempts(store.as_ref(), "b", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_later = attempts(store.as_ref(), "b", 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows_later.len(), 1, "not retried: {rows_later:?}");
    assert_eq!(rows[0].outcome, "failed");
    assert_eq!(sink.requests("/hook").len(), 4);
    shutdown.cancel();
}
