//! The edges of incidents, against real etcd clusters under `etcdmon up --webhook`:
//! what reaches the receiver when two members die together and come back, when
//! two members raise NOSPACE, when the leader hangs and a new one is elected, and
//! when the certificate a member serves is about to expire.
//!
//! Flap detection is turned off (`ETCDMON_ALERTER_FLAPPING__MAX_TRANSITIONS=0`)
//! where a test repeats a fault ten times: the point is what each repetition
//! notifies, not that ten of them in a minute are flapping.

use std::time::Duration;

use etcdmon_testkit::{generate_tls_with, EtcdCluster, HttpSink, SinkRequest, Validity};

mod support;
use support::{notified, poll, Up};

const NO_FLAPPING: (&str, &str) = ("ETCDMON_ALERTER_FLAPPING__MAX_TRANSITIONS", "0");

/// Alerts of `rule` notified with `status` in `requests`.
fn count(requests: &[SinkRequest], rule: &str, status: &str) -> usize {
    notified(requests)
        .iter()
        .filter(|(r, s, _)| r == rule && s == status)
        .count()
}

/// The leader's index, once exactly one member claims it.
fn leader(etcd: &EtcdCluster) -> usize {
    poll(Duration::from_secs(20), || {
        etcd.leader_index().ok().flatten()
    })
    .expect("a leader")
}

/// Both followers of a 3-member cluster die at once and come back together, ten
/// times: each time exactly one critical notification (`quorum_lost`) and one
/// resolution, and never a member's own page, although each member's
/// `member_unreachable` fires and resolves around the cause.
#[test]
fn a_quorum_loss_is_one_page_and_one_resolution_ten_times_over() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[NO_FLAPPING],
    );
    up.wait_healthy(3);
    for round in 1..=10 {
        let l = leader(&etcd);
        let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
        for &f in &followers {
            etcd.kill(f).expect("kill");
        }
        let paged = sink.wait_for("/hook", Duration::from_secs(20), |r| {
            count(r, "quorum_lost", "firing") >= round
        });
        assert_eq!(
            count(&paged, "quorum_lost", "firing"),
            round,
            "round {round}\n{}",
            up.log()
        );
        etcd.restart_together(&followers).expect("restart");
        sink.wait_for("/hook", Duration::from_secs(30), |r| {
            count(r, "quorum_lost", "resolved") >= round
        });
        assert_eq!(
            count(&sink.requests("/hook"), "quorum_lost", "resolved"),
            round,
            "round {round}\n{}",
            up.log()
        );
        up.wait_healthy(3);
    }
    // Longer than the inhibition linger: a released symptom would show now.
    std::thread::sleep(Duration::from_secs(3));
    let critical: Vec<(String, String)> = notified(&sink.requests("/hook"))
        .into_iter()
        .filter(|(_, _, labels)| labels["severity"] == "critical")
        .map(|(rule, status, _)| (rule, status))
        .collect();
    let expected: Vec<(String, String)> = (0..10)
        .flat_map(|_| {
            [
                ("quorum_lost".to_owned(), "firing".to_owned()),
                ("quorum_lost".to_owned(), "resolved".to_owned()),
            ]
        })
        .collect();
    assert_eq!(critical, expected, "{}", up.log());
    // The member pages were judged (and inhibited), not missing.
    let log = up.log();
    assert!(
        log.contains("rule=\"member_unreachable\"") || log.contains("rule=member_unreachable"),
        "{log}"
    );
}

/// NOSPACE raised by two members, a second apart, is one page (naming the first), with
/// `alarm="NOSPACE"` (so inhibit rules can match it); disarmed, one resolution.
#[test]
fn nospace_on_two_members_is_one_page() {
    let etcd = EtcdCluster::start(3).expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[],
    );
    up.wait_healthy(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
        let mut client = etcd_client::Client::connect([etcd.member(0).client_url.as_str()], None)
            .await
            .expect("connect");
        let ids: Vec<u64> = client
            .member_list()
            .await
            .expect("members")
            .members()
            .iter()
            .map(|m| m.id())
            .collect();
        // As etcd does when a member finds its backend over the quota: each raises
        // its own alarm, the second one a status round later.
        for id in &ids[..2] {
            let mut on = AlarmOptions::new();
            on.with_member(*id);
            client
                .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(on))
                .await
                .expect("activate NOSPACE");
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
    });
    sink.wait_for("/hook", Duration::from_secs(20), |r| {
        count(r, "alarm_active", "firing") >= 1
    });
    // Longer than a status round and the group interval: a second page would show.
    std::thread::sleep(Duration::from_secs(3));
    let alarms: Vec<serde_json::Value> = notified(&sink.requests("/hook"))
        .into_iter()
        .filter(|(rule, _, _)| rule == "alarm_active")
        .map(|(_, _, labels)| labels)
        .collect();
    assert_eq!(alarms.len(), 1, "{alarms:?}\n{}", up.log());
    assert_eq!(alarms[0]["alarm"], "NOSPACE", "{alarms:?}");
    let summary = sink
        .requests("/hook")
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["labels"]["rule"] == "alarm_active")
        .map(|a| a["annotations"]["summary"].clone())
        .expect("summary");
    // Paged when the first member raised it, naming that member.
    let summary = summary.as_str().unwrap_or("");
    assert!(
        summary.starts_with("etcd alarm NOSPACE in local (raised by m"),
        "{summary}"
    );

    etcd.etcdctl(&["alarm", "disarm"]).expect("disarm");
    sink.wait_for("/hook", Duration::from_secs(20), |r| {
        count(r, "alarm_active", "resolved") >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&sink.requests("/hook"), "alarm_active", "firing"), 1);
    assert_eq!(
        count(&sink.requests("/hook"), "alarm_active", "resolved"),
        1,
        "{}",
        up.log()
    );
}

/// The leader hangs (SIGSTOP) until the others elect a new one, then resumes, ten
/// times: each election leaves the cluster without a leader for a moment, which
/// is not an outage, so `no_leader` is never notified.
#[test]
fn a_leader_hung_and_resumed_ten_times_never_pages_no_leader() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let up = Up::start(
        &etcd.member(0).client_url,
        &["--webhook", &sink.url("/hook")],
        &[NO_FLAPPING],
    );
    up.wait_healthy(3);
    for round in 1..=10 {
        let old = leader(&etcd);
        etcd.stop(old).expect("SIGSTOP");
        // The others elect a new leader after the election timeout (1 s).
        let elected = poll(Duration::from_secs(10), || {
            etcd.leader_index().ok().flatten().filter(|l| *l != old)
        });
        assert!(elected.is_some(), "round {round}: no new leader");
        etcd.resume(old).expect("SIGCONT");
        up.wait_healthy(3);
    }
    std::thread::sleep(Duration::from_secs(2));
    let paged: Vec<_> = notified(&sink.requests("/hook"))
        .into_iter()
        .filter(|(rule, _, _)| rule == "no_leader")
        .collect();
    assert!(paged.is_empty(), "{paged:?}\n{}", up.log());
    // The hung leader itself was noticed: the test did hang it.
    assert!(
        count(&sink.requests("/hook"), "member_unreachable", "firing") >= 1,
        "{}",
        up.log()
    );
}

/// A TLS member whose server certificate expires in 5 days, under a CA and a
/// client certificate valid for 10 years: `cert_expiring` fires for the file etcd
/// was started with (found from its flags) and for the certificate it serves.
#[test]
fn a_server_certificate_about_to_expire_pages_within_a_minute() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = generate_tls_with(
        dir.path(),
        Validity {
            ca_days: 3650,
            server_days: 5,
            client_days: 3650,
        },
    )
    .expect("certs");
    let etcd = EtcdCluster::builder()
        .members(1)
        .separate_metrics_listener(true)
        .client_tls(&tls)
        .start()
        .expect("etcd");
    let sink = HttpSink::start().expect("sink");
    let (ca, cert, key) = (
        tls.ca_cert.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let url = etcd.member(0).client_url.trim_end_matches('/').to_owned();
    let up = Up::start(
        &url,
        &[
            "--webhook",
            &sink.url("/hook"),
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        &[],
    );
    // Which certificates fire, each once however many notifications list it (an
    // alert still firing is listed again when another of its group joins).
    let paths = |sink: &HttpSink| -> std::collections::BTreeSet<String> {
        notified(&sink.requests("/hook"))
            .into_iter()
            .filter(|(rule, status, _)| rule == "cert_expiring" && status == "firing")
            .map(|(_, _, labels)| labels["path"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let server_file = tls.server_cert.display().to_string();
    sink.wait_for("/hook", Duration::from_secs(60), |_| {
        let p = paths(&sink);
        p.contains(&server_file) && p.contains(&url)
    });
    let want = std::collections::BTreeSet::from([server_file, url]);
    assert_eq!(
        paths(&sink),
        want,
        "only the 5-day certificate fires\n{}",
        up.log()
    );
}
