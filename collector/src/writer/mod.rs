//! The storage writer: one task that gathers the rows of many agents'
//! batches and writes them together (ClickHouse wants few, large inserts):
//! about once per `flush_interval` at light load, back to back with
//! INSERTs that grow with the load under heavy load (see [`Writer::run`]).
//!
//! Flow control: sessions hand batches over a bounded channel
//! (`ingest.queue_batches`). While the store is slow or down the writer
//! retries with backoff, the channel fills, sessions wait to send, they stop
//! reading their gRPC streams, and HTTP/2 flow control makes the agents
//! wait. Memory stays bounded; the agents keep the data.
//!
//! A write the store refuses for good (not a connection problem) is retried
//! batch by batch to isolate the refused one; only that batch is rejected.
//! On shutdown the writer drains the channel before returning, so every
//! batch it accepted is stored or reported as not stored (and then not
//! acknowledged).

mod store;
#[cfg(test)]
mod tests;

use crate::config::IngestConfig;
use crate::metrics::CollectorMetrics;
use etcdmon_storage::{Storage, WriteSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use store::{RowsDone, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a batch was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store refused the rows for good; resending will not help.
    #[error("storage rejected the batch: {0}")]
    Rejected(String),
    /// The collector is shutting down before the store came back.
    #[error("collector shutting down with storage unavailable")]
    ShuttingDown,
}

/// One batch's rows and where to report the outcome.
pub struct WriteRequest {
    /// Rows and marks.
    set: WriteSet,
    /// Earliest report timestamp in the batch (for ingest latency).
    oldest_ms: i64,
    /// When the batch was handed to the writer.
    queued: Instant,
    /// Outcome.
    done: oneshot::Sender<Result<(), WriteError>>,
    /// The share of `ingest.queue_bytes` its rows hold, released with the
    /// outcome (after the write).
    memory: Option<QueueMemory>,
}

/// Memory of queued rows, in KiB permits of one semaphore (`ingest.queue_bytes`):
/// a session waits for its batch's share before queueing it, so while the writer
/// falls behind, agents wait instead of the collector's memory growing.
#[derive(Clone)]
pub struct QueueBudget {
    permits: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
    metrics: CollectorMetrics,
}

/// One batch's share of the budget; dropping it gives it back.
pub struct QueueMemory {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    metrics: CollectorMetrics,
}

impl Drop for QueueMemory {
    fn drop(&mut self) {
        self.metrics.queue_bytes.sub(self.bytes);
    }
}

impl QueueBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize, metrics: CollectorMetrics) -> Self {
        let total_kib = u32::try_from((bytes / 1024).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
            metrics,
        }
    }

    /// Waits until the rows of `set` fit; a set larger than the whole budget
    /// waits for all of it (it is then written alone). `None` only if the
    /// budget was closed.
    pub async fn reserve(&self, set: &WriteSet) -> Option<QueueMemory> {
        let bytes = estimated_bytes(set);
        let kib = u32::try_from(bytes / 1024 + 1)
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        let permit = self.permits.clone().acquire_many_owned(kib).await.ok()?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics.queue_bytes.add(bytes);
        Some(QueueMemory {
            _permit: permit,
            bytes,
            metrics: self.metrics.clone(),
        })
    }
}

/// What the rows of `set` take in memory, roughly: their strings plus the
/// fixed part of each row.
pub fn estimated_bytes(set: &WriteSet) -> usize {
    let samples: usize = set
        .samples
        .iter()
        .map(|r| r.name.len() + r.labels.len() + 64)
        .sum();
    let series: usize = set
        .series
        .iter()
        .map(|r| r.name.len() + r.labels.len() + r.metric_type.len() + 96)
        .sum();
    let events: usize = set.events.iter().map(|e| e.message.len() + 96).sum();
    samples + series + events + set.marks.len() * 64
}

impl WriteRequest {
    /// A request made now; `oldest_ms` is 0 when there is no sample to
    /// measure ingest latency by.
    pub fn new(
        set: WriteSet,
        oldest_ms: i64,
        done: oneshot::Sender<Result<(), WriteError>>,
    ) -> Self {
        Self {
            set,
            oldest_ms,
            queued: Instant::now(),
            done,
            memory: None,
        }
    }

    /// The same request holding `memory` until its outcome is reported.
    pub fn holding(mut self, memory: QueueMemory) -> Self {
        self.memory = Some(memory);
        self
    }
}

/// The writer task's inputs.
pub struct Writer {
    rx: mpsc::Receiver<WriteRequest>,
    storage: Arc<dyn Storage>,
    cfg: IngestConfig,
    metrics: CollectorMetrics,
    health: StorageHealth,
}

/// Since when storage writes have been failing as unavailable; read by `/healthz`.
pub type StorageHealth = etcdmon_core::ops::FailingSince;

/// Creates the writer, the sender sessions use, and the health it reports.
pub fn channel(
    storage: Arc<dyn Storage>,
    cfg: IngestConfig,
    metrics: CollectorMetrics,
) -> (mpsc::Sender<WriteRequest>, Writer, StorageHealth) {
    let (tx, rx) = mpsc::channel(cfg.queue_batches);
    let health = StorageHealth::default();
    (
        tx,
        Writer {
            rx,
            storage,
            cfg,
            metrics,
            health: health.clone(),
        },
        health,
    )
}

/// Batches gathered for the next write.
#[derive(Default)]
struct Gathered {
    requests: Vec<WriteRequest>,
    rows: usize,
}

impl Gathered {
    fn push(&mut self, req: WriteRequest) {
        self.rows += rows_of(&req.set);
        self.requests.push(req);
    }

    /// When the oldest batch has waited `flush_interval`. The deadline counts
    /// from the batch's arrival, not from when the writer took it: a batch
    /// that queued behind earlier writes has waited already.
    fn deadline(&self, cfg: &IngestConfig) -> Option<Instant> {
        self.requests.first().map(|r| r.queued + cfg.flush_interval)
    }

    /// Whether these batches should be written now that a write can start,
    /// with `in_flight` writes running. Another write beside a running one
    /// only starts at `max_write_rows`: ClickHouse stores many small INSERTs
    /// at a far higher cost per row than a few large ones, so the extra
    /// slots are for load that even the largest INSERTs cannot keep up with.
    fn due(&self, cfg: &IngestConfig, in_flight: usize, draining: bool) -> bool {
        let Some(deadline) = self.deadline(cfg) else {
            return false;
        };
        if draining {
            return true;
        }
        if in_flight > 0 {
            return self.rows >= cfg.max_write_rows;
        }
        self.rows >= cfg.flush_rows || Instant::now() >= deadline
    }
}

impl Writer {
    /// Runs until `shutdown` is cancelled and the channel is drained (or
    /// all senders are gone).
    ///
    /// Batching adapts to the load. An idle writer waits for `flush_rows`
    /// rows or until the oldest batch has waited `flush_interval`, so light
    /// load gives about one INSERT per second. While a write runs it keeps
    /// gathering, up to `max_write_rows`, and the next write takes all of
    /// it: under heavy load the INSERTs grow until one INSERT's worth of
    /// rows arrives in the time it takes, and ClickHouse stores large
    /// INSERTs at several times the rate of small ones.
    ///
    /// Only when even `max_write_rows` rows gather while a write runs does
    /// another start beside it (as many as [`Storage::concurrent_writes`]).
    /// Row writes then overlap, but batch marks are written apart from their
    /// rows, one write after the other in the order the writes started, each
    /// only after its own rows are stored. An agent's batches reach the
    /// writer in sequence order, so a stored mark still means every earlier
    /// batch of that agent is stored or was rejected, which is what
    /// `stored_through` reports to a reconnecting agent.
    ///
    /// After `shutdown`, a store that is unavailable is retried for `grace`
    /// more; batches not stored by then are not acknowledged.
    pub async fn run(mut self, shutdown: CancellationToken, grace: std::time::Duration) {
        let slots = self.storage.concurrent_writes().max(1);
        let store = Arc::new(Store {
            storage: self.storage.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            shutdown: shutdown.clone(),
            grace,
            separate_marks: slots > 1,
        });
        let mut in_flight: VecDeque<JoinHandle<RowsDone>> = VecDeque::new();
        let mut gathered = Gathered::default();
        let mut channel_done = false;
        loop {
            let draining = self.rx.is_closed();
            if in_flight.len() < slots && gathered.due(&self.cfg, in_flight.len(), draining) {
                self.take_queued(&mut gathered);
                self.metrics.queue_batches.set(self.rx.len() as i64);
                let batch = std::mem::take(&mut gathered).requests;
                in_flight.push_back(tokio::spawn(store.clone().write_rows(batch)));
                continue;
            }
            if channel_done && gathered.requests.is_empty() && in_flight.is_empty() {
                break;
            }
            // The deadline only matters to an idle writer (see `due`).
            let can_start = in_flight.is_empty();
            let deadline = gathered.deadline(&self.cfg);
            tokio::select! {
                biased;
                done = oldest(&mut in_flight) => {
                    in_flight.pop_front();
                    store.finish(done).await;
                }
                r = self.rx.recv(), if !channel_done && gathered.rows < self.cfg.max_write_rows => {
                    match r {
                        Some(req) => gathered.push(req),
                        None => channel_done = true,
                    }
                }
                // Only wakes the loop; `due` above decides.
                _ = sleep_until(deadline), if can_start && deadline.is_some() => {}
                // Stop taking new work; what is queued is still written.
                _ = shutdown.cancelled(), if !self.rx.is_closed() => self.rx.close(),
            }
        }
        tracing::info!("storage writer stopped");
    }

    /// Adds the batches already in the channel, without waiting, while the
    /// write stays under `max_write_rows`.
    fn take_queued(&mut self, gathered: &mut Gathered) {
        while gathered.rows < self.cfg.max_write_rows {
            match self.rx.try_recv() {
                Ok(req) => gathered.push(req),
                Err(_) => break,
            }
        }
    }
}

/// The oldest write's row outcome; pending forever when none is in flight
/// (the `select!` branch is then disabled anyway).
async fn oldest(in_flight: &mut VecDeque<JoinHandle<RowsDone>>) -> RowsDone {
    match in_flight.front_mut() {
        Some(task) => match task.await {
            Ok(done) => done,
            // The row task does not panic; if it did, its batches are not
            // known to be stored, so none of them is acknowledged.
            Err(e) => RowsDone::lost(e),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn rows_of(s: &WriteSet) -> usize {
    s.samples.len() + s.events.len() + s.series.len()
}
