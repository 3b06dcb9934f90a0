//! Clusters registered through the API, on the collector binary with SQLite:
//! a registered cluster no agent reports for is shown and alerted, the
//! registration survives a restart, and only the API's own registrations can
//! be dropped through it. The live stream (`/api/v1/stream`) carries the
//! alert as it fires.

mod common;

use common::CollectorProc;
use etcdmon_testkit::{http_delete, http_get, http_put_json};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_default()
}

/// The lines of `GET {path}` on `port` as they arrive (a Server-Sent Events
/// stream), read by a thread until the connection ends.
fn stream_lines(port: u16, path: &str) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let out = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            out.lock().expect("lock").push(line);
        }
    });
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_silent_cluster_is_shown_alerted_kept_and_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", dir.path().join("etcdmon.sqlite").display());
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "[[clusters]]\nname = \"from-file\"\n[rules.cluster_not_reporting]\nfor = \"0s\"\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let args = [
        "--allow-plaintext",
        "--anonymous",
        "admin",
        "--config",
        &config,
    ];
    let mut collector = CollectorProc::start_with_args(&db, dir.path(), &args);
    let url = |p: &str| collector.url(p);
    let port: u16 = url("")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the API's port");
    let live = stream_lines(port, "/api/v1/stream");
    // The subscription is made when the headers are answered.
    let subscribed = common::eventually(Duration::from_secs(5), || {
        live.lock()
            .expect("lock")
            .iter()
            .any(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-type: text/event-stream")
            })
            .then_some(())
    })
    .await;
    assert!(
        subscribed.is_some(),
        "no event stream: {:?}",
        live.lock().expect("lock")
    );

    let body = r#"{"region": "eu-west", "owner": "team-storage",
                   "members": ["etcd-0", "etcd-1"], "tags": {"env": "staging"}}"#;
    let r = http_put_json(&url("/api/v1/clusters/staging-1"), body, T).expect("PUT");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["owner"], "team-storage", "{}", r.body);

    let shown = |collector: &CollectorProc| {
        let r = http_get(&collector.url("/api/v1/clusters/staging-1"), T).expect("GET");
        (r.status, json(&r.body))
    };
    let (status, c) = shown(&collector);
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["reporting"], false, "{c}");
    assert_eq!(
        c["members_missing"],
        serde_json::json!(["etcd-0", "etcd-1"]),
        "{c}"
    );
    assert_eq!(c["registration"]["tags"]["env"], "staging", "{c}");

    // Alerted: cluster_not_reporting is counted on /metrics.
    let firing = common::eventually(Duration::from_secs(10), || {
        let page = http_get(&url("/metrics"), T).ok()?.body;
        page.lines()
            .any(|l| {
                l.starts_with("etcdmon_alerts_firing{")
                    && l.contains("cluster=\"staging-1\"")
                    && l.contains("severity=\"warning\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    })
    .await;
    assert!(
        firing.is_some(),
        "cluster_not_reporting not firing for staging-1"
    );
    // ...and went out on the live stream as it fired.
    let on_stream = |w: &[String]| {
        let data = json(w[1].strip_prefix("data: ").unwrap_or(""));
        w[0] == "event: alert"
            && data["rule"] == "cluster_not_reporting"
            && data["labels"]["cluster"] == "staging-1"
            && data["state"] == "firing"
    };
    let streamed = common::eventually(Duration::from_secs(5), || {
        let lines = live.lock().expect("lock").clone();
        lines.windows(2).any(on_stream).then_some(())
    })
    .await;
    assert!(
        streamed.is_some(),
        "not on the stream: {:?}",
        live.lock().expect("lock")
    );

    // Bad bodies and names say what is wrong.
    for (path, body) in [
        ("/api/v1/clusters/staging-1", r#"{"regoin": "eu"}"#),
        ("/api/v1/clusters/staging-1", r#"{"members": [""]}"#),
        ("/api/v1/clusters/staging-1", "not json"),
    ] {
        let r = http_put_json(&url(path), body, T).expect("PUT");
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(json(&r.body)["error"].is_string(), "{}", r.body);
    }
    // The config file's registration is the file's.
    let r = http_put_json(&url("/api/v1/clusters/from-file"), "{}", T).expect("PUT");
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http_delete(&url("/api/v1/clusters/from-file"), T).expect("DELETE");
    assert_eq!(r.status, 409, "{}", r.body);

    // Kept across a restart.
    assert!(collector.terminate().success());
    collector.spawn();
    let (status, c) = shown(&collector);
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["registration"]["region"], "eu-west", "{c}");

    // Dropped: gone, and a second drop is a 404.
    let r = http_delete(&collector.url("/api/v1/clusters/staging-1"), T).expect("DELETE");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(shown(&collector).0, 404);
    let r = http_delete(&collector.url("/api/v1/clusters/staging-1"), T).expect("DELETE");
    assert_eq!(r.status, 404, "{}", r.body);
}
