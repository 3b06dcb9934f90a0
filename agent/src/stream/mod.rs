//! Streams reports to the collector without losing them.
//!
//! ```text
//! collectors --reports--> batcher --encoded batch--> spool (memory, then disk)
//!                                                       |
//!              collector <--Hello, Batch...-- sender <--+  (oldest first)
//!              collector --Welcome, Ack...--> receiver --> spool.ack(seq)
//! ```
//!
//! The batcher gathers reports for `collector.batch_interval` (or until a
//! batch would exceed `collector.max_batch_bytes`), gives the batch the
//! next sequence number and pushes it into the [`Spool`]. A batch leaves
//! the spool only when the collector acknowledges it, which it does once
//! the batch is stored.
//!
//! The connection loop keeps one long-lived compressed stream (zstd by
//! default, `collector.compression`): Hello,
//! then every spooled batch oldest first, at most `collector.window` in
//! flight. On any error it reconnects with jittered exponential backoff and
//! starts again from the oldest unacknowledged batch; the collector's
//! Welcome says which sequence it has already stored, and the collector
//! acknowledges resends without storing them twice.
//!
//! On shutdown the batcher flushes the last reports into a batch, the
//! sender waits up to `upstream.shutdown_grace` for acks, and whatever is
//! still unacknowledged is written to disk for the next start.

use crate::config::AgentConfig;
use crate::member_view::MemberView;
use crate::selfmetrics::AgentMetrics;
use crate::spool::{Spool, SpoolConfig};
use anyhow::Context as _;
use etcdmon_core::retry::RetryPolicy;
use etcdmon_proto::v1::ingest_service_client::IngestServiceClient;
use etcdmon_proto::v1::{
    stream_request, stream_response, Batch, Hello, Report, StreamRequest, StreamResponse,
};
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

/// How long to wait for the collector's Welcome after opening a stream.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// What a `StreamRequest` adds around a batch's encoded bytes (field tag and length).
const BATCH_ENVELOPE: usize = 16;
/// Waits between attempts to reach the collector: many agents reconnect to one
/// collector at once after it restarts, hence the jitter.
const RECONNECT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(30));

/// Everything the streaming tasks share.
#[derive(Clone)]
struct Ctx {
    spool: Arc<Mutex<Spool>>,
    /// Bumped when a batch is pushed or acknowledged; a watch channel
    /// never loses a wake-up that happens before the waiter subscribes.
    changed: Arc<watch::Sender<u64>>,
    metrics: AgentMetrics,
    /// Largest batch the batcher seals: `upstream.max_batch_bytes`, lowered to
    /// what the collector's Welcome says it accepts.
    max_batch_bytes: Arc<AtomicU64>,
}

impl Ctx {
    fn spool<T>(&self, f: impl FnOnce(&mut Spool) -> T) -> T {
        let mut g = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn publish_stats(&self) {
        let st = self.spool(|s| s.stats());
        self.metrics
            .spool_bytes
            .with_label_values(&["memory"])
            .set(st.memory_bytes as i64);
        self.metrics
            .spool_bytes
            .with_label_values(&["disk"])
            .set(st.disk_bytes as i64);
        self.metrics.spool_batches.set(st.batches as i64);
        self.metrics
            .spool_dropped_batches
            .set(st.dropped_batches as i64);
        self.metrics
            .spool_dropped_bytes
            .set(st.dropped_bytes as i64);
    }
}

/// TLS and the bearer token towards the collector, read once at start (an
/// unreadable file fails the start, naming the field).
fn upstream_credentials(
    cfg: &AgentConfig,
) -> anyhow::Result<(
    Option<tonic::transport::ClientTlsConfig>,
    Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let up = &cfg.upstream;
    let read = |path: &std::path::Path, field: &str| {
        std::fs::read(path).with_context(|| format!("{field}: read {}", path.display()))
    };
    let secured = up.address.as_ref().is_some_and(|a| a.scheme() == "https");
    let tls = if secured {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &up.tls.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "upstream.tls.ca")?));
        }
        if let (Some(cert), Some(key)) = (&up.tls.cert, &up.tls.key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "upstream.tls.cert")?,
                read(key, "upstream.tls.key")?,
            ));
        }
        let host = up
            .address
            .as_ref()
            .and_then(|a| a.host_str().map(str::to_owned));
        if let Some(name) = up.tls.server_name.clone().or(host) {
            tls = tls.domain_name(name);
        }
        Some(tls)
    } else {
        None
    };
    let token = etcdmon_core::secret::resolve(
        up.token.as_ref(),
        up.token_file.as_deref(),
        "upstream.token",
        "upstream.token_file",
    )?;
    let bearer = match token {
        Some(token) => {
            if !secured {
                tracing::warn!(
                    "upstream.allow_plaintext: the token crosses the network in plain text"
                );
            }
            Some(
                format!("Bearer {}", token.expose())
                    .parse()
                    .context("upstream.token: not a valid header value")?,
            )
        }
        None => None,
    };
    Ok((tls, bearer))
}

/// The stable agent id from config.
pub fn agent_id(cfg: &AgentConfig, shared: &MemberView) -> String {
    if !cfg.upstream.agent_id.is_empty() {
        return cfg.upstream.agent_id.clone();
    }
    let hostport = url::Url::parse(&cfg.etcd.endpoint)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| cfg.etcd.endpoint.clone());
    format!(
        "{}/{}/{}",
        shared.identity().node,
        cfg.identity.cluster,
        hostport
    )
}

/// Streams `reports` to the collector until `reports` closes (collectors
/// stopped) and the grace period has passed; then spills to disk.
pub async fn run(
    cfg: &AgentConfig,
    shared: MemberView,
    reports: mpsc::Receiver<Report>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = cfg
        .upstream
        .address
        .as_ref()
        .context("no collector address: set --collector or upstream.address")?
        .as_str()
        // Url keeps a root path ("http://c:7070/"); gRPC paths are appended to the origin.
        .trim_end_matches('/')
        .to_owned();
    let dir = cfg.upstream.effective_spool_dir();
    let spool = tokio::task::spawn_blocking({
        let c = SpoolConfig {
            dir: dir.clone(),
            memory_bytes: cfg.upstream.spool_memory_bytes,
            disk_bytes: cfg.upstream.spool_disk_bytes,
        };
        move || Spool::open(c)
    })
    .await
    .context("spool task")?
    .with_context(|| format!("open spool {}", dir.display()))?;
    let pending = spool.pending().len();
    if pending > 0 {
        tracing::info!(batches = pending, dir = %dir.display(), "resending batches kept from the last run");
    }
    let ctx = Ctx {
        spool: Arc::new(Mutex::new(spool)),
        changed: Arc::new(watch::channel(0).0),
        metrics,
        max_batch_bytes: Arc::new(AtomicU64::new(cfg.upstream.max_batch_bytes)),
    };
    ctx.publish_stats();

    let batcher_done = CancellationToken::new();
    let batcher = tokio::spawn(batcher(
        ctx.clone(),
        reports,
        cfg.upstream.batch_interval,
        batcher_done.clone(),
    ));
    let hello = Hello {
        identity: None, // filled per connection: the identity completes over time
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: etcdmon_proto::PROTOCOL_VERSION,
        agent_id: agent_id(cfg, &shared),
        features: if cfg.status.enabled {
            vec![etcdmon_proto::FEATURE_KV_HASH.to_owned()]
        } else {
            Vec::new()
        },
    };
    let (tls, bearer) = upstream_credentials(cfg)?;
    let conn = Connection {
        ctx: ctx.clone(),
        address,
        tls,
        bearer,
        max_batch_bytes: cfg.upstream.max_batch_bytes,
        hello,
        shared,
        window: cfg.upstream.window,
        compression: match cfg.upstream.compression {
            crate::config::Compression::Zstd => CompressionEncoding::Zstd,
            crate::config::Compression::Gzip => CompressionEncoding::Gzip,
        },
    };
    // The sender stops once the batcher is done and everything is acked,
    // or the grace period after shutdown has passed.
    let grace = cfg.upstream.shutdown_grace;
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(conn.run(batcher_done.clone(), stop_sending.clone()));
    shutdown.cancelled().await;
    batcher.await.context("batcher task")?;
    let mut changes = ctx.changed.subscribe();
    let _ = tokio::time::timeout(grace, async {
        while ctx.spool(|s| s.stats().batches) > 0 {
            if changes.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    stop_sending.cancel();
    let _ = sender.await;
    let left = ctx.spool(|s| s.stats().batches);
    let flushed = tokio::task::spawn_blocking({
        let spool = ctx.spool.clone();
        move || {
            spool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush_to_disk()
        }
    })
    .await
    .context("flush task")?;
    flushed.context("write unacknowledged batches to disk")?;
    ctx.publish_stats();
    if left > 0 {
        tracing::info!(
            batches = left,
            "unacknowledged batches kept on disk for the next start"
        );
    }
    Ok(())
}

/// Gathers reports into batches and pushes them into the spool.
async fn batcher(
    ctx: Ctx,
    mut reports: mpsc::Receiver<Report>,
    every: Duration,
    done: CancellationToken,
) {
    let mut current: Vec<Report> = Vec::new();
    let mut size = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status: Option<StatusKey> = None;
    let mut last_peers: Option<Vec<u64>> = None;
    loop {
        tokio::select! {
            r = reports.recv() => match r {
                Some(r) => {
                    let len = r.encoded_len() as u64;
                    let max_bytes = ctx.max_batch_bytes.load(Ordering::Relaxed);
                    if size + len > max_bytes && !current.is_empty() {
                        seal(&ctx, std::mem::take(&mut current)).await;
                        size = 0;
                    }
                    size += len;
                    // A member that went down or up, a new leader, an alarm raised or
                    // cleared, a consistency-check answer, or a peer port that stopped
                    // or started answering is news the collector's rules must see
                    // now, not at the next batch tick.
                    let key = status_key(&r);
                    let peers = peers_key(&r);
                    let urgent = (key.is_some() && key != last_status)
                        || (peers.is_some() && peers != last_peers);
                    if key.is_some() {
                        last_status = key;
                    }
                    if peers.is_some() {
                        last_peers = peers;
                    }
                    current.push(r);
                    if urgent {
                        seal(&ctx, std::mem::take(&mut current)).await;
                        size = 0;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !current.is_empty() {
                    seal(&ctx, std::mem::take(&mut current)).await;
                    size = 0;
                }
            }
        }
    }
    if !current.is_empty() {
        seal(&ctx, current).await;
    }
    done.cancel();
}

/// What makes a status report urgent when it changes: reachability, leader and
/// the alarms; a report with a kv hash is always urgent (it carries a fresh
/// hash, so its key never equals the last one).
type StatusKey = (bool, u64, Vec<(u64, String)>, Option<i64>);

fn status_key(r: &Report) -> Option<StatusKey> {
    match &r.body {
        Some(etcdmon_proto::v1::report::Body::Status(s)) => Some((
            s.reachable,
            s.leader_id,
            s.alarms
                .iter()
                .map(|a| (a.member_id, a.alarm.clone()))
                .collect(),
            s.kv_hash.as_ref().map(|h| h.revision),
        )),
        _ => None,
    }
}

/// The members whose peer port a peer probe round could not connect to: when
/// that changes, the collector may name a member cut off from its peers.
fn peers_key(r: &Report) -> Option<Vec<u64>> {
    match &r.body {
        Some(etcdmon_proto::v1::report::Body::PeerRtt(p)) => {
            Some(crate::probes::peers::unreachable(p))
        }
        _ => None,
    }
}

/// Numbers, encodes and spools one batch.
async fn seal(ctx: &Ctx, reports: Vec<Report>) {
    let spool = ctx.spool.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
        let sequence = s.next_sequence()?;
        let batch = Batch { sequence, reports };
        s.push(sequence, batch.encode_to_vec())
    })
    .await;
    match result {
        Ok(Ok(())) => ctx.metrics.batches_built.inc(),
        Ok(Err(e)) => tracing::error!(error = %e, "could not spool a batch; it is lost"),
        Err(e) => tracing::error!(error = %e, "spool task failed; a batch is lost"),
    }
    ctx.publish_stats();
    ctx.bump();
}

struct Connection {
    ctx: Ctx,
    address: String,
    /// TLS towards the collector, for an `https://` address.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// `authorization: Bearer <token>`, when the config has a token.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// `upstream.max_batch_bytes`.
    max_batch_bytes: u64,
    hello: Hello,
    shared: MemberView,
    window: usize,
    compression: CompressionEncoding,
}

impl Connection {
    async fn run(self, batcher_done: CancellationToken, stop: CancellationToken) {
        let mut backoff = RECONNECT.backoff();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let connected = tokio::select! {
                r = self.session(&batcher_done) => r,
                _ = stop.cancelled() => return,
            };
            self.ctx.metrics.collector_connected.set(0);
            match connected {
                Ok(true) => {
                    // Done: the batcher stopped and everything is acked.
                    return;
                }
                Ok(false) => backoff.reset(),
                Err(e) => {
                    self.ctx.metrics.stream_errors.inc();
                    let wait = backoff.next_wait();
                    tracing::warn!(collector = %self.address, error = %format!("{e:#}"), retry_in = ?wait, "collector stream failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One stream. Ok(true) when finished for good, Ok(false) when the
    /// collector closed it cleanly (reconnect at once).
    async fn session(&self, batcher_done: &CancellationToken) -> anyhow::Result<bool> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
            .context("parse upstream.address")?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).context("upstream.tls")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connect to collector {}", self.address))?;
        let bearer = self.bearer.clone();
        let mut client =
            IngestServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                if let Some(value) = &bearer {
                    req.metadata_mut().insert("authorization", value.clone());
                }
                Ok(req)
            })
            .send_compressed(self.compression)
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<StreamRequest>(self.window + 1);
        let mut hello = self.hello.clone();
        hello.identity = Some(self.shared.identity());
        tx.send(StreamRequest {
            kind: Some(stream_request::Kind::Hello(hello)),
        })
        .await
        .context("queue Hello")?;
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("open stream")?
            .into_inner();
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(StreamResponse {
                kind: Some(stream_response::Kind::Welcome(w)),
            }))) => w,
            Ok(Ok(other)) => anyhow::bail!("expected Welcome, got {other:?}"),
            Ok(Err(status)) => anyhow::bail!(
                "collector refused the stream: {}: {}",
                status.code(),
                status.message()
            ),
            Err(_) => anyhow::bail!("no Welcome within {WELCOME_TIMEOUT:?}"),
        };
        let issued = self.ctx.spool(|s| s.issued_through());
        if welcome.stored_through_sequence > issued {
            // Acking would erase batches the collector never stored, and every
            // batch up to that number would be taken for a resend and dropped.
            // That happens when another agent reports under the same agent id (a
            // copied config) or a mark was forged: keep everything, say so, retry.
            self.ctx.metrics.stored_through_ahead.inc();
            anyhow::bail!(
                "the collector says batches up to {} of agent id {:?} are stored, but this \
                 agent has only numbered up to {issued}: another agent uses the same id \
                 (give each its own upstream.agent_id); nothing is discarded",
                welcome.stored_through_sequence,
                self.hello.agent_id
            );
        }
        self.ctx.spool(|s| s.ack(welcome.stored_through_sequence));
        self.ctx.publish_stats();
        // The collector ends a stream whose message is over its limit; batches are
        // sealed under it from now on, and one spooled before is sent empty below.
        let limit = match welcome.max_batch_bytes {
            0 => u64::MAX,
            n => n,
        };
        self.ctx
            .max_batch_bytes
            .store(self.max_batch_bytes.min(limit), Ordering::Relaxed);
        self.ctx.metrics.collector_connected.set(1);
        tracing::info!(collector = %self.address, stored_through = welcome.stored_through_sequence, "streaming to collector");

        let mut changes = self.ctx.changed.subscribe();
        // Sent but not yet acknowledged, oldest first.
        let mut in_flight: std::collections::VecDeque<u64> = Default::default();
        let mut sent_through = welcome.stored_through_sequence;
        loop {
            // Send while the window allows.
            while in_flight.len() < self.window {
                let next = self
                    .ctx
                    .spool(|s| s.pending().into_iter().find(|q| *q > sent_through));
                let Some(seq) = next else { break };
                let payload = self
                    .ctx
                    .spool(|s| s.get(seq))
                    .context("read spooled batch")?;
                sent_through = seq;
                let Some(payload) = payload else { continue }; // dropped as corrupt, counted
                let mut batch =
                    Batch::decode(payload.as_slice()).context("decode spooled batch")?;
                let request_len = (payload.len() + BATCH_ENVELOPE) as u64;
                if request_len > limit {
                    // Sending it would end the stream, and so would every resend:
                    // the agent would never get past it. Its sequence goes out
                    // without the reports, so the acks stay in order.
                    self.ctx.metrics.batches_too_large.inc();
                    tracing::error!(
                        sequence = seq,
                        bytes = request_len,
                        limit,
                        reports = batch.reports.len(),
                        "batch larger than the collector accepts: sent without its reports, \
                         which are lost (raise the collector's ingest.max_batch_bytes or lower \
                         metrics.max_payload_bytes)"
                    );
                    batch.reports.clear();
                }
                tx.send(StreamRequest {
                    kind: Some(stream_request::Kind::Batch(batch)),
                })
                .await
                .context("send batch: stream closed")?;
                self.ctx.metrics.batches_sent.inc();
                in_flight.push_back(seq);
            }
            if in_flight.is_empty()
                && batcher_done.is_cancelled()
                && self.ctx.spool(|s| s.stats().batches) == 0
            {
                return Ok(true);
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(StreamResponse { kind: Some(stream_response::Kind::Ack(ack)) })) => {
                        if !ack.rejected_reason.is_empty() {
                            self.ctx.metrics.batches_rejected.inc();
                            tracing::error!(sequence = ack.sequence, reason = %ack.rejected_reason, "collector rejected a batch for good; dropped");
                        } else {
                            self.ctx.metrics.batches_acked.inc();
                        }
                        in_flight.retain(|s| *s > ack.sequence);
                        self.ctx.spool(|s| s.ack(ack.sequence));
                        self.ctx.publish_stats();
                        self.ctx.bump();
                    }
                    Ok(Some(StreamResponse { kind: Some(stream_response::Kind::HashRequest(h)) })) => {
                        tracing::debug!(revision = h.revision, "collector asks for the kv hash");
                        self.shared.kv_hash().request(h.revision);
                    }
                    // A newer collector's message this agent does not know:
                    // it may ignore it (the collector cannot require an answer
                    // that this agent's Hello did not offer).
                    Ok(Some(StreamResponse { kind: None })) => {
                        tracing::debug!("ignored a message of a kind this agent does not know");
                    }
                    Ok(Some(other)) => anyhow::bail!("unexpected message from collector: {other:?}"),
                    Ok(None) => return Ok(false),
                    Err(status) => anyhow::bail!("collector ended the stream: {}: {}", status.code(), status.message()),
                },
                _ = changes.changed(), if in_flight.len() < self.window => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_proto::v1::{report::Body, Alarm, EtcdStatus};

    fn status(leader: u64, alarms: &[&str]) -> Report {
        Report {
            body: Some(Body::Status(EtcdStatus {
                reachable: true,
                leader_id: leader,
                alarms: alarms
                    .iter()
                    .map(|a| Alarm {
                        member_id: 1,
                        alarm: (*a).into(),
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_leader_or_alarm_changes_the_key_and_a_repeat_does_not() {
        let quiet = status_key(&status(1, &[]));
        assert_eq!(quiet, status_key(&status(1, &[])));
        assert_ne!(quiet, status_key(&status(2, &[])));
        assert_ne!(quiet, status_key(&status(1, &["NOSPACE"])));
        assert_eq!(status_key(&Report::default()), None);
    }

    #[test]
    fn a_peer_that_stops_or_starts_answering_changes_the_peers_key() {
        use etcdmon_proto::v1::{ErrorKind, Failure, PeerRtt, PeerRttResult};
        let round = |refused: &[u64]| Report {
            body: Some(Body::PeerRtt(PeerRtt {
                peers: [2, 3]
                    .iter()
                    .map(|&id| PeerRttResult {
                        member_id: id,
                        rtt_seconds: 0.001,
                        failure: refused
                            .contains(&id)
                            .then(|| Failure::new("connect", ErrorKind::Refused, "refused")),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        };
        assert_eq!(peers_key(&round(&[])), peers_key(&round(&[])));
        assert_ne!(peers_key(&round(&[])), peers_key(&round(&[3])));
        assert_eq!(peers_key(&round(&[3])), Some(vec![3]));
        assert_eq!(peers_key(&status(1, &[])), None);
    }
}
