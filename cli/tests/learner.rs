//! Learner members (`member add --learner`, etcd 3.5 here) under `etcdmon up --webhook`:
//! shown as learners, not counted towards quorum, and voters once promoted.

use std::time::Duration;

use etcdmon_testkit::{EtcdCluster, EtcdVersion, HttpSink};

mod support;
use support::{notified, poll, Up};

#[test]
fn a_learner_is_shown_as_one_and_its_failure_leaves_the_quorum_alone() {
    let mut etcd = EtcdCluster::builder()
        .members(3)
        .version(EtcdVersion::V3_5)
        .start()
        .expect("etcd");
    let learner = etcd.add_member(true).expect("add a learner");
    let name = etcd.member(learner).name.clone();
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[],
    );
    up.wait_healthy(4);
    let members = up.members().expect("members");
    assert_eq!(members[&name]["is_learner"], true, "{members:?}");
    assert_eq!(
        members.values().filter(|m| m["is_learner"] == true).count(),
        1,
        "{members:?}"
    );

    // The learner hangs: its own page, but three voters of three still answer.
    etcd.stop(learner).expect("SIGSTOP");
    let paged = sink.wait_for("/hook", Duration::from_secs(20), |r| {
        notified(r)
            .iter()
            .any(|(rule, _, l)| rule == "member_unreachable" && l["member"] == name.as_str())
    });
    std::thread::sleep(Duration::from_secs(2));
    etcd.resume(learner).expect("SIGCONT");
    let rules: Vec<String> = notified(&sink.requests("/hook"))
        .into_iter()
        .map(|(rule, _, _)| rule)
        .collect();
    assert!(
        !paged.is_empty(),
        "the hung learner was not paged\n{}",
        up.log()
    );
    assert!(
        !rules
            .iter()
            .any(|r| r.starts_with("quorum") || r == "members_disagree"),
        "{rules:?}\n{}",
        up.log()
    );

    // Promoted, it is a voter like the others.
    etcd.promote(learner).expect("promote");
    let voter = poll(Duration::from_secs(30), || {
        let m = up.members()?;
        (m[&name]["is_learner"] == false).then_some(())
    });
    assert!(voter.is_some(), "{:?}\n{}", up.members(), up.log());
}
