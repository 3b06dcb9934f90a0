//! CPU time of the three parties sharing the machine: the ClickHouse server
//! (its `/proc/PID/stat`), the in-process collector and the load generator
//! (this process's threads, told apart by the names of their tokio
//! runtimes' threads, `/proc/self/task/*/stat`); and of everything else
//! (the machine's busy time from `/proc/stat` minus those three), which
//! shows when something else competed for the cores during a measurement.
//!
//! Times are in clock ticks of `USER_HZ`, which is 100 on every Linux
//! architecture this project targets.

use std::sync::OnceLock;
use std::time::Instant;

/// The collector's pid when it runs as a process of its own
/// (`--collector-bin`): its CPU and memory are then read from `/proc/PID`.
static COLLECTOR_PID: OnceLock<u32> = OnceLock::new();

/// Counts the collector as the process `pid` from now on.
pub fn set_collector_pid(pid: u32) {
    let _ = COLLECTOR_PID.set(pid);
}

/// Clock ticks per second in `/proc/*/stat`.
const USER_HZ: f64 = 100.0;
/// Thread name of the collector's runtime.
pub const COLLECTOR_THREADS: &str = "collector";
/// Thread name of the load generator's runtime.
pub const LOADGEN_THREADS: &str = "loadgen";

/// CPU ticks used so far.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    clickhouse: u64,
    collector: u64,
    loadgen: u64,
    machine: u64,
}

/// CPU used between two samples, in cores (1.0 = one core busy).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsage {
    /// The ClickHouse server.
    pub clickhouse: f64,
    /// The collector's runtime threads.
    pub collector: f64,
    /// The load generator's runtime threads.
    pub loadgen: f64,
    /// Everything else on the machine.
    pub other: f64,
}

/// Reads the counters now; a missing ClickHouse pid counts as zero.
pub fn sample(clickhouse_pid: Option<u32>) -> CpuSample {
    let clickhouse = process_ticks(clickhouse_pid);
    let mut collector = process_ticks(COLLECTOR_PID.get().copied());
    let mut loadgen = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let Some((name, ticks)) = parse_stat(&stat) else {
                continue;
            };
            if name.starts_with(COLLECTOR_THREADS) {
                collector += ticks;
            } else if name.starts_with(LOADGEN_THREADS) {
                loadgen += ticks;
            }
        }
    }
    CpuSample {
        at: Instant::now(),
        clickhouse,
        collector,
        loadgen,
        machine: machine_busy().unwrap_or(0),
    }
}

impl CpuSample {
    /// Usage from `self` to `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUsage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / USER_HZ / secs;
        let clickhouse = cores(self.clickhouse, later.clickhouse);
        let collector = cores(self.collector, later.collector);
        let loadgen = cores(self.loadgen, later.loadgen);
        CpuUsage {
            clickhouse,
            collector,
            loadgen,
            other: (cores(self.machine, later.machine) - clickhouse - collector - loadgen).max(0.0),
        }
    }
}

/// CPU ticks of process `pid` so far; 0 without one.
fn process_ticks(pid: Option<u32>) -> u64 {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|s| parse_stat(&s).map(|(_, ticks)| ticks))
        .unwrap_or(0)
}

/// The collector's resident set size now (`VmRSS`), MiB: this process's
/// (collector and load generator) unless the collector runs on its own.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Whether [`rss_mib`] is the collector's alone.
pub fn collector_apart() -> bool {
    COLLECTOR_PID.get().is_some()
}

fn status_path() -> String {
    match COLLECTOR_PID.get() {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    }
}

/// The highest resident set size so far (`VmHWM`) of what [`rss_mib`]
/// reads, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// `field` (in kB) of the collector's `/proc/PID/status`, MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status_path()).ok()?;
    parse_kib(&status, field).map(|kib| kib as f64 / 1024.0)
}

fn parse_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy ticks of all CPUs: the first line of `/proc/stat` without idle and
/// iowait.
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(stat.lines().next()?)
}

fn parse_machine(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let total: u64 = ticks.iter().take(8).sum();
    Some(total - ticks.get(3)? - ticks.get(4).copied().unwrap_or(0))
}

/// (comm, utime + stime) of a `stat` line. The name is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_parses_from_proc_status() {
        let status = "Name:\tingest-load\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(8192));
        assert_eq!(parse_kib("Name:\tx\n", "VmRSS:"), None);
        assert_eq!(parse_kib(status, "VmHWM:"), Some(9000));
        assert!(rss_mib().is_some_and(|m| m > 0.0));
    }

    #[test]
    fn stat_lines_parse() {
        let line = "1234 (collector (2)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(("collector (2)", 300)));
        assert!(parse_stat("garbage").is_none());
        assert_eq!(
            parse_machine("cpu  100 5 50 1000 20 1 2 3 0 0"),
            Some(100 + 5 + 50 + 1 + 2 + 3)
        );
        assert!(parse_machine("cpu0 1 2 3 4").is_none());
    }
}
