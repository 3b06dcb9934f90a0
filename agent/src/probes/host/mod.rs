//! Host USE metrics (utilization, saturation, errors) from /proc and
//! statvfs: CPU, memory, the data-dir filesystem and its block device, the
//! network interfaces, and the etcd process itself.
//!
//! Rates (CPU busy share, disk utilization, IOPS, ...) need two readings;
//! the collector keeps the previous counters and reports rates over the
//! interval between rounds (zero on the very first round). All reads are
//! blocking syscalls, so a round runs on tokio's blocking pool.

use super::{Probe, Target};
use etcdmon_proto::v1::{report::Body, ErrorKind, Failure, HostMetrics};
use futures::future::BoxFuture;
use std::time::{Duration, Instant};

mod config;
mod cpu;
mod memory;
mod network;
pub mod process;
mod storage;

pub use config::HostConfig;

/// Rates over a shorter window than this are noise (a few scheduler ticks
/// of CPU time, an io_ms counter that has not moved yet): the first round
/// after priming waits until the window is this long.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(500);

/// Collects [`HostMetrics`].
pub struct HostProbe {
    interval: Duration,
    state: Option<HostState>,
    last_sample: Instant,
}

/// Everything a round needs, moved to the blocking pool and back.
struct HostState {
    cpu: cpu::CpuSampler,
    storage: storage::StorageSampler,
    network: network::NetworkSampler,
    process: process::ProcessSampler,
}

impl HostProbe {
    /// A probe of the host this agent runs on and of the member's etcd process.
    pub fn new(cfg: &HostConfig, target: &Target) -> anyhow::Result<Self> {
        let mut state = HostState {
            cpu: cpu::CpuSampler::default(),
            storage: storage::StorageSampler::new(target.etcd.data_dir.clone()),
            network: network::NetworkSampler::new(cfg.interfaces.clone()),
            process: process::ProcessSampler::new(cfg, &target.etcd),
        };
        // Take the first counter readings now, so the first report (even of
        // `collect --once`) already has rates.
        state.prime();
        Ok(Self {
            interval: cfg.interval,
            state: Some(state),
            last_sample: Instant::now(),
        })
    }
}

impl HostState {
    fn prime(&mut self) {
        let _ = self.cpu.sample(Instant::now());
        let _ = self.storage.sample(Instant::now());
        let _ = self.process.sample(Instant::now());
    }

    fn sample(&mut self) -> HostMetrics {
        let now = Instant::now();
        let mut out = HostMetrics::default();
        match self.cpu.sample(now) {
            Ok(c) => out.cpu = Some(c),
            Err(f) => out.failures.push(f),
        }
        match memory::sample() {
            Ok(m) => out.memory = Some(m),
            Err(f) => out.failures.push(f),
        }
        let (fs, disk, failures) = self.storage.sample(now);
        out.filesystem = fs;
        out.disk = disk;
        out.failures.extend(failures);
        match self.network.sample() {
            Ok(i) => out.interfaces = i,
            Err(f) => out.failures.push(f),
        }
        out.process = Some(self.process.sample(now));
        out
    }
}

impl Probe for HostProbe {
    fn name(&self) -> &'static str {
        "host"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        Box::pin(async move {
            tokio::time::sleep_until((self.last_sample + MIN_RATE_WINDOW).into()).await;
            self.last_sample = Instant::now();
            let Some(mut state) = self.state.take() else {
                return Body::Host(lost_state());
            };
            match tokio::task::spawn_blocking(move || {
                let m = state.sample();
                (state, m)
            })
            .await
            {
                Ok((state, m)) => {
                    self.state = Some(state);
                    Body::Host(m)
                }
                // Only a panic in the sampler gets here; the state is gone,
                // so every later round reports the failure too.
                Err(_) => Body::Host(lost_state()),
            }
        })
    }
}

fn lost_state() -> HostMetrics {
    HostMetrics {
        failures: vec![Failure::new(
            "host",
            ErrorKind::Local,
            "host sampler crashed in an earlier round; restart the agent",
        )],
        ..Default::default()
    }
}

/// A failure reading `what` from the local system.
fn local_failure(call: &str, what: impl std::fmt::Display) -> Failure {
    Failure::new(call, ErrorKind::Local, what.to_string())
}

/// `later - earlier` for counters that may reset (device re-plugged).
fn delta(later: u64, earlier: u64) -> u64 {
    later.saturating_sub(earlier)
}
