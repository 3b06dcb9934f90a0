//! One write through the store: the rows (possibly overlapping another
//! write's), then the batch marks (in write order), then the outcomes.

use super::{rows_of, WriteError, WriteRequest};
use crate::metrics::CollectorMetrics;
use etcdmon_core::retry::RetryPolicy;
use etcdmon_storage::{BatchMark, Storage, StorageError, WriteSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Waits between retries of an unavailable store.
const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// What row tasks and the writer share.
pub(super) struct Store {
    pub storage: Arc<dyn Storage>,
    pub metrics: CollectorMetrics,
    pub health: super::StorageHealth,
    pub shutdown: CancellationToken,
    /// After shutdown, how long an unavailable store is still retried.
    pub grace: Duration,
    /// Whether marks are written apart from their rows, after every earlier
    /// write's marks (row writes overlap). With one write at a time rows and
    /// marks go in one call, which SQLite makes one transaction.
    pub separate_marks: bool,
}

/// One batch of a write: its share of the rows and its outcome.
pub(super) struct Part {
    shares: Shares,
    oldest_ms: i64,
    done: oneshot::Sender<Result<(), WriteError>>,
    /// Its share of `ingest.queue_bytes`, given back when the part is done.
    _memory: Option<super::QueueMemory>,
}

/// A write whose rows are done: each batch with its row outcome, and the
/// marks of the batches whose rows are stored.
#[derive(Default)]
pub(super) struct RowsDone {
    parts: Vec<(Part, Result<(), WriteError>)>,
    marks: Vec<BatchMark>,
}

impl RowsDone {
    /// A row task that panicked. Its batches' senders are gone with it, so
    /// their sessions see "not stored" and do not acknowledge them.
    pub fn lost(e: tokio::task::JoinError) -> Self {
        tracing::error!(error = %e, "storage row write task failed; its batches stay unacknowledged");
        Self::default()
    }
}

impl Store {
    /// Writes the rows of `batch` (not the marks), retrying while the store
    /// is unavailable; a refused write is retried batch by batch so that
    /// only the refused batch is rejected.
    pub async fn write_rows(self: Arc<Self>, batch: Vec<WriteRequest>) -> RowsDone {
        // The batches' rows are moved, not copied, into one set: copying
        // every string of every row cost as much as converting them. Each
        // batch's share is remembered, so the rare refusal below can still
        // write batch by batch.
        let mut merged = WriteSet {
            samples: Vec::with_capacity(batch.iter().map(|r| r.set.samples.len()).sum()),
            series: Vec::with_capacity(batch.iter().map(|r| r.set.series.len()).sum()),
            events: Vec::with_capacity(batch.iter().map(|r| r.set.events.len()).sum()),
            marks: Vec::with_capacity(batch.iter().map(|r| r.set.marks.len()).sum()),
        };
        let mut parts = Vec::with_capacity(batch.len());
        for r in batch {
            parts.push(Part {
                shares: Shares::of(&r.set),
                oldest_ms: r.oldest_ms,
                done: r.done,
                _memory: r.memory,
            });
            merged.extend(r.set);
        }
        let marks = self.marks_apart(&mut merged);
        match self.write_with_retry(&merged).await {
            Ok(()) => RowsDone {
                parts: parts.into_iter().map(|p| (p, Ok(()))).collect(),
                marks,
            },
            Err(StorageError::Unavailable(_)) => RowsDone {
                parts: parts
                    .into_iter()
                    .map(|p| (p, Err(WriteError::ShuttingDown)))
                    .collect(),
                marks: Vec::new(),
            },
            Err(e) => {
                tracing::warn!(error = %e, batches = parts.len(), "write refused; retrying batch by batch");
                // Put back the marks taken out above (none when they stay
                // with their rows), so that each batch's set has its own.
                merged.marks.extend(marks);
                let sets = split(merged, parts.iter().map(|p| p.shares));
                let mut done = RowsDone::default();
                for (p, mut set) in parts.into_iter().zip(sets) {
                    let marks = self.marks_apart(&mut set);
                    let outcome = match self.write_with_retry(&set).await {
                        Ok(()) => {
                            done.marks.extend(marks);
                            Ok(())
                        }
                        Err(StorageError::Unavailable(_)) => Err(WriteError::ShuttingDown),
                        Err(e) => {
                            self.metrics.batches_rejected.inc();
                            tracing::error!(error = %e, "batch rejected by storage; the agent will drop it");
                            Err(WriteError::Rejected(e.to_string()))
                        }
                    };
                    done.parts.push((p, outcome));
                }
                done
            }
        }
    }

    /// Takes the marks out of `set` when they are written apart.
    fn marks_apart(&self, set: &mut WriteSet) -> Vec<BatchMark> {
        if self.separate_marks {
            std::mem::take(&mut set.marks)
        } else {
            Vec::new()
        }
    }

    /// Writes the marks of a write whose rows are done, then reports every
    /// batch's outcome. Called for one write after the other, in the order
    /// they started.
    pub async fn finish(&self, done: RowsDone) {
        let RowsDone { mut parts, marks } = done;
        if !marks.is_empty() {
            let set = WriteSet {
                marks,
                ..Default::default()
            };
            let failed = match self.write_with_retry(&set).await {
                Ok(()) => None,
                Err(StorageError::Unavailable(_)) => Some(WriteError::ShuttingDown),
                // Marks are plain rows the store took before; if it refuses
                // them now, the batches are stored but cannot be marked, and
                // the agent is told to drop them rather than resend them.
                Err(e) => {
                    tracing::error!(error = %e, "batch marks rejected by storage");
                    Some(WriteError::Rejected(e.to_string()))
                }
            };
            if let Some(err) = failed {
                for (_, outcome) in parts.iter_mut().filter(|(_, o)| o.is_ok()) {
                    *outcome = Err(err.clone());
                }
            }
        }
        for (p, outcome) in parts {
            if outcome.is_ok() {
                self.metrics.samples_stored.inc_by(p.shares.samples as u64);
                self.metrics.events_stored.inc_by(p.shares.events as u64);
                self.metrics.batches_stored.inc();
                observe_latency(&self.metrics, p.oldest_ms);
            }
            let _ = p.done.send(outcome);
        }
    }

    /// Retries while the store is unavailable; gives up only after
    /// shutdown plus a grace period. Other errors return at once.
    async fn write_with_retry(&self, set: &WriteSet) -> Result<(), StorageError> {
        let mut backoff = RETRY.backoff();
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
                    let rows = rows_of(set);
                    if rows > 0 {
                        self.metrics.write_rows.observe(rows as f64);
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    self.health.failing();
                    self.metrics
                        .write_failures
                        .with_label_values(&["unavailable"])
                        .inc();
                    let mut wait = backoff.next_wait();
                    if self.shutdown.is_cancelled() {
                        // Draining: the store gets `grace` in all, no more.
                        let since = *gave_up_at.get_or_insert_with(Instant::now);
                        let Some(left) = self.grace.checked_sub(since.elapsed()) else {
                            return Err(e);
                        };
                        wait = wait.min(left);
                    }
                    tracing::warn!(error = %e, retry_in = ?wait, "storage unavailable; holding batches");
                    tokio::time::sleep(wait).await;
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

/// How many rows of each kind one batch put into a merged set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shares {
    samples: usize,
    series: usize,
    events: usize,
    marks: usize,
}

impl Shares {
    pub fn of(set: &WriteSet) -> Self {
        Self {
            samples: set.samples.len(),
            series: set.series.len(),
            events: set.events.len(),
            marks: set.marks.len(),
        }
    }
}

/// Cuts a merged set back into the sets it was made of, in order.
pub(super) fn split(
    mut merged: WriteSet,
    shares: impl DoubleEndedIterator<Item = Shares>,
) -> Vec<WriteSet> {
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
