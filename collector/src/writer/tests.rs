//! Tests of the writer: batching, concurrency and splitting.

use super::store::{split, Shares};
use super::*;
use crate::config::IngestConfig;
use etcdmon_storage::{BatchMark, EventRow, SampleRow};
use std::time::Duration;

fn set(tag: &str, samples: usize, events: usize) -> WriteSet {
    batch(tag, tag, 1, samples, events)
}

/// `samples` rows and `events` events of member `member`, as batch
/// `sequence` of agent `agent`.
fn batch(agent: &str, member: &str, sequence: u64, samples: usize, events: usize) -> WriteSet {
    let tag = member;
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
            agent_id: agent.into(),
            sequence,
            samples: samples as u64,
            stored_ms: 1,
        }],
    }
}

/// A real store (SQLite, or ClickHouse) behind gates: row writes wait until
/// the test opens a gate (`held` for rows of member `held`, `gate` for the
/// others), and the sample count of every row write is recorded as it
/// passes. Marks-only writes pass at once.
struct Gated {
    inner: Arc<dyn Storage>,
    gate: tokio::sync::Semaphore,
    held: tokio::sync::Semaphore,
    slots: usize,
    writes: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Storage for Gated {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn migrate(&self) -> etcdmon_storage::Result<()> {
        self.inner.migrate().await
    }
    async fn stored_through(&self, agent_id: &str) -> etcdmon_storage::Result<u64> {
        self.inner.stored_through(agent_id).await
    }
    async fn write(&self, set: &WriteSet) -> etcdmon_storage::Result<()> {
        if set.samples.iter().any(|s| &*s.member == "poison") {
            return Err(etcdmon_storage::StorageError::Rejected("poison".into()));
        }
        if !set.samples.is_empty() {
            let gate = if &*set.samples[0].member == "held" {
                &self.held
            } else {
                &self.gate
            };
            gate.acquire().await.expect("gate open").forget();
            self.writes.lock().unwrap().push(set.samples.len());
        }
        self.inner.write(set).await
    }
    fn concurrent_writes(&self) -> usize {
        self.slots
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

struct Harness {
    tx: mpsc::Sender<WriteRequest>,
    store: Arc<Gated>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    _clickhouse: Option<etcdmon_testkit::ClickHouseServer>,
}

impl Harness {
    async fn start(cfg: IngestConfig) -> Self {
        Self::with_slots(cfg, 1).await
    }

    /// On SQLite, with `slots` concurrent writes (SQLite itself has one).
    async fn with_slots(cfg: IngestConfig, slots: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner = etcdmon_storage::sqlite::SqliteStorage::open(
            dir.path().join("w.db"),
            Default::default(),
        )
        .unwrap();
        Self::on(Arc::new(inner), slots, cfg, dir, None).await
    }

    /// On a real ClickHouse server of its own, with its default concurrent
    /// INSERTs: marks are then separate INSERTs, as in production.
    async fn on_clickhouse(cfg: IngestConfig) -> Self {
        let server = etcdmon_testkit::ClickHouseServer::start().expect("start clickhouse-server");
        let inner = etcdmon_storage::clickhouse::ClickHouseStorage::new(
            etcdmon_storage::clickhouse::ClickHouseConfig {
                url: server.http_url(),
                database: "writer_test".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let slots = inner.concurrent_writes();
        assert!(slots > 1, "ClickHouse allows concurrent INSERTs by default");
        let dir = tempfile::tempdir().unwrap();
        Self::on(Arc::new(inner), slots, cfg, dir, Some(server)).await
    }

    async fn on(
        inner: Arc<dyn Storage>,
        slots: usize,
        cfg: IngestConfig,
        dir: tempfile::TempDir,
        clickhouse: Option<etcdmon_testkit::ClickHouseServer>,
    ) -> Self {
        inner.migrate().await.unwrap();
        let store = Arc::new(Gated {
            inner,
            gate: tokio::sync::Semaphore::new(0),
            held: tokio::sync::Semaphore::new(0),
            slots,
            writes: Default::default(),
        });
        let (tx, writer, _) = channel(store.clone(), cfg, CollectorMetrics::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(writer.run(shutdown.clone(), std::time::Duration::from_secs(10)));
        Self {
            tx,
            store,
            shutdown,
            task,
            _dir: dir,
            _clickhouse: clickhouse,
        }
    }

    /// Queues `samples` rows as agent `tag`'s batch; the receiver says when stored.
    async fn send(&self, tag: &str, samples: usize) -> oneshot::Receiver<Result<(), WriteError>> {
        self.send_set(set(tag, samples, 0)).await
    }

    async fn send_set(&self, set: WriteSet) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, rx) = oneshot::channel();
        self.tx.send(WriteRequest::new(set, 1, done)).await.unwrap();
        rx
    }

    /// Waits until the writer has taken everything queued and holds it at
    /// the gate. The test runtime has one thread, and the writer goes from
    /// taking the batches to the gate without yielding, so an empty
    /// channel means it is there.
    async fn until_writing(&self) {
        while self.tx.capacity() < self.tx.max_capacity() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` writes have reached the store.
    async fn writes_reach(&self, n: usize) -> Vec<usize> {
        for _ in 0..500 {
            let w = self.store.writes.lock().unwrap().clone();
            if w.len() >= n {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} writes: {:?}",
            self.store.writes.lock().unwrap()
        );
    }

    async fn stop(self) -> Vec<usize> {
        self.store.gate.add_permits(1_000);
        self.store.held.add_permits(1_000);
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.store.writes.lock().unwrap().clone()
    }
}

fn cfg(flush_rows: usize, flush_interval: Duration, max_write_rows: usize) -> IngestConfig {
    IngestConfig {
        flush_rows,
        flush_interval,
        max_write_rows,
        ..IngestConfig::default()
    }
}

#[tokio::test]
async fn batches_queued_behind_a_write_go_out_together_up_to_the_largest_write() {
    // flush_rows 10, but every batch that queued behind the first
    // write goes into the next one, up to max_write_rows (25).
    let h = Harness::start(cfg(10, Duration::from_secs(3600), 25)).await;
    let first = h.send("a", 10).await;
    h.until_writing().await;
    let mut later = Vec::new();
    for tag in ["b", "c", "d", "e", "f", "g", "h"] {
        later.push(h.send(tag, 5).await);
    }
    h.store.gate.add_permits(1);
    assert_eq!(h.writes_reach(1).await, vec![10]);
    first.await.unwrap().unwrap();
    h.store.gate.add_permits(2);
    // 35 rows queued: one write of 25 (five batches), then the last 10
    // (which reach flush_rows) at once.
    assert_eq!(h.writes_reach(3).await, vec![10, 25, 10]);
    for rx in later {
        rx.await.unwrap().unwrap();
    }
    assert_eq!(h.stop().await, vec![10, 25, 10]);
}

#[tokio::test]
async fn a_batch_that_waited_behind_a_write_does_not_wait_a_flush_interval_again() {
    let interval = Duration::from_secs(4);
    let h = Harness::start(cfg(5, interval, 10_000)).await;
    let first = h.send("a", 5).await;
    h.until_writing().await;
    // Below flush_rows: due when it has waited the interval.
    let second = h.send("b", 4).await;
    // Hold the first write past the second batch's interval.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    h.store.gate.add_permits(2);
    let released = Instant::now();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    // The old writer started a fresh interval for the second batch when
    // it took it from the queue; it is due already.
    assert!(
        released.elapsed() < interval / 2,
        "second batch waited {:?} after the first write",
        released.elapsed()
    );
    assert_eq!(h.stop().await, vec![5, 4]);
}

#[tokio::test]
async fn rows_of_two_writes_overlap_but_a_mark_waits_for_every_earlier_write() {
    // max_write_rows 5: a second batch of 5 rows is a full write.
    let h = Harness::with_slots(cfg(5, Duration::from_secs(3600), 5), 2).await;
    marks_wait_for_every_earlier_write(h).await;
}

/// The same against ClickHouse, where batch marks are INSERTs of their own.
#[tokio::test]
async fn on_clickhouse_a_mark_waits_for_every_earlier_write_too() {
    let h = Harness::on_clickhouse(cfg(5, Duration::from_secs(3600), 5)).await;
    marks_wait_for_every_earlier_write(h).await;
}

/// Agent x's batch 1 is held in its row write while batch 2 is written
/// beside it; batch 2 is acknowledged, and its mark stored, only after
/// batch 1.
async fn marks_wait_for_every_earlier_write(h: Harness) {
    h.store.gate.add_permits(1_000);
    // Agent x's batch 1 is held inside its row write ...
    let first = h.send_set(batch("x", "held", 1, 5, 0)).await;
    h.until_writing().await;
    // ... while its batch 2 goes through a second, concurrent write.
    let mut second = h.send_set(batch("x", "free", 2, 5, 0)).await;
    assert_eq!(h.writes_reach(1).await, vec![5]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Batch 2's rows are stored, but its mark is not: a reconnecting agent
    // must still be told to resend from batch 1.
    assert!(
        second.try_recv().is_err(),
        "batch 2 acknowledged before batch 1"
    );
    assert_eq!(h.store.stored_through("x").await.unwrap(), 0);
    h.store.held.add_permits(1);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(h.store.stored_through("x").await.unwrap(), 2);
    assert_eq!(h.stop().await, vec![5, 5]);
}

#[tokio::test]
async fn a_second_write_starts_beside_a_running_one_only_at_max_write_rows() {
    for slots in [1, 2] {
        let h = Harness::with_slots(cfg(5, Duration::from_secs(3600), 12), slots).await;
        h.store.gate.add_permits(1_000);
        let first = h.send_set(batch("x", "held", 1, 5, 0)).await;
        h.until_writing().await;
        // 10 rows: past flush_rows, short of max_write_rows.
        let second = h.send_set(batch("x", "free", 2, 5, 0)).await;
        let third = h.send_set(batch("x", "free", 3, 5, 0)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            h.store.writes.lock().unwrap().is_empty(),
            "{slots} slots: a small write started beside a running one"
        );
        // 15 rows: now a full write, which only a second slot may start.
        let fourth = h.send_set(batch("x", "free", 4, 5, 0)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expected: Vec<usize> = if slots == 2 { vec![15] } else { vec![] };
        assert_eq!(*h.store.writes.lock().unwrap(), expected, "{slots} slots");
        h.store.held.add_permits(1);
        for rx in [first, second, third, fourth] {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(h.store.stored_through("x").await.unwrap(), 4);
        let writes = h.stop().await;
        assert_eq!(
            writes.iter().sum::<usize>(),
            20,
            "{slots} slots: {writes:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_write_rejects_only_the_refused_batch_with_either_slot_count() {
    for slots in [1, 2] {
        let h = Harness::with_slots(cfg(15, Duration::from_secs(3600), 100), slots).await;
        h.store.gate.add_permits(1_000);
        // One write of three batches, refused as a whole for the middle one.
        let a = h.send_set(batch("a", "a", 1, 5, 0)).await;
        let poison = h.send_set(batch("p", "poison", 1, 5, 0)).await;
        let b = h.send_set(batch("b", "b", 1, 5, 1)).await;
        a.await.unwrap().unwrap();
        assert!(
            matches!(poison.await.unwrap(), Err(WriteError::Rejected(_))),
            "{slots} slots"
        );
        b.await.unwrap().unwrap();
        // Each batch kept its own mark through the batch-by-batch retry.
        assert_eq!(h.store.stored_through("a").await.unwrap(), 1);
        assert_eq!(h.store.stored_through("p").await.unwrap(), 0);
        assert_eq!(h.store.stored_through("b").await.unwrap(), 1);
        assert_eq!(h.stop().await, vec![5, 5], "{slots} slots");
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

/// `ingest.queue_bytes` bounds the rows held for the writer: a batch that does
/// not fit waits until an earlier one's rows are done, and a batch larger than the
/// whole budget waits for all of it rather than forever.
#[tokio::test]
async fn the_queue_budget_holds_back_batches_until_memory_is_given_back() {
    let metrics = CollectorMetrics::new();
    let budget = QueueBudget::new(1 << 20, metrics.clone());
    // About 0.7 MiB of rows each.
    let big = set("a", 10_000, 0);
    assert!(estimated_bytes(&big) > 600 * 1024 && estimated_bytes(&big) < 1 << 20);
    let first = budget.reserve(&big).await.expect("fits");
    assert!(metrics.queue_bytes.get() > 600 * 1024);
    let second = tokio::time::timeout(Duration::from_millis(100), budget.reserve(&big)).await;
    assert!(second.is_err(), "the second batch must wait");
    drop(first);
    assert_eq!(metrics.queue_bytes.get(), 0);
    let second = tokio::time::timeout(Duration::from_secs(1), budget.reserve(&big))
        .await
        .expect("fits once the first is done")
        .expect("budget open");
    drop(second);
    let huge = set("b", 40_000, 0);
    assert!(estimated_bytes(&huge) > 1 << 20);
    let alone = tokio::time::timeout(Duration::from_secs(1), budget.reserve(&huge))
        .await
        .expect("larger than the budget: it takes all of it");
    assert!(alone.is_some());
}
