//! Small helpers every system under test needs: the wall clock the webhook
//! sink also uses, locating binaries, running the test kit's blocking calls
//! from async code, and waiting for a freshly spawned service to answer.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use etcdmon_testkit::{http_get, require_binary, ChildProcess};

/// Milliseconds since the Unix epoch: the clock `HttpSink` stamps
/// `received_ms` with, so latencies are differences on one clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs a blocking test-kit call (process signals, health probes) without
/// stalling the runtime's other workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The workspace binary `name`, built by `bench/detection-latency` into the
/// same directory as this benchmark (`target/release`).
///
/// `etcdmon_testkit::workspace_bin` is made for test binaries in
/// `target/<profile>/deps`; a benchmark binary sits one level higher, so it
/// looks next to itself instead.
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the benchmark binary")?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run bench/detection-latency, which builds it \
             (cargo build --release -p etcdmon-collector -p etcdmon-agent -p etcdmon-alerter --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A system binary installed by `bench/detection-latency` (Prometheus,
/// Alertmanager).
pub fn bench_binary(name: &str, package: &str) -> Result<PathBuf> {
    require_binary(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} not found: run bench/detection-latency, which installs Debian's {package}"
        )
    })
}

/// Polls `url` until it answers 200, failing early with the log tail when
/// `process` exits.
pub async fn wait_http_ok(url: &str, process: &ChildProcess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = blocking(|| http_get(url, Duration::from_secs(2)));
        if matches!(&answer, Ok(r) if r.status == 200) {
            return Ok(());
        }
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited ({status}) before {url} answered\n{}",
                process.name(),
                process.log_tail(30)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer 200 on {url} within {timeout:?} (last: {answer:?})\n{}",
                process.name(),
                process.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails with the log tail of the first process that has exited.
pub fn ensure_running<'a>(processes: impl IntoIterator<Item = &'a ChildProcess>) -> Result<()> {
    for p in processes {
        if let Some(status) = p.exit_status() {
            bail!("{} exited ({status})\n{}", p.name(), p.log_tail(30));
        }
    }
    Ok(())
}

/// Formats a latency in ms for the table: seconds with two decimals, and
/// minutes too when it is that long.
pub fn fmt_ms(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    if ms.abs() < 60_000 {
        format!("{s:.2} s")
    } else {
        let total = (ms.abs() + 500) / 1000;
        let sign = if ms < 0 { "-" } else { "" };
        format!("{s:.1} s ({sign}{}m{:02}s)", total / 60, total % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_seconds_and_minutes() {
        assert_eq!(fmt_ms(830), "0.83 s");
        assert_eq!(fmt_ms(-120), "-0.12 s");
        assert_eq!(fmt_ms(59_994), "59.99 s");
        assert_eq!(fmt_ms(123_400), "123.4 s (2m03s)");
        assert_eq!(fmt_ms(1_320_000), "1320.0 s (22m00s)");
    }
}
