//! Bad input gets a clear gRPC status and changes nothing: no Hello, an
//! unknown message, an invalid identity, an oversized batch, malformed
//! protobuf; one bad agent never affects the others. Resends are
//! acknowledged without being stored twice. Invalid config exits 2.

use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::{AlertSink, Collector, Listeners, Running};
use etcdmon_core::shutdown::Shutdown;
use etcdmon_proto::v1::ingest_service_client::IngestServiceClient;
use etcdmon_proto::v1::{
    report, stream_request, stream_response, Batch, EtcdStatus, Hello, Identity, Report,
    StreamRequest, StreamResponse,
};
use etcdmon_storage::open::Stores;
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::{Retention, Storage};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

struct Server {
    url: String,
    storage: Arc<dyn Storage>,
    metrics: etcdmon_collector::metrics::CollectorMetrics,
    // Its tasks end with the test's runtime.
    _collector: Running,
    _dir: tempfile::TempDir,
}

async fn server(max_batch_bytes: usize) -> Server {
    server_with(max_batch_bytes, |sqlite| sqlite).await
}

/// A server whose sample store is `wrap` of the real SQLite store.
async fn server_with(
    max_batch_bytes: usize,
    wrap: impl FnOnce(Arc<SqliteStorage>) -> Arc<dyn Storage>,
) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let sqlite = Arc::new(
        SqliteStorage::open(dir.path().join("db.sqlite"), Retention::default()).expect("open"),
    );
    let storage: Arc<dyn Storage> = wrap(sqlite.clone());
    storage.migrate().await.expect("migrate");
    let stores = Stores {
        storage: storage.clone(),
        alerts: sqlite.clone(),
        audit: sqlite.clone(),
        tokens: sqlite.clone(),
        registry: sqlite,
    };
    let mut cfg = CollectorConfig::default();
    cfg.grpc.allow_plaintext = true;
    cfg.http.auth.anonymous = Some(etcdmon_collector::config::Role::Admin);
    cfg.ingest.max_batch_bytes = max_batch_bytes;
    cfg.ingest.flush_interval = Duration::from_millis(50);
    let shutdown = Shutdown::new();
    let listeners = Listeners::loopback().await.expect("bind");
    let c = Collector::serve_on(&cfg, stores, listeners, AlertSink::LogOnly, &shutdown)
        .await
        .expect("serve");
    Server {
        url: c.grpc_url(),
        storage,
        metrics: c.metrics.clone(),
        _collector: c,
        _dir: dir,
    }
}

async fn client(url: &str) -> IngestServiceClient<Channel> {
    IngestServiceClient::connect(url.to_string())
        .await
        .expect("connect")
}

fn hello(agent: &str) -> StreamRequest {
    StreamRequest {
        kind: Some(stream_request::Kind::Hello(Hello {
            identity: Some(Identity {
                cluster: "bad".into(),
                member_name: "m1".into(),
                ..Default::default()
            }),
            agent_version: "test".into(),
            protocol_version: 1,
            agent_id: agent.into(),
            features: Vec::new(),
        })),
    }
}

fn batch(sequence: u64, padding: usize) -> StreamRequest {
    batch_of(
        sequence,
        report::Body::Status(EtcdStatus {
            reachable: true,
            member_id: 1,
            leader_id: 1,
            raft_term: 2,
            version: "x".repeat(padding),
            ..Default::default()
        }),
    )
}

/// Batch `sequence` of member m1 of cluster `bad`, with one report of `body`.
fn batch_of(sequence: u64, body: report::Body) -> StreamRequest {
    let report = Report {
        timestamp_unix_ms: 1_000 + sequence as i64,
        identity: Some(Identity {
            cluster: "bad".into(),
            member_name: "m1".into(),
            member_id: 1,
            ..Default::default()
        }),
        duration_seconds: 0.0,
        body: Some(body),
    };
    StreamRequest {
        kind: Some(stream_request::Kind::Batch(Batch {
            sequence,
            reports: vec![report],
        })),
    }
}

/// Opens a stream with `msgs` and returns the responses until the stream ends.
async fn exchange(
    url: &str,
    msgs: Vec<StreamRequest>,
) -> Result<Vec<StreamResponse>, tonic::Status> {
    let mut c = client(url).await;
    let mut inbound = c.stream(tokio_stream::iter(msgs)).await?.into_inner();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(m))) => out.push(m),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(s)) => return if out.is_empty() { Err(s) } else { Ok(out) },
            Err(_) => panic!("no end of stream"),
        }
    }
}

fn acks(r: &[StreamResponse]) -> Vec<u64> {
    r.iter()
        .filter_map(|m| match &m.kind {
            Some(stream_response::Kind::Ack(a)) => Some(a.sequence),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_batch_before_hello_is_refused() {
    let s = server(1 << 20).await;
    let err = exchange(&s.url, vec![batch(1, 0)])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("Hello"), "{}", err.message());
}

#[tokio::test]
async fn an_unknown_first_message_and_an_invalid_identity_are_refused() {
    let s = server(1 << 20).await;
    let err = exchange(&s.url, vec![StreamRequest { kind: None }])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown message"),
        "{}",
        err.message()
    );

    let mut h = hello("a");
    if let Some(stream_request::Kind::Hello(h)) = &mut h.kind {
        h.identity.as_mut().expect("id").cluster.clear();
    }
    let err = exchange(&s.url, vec![h]).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("cluster"), "{}", err.message());

    let mut h = hello("");
    let err = exchange(&s.url, vec![std::mem::replace(&mut h, hello("x"))])
        .await
        .expect_err("refused");
    assert!(err.message().contains("agent_id"), "{}", err.message());
}

#[tokio::test]
async fn an_oversized_batch_ends_only_that_stream() {
    let s = server(8 * 1024).await;
    // A good agent streams while the bad one sends a batch over the limit.
    let good = {
        let url = s.url.clone();
        tokio::spawn(async move {
            exchange(&url, vec![hello("good"), batch(1, 10), batch(2, 10)]).await
        })
    };
    let bad = exchange(
        &s.url,
        vec![hello("bad"), batch(1, 10), batch(2, 64 * 1024)],
    )
    .await;
    let good = good.await.expect("join").expect("good stream");
    assert_eq!(acks(&good), vec![1, 2]);
    // The bad stream got its first ack, then an error status for the big batch.
    let bad = bad.expect("welcome and first ack");
    assert_eq!(acks(&bad), vec![1]);
    let stored = s.storage.stored_through("bad").await.expect("marks");
    assert_eq!(stored, 1, "the oversized batch must not be stored");
    assert!(
        s.metrics
            .streams_rejected
            .with_label_values(&["too_large"])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn a_resent_batch_is_acknowledged_but_not_stored_twice() {
    let s = server(1 << 20).await;
    let r = exchange(&s.url, vec![hello("r"), batch(5, 0)])
        .await
        .expect("first");
    assert_eq!(acks(&r), vec![5]);
    let before = s
        .storage
        .count_samples("bad", 0, i64::MAX)
        .await
        .expect("count");
    // A reconnecting agent resends 5 (lost ack) and then 6.
    let r = exchange(&s.url, vec![hello("r"), batch(5, 0), batch(6, 0)])
        .await
        .expect("second");
    let welcome = r.iter().find_map(|m| match &m.kind {
        Some(stream_response::Kind::Welcome(w)) => Some(w.stored_through_sequence),
        _ => None,
    });
    assert_eq!(welcome, Some(5));
    assert_eq!(acks(&r), vec![5, 6]);
    assert_eq!(s.metrics.batches_duplicate.get(), 1);
    let after = s
        .storage
        .count_samples("bad", 0, i64::MAX)
        .await
        .expect("count");
    assert!(after[0].samples > before[0].samples, "batch 6 stored");
    assert_eq!(s.storage.stored_through("r").await.expect("marks"), 6);
}

mod raw {
    //! A codec that sends arbitrary bytes as a message, to feed the server
    //! malformed protobuf.
    use bytes::BufMut as _;
    use etcdmon_proto::v1::StreamResponse;
    use prost::Message as _;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RespDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = StreamResponse;
        type Encoder = RawEncoder;
        type Decoder = RespDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RespDecoder {
            RespDecoder
        }
    }
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RespDecoder {
        type Item = StreamResponse;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<StreamResponse>, Status> {
            StreamResponse::decode(src)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }
}

#[tokio::test]
async fn malformed_protobuf_is_refused_with_a_decode_error() {
    let s = server(1 << 20).await;
    let channel = Channel::from_shared(s.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    // 0xff is an invalid wire type: not a StreamRequest.
    let garbage = vec![0xff, 0xff, 0xff, 0x01, 0x02];
    let result = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            http::uri::PathAndQuery::from_static("/etcdmon.v1.IngestService/Stream"),
            raw::RawCodec,
        )
        .await;
    let err = match result {
        Err(e) => e,
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            inbound.message().await.expect_err("decode error")
        }
    };
    assert!(
        err.message().to_lowercase().contains("decode") || err.code() == tonic::Code::Internal,
        "{err:?}"
    );
    // The server still serves well-formed agents.
    let ok = exchange(&s.url, vec![hello("after"), batch(1, 0)])
        .await
        .expect("good");
    assert_eq!(acks(&ok), vec![1]);
}

#[test]
fn invalid_config_exits_2_naming_the_field() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcdmon-collector"))
        .args(["--storage", "postgres://nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.url"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcdmon-collector"))
        .env("ETCDMON_COLLECTOR_INGEST__FLUSH_ROWS", "many")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`ingest.flush_rows`"));
}

/// The real SQLite store, refusing for good every write that holds a sample
/// named `poison` (as a store refuses rows it cannot take), and recording
/// the series metadata rows of the writes it stores.
struct Refusing {
    inner: Arc<SqliteStorage>,
    series: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Storage for Refusing {
    fn backend(&self) -> &'static str {
        "refusing-sqlite"
    }
    async fn migrate(&self) -> etcdmon_storage::Result<()> {
        self.inner.migrate().await
    }
    async fn stored_through(&self, agent_id: &str) -> etcdmon_storage::Result<u64> {
        self.inner.stored_through(agent_id).await
    }
    async fn write(&self, set: &etcdmon_storage::WriteSet) -> etcdmon_storage::Result<()> {
        if set.samples.iter().any(|s| s.name == "poison") {
            return Err(etcdmon_storage::StorageError::Rejected(
                "poison sample".into(),
            ));
        }
        self.inner.write(set).await?;
        let mut series = self.series.lock().unwrap();
        series.extend(set.series.iter().map(|s| s.name.clone()));
        Ok(())
    }
    async fn query(
        &self,
        q: &etcdmon_storage::PointQuery,
    ) -> etcdmon_storage::Result<Vec<etcdmon_storage::SeriesPoints>> {
        self.inner.query(q).await
    }
    async fn count_samples(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> etcdmon_storage::Result<Vec<etcdmon_storage::SampleCount>> {
        self.inner.count_samples(cluster, from_ms, to_ms).await
    }
    async fn events(
        &self,
        cluster: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> etcdmon_storage::Result<Vec<etcdmon_storage::EventRow>> {
        self.inner.events(cluster, from_ms, to_ms, limit).await
    }
    async fn apply_retention(
        &self,
        now_ms: i64,
    ) -> etcdmon_storage::Result<etcdmon_storage::RetentionOutcome> {
        self.inner.apply_retention(now_ms).await
    }
    async fn record_member(
        &self,
        info: &etcdmon_storage::MemberInfo,
    ) -> etcdmon_storage::Result<()> {
        self.inner.record_member(info).await
    }
    async fn member_info(
        &self,
        cluster: Option<&str>,
    ) -> etcdmon_storage::Result<Vec<etcdmon_storage::MemberInfo>> {
        self.inner.member_info(cluster).await
    }
}

/// The next ack on `inbound`: sequence and rejection reason.
async fn next_ack(inbound: &mut tonic::Streaming<StreamResponse>) -> (u64, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("an answer")
            .expect("no error")
            .expect("stream open");
        if let Some(stream_response::Kind::Ack(a)) = m.kind {
            return (a.sequence, a.rejected_reason);
        }
    }
}

/// A batch with one metrics scrape holding one sample of each of `names`.
fn metrics_batch(sequence: u64, names: &[&str]) -> StreamRequest {
    use etcdmon_proto::v1::{MetricFamily, MetricType, MetricsScrape, Sample};
    batch_of(
        sequence,
        report::Body::Metrics(MetricsScrape {
            families: names
                .iter()
                .map(|n| MetricFamily {
                    name: n.to_string(),
                    r#type: MetricType::Gauge as i32,
                    samples: vec![Sample {
                        name: n.to_string(),
                        labels: Vec::new(),
                        value: 1.0,
                        timestamp_unix_ms: 0,
                    }],
                })
                .collect(),
            ..Default::default()
        }),
    )
}

/// A collector on a [`Refusing`] store, and the store.
async fn refusing_server() -> (Server, Arc<Refusing>) {
    let store = std::sync::Arc::new(std::sync::Mutex::new(None::<Arc<Refusing>>));
    let s = {
        let store = store.clone();
        server_with(1 << 20, move |sqlite| {
            let refusing = Arc::new(Refusing {
                inner: sqlite,
                series: Default::default(),
            });
            *store.lock().unwrap() = Some(refusing.clone());
            refusing
        })
        .await
    };
    let store = store.lock().unwrap().clone().expect("store");
    (s, store)
}

/// Opens a stream to `url` and says Hello as `agent`.
async fn open_stream(
    url: &str,
    agent: &str,
) -> (
    tokio::sync::mpsc::Sender<StreamRequest>,
    tonic::Streaming<StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut c = client(url).await;
    tx.send(hello(agent)).await.unwrap();
    let inbound = c
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, inbound)
}

#[tokio::test]
async fn a_refused_batch_is_acknowledged_with_its_reason_and_its_new_series_are_written_again() {
    let (s, store) = refusing_server().await;
    let (tx, mut inbound) = open_stream(&s.url, "refused").await;
    // Batch 1 brings the new series `fresh` and is refused for its poison
    // sample, so the agent drops it.
    tx.send(metrics_batch(1, &["fresh", "poison"]))
        .await
        .unwrap();
    let (sequence, reason) = next_ack(&mut inbound).await;
    assert_eq!(sequence, 1);
    assert!(reason.contains("poison"), "{reason}");
    // The next batch with `fresh` must carry its metadata row: the collector
    // had remembered the series while converting batch 1.
    tx.send(metrics_batch(2, &["fresh"])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (2, String::new()));
    let series = store.series.lock().unwrap().clone();
    assert!(series.contains(&"fresh".to_string()), "{series:?}");
    // Once stored, a series is not written again.
    tx.send(metrics_batch(3, &["fresh"])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (3, String::new()));
    let again = store.series.lock().unwrap().clone();
    assert_eq!(
        again.iter().filter(|n| *n == "fresh").count(),
        1,
        "{again:?}"
    );
}

/// Each stream remembers the series it wrote metadata for, so a reconnecting
/// agent writes them once more (the rollups of ClickHouse find series only
/// through those rows).
#[tokio::test]
async fn a_new_stream_writes_its_series_rows_again() {
    let (s, store) = refusing_server().await;
    let count = |name: &str| {
        let series = store.series.lock().unwrap();
        series.iter().filter(|n| *n == name).count()
    };
    let (tx, mut inbound) = open_stream(&s.url, "reconnecting").await;
    tx.send(metrics_batch(1, &["kept"])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (1, String::new()));
    tx.send(metrics_batch(2, &["kept"])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (2, String::new()));
    assert_eq!(count("kept"), 1);
    drop(tx);
    drop(inbound);

    let (tx, mut inbound) = open_stream(&s.url, "reconnecting").await;
    tx.send(metrics_batch(3, &["kept"])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (3, String::new()));
    assert_eq!(count("kept"), 2);
}

/// Two agents under one agent id (a copied config) would erase each other's data:
/// a second live stream for the id is refused with the reason, and the id is free
/// again once the first stream ends.
#[tokio::test]
async fn a_second_live_stream_for_one_agent_id_is_refused_until_the_first_ends() {
    let s = server(1 << 20).await;
    let (first_tx, mut first) = open_stream(&s.url, "twin").await;
    let welcome = first.message().await.expect("welcome").expect("a message");
    assert!(matches!(
        welcome.kind,
        Some(stream_response::Kind::Welcome(_))
    ));

    let err = exchange(&s.url, vec![hello("twin")])
        .await
        .expect_err("a second stream for the id");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    assert!(
        err.message().contains("twin") && err.message().contains("upstream.agent_id"),
        "{}",
        err.message()
    );
    // Another id is not affected.
    exchange(&s.url, vec![hello("other"), batch(1, 0)])
        .await
        .expect("a different agent");

    // The first stream ends: the id is free again.
    drop(first_tx);
    while let Ok(Some(_)) = first.message().await {}
    let mut again = None;
    for _ in 0..50 {
        match exchange(&s.url, vec![hello("twin"), batch(1, 0)]).await {
            Ok(r) => {
                again = Some(r);
                break;
            }
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(acks(&again.expect("the id is free again")), vec![1]);
}

/// One small message must not turn into millions of rows: a default `Sample` is two
/// bytes on the wire and some hundred in memory. A batch over
/// `ingest.max_batch_samples` (250,000) is refused with the reason, without being
/// converted, and the stream goes on.
#[tokio::test]
async fn a_batch_of_too_many_samples_is_refused_unconverted() {
    use etcdmon_proto::v1::{MetricFamily, MetricsScrape, Sample};
    let s = server(8 << 20).await;
    let bomb = batch_of(
        1,
        report::Body::Metrics(MetricsScrape {
            families: vec![MetricFamily {
                name: "bomb".into(),
                samples: vec![Sample::default(); 300_000],
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    let encoded = prost::Message::encoded_len(&bomb);
    assert!(encoded < 2 << 20, "a small message: {encoded} bytes");
    let (tx, mut inbound) = open_stream(&s.url, "bomber").await;
    tx.send(bomb).await.unwrap();
    let (sequence, reason) = next_ack(&mut inbound).await;
    assert_eq!(sequence, 1);
    assert!(
        reason.contains("300000 samples") && reason.contains("ingest.max_batch_samples"),
        "{reason}"
    );
    assert_eq!(
        s.metrics.samples_stored.get(),
        0,
        "nothing converted or stored"
    );
    // The stream goes on.
    tx.send(batch(2, 0)).await.unwrap();
    let (sequence, reason) = next_ack(&mut inbound).await;
    assert_eq!((sequence, reason.as_str()), (2, ""));
}
