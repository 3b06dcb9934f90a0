//! The agents' gRPC endpoint (`etcdmon.v1.IngestService/Stream`).
//!
//! One session per stream:
//! 1. The first message must be a `Hello` (within [`HELLO_TIMEOUT`]); the
//!    session answers `Welcome` with the highest sequence already stored
//!    for that agent, so a reconnecting agent can drop what is safe.
//! 2. Each `Batch` is applied to the live state (which yields events),
//!    converted to rows and handed to the writer. Its `Ack` is sent only
//!    once the writer reports the rows stored; acks leave in batch order.
//! 3. A batch with a sequence at or below what is stored is a resend: it
//!    is acknowledged without writing.
//!
//! Bad input ends only that stream, with a status that says why: no Hello,
//! an unknown message, an invalid identity (INVALID_ARGUMENT /
//! FAILED_PRECONDITION), a batch over the size limit (RESOURCE_EXHAUSTED,
//! enforced by tonic's decoder), malformed protobuf (tonic's decode error).

pub mod auth;
pub mod convert;
pub mod incoming;

use crate::config::IngestConfig;
use crate::consistency::{HashAskers, Registration};
use crate::metrics::CollectorMetrics;
use crate::now_ms;
use crate::state::{member_key, LiveState};
use crate::writer::{QueueBudget, WriteError, WriteRequest};
use auth::AgentAuth;
use convert::{report_rows_where, Target};
use etcdmon_proto::v1::ingest_service_server::{IngestService, IngestServiceServer};
use etcdmon_proto::v1::{
    stream_request, stream_response, Ack, Batch, Hello, Identity, StreamRequest, StreamResponse,
    Welcome,
};
use etcdmon_storage::{canonical_labels, BatchMark, MemberInfo, Storage, WriteSet};
use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

/// How long a new stream may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches of one session awaiting their ack at once.
const ACK_WINDOW: usize = 64;
/// Sessions that may hold a batch read from their stream at once: decoded,
/// converted, waiting for the write queue's memory budget. Without a bound,
/// every agent's session holds one under overload (500 agents: some 300 MiB
/// beyond the budget in `ingest-load`'s soak). 64 batches in hand keep the
/// queue fed: it takes them as fast as the writer frees memory.
const SESSIONS_IN_HAND: usize = 64;
/// Distinct series one session remembers for metadata writes (an etcd member
/// has a few thousand); beyond it the set is cleared and series are written
/// again (harmless: series rows are upserts). At most about 1.2 MB per
/// session, so a process holds at most that times its connected agents, and
/// typically 20-50 KB per agent.
const SEEN_SERIES_MAX: usize = 100_000;

/// Fingerprints of the series a session has written so far. It is asked
/// about every sample, so the hash is foldhash's (a fixed seed: fingerprints
/// only need to agree within the process) rather than SipHash, which cost
/// about as much as a sample's allocation; the set re-hashes its
/// already-hashed keys with the same cheap hasher.
///
/// One set per session, not one for the process: an agent's series are its
/// own member's, so a session's set stays small and in cache. One shared set
/// of a few hundred thousand series took 14% of the collector's CPU in cache
/// misses at 200 agents (perf, `ingest-load`). A reconnecting agent writes
/// its series rows once more.
type SeenSeries = HashSet<u64, SeenHasher>;
type SeenHasher = foldhash::fast::FixedState;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    storage: Arc<dyn Storage>,
    writer: mpsc::Sender<WriteRequest>,
    state: LiveState,
    metrics: CollectorMetrics,
    max_batch_bytes: usize,
    /// Samples one batch may hold once decoded (`ingest.max_batch_samples`).
    max_batch_samples: usize,
    /// Memory of queued rows (`ingest.queue_bytes`).
    budget: QueueBudget,
    /// Sessions holding a read batch at once (see [`SESSIONS_IN_HAND`]).
    in_hand: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    /// Agent ids with a live stream, and from where: a second stream for the
    /// same id is refused (see [`LiveIds`]).
    live: LiveIds,
    /// Who may report for which cluster (`[[grpc.agents]]`).
    auth: Arc<AgentAuth>,
    /// The streams of agents that answer the consistency check's hash requests.
    askers: HashAskers,
}

/// Agent ids with a live stream. Two agents under one id (a copied config)
/// would number their batches independently while the collector keeps one
/// "stored through" per id: each would take the other's batches for its own,
/// discard its spool, and have its next batches dropped as resends. So a second
/// live stream for an id is refused, loudly, until the first one ends.
#[derive(Clone, Default)]
struct LiveIds(Arc<Mutex<std::collections::HashMap<String, String>>>);

impl LiveIds {
    /// Registers `id` for a stream from `peer`; `Err` names the live one.
    fn claim(&self, id: &str, peer: &str) -> Result<LiveClaim, String> {
        let mut live = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = live.get(id) {
            return Err(other.clone());
        }
        live.insert(id.to_owned(), peer.to_owned());
        Ok(LiveClaim {
            ids: self.clone(),
            id: id.to_owned(),
        })
    }
}

/// Holds an agent id for one session; released when the session ends.
struct LiveClaim {
    ids: LiveIds,
    id: String,
}

impl Drop for LiveClaim {
    fn drop(&mut self) {
        let mut live = self.ids.0.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.id);
    }
}

impl Ingest {
    /// A service writing through `writer`, within the limits of `cfg`.
    pub fn new(
        storage: Arc<dyn Storage>,
        writer: mpsc::Sender<WriteRequest>,
        state: LiveState,
        metrics: CollectorMetrics,
        cfg: &IngestConfig,
        auth: AgentAuth,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            storage,
            writer,
            state,
            budget: QueueBudget::new(cfg.queue_bytes, metrics.clone()),
            in_hand: Arc::new(tokio::sync::Semaphore::new(SESSIONS_IN_HAND)),
            metrics,
            max_batch_bytes: cfg.max_batch_bytes,
            max_batch_samples: cfg.max_batch_samples,
            shutdown,
            live: LiveIds::default(),
            auth: Arc::new(auth),
            askers: HashAskers::default(),
        }
    }

    /// Registers the streams of agents that answer hash requests with
    /// `askers`, where the consistency check finds them.
    pub fn with_hash_askers(mut self, askers: HashAskers) -> Self {
        self.askers = askers;
        self
    }

    /// The tonic service: zstd (current agents) and gzip (older ones) accepted
    /// and sent, batch size limited.
    pub fn into_service(self) -> IngestServiceServer<Self> {
        let max = self.max_batch_bytes;
        IngestServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max)
    }

    /// Counts and logs a refused stream; `from` is its peer address or agent id.
    fn reject(&self, reason: &'static str, from: &str, status: Status) -> Status {
        self.metrics
            .streams_rejected
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            reason,
            from,
            message = status.message(),
            "agent stream rejected"
        );
        status
    }

    /// Whether the series (cluster, member, name, labels) is new, remembering it
    /// and adding its fingerprint to `new`; new series get a metadata row.
    fn is_new_series(
        seen: &mut SeenSeries,
        new: &mut Vec<u64>,
        t: &Target<'_>,
        name: &str,
        labels: &str,
    ) -> bool {
        if seen.len() > SEEN_SERIES_MAX {
            seen.clear();
        }
        let fingerprint = SeenHasher::default().hash_one((t.cluster, t.member, name, labels));
        let is_new = seen.insert(fingerprint);
        if is_new {
            new.push(fingerprint);
        }
        is_new
    }

    /// Forgets series whose metadata rows were in a batch that was not
    /// stored, so that the next batch with them writes the rows again.
    fn forget_series(seen: &Mutex<SeenSeries>, fingerprints: &[u64]) {
        if fingerprints.is_empty() {
            return;
        }
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        for f in fingerprints {
            seen.remove(f);
        }
    }

    /// Rows of one batch, plus the events its reports imply, and the
    /// fingerprints of the series it carries metadata rows for (those not in
    /// `seen` yet, which are added).
    fn rows(
        &self,
        seen: &Mutex<SeenSeries>,
        hello: &Identity,
        agent_id: &str,
        batch: &Batch,
    ) -> (WriteSet, i64, Vec<u64>) {
        let mut set = WriteSet::default();
        let mut new_series = Vec::new();
        let mut oldest = i64::MAX;
        let received_ms = now_ms();
        for r in &batch.reports {
            let id = r.identity.as_ref().unwrap_or(hello);
            let member = member_key(id);
            let target = Target {
                cluster: &id.cluster,
                member: &member,
            };
            set.events.extend(self.state.apply_at(id, r, received_ms));
            let (samples, series) = {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                report_rows_where(&target, r, |name, labels| {
                    Self::is_new_series(&mut seen, &mut new_series, &target, name, labels)
                })
            };
            set.samples.extend(samples);
            set.series.extend(series);
            oldest = oldest.min(r.timestamp_unix_ms);
        }
        set.marks.push(BatchMark {
            agent_id: agent_id.to_string(),
            sequence: batch.sequence,
            samples: set.samples.len() as u64,
            stored_ms: now_ms(),
        });
        let oldest = if oldest == i64::MAX { 0 } else { oldest };
        (set, oldest, new_series)
    }
}

/// Samples a batch would become: etcd's metrics samples (the one part of a
/// report whose size the sender chooses), plus a handful per other report.
fn samples_in(batch: &Batch) -> usize {
    batch
        .reports
        .iter()
        .map(|r| match &r.body {
            Some(etcdmon_proto::v1::report::Body::Metrics(m)) => {
                m.families.iter().map(|f| f.samples.len()).sum::<usize>()
            }
            _ => 64,
        })
        .sum()
}

/// Response stream type of a session.
pub type SessionStream =
    Pin<Box<dyn futures::Stream<Item = Result<StreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl IngestService for Ingest {
    type StreamStream = SessionStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let principal = self
            .auth
            .authenticate(&request)
            .map_err(|s| self.reject("unauthenticated", &peer, s))?;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(self.reject(
                    "no_hello",
                    &peer,
                    Status::deadline_exceeded("no Hello within 10 s of opening the stream"),
                ))
            }
            Ok(Err(status)) => return Err(self.reject("decode", &peer, status)),
            Ok(Ok(None)) => {
                return Err(self.reject(
                    "empty",
                    &peer,
                    Status::cancelled("stream closed before Hello"),
                ))
            }
            Ok(Ok(Some(m))) => m,
        };
        let hello = match first.kind {
            Some(stream_request::Kind::Hello(h)) => h,
            Some(stream_request::Kind::Batch(_)) => {
                return Err(self.reject(
                    "no_hello",
                    &peer,
                    Status::failed_precondition(
                        "the first message of a stream must be a Hello, got a Batch",
                    ),
                ))
            }
            None => {
                return Err(self.reject(
                    "unknown_message",
                    &peer,
                    Status::invalid_argument("unknown message kind (newer agent?); expected Hello"),
                ))
            }
        };
        let identity =
            validate_hello(&hello).map_err(|s| self.reject("invalid_hello", &peer, s))?;
        self.auth
            .authorize(&principal, &identity)
            .map_err(|s| self.reject("permission_denied", &peer, s))?;
        let claim = self.live.claim(&hello.agent_id, &peer).map_err(|other| {
            self.reject(
                "duplicate_agent_id",
                &peer,
                Status::already_exists(format!(
                    "agent id {:?} already has a live stream (from {other}); two agents \
                     under one id would erase each other's data: give each agent its own \
                     upstream.agent_id",
                    hello.agent_id
                )),
            )
        })?;
        let stored = self
            .storage
            .stored_through(&hello.agent_id)
            .await
            .map_err(|e| {
                self.reject(
                    "storage",
                    &peer,
                    Status::unavailable(format!("storage not ready: {e}")),
                )
            })?;
        tracing::info!(agent = %hello.agent_id, cluster = %identity.cluster, member = %member_key(&identity),
            version = %hello.agent_version, stored_through = stored, %peer,
            credentials = self.auth.name(&principal), "agent connected");

        let (out_tx, out_rx) = mpsc::channel::<Result<StreamResponse, Status>>(ACK_WINDOW + 1);
        let welcome = StreamResponse {
            kind: Some(stream_response::Kind::Welcome(Welcome {
                max_batch_bytes: self.max_batch_bytes as u64,
                stored_through_sequence: stored,
            })),
        };
        // Capacity ACK_WINDOW + 1: the Welcome always fits.
        let _ = out_tx.try_send(Ok(welcome));
        self.state.connected(&identity);
        self.metrics.agents_connected.inc();
        let asked = hello
            .features
            .iter()
            .any(|f| f == etcdmon_proto::FEATURE_KV_HASH)
            .then(|| self.askers.register(&identity.cluster, out_tx.clone()));
        let session = Session {
            svc: self.clone(),
            cluster: identity.cluster.clone(),
            principal,
            claim: Some(claim),
            asked,
            agent_id: hello.agent_id.clone(),
            identity,
            high: stored,
            seen: Arc::default(),
            described: None,
        };
        tokio::spawn(session.run(inbound, out_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

fn validate_hello(h: &Hello) -> Result<Identity, Status> {
    if h.agent_id.is_empty() {
        return Err(Status::invalid_argument("Hello.agent_id must not be empty"));
    }
    let Some(id) = h.identity.clone() else {
        return Err(Status::invalid_argument("Hello.identity is missing"));
    };
    if id.cluster.is_empty() {
        return Err(Status::invalid_argument(
            "Hello.identity.cluster must not be empty",
        ));
    }
    if id.member_name.is_empty() && id.member_id == 0 && id.node.is_empty() {
        return Err(Status::invalid_argument(
            "Hello.identity needs a member_name, member_id or node",
        ));
    }
    if h.protocol_version > etcdmon_proto::PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "agent speaks protocol {}, this collector {}; upgrade the collector",
            h.protocol_version,
            etcdmon_proto::PROTOCOL_VERSION
        )));
    }
    Ok(id)
}

struct Session {
    svc: Ingest,
    /// The cluster of the Hello, which the stream was authorized for: every
    /// report must be for it.
    cluster: String,
    /// Who opened the stream: every report must be for a member they may
    /// report for.
    principal: auth::Principal,
    /// The agent id, held until the session ends.
    claim: Option<LiveClaim>,
    /// This stream among those the consistency check asks, if the agent
    /// answers; held until the session ends.
    asked: Option<Registration>,
    agent_id: String,
    identity: Identity,
    /// Highest sequence accepted so far (stored or queued).
    high: u64,
    /// The series this session wrote metadata rows for (see [`SeenSeries`]).
    seen: Arc<Mutex<SeenSeries>>,
    /// Where the member runs, as last stored by this session (without time).
    described: Option<MemberInfo>,
}

/// A queued batch, for the acker.
struct Pending {
    sequence: u64,
    /// The writer's outcome.
    done: oneshot::Receiver<Result<(), WriteError>>,
    /// Series the batch carries metadata rows for (see [`Ingest::forget_series`]).
    new_series: Vec<u64>,
}

impl Pending {
    /// Waits for the writer's outcome. A batch that was not stored forgets
    /// the series it brought, so the next batch with them writes their rows.
    async fn outcome(
        self,
        seen: &Mutex<SeenSeries>,
    ) -> (
        u64,
        Result<Result<(), WriteError>, oneshot::error::RecvError>,
    ) {
        let outcome = self.done.await;
        if !matches!(outcome, Ok(Ok(()))) {
            Ingest::forget_series(seen, &self.new_series);
        }
        (self.sequence, outcome)
    }
}

impl Session {
    /// Why the batch may not be written by this stream, if a report in it is
    /// for another cluster than the stream's or a member its grant does not
    /// cover. A report without an identity is judged as the stream's member.
    fn foreign_report(&self, batch: &Batch) -> Option<String> {
        batch
            .reports
            .iter()
            .filter_map(|r| r.identity.as_ref())
            .find_map(|id| {
                if id.cluster != self.cluster {
                    return Some(format!(
                        "has a report for cluster {:?} in a stream opened for {:?}",
                        id.cluster, self.cluster
                    ));
                }
                let auth = &self.svc.auth;
                auth.authorize(&self.principal, id)
                    .err()
                    .map(|s| format!("has a report it may not send: {}", s.message()))
            })
    }

    async fn run(
        mut self,
        mut inbound: Streaming<StreamRequest>,
        out: mpsc::Sender<Result<StreamResponse, Status>>,
    ) {
        let (ack_tx, ack_rx) = mpsc::channel::<Pending>(ACK_WINDOW);
        let acker = tokio::spawn(send_acks(
            ack_rx,
            out.clone(),
            self.svc.metrics.clone(),
            self.seen.clone(),
        ));
        // The status that ends the stream goes out after the acks already
        // earned, so an agent never resends a batch that was stored.
        let mut closing: Option<Status> = None;
        let reason = loop {
            // A session reads its next batch only with a slot of
            // `in_hand`: under overload the others wait unread, their data
            // held by HTTP/2 flow control (compressed, a window per agent)
            // rather than decoded and converted in the collector's memory.
            let (slot, msg) = tokio::select! {
                m = async {
                    let slot = self.svc.in_hand.clone().acquire_owned().await.ok();
                    (slot, inbound.message().await)
                } => m,
                _ = self.svc.shutdown.cancelled() => break "collector shutting down".to_string(),
            };
            let batch = match msg {
                Ok(Some(StreamRequest {
                    kind: Some(stream_request::Kind::Batch(b)),
                })) => b,
                Ok(Some(StreamRequest {
                    kind: Some(stream_request::Kind::Hello(_)),
                })) => {
                    closing = Some(self.svc.reject(
                        "second_hello",
                        &self.agent_id,
                        Status::failed_precondition("Hello may only be sent once per stream"),
                    ));
                    break "second Hello".into();
                }
                Ok(Some(StreamRequest { kind: None })) => {
                    closing = Some(self.svc.reject(
                        "unknown_message",
                        &self.agent_id,
                        Status::invalid_argument("unknown message kind; expected Batch"),
                    ));
                    break "unknown message".into();
                }
                Ok(None) => break "agent closed the stream".into(),
                Err(status) => {
                    let reason = format!("{}: {}", status.code(), status.message());
                    self.svc
                        .metrics
                        .streams_rejected
                        .with_label_values(&[stream_error_reason(&status)])
                        .inc();
                    // Tell the agent why (e.g. batch too large), if it still listens.
                    closing = Some(status);
                    break reason;
                }
            };
            if !self.accept(batch, slot, &ack_tx).await {
                break "collector shutting down".into();
            }
        };
        drop(ack_tx);
        let _ = acker.await;
        // Free the id before the agent learns the stream ended: it may reconnect
        // at once and must not find its own old session still holding the id.
        self.claim.take();
        self.asked.take();
        if let Some(status) = closing {
            let _ = out.send(Err(status)).await;
        }
        self.svc.metrics.agents_connected.dec();
        let ev = self
            .svc
            .state
            .disconnected(&self.identity, now_ms(), &reason);
        tracing::info!(agent = %self.agent_id, reason = %reason, "agent disconnected");
        // Best effort: the event is context, not data an agent resends.
        let (done, _) = oneshot::channel();
        let _ = self.svc.writer.try_send(WriteRequest::new(
            WriteSet {
                events: vec![ev],
                ..Default::default()
            },
            0,
            done,
        ));
    }

    /// Stores where the member runs (region, node, tags) when this session has
    /// not stored it yet, or it changed (the member's name is learned from etcd
    /// after the Hello). Off the stream's path: fleet queries group by it, but
    /// no batch waits for it.
    fn describe_member(&mut self) {
        let id = &self.identity;
        let info = MemberInfo {
            cluster: id.cluster.clone(),
            member: member_key(id),
            region: id.region.clone(),
            node: id.node.clone(),
            tags: canonical_labels(id.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            seen_ms: 0,
        };
        if self.described.as_ref() == Some(&info) {
            return;
        }
        self.described = Some(info.clone());
        let storage = self.svc.storage.clone();
        tokio::spawn(async move {
            let info = MemberInfo {
                seen_ms: now_ms(),
                ..info
            };
            // A store that is briefly away gets a few tries; the next session
            // stores it again in any case.
            for delay in [1, 5, 30] {
                match storage.record_member(&info).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        cluster = %info.cluster, member = %info.member, error = %e,
                        "could not store where the member runs; trying again"
                    ),
                }
                tokio::time::sleep(Duration::from_secs(delay)).await;
            }
        });
    }

    /// Queues one batch; false when the writer is gone (shutdown). `slot` (of
    /// `in_hand`) is given back once the batch is queued or refused, before
    /// the wait for room among this session's acks: an agent that does not
    /// read its acks must stall only itself, never every session.
    async fn accept(
        &mut self,
        batch: Batch,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        acks: &mpsc::Sender<Pending>,
    ) -> bool {
        let seq = batch.sequence;
        if seq <= self.high {
            drop(slot);
            // Already stored (or queued): acknowledge without writing.
            self.svc.metrics.batches_duplicate.inc();
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            let pending = Pending {
                sequence: seq,
                done: rx,
                new_series: Vec::new(),
            };
            return acks.send(pending).await.is_ok();
        }
        self.svc
            .metrics
            .batch_bytes
            .observe(prost::Message::encoded_len(&batch) as f64);
        let samples = samples_in(&batch);
        let refusal = if let Some(reason) = self.foreign_report(&batch) {
            Some(format!("batch {seq} {reason}"))
        } else if samples > self.svc.max_batch_samples {
            Some(format!(
                "batch {seq} holds {samples} samples, more than ingest.max_batch_samples ({})",
                self.svc.max_batch_samples
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(slot);
            // Not converted: another member's report must not touch the state,
            // and too many samples could take hundreds of times the wire size.
            self.svc.metrics.batches_rejected.inc();
            tracing::warn!(agent = %self.agent_id, %reason, "batch refused");
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(WriteError::Rejected(reason)));
            self.high = seq;
            let pending = Pending {
                sequence: seq,
                done: rx,
                new_series: Vec::new(),
            };
            return acks.send(pending).await.is_ok();
        }
        // The agent's identity completes over time (member id and name are
        // learned from etcd); keep the latest for the disconnect event.
        let learned = batch
            .reports
            .iter()
            .rev()
            .find_map(|r| r.identity.as_ref())
            .filter(|id| !id.member_name.is_empty() || id.member_id != 0)
            .filter(|id| **id != self.identity);
        if let Some(id) = learned {
            self.identity = id.clone();
        }
        // Every report repeats the identity: where the member runs is looked at
        // again only when it changed (or was never stored).
        if learned.is_some() || self.described.is_none() {
            self.describe_member();
        }
        let (set, oldest_ms, new_series) =
            self.svc
                .rows(&self.seen, &self.identity, &self.agent_id, &batch);
        // The decoded batch is not needed once converted: free it before the
        // wait below, which hundreds of sessions may share under overload.
        drop(batch);
        // Waits while the rows already queued take the memory budget: the
        // session then stops reading, and its agent waits (flow control).
        let Some(memory) = self.svc.budget.reserve(&set).await else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        if self
            .svc
            .writer
            .send(WriteRequest::new(set, oldest_ms, tx).holding(memory))
            .await
            .is_err()
        {
            return false;
        }
        drop(slot);
        self.high = seq;
        let pending = Pending {
            sequence: seq,
            done: rx,
            new_series,
        };
        acks.send(pending).await.is_ok()
    }
}

/// Sends acks in batch order as the writer completes them.
async fn send_acks(
    mut pending: mpsc::Receiver<Pending>,
    out: mpsc::Sender<Result<StreamResponse, Status>>,
    metrics: CollectorMetrics,
    seen: Arc<Mutex<SeenSeries>>,
) {
    while let Some(p) = pending.recv().await {
        let (sequence, outcome) = p.outcome(&seen).await;
        let ack = match outcome {
            Ok(Ok(())) => Ack {
                sequence,
                rejected_reason: String::new(),
            },
            Ok(Err(WriteError::Rejected(reason))) => Ack {
                sequence,
                rejected_reason: reason,
            },
            // Not stored (shutdown with the store down): no ack, so the
            // agent keeps the batch and resends it to the next collector.
            Ok(Err(WriteError::ShuttingDown)) | Err(_) => {
                metrics
                    .streams_rejected
                    .with_label_values(&["not_stored"])
                    .inc();
                let _ = out
                    .send(Err(Status::unavailable(
                        "collector stopping before the batch could be stored; resend it",
                    )))
                    .await;
                break;
            }
        };
        if out
            .send(Ok(StreamResponse {
                kind: Some(stream_response::Kind::Ack(ack)),
            }))
            .await
            .is_err()
        {
            break;
        }
    }
    // The stream is over (or the agent gone): no more acks, but batches
    // still queued may yet fail, and their series must then be forgotten.
    pending.close();
    while let Some(p) = pending.recv().await {
        // No ack goes out any more; only the forgetting matters.
        let _ = p.outcome(&seen).await;
    }
}

fn stream_error_reason(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => "too_large",
        tonic::Code::Internal => "decode",
        tonic::Code::Cancelled => "cancelled",
        _ => "transport",
    }
}
