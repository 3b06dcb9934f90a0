//! Only known agents write, and only for their own clusters: the collector
//! serves gRPC over TLS and takes a stream only with a client certificate or a
//! bearer token that `[[grpc.agents]]` grants, for a cluster the grant names.
//! Real agents (over TLS, with a token or a client certificate) report from a
//! real etcd member; raw streams prove each refusal, and that a report for
//! another cluster inside an authorized stream is refused and changes nothing.

mod common;

use common::{hello_of, member_batch};

use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_collector::config::{AgentGrant, CollectorConfig, GrpcTlsConfig};
use etcdmon_collector::{AlertSink, Collector, Listeners, Running};
use etcdmon_core::secret::Secret;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_proto::v1::ingest_service_client::IngestServiceClient;
use etcdmon_proto::v1::{stream_response, StreamRequest, StreamResponse};
use etcdmon_storage::open::Stores;
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::{Retention, Storage};
use etcdmon_testkit::{generate_tls, EtcdCluster, TlsFiles};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

/// The token of the grant for clusters `lab-*`.
const LAB_TOKEN: &str = "lab-agents-token-8d1f";

struct Secured {
    collector: Running,
    tls: TlsFiles,
    storage: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
}

impl Secured {
    fn https_url(&self) -> String {
        format!("https://localhost:{}", self.collector.grpc_addr.port())
    }
}

/// A collector on SQLite with TLS and two grants: a token for `lab-*` and the
/// testkit's client certificate (common name `etcdmon-testkit-client`) for
/// member `m0` of `cert-*`.
async fn secured_collector() -> Secured {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = generate_tls(&dir.path().join("tls"), 1).expect("certificates");
    let sqlite = Arc::new(
        SqliteStorage::open(dir.path().join("db.sqlite"), Retention::default()).expect("open"),
    );
    let storage: Arc<dyn Storage> = sqlite.clone();
    storage.migrate().await.expect("migrate");
    let mut cfg = CollectorConfig::default();
    cfg.grpc.tls = Some(GrpcTlsConfig {
        cert: tls.server_cert.clone(),
        key: tls.server_key.clone(),
        client_ca: Some(tls.ca_cert.clone()),
    });
    cfg.grpc.agents = vec![
        AgentGrant {
            name: "lab agents".into(),
            certificate: None,
            token_sha256: Some(hex::encode(Sha256::digest(LAB_TOKEN.as_bytes()))),
            clusters: vec!["lab-*".into()],
            members: Vec::new(),
        },
        AgentGrant {
            name: "certified agents".into(),
            certificate: Some("etcdmon-testkit-client".into()),
            token_sha256: None,
            clusters: vec!["cert-*".into()],
            members: vec!["m0".into()],
        },
    ];
    cfg.http.auth.anonymous = Some(etcdmon_collector::config::Role::Viewer);
    cfg.validate().expect("a secured config is valid");
    cfg.ingest.flush_interval = Duration::from_millis(50);
    let stores = Stores {
        storage: storage.clone(),
        alerts: sqlite.clone(),
        audit: sqlite.clone(),
        tokens: sqlite.clone(),
        registry: sqlite,
    };
    let listeners = Listeners::loopback().await.expect("bind");
    let collector = Collector::serve_on(
        &cfg,
        stores,
        listeners,
        AlertSink::LogOnly,
        &Shutdown::new(),
    )
    .await
    .expect("serve");
    Secured {
        collector,
        tls,
        storage,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_a_token_or_a_client_certificate_report_over_tls() {
    let etcd = EtcdCluster::start(1).expect("etcd");
    let s = secured_collector().await;
    let spool = tempfile::tempdir().expect("spool");
    let member = etcd.member(0);

    let mut by_token = common::agent_config("lab-1", member, &s.https_url(), spool.path());
    by_token.upstream.agent_id = "token-agent".into();
    by_token.upstream.spool_dir = Some(spool.path().join("token"));
    by_token.upstream.tls.ca = Some(s.tls.ca_cert.clone());
    by_token.upstream.token = Some(Secret::new(LAB_TOKEN.to_owned()));

    let mut by_cert = common::agent_config("cert-1", member, &s.https_url(), spool.path());
    by_cert.upstream.agent_id = "cert-agent".into();
    // Its grant names members, so it names its own from the start.
    by_cert.identity.member_name = member.name.clone();
    by_cert.upstream.spool_dir = Some(spool.path().join("cert"));
    by_cert.upstream.tls.ca = Some(s.tls.ca_cert.clone());
    by_cert.upstream.tls.cert = Some(s.tls.client_cert.clone());
    by_cert.upstream.tls.key = Some(s.tls.client_key.clone());

    let mut agents = Vec::new();
    let mut metrics = Vec::new();
    for cfg in [&by_token, &by_cert] {
        cfg.validate().expect("agent config");
        let m = AgentMetrics::new();
        agents.push(Agent::serve(cfg, m.clone(), None, &Shutdown::new()).expect("agent"));
        metrics.push(m);
    }

    let state = s.collector.state.clone();
    let healthy = common::eventually(Duration::from_secs(30), || {
        let snap = state.snapshot();
        let ok = |name: &str| {
            snap.iter()
                .any(|c| c.name == name && c.members.values().any(|m| m.healthy))
        };
        (ok("lab-1") && ok("cert-1")).then_some(())
    })
    .await;
    assert!(
        healthy.is_some(),
        "both agents should report over TLS: {:?}",
        state.snapshot().iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    for a in agents {
        a.drain().await.expect("agent drained");
    }
    for (cluster, m) in ["lab-1", "cert-1"].iter().zip(&metrics) {
        let stored = common::stored_counts(s.storage.as_ref(), cluster).await;
        assert!(
            stored.values().sum::<usize>() > 0,
            "{cluster}: samples stored over TLS"
        );
        assert_eq!(m.batches_rejected.get(), 0, "{cluster}: nothing refused");
    }
}

/// A TLS channel to the collector, with the testkit's client certificate when `certified`.
async fn channel(s: &Secured, certified: bool) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&s.tls.ca_cert).expect("ca"),
        ))
        .domain_name("localhost");
    if certified {
        tls = tls.identity(TlsIdentity::from_pem(
            std::fs::read(&s.tls.client_cert).expect("cert"),
            std::fs::read(&s.tls.client_key).expect("key"),
        ));
    }
    Endpoint::from_shared(s.https_url())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS")
}

fn hello(cluster: &str, agent: &str) -> StreamRequest {
    hello_of(cluster, "m1", agent)
}

/// Batch `sequence` with one status report of member m1 of `cluster`.
fn status_batch(sequence: u64, cluster: &str) -> StreamRequest {
    member_batch(sequence, cluster, "m1")
}

/// Opens a stream with `msgs` (and `token`, if any) and returns the responses
/// until the collector ends it, or the status that refused it.
async fn exchange(
    channel: Channel,
    token: Option<&str>,
    msgs: Vec<StreamRequest>,
) -> Result<Vec<StreamResponse>, tonic::Status> {
    let mut request = tonic::Request::new(tokio_stream::iter(msgs));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let mut inbound = IngestServiceClient::new(channel)
        .stream(request)
        .await?
        .into_inner();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(m))) => out.push(m),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(s)) => return if out.is_empty() { Err(s) } else { Ok(out) },
            Err(_) => return Ok(out), // the stream stays open once the batches are acked
        }
    }
}

#[tokio::test]
async fn streams_without_a_grant_for_their_cluster_are_refused() {
    let s = secured_collector().await;

    let none = exchange(channel(&s, false).await, None, vec![hello("lab-1", "a")])
        .await
        .expect_err("no credentials");
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    assert!(none.message().contains("no credentials"), "{none:?}");

    let guessed = exchange(
        channel(&s, false).await,
        Some("guess"),
        vec![hello("lab-1", "a")],
    )
    .await
    .expect_err("an unknown token");
    assert_eq!(guessed.code(), tonic::Code::Unauthenticated, "{guessed:?}");

    let other_cluster = exchange(
        channel(&s, false).await,
        Some(LAB_TOKEN),
        vec![hello("prod-1", "a")],
    )
    .await
    .expect_err("the lab token does not cover prod");
    assert_eq!(
        other_cluster.code(),
        tonic::Code::PermissionDenied,
        "{other_cluster:?}"
    );
    assert!(
        other_cluster.message().contains("lab agents"),
        "{other_cluster:?}"
    );

    let cert_for_lab = exchange(channel(&s, true).await, None, vec![hello("lab-1", "a")])
        .await
        .expect_err("the certificate grant covers cert-* only");
    assert_eq!(
        cert_for_lab.code(),
        tonic::Code::PermissionDenied,
        "{cert_for_lab:?}"
    );

    let other_member = exchange(
        channel(&s, true).await,
        None,
        vec![hello_of("cert-1", "m1", "a")],
    )
    .await
    .expect_err("the certificate grant covers member m0 only");
    assert_eq!(
        other_member.code(),
        tonic::Code::PermissionDenied,
        "{other_member:?}"
    );
    assert!(
        other_member.message().contains("member \"m1\""),
        "{other_member:?}"
    );

    // Plain text to the TLS port never reaches the service.
    let plain = async {
        let ch = Endpoint::from_shared(s.collector.grpc_url())
            .expect("url")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        exchange(ch, Some(LAB_TOKEN), vec![hello("lab-1", "a")]).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(15), plain)
            .await
            .expect("plain text is refused, not left hanging")
            .is_err(),
        "a plain-text stream was accepted"
    );

    let m = &s.collector.metrics;
    assert_eq!(
        m.batches_stored.get() + m.batches_rejected.get(),
        0,
        "no refused stream got a batch in"
    );
    assert!(
        s.collector.state.snapshot().is_empty(),
        "no refused stream touched the live state"
    );
}

#[tokio::test]
async fn a_report_for_another_cluster_in_an_authorized_stream_is_refused() {
    let s = secured_collector().await;
    let responses = exchange(
        channel(&s, false).await,
        Some(LAB_TOKEN),
        vec![
            hello("lab-1", "a"),
            status_batch(1, "lab-1"),
            // lab-2 is covered by the same grant, but this stream was opened for lab-1.
            status_batch(2, "lab-2"),
        ],
    )
    .await
    .expect("the stream is authorized");
    let acks = acks_of(&responses);
    assert_eq!(acks.len(), 2, "{responses:?}");
    assert_eq!(acks[0], (1, String::new()), "its own cluster is stored");
    assert_eq!(acks[1].0, 2);
    assert!(
        acks[1].1.contains("in a stream opened for \"lab-1\""),
        "{acks:?}"
    );
    let clusters: Vec<String> = s
        .collector
        .state
        .snapshot()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(clusters, ["lab-1"], "lab-2's state was not touched");
    let events = s
        .storage
        .count_samples("lab-2", 0, i64::MAX)
        .await
        .expect("count");
    assert!(events.is_empty(), "nothing stored for lab-2: {events:?}");
}

#[tokio::test]
async fn a_report_for_another_member_than_the_grant_names_is_refused() {
    let s = secured_collector().await;
    let responses = exchange(
        channel(&s, true).await,
        None,
        vec![
            hello_of("cert-1", "m0", "a"),
            member_batch(1, "cert-1", "m0"),
            // Member m1 of the same cluster: the certificate speaks for m0 only.
            member_batch(2, "cert-1", "m1"),
        ],
    )
    .await
    .expect("the stream is authorized");
    let acks = acks_of(&responses);
    assert_eq!(acks.len(), 2, "{responses:?}");
    assert_eq!(acks[0], (1, String::new()), "its own member is stored");
    assert!(
        acks[1].0 == 2 && acks[1].1.contains("may not report for member \"m1\""),
        "{acks:?}"
    );
    let members: Vec<String> = s
        .collector
        .state
        .snapshot()
        .into_iter()
        .flat_map(|c| c.members.into_keys())
        .collect();
    assert_eq!(members, ["m0"], "m1 was not faked into the state");
}

/// Each ack: its sequence and rejection reason (empty when stored).
fn acks_of(responses: &[StreamResponse]) -> Vec<(u64, String)> {
    responses
        .iter()
        .filter_map(|r| match &r.kind {
            Some(stream_response::Kind::Ack(a)) => Some((a.sequence, a.rejected_reason.clone())),
            _ => None,
        })
        .collect()
}

/// Without TLS and grants (or `--allow-plaintext`) the collector does not start,
/// and says which setting is missing.
#[test]
fn the_binary_refuses_to_accept_anyone_unless_told_to() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcdmon-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--storage",
            &format!("sqlite:{}", dir.path().join("db").display()),
        ])
        .output()
        .expect("run collector");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grpc.tls") && stderr.contains("--allow-plaintext"),
        "{stderr}"
    );
}
