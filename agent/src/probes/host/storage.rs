//! Space and inodes of the filesystem that holds etcd's data dir, and the
//! I/O of the block device under it (from /proc/diskstats).
//!
//! The device is found through /proc/self/mountinfo: the longest mount
//! point that contains the data dir gives the filesystem and its
//! major:minor, which names the line of /proc/diskstats. Filesystems
//! without a block device (tmpfs, overlay, btrfs subvolumes) report space
//! but say why there are no disk stats.

use super::{delta, local_failure};
use etcdmon_proto::v1::{DiskMetrics, Failure, FilesystemMetrics};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(super) struct StorageSampler {
    data_dir: Option<PathBuf>,
    prev: Option<Counters>,
}

/// Raw diskstats counters of one reading.
#[derive(Clone)]
struct Counters {
    at: Instant,
    device: String,
    reads: u64,
    writes: u64,
    read_bytes: u64,
    written_bytes: u64,
    io_ms: u64,
    weighted_ms: u64,
    /// Milliseconds spent on reads plus writes (for await).
    rw_ms: u64,
}

/// The mount that holds a path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mount {
    pub mount_point: PathBuf,
    pub device: String,
    pub fs_type: String,
    pub major: i32,
    pub minor: i32,
}

impl StorageSampler {
    pub(super) fn new(data_dir: Option<PathBuf>) -> Self {
        Self {
            data_dir,
            prev: None,
        }
    }

    pub(super) fn sample(
        &mut self,
        now: Instant,
    ) -> (Option<FilesystemMetrics>, Option<DiskMetrics>, Vec<Failure>) {
        let Some(dir) = self.data_dir.clone() else {
            return (
                None,
                None,
                vec![local_failure(
                    "filesystem",
                    "etcd.data_dir is not set: no filesystem or disk metrics",
                )],
            );
        };
        let mount = match mount_of(&dir) {
            Ok(m) => m,
            Err(f) => return (None, None, vec![f]),
        };
        let mut failures = Vec::new();
        let fs = statvfs(&dir, &mount).map_err(|f| failures.push(f)).ok();
        let disk = self.disk(&mount, now).map_err(|f| failures.push(f)).ok();
        (fs, disk, failures)
    }

    fn disk(&mut self, mount: &Mount, now: Instant) -> Result<DiskMetrics, Failure> {
        let stats = procfs::diskstats()
            .map_err(|e| local_failure("disk", format!("read /proc/diskstats: {e}")))?;
        let Some(s) = stats
            .into_iter()
            .find(|s| s.major == mount.major && s.minor == mount.minor)
        else {
            return Err(local_failure(
                "disk",
                format!(
                    "no block device stats for {} ({} on {}:{}); disk I/O is not measured",
                    mount.device, mount.fs_type, mount.major, mount.minor
                ),
            ));
        };
        // diskstats counts 512-byte sectors whatever the device's sector size.
        let cur = Counters {
            at: now,
            device: s.name,
            reads: s.reads,
            writes: s.writes,
            read_bytes: s.sectors_read * 512,
            written_bytes: s.sectors_written * 512,
            io_ms: s.time_in_progress,
            weighted_ms: s.weighted_time_in_progress,
            rw_ms: s.time_reading + s.time_writing,
        };
        let mut out = DiskMetrics {
            device: cur.device.clone(),
            reads_completed: cur.reads,
            writes_completed: cur.writes,
            read_bytes: cur.read_bytes,
            written_bytes: cur.written_bytes,
            io_time_ms: cur.io_ms,
            weighted_io_time_ms: cur.weighted_ms,
            in_flight: s.in_progress,
            flushes_completed: s.flushes.unwrap_or(0),
            ..Default::default()
        };
        if let Some(prev) = self.prev.as_ref().filter(|p| p.device == cur.device) {
            apply_rates(&mut out, prev, &cur);
        }
        self.prev = Some(cur);
        Ok(out)
    }
}

/// Fills the per-interval rates of `out` from two readings, as iostat does.
fn apply_rates(out: &mut DiskMetrics, prev: &Counters, cur: &Counters) {
    let secs = cur.at.duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 {
        return;
    }
    let ms = secs * 1000.0;
    let ios = delta(cur.reads, prev.reads) + delta(cur.writes, prev.writes);
    out.interval_seconds = secs;
    out.utilization = (delta(cur.io_ms, prev.io_ms) as f64 / ms).min(1.0);
    out.queue_depth = delta(cur.weighted_ms, prev.weighted_ms) as f64 / ms;
    out.await_ms = if ios > 0 {
        delta(cur.rw_ms, prev.rw_ms) as f64 / ios as f64
    } else {
        0.0
    };
    out.read_iops = delta(cur.reads, prev.reads) as f64 / secs;
    out.write_iops = delta(cur.writes, prev.writes) as f64 / secs;
    out.read_bytes_per_second = delta(cur.read_bytes, prev.read_bytes) as f64 / secs;
    out.write_bytes_per_second = delta(cur.written_bytes, prev.written_bytes) as f64 / secs;
}

/// Finds the mount holding `path` (the longest matching mount point).
pub(crate) fn mount_of(path: &Path) -> Result<Mount, Failure> {
    let real = path
        .canonicalize()
        .map_err(|e| local_failure("filesystem", format!("data dir {}: {e}", path.display())))?;
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| local_failure("filesystem", format!("read /proc/self/mountinfo: {e}")))?;
    let best = mounts
        .into_iter()
        .filter(|m| real.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .ok_or_else(|| {
            local_failure(
                "filesystem",
                format!("no mount contains {}", real.display()),
            )
        })?;
    let (major, minor) = parse_majmin(&best.majmin).unwrap_or((-1, -1));
    Ok(Mount {
        mount_point: best.mount_point,
        device: best.mount_source.unwrap_or_default(),
        fs_type: best.fs_type,
        major,
        minor,
    })
}

fn parse_majmin(s: &str) -> Option<(i32, i32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn statvfs(dir: &Path, mount: &Mount) -> Result<FilesystemMetrics, Failure> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| local_failure("filesystem", format!("statvfs {}: {e}", dir.display())))?;
    let frsize = st.f_frsize;
    Ok(FilesystemMetrics {
        path: dir.display().to_string(),
        mount_point: mount.mount_point.display().to_string(),
        device: mount.device.clone(),
        total_bytes: st.f_blocks * frsize,
        free_bytes: st.f_bfree * frsize,
        available_bytes: st.f_bavail * frsize,
        inodes_total: st.f_files,
        inodes_free: st.f_ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_of_this_host_has_a_mount_and_space() {
        let dir = std::env::temp_dir();
        let mut s = StorageSampler::new(Some(dir.clone()));
        let (fs, _disk, failures) = s.sample(Instant::now());
        let fs = fs.unwrap_or_else(|| panic!("no filesystem metrics: {failures:?}"));
        assert!(fs.total_bytes > 0);
        assert!(fs.available_bytes <= fs.total_bytes);
        assert!(dir
            .canonicalize()
            .expect("canon")
            .starts_with(&fs.mount_point));
    }

    #[test]
    fn missing_data_dir_is_a_named_failure() {
        let mut s = StorageSampler::new(Some("/nonexistent/etcd-data".into()));
        let (fs, disk, failures) = s.sample(Instant::now());
        assert!(fs.is_none() && disk.is_none());
        assert!(failures[0].message.contains("/nonexistent/etcd-data"));
    }

    #[test]
    fn rates_follow_iostat() {
        let t0 = Instant::now();
        let prev = Counters {
            at: t0,
            device: "vda".into(),
            reads: 100,
            writes: 200,
            read_bytes: 0,
            written_bytes: 0,
            io_ms: 1000,
            weighted_ms: 2000,
            rw_ms: 3000,
        };
        let cur = Counters {
            at: t0 + std::time::Duration::from_secs(2),
            reads: 110,
            writes: 250,
            read_bytes: 4096,
            written_bytes: 8192,
            io_ms: 1500,
            weighted_ms: 3000,
            rw_ms: 3600,
            ..prev.clone()
        };
        let mut out = DiskMetrics::default();
        apply_rates(&mut out, &prev, &cur);
        assert!((out.utilization - 0.25).abs() < 1e-9);
        assert!((out.queue_depth - 0.5).abs() < 1e-9);
        assert!((out.await_ms - 10.0).abs() < 1e-9);
        assert!((out.write_iops - 25.0).abs() < 1e-9);
        assert!((out.read_bytes_per_second - 2048.0).abs() < 1e-9);
    }
}
