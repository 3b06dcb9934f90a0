//! Faults of the machine rather than of a process's life, produced for real:
//!
//! * [`SlowSyscalls`]: a process whose `fdatasync`/`fsync` (or any syscall)
//!   take longer, as on a slow or overloaded disk. It uses strace's fault
//!   injection (`-e inject=SYSCALL:delay_exit=US`) on the running process;
//!   an `LD_PRELOAD` shim cannot do it, since etcd is a Go program that
//!   makes its system calls without libc.
//! * [`Tmpfs`]: a small filesystem of its own (a tmpfs mount), to fill up.
//!
//! Both need root (CI runs as root); without it they fail with that reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::{require_binary, ChildProcess};

/// Syscalls of a running process made slower until [`detach`](Self::detach)
/// (or drop).
pub struct SlowSyscalls {
    strace: ChildProcess,
    pid: u32,
}

impl SlowSyscalls {
    /// Delays every return from `syscalls` in every thread of process `pid` by
    /// `delay`. Returns once the process is traced. strace's own output goes
    /// to `log`.
    pub fn attach(pid: u32, syscalls: &[&str], delay: Duration, log: &Path) -> Result<Self> {
        ensure!(
            !syscalls.is_empty(),
            "name at least one syscall to slow down"
        );
        let strace = require_binary("strace")?;
        let set = syscalls.join(",");
        let mut command = Command::new(strace);
        command
            .args(["-f", "-qq", "-o", "/dev/null"])
            .arg(format!("-etrace={set}"))
            .arg(format!("-einject={set}:delay_exit={}", delay.as_micros()))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null());
        let strace = ChildProcess::spawn("strace", command, log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tracer_of(pid)? == 0 {
            if !strace.is_running() {
                bail!(
                    "strace could not attach to {pid} (root or CAP_SYS_PTRACE needed): {}",
                    strace.log_tail(5)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "strace did not attach to {pid} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The main thread is traced; give strace a moment for the others.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self { strace, pid })
    }

    /// Stops the delays: strace detaches and the process goes on at full speed.
    pub fn detach(self) -> Result<()> {
        self.stop_tracing()
    }

    fn stop_tracing(&self) -> Result<()> {
        if let Some(p) = self.strace.pid() {
            // SIGTERM makes strace detach cleanly (SIGKILL would too, via the
            // kernel, but leaves a syscall in flight to finish its delay).
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
        }
        self.strace
            .wait_timeout(Duration::from_secs(10))?
            .context("strace did not exit within 10 s of SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracer_of(self.pid).unwrap_or(0) != 0 {
            ensure!(
                Instant::now() < deadline,
                "process {} still traced",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for SlowSyscalls {
    fn drop(&mut self) {
        if self.strace.is_running() {
            let _ = self.stop_tracing();
        }
    }
}

/// The `TracerPid` of process `pid` (0: not traced).
fn tracer_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// A tmpfs of a given size mounted on a directory, unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` on `path` (created if missing).
    pub fn mount(path: &Path, size_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("create mount point {}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .context("run mount")?;
        ensure!(
            out.status.success(),
            "mount a tmpfs on {} (root needed): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there (a member being
        // killed) does not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
