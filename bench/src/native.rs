//! ClickHouse's own insert rate for the same rows, as the reference.
//!
//! The rows are what the collector makes of the bench payload (its own
//! `report_rows`), for [`NATIVE_MEMBERS`] members of cluster
//! [`NATIVE_CLUSTER`], one batch per member per second, written in
//! `RowBinary` with the columns of `etcdmon.samples` in table order (date,
//! cluster, member, name, labels, ts_ms, value; [`check_schema`] makes sure
//! that is still the layout). The file lives in `/dev/shm` when it exists,
//! so reading it costs no disk I/O. Then
//!
//! ```text
//! clickhouse-client --host 127.0.0.1 --port TCP \
//!     --query "INSERT INTO etcdmon.samples FORMAT RowBinary" < file
//! ```
//!
//! is timed from spawn to exit. The insert goes into the real table, so the
//! rollup materialized views fire for it exactly as for the collector's
//! inserts. The cluster name keeps these rows apart from the collector's.
//!
//! A second reference explains the gap between the two: the same file cut
//! into INSERTs of an idle writer's size (it writes once
//! `ingest.flush_rows` rows are gathered, 50,000 by default, i.e. 39 whole
//! batches here; under heavy load its writes are larger), posted one after the other to the HTTP interface as
//! plain `RowBinary`, with nothing else running. That is what ClickHouse
//! itself does with inserts of that size: each becomes a part in `samples`
//! and in both rollups, and parts are merged in the background, whereas
//! `clickhouse-client` squashes its input into blocks of about a million
//! rows.

use crate::cpu::{self, CpuUsage};
use crate::payload::{identity, Payload};
use anyhow::{bail, Context as _};
use etcdmon_collector::ingest::convert::{report_rows, Target};
use etcdmon_storage::SampleRow;
use etcdmon_testkit::ClickHouseServer;
use std::io::{BufWriter, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Cluster of the reference rows.
/// Distinct stored sample keys of `cluster`, counted member by member: a full run
/// stores tens of millions of rows, and one exact distinct count over all of them
/// needs more than the test server's 2 GB per-query memory.
pub fn distinct_rows(server: &ClickHouseServer, cluster: &str) -> anyhow::Result<u64> {
    let members = server.query(&format!(
        "SELECT DISTINCT member FROM etcdmon.samples WHERE cluster = '{cluster}'"
    ))?;
    let mut total = 0u64;
    for member in members.lines().filter(|m| !m.is_empty()) {
        let n: u64 = server
            .query(&format!(
                "SELECT uniqExact(name, labels, ts_ms) FROM etcdmon.samples \
                 WHERE cluster = '{cluster}' AND member = '{member}'"
            ))?
            .trim()
            .parse()
            .context("parse stored count")?;
        total += n;
    }
    Ok(total)
}

pub const NATIVE_CLUSTER: &str = "bench-native";
/// Members the reference rows are spread over.
pub const NATIVE_MEMBERS: usize = 100;
/// `etcdmon.samples` as the RowBinary writer below lays it out.
const SAMPLES_COLUMNS: &[(&str, &str)] = &[
    ("date", "Date"),
    ("cluster", "String"),
    ("member", "String"),
    ("name", "String"),
    ("labels", "String"),
    ("ts_ms", "Int64"),
    ("value", "Float64"),
];

/// One timed `clickhouse-client` insert.
#[derive(Debug, Clone)]
pub struct NativeRun {
    /// Spawn to exit.
    pub elapsed: Duration,
    /// Rows per second.
    pub rows_per_second: f64,
    /// CPU during the insert (the client itself is not counted).
    pub cpu: CpuUsage,
}

/// The same rows in sequential HTTP INSERTs of the collector's write size.
#[derive(Debug, Clone)]
pub struct ChunkedRun {
    /// Rows per INSERT (whole batches).
    pub rows_per_insert: u64,
    /// INSERTs sent.
    pub inserts: usize,
    /// First request to last answer.
    pub elapsed: Duration,
    /// Rows per second.
    pub rows_per_second: f64,
    /// CPU during the inserts.
    pub cpu: CpuUsage,
}

/// The reference measurement.
#[derive(Debug, Clone)]
pub struct NativeResult {
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Every timed run.
    pub runs: Vec<NativeRun>,
    /// The same rows in INSERTs of the collector's size.
    pub chunked: ChunkedRun,
}

impl NativeResult {
    /// The fastest run's rate (the stricter reference).
    pub fn best_rows_per_second(&self) -> f64 {
        self.runs
            .iter()
            .map(|r| r.rows_per_second)
            .fold(0.0, f64::max)
    }
}

/// Fails unless `etcdmon.samples` has the columns the writer assumes, leaving out the
/// ones ClickHouse computes itself (`MATERIALIZED`, `ALIAS`), which an INSERT without
/// a column list does not send.
pub fn check_schema(server: &ClickHouseServer) -> anyhow::Result<()> {
    let described = server.query("DESCRIBE TABLE etcdmon.samples")?;
    let actual: Vec<(String, String)> = described
        .lines()
        .filter_map(|l| {
            // name, type, default kind, default expression, ...
            let f: Vec<&str> = l.split('\t').collect();
            let computed = matches!(f.get(2), Some(&"MATERIALIZED" | &"ALIAS"));
            (!computed).then(|| {
                (
                    f.first().copied().unwrap_or_default().to_string(),
                    f.get(1).copied().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    let expected: Vec<(String, String)> = SAMPLES_COLUMNS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    if actual != expected {
        bail!("etcdmon.samples is {actual:?}, the RowBinary writer assumes {expected:?}");
    }
    Ok(())
}

/// Writes about `rows` rows (whole batches), inserts them `runs` times with
/// `clickhouse-client`, then once more in HTTP INSERTs of about
/// `flush_rows` rows.
pub fn measure(
    server: &ClickHouseServer,
    payload: &Payload,
    rows: u64,
    runs: usize,
    flush_rows: usize,
) -> anyhow::Result<NativeResult> {
    let file = write_file(payload, rows)?;
    let written = file.rows;
    let bytes = file.file.as_file().metadata()?.len();
    eprintln!(
        "ingest-load: native reference: {written} rows, {:.1} MB RowBinary in {}",
        bytes as f64 / 1e6,
        file.file.path().display()
    );
    let mut runs_done = Vec::new();
    for run in 1..=runs {
        wait_for_merges(server)?;
        let input = std::fs::File::open(file.file.path())?;
        let before = cpu::sample(server.pid());
        let started = Instant::now();
        let output = server
            .client_command()
            .arg("--query")
            .arg("INSERT INTO etcdmon.samples FORMAT RowBinary")
            .stdin(Stdio::from(input))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("run clickhouse-client")?;
        let elapsed = started.elapsed();
        let after = cpu::sample(server.pid());
        if !output.status.success() {
            bail!(
                "clickhouse-client INSERT failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let r = NativeRun {
            elapsed,
            rows_per_second: written as f64 / elapsed.as_secs_f64(),
            cpu: before.until(&after),
        };
        eprintln!(
            "ingest-load: native run {run}/{runs}: {:.2} s, {:.0} rows/s, ClickHouse {:.2} cores, \
             other {:.2}",
            elapsed.as_secs_f64(),
            r.rows_per_second,
            r.cpu.clickhouse,
            r.cpu.other
        );
        runs_done.push(r);
    }
    wait_for_merges(server)?;
    let chunked = insert_chunked(server, &file, payload.samples_per_batch(), flush_rows)?;
    let out = NativeResult {
        rows: written,
        bytes,
        runs: runs_done,
        chunked,
    };
    // Every run inserted every row (copies share their key; count() sees
    // them all until merges collapse them, so count distinct keys instead).
    let stored: u64 = server
        .query(&format!(
            "SELECT uniqExact(member, name, labels, ts_ms) FROM etcdmon.samples \
             WHERE cluster = '{NATIVE_CLUSTER}'"
        ))?
        .trim()
        .parse()
        .context("parse count")?;
    if stored != written {
        bail!("the native insert stored {stored} distinct rows, the file holds {written}");
    }
    let bad_dates: u64 = server
        .query(&format!(
            "SELECT count() FROM etcdmon.samples WHERE cluster = '{NATIVE_CLUSTER}' \
             AND date != toDate(toDateTime(intDiv(ts_ms, 1000)))"
        ))?
        .trim()
        .parse()
        .context("parse count")?;
    if bad_dates != 0 {
        bail!("{bad_dates} native rows have a date column that does not match ts_ms");
    }
    Ok(out)
}

/// Rows and compressed bytes of one table's active parts.
#[derive(Debug, Clone)]
pub struct TableFootprint {
    pub table: String,
    pub rows: u64,
    pub compressed_bytes: u64,
}

/// What the etcdmon tables hold on disk at the end of the run (compressed
/// column data of the active parts), for bytes per stored sample.
pub fn stored_footprint(server: &ClickHouseServer) -> anyhow::Result<Vec<TableFootprint>> {
    let answer = server.query(
        "SELECT table, sum(rows), sum(data_compressed_bytes) FROM system.parts \
         WHERE database = 'etcdmon' AND active GROUP BY table ORDER BY table FORMAT TSV",
    )?;
    answer
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split('\t');
            let (Some(table), Some(rows), Some(bytes)) = (f.next(), f.next(), f.next()) else {
                anyhow::bail!("unexpected system.parts line {line:?}");
            };
            Ok(TableFootprint {
                table: table.to_owned(),
                rows: rows.parse().context("rows")?,
                compressed_bytes: bytes.parse().context("bytes")?,
            })
        })
        .collect()
}

/// Waits (two minutes at most) until ClickHouse runs no merge, so that one
/// measurement does not pay for the parts of the previous one.
pub fn wait_for_merges(server: &ClickHouseServer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.query("SELECT count() FROM system.merges")?.trim() != "0" {
        if Instant::now() >= deadline {
            eprintln!("ingest-load: merges still running after 2 minutes; going on");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Posts the file in INSERTs of the whole batches that first reach
/// `flush_rows` rows, one after the other.
fn insert_chunked(
    server: &ClickHouseServer,
    file: &RowFile,
    per_batch: usize,
    flush_rows: usize,
) -> anyhow::Result<ChunkedRun> {
    let batches_per_insert = flush_rows.div_ceil(per_batch).max(1);
    let data = std::fs::read(file.file.path())?;
    let url = format!(
        "{}/?query=INSERT%20INTO%20etcdmon.samples%20FORMAT%20RowBinary",
        server.http_url()
    );
    let before = cpu::sample(server.pid());
    let started = Instant::now();
    let mut inserts = 0;
    for bounds in file.batch_offsets.chunks(batches_per_insert) {
        let from = bounds[0] as usize;
        let to = file
            .batch_offsets
            .get(inserts * batches_per_insert + bounds.len())
            .map_or(data.len(), |&o| o as usize);
        let response = etcdmon_testkit::http_post(&url, &data[from..to], Duration::from_secs(60))?;
        if response.status != 200 {
            bail!(
                "chunked INSERT answered {}: {}",
                response.status,
                response.body.trim()
            );
        }
        inserts += 1;
    }
    let elapsed = started.elapsed();
    let cpu = before.until(&cpu::sample(server.pid()));
    let r = ChunkedRun {
        rows_per_insert: (batches_per_insert * per_batch) as u64,
        inserts,
        elapsed,
        rows_per_second: file.rows as f64 / elapsed.as_secs_f64(),
        cpu,
    };
    eprintln!(
        "ingest-load: chunked reference: {inserts} HTTP INSERTs of {} rows: {:.2} s, {:.0} rows/s, \
         ClickHouse {:.2} cores",
        r.rows_per_insert,
        elapsed.as_secs_f64(),
        r.rows_per_second,
        cpu.clickhouse
    );
    Ok(r)
}

struct RowFile {
    file: tempfile::NamedTempFile,
    rows: u64,
    /// Byte offset where each batch (one member, one second) starts.
    batch_offsets: Vec<u64>,
}

fn write_file(payload: &Payload, rows: u64) -> anyhow::Result<RowFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("ingest-load-native-").suffix(".rowbinary");
    let shm = std::path::Path::new("/dev/shm");
    let file = if shm.is_dir() {
        builder.tempfile_in(shm)?
    } else {
        builder.tempfile()?
    };
    let per_batch = payload.samples_per_batch() as u64;
    let batches = rows.div_ceil(per_batch).max(1);
    let seconds = batches.div_ceil(NATIVE_MEMBERS as u64) as i64;
    // End about now, like the collector's rows; one template per member.
    let t0 = now_ms() - seconds * 1000;
    let templates: Vec<Vec<SampleRow>> = (0..NATIVE_MEMBERS)
        .map(|i| {
            let member = format!("a{i}");
            let target = Target {
                cluster: NATIVE_CLUSTER,
                member: &member,
            };
            payload
                .reports(&identity(i), t0)
                .iter()
                .flat_map(|r| report_rows(&target, r).0)
                .collect()
        })
        .collect();
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file.reopen()?),
        bytes: 0,
    };
    let mut written = 0u64;
    let mut batch_offsets = Vec::new();
    'out: for second in 0..seconds {
        for (member, rows_of_member) in templates.iter().enumerate() {
            if written / per_batch >= batches {
                break 'out;
            }
            batch_offsets.push(w.bytes);
            let shift = second * 1000 + member as i64;
            for row in rows_of_member {
                write_row(&mut w, row, row.ts_ms + shift)?;
            }
            written += rows_of_member.len() as u64;
        }
    }
    w.inner.flush()?;
    Ok(RowFile {
        file,
        rows: written,
        batch_offsets,
    })
}

/// A writer that counts what went through it.
struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One row of `etcdmon.samples` in RowBinary.
fn write_row(w: &mut impl std::io::Write, row: &SampleRow, ts_ms: i64) -> std::io::Result<()> {
    let day = u16::try_from(ts_ms.div_euclid(86_400_000)).unwrap_or(u16::MAX);
    w.write_all(&day.to_le_bytes())?;
    for s in [&*row.cluster, &*row.member, &row.name, &row.labels] {
        write_string(w, s)?;
    }
    w.write_all(&ts_ms.to_le_bytes())?;
    w.write_all(&row.value.to_le_bytes())
}

/// RowBinary `String`: LEB128 length, then the bytes.
fn write_string(w: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
    let mut len = s.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            w.write_all(&[byte])?;
            break;
        }
        w.write_all(&[byte | 0x80])?;
    }
    w.write_all(s.as_bytes())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rowbinary_layout() {
        let row = SampleRow {
            cluster: "c".into(),
            member: "m".into(),
            name: "x".repeat(200),
            labels: String::new(),
            ts_ms: 86_400_000 * 3 + 5,
            value: 1.5,
        };
        let mut out = Vec::new();
        write_row(&mut out, &row, row.ts_ms).unwrap();
        assert_eq!(&out[..2], &3u16.to_le_bytes());
        assert_eq!(&out[2..6], b"\x01c\x01m");
        // 200 = 0xc8 -> LEB128 c8 01.
        assert_eq!(&out[6..8], &[0xc8, 0x01]);
        assert_eq!(out.len(), 2 + 2 + 2 + 2 + 200 + 1 + 8 + 8);
        assert_eq!(&out[out.len() - 8..], &1.5f64.to_le_bytes());
    }
}
