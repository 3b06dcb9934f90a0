//! The consistency check under `etcdmon up --webhook`, on a real cluster: the
//! members' `HashKV` at a common revision is equal and quiet while their data
//! agree, and a member whose data differ (restored from an old snapshot while
//! its peers ran on: it applies the log again on top of the snapshot) is paged
//! as `data_inconsistent`, named, and resolved once it is removed.

use std::time::Duration;

use etcdmon_testkit::{EtcdCluster, HttpSink, SinkRequest};

mod support;
use support::{notified, poll, Up};

/// Critical alerts notified so far, but for those in `expected` (rule, member).
fn unexpected_critical(sink: &HttpSink, expected: &[(&str, &str)]) -> Vec<String> {
    sink.requests("/hook")
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["severity"] == "critical")
        .map(|a| {
            let l = &a["labels"];
            (
                l["rule"].as_str().unwrap_or("").to_owned(),
                l["member"].as_str().unwrap_or("").to_owned(),
            )
        })
        .filter(|(r, m)| !expected.contains(&(r.as_str(), m.as_str())))
        .map(|(r, m)| format!("{r}{{member={m}}}"))
        .collect()
}

/// Whether `data_inconsistent` for m2 was notified with `status`.
fn has(requests: &[SinkRequest], status: &str) -> bool {
    notified(requests)
        .iter()
        .any(|(rule, s, l)| rule == "data_inconsistent" && s == status && l["member"] == "m2")
}

fn put_keys(etcd: &EtcdCluster, prefix: &str, n: usize) {
    for k in 0..n {
        etcd.etcdctl(&["put", &format!("{prefix}/{k}"), &format!("value {k}")])
            .expect("put");
    }
}

#[test]
fn equal_hashes_are_quiet_and_a_member_restored_from_an_old_snapshot_is_paged() {
    let mut etcd = EtcdCluster::builder().members(3).start().expect("etcd");
    let snapshots = tempfile::tempdir().expect("temp dir");
    let snapshot = snapshots.path().join("old.db");
    put_keys(&etcd, "before", 20);
    etcd.snapshot_save(2, &snapshot).expect("snapshot");
    put_keys(&etcd, "after", 20);

    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[("ETCDMON_COLLECTOR_CONSISTENCY__INTERVAL", "2s")],
    );
    up.wait_healthy(3);

    // Every member answers at the same revision with the same hash; nothing fires.
    let agreed = poll(Duration::from_secs(30), || {
        let members = up.members()?;
        let hashes: Vec<(i64, u64)> = members
            .values()
            .filter_map(|m| {
                let h = &m["kv_hash"];
                Some((h["revision"].as_i64()?, h["hash"].as_u64()?))
            })
            .collect();
        (hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0])).then(|| hashes[0])
    });
    let (revision, _) = agreed.unwrap_or_else(|| {
        panic!(
            "the members' hashes never agreed at one revision: {:?}\n{}",
            up.members(),
            up.log()
        )
    });
    assert!(revision > 40, "hashed at revision {revision}");
    // Two more checks, still quiet.
    std::thread::sleep(Duration::from_secs(5));
    let so_far = notified(&sink.requests("/hook"));
    assert!(so_far.is_empty(), "notified while consistent: {so_far:?}");

    // m2 goes back to its old snapshot under the same member id.
    etcd.restore_member_from(2, &snapshot).expect("restore m2");
    let fired = sink.wait_for("/hook", Duration::from_secs(60), |r| has(r, "firing"));
    assert!(
        has(&fired, "firing"),
        "data_inconsistent not paged for m2: {:?}\nmembers: {:?}\n{}",
        notified(&sink.requests("/hook")),
        up.members(),
        up.log()
    );
    // Its restart is the only other critical page; the members that kept
    // their data are not named.
    let other = unexpected_critical(
        &sink,
        &[("data_inconsistent", "m2"), ("member_unreachable", "m2")],
    );
    assert!(other.is_empty(), "unexpected critical alerts: {other:?}");
    let description = sink
        .requests("/hook")
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["labels"]["rule"] == "data_inconsistent")
        .map(|a| a["annotations"]["description"].to_string())
        .unwrap_or_default();
    assert!(
        description.contains("m0, m1 ") && description.contains("m2 "),
        "{description}"
    );

    // The remedy: the member leaves the cluster (to be added back empty).
    let id = up.members().expect("members")["m2"]["id"]
        .as_str()
        .expect("m2's id")
        .to_owned();
    // etcd refuses while its leader has not seen a quorum for 5 s (the leader
    // moved when m2 was restored).
    let removed = poll(Duration::from_secs(30), || {
        etcd.etcdctl(&["member", "remove", &id]).ok()
    });
    assert!(removed.is_some(), "member remove m2 kept failing");
    let resolved = sink.wait_for("/hook", Duration::from_secs(30), |r| has(r, "resolved"));
    assert!(
        has(&resolved, "resolved"),
        "data_inconsistent not resolved after m2 left: {:?}\n{}",
        notified(&sink.requests("/hook")),
        up.log()
    );
    let other = unexpected_critical(
        &sink,
        &[("data_inconsistent", "m2"), ("member_unreachable", "m2")],
    );
    assert!(other.is_empty(), "unexpected critical alerts: {other:?}");
}
