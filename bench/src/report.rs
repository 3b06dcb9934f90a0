//! The results as Markdown tables on stdout, ready for
//! `docs/benchmarks.md`.

use crate::hotpath::HotPath;
use crate::native::{NativeResult, TableFootprint};
use crate::ramp::StepResult;
use std::io::Write;

/// Share of ClickHouse's native rate the collector must reach.
pub const TARGET_RATIO: f64 = 0.5;
/// p99 ingest latency target at 80% of the maximum load, ms.
pub const TARGET_P99_MS: u64 = 2_000;

/// Everything one run measured.
pub struct Summary {
    /// The collector's batching settings, as run.
    pub collector_settings: String,
    /// Sample rows per batch.
    pub samples_per_batch: usize,
    /// Decode and conversion cost per batch.
    pub hot: HotPath,
    /// The ramp and bisection steps, in order.
    pub steps: Vec<StepResult>,
    /// The reference.
    pub native: NativeResult,
    /// The step with the highest acked rate among those that kept up.
    pub max: Option<StepResult>,
    /// The run at about 80% of the maximum's agents.
    pub at_80: Option<StepResult>,
    /// The soak run (`--soak-agents`), if any.
    pub soak: Option<StepResult>,
    /// The etcdmon tables at the end of the run.
    pub footprint: Vec<TableFootprint>,
    /// Highest RSS of this process over the whole run (collector and load
    /// generator), MiB.
    pub rss_peak_mib: f64,
    /// What the SELECT right after an ack found.
    pub verified: Option<String>,
    /// (distinct stored rows of cluster `bench`, acknowledged samples).
    pub stored_vs_acked: (u64, u64),
}

/// Writes the tables and the verdicts.
pub fn print(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "\nPayload: one batch per agent per second = status report + full etcd 3.4.23 \
         /metrics scrape, {} sample rows, zstd. Collector: {}.\n",
        s.samples_per_batch, s.collector_settings
    )?;
    writeln!(
        out,
        "| phase | agents | offered samples/s | acked samples/s | acked/produced | \
         p50 ms | p99 ms | max ms | lag growth s | inserts/s | rows/insert | writer busy | \
         CPU ClickHouse | CPU collector | CPU loadgen | CPU other | RSS MiB | kept up |"
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for r in s.steps.iter().chain(s.at_80.iter()).chain(s.soak.iter()) {
        step_row(out, r)?;
    }

    writeln!(
        out,
        "\nClickHouse native insert: `clickhouse-client --query \"INSERT INTO etcdmon.samples \
         FORMAT RowBinary\" < file`, {} rows, {:.1} MB:\n",
        s.native.rows,
        s.native.bytes as f64 / 1e6
    )?;
    writeln!(
        out,
        "| run | seconds | rows/s | CPU ClickHouse | CPU other |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|")?;
    for (i, r) in s.native.runs.iter().enumerate() {
        writeln!(
            out,
            "| {} | {:.2} | {} | {:.2} | {:.2} |",
            i + 1,
            r.elapsed.as_secs_f64(),
            thousands(r.rows_per_second),
            r.cpu.clickhouse,
            r.cpu.other
        )?;
    }

    let c = &s.native.chunked;
    writeln!(
        out,
        "\nClickHouse alone at the collector's write size: the same rows in {} sequential HTTP \
         INSERTs (RowBinary) of {} rows: {:.2} s, {} rows/s, CPU ClickHouse {:.2}, other {:.2}.",
        c.inserts,
        thousands(c.rows_per_insert as f64),
        c.elapsed.as_secs_f64(),
        thousands(c.rows_per_second),
        c.cpu.clickhouse,
        c.cpu.other
    )?;
    writeln!(
        out,
        "\nCollector CPU per batch of {} rows outside the INSERT, one thread: protobuf decode \
         {} µs, conversion to rows {} µs.",
        s.hot.rows,
        s.hot.decode.as_micros(),
        s.hot.convert.as_micros()
    )?;

    let native = s.native.best_rows_per_second();
    writeln!(out, "\n| result | value | target | met |")?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(
        out,
        "| ClickHouse native insert rate (best run) | {} rows/s | | |",
        thousands(native)
    )?;
    writeln!(
        out,
        "| ClickHouse alone, INSERTs of the collector's size | {} rows/s = {:.0}% of native | | |",
        thousands(c.rows_per_second),
        100.0 * c.rows_per_second / native
    )?;
    match &s.max {
        Some(m) => {
            let ratio = m.stats.acked_rate() / native;
            writeln!(
                out,
                "| collector max sustained (acked) | {} samples/s ({} agents) = {:.0}% of native \
                 | >= {:.0}% | {} |",
                thousands(m.stats.acked_rate()),
                m.agents,
                100.0 * ratio,
                100.0 * TARGET_RATIO,
                yes_no(ratio >= TARGET_RATIO)
            )?;
        }
        None => writeln!(
            out,
            "| collector max sustained | no step kept up | >= {:.0}% | no |",
            100.0 * TARGET_RATIO
        )?,
    }
    match &s.at_80 {
        Some(r) => writeln!(
            out,
            "| ingest latency at 80% ({} agents, {} samples/s, {:.0} s) | p50 {} ms, p99 {} ms, \
             max {} ms | p99 < {} ms | {} |",
            r.agents,
            thousands(r.stats.acked_rate()),
            r.stats.seconds,
            r.stats.latency_ms(0.5),
            r.stats.latency_ms(0.99),
            r.stats.latency_ms(1.0),
            TARGET_P99_MS,
            yes_no(r.stats.latency_ms(0.99) < TARGET_P99_MS && r.kept_up)
        )?,
        None => writeln!(
            out,
            "| ingest latency at 80% | not measured | p99 < {TARGET_P99_MS} ms | no |"
        )?,
    }
    if let Some(r) = &s.soak {
        let lossless = r.unacked_at_end == 0 && r.stats.errors == 0;
        writeln!(
            out,
            "| soak ({} agents, offered {} samples/s, {:.0} s) | acked {} samples/s, p50 {} ms, \
             p99 {} ms, RSS peak {:.0} MiB ({}), {} batches never acked | no loss, \
             RSS < 1024 MiB | {} |",
            r.agents,
            thousands(r.offered_rate),
            r.stats.seconds,
            thousands(r.stats.acked_rate()),
            r.stats.latency_ms(0.5),
            r.stats.latency_ms(0.99),
            r.rss_peak_mib,
            rss_of(),
            r.unacked_at_end,
            yes_no(lossless && r.rss_peak_mib < 1024.0)
        )?;
    }
    writeln!(
        out,
        "\nRSS peak ({}) over the whole run: {:.0} MiB.",
        rss_of(),
        s.rss_peak_mib
    )?;
    let samples = s.footprint.iter().find(|t| t.table == "samples");
    for t in &s.footprint {
        writeln!(
            out,
            "Stored `{}`: {} rows, {:.1} MB compressed{}",
            t.table,
            thousands(t.rows as f64),
            t.compressed_bytes as f64 / 1e6,
            match samples {
                Some(sm) if sm.rows > 0 => format!(
                    ", {:.2} bytes per sample row stored",
                    t.compressed_bytes as f64 / sm.rows as f64
                ),
                _ => String::new(),
            }
        )?;
    }
    writeln!(
        out,
        "\nQueryable on ack: {}",
        s.verified.as_deref().unwrap_or("NOT verified")
    )?;
    let (stored, acked) = s.stored_vs_acked;
    writeln!(
        out,
        "Stored vs acknowledged: {stored} distinct sample rows of cluster `bench` stored, \
         {acked} acknowledged{}",
        if stored == acked {
            " (equal)"
        } else {
            " (DIFFERENT: see the unacked counts above)"
        }
    )?;
    Ok(())
}

fn step_row(out: &mut impl Write, r: &StepResult) -> std::io::Result<()> {
    let s = &r.stats;
    writeln!(
        out,
        "| {} | {} | {} | {} | {:.1}% | {} | {} | {} | {:+.2} | {:.1} | {} | {:.0}% | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {}{} |",
        r.phase,
        r.agents,
        thousands(r.offered_rate),
        thousands(s.acked_rate()),
        100.0 * s.acked_samples as f64 / s.produced_samples.max(1) as f64,
        s.latency_ms(0.5),
        s.latency_ms(0.99),
        s.latency_ms(1.0),
        r.lag_growth(),
        r.writer.writes as f64 / s.seconds,
        thousands(r.writer.rows_per_write),
        100.0 * r.writer.busy,
        r.cpu.clickhouse,
        r.cpu.collector,
        r.cpu.loadgen,
        r.cpu.other,
        r.rss_peak_mib,
        yes_no(r.kept_up),
        notes(r)
    )
}

fn notes(r: &StepResult) -> String {
    let mut out = String::new();
    if r.writer.failures > 0 {
        out.push_str(&format!(" ({} failed writes)", r.writer.failures));
    }
    if r.unacked_at_end > 0 {
        out.push_str(&format!(" ({} never acked)", r.unacked_at_end));
    }
    out
}

/// Whose memory the RSS figures are.
fn rss_of() -> &'static str {
    if crate::cpu::collector_apart() {
        "the collector process alone"
    } else {
        "this process: collector and load generator"
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
