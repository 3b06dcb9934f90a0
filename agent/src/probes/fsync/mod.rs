//! The fsync probe: sequential writes of `block_size` bytes (2300 by
//! default), each followed by fdatasync, into a preallocated probe file in the
//! etcd data dir. This is the pattern of etcd's WAL and what the well-known fio recipe
//! (`--rw=write --ioengine=sync --fdatasync=1 --bs=2300`) measures, so its
//! p99 is directly comparable with etcd's guidance (under 10 ms).
//!
//! The probe is deliberately small (20 writes every 10 s by default, about
//! 46 KB) so it never competes with etcd for the disk; the file is removed
//! after every round.

use super::{Probe, Target};
use crate::error_kind::classify_io;
use anyhow::Context as _;
use etcdmon_proto::v1::{report::Body, ErrorKind, Failure, FsyncProbe as FsyncRound};
use futures::future::BoxFuture;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod config;

pub use config::{FsyncConfig, MAX_FSYNC_BLOCK, MAX_FSYNC_WRITES};

/// Name of the probe file inside the directory; it exists only during a round.
pub const PROBE_FILE: &str = ".etcdmon-fsync-probe";

/// Collects [`FsyncRound`]s.
pub struct FsyncProbe {
    dir: PathBuf,
    interval: Duration,
    writes: u32,
    block_size: u32,
}

impl FsyncProbe {
    /// A probe writing into `fsync.dir`, else the member's data dir.
    pub fn new(cfg: &FsyncConfig, target: &Target) -> anyhow::Result<Self> {
        let dir = cfg
            .dir
            .clone()
            .or_else(|| target.etcd.data_dir.clone())
            .context("the fsync probe needs etcd.data_dir (--data-dir) or fsync.dir")?;
        Ok(Self {
            dir,
            interval: cfg.interval,
            writes: cfg.writes,
            block_size: cfg.block_size,
        })
    }
}

impl Probe for FsyncProbe {
    fn name(&self) -> &'static str {
        "fsync"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        let dir = self.dir.clone();
        let (writes, block) = (self.writes, self.block_size);
        Box::pin(async move {
            let path = dir.join(PROBE_FILE);
            let p = path.clone();
            let result = tokio::task::spawn_blocking(move || probe(&p, writes, block))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(format!("probe task failed: {e}"))));
            let mut out = FsyncRound {
                path: path.display().to_string(),
                writes,
                block_size: block,
                ..Default::default()
            };
            match result {
                Ok(mut lat) => fill_stats(&mut out, &mut lat),
                Err(e) => {
                    out.writes = 0;
                    out.failure = Some(Failure::new(
                        "fsync",
                        classify_io(&e).unwrap_or(ErrorKind::Local),
                        format!("probe {}: {e}", path.display()),
                    ));
                }
            }
            Body::Fsync(out)
        })
    }
}

/// Writes and syncs `writes` blocks; returns each write+fdatasync latency in
/// seconds. The file is removed whatever happens.
pub fn probe(path: &Path, writes: u32, block_size: u32) -> std::io::Result<Vec<f64>> {
    probe_with_progress(path, writes, block_size, &mut |_| {})
}

/// [`probe`], calling `progress` with the number of writes done after each
/// (`etcdmon disk` draws its progress from it).
pub fn probe_with_progress(
    path: &Path,
    writes: u32,
    block_size: u32,
    progress: &mut dyn FnMut(u32),
) -> std::io::Result<Vec<f64>> {
    let result = write_blocks(path, writes, block_size, progress);
    let removed = std::fs::remove_file(path);
    let lat = result?;
    removed?;
    Ok(lat)
}

fn write_blocks(
    path: &Path,
    writes: u32,
    block_size: u32,
    progress: &mut dyn FnMut(u32),
) -> std::io::Result<Vec<f64>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    // Allocated first, as etcd preallocates its WAL segments (and fio lays out
    // its file): the writes then do not grow the file, so each fdatasync syncs
    // what etcd's would, not a new file size too. A filesystem that cannot
    // (EOPNOTSUPP) gets growing writes instead.
    let len = i64::from(writes) * i64::from(block_size);
    match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    // Non-zero content so compressing or deduplicating storage cannot skip it.
    let block: Vec<u8> = (0..block_size).map(|i| (i % 251) as u8 + 1).collect();
    let mut lat = Vec::with_capacity(writes as usize);
    for done in 1..=writes {
        let started = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(started.elapsed().as_secs_f64());
        progress(done);
    }
    Ok(lat)
}

/// Sets p50/p99/max/mean from the latencies (sorted in place).
fn fill_stats(out: &mut FsyncRound, lat: &mut [f64]) {
    if lat.is_empty() {
        return;
    }
    lat.sort_by(f64::total_cmp);
    out.p50_seconds = quantile(lat, 0.50);
    out.p99_seconds = quantile(lat, 0.99);
    out.max_seconds = lat[lat.len() - 1];
    out.mean_seconds = lat.iter().sum::<f64>() / lat.len() as f64;
}

/// Nearest-rank quantile of sorted values (not empty); `etcdmon disk` uses it too.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let mut out = FsyncRound::default();
        fill_stats(&mut out, &mut v);
        assert_eq!(out.p50_seconds, 50.0);
        assert_eq!(out.p99_seconds, 99.0);
        assert_eq!(out.max_seconds, 100.0);
        assert_eq!(out.mean_seconds, 50.5);
    }

    #[test]
    fn probe_writes_and_removes_its_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(PROBE_FILE);
        let lat = probe(&path, 5, 2300).expect("probe");
        assert_eq!(lat.len(), 5);
        assert!(lat.iter().all(|l| *l > 0.0));
        assert!(!path.exists(), "probe file left behind");
    }

    #[test]
    fn missing_dir_is_a_failure() {
        let err = probe(Path::new("/nonexistent/dir/probe"), 1, 10).expect_err("must fail");
        assert_eq!(classify_io(&err), Some(ErrorKind::Local));
    }
}
