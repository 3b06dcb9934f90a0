//! etcd with authentication enabled: the agent logs in with a password read
//! from a file (never printed), and a wrong password is the `auth` failure kind.

use etcdmon_agent::runner::Probes;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::AgentConfig;
use etcdmon_core::secret::Secret;
use etcdmon_proto::v1::{report::Body, ErrorKind, EtcdStatus, Report};
use etcdmon_testkit::EtcdCluster;

const PASSWORD: &str = "etcd-root-9f3b";

fn status(reports: &[Report]) -> EtcdStatus {
    reports
        .iter()
        .find_map(|r| match &r.body {
            Some(Body::Status(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("a status report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_a_file_logs_in_and_a_wrong_one_is_an_auth_failure() {
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let m = cluster.member(0);
    let mut admin = etcd_client::Client::connect([m.client_url.as_str()], None)
        .await
        .expect("connect");
    admin
        .user_add("root", PASSWORD, None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable auth");

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("etcd-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write");
    let mut cfg = AgentConfig::default();
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.metrics_url = m.metrics_url.clone();
    cfg.etcd.username = Some("root".into());
    cfg.etcd.password_file = Some(file);
    cfg.fsync.enabled = false;
    cfg.validate().expect("valid");
    let reports = Probes::new(&cfg, AgentMetrics::new())
        .expect("agent")
        .collect_once()
        .await;
    let s = status(&reports);
    assert!(s.reachable, "{:?}", s.failures);

    let mut wrong = cfg.clone();
    wrong.etcd.password_file = None;
    wrong.etcd.password = Some(Secret::new("not-the-password"));
    assert!(
        !format!("{wrong:?}").contains("not-the-password"),
        "the config's Debug shows the password"
    );
    let reports = Probes::new(&wrong, AgentMetrics::new())
        .expect("agent")
        .collect_once()
        .await;
    let s = status(&reports);
    assert!(!s.reachable);
    assert!(
        s.failures.iter().any(|f| f.kind == ErrorKind::Auth as i32),
        "{:?}",
        s.failures
    );

    let mut unreadable = cfg.clone();
    unreadable.etcd.password_file = Some("/nonexistent/etcd-password".into());
    let err = Probes::new(&unreadable, AgentMetrics::new())
        .err()
        .expect("an unreadable password file fails the start");
    assert!(format!("{err:#}").contains("etcd.password_file"), "{err:#}");
}
