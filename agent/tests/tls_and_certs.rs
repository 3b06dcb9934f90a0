//! TLS towards etcd (client certificate auth), certificate expiry, and the
//! `tls` failure kind.

use etcdmon_agent::probes::certs::{CertFile, CertRoleConfig};
use etcdmon_agent::runner::Probes;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::AgentConfig;
use etcdmon_proto::v1::{report::Body, CertRole, ErrorKind};
use etcdmon_testkit::{generate_tls_with, EtcdCluster, Validity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_member_is_watched_and_certificates_expire_in_the_expected_days() {
    let dir = tempfile::tempdir().expect("tmp");
    // A server certificate about to expire under a long-lived CA: the files the
    // agent is given (CA, client) say nothing about it.
    let tls = generate_tls_with(
        dir.path(),
        Validity {
            ca_days: 3650,
            server_days: 5,
            client_days: 30,
        },
    )
    .expect("certs");
    let cluster = EtcdCluster::builder()
        .members(1)
        .separate_metrics_listener(true)
        .client_tls(&tls)
        .start()
        .expect("start etcd");
    let m = cluster.member(0);
    assert!(m.client_url.starts_with("https://"));

    let mut cfg = AgentConfig::default();
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.metrics_url = m.metrics_url.clone();
    cfg.etcd.tls.ca = Some(tls.ca_cert.clone());
    cfg.etcd.tls.cert = Some(tls.client_cert.clone());
    cfg.etcd.tls.key = Some(tls.client_key.clone());
    cfg.certs.files = vec![CertFile {
        path: tls.server_cert.clone(),
        role: CertRoleConfig::Server,
    }];
    cfg.fsync.enabled = false;
    let mut agent = Probes::new(&cfg, AgentMetrics::new()).expect("agent");
    let reports = agent.collect_once().await;

    let status = reports
        .iter()
        .find_map(|r| match &r.body {
            Some(Body::Status(s)) => Some(s),
            _ => None,
        })
        .expect("status");
    assert!(status.reachable, "{:?}", status.failures);

    let certs = reports
        .iter()
        .find_map(|r| match &r.body {
            Some(Body::Certs(c)) => Some(c),
            _ => None,
        })
        .expect("certs");
    let found: Vec<(String, i32)> = certs
        .certificates
        .iter()
        .map(|c| (c.path.clone(), c.role))
        .collect();
    let served_url = m.client_url.trim_end_matches('/').to_owned();
    assert_eq!(
        found,
        [
            (tls.ca_cert.display().to_string(), CertRole::Ca as i32),
            (
                tls.client_cert.display().to_string(),
                CertRole::Client as i32
            ),
            (
                tls.server_cert.display().to_string(),
                CertRole::Server as i32
            ),
            // What the member serves, read by a handshake (etcd requires client
            // certificates here; the agent presents none and still reads it).
            (served_url, CertRole::Server as i32),
        ]
    );
    let days: Vec<f64> = certs.certificates.iter().map(|c| c.days_left).collect();
    for (c, (low, high)) in
        certs
            .certificates
            .iter()
            .zip([(3649.0, 3650.1), (29.0, 30.1), (4.0, 5.1), (4.0, 5.1)])
    {
        assert!(c.failure.is_none(), "{}: {:?}", c.path, c.failure);
        assert!((low..=high).contains(&c.days_left), "{}: {days:?}", c.path);
    }

    // Beside the member, its own flags name its certificate files.
    let local = etcdmon_agent::discover_local_etcd(&m.client_url).expect("local etcd");
    assert!(
        local
            .cert_files
            .contains(&(tls.server_cert.clone(), CertRoleConfig::Server)),
        "{local:?}"
    );
    assert!(
        local
            .cert_files
            .contains(&(tls.ca_cert.clone(), CertRoleConfig::Ca)),
        "{local:?}"
    );

    // Without the CA the server certificate cannot be verified: kind tls.
    let mut bad = cfg.clone();
    bad.etcd.tls.ca = None;
    bad.certs.enabled = false;
    let mut agent = Probes::new(&bad, AgentMetrics::new()).expect("agent");
    let reports = agent.collect_once().await;
    let status = reports
        .iter()
        .find_map(|r| match &r.body {
            Some(Body::Status(s)) => Some(s),
            _ => None,
        })
        .expect("status");
    assert!(!status.reachable);
    assert!(
        status
            .failures
            .iter()
            .all(|f| f.kind == ErrorKind::Tls as i32),
        "{:?}",
        status.failures
    );
}

#[test]
fn missing_tls_file_fails_at_start_naming_the_field() {
    let mut cfg = AgentConfig::default();
    cfg.etcd.tls.ca = Some("/nonexistent/ca.pem".into());
    let err = Probes::new(&cfg, AgentMetrics::new())
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("etcd.tls.ca") && msg.contains("/nonexistent/ca.pem"),
        "{msg}"
    );
}
