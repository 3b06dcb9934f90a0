//! Maintenance windows against a real cluster under `etcdmon up --webhook`,
//! opened with the `etcdmon maintenance` command: a window for member m1 mutes
//! m1's alerts while it is down, and nothing outside its scope (quorum loss,
//! another member); the muted alerts show the window in the alert history; the
//! window ends on its own, after which m1's alerts page again.

use std::process::Command;
use std::time::Duration;

use etcdmon_testkit::{http_get, EtcdCluster, HttpSink};

mod support;
use support::{paged, wait_paged, Up};

/// Runs `etcdmon maintenance ARGS` against `up`; its stdout (fails on error).
fn maintenance(up: &Up, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .arg("maintenance")
        .args(["--api", &up.api("")])
        .args(args)
        .output()
        .expect("run etcdmon maintenance");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_member_window_mutes_that_member_only_shows_in_history_and_ends_on_its_own() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[("ETCDMON_ALERTER_FLAPPING__MAX_TRANSITIONS", "0")],
    );
    up.wait_healthy(3);
    let opened = maintenance(
        &up,
        &[
            "start",
            "--cluster",
            "local",
            "--member",
            "m1",
            "--for",
            "25s",
            "--reason",
            "kernel update",
        ],
    );
    assert!(
        opened.starts_with("mw-") && opened.contains("local/m1") && opened.contains("active"),
        "{opened}"
    );
    let id = opened.split_whitespace().next().expect("id").to_owned();
    // The alerter reads silences every second.
    std::thread::sleep(Duration::from_millis(1_500));

    // m1 down and back: planned, nothing notified.
    etcd.kill(1).expect("kill m1");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(paged(&sink), Vec::new(), "{}", up.log());
    // m2 down as well: quorum is lost, which no window hides.
    etcd.kill(2).expect("kill m2");
    wait_paged(&sink, &up, ("quorum_lost", "firing", ""), 30);
    etcd.restart_together(&[1, 2]).expect("restart");
    wait_paged(&sink, &up, ("quorum_lost", "resolved", ""), 30);
    up.wait_healthy(3);
    // m2 alone: outside the window.
    etcd.kill(2).expect("kill m2");
    wait_paged(&sink, &up, ("member_unreachable", "firing", "m2"), 30);
    etcd.restart(2).expect("restart m2");
    wait_paged(&sink, &up, ("member_unreachable", "resolved", "m2"), 30);
    assert!(
        !paged(&sink).iter().any(|(_, _, m)| m == "m1"),
        "m1 was muted: {:?}",
        paged(&sink)
    );

    // The history shows the window and what it muted.
    let history = http_get(
        &up.api("/api/v1/alerts/history?from=now-10m"),
        Duration::from_secs(5),
    )
    .expect("history");
    let history: serde_json::Value = serde_json::from_str(&history.body).expect("json");
    assert_eq!(history["maintenance"][0]["id"], id.as_str(), "{history}");
    assert_eq!(history["maintenance"][0]["reason"], "kernel update");
    let muted = history["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["rule"] == "member_unreachable" && t["labels"]["member"] == "m1")
        .all(|t| t["silenced_by"][0] == id.as_str());
    assert!(muted, "{history}");

    // It ends on its own; then m1's failures page again.
    support::poll(Duration::from_secs(30), || {
        maintenance(&up, &["list"])
            .contains("expired")
            .then_some(())
    })
    .expect("the window ended");
    std::thread::sleep(Duration::from_millis(1_500));
    etcd.kill(1).expect("kill m1");
    wait_paged(&sink, &up, ("member_unreachable", "firing", "m1"), 30);

    // One ended early by hand.
    let second = maintenance(
        &up,
        &[
            "start",
            "--cluster",
            "local",
            "--for",
            "1h",
            "--reason",
            "upgrade",
        ],
    );
    let second_id = second.split_whitespace().next().expect("id").to_owned();
    let ended = maintenance(&up, &["end", &second_id]);
    assert!(ended.contains("expired"), "{ended}");
}
