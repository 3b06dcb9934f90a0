//! Steps of offered load, and the search for the collector's maximum.
//!
//! A step starts `agents` simulated agents, spread evenly over one second,
//! lets them run for a warm-up (connects, first series metadata, the
//! writer's first flushes), then measures a window. At the end the agents
//! stop producing, wait for the acks of what they sent, and close their
//! streams; the next step starts fresh agents (new agent ids, the same
//! members `a0`, `a1`, ..., so series metadata is not rewritten).
//!
//! A step **kept up** when, over its window, no stream failed, the acked
//! samples were at least [`KEEP_UP_RATIO`] of the produced ones, and the
//! backlog (batches due but not yet acknowledged, over all agents) did not
//! grow: a collector that falls behind shows a backlog and a latency that
//! keep growing. Each agent makes one batch a second, so the backlog divided
//! by the agents is about the mean ingest latency in seconds; the step
//! fails when that *lag* is more than [`MAX_LAG_GROWTH`] seconds higher over
//! the window's last quarter than over its first (means of readings every
//! 100 ms, which smooths out the writer's flush cycle).
//!
//! Every step starts once ClickHouse runs no merge, so that the merges an
//! overloaded step left behind do not count against the next one; each
//! step's own merges run during its warm-up and window.
//!
//! The ramp doubles the agents until a step does not keep up (or the limit
//! is reached), then bisects between the last step that kept up and the
//! first that did not. The maximum is the highest acked rate of a step that
//! kept up.

use crate::agent::{self, AgentContext, AgentOutcome, AgentSpec, Verify};
use crate::cpu::{self, CpuUsage};
use crate::payload::Payload;
use crate::stats::{Recorder, WindowStats};
use etcdmon_collector::metrics::CollectorMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Acked / produced samples below this fail a step (a coarse check; the
/// lag growth is the fine one).
pub const KEEP_UP_RATIO: f64 = 0.9;
/// Growth of the lag (backlog / agents) over a window that fails a step, s.
pub const MAX_LAG_GROWTH: f64 = 0.5;
/// Backlog readings, this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long a step's agents may take to collect their outstanding acks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time between steps.
const PAUSE: Duration = Duration::from_secs(3);
/// Progress lines during a window, this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Waits until ClickHouse runs no merge (blocking; called before every step).
pub type Settle = Box<dyn Fn() + Send + Sync>;

/// Durations of a step.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    /// Before the window.
    pub warmup: Duration,
    /// The window.
    pub measure: Duration,
}

/// What the writer did during a window (from the collector's self-metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterUsage {
    /// Stored writes with rows (INSERTs of rows).
    pub writes: u64,
    /// Rows per write, mean.
    pub rows_per_write: f64,
    /// Time inside `Storage::write` over the window, summed over concurrent
    /// writes (so up to 200% with two INSERTs in flight).
    pub busy: f64,
    /// Failed write attempts (retried or rejected).
    pub failures: u64,
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// `ramp`, `bisect` or `80%`.
    pub phase: &'static str,
    /// Simulated agents.
    pub agents: usize,
    /// Nominal offered samples per second (agents x samples per batch).
    pub offered_rate: f64,
    /// The window.
    pub stats: WindowStats,
    /// CPU over the window.
    pub cpu: CpuUsage,
    /// The writer over the window.
    pub writer: WriterUsage,
    /// Batches still unacknowledged when the drain gave up.
    pub unacked_at_end: u64,
    /// Highest resident set size of this process (collector and load
    /// generator) read during the window, MiB.
    pub rss_peak_mib: f64,
    /// Verdict, see the module docs.
    pub kept_up: bool,
}

impl StepResult {
    /// Growth of the lag (backlog per agent, about the mean latency) from
    /// the window's first quarter to its last, in seconds.
    pub fn lag_growth(&self) -> f64 {
        (self.stats.backlog_last_quarter - self.stats.backlog_first_quarter) / self.agents as f64
    }
}

/// Runs steps against one collector.
pub struct Ramp {
    url: String,
    payload: Arc<Payload>,
    recorder: Arc<Recorder>,
    metrics: CollectorMetrics,
    clickhouse_pid: Option<u32>,
    steps_run: usize,
    verify: Option<Verify>,
    settle: Settle,
    /// What the one-off verification reported.
    pub verified: Option<String>,
}

impl Ramp {
    /// A ramp against the collector at `url`; `verify` runs on the first ack
    /// of the first step's first agent.
    pub fn new(
        url: String,
        payload: Arc<Payload>,
        metrics: CollectorMetrics,
        clickhouse_pid: Option<u32>,
        verify: Verify,
        settle: Settle,
    ) -> Self {
        Self {
            url,
            payload,
            recorder: Arc::new(Recorder::new()),
            metrics,
            clickhouse_pid,
            steps_run: 0,
            verify: Some(verify),
            settle,
            verified: None,
        }
    }

    /// Samples acknowledged over all steps.
    pub fn total_acked_samples(&self) -> u64 {
        self.recorder.total_acked_samples()
    }

    /// Doubling from `start` up to `max`, then `bisect` rounds. Returns every
    /// step in the order run.
    pub async fn search(
        &mut self,
        start: usize,
        max: usize,
        bisect: usize,
        timing: StepTiming,
    ) -> Vec<StepResult> {
        let mut results = Vec::new();
        let mut ok: Option<usize> = None;
        let mut failed: Option<usize> = None;
        let mut agents = start.max(1);
        loop {
            let r = self.step("ramp", agents, timing).await;
            let kept_up = r.kept_up;
            results.push(r);
            if !kept_up {
                failed = Some(agents);
                break;
            }
            ok = Some(agents);
            if agents >= max {
                break;
            }
            agents = (agents * 2).min(max);
        }
        if let (Some(mut lo), Some(mut hi)) = (ok, failed) {
            for _ in 0..bisect {
                let mid = (lo + hi) / 2;
                // Closer than ~5% apart is within the noise of a step.
                if mid <= lo || (hi - lo) * 20 < lo {
                    break;
                }
                let r = self.step("bisect", mid, timing).await;
                if r.kept_up {
                    lo = mid;
                } else {
                    hi = mid;
                }
                results.push(r);
            }
        }
        results
    }

    /// Runs one step of `agents` agents.
    pub async fn step(
        &mut self,
        phase: &'static str,
        agents: usize,
        timing: StepTiming,
    ) -> StepResult {
        // Merges left by the previous step are its load, not this one's; an
        // overloaded step leaves minutes of them.
        tokio::task::block_in_place(|| (self.settle)());
        self.steps_run += 1;
        let step_no = self.steps_run;
        let per_batch = self.payload.samples_per_batch() as f64;
        let offered_rate = agents as f64 * per_batch;
        eprintln!(
            "ingest-load: step {step_no} ({phase}): {agents} agents, offered {offered_rate:.0} samples/s; \
             warm-up {:?}, window {:?}",
            timing.warmup, timing.measure
        );
        let ctx = Arc::new(AgentContext {
            url: self.url.clone(),
            payload: self.payload.clone(),
            recorder: self.recorder.clone(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        let start = Instant::now() + Duration::from_millis(200);
        let mut tasks = Vec::with_capacity(agents);
        for index in 0..agents {
            let spec = AgentSpec {
                index,
                agent_id: format!("ingest-load-s{step_no}-a{index}"),
                first_tick: start + Duration::from_secs(1) * index as u32 / agents as u32,
                verify: if index == 0 { self.verify.take() } else { None },
            };
            tasks.push(tokio::spawn(agent::run(ctx.clone(), spec)));
        }
        tokio::time::sleep_until(start + Duration::from_secs(1) + timing.warmup).await;

        self.recorder.begin();
        let cpu_before = cpu::sample(self.clickhouse_pid);
        let writer_before = writer_counters(&self.metrics);
        let window_end = Instant::now() + timing.measure;
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        let mut readings = tokio::time::interval(SAMPLE_EVERY);
        let mut rss_peak_mib: f64 = 0.0;
        loop {
            readings.tick().await;
            let now = Instant::now();
            if now >= window_end {
                break;
            }
            self.recorder.sample_backlog();
            rss_peak_mib = rss_peak_mib.max(cpu::rss_mib().unwrap_or(0.0));
            if now >= next_progress {
                next_progress += PROGRESS_EVERY;
                if let Some((secs, acked, backlog)) = self.recorder.peek() {
                    eprintln!(
                        "ingest-load:   {secs:5.1} s: acked {:.0} samples/s, backlog {backlog} batches, \
                         RSS {rss_peak_mib:.0} MiB at most",
                        acked as f64 / secs
                    );
                }
            }
        }
        let stats = self.recorder.end().expect("window begun above");
        let cpu = cpu_before.until(&cpu::sample(self.clickhouse_pid));
        let writer = writer_counters(&self.metrics).since(&writer_before, stats.seconds);

        ctx.stop.cancel();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut outcomes = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            let outcome = match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(o) => o,
                Err(_) => {
                    if !ctx.abort.is_cancelled() {
                        eprintln!(
                            "ingest-load:   acks still missing after {DRAIN_TIMEOUT:?}; giving up on them"
                        );
                        ctx.abort.cancel();
                    }
                    task.await
                }
            };
            outcomes.push(outcome);
        }
        let mut unacked_at_end = 0;
        let mut failed = 0;
        for o in outcomes {
            match o {
                Ok(Ok(AgentOutcome { unacked, verified })) => {
                    unacked_at_end += unacked;
                    if let Some(v) = verified {
                        eprintln!("ingest-load:   verified: {v}");
                        self.verified = Some(v);
                    }
                }
                Ok(Err(e)) => {
                    failed += 1;
                    eprintln!("ingest-load:   agent failed: {e:#}");
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("ingest-load:   agent task panicked: {e}");
                }
            }
        }
        let mut r = StepResult {
            phase,
            agents,
            offered_rate,
            stats,
            cpu,
            writer,
            unacked_at_end,
            rss_peak_mib,
            kept_up: false,
        };
        r.kept_up = failed == 0
            && r.stats.errors == 0
            && r.stats.acked_samples as f64 >= KEEP_UP_RATIO * r.stats.produced_samples as f64
            && r.lag_growth() <= MAX_LAG_GROWTH;
        eprintln!(
            "ingest-load:   -> acked {:.0} samples/s ({:.1}% of produced), latency p50 {} ms p99 {} ms max {} ms, \
             lag growth {:+.2} s, writer busy {:.0}%, {} failed writes, CPU ClickHouse {:.2} collector {:.2} loadgen {:.2} other {:.2}: {}",
            r.stats.acked_rate(),
            100.0 * r.stats.acked_samples as f64 / (r.stats.produced_samples.max(1) as f64),
            r.stats.latency_ms(0.5),
            r.stats.latency_ms(0.99),
            r.stats.latency_ms(1.0),
            r.lag_growth(),
            100.0 * r.writer.busy,
            r.writer.failures,
            r.cpu.clickhouse,
            r.cpu.collector,
            r.cpu.loadgen,
            r.cpu.other,
            if r.kept_up { "kept up" } else { "did NOT keep up" }
        );
        tokio::time::sleep(PAUSE).await;
        r
    }
}

#[derive(Debug, Clone, Copy)]
struct WriterCounters {
    writes: u64,
    seconds: f64,
    rows: f64,
    failures: u64,
}

fn writer_counters(m: &CollectorMetrics) -> WriterCounters {
    let failures = ["unavailable", "rejected"]
        .iter()
        .map(|k| m.write_failures.with_label_values(&[k]).get())
        .sum();
    WriterCounters {
        // Stored writes with rows: with concurrent INSERTs the marks of each
        // write are a write call of their own, which `write_seconds` counts.
        writes: m.write_rows.get_sample_count(),
        seconds: m.write_seconds.get_sample_sum(),
        rows: m.write_rows.get_sample_sum(),
        failures,
    }
}

impl WriterCounters {
    fn since(&self, before: &WriterCounters, window_seconds: f64) -> WriterUsage {
        let writes = self.writes.saturating_sub(before.writes);
        WriterUsage {
            writes,
            rows_per_write: if writes == 0 {
                0.0
            } else {
                (self.rows - before.rows) / writes as f64
            },
            busy: (self.seconds - before.seconds) / window_seconds.max(1e-9),
            failures: self.failures.saturating_sub(before.failures),
        }
    }
}
