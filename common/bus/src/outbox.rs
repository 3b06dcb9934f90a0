//! A bounded in-memory outbox between the rule engine and the bus.
//!
//! ```text
//! rules ──OutboxSender::send──> queue (VecDeque, ≤ max_bytes of JSON) ──OutboxTask──> Publisher
//!          never blocks          full: drop the oldest, count it        oldest first,
//!                                                                       retry while Unavailable
//! ```
//!
//! The collector evaluates rules every second and must not wait for NATS, so
//! [`OutboxSender::send`] only appends to a queue under a short lock. [`OutboxTask::run`]
//! publishes the queue oldest first, one candidate at a time, so the alerter sees the
//! collector's order. While the publisher says [`BusError::Unavailable`], the task
//! retries the same candidate with exponential backoff (100 ms up to 5 s, with jitter so
//! that many collectors do not hammer a recovering server in step) and the queue grows.
//!
//! # Memory bound
//!
//! The queue's size is the sum of the candidates' serialized (JSON) sizes, the same bytes
//! that go on the wire; the heap use is a small multiple of it. When a send would push it
//! over `max_bytes`, the oldest queued candidates are dropped until it fits, and a
//! candidate larger than `max_bytes` on its own is dropped at once. Oldest first because
//! a newer candidate for the same alert supersedes an older one, and because the alerter
//! judges staleness by `evaluated_ms` anyway. The candidate being published right now is
//! outside the queue and is not dropped, so the true bound is `max_bytes` plus one
//! candidate. Drops are counted in [`OutboxStats::dropped`] and logged once per outage.
//!
//! A candidate the bus refuses for good ([`BusError::Rejected`]) is logged, counted in
//! [`OutboxStats::rejected`] and skipped, so it cannot block the queue. If the bus is
//! [`BusError::Closed`] (the embedded alerter is gone), the task ends.
//!
//! # Shutdown
//!
//! When the shutdown token fires, the task stops retrying and makes one pass over what is
//! left, bounded by a grace period (2 s by default, [`OutboxTask::with_shutdown_grace`]);
//! whatever is still queued after it is logged as lost. A publish cut short by shutdown
//! may still have reached the server; publishing it again in the flush is harmless
//! because the message id deduplicates it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;

use crate::{AlertCandidate, BusError, Publisher};

/// Default time [`OutboxTask::run`] spends flushing after shutdown.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Default first and longest pause between retries of one candidate.
const DEFAULT_MIN_DELAY: Duration = Duration::from_millis(100);
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Builds the two halves of an outbox.
#[derive(Debug)]
pub struct Outbox;

impl Outbox {
    /// An outbox that publishes through `publisher` and keeps at most `max_bytes` of
    /// serialized candidates waiting. Spawn [`OutboxTask::run`]; send with
    /// [`OutboxSender::send`] (clone the sender freely).
    // Two halves, like `tokio::sync::mpsc::channel`, so the task can be spawned apart
    // from the senders; the name reads best at call sites.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(publisher: Arc<dyn Publisher>, max_bytes: usize) -> (OutboxSender, OutboxTask) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: tokio::sync::Notify::new(),
            stats: Arc::new(OutboxStats::default()),
            max_bytes,
        });
        let sender = OutboxSender {
            shared: shared.clone(),
        };
        let task = OutboxTask {
            shared,
            publisher,
            min_delay: DEFAULT_MIN_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            grace: DEFAULT_SHUTDOWN_GRACE,
        };
        (sender, task)
    }
}

/// Counters of an outbox, for the caller's `/metrics`. All are totals since creation
/// except the two `pending` gauges.
#[derive(Debug, Default)]
pub struct OutboxStats {
    queued: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    pending_bytes: AtomicU64,
}

impl OutboxStats {
    /// Candidates handed to [`OutboxSender::send`].
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Candidates the bus confirmed as stored.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Candidates dropped because the queue was full (or one was larger than the whole
    /// queue may be).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Candidates the bus refused for good ([`BusError::Rejected`]).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Candidates waiting, including the one being published.
    pub fn pending(&self) -> u64 {
        // Read the outcomes before `queued`, so a concurrent send can only make the
        // result larger, never wrap below zero.
        let done = self.published() + self.dropped() + self.rejected();
        self.queued().saturating_sub(done)
    }

    /// Serialized bytes waiting, including the candidate being published.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }
}

/// The sending half: appends candidates to the queue without ever blocking.
#[derive(Debug, Clone)]
pub struct OutboxSender {
    shared: Arc<Shared>,
}

impl OutboxSender {
    /// Queues `candidate` for publishing. Never blocks and never fails: when the queue
    /// would exceed its byte bound, the oldest candidates are dropped (and counted) to
    /// make room.
    pub fn send(&self, candidate: AlertCandidate) {
        let shared = &*self.shared;
        let stats = &*shared.stats;
        let size = serialized_size(&candidate);
        stats.queued.fetch_add(1, Ordering::Relaxed);
        {
            let mut queue = shared.lock();
            if size > shared.max_bytes {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(fingerprint = %candidate.fingerprint, size,
                    max_bytes = shared.max_bytes,
                    "alert candidate larger than the whole outbox; dropped");
                return;
            }
            while queue.bytes + size > shared.max_bytes {
                let Some(oldest) = queue.items.pop_front() else {
                    break;
                };
                queue.bytes -= oldest.size;
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                stats
                    .pending_bytes
                    .fetch_sub(oldest.size as u64, Ordering::Relaxed);
                if !queue.dropping {
                    queue.dropping = true;
                    tracing::warn!(
                        max_bytes = shared.max_bytes,
                        "alert outbox full (the bus has been unavailable for a while): \
                         dropping the oldest candidates"
                    );
                }
            }
            queue.bytes += size;
            queue.items.push_back(Item { candidate, size });
            stats
                .pending_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
        }
        // Stores a permit if the task is not waiting right now, so no wake-up is lost.
        shared.wake.notify_one();
    }

    /// The outbox's counters.
    pub fn stats(&self) -> Arc<OutboxStats> {
        self.shared.stats.clone()
    }
}

/// The publishing half; run it with [`OutboxTask::run`].
pub struct OutboxTask {
    shared: Arc<Shared>,
    publisher: Arc<dyn Publisher>,
    min_delay: Duration,
    max_delay: Duration,
    grace: Duration,
}

impl std::fmt::Debug for OutboxTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxTask")
            .field("min_delay", &self.min_delay)
            .field("max_delay", &self.max_delay)
            .field("grace", &self.grace)
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl OutboxTask {
    /// How long [`run`](Self::run) keeps flushing after shutdown (default 2 s).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The first and the longest pause between retries of a candidate while the bus is
    /// unavailable (default 100 ms and 5 s).
    pub fn with_retry_delays(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }

    /// The outbox's counters.
    pub fn stats(&self) -> Arc<OutboxStats> {
        self.shared.stats.clone()
    }

    /// Publishes queued candidates, oldest first, until `shutdown` fires (then flushes
    /// within the grace period) or the bus is closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut in_flight: Option<Item> = None;
        let mut backoff: Option<backon::ExponentialBackoff> = None;
        let mut failures = 0u64;
        loop {
            if in_flight.is_none() {
                in_flight = self.shared.take_oldest();
            }
            let Some(item) = &in_flight else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.shared.wake.notified() => continue,
                }
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = self.publisher.publish(&item.candidate) => result,
            };
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "alert bus is back; publishing the outbox");
                    }
                    failures = 0;
                    backoff = None;
                    self.done(in_flight.take(), &self.shared.stats.published);
                    self.shared.lock().dropping = false;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, pending = self.shared.stats.pending(),
                            "alert bus unavailable; keeping candidates and retrying");
                    } else {
                        tracing::debug!(error = %e, failures, "alert bus still unavailable");
                    }
                    let delay = backoff
                        .get_or_insert_with(|| self.backoff())
                        .next()
                        .unwrap_or(self.max_delay);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(BusError::Closed) => {
                    tracing::error!(
                        pending = self.shared.stats.pending(),
                        "alert bus closed; the outbox stops publishing"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, fingerprint = %item.candidate.fingerprint,
                        "alert bus refused a candidate; skipping it");
                    self.done(in_flight.take(), &self.shared.stats.rejected);
                }
            }
        }
        self.flush(in_flight).await;
    }

    /// One bounded pass over what is left after shutdown.
    async fn flush(&self, mut in_flight: Option<Item>) {
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            if in_flight.is_none() {
                in_flight = self.shared.take_oldest();
            }
            let Some(item) = &in_flight else {
                return;
            };
            let publish = self.publisher.publish(&item.candidate);
            match tokio::time::timeout_at(deadline, publish).await {
                Ok(Ok(())) => self.done(in_flight.take(), &self.shared.stats.published),
                Ok(Err(BusError::Rejected(_))) => {
                    self.done(in_flight.take(), &self.shared.stats.rejected);
                }
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no success within the {:?} grace period", self.grace),
                    };
                    tracing::warn!(lost = self.shared.stats.pending(), %why,
                        "shutting down with alert candidates not published");
                    return;
                }
            }
        }
    }

    /// Accounts for a candidate that left the outbox, adding it to `counter`.
    fn done(&self, item: Option<Item>, counter: &AtomicU64) {
        if let Some(item) = item {
            counter.fetch_add(1, Ordering::Relaxed);
            self.shared
                .stats
                .pending_bytes
                .fetch_sub(item.size as u64, Ordering::Relaxed);
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    stats: Arc<OutboxStats>,
    max_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The lock is held only for queue operations that cannot panic halfway; a
        // poisoned lock still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the oldest candidate out of the queue for publishing; it no longer
    /// counts against `max_bytes` (it is the one outside the bound, see the
    /// module docs).
    fn take_oldest(&self) -> Option<Item> {
        let mut queue = self.lock();
        let item = queue.items.pop_front()?;
        queue.bytes -= item.size;
        Some(item)
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Sum of `items[..].size`.
    bytes: usize,
    /// Whether candidates were dropped since the last successful publish (to log the
    /// overflow once per outage, not once per candidate).
    dropping: bool,
}

#[derive(Debug)]
struct Item {
    candidate: AlertCandidate,
    size: usize,
}

/// The length of `candidate` as JSON, counted without building the string.
fn serialized_size(candidate: &AlertCandidate) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serializing string maps and numbers cannot fail; if it ever did, the size so far
    // is still a usable estimate.
    let _ = serde_json::to_writer(&mut counter, candidate);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::AlertState;
    use std::sync::atomic::AtomicBool;

    fn candidate(transition: u64) -> AlertCandidate {
        AlertCandidate {
            fingerprint: "fp".into(),
            state: AlertState::Firing,
            labels: [("cluster".to_owned(), "c1".to_owned())].into(),
            annotations: Default::default(),
            value: 1.0,
            active_since_ms: 0,
            transition,
            evaluated_ms: 0,
        }
    }

    /// Records publishes; unavailable while `down`, refuses transition `reject`.
    #[derive(Default)]
    struct Fake {
        down: AtomicBool,
        reject: Option<u64>,
        attempts: AtomicU64,
        published: Mutex<Vec<u64>>,
    }

    #[async_trait::async_trait]
    impl Publisher for Fake {
        async fn publish(&self, c: &AlertCandidate) -> Result<(), BusError> {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(BusError::Unavailable("down".into()));
            }
            if self.reject == Some(c.transition) {
                return Err(BusError::Rejected("no".into()));
            }
            self.published.lock().unwrap().push(c.transition);
            Ok(())
        }
    }

    impl Fake {
        fn published(&self) -> Vec<u64> {
            self.published.lock().unwrap().clone()
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn fast(task: OutboxTask) -> OutboxTask {
        task.with_retry_delays(Duration::from_millis(1), Duration::from_millis(10))
    }

    #[tokio::test]
    async fn publishes_in_order_and_keeps_candidates_while_unavailable() {
        let fake = Arc::new(Fake::default());
        fake.down.store(true, Ordering::Relaxed);
        let (sender, task) = Outbox::new(fake.clone(), 1 << 20);
        let stats = sender.stats();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(fast(task).run(shutdown.clone()));
        for t in 1..=5 {
            sender.send(candidate(t));
        }
        wait_for("retries", || fake.attempts.load(Ordering::Relaxed) >= 5).await;
        assert!(fake.published().is_empty());
        assert_eq!(stats.pending(), 5);
        assert!(stats.pending_bytes() > 0);

        fake.down.store(false, Ordering::Relaxed);
        wait_for("publishes", || stats.published() == 5).await;
        assert_eq!(fake.published(), [1, 2, 3, 4, 5]);
        assert_eq!(
            (stats.queued(), stats.dropped(), stats.pending()),
            (5, 0, 0)
        );
        assert_eq!(stats.pending_bytes(), 0);
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn full_queue_drops_the_oldest_and_counts_them() {
        let fake = Arc::new(Fake::default());
        let size = serialized_size(&candidate(1));
        // Room for three candidates (all transitions below serialize to the same size).
        let (sender, task) = Outbox::new(fake.clone(), 3 * size + size / 2);
        let stats = sender.stats();
        for t in 1..=7 {
            sender.send(candidate(t));
        }
        assert_eq!(
            (stats.queued(), stats.dropped(), stats.pending()),
            (7, 4, 3)
        );
        assert_eq!(stats.pending_bytes(), 3 * size as u64);

        // A candidate larger than the whole outbox is dropped without evicting others.
        let mut huge = candidate(8);
        huge.annotations
            .insert("description".into(), "x".repeat(4 * size));
        sender.send(huge);
        assert_eq!((stats.dropped(), stats.pending()), (5, 3));

        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(task.run(shutdown.clone()));
        wait_for("publishes", || stats.published() == 3).await;
        assert_eq!(fake.published(), [5, 6, 7]);
        shutdown.cancel();
        handle.await.unwrap();
    }

    /// Published candidates leave the queue's byte count. They did not: after a
    /// process had published `max_bytes` of candidates in all, every candidate sent
    /// while another one waited pushed the older one out, dropped.
    #[tokio::test]
    async fn published_candidates_free_their_room() {
        let fake = Arc::new(Fake::default());
        let size = serialized_size(&candidate(1));
        let (sender, task) = Outbox::new(fake.clone(), 3 * size + size / 2);
        let stats = sender.stats();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(fast(task).run(shutdown.clone()));
        // Ten times what the queue holds, a few at a time, all published.
        for round in 0..10u64 {
            for t in 1..=3 {
                sender.send(candidate(round * 3 + t));
            }
            wait_for("publishes", || stats.published() == (round + 1) * 3).await;
        }
        // With the bus away, the queue still holds three besides the one retried.
        fake.down.store(true, Ordering::Relaxed);
        let attempts = fake.attempts.load(Ordering::Relaxed);
        sender.send(candidate(100));
        wait_for("a failed attempt", || {
            fake.attempts.load(Ordering::Relaxed) > attempts
        })
        .await;
        for t in 101..=103 {
            sender.send(candidate(t));
        }
        // One is being retried outside the queue; three wait in it; none dropped.
        assert_eq!(stats.dropped(), 0, "room was never given back");
        fake.down.store(false, Ordering::Relaxed);
        wait_for("publishes", || stats.published() == 34).await;
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn rejected_candidates_are_skipped_and_counted() {
        let fake = Arc::new(Fake {
            reject: Some(2),
            ..Fake::default()
        });
        let (sender, task) = Outbox::new(fake.clone(), 1 << 20);
        let stats = sender.stats();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(task.run(shutdown.clone()));
        for t in 1..=3 {
            sender.send(candidate(t));
        }
        wait_for("publishes", || stats.published() == 2).await;
        assert_eq!(fake.published(), [1, 3]);
        assert_eq!((stats.rejected(), stats.pending()), (1, 0));
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_flushes_what_it_can_within_the_grace_period() {
        // Up: the flush publishes everything queued before shutdown.
        let fake = Arc::new(Fake::default());
        let (sender, task) = Outbox::new(fake.clone(), 1 << 20);
        for t in 1..=3 {
            sender.send(candidate(t));
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        task.run(shutdown).await;
        assert_eq!(fake.published(), [1, 2, 3]);

        // Down: shutdown returns promptly and the candidates stay pending.
        let fake = Arc::new(Fake::default());
        fake.down.store(true, Ordering::Relaxed);
        let (sender, task) = Outbox::new(fake.clone(), 1 << 20);
        let stats = sender.stats();
        sender.send(candidate(1));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(
            fast(task)
                .with_shutdown_grace(Duration::from_millis(50))
                .run(shutdown.clone()),
        );
        wait_for("a retry", || fake.attempts.load(Ordering::Relaxed) >= 2).await;
        let started = std::time::Instant::now();
        shutdown.cancel();
        handle.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(stats.pending(), 1);
    }

    #[tokio::test]
    async fn closed_bus_ends_the_task() {
        let (publisher, subscriber) = crate::memory::channel(1);
        drop(subscriber);
        let (sender, task) = Outbox::new(Arc::new(publisher), 1 << 20);
        sender.send(candidate(1));
        tokio::time::timeout(Duration::from_secs(5), task.run(CancellationToken::new()))
            .await
            .expect("task ends when the bus is closed");
    }

    #[test]
    fn serialized_size_matches_json() {
        let c = candidate(42);
        assert_eq!(serialized_size(&c), serde_json::to_vec(&c).unwrap().len());
    }
}
