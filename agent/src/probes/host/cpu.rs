//! CPU utilization (from /proc/stat deltas) and saturation (load average,
//! runnable tasks, pressure stall information).

use super::{delta, local_failure};
use etcdmon_proto::v1::{CpuMetrics, Failure};
use procfs::{Current, CurrentSI, KernelStats, LoadAverage};
use std::time::Instant;

#[derive(Default)]
pub(super) struct CpuSampler {
    prev: Option<Ticks>,
}

#[derive(Clone, Copy)]
struct Ticks {
    busy: u64,
    idle: u64,
    iowait: u64,
}

impl CpuSampler {
    pub(super) fn sample(&mut self, _now: Instant) -> Result<CpuMetrics, Failure> {
        let stats = KernelStats::current()
            .map_err(|e| local_failure("cpu", format!("read /proc/stat: {e}")))?;
        let t = &stats.total;
        let iowait = t.iowait.unwrap_or(0);
        let idle = t.idle;
        let busy = t.user
            + t.nice
            + t.system
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let now = Ticks { busy, idle, iowait };
        let (utilization, iowait_share) = match self.prev.replace(now) {
            Some(p) => {
                let d_busy = delta(now.busy, p.busy) as f64;
                let d_idle = delta(now.idle, p.idle) as f64;
                let d_io = delta(now.iowait, p.iowait) as f64;
                let total = d_busy + d_idle + d_io;
                if total > 0.0 {
                    (d_busy / total, d_io / total)
                } else {
                    (0.0, 0.0)
                }
            }
            None => (0.0, 0.0),
        };
        let load = LoadAverage::current()
            .map_err(|e| local_failure("cpu", format!("read /proc/loadavg: {e}")))?;
        Ok(CpuMetrics {
            utilization,
            cores: stats.cpu_time.len() as u32,
            load1: f64::from(load.one),
            load5: f64::from(load.five),
            load15: f64::from(load.fifteen),
            procs_running: stats.procs_running.unwrap_or(0),
            procs_blocked: stats.procs_blocked.unwrap_or(0),
            psi_some_avg10: psi_some_avg10("/proc/pressure/cpu"),
            iowait_utilization: iowait_share,
        })
    }
}

/// The "some avg10" value of a PSI file as a 0..1 share; -1 when the kernel
/// has no PSI (older kernels, or psi=0 on the command line).
pub(super) fn psi_some_avg10(path: &str) -> f64 {
    psi_field(path, "some")
}

/// Reads `avg10` of the line starting with `kind` ("some" or "full").
pub(super) fn psi_field(path: &str, kind: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return -1.0;
    };
    parse_psi(&text, kind).unwrap_or(-1.0)
}

fn parse_psi(text: &str, kind: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(kind))?;
    let v = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?;
    v.parse::<f64>().ok().map(|p| p / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_parses_percent_to_share() {
        let t = "some avg10=12.50 avg60=1.00 avg300=0.00 total=123\nfull avg10=2.00 avg60=0.00 avg300=0.00 total=4\n";
        assert_eq!(parse_psi(t, "some"), Some(0.125));
        assert_eq!(parse_psi(t, "full"), Some(0.02));
        assert_eq!(parse_psi("garbage", "some"), None);
    }

    #[test]
    fn second_sample_has_utilization_in_range() {
        let mut s = CpuSampler::default();
        s.sample(Instant::now()).expect("first");
        // Burn a little CPU so the busy delta is non-zero.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let c = s.sample(Instant::now()).expect("second");
        assert!((0.0..=1.0).contains(&c.utilization), "{}", c.utilization);
        assert!(c.cores >= 1);
        assert!(c.load1 >= 0.0);
    }
}
