//! The storage writer: one task that gathers the rows of many agents'
//! batches and writes them together, about once per `flush_interval` or
//! every `flush_rows` rows, whichever comes first (ClickHouse wants few,
//! large inserts).
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

use crate::config::IngestConfig;
use crate::metrics::CollectorMetrics;
use etcdmon_storage::{Storage, StorageError, WriteSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
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
    pub set: WriteSet,
    /// Earliest report timestamp in the batch (for ingest latency).
    pub oldest_ms: i64,
    /// Outcome.
    pub done: oneshot::Sender<Result<(), WriteError>>,
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

/// Longest pause between retries of an unavailable store.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After shutdown, how long the writer keeps retrying an unavailable store.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Writer {
    /// Runs until `shutdown` is cancelled and the channel is drained (or
    /// all senders are gone).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                r = self.rx.recv() => r,
                _ = shutdown.cancelled() => {
                    // Stop taking new work; drain what is queued.
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut pending = vec![first];
            let mut rows = rows_of(&pending[0].set);
            let deadline = Instant::now() + self.cfg.flush_interval;
            while rows < self.cfg.flush_rows {
                tokio::select! {
                    r = self.rx.recv() => match r {
                        Some(req) => {
                            rows += rows_of(&req.set);
                            pending.push(req);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                    _ = shutdown.cancelled(), if !self.rx.is_closed() => self.rx.close(),
                }
            }
            self.metrics.queue_batches.set(self.rx.len() as i64);
            self.write(pending, &shutdown).await;
        }
        tracing::info!("storage writer stopped");
    }

    async fn write(&self, pending: Vec<WriteRequest>, shutdown: &CancellationToken) {
        // The batches' rows are moved, not copied, into one set: copying
        // every string of every row cost as much as converting them. Each
        // batch's share is remembered, so the rare refusal below can still
        // write batch by batch.
        let mut merged = WriteSet {
            samples: Vec::with_capacity(pending.iter().map(|r| r.set.samples.len()).sum()),
            series: Vec::with_capacity(pending.iter().map(|r| r.set.series.len()).sum()),
            events: Vec::with_capacity(pending.iter().map(|r| r.set.events.len()).sum()),
            marks: Vec::with_capacity(pending.iter().map(|r| r.set.marks.len()).sum()),
        };
        let mut parts = Vec::with_capacity(pending.len());
        for r in pending {
            parts.push(Part {
                shares: Shares::of(&r.set),
                oldest_ms: r.oldest_ms,
                done: r.done,
            });
            merged.extend(r.set);
        }
        match self.write_with_retry(&merged, shutdown).await {
            Ok(()) => self.finish(parts, &merged),
            Err(StorageError::Unavailable(_)) => {
                for p in parts {
                    let _ = p.done.send(Err(WriteError::ShuttingDown));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batches = parts.len(), "write refused; retrying batch by batch");
                let sets = split(merged, parts.iter().map(|p| p.shares));
                for (p, set) in parts.into_iter().zip(sets) {
                    let outcome = match self.write_with_retry(&set, shutdown).await {
                        Ok(()) => {
                            self.count(&set, p.oldest_ms);
                            Ok(())
                        }
                        Err(StorageError::Unavailable(_)) => Err(WriteError::ShuttingDown),
                        Err(e) => {
                            self.metrics.batches_rejected.inc();
                            tracing::error!(error = %e, "batch rejected by storage; the agent will drop it");
                            Err(WriteError::Rejected(e.to_string()))
                        }
                    };
                    let _ = p.done.send(outcome);
                }
            }
        }
    }

    fn finish(&self, parts: Vec<Part>, merged: &WriteSet) {
        self.metrics
            .samples_stored
            .inc_by(merged.samples.len() as u64);
        self.metrics
            .events_stored
            .inc_by(merged.events.len() as u64);
        for p in parts {
            self.metrics.batches_stored.inc();
            observe_latency(&self.metrics, p.oldest_ms);
            let _ = p.done.send(Ok(()));
        }
    }

    fn count(&self, set: &WriteSet, oldest_ms: i64) {
        self.metrics.samples_stored.inc_by(set.samples.len() as u64);
        self.metrics.events_stored.inc_by(set.events.len() as u64);
        self.metrics.batches_stored.inc();
        observe_latency(&self.metrics, oldest_ms);
    }

    /// Retries while the store is unavailable; gives up only after
    /// shutdown plus a grace period. Other errors return at once.
    async fn write_with_retry(
        &self,
        set: &WriteSet,
        shutdown: &CancellationToken,
    ) -> Result<(), StorageError> {
        let mut backoff = Duration::from_millis(100);
        let mut gave_up_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let result = self.storage.write(set).await;
            self.metrics
                .write_seconds
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.health.ok();
                    self.metrics.write_rows.observe(rows_of(set) as f64);
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    self.health.failing();
                    self.metrics
                        .write_failures
                        .with_label_values(&["unavailable"])
                        .inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "storage unavailable; holding batches");
                    if shutdown.is_cancelled() {
                        let since = *gave_up_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > SHUTDOWN_GRACE {
                            return Err(e);
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    self.metrics
                        .write_failures
                        .with_label_values(&["rejected"])
                        .inc();
                    return Err(e);
                }
            }
        }
    }
}

fn observe_latency(m: &CollectorMetrics, oldest_ms: i64) {
    if oldest_ms > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        m.ingest_latency_seconds
            .observe(((now - oldest_ms).max(0) as f64) / 1000.0);
    }
}

/// One batch of a merged write: its share of the rows and its outcome.
struct Part {
    shares: Shares,
    oldest_ms: i64,
    done: oneshot::Sender<Result<(), WriteError>>,
}

/// How many rows of each kind one batch put into a merged set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shares {
    samples: usize,
    series: usize,
    events: usize,
    marks: usize,
}

impl Shares {
    fn of(set: &WriteSet) -> Self {
        Self {
            samples: set.samples.len(),
            series: set.series.len(),
            events: set.events.len(),
            marks: set.marks.len(),
        }
    }
}

/// Cuts a merged set back into the sets it was made of, in order.
fn split(mut merged: WriteSet, shares: impl DoubleEndedIterator<Item = Shares>) -> Vec<WriteSet> {
    // From the back, so each cut is a `split_off` of the tail.
    let mut sets: Vec<WriteSet> = shares
        .rev()
        .map(|s| WriteSet {
            samples: merged.samples.split_off(merged.samples.len() - s.samples),
            series: merged.series.split_off(merged.series.len() - s.series),
            events: merged.events.split_off(merged.events.len() - s.events),
            marks: merged.marks.split_off(merged.marks.len() - s.marks),
        })
        .collect();
    sets.reverse();
    sets
}

fn rows_of(s: &WriteSet) -> usize {
    s.samples.len() + s.events.len() + s.series.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_storage::{BatchMark, EventRow, SampleRow};

    fn set(tag: &str, samples: usize, events: usize) -> WriteSet {
        WriteSet {
            samples: (0..samples)
                .map(|i| SampleRow {
                    cluster: "c".into(),
                    member: tag.into(),
                    name: format!("m{i}"),
                    labels: String::new(),
                    ts_ms: i as i64,
                    value: 1.0,
                })
                .collect(),
            series: Vec::new(),
            events: (0..events)
                .map(|i| EventRow {
                    cluster: "c".into(),
                    member: tag.into(),
                    ts_ms: i as i64,
                    kind: "member_up".into(),
                    message: String::new(),
                })
                .collect(),
            marks: vec![BatchMark {
                agent_id: tag.into(),
                sequence: 1,
                samples: samples as u64,
                stored_ms: 1,
            }],
        }
    }

    #[test]
    fn a_merged_set_splits_back_into_its_batches() {
        let sets = [set("a", 3, 0), set("b", 0, 2), set("c", 5, 1)];
        let mut merged = WriteSet::default();
        let shares: Vec<Shares> = sets.iter().map(Shares::of).collect();
        for s in sets.clone() {
            merged.extend(s);
        }
        let back = split(merged, shares.into_iter());
        assert_eq!(back.len(), 3);
        for (orig, got) in sets.iter().zip(&back) {
            assert_eq!(orig.samples, got.samples);
            assert_eq!(orig.series, got.series);
            assert_eq!(orig.events, got.events);
            assert_eq!(orig.marks, got.marks);
        }
    }
}
