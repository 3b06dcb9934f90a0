//! `ingest-load`: how many samples per second one collector on ClickHouse
//! stores, and how long a sample takes from being produced to being
//! queryable, compared with what ClickHouse itself inserts.
//!
//! # What is measured
//!
//! 1. A real ClickHouse (Debian's 18.16, through `etcdmon-testkit`) and the
//!    collector in this process on it, with its default configuration.
//! 2. **ClickHouse's own rate**: the same sample rows the collector writes,
//!    as a `RowBinary` file inserted with `clickhouse-client` into
//!    `etcdmon.samples` (rollup views included), rows per second
//!    ([`native`]).
//! 3. **The collector's maximum sustained rate**: simulated agents
//!    ([`agent`]), each with its own zstd gRPC stream sending one batch per
//!    second (status report + a full real etcd scrape, [`payload`]), in
//!    steps of doubling agent counts, then bisection ([`ramp`]). A step
//!    keeps up when acks follow production and the backlog does not grow.
//!    The maximum is the highest acknowledged samples/s of a step that kept
//!    up.
//! 4. **Ingest latency** at about 80% of that agent count: report timestamp
//!    to ack arrival, p50/p99/max. The collector acks a batch only after the
//!    INSERT of its rows and its batch mark returned, so this is "produced
//!    -> queryable"; a SELECT right after one ack checks it.
//!
//! The targets: the collector's maximum at least 50% of ClickHouse's native
//! rate, and p99 latency under 2 s at 80% of the maximum. Two more figures
//! explain the result: ClickHouse fed the same rows in INSERTs of the
//! collector's write size ([`native`]), and the collector's decode and
//! conversion cost per batch on one thread ([`hotpath`]).
//!
//! # Why in one process
//!
//! Collector and load generator run on separate tokio runtimes (threads
//! named `collector` and `loadgen`), so their CPU is accounted separately
//! ([`cpu`]) next to ClickHouse's. All three share the machine's cores; the
//! load generator's share (mostly compression) is CPU a real deployment spends on
//! the agents' hosts, so the collector's figures here are a lower bound.
//!
//! Benchmarks are programs, not timed assertions in tests: this one always
//! exits 0 once it has measured, and prints whether the targets are met.

mod agent;
mod collector;
mod cpu;
mod hotpath;
mod native;
mod payload;
mod ramp;
mod report;
mod stats;

use anyhow::Context as _;
use clap::Parser;
use etcdmon_testkit::ClickHouseServer;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Plays many agents against one collector on ClickHouse and reports the
/// sustained ingest rate and latency against ClickHouse's own insert rate.
#[derive(Debug, Parser)]
#[command(name = "ingest-load")]
struct Args {
    /// Measured seconds per step of the ramp [default: 20; --quick: 5].
    #[arg(long)]
    step_seconds: Option<u64>,
    /// Warm-up seconds before each step's window [default: 5; --quick: 2].
    #[arg(long)]
    warmup_seconds: Option<u64>,
    /// Agents of the first step; each next step doubles them.
    #[arg(long, default_value_t = 5)]
    start_agents: usize,
    /// Most agents the ramp offers [default: 640; --quick: 10].
    #[arg(long)]
    max_agents: Option<usize>,
    /// Bisection steps after the first step that did not keep up
    /// [default: 3; --quick: 0].
    #[arg(long)]
    bisect: Option<usize>,
    /// Measured seconds of the run at 80% of the maximum [default: 60;
    /// --quick: 10].
    #[arg(long)]
    latency_seconds: Option<u64>,
    /// Agents of the soak run after the 80% run: a fixed load held for
    /// --soak-seconds, beyond the maximum if it is higher (then latency grows
    /// under backpressure); 0 skips it. Issue 17's case: 500 for 600 s.
    #[arg(long, default_value_t = 0)]
    soak_agents: usize,
    /// Measured seconds of the soak run.
    #[arg(long, default_value_t = 600)]
    soak_seconds: u64,
    /// Run this `etcdmon-collector` binary as a process of its own instead of
    /// the collector in this process, with the same settings: its RSS and CPU
    /// are then its own (the load generator's buffers are not counted);
    /// the writer columns stay empty. The process runs with the defaults, so
    /// the flush overrides cannot be combined with it.
    #[arg(long, conflicts_with_all = ["flush_rows", "flush_interval_ms", "max_write_rows"])]
    collector_bin: Option<std::path::PathBuf>,
    /// Only the soak run: no ramp and no 80% run (with small --native-rows
    /// and --native-runs 1, the reference costs a few seconds).
    #[arg(long, requires = "soak_agents")]
    soak_only: bool,
    /// Rows of the ClickHouse native insert [default: 3000000; --quick:
    /// 200000].
    #[arg(long)]
    native_rows: Option<u64>,
    /// Timed native inserts; the fastest counts [default: 2; --quick: 1].
    #[arg(long)]
    native_runs: Option<usize>,
    /// Override the collector's `ingest.flush_rows` (rows gathered before a
    /// write; the reference results use the collector's default).
    #[arg(long)]
    flush_rows: Option<usize>,
    /// Override the collector's `ingest.flush_interval` in milliseconds (longest
    /// wait before a write).
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Override the collector's `ingest.max_write_rows` (largest write).
    #[arg(long)]
    max_write_rows: Option<usize>,
    /// A short run for smoke testing (the defaults in brackets after
    /// "--quick:"; explicit flags still win).
    #[arg(long)]
    quick: bool,
}

/// [`Args`] with the defaults applied.
#[derive(Debug)]
struct Settings {
    step: Duration,
    warmup: Duration,
    start_agents: usize,
    max_agents: usize,
    bisect: usize,
    latency: Duration,
    soak_agents: usize,
    soak: Duration,
    soak_only: bool,
    collector_bin: Option<std::path::PathBuf>,
    native_rows: u64,
    native_runs: usize,
    flush_rows: Option<usize>,
    flush_interval: Option<Duration>,
    max_write_rows: Option<usize>,
}

impl Args {
    fn settings(&self) -> Settings {
        let q = self.quick;
        let pick =
            |v: Option<u64>, full: u64, quick: u64| v.unwrap_or(if q { quick } else { full });
        let pick_n =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        Settings {
            step: Duration::from_secs(pick(self.step_seconds, 20, 5).max(1)),
            warmup: Duration::from_secs(pick(self.warmup_seconds, 5, 2)),
            start_agents: self.start_agents.max(1),
            max_agents: pick_n(self.max_agents, 640, 10).max(1),
            bisect: pick_n(self.bisect, 3, 0),
            latency: Duration::from_secs(pick(self.latency_seconds, 60, 10).max(1)),
            soak_agents: self.soak_agents,
            soak: Duration::from_secs(self.soak_seconds.max(1)),
            soak_only: self.soak_only,
            collector_bin: self.collector_bin.clone(),
            native_rows: pick(self.native_rows, 3_000_000, 200_000).max(1),
            native_runs: pick_n(self.native_runs, 2, 1).max(1),
            flush_rows: self.flush_rows,
            flush_interval: self.flush_interval_ms.map(Duration::from_millis),
            max_write_rows: self.max_write_rows,
        }
    }
}

/// mimalloc, as in the shipped binaries: the collector under test runs in
/// this process and should allocate as they do (glibc's malloc and free took
/// about 40% of the collector's CPU under load; perf, `ingest-load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args.settings()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(s: &Settings) -> anyhow::Result<()> {
    // The collector's warnings (storage unavailable, refused streams) matter here.
    etcdmon_core::telemetry::init("warn", etcdmon_core::telemetry::LogFormat::Text);
    eprintln!("ingest-load: {s:?}");
    let server = Arc::new(ClickHouseServer::start()?);
    eprintln!(
        "ingest-load: ClickHouse {} on HTTP {} / TCP {}",
        server.query("SELECT version()")?.trim(),
        server.http_port(),
        server.tcp_port()
    );
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("{name} runtime"))
    };
    let collector_rt = runtime(cpu::COLLECTOR_THREADS)?;
    let loadgen_rt = runtime(cpu::LOADGEN_THREADS)?;
    let mut cfg = collector::config(server.http_port())?;
    if let Some(rows) = s.flush_rows {
        cfg.ingest.flush_rows = rows.max(1);
    }
    if let Some(every) = s.flush_interval {
        cfg.ingest.flush_interval = every.max(Duration::from_millis(10));
    }
    if let Some(rows) = s.max_write_rows {
        cfg.ingest.max_write_rows = rows;
    }
    cfg.ingest.max_write_rows = cfg.ingest.max_write_rows.max(cfg.ingest.flush_rows);
    let collector = match &s.collector_bin {
        Some(bin) => collector::start_process(bin, server.http_port())?,
        None => collector_rt.block_on(collector::start(&cfg))?,
    };
    eprintln!("ingest-load: collector serving on {}", collector.url);

    native::check_schema(&server)?;
    let payload = Arc::new(payload::Payload::new());
    let samples_per_batch = payload.samples_per_batch();
    let hot = hotpath::measure(&payload);
    eprintln!(
        "ingest-load: per batch of {} rows, one thread: decode {:?}, convert {:?}",
        hot.rows, hot.decode, hot.convert
    );
    let native = native::measure(
        &server,
        &payload,
        s.native_rows,
        s.native_runs,
        cfg.ingest.flush_rows,
    )?;

    let verify: agent::Verify = {
        let server = server.clone();
        Box::new(move |agent_id, ts, sequence| {
            verify_ack(&server, agent_id, ts, sequence, samples_per_batch)
        })
    };
    let mut ramp = ramp::Ramp::new(
        collector.url.clone(),
        payload.clone(),
        collector.metrics.clone(),
        server.pid(),
        verify,
        {
            let server = server.clone();
            Box::new(move || {
                if let Err(e) = native::wait_for_merges(&server) {
                    eprintln!("ingest-load: could not read system.merges: {e:#}");
                }
            })
        },
    );
    let timing = ramp::StepTiming {
        warmup: s.warmup,
        measure: s.step,
    };
    let (steps, at_80, soak) = loadgen_rt.block_on(async {
        let steps = if s.soak_only {
            Vec::new()
        } else {
            ramp.search(s.start_agents, s.max_agents, s.bisect, timing)
                .await
        };
        let max = best(&steps).cloned();
        let at_80 = match &max {
            Some(m) => {
                if steps.iter().all(|r| r.kept_up) {
                    eprintln!(
                        "ingest-load: every step kept up; the maximum is at least the last step \
                         (raise --max-agents to find it)"
                    );
                }
                let agents = ((m.agents as f64 * 0.8).round() as usize).max(1);
                let latency_timing = ramp::StepTiming {
                    warmup: s.warmup,
                    measure: s.latency,
                };
                Some(ramp.step("80%", agents, latency_timing).await)
            }
            None => None,
        };
        let soak = if s.soak_agents > 0 {
            let timing = ramp::StepTiming {
                warmup: s.warmup,
                measure: s.soak,
            };
            Some(ramp.step("soak", s.soak_agents, timing).await)
        } else {
            None
        };
        (steps, at_80, soak)
    });
    let max = best(&steps).cloned();

    let stored = native::distinct_rows(&server, payload::CLUSTER)?;
    let footprint = native::stored_footprint(&server)?;
    let summary = report::Summary {
        collector_settings: format!(
            "ingest.flush_rows = {}, ingest.flush_interval = {:?}, ingest.max_write_rows = {}, \
             ingest.queue_batches = {}{}",
            cfg.ingest.flush_rows,
            cfg.ingest.flush_interval,
            cfg.ingest.max_write_rows,
            cfg.ingest.queue_batches,
            if s.flush_rows.is_some() || s.flush_interval.is_some() || s.max_write_rows.is_some() {
                " (overridden)"
            } else {
                " (defaults)"
            }
        ),
        samples_per_batch,
        hot,
        steps,
        native,
        max,
        at_80,
        soak,
        footprint,
        rss_peak_mib: cpu::peak_rss_mib().unwrap_or(0.0),
        verified: ramp.verified.take(),
        stored_vs_acked: (stored, ramp.total_acked_samples()),
    };
    collector_rt.block_on(collector.stop())?;
    drop(ramp);
    report::print(&mut std::io::stdout().lock(), &summary)?;
    Ok(())
}

/// The step with the highest acked rate among those that kept up.
fn best(steps: &[ramp::StepResult]) -> Option<&ramp::StepResult> {
    steps
        .iter()
        .filter(|r| r.kept_up)
        .max_by(|a, b| a.stats.acked_rate().total_cmp(&b.stats.acked_rate()))
}

/// Right after the ack of (`agent_id`, `sequence`): its rows and its batch
/// mark must be in ClickHouse.
fn verify_ack(
    server: &ClickHouseServer,
    agent_id: &str,
    ts_ms: i64,
    sequence: u64,
    expected_rows: usize,
) -> anyhow::Result<String> {
    let count = |sql: String| -> anyhow::Result<u64> {
        server
            .query(&sql)?
            .trim()
            .parse()
            .with_context(|| format!("parse the answer to {sql}"))
    };
    let rows = count(format!(
        "SELECT count() FROM etcdmon.samples WHERE cluster = '{}' AND member = 'a0' \
         AND ts_ms = {ts_ms}",
        payload::CLUSTER
    ))?;
    let marks = count(format!(
        "SELECT count() FROM etcdmon.batch_marks WHERE agent_id = '{agent_id}' \
         AND sequence = {sequence}"
    ))?;
    if rows != expected_rows as u64 || marks != 1 {
        anyhow::bail!(
            "right after the ack of {agent_id} batch {sequence}: {rows} of {expected_rows} rows \
             and {marks} batch marks are queryable"
        );
    }
    Ok(format!(
        "right after the ack of {agent_id} batch {sequence}, a SELECT found all {rows} rows \
         (ts_ms = {ts_ms}) and its batch mark"
    ))
}
