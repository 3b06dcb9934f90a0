//! A guard around one child process, shared by every service the harness starts.
//!
//! [`ChildProcess`] spawns a command with stdin closed and stdout and stderr appended to a
//! log file (normally inside the test's temp dir, so a failing test can show the tail of
//! the log in its error). It tracks whether the process has been reaped, so a signal is
//! never sent to a pid that the kernel may already have given to another process, and
//! whether it is frozen with SIGSTOP.
//!
//! Dropping the guard SIGCONTs and SIGKILLs the process and reaps it. That is the only
//! cleanup mechanism: the usual way to tie a child's life to its parent,
//! `prctl(PR_SET_PDEATHSIG)` in a `pre_exec` hook, needs `unsafe`, which the workspace
//! denies (and it fires when the *thread* that spawned the child exits, which would kill a
//! service shared between test threads). Drop runs when a test returns or panics (tests
//! unwind), so the only leaks are a test binary that is itself SIGKILLed or calls
//! `process::exit`, or a guard kept in a `static`, which is never dropped. A Ctrl-C in a
//! terminal still reaches the children because they stay in the test's process group.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running (or exited but still tracked) child process that is killed on drop.
///
/// All methods take `&self` (the state sits behind a mutex) so a guard can be shared
/// between threads and probed through shared references, e.g. while waiting for health.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    log_path: PathBuf,
    pid: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    child: Child,
    /// Set once the process has been reaped; from then on its pid must not be signalled.
    exit: Option<ExitStatus>,
    /// Whether we sent SIGSTOP and no SIGCONT since.
    stopped: bool,
}

impl ChildProcess {
    /// Spawns `command`, appending its stdout and stderr to `log_path`.
    ///
    /// The log is opened in append mode so a restarted service keeps the earlier output;
    /// a marker line with the command line separates the runs. `name` labels errors.
    pub fn spawn(name: impl Into<String>, mut command: Command, log_path: &Path) -> Result<Self> {
        let name = name.into();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {} for {name}", log_path.display()))?;
        writeln!(log, "=== etcdmon-testkit: spawning {name}: {command:?}")
            .with_context(|| format!("write to log file {}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("duplicate log file handle for {name}"))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = command
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name,
            log_path: log_path.to_owned(),
            pid: child.id(),
            state: Mutex::new(State {
                child,
                exit: None,
                stopped: false,
            }),
        })
    }

    /// The label given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id while the process is alive (running or stopped); `None` once it has
    /// exited.
    pub fn pid(&self) -> Option<u32> {
        self.exit_status().is_none().then_some(self.pid)
    }

    /// Whether the process has not exited yet (a SIGSTOPped process counts as running).
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Whether the process is frozen by [`stop`](Self::stop).
    pub fn is_stopped(&self) -> bool {
        let state = self.lock();
        state.stopped && state.exit.is_none()
    }

    /// The exit status if the process has exited (reaping it if needed), else `None`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut state = self.lock();
        Self::poll(&mut state);
        state.exit
    }

    /// Freezes the process with SIGSTOP: its sockets stay open and the kernel still
    /// completes TCP handshakes, but nothing is read or answered.
    pub fn stop(&self) -> Result<()> {
        let mut state = self.lock();
        self.signal(&mut state, Signal::SIGSTOP)?;
        state.stopped = true;
        drop(state);
        // kill() returns once the signal is sent, not once every thread has
        // stopped: a thread running on the other core can still accept a
        // connection and answer it. Seen in CI: a frozen ClickHouse answered
        // `/ping`. So wait until every thread shows as stopped.
        self.wait_all_threads_stopped(Duration::from_secs(5))
    }

    /// Polls `/proc/PID/task/*/stat` until every thread is in state `T`.
    fn wait_all_threads_stopped(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let tasks = format!("/proc/{}/task", self.pid);
        loop {
            let all_stopped = std::fs::read_dir(&tasks)
                .with_context(|| format!("list threads of {} in {tasks}", self.name))?
                .filter_map(|entry| entry.ok())
                .all(|entry| {
                    std::fs::read_to_string(entry.path().join("stat"))
                        .ok()
                        // The state is the first field after the parenthesised name.
                        .and_then(|stat| {
                            stat.rsplit_once(')')
                                .and_then(|(_, rest)| rest.trim_start().chars().next())
                        })
                        // A thread that exited meanwhile is not running either.
                        .is_none_or(|state| matches!(state, 'T' | 't' | 'Z' | 'X'))
                });
            if all_stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not stop within {limit:?} of SIGSTOP",
                    self.name,
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Unfreezes a process stopped with [`stop`](Self::stop) by sending SIGCONT.
    pub fn resume(&self) -> Result<()> {
        let mut state = self.lock();
        self.signal(&mut state, Signal::SIGCONT)?;
        state.stopped = false;
        Ok(())
    }

    /// Sends SIGKILL (after SIGCONT if stopped) without waiting for the process to die.
    /// Does nothing if it has already exited. Pair with [`reap`](Self::reap).
    pub fn start_kill(&self) -> Result<()> {
        let mut state = self.lock();
        Self::poll(&mut state);
        if state.exit.is_some() {
            return Ok(());
        }
        if state.stopped {
            // SIGKILL also ends a stopped process, but continuing it first keeps the
            // bookkeeping honest and avoids surprising tracers.
            self.signal(&mut state, Signal::SIGCONT)?;
            state.stopped = false;
        }
        self.signal(&mut state, Signal::SIGKILL)
    }

    /// Blocks until the process has exited and returns its status (reaping it).
    pub fn reap(&self) -> Result<ExitStatus> {
        let mut state = self.lock();
        if let Some(status) = state.exit {
            return Ok(status);
        }
        let status = state
            .child
            .wait()
            .with_context(|| format!("wait for {} (pid {})", self.name, self.pid))?;
        state.exit = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM, as an init system stops a service, and waits up to `timeout`
    /// for the process to exit (SIGKILL after that); returns how it exited.
    pub fn terminate(&self, timeout: Duration) -> Result<ExitStatus> {
        {
            let mut state = self.lock();
            Self::poll(&mut state);
            if let Some(status) = state.exit {
                return Ok(status);
            }
            self.signal(&mut state, Signal::SIGTERM)?;
        }
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                self.kill()?;
                bail!("{} ignored SIGTERM for {timeout:?}", self.name)
            }
        }
    }

    /// SIGKILLs the process (continuing it first if stopped) and reaps it. Idempotent.
    pub fn kill(&self) -> Result<()> {
        self.start_kill()?;
        self.reap().map(drop)
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still
    /// running afterwards.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `lines` lines of the log file, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not stop Drop from killing the process.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the exit status if the process has exited since we last looked.
    fn poll(state: &mut State) {
        if state.exit.is_none() {
            if let Ok(Some(status)) = state.child.try_wait() {
                state.exit = Some(status);
            }
        }
    }

    fn signal(&self, state: &mut State, signal: Signal) -> Result<()> {
        Self::poll(state);
        if let Some(status) = state.exit {
            bail!(
                "cannot send {signal} to {}: it already exited ({status})",
                self.name
            );
        }
        let pid = i32::try_from(self.pid).context("pid does not fit in pid_t")?;
        // Safe against pid reuse: the child has not been reaped (checked above under the
        // lock), so the pid still belongs to it, at worst as a zombie.
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("send {signal} to {} (pid {})", self.name, self.pid))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Best effort: there is nobody to report an error to, and panicking in drop during
        // a test's unwinding would abort the whole test binary.
        let _ = self.kill();
    }
}

/// The last `lines` lines of the file at `path`, each prefixed with two spaces, or a note
/// that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("  <cannot read {}: {e}>\n", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "  {line}");
    }
    if out.is_empty() {
        out.push_str("  <empty log>\n");
    }
    out
}

/// Directories searched after `PATH`: test runners sometimes start with a minimal `PATH`
/// that lacks the system directories where Debian installs the services.
const FALLBACK_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"];

/// Finds the executable `name` on `PATH` or in the system binary directories.
///
/// The error tells how to get the binary, e.g. "etcd not found ...: run scripts/setup
/// (installs etcd-server)", so a test failing on a fresh machine says what to do.
pub fn require_binary(name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;

    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = path_dirs
        .into_iter()
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name));
    for candidate in candidates {
        let executable = std::fs::metadata(&candidate)
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            return Ok(candidate);
        }
    }
    let package = match name {
        "etcd" => "etcd-server",
        "etcdctl" => "etcd-client",
        "clickhouse" | "clickhouse-server" => "clickhouse-server",
        "nats-server" => "nats-server",
        other => other,
    };
    bail!(
        "{name} not found on PATH or in {}: run scripts/setup (installs {package})",
        FALLBACK_DIRS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> ChildProcess {
        let mut command = Command::new("sleep");
        command.arg("60");
        ChildProcess::spawn("sleep", command, &dir.join("sleep.log")).unwrap()
    }

    #[test]
    fn stop_resume_kill_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let process = sleeper(dir.path());
        let pid = process.pid().unwrap();
        assert!(process.is_running());
        process.stop().unwrap();
        assert!(process.is_stopped());
        process.resume().unwrap();
        assert!(!process.is_stopped());
        assert_eq!(
            process.wait_timeout(Duration::from_millis(50)).unwrap(),
            None
        );
        process.stop().unwrap();
        process.kill().unwrap();
        assert_eq!(process.pid(), None);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(
            process.stop().is_err(),
            "signalling a reaped child must fail"
        );
        process.kill().unwrap(); // idempotent
        assert!(process.log_tail(5).contains("spawning sleep"));
    }

    #[test]
    fn drop_kills() {
        let dir = tempfile::tempdir().unwrap();
        let process = sleeper(dir.path());
        let pid = process.pid().unwrap();
        process.stop().unwrap();
        drop(process);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn require_binary_finds_sh_and_explains_missing() {
        assert!(require_binary("sh").unwrap().is_absolute());
        let err = require_binary("etcdmon-no-such-binary")
            .unwrap_err()
            .to_string();
        assert!(err.contains("etcdmon-no-such-binary not found"), "{err}");
        assert!(err.contains("run scripts/setup"), "{err}");
    }
}
