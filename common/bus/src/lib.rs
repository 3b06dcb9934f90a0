//! The alert-candidate bus of etcdmon: how the collector's rule results reach the alerter.
//!
//! # Data flow
//!
//! ```text
//! collector                                                                  alerter
//! rules (every 1 s)
//!   │ AlertCandidate
//!   ▼
//! OutboxSender::send ── never blocks; bounded by bytes, drops the oldest when full
//!   │
//! OutboxTask ── Publisher::publish, oldest first, retried with backoff while Unavailable
//!   │
//!   ├─ jetstream: subject etcdmon.alerts.<cluster>, header Nats-Msg-Id, waits for PubAck
//!   │     │
//!   │     ▼
//!   │   stream ETCDMON_ALERTS (file storage, limits: max_age, max_bytes, dedup window)
//!   │     │ durable pull consumer "etcdmon-alerter", explicit acks
//!   │     ▼
//!   │   Subscriber::next ──> Delivery ──> alerter persists its state change ──> Delivery::ack
//!   │
//!   └─ memory (embedded `etcdmon up`): a tokio channel behind the same two traits
//! ```
//!
//! # Why it is built this way
//!
//! * **Message ids.** A publish whose acknowledgement is lost (a timeout, a reconnect) is
//!   retried, so the stream could get the same candidate twice. Every publish carries
//!   [`AlertCandidate::message_id`] in the `Nats-Msg-Id` header, and JetStream stores a
//!   message only once per id within the stream's duplicate window (2 minutes by
//!   default), which is longer than the outbox keeps retrying a candidate in normal
//!   operation.
//! * **Explicit acks, after persisting.** The alerter acks a [`Delivery`] only once the
//!   state change it caused is stored. If the alerter crashes before that, JetStream
//!   delivers the candidate again after `ack_wait`, so nothing is lost. The price is that
//!   a candidate can arrive more than once (a lost ack, a crash between persisting and
//!   acking, a redelivery racing a slow ack): the alerter must treat
//!   `(fingerprint, transition)` as idempotent. [`Delivery::redelivered`] tells it when
//!   a delivery is a repeat.
//! * **A bounded outbox.** The collector evaluates rules every second and must never wait
//!   for NATS. Candidates go to an in-memory queue whose serialized size is capped; when
//!   NATS is away longer than the queue can hold, the oldest candidates are dropped and
//!   counted (newer candidates describe the current state better). Nothing is written to
//!   disk: after a collector restart the rules re-evaluate and produce fresh candidates.
//! * **Same traits for the embedded mode.** [`Publisher`] and [`Subscriber`] hide the
//!   transport, so `etcdmon up` runs collector and alerter in one process over
//!   [`memory::channel`] with the same code paths.
//!
//! # Delivery guarantee
//!
//! At least once from [`OutboxSender::send`] to [`Delivery::ack`], as long as the outbox
//! does not overflow and the collector does not exit while NATS is down (both are
//! counted or logged). The collector covers an overflow: once the outbox has dropped
//! candidates and emptied again, it sends every alert's latest candidate once more. Order is the publish order per stream, except that redeliveries
//! come after newer messages; the `transition` counter lets the alerter ignore stale
//! ones.
//!
//! ```no_run
//! # async fn demo() -> Result<(), etcdmon_bus::BusError> {
//! use std::sync::Arc;
//! use etcdmon_bus::jetstream::{JetStreamBus, JetStreamConfig};
//! use etcdmon_bus::{Outbox, Subscriber};
//!
//! let bus = JetStreamBus::connect(JetStreamConfig::default()).await?;
//! let (sender, task) = Outbox::new(Arc::new(bus.publisher()), 16 << 20);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(task.run(shutdown.clone()));
//! // collector: sender.send(candidate);
//!
//! let mut subscriber = bus.subscriber().await?;
//! let delivery = subscriber.next().await?;
//! // alerter: persist the state change for delivery.candidate, then
//! delivery.ack().await?;
//! # Ok(()) }
//! ```

pub mod jetstream;
pub mod memory;
pub mod outbox;
pub mod subject;

pub use outbox::{Outbox, OutboxSender, OutboxStats, OutboxTask};

use std::time::Duration;

use etcdmon_alert::AlertCandidate;

/// Why a bus call failed; the caller branches on [`BusError::is_retryable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus could not be reached, timed out or is busy: try again later, keeping the
    /// candidate.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus refused the request (invalid config, oversized message, a server error
    /// that will not go away): retrying will not help.
    #[error("bus rejected the request: {0}")]
    Rejected(String),
    /// The other end is gone for good (the in-process channel's peer was dropped).
    #[error("bus closed")]
    Closed,
}

impl BusError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

/// Publishes alert candidates (the collector's side).
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one candidate and returns once the bus has stored it (JetStream: the
    /// PubAck arrived; a duplicate of an already stored message id counts as stored).
    /// Fails with [`BusError::Unavailable`] within a bounded time when the bus is down.
    async fn publish(&self, candidate: &AlertCandidate) -> Result<(), BusError>;

    /// How far the alerter's consumer is behind, as the bus sees it; `None` for a bus
    /// that cannot tell (the in-process channel, whose reader is this process).
    async fn consumer_lag(&self) -> Option<Result<ConsumerLag, BusError>> {
        None
    }
}

/// The alerter's consumer as the bus sees it (see [`Publisher::consumer_lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerLag {
    /// No such consumer: no alerter ever started on this stream, or it was deleted.
    /// Candidates are kept by the stream, and nobody reads them.
    Missing,
    /// The consumer exists.
    Present {
        /// Candidates in the stream not yet delivered to any alerter.
        pending: u64,
        /// Candidates delivered and not yet acknowledged.
        unacknowledged: u64,
    },
}

/// Receives alert candidates (the alerter's side).
#[async_trait::async_trait]
pub trait Subscriber: Send + 'static {
    /// Waits for the next candidate. After an error, call again: the subscriber recovers
    /// by itself (JetStream: reconnects, pulls again, re-creates its consumer), pacing
    /// its own retries. [`BusError::Closed`] means there will be no more candidates.
    ///
    /// Cancel-safe: dropping the future (e.g. in `tokio::select!` with a shutdown
    /// signal) loses nothing; a JetStream message fetched but not yet returned is
    /// delivered again after `ack_wait`.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// One received candidate with its acknowledgement handle.
///
/// Call [`ack`](Self::ack) once the state change the candidate caused is persisted. A
/// delivery that is dropped without an ack is delivered again by JetStream after the
/// consumer's `ack_wait` (the in-process channel has no redelivery).
pub struct Delivery {
    /// The candidate as published.
    pub candidate: AlertCandidate,
    redelivered: u64,
    acker: Acker,
}

/// How a delivery is acknowledged.
enum Acker {
    /// Nothing to acknowledge (in-process channel).
    None,
    /// A JetStream message, acked with a confirmed ("double") ack within `timeout`.
    JetStream {
        // Boxed: the message is large and the channel variant carries nothing.
        message: Box<async_nats::jetstream::Message>,
        timeout: Duration,
    },
}

impl Delivery {
    /// Acknowledges the delivery so it is not delivered again.
    ///
    /// For JetStream this waits for the server to confirm the ack, so `Ok` means the
    /// consumer has moved past the message; an error (server away, timeout) means it may
    /// be delivered again, which the alerter tolerates anyway.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Acker::None => Ok(()),
            Acker::JetStream { message, timeout } => jetstream::ack(&message, timeout).await,
        }
    }

    /// How often this candidate was delivered before (JetStream's delivery count minus
    /// one); 0 for a first delivery and for the in-process channel.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    fn unacked(candidate: AlertCandidate) -> Self {
        Self {
            candidate,
            redelivered: 0,
            acker: Acker::None,
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("candidate", &self.candidate)
            .field("redelivered", &self.redelivered)
            .field(
                "acker",
                &match self.acker {
                    Acker::None => "none",
                    Acker::JetStream { .. } => "jetstream",
                },
            )
            .finish()
    }
}
