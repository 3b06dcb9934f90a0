//! The attacks of the threat model (docs/security.md), all at once, at the
//! collector binary as it is deployed (TLS, a token grant for `lab-*`, API
//! tokens, no anonymous access), while a legitimate agent stream reports:
//!
//! - a connection flood on the gRPC port and a slowloris on the HTTP port;
//! - forged identities: no token, a wrong token, a Hello for a cluster the
//!   grant does not cover, a report for another cluster in an authorized
//!   stream, a second stream under the live agent's id (a forged batch mark
//!   needs that id);
//! - amplification: small batches that decode into hundreds of thousands of
//!   samples, and a batch over the size limit;
//! - absurd API ranges and a flood of guessed API tokens.
//!
//! Each attack gets its clear refusal; the legitimate stream has every batch
//! stored; the process stays up and healthy, and its peak memory (`VmHWM`)
//! stays under [`PEAK_RSS_LIMIT`].

mod common;

use common::CollectorProc;
use etcdmon_proto::v1::ingest_service_client::IngestServiceClient;
use etcdmon_proto::v1::{
    report, stream_response, MetricFamily, MetricsScrape, Sample, StreamRequest, StreamResponse,
};
use etcdmon_testkit::{generate_tls, http_get, TlsFiles};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// The agents' token: granted clusters `lab-*`.
const LAB_TOKEN: &str = "lab-agents-token-5e1f";
/// The API's admin token.
const ADMIN: &str = "attack-suite-admin-7c2d";
/// Largest batch the collector takes (a deployment sized for its agents).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The collector's peak resident memory under all of it. It idles at some
/// 20 MiB; without the sample bound one 1 MiB bomb alone decoded into some
/// 500,000 samples converted to rows, hundreds of MiB per stream.
const PEAK_RSS_LIMIT_KIB: u64 = 320 * 1024;

/// The config of a deployed collector: TLS, one token grant, an admin token.
fn config(dir: &Path, tls: &TlsFiles) -> std::path::PathBuf {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let toml = format!(
        "[grpc.tls]\ncert = {:?}\nkey = {:?}\n\n\
         [[grpc.agents]]\nname = \"lab agents\"\ntoken_sha256 = \"{}\"\nclusters = [\"lab-*\"]\n\n\
         [[http.auth.tokens]]\nname = \"root\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n\n\
         [ingest]\nmax_batch_bytes = {MAX_BATCH_BYTES}\n",
        tls.server_cert,
        tls.server_key,
        hash(LAB_TOKEN),
        hash(ADMIN),
    );
    let path = dir.join("collector.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// A TLS channel to the collector's gRPC port.
async fn channel(port: u16, tls: &TlsFiles) -> Channel {
    let ca = Certificate::from_pem(std::fs::read(&tls.ca_cert).expect("ca"));
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect over TLS: {e:?}: {}",
                std::fs::read_to_string(tls.dir.join("../collector.log")).unwrap_or_default()
            )
        })
}

fn hello(cluster: &str, agent: &str) -> StreamRequest {
    common::hello_of(cluster, "m1", agent)
}

fn status(sequence: u64, cluster: &str) -> StreamRequest {
    common::member_batch(sequence, cluster, "m1")
}

/// A batch of `n` default samples: two bytes each on the wire.
fn bomb(sequence: u64, cluster: &str, n: usize) -> StreamRequest {
    common::batch_of(
        sequence,
        cluster,
        "m1",
        report::Body::Metrics(MetricsScrape {
            families: vec![MetricFamily {
                name: "bomb".into(),
                samples: vec![Sample::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

/// An open stream: what to send, and what comes back.
struct Stream {
    tx: mpsc::Sender<StreamRequest>,
    inbound: tonic::Streaming<StreamResponse>,
}

/// Opens a stream on `channel` with `token` and sends `first`; the status if
/// the collector refused it.
async fn open(
    channel: Channel,
    token: Option<&str>,
    first: StreamRequest,
) -> Result<Stream, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let mut inbound = IngestServiceClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .stream(request)
        .await?
        .into_inner();
    // The Welcome, or the refusal of the Hello.
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(_welcome))) => Ok(Stream { tx, inbound }),
        Ok(Ok(None)) => Err(tonic::Status::aborted("ended without a Welcome")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no answer to a Hello within 10 s"),
    }
}

impl Stream {
    /// Sends `msg` and returns the next ack's (sequence, rejection reason), or
    /// the status that ended the stream.
    async fn send(&mut self, msg: StreamRequest) -> Result<(u64, String), tonic::Status> {
        if self.tx.send(msg).await.is_err() {
            return Err(tonic::Status::aborted("stream closed"));
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.inbound.message()).await {
                Ok(Ok(Some(StreamResponse {
                    kind: Some(stream_response::Kind::Ack(a)),
                }))) => return Ok((a.sequence, a.rejected_reason)),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Err(tonic::Status::aborted("stream ended")),
                Ok(Err(status)) => return Err(status),
                Err(_) => panic!("no ack within 20 s"),
            }
        }
    }
}

/// Peak resident memory of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Holds `n` connections to `port` from address `from` that send nothing;
/// returns how many the server had closed within `within`.
async fn connection_flood(port: u16, from: [u8; 4], n: usize, within: Duration) -> usize {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((std::net::Ipv4Addr::from(from), 0).into())
            .expect("bind a loopback address");
        if let Ok(c) = socket.connect(([127, 0, 0, 1], port).into()).await {
            held.push(c);
        }
    }
    let deadline = tokio::time::Instant::now() + within;
    let waits = held.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

/// One slowloris connection: request headers a byte a second. Whether the
/// server ended it within `within`.
async fn slowloris(port: u16, within: Duration) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await else {
        return true;
    };
    let deadline = Instant::now() + within;
    if c.write_all(b"GET /api/v1/clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if c.write_all(b"a").await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await {
            // Closed, reset, or answered (a 408) and then closed: ended.
            Ok(Ok(_)) | Ok(Err(_)) => return true,
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_every_attack_at_once_the_collector_refuses_stays_up_and_stays_small() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = generate_tls(&dir.path().join("tls"), 30).expect("certificates");
    let cfg = config(dir.path(), &tls);
    let collector = CollectorProc::start_with_args(
        &format!("sqlite:{}", dir.path().join("db.sqlite").display()),
        dir.path(),
        &["--config", cfg.to_str().expect("utf-8 path")],
    );
    let pid = collector.child.as_ref().expect("running").id();
    let (grpc, http) = (collector.grpc, collector.http);
    let idle_kib = peak_rss_kib(pid);

    // The legitimate agent, connected before the flood, sends a batch 100 ms
    // after each ack (acks come with the store's flushes).
    let mut legit = open(
        channel(grpc, &tls).await,
        Some(LAB_TOKEN),
        hello("lab-real", "legit"),
    )
    .await
    .expect("the legitimate agent is welcome");
    let (stop_legit, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let legit_task = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for seq in 1u64.. {
            outcomes.push(legit.send(status(seq, "lab-real")).await);
            if stopped.try_recv().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcomes
    });

    // Floods of connections that say nothing (from another address: one
    // address gets 64 connections, so agents elsewhere are not locked out),
    // and of slow headers.
    let flood = tokio::spawn(connection_flood(
        grpc,
        [127, 0, 0, 2],
        300,
        Duration::from_secs(16),
    ));
    let loris = tokio::spawn(async move {
        let conns = (0..100).map(|_| slowloris(http, Duration::from_secs(16)));
        futures::future::join_all(conns).await
    });

    // Forged identities.
    let unauthenticated = open(channel(grpc, &tls).await, None, hello("lab-x", "a1")).await;
    assert_eq!(
        unauthenticated.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );
    let guessed = open(
        channel(grpc, &tls).await,
        Some("guessed-token"),
        hello("lab-x", "a2"),
    )
    .await;
    assert_eq!(guessed.err().map(|s| s.code()), Some(Code::Unauthenticated));
    let other_cluster = open(
        channel(grpc, &tls).await,
        Some(LAB_TOKEN),
        hello("prod", "a3"),
    )
    .await;
    assert_eq!(
        other_cluster.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    let stolen_id = open(
        channel(grpc, &tls).await,
        Some(LAB_TOKEN),
        hello("lab-real", "legit"),
    )
    .await;
    assert_eq!(
        stolen_id.err().map(|s| s.code()),
        Some(Code::AlreadyExists),
        "a second stream under a live agent's id (whose marks it could forge)"
    );
    let mut smuggler = open(
        channel(grpc, &tls).await,
        Some(LAB_TOKEN),
        hello("lab-x", "smuggler"),
    )
    .await
    .expect("an authorized stream");
    let (seq, reason) = smuggler.send(status(1, "prod")).await.expect("an ack");
    assert_eq!(seq, 1);
    assert!(reason.contains("prod"), "refused with the reason: {reason}");

    // Amplification: three streams, three bombs each, at once.
    let bombers = (0..3).map(|i| {
        let tls = tls.clone();
        async move {
            let mut s = open(
                channel(grpc, &tls).await,
                Some(LAB_TOKEN),
                hello("lab-bomb", &format!("bomber-{i}")),
            )
            .await
            .expect("an authorized stream");
            let mut reasons = Vec::new();
            for seq in 1..=3 {
                let (acked, reason) = s.send(bomb(seq, "lab-bomb", 450_000)).await.expect("ack");
                assert_eq!(acked, seq);
                reasons.push(reason);
            }
            reasons
        }
    });
    for reason in futures::future::join_all(bombers).await.concat() {
        assert!(reason.contains("ingest.max_batch_samples"), "{reason}");
    }
    let oversized = open(
        channel(grpc, &tls).await,
        Some(LAB_TOKEN),
        hello("lab-bomb", "oversized"),
    )
    .await
    .expect("an authorized stream")
    .send(status(1, &"x".repeat(2 * MAX_BATCH_BYTES)))
    .await;
    println!("oversized: {oversized:?}");
    assert!(
        matches!(&oversized, Err(s) if !s.message().is_empty()),
        "a batch over the size limit ends its stream with the reason: {oversized:?}"
    );

    // Absurd ranges and guessed API tokens.
    let api = reqwest::Client::new();
    let get = |path: &str, token: String| {
        api.get(format!("http://127.0.0.1:{http}{path}"))
            .bearer_auth(token)
            .send()
    };
    for path in [
        "/api/v1/clusters/lab-real/metrics/history?metric=etcd_up&from=now-300y&to=1e300",
        "/api/v1/clusters/lab-real/metrics/history?metric=etcd_up&from=now-7d&step=1ms",
        "/api/v1/clusters/lab-real/metrics/history?metric=etcd_up&from=now-30d",
        "/api/v1/audit?limit=1000000000",
        "/api/v1/alerts/history?from=now-100000000000y&to=9999999999999",
    ] {
        let r = get(path, ADMIN.to_owned()).await.expect("answer");
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST, "{path}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let guesses = (0..300).map(|i| get("/api/v1/clusters", format!("guess-{i}")));
    for r in futures::future::join_all(guesses).await {
        assert_eq!(
            r.expect("answer").status(),
            reqwest::StatusCode::UNAUTHORIZED
        );
    }

    // While the floods last, the API answers on a fresh connection.
    let r = get("/api/v1/clusters", ADMIN.to_owned())
        .await
        .expect("answer");
    assert_eq!(r.status(), reqwest::StatusCode::OK);

    // Every flood connection is closed by the server, and every slow one.
    let closed = flood.await.expect("flood");
    assert_eq!(closed, 300, "connections that never spoke are closed");
    let warnings = collector
        .log_text()
        .lines()
        .filter(|l| l.contains("too many from one address"))
        .count();
    assert!(
        (1..=20).contains(&warnings),
        "236 refused connections, warned of at most once a second: {warnings} lines"
    );
    let loris = loris.await.expect("slowloris");
    assert!(loris.iter().all(|ended| *ended), "slow headers are cut off");

    // The legitimate agent had every batch stored, throughout.
    stop_legit.send(()).expect("stop");
    let outcomes = legit_task.await.expect("legit");
    assert!(outcomes.len() >= 5, "it kept reporting: {}", outcomes.len());
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(
            o.as_ref()
                .map(|(seq, reason)| (*seq, reason.as_str()))
                .map_err(|s| s.to_string()),
            Ok((i as u64 + 1, "")),
            "batch {} of the legitimate agent",
            i + 1
        );
    }

    // Up, healthy, and small.
    let health = http_get(
        &format!("http://127.0.0.1:{http}/healthz"),
        Duration::from_secs(5),
    )
    .expect("healthz");
    assert_eq!(health.status, 200);
    let peak = peak_rss_kib(pid);
    println!("collector peak RSS: idle {idle_kib} KiB, under attack {peak} KiB");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB (idle {idle_kib} KiB) over {PEAK_RSS_LIMIT_KIB} KiB"
    );
    let audit: serde_json::Value = get("/api/v1/audit?from=now-5m&limit=10000", ADMIN.to_owned())
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let refusals = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["status"] == 401)
        .count();
    assert!(
        (1..=40).contains(&refusals),
        "guesses are audited, at most 10 a second: {refusals}"
    );
}
