//! Network partitions between real etcd members under `etcdmon up --webhook`,
//! made by the testkit's peer proxies ([`etcdmon_testkit::PeerNet`]): a member's
//! peer traffic is dropped both ways while its agent still reaches it.
//!
//! - One member of three cut off (a minority): `member_isolated` names it, and
//!   nothing else pages (its disagreeing view is explained; the cluster still
//!   has a quorum and a leader).
//! - Two members cut off (no majority anywhere): `no_leader` pages, and no
//!   member is blamed.

use std::time::{Duration, Instant};

use etcdmon_testkit::{EtcdCluster, HttpSink};

mod support;
use support::{notified, paged, wait_paged, Up};

fn start() -> (EtcdCluster, HttpSink, Up) {
    // With pre-vote (etcd 3.5's default, a flag in 3.4) a member that comes
    // back does not force an election with the term it raised while cut off;
    // without it, a healed partition costs the cluster its leader for a second
    // or two, which `no_leader` rightly pages.
    let etcd = EtcdCluster::builder()
        .members(3)
        .peer_net(true)
        .arg("--pre-vote")
        .start()
        .expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[],
    );
    up.wait_healthy(3);
    (etcd, sink, up)
}

#[test]
fn a_member_cut_off_from_its_peers_is_named_within_seconds_and_nothing_else_pages() {
    let (etcd, sink, up) = start();
    let net = etcd.peer_net().expect("peer net");
    // Not the leader: the cluster keeps its leader and quorum.
    let leader = support::poll(Duration::from_secs(20), || {
        etcd.leader_index().ok().flatten()
    })
    .expect("a leader");
    let victim = (leader + 1) % 3;
    let name = etcd.member(victim).name.clone();
    let cut_at = Instant::now();
    net.isolate(victim);
    wait_paged(&sink, &up, ("member_isolated", "firing", &name), 30);
    println!("isolated {name} paged after {:?}", cut_at.elapsed());
    let alert = sink
        .requests("/hook")
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["labels"]["rule"] == "member_isolated")
        .expect("the alert");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    // The other agents' peer probes name it (its peer port is closed), before
    // or after its own view changes at its election timeout.
    assert!(
        description.contains("cannot connect to its peer port, while they reach one another")
            && description.contains(&name),
        "{description}"
    );
    // Long enough for members_disagree (10 s) and the peer probes to have spoken.
    std::thread::sleep(Duration::from_secs(12));
    net.heal(victim);
    wait_paged(&sink, &up, ("member_isolated", "resolved", &name), 30);
    std::thread::sleep(Duration::from_secs(3));
    let expected = [
        (
            "member_isolated".to_owned(),
            "firing".to_owned(),
            name.clone(),
        ),
        (
            "member_isolated".to_owned(),
            "resolved".to_owned(),
            name.clone(),
        ),
    ];
    let critical: Vec<_> = notified(&sink.requests("/hook"))
        .into_iter()
        .filter(|(_, _, labels)| labels["severity"] == "critical")
        .map(|(r, s, labels)| (r, s, labels["member"].as_str().unwrap_or("").to_owned()))
        .collect();
    let bodies: Vec<String> = sink
        .requests("/hook")
        .iter()
        .map(|r| r.json().to_string())
        .collect();
    assert_eq!(
        critical,
        expected,
        "notifications: {bodies:#?}\nmembers: {:?}\n{}",
        up.members(),
        up.log()
    );
}

#[test]
fn two_members_cut_off_page_no_leader_and_blame_nobody() {
    let (etcd, sink, up) = start();
    let net = etcd.peer_net().expect("peer net");
    net.isolate(1);
    net.isolate(2);
    wait_paged(&sink, &up, ("no_leader", "firing", ""), 30);
    std::thread::sleep(Duration::from_secs(5));
    net.heal(1);
    net.heal(2);
    wait_paged(&sink, &up, ("no_leader", "resolved", ""), 60);
    std::thread::sleep(Duration::from_secs(3));
    let blamed: Vec<_> = paged(&sink)
        .into_iter()
        .filter(|(r, _, _)| r == "member_isolated" || r == "member_unreachable")
        .collect();
    assert!(blamed.is_empty(), "{blamed:?}\n{}", up.log());
}
