//! One simulated agent: a long-lived zstd-compressed gRPC stream (as the real
//! agent's default), one batch
//! per second, acks timed against the reports' timestamp.
//!
//! Like the real agent (`agent/src/stream`), it says `Hello` with its own
//! agent id, waits for `Welcome`, numbers batches from the stored sequence
//! up, keeps at most [`WINDOW`] batches unacknowledged and holds the rest
//! back (the real agent's spool), oldest first. A batch is *due* on its
//! tick and stamped then; if the collector falls behind, the wait in the
//! backlog counts as ingest latency, as it would for a real agent.
//!
//! A batch is encoded only when tonic takes it from the request stream to
//! send it, not when it enters the window: the load generator then holds a
//! batch or two per agent rather than a window's worth (32 x 100 KB each),
//! so that this process's memory stays mostly the collector's.
//!
//! The ack of a batch is sent by the collector only after the writer's
//! INSERT of its rows (and its batch mark) returned, so "report timestamp
//! -> ack received" is "sample produced -> queryable". [`Verify`] lets the
//! caller check that claim with a SELECT right after one ack.

use crate::payload::{hello, identity, AgentPayload, Payload};
use crate::stats::Recorder;
use anyhow::{bail, Context as _};
use etcdmon_proto::v1::{stream_request, stream_response, StreamRequest, StreamResponse};
use prost::bytes::BufMut as _;
use prost::Message as _;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;
use tonic::{Status, Streaming};

/// Unacknowledged batches per agent (the agent's `collector.window`).
pub const WINDOW: usize = 32;
/// Attempts to open the stream (the collector's Hello handling queries
/// ClickHouse, which may refuse while hundreds of agents connect at once).
const CONNECT_ATTEMPTS: u32 = 8;
/// How long to wait for `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the collector to end the stream after ours closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Called once with (agent id, report timestamp, sequence) right after the
/// ack of that batch arrived; runs on a blocking thread and returns what it
/// checked.
pub type Verify = Box<dyn FnOnce(&str, i64, u64) -> anyhow::Result<String> + Send>;

/// What every agent of a step shares.
pub struct AgentContext {
    /// The collector's gRPC URL.
    pub url: String,
    /// The batch contents.
    pub payload: Arc<Payload>,
    /// Counters and latency.
    pub recorder: Arc<Recorder>,
    /// Ends production: agents drop batches not yet sent and wait for the
    /// acks of those in flight.
    pub stop: CancellationToken,
    /// Ends the wait for acks.
    pub abort: CancellationToken,
}

/// One agent of a step.
pub struct AgentSpec {
    /// Member `a{index}` of cluster `bench`.
    pub index: usize,
    /// Unique per step, so sequences start at 1.
    pub agent_id: String,
    /// First tick; agents are spread over the second like real ones.
    pub first_tick: Instant,
    /// Check one ack against the store.
    pub verify: Option<Verify>,
}

/// How an agent ended.
#[derive(Debug, Default)]
pub struct AgentOutcome {
    /// Batches sent but never acknowledged (the step's drain was aborted).
    pub unacked: u64,
    /// What [`AgentSpec::verify`] reported.
    pub verified: Option<String>,
}

/// Runs one agent until `stop` (then drains) or a stream error.
pub async fn run(ctx: Arc<AgentContext>, mut spec: AgentSpec) -> anyhow::Result<AgentOutcome> {
    let body = Arc::new(ctx.payload.for_agent(&identity(spec.index)));
    let samples = ctx.payload.samples_per_batch() as u64;
    let hello = StreamRequest {
        kind: Some(stream_request::Kind::Hello(hello(
            spec.index,
            &spec.agent_id,
        ))),
    }
    .encode_to_vec();
    tokio::time::sleep_until(spec.first_tick).await;
    let (tx, mut inbound, stored) = open_with_retry(&ctx, hello, &body).await?;

    let mut tick = tokio::time::interval_at(spec.first_tick, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_sequence = stored + 1;
    let mut last_ts = 0i64;
    // Due but not sent (the spool), and sent but not acknowledged.
    let mut backlog: VecDeque<(u64, i64)> = VecDeque::new();
    let mut in_flight: VecDeque<(u64, i64)> = VecDeque::new();
    let mut outcome = AgentOutcome::default();
    let mut stopping = false;
    loop {
        while in_flight.len() < WINDOW {
            let Some((sequence, ts)) = backlog.pop_front() else {
                break;
            };
            tx.send(Outgoing::Batch { sequence, ts })
                .await
                .context("send batch: stream closed")?;
            in_flight.push_back((sequence, ts));
        }
        if stopping && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            msg = inbound.message() => {
                let ack = match msg {
                    Ok(Some(StreamResponse { kind: Some(stream_response::Kind::Ack(ack)) })) => ack,
                    Ok(other) => {
                        ctx.recorder.error();
                        bail!("agent {}: expected an Ack, got {other:?}", spec.agent_id);
                    }
                    Err(status) => {
                        ctx.recorder.error();
                        bail!("agent {}: stream ended: {}: {}", spec.agent_id, status.code(), status.message());
                    }
                };
                let now = now_ms();
                while in_flight.front().is_some_and(|(s, _)| *s <= ack.sequence) {
                    let Some((sequence, ts)) = in_flight.pop_front() else { break };
                    if !ack.rejected_reason.is_empty() {
                        ctx.recorder.error();
                        bail!("agent {}: batch {sequence} rejected: {}", spec.agent_id, ack.rejected_reason);
                    }
                    ctx.recorder.acked(samples, u64::try_from(now - ts).unwrap_or(0));
                    if let Some(verify) = spec.verify.take() {
                        let agent_id = spec.agent_id.clone();
                        let checked = tokio::task::spawn_blocking(move || verify(&agent_id, ts, sequence))
                            .await
                            .context("verify task")??;
                        outcome.verified = Some(checked);
                    }
                }
            }
            _ = tick.tick(), if !stopping => {
                // Strictly increasing timestamps: two batches of one member
                // in the same millisecond would share their rows' key.
                let ts = now_ms().max(last_ts + 1);
                last_ts = ts;
                backlog.push_back((next_sequence, ts));
                next_sequence += 1;
                ctx.recorder.produced(samples);
            }
            _ = ctx.stop.cancelled(), if !stopping => {
                stopping = true;
                ctx.recorder.abandoned(backlog.len() as u64);
                backlog.clear();
            }
            _ = ctx.abort.cancelled(), if stopping => {
                outcome.unacked = in_flight.len() as u64;
                ctx.recorder.abandoned(in_flight.len() as u64);
                break;
            }
        }
    }
    // Close our side and let the collector end the stream cleanly.
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    Ok(outcome)
}

/// What the request stream carries: the encoded Hello, then batches that
/// [`RawEncoder`] encodes when tonic sends them.
#[derive(Debug)]
enum Outgoing {
    Hello(Vec<u8>),
    Batch { sequence: u64, ts: i64 },
}

type Opened = (mpsc::Sender<Outgoing>, Streaming<StreamResponse>, u64);

async fn open_with_retry(
    ctx: &AgentContext,
    hello: Vec<u8>,
    body: &Arc<AgentPayload>,
) -> anyhow::Result<Opened> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match open(&ctx.url, hello.clone(), body.clone()).await {
            Ok(opened) => return Ok(opened),
            Err(e) if attempt < CONNECT_ATTEMPTS && !ctx.stop.is_cancelled() => {
                eprintln!(
                    "ingest-load: opening a stream failed (attempt {attempt}), retrying: {e:#}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
                attempt += 1;
            }
            Err(e) => {
                ctx.recorder.error();
                return Err(e);
            }
        }
    }
}

/// Connects, sends Hello and waits for Welcome; returns the batch sender,
/// the response stream and the stored sequence.
async fn open(url: &str, hello: Vec<u8>, body: Arc<AgentPayload>) -> anyhow::Result<Opened> {
    let channel = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(16 << 20);
    grpc.ready().await.context("channel ready")?;
    let (tx, rx) = mpsc::channel::<Outgoing>(WINDOW + 2);
    tx.send(Outgoing::Hello(hello))
        .await
        .context("queue Hello")?;
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/etcdmon.v1.IngestService/Stream"),
            RawCodec { body },
        )
        .await
        .context("open stream")?
        .into_inner();
    match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(StreamResponse {
            kind: Some(stream_response::Kind::Welcome(w)),
        }))) => Ok((tx, inbound, w.stored_through_sequence)),
        Ok(Ok(other)) => bail!("expected Welcome, got {other:?}"),
        Ok(Err(status)) => bail!(
            "collector refused the stream: {}: {}",
            status.code(),
            status.message()
        ),
        Err(_) => bail!("no Welcome within {WELCOME_TIMEOUT:?}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Sends `StreamRequest`s encoded by hand; decodes `StreamResponse`s.
struct RawCodec {
    body: Arc<AgentPayload>,
}

/// Writes the encoded request into tonic's buffer (tonic compresses it).
struct RawEncoder {
    body: Arc<AgentPayload>,
    scratch: Vec<u8>,
}

/// Decodes the collector's responses with prost.
#[derive(Debug)]
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Outgoing;
    type Decode = StreamResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder {
            body: self.body.clone(),
            scratch: Vec::new(),
        }
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Hello(bytes) => dst.put_slice(&bytes),
            Outgoing::Batch { sequence, ts } => {
                self.body.encode_batch(sequence, ts, &mut self.scratch);
                dst.put_slice(&self.scratch);
            }
        }
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = StreamResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<StreamResponse>, Status> {
        StreamResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode StreamResponse: {e}")))
    }
}
