//! `etcdmon disk`: is this disk fit for etcd? The fsync test etcd's operators
//! rely on, run by the agent's own probe code, plus sequential write
//! throughput and random read IOPS, with a verdict against etcd's guidance.
//!
//! ```text
//! etcdmon disk --dir /var/lib/etcd
//!   1. fdatasync   sequential 2300-byte writes, each followed by fdatasync, 22 MiB
//!                  (the fio recipe: --rw=write --ioengine=sync --fdatasync=1 --bs=2300)
//!   2. sequential  128 MiB in 1 MiB writes, then fdatasync: MiB/s
//!   3. random read 4 KiB reads at random offsets of that file, O_DIRECT (past the
//!                  page cache): IOPS and latency
//!   verdict        fdatasync p99 under 10 ms and at least 50 sequential fdatasync
//!                  IOPS (500 for heavily loaded clusters), from etcd's hardware and
//!                  tuning guides
//! ```
//!
//! It only creates files of its own directly in `--dir` (refusing to touch a
//! file of that name that exists already) and removes them, also when a step
//! fails.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// etcd's guidance: the 99th percentile of fdatasync under 10 ms.
const FSYNC_P99_LIMIT_S: f64 = 0.010;
/// etcd's hardware guide: at least 50 sequential IOPS...
const MIN_IOPS: f64 = 50.0;
/// ...and 500 for heavily loaded clusters.
const HEAVY_IOPS: f64 = 500.0;
/// Size of one random read; reads and buffer are aligned to it for O_DIRECT.
const READ_BLOCK: usize = 4096;

/// `etcdmon disk ...`.
#[derive(Debug, Args)]
pub struct DiskArgs {
    /// Directory to test in: one on the disk etcd's data dir is (or will be)
    /// on. Only files of this command's own are written there, and removed.
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes written in the fdatasync test (fio's recipe: 22 MiB).
    #[arg(long, default_value = "22MiB", value_parser = parse_size)]
    pub size: u64,
    /// Bytes per write in the fdatasync test (etcd's WAL writes are about this size).
    #[arg(long, default_value_t = 2300, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub block_size: u32,
    /// Bytes written in the sequential throughput test (0 skips it and the read test).
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub seq_size: u64,
    /// Random 4 KiB reads in the read test (0 skips it).
    #[arg(long, default_value_t = 5000)]
    pub reads: u32,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON object, for scripts and for comparing runs.
    Json,
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The directory tested.
    pub dir: String,
    /// Step 1.
    pub fdatasync: Fdatasync,
    /// Step 2, unless skipped.
    pub sequential_write: Option<Sequential>,
    /// Step 3, when measured.
    pub random_read: Option<RandomRead>,
    /// Why step 3 was not measured (skipped, or no O_DIRECT on this filesystem).
    pub random_read_skipped: Option<String>,
    /// Against etcd's guidance.
    pub verdict: Verdict,
}

/// Write+fdatasync latencies.
#[derive(Debug, Serialize)]
pub struct Fdatasync {
    /// Writes made (each followed by fdatasync).
    pub writes: u32,
    /// Bytes per write.
    pub block_size: u32,
    /// Latency percentiles and mean, seconds.
    pub latency: Latency,
    /// Writes+fdatasyncs per second: the disk's sequential sync IOPS.
    pub iops: f64,
}

/// Latency figures in seconds (nearest-rank percentiles).
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Sequential write throughput.
#[derive(Debug, Serialize)]
pub struct Sequential {
    /// Bytes written, then synced.
    pub bytes: u64,
    /// Seconds from the first write to the end of the fdatasync.
    pub seconds: f64,
    /// MiB per second.
    pub mib_per_second: f64,
}

/// Random reads past the page cache.
#[derive(Debug, Serialize)]
pub struct RandomRead {
    /// Reads made.
    pub reads: u32,
    /// Reads per second.
    pub iops: f64,
    /// Latency of one read.
    pub latency: Latency,
}

/// The verdict and the reasons for it.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// Fit for etcd: fdatasync p99 under 10 ms and at least 50 IOPS.
    pub pass: bool,
    /// At least 500 sequential sync IOPS as well.
    pub heavy_load: bool,
    /// One line per criterion.
    pub reasons: Vec<String>,
}

/// Runs the three steps in `args.dir` and prints the report; an error when the
/// disk does not meet etcd's guidance (after the report) or a step failed.
pub fn run(args: &DiskArgs) -> Result<()> {
    let report = measure(args)?;
    match args.output {
        Output::Text => print!("{}", render(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if !report.verdict.pass {
        bail!(
            "{} does not meet etcd's guidance for its data dir",
            report.dir
        );
    }
    Ok(())
}

/// The measurements, with progress on stderr.
pub fn measure(args: &DiskArgs) -> Result<Report> {
    let meta =
        std::fs::metadata(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("--dir {}: not a directory", args.dir.display());
    }
    let tag = format!(".etcdmon-disk-{}", std::process::id());
    let sync_file = Owned::claim(args.dir.join(format!("{tag}-sync")))?;
    let seq_file = Owned::claim(args.dir.join(format!("{tag}-seq")))?;

    let writes = u32::try_from(args.size.div_ceil(u64::from(args.block_size)))
        .context("--size / --block-size: too many writes")?
        .max(1);
    eprintln!(
        "etcdmon disk: 1/3 fdatasync: {writes} sequential writes of {} bytes in {}",
        args.block_size,
        args.dir.display()
    );
    let mut bar = Progress::new(writes);
    let started = Instant::now();
    let mut lat = etcdmon_agent::probes::fsync::probe_with_progress(
        sync_file.path(),
        writes,
        args.block_size,
        &mut |done| bar.update(done),
    )
    .with_context(|| format!("fdatasync test in {}", args.dir.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish();
    let fdatasync = Fdatasync {
        writes,
        block_size: args.block_size,
        latency: Latency::of(&mut lat),
        iops: f64::from(writes) / elapsed.max(f64::EPSILON),
    };

    let (sequential_write, random_read) = if args.seq_size == 0 {
        (None, Err("skipped (--seq-size 0)".to_owned()))
    } else {
        eprintln!(
            "etcdmon disk: 2/3 sequential write of {} MiB",
            args.seq_size / (1 << 20)
        );
        let seq = sequential(seq_file.path(), args.seq_size)
            .with_context(|| format!("sequential write test in {}", args.dir.display()))?;
        let read = if args.reads == 0 {
            Err("skipped (--reads 0)".to_owned())
        } else {
            eprintln!("etcdmon disk: 3/3 {} random 4 KiB reads", args.reads);
            random_reads(seq_file.path(), args.seq_size, args.reads)
        };
        (Some(seq), read)
    };
    let verdict = judge(&fdatasync);
    let (random_read, random_read_skipped) = match random_read {
        Ok(r) => (Some(r), None),
        Err(why) => (None, Some(why)),
    };
    Ok(Report {
        dir: args.dir.display().to_string(),
        fdatasync,
        sequential_write,
        random_read,
        random_read_skipped,
        verdict,
    })
}

/// The verdict on the fdatasync figures.
fn judge(f: &Fdatasync) -> Verdict {
    let p99_ok = f.latency.p99 < FSYNC_P99_LIMIT_S;
    let iops_ok = f.iops >= MIN_IOPS;
    let heavy = f.iops >= HEAVY_IOPS;
    let mut reasons = vec![
        format!(
            "fdatasync p99 {} {} 10 ms",
            ms(f.latency.p99),
            if p99_ok { "<" } else { ">=" }
        ),
        format!(
            "{:.0} sequential fdatasync IOPS {} 50",
            f.iops,
            if iops_ok { ">=" } else { "<" }
        ),
    ];
    reasons.push(if heavy {
        format!("{:.0} IOPS >= 500: fit for heavily loaded clusters", f.iops)
    } else {
        format!("{:.0} IOPS < 500: not for heavily loaded clusters", f.iops)
    });
    Verdict {
        pass: p99_ok && iops_ok,
        heavy_load: p99_ok && heavy,
        reasons,
    }
}

fn sequential(path: &Path, bytes: u64) -> Result<Sequential> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8 + 1).collect();
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    Ok(Sequential {
        bytes,
        seconds,
        mib_per_second: bytes as f64 / f64::from(1 << 20) / seconds,
    })
}

/// Random aligned reads with O_DIRECT, so the page cache (which holds the file
/// just written) does not answer them. Filesystems without O_DIRECT (tmpfs)
/// get a reason instead of a figure.
fn random_reads(path: &Path, file_bytes: u64, reads: u32) -> Result<RandomRead, String> {
    let blocks = file_bytes / READ_BLOCK as u64;
    if blocks == 0 {
        return Err(format!(
            "--seq-size under {READ_BLOCK} bytes: nothing to read"
        ));
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("not measured: O_DIRECT not supported here ({e})"))?;
    let mut buffer = vec![0u8; 2 * READ_BLOCK];
    let skip = buffer.as_ptr().align_offset(READ_BLOCK);
    let aligned = &mut buffer[skip..skip + READ_BLOCK];
    let mut rng = XorShift::seeded();
    let mut lat = Vec::with_capacity(reads as usize);
    let started = Instant::now();
    for _ in 0..reads {
        let offset = (rng.next() % blocks) * READ_BLOCK as u64;
        let t = Instant::now();
        read_block(&f, aligned, offset).map_err(|e| format!("read at {offset}: {e}"))?;
        lat.push(t.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64().max(f64::EPSILON);
    Ok(RandomRead {
        reads,
        iops: f64::from(reads) / elapsed,
        latency: Latency::of(&mut lat),
    })
}

fn read_block(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let n = f.read_at(buf, offset)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("short read ({n} bytes)")))
    }
}

impl Latency {
    /// Figures of `values` (sorted in place); all zero when empty.
    fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let q = |q: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            etcdmon_agent::probes::fsync::quantile(values, q)
        };
        Self {
            min: q(0.0),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: q(1.0),
            mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
        }
    }
}

/// The text report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let l = &r.fdatasync.latency;
    let _ = writeln!(out, "etcdmon disk: {}", r.dir);
    let _ = writeln!(
        out,
        "\nfdatasync ({} sequential writes of {} bytes, each followed by fdatasync)",
        r.fdatasync.writes, r.fdatasync.block_size
    );
    let _ = writeln!(out, "  {}", latency_line(l));
    let _ = writeln!(out, "  {:.0} writes/s", r.fdatasync.iops);
    if let Some(s) = &r.sequential_write {
        let _ = writeln!(
            out,
            "\nsequential write: {} MiB in {:.2} s = {:.0} MiB/s",
            s.bytes / (1 << 20),
            s.seconds,
            s.mib_per_second
        );
    }
    match (&r.random_read, &r.random_read_skipped) {
        (Some(rr), _) => {
            let _ = writeln!(
                out,
                "\nrandom 4 KiB reads (O_DIRECT): {} reads, {:.0} IOPS\n  {}",
                rr.reads,
                rr.iops,
                latency_line(&rr.latency)
            );
        }
        (None, why) => {
            let why = why.as_deref().unwrap_or("not measured");
            let _ = writeln!(out, "\nrandom 4 KiB reads: {why}");
        }
    }
    let _ = writeln!(
        out,
        "\nverdict: {}",
        if r.verdict.pass { "PASS" } else { "FAIL" }
    );
    for reason in &r.verdict.reasons {
        let _ = writeln!(out, "  {reason}");
    }
    out
}

fn latency_line(l: &Latency) -> String {
    format!(
        "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
        ms(l.min),
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        ms(l.mean)
    )
}

fn ms(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1000.0)
}

/// `22MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 22MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unit {other:?}: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// A file this command created and removes when dropped.
struct Owned(PathBuf);

impl Owned {
    /// Creates `path`, refusing one that exists (it is not ours to overwrite).
    fn claim(path: PathBuf) -> Result<Self> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // The fdatasync probe removes its file itself; the rest are removed here.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A progress line on stderr, redrawn at each whole percent.
struct Progress {
    total: u32,
    shown: u32,
    started: Instant,
}

impl Progress {
    fn new(total: u32) -> Self {
        Self {
            total,
            shown: 0,
            started: Instant::now(),
        }
    }

    fn update(&mut self, done: u32) {
        let percent = (u64::from(done) * 100 / u64::from(self.total.max(1))) as u32;
        if percent > self.shown {
            self.shown = percent;
            eprint!(
                "\r  {percent:>3}%  {done}/{}  {:.1} s",
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn finish(&self) {
        eprintln!();
    }
}

/// A small xorshift generator: random offsets need no crate.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(u64::from(nanos) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_say_why() {
        assert_eq!(parse_size("22MiB"), Ok(22 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("22MB")
            .unwrap_err()
            .contains("use B, KiB, MiB or GiB"));
        assert!(parse_size("lots")
            .unwrap_err()
            .contains("expected a number"));
    }

    #[test]
    fn the_verdict_follows_etcds_guidance() {
        let f = |p99: f64, iops: f64| Fdatasync {
            writes: 100,
            block_size: 2300,
            latency: Latency::of(&mut vec![p99; 100]),
            iops,
        };
        let fast = judge(&f(0.001, 1000.0));
        assert!(fast.pass && fast.heavy_load);
        let modest = judge(&f(0.005, 120.0));
        assert!(modest.pass && !modest.heavy_load);
        assert!(!judge(&f(0.012, 1000.0)).pass, "p99 over 10 ms");
        assert!(!judge(&f(0.002, 40.0)).pass, "under 50 IOPS");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let l = Latency::of(&mut v);
        assert_eq!(
            (l.min, l.p50, l.p99, l.p999, l.max),
            (1.0, 500.0, 990.0, 999.0, 1000.0)
        );
    }
}
