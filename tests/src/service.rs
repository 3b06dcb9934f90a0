//! What every service the harness starts shares, so that etcd, ClickHouse, NATS
//! and the SMTP sink start the same way:
//!
//! ```text
//! service_temp_dir ─> try_start (fresh ports) ─> wait_ready (probe until ready;
//!        ▲                  │                     fail early if the process exits)
//!        └── retry_on_taken_port: again, up to START_ATTEMPTS, when a port was taken
//! ```
//!
//! A port from [`free_port`](crate::free_port) is free when handed out but may be
//! taken by another test's process before the service binds it; starting again on
//! fresh ports is cheaper than any locking across test binaries.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::ChildProcess;

/// Start attempts when a port turns out to be taken.
pub const START_ATTEMPTS: usize = 3;
/// How often readiness is probed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `try_start` (which picks fresh ports each time) until it succeeds, again when
/// its failure says an address was already in use, at most [`START_ATTEMPTS`] times.
/// Other failures end the start at once. `what` names the service in the error.
pub fn retry_on_taken_port<T>(what: &str, mut try_start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match try_start() {
            Ok(started) => return Ok(started),
            Err(e)
                if attempt < START_ATTEMPTS
                    && format!("{e:#}")
                        .to_ascii_lowercase()
                        .contains("address already in use") =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("start {what}")),
        }
    }
}

/// A temp dir for one service, `etcdmon-<what>-XXXX`: under `$ETCDMON_TEST_TMPDIR` when
/// set, else on tmpfs (`/dev/shm`) when there is one (fsync-heavy servers such as etcd
/// and ClickHouse are then fast and do not wear a disk), else in the system temp dir.
pub fn service_temp_dir(what: &str) -> Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    let prefix = format!("etcdmon-{what}-");
    builder.prefix(&prefix);
    if let Some(base) = std::env::var_os("ETCDMON_TEST_TMPDIR") {
        return builder
            .tempdir_in(&base)
            .with_context(|| format!("create temp dir in ETCDMON_TEST_TMPDIR={base:?}"));
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder
        .tempdir()
        .with_context(|| format!("create temp dir for {what}"))
}

/// Probes until `probe` says ready (`Ok`), failing early when `process` exits and after
/// `timeout`. `probe`'s error is the last thing the service answered; `log` gives the
/// service's log tail for the error message; `what` says what was waited for, e.g.
/// "nats-server to answer GET /healthz".
pub fn wait_ready(
    what: &str,
    process: &ChildProcess,
    timeout: Duration,
    log: &dyn Fn() -> String,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited during startup ({status})\n{}",
                process.name(),
                log()
            );
        }
        let last = match probe() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            bail!("waited {timeout:?} for {what} (last: {last})\n{}", log());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// For the services' own tests of [`retry_on_taken_port`]: a port held open (so a
/// bind to it fails) and a port source that hands it out first, then free ports.
#[cfg(test)]
pub(crate) fn taken_port_first() -> (std::net::TcpListener, u16, impl FnMut() -> u16) {
    let squatter =
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("bind a port");
    let taken = squatter.local_addr().expect("its address").port();
    let mut first = true;
    let ports = move || {
        if std::mem::take(&mut first) {
            taken
        } else {
            crate::free_port()
        }
    };
    (squatter, taken, ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_a_taken_port_and_at_most_start_attempts_times() {
        let mut calls = 0;
        let got: Result<u32> = retry_on_taken_port("svc", || {
            calls += 1;
            if calls < 2 {
                bail!("bind: Address already in use")
            }
            Ok(7)
        });
        assert_eq!(got.unwrap(), 7);
        let mut calls = 0;
        let err = retry_on_taken_port::<()>("svc", || {
            calls += 1;
            bail!("address already in use")
        })
        .unwrap_err();
        assert_eq!(calls, START_ATTEMPTS);
        assert!(format!("{err:#}").starts_with("start svc"), "{err:#}");
        let mut calls = 0;
        let _ = retry_on_taken_port::<()>("svc", || {
            calls += 1;
            bail!("no such file")
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn temp_dirs_are_named_after_the_service() {
        let dir = service_temp_dir("unit").unwrap();
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("etcdmon-unit-"), "{name}");
    }
}
