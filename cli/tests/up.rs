//! `etcdmon up` as an operator runs it: pointed at one member of a real
//! 3-member cluster, it discovers all three, serves their live state and
//! history on one port, and stops cleanly on SIGTERM.

use etcdmon_testkit::{free_port, http_get, EtcdCluster};
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::{poll, stop};

#[test]
fn up_watches_every_member_and_stops_on_sigterm() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .args(["up", "--etcd", &etcd.member(1).client_url])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cluster",
            "first-look",
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn etcdmon up");
    let api = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let mut last = String::new();
    let clusters = poll(Duration::from_secs(30), || {
        let r = http_get(&api("/api/v1/clusters"), Duration::from_secs(2)).ok()?;
        last = r.body.clone();
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let members = v["clusters"][0]["members"].as_object()?.clone();
        (members.len() == 3 && members.values().all(|m| m["healthy"] == true)).then_some(v)
    });
    let log_text = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    let clusters =
        clusters.unwrap_or_else(|| panic!("not all members healthy: {last}\n{}", log_text()));
    assert_eq!(clusters["clusters"][0]["name"], "first-look");

    // History comes from the embedded store, for every member.
    for m in etcd.members() {
        let url = api(&format!(
            "/api/v1/clusters/first-look/metrics/history?metric=etcdmon_status_raft_term&member={}",
            m.name
        ));
        let ok = poll(Duration::from_secs(15), || {
            let r = http_get(&url, Duration::from_secs(2)).ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (!v["series"][0]["points"].as_array()?.is_empty()).then_some(())
        });
        assert!(ok.is_some(), "no history for {}", m.name);
    }
    // Local members get host metrics (data dir found from etcd's flags).
    let fsync = api("/api/v1/clusters/first-look/metrics/history?metric=etcdmon_fsync_probe_up");
    let ok = poll(Duration::from_secs(20), || {
        let r = http_get(&fsync, Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["series"].as_array()?.len() == 3).then_some(())
    });
    assert!(
        ok.is_some(),
        "fsync probe did not run for every local member"
    );

    // A page without script links the API and the docs.
    let home = http_get(&api("/status"), Duration::from_secs(2)).expect("get /status");
    assert_eq!(home.status, 200);
    assert!(
        home.body.contains("<title>etcd-monitor</title>")
            && home.body.contains("first-look")
            && home.body.contains("href=\"/api/v1/clusters\"")
            && home.body.contains("href=\"/docs/api.md\""),
        "{}",
        home.body
    );
    let doc = http_get(&api("/docs/api.md"), Duration::from_secs(2)).expect("get doc");
    assert_eq!(doc.status, 200);
    assert!(doc.body.starts_with("# REST API"), "{}", doc.body);

    // A bad request is a 400 with a JSON error.
    let r = http_get(
        &api("/api/v1/clusters/first-look/metrics/history"),
        Duration::from_secs(2),
    )
    .expect("get");
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("\"error\"") && r.body.contains("metric"),
        "{}",
        r.body
    );

    // Absurd ranges are a 400, not an overflow (it panicked in debug builds and
    // passed every bound in release).
    let r = http_get(
        &api("/api/v1/clusters/first-look/metrics/history?metric=etcdmon_status_raft_term&from=now-300y&to=1e300"),
        Duration::from_secs(2),
    )
    .expect("get");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("year 9999"), "{}", r.body);

    let out = stop(&mut child, &log_text);
    assert!(
        out.contains("watching m0") && out.contains("watching m2"),
        "{out}"
    );
    assert!(dir.path().join("data/etcdmon.sqlite").exists());
}

#[test]
fn up_against_nothing_fails_with_the_reason() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .args(["up", "--etcd", &format!("http://127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(tempfile::tempdir().expect("tmp").path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn up_works_against_a_tls_cluster_with_client_certificates() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = etcdmon_testkit::generate_tls(dir.path(), 30).expect("certs");
    let etcd = EtcdCluster::builder()
        .members(1)
        .separate_metrics_listener(true)
        .client_tls(&tls)
        .start()
        .expect("etcd");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .args(["up", "--etcd", &etcd.member(0).client_url])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--cacert")
        .arg(&tls.ca_cert)
        .arg("--cert")
        .arg(&tls.client_cert)
        .arg("--key")
        .arg(&tls.client_key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let url = format!("http://127.0.0.1:{port}/api/v1/clusters");
    let healthy = poll(Duration::from_secs(30), || {
        let r = http_get(&url, Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["clusters"][0]["members"]["m0"]["healthy"] == true).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy.is_some(), "TLS member never healthy");
}

/// `etcdmon up --webhook URL`: the embedded alerter (in-process channel, same store)
/// sends a killed member's alert to the webhook once, its recovery once, and the
/// alert and its deliveries show in the API.
#[test]
fn up_with_a_webhook_notifies_a_killed_member_once_and_its_recovery_once() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let sink = etcdmon_testkit::HttpSink::start().expect("sink");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .args(["up", "--etcd", &etcd.member(0).client_url])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--webhook", &sink.url("/hook")])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn etcdmon up");
    let log_text = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    let api = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let healthy = poll(Duration::from_secs(30), || {
        let r = http_get(&api("/api/v1/clusters"), Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let members = v["clusters"][0]["members"].as_object()?.clone();
        (members.len() == 3 && members.values().all(|m| m["healthy"] == true)).then_some(())
    });
    assert!(healthy.is_some(), "{}", log_text());

    let victim = etcd.member(2).name.clone();
    let states = |requests: &[etcdmon_testkit::SinkRequest]| -> Vec<String> {
        requests
            .iter()
            .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| {
                a["labels"]["rule"] == "member_unreachable"
                    && a["labels"]["member"] == victim.as_str()
            })
            .map(|a| a["status"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    etcd.kill(2).expect("kill");
    let got = sink.wait_for("/hook", Duration::from_secs(20), |r| !states(r).is_empty());
    assert_eq!(states(&got), ["firing"], "{}", log_text());
    etcd.restart(2).expect("restart");
    sink.wait_for("/hook", Duration::from_secs(30), |r| states(r).len() >= 2);
    // Nothing more comes (no duplicate, no repeat).
    std::thread::sleep(Duration::from_secs(2));
    let got = sink.requests("/hook");
    assert_eq!(states(&got), ["firing", "resolved"], "{}", log_text());

    let r = http_get(&api("/api/v1/alerts/history"), Duration::from_secs(2)).expect("history");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let delivered = v["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["receiver"] == "up-webhook" && d["outcome"] == "ok")
        .count();
    assert!(delivered >= 2, "{v}");

    // The cluster's timeline holds the member's death and return, and the
    // alert's firing and resolution between them.
    let r = http_get(
        &api("/api/v1/clusters/local/events?from=now-10m"),
        Duration::from_secs(2),
    )
    .expect("events");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    // Oldest first: the victim's own events and its member_unreachable alert.
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .filter(|e| e["member"] == victim.as_str())
        .filter(|e| {
            let message = e["message"].as_str().unwrap_or("");
            e["kind"].as_str().is_some_and(|k| !k.starts_with("alert_"))
                || message.starts_with("member_unreachable ")
        })
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let firing = kinds.iter().position(|k| *k == "alert_firing");
    let resolved = kinds.iter().position(|k| *k == "alert_resolved");
    let down = kinds.iter().position(|k| *k == "member_down");
    assert!(
        down.is_some() && firing.is_some() && resolved.is_some() && firing < resolved,
        "{v}"
    );

    let out = stop(&mut child, &log_text);
    assert!(out.contains("receiver(s) up-webhook"), "{out}");
}

/// Stopping the monitor is not an incident: with a healthy 3-member cluster,
/// SIGTERM makes no alert transition, neither stored (the embedded alerter
/// records every transition it gets) nor logged, although every agent stops.
#[test]
fn sigterm_with_a_healthy_cluster_records_no_alert_transition() {
    use etcdmon_storage::AlertStore as _;
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .args(["up", "--etcd", &etcd.member(0).client_url])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn etcdmon up");
    let log_text = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    let healthy = poll(Duration::from_secs(30), || {
        let r = http_get(
            &format!("http://127.0.0.1:{port}/api/v1/clusters"),
            Duration::from_secs(2),
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let members = v["clusters"][0]["members"].as_object()?.clone();
        (members.len() == 3 && members.values().all(|m| m["healthy"] == true)).then_some(())
    });
    assert!(healthy.is_some(), "{}", log_text());
    // A few rule rounds on the healthy cluster.
    std::thread::sleep(Duration::from_secs(3));

    stop(&mut child, &log_text);
    let log = log_text();
    assert!(!log.contains("alert transition"), "{log}");
    let store = etcdmon_storage::sqlite::SqliteStorage::open(
        dir.path().join("data/etcdmon.sqlite"),
        etcdmon_storage::Retention::default(),
    )
    .expect("open the store");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let transitions = rt
        .block_on(store.latest_transitions(0))
        .expect("read transitions");
    assert!(
        transitions.is_empty(),
        "stopping recorded {transitions:?}\n{log}"
    );
}
