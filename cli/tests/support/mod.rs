//! `etcdmon up` as a child process, for the system tests: started against a real
//! etcd cluster, polled through its API, stopped with SIGTERM.

#![allow(dead_code)] // each test binary uses its own part of this module

use etcdmon_testkit::{free_port, http_get};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Calls `f` every 250 ms until it returns `Some`, for at most `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERMs `etcdmon up`, checks it exits cleanly within 30 s and returns its stdout.
pub fn stop(child: &mut Child, log: &dyn Fn() -> String) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = poll(Duration::from_secs(30), || child.try_wait().expect("wait"))
        .unwrap_or_else(|| panic!("etcdmon up ignored SIGTERM\n{}", log()));
    assert!(status.success(), "{status:?}\n{}", log());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    out
}

/// A running `etcdmon up` with its data dir and log in a temp dir.
pub struct Up {
    /// The process.
    pub child: Child,
    /// Its API port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Up {
    /// Starts `etcdmon up --etcd ENDPOINT` with `args` and environment `env`.
    ///
    /// Its API port was free a moment before, but another process's outgoing
    /// connection may take it meanwhile (an ephemeral port): then it starts
    /// again on a fresh one, like the test kit's etcd clusters.
    pub fn start(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            let mut up = Self::spawn(endpoint, args, env);
            if !up.lost_its_port() {
                return up;
            }
        }
        panic!("etcdmon up found its API port taken three times");
    }

    fn spawn(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_etcdmon"))
            .args(["up", "--etcd", endpoint])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn etcdmon up");
        Self { child, port, dir }
    }

    /// Whether it exited at start because its API port was taken; waits (20 s
    /// at most) until the port answers or the process exits.
    fn lost_its_port(&mut self) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return false;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log().contains("Address already in use");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Its data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// The URL of `path` on its API.
    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The first cluster's members as the API shows them, once it answers.
    pub fn members(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let r = http_get(&self.api("/api/v1/clusters"), Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["clusters"][0]["members"].as_object().cloned()
    }

    /// Waits (60 s at most) until the API shows `n` members, all healthy.
    pub fn wait_healthy(&self, n: usize) {
        let healthy = poll(Duration::from_secs(60), || {
            let members = self.members()?;
            (members.len() == n && members.values().all(|m| m["healthy"] == true)).then_some(())
        });
        assert!(
            healthy.is_some(),
            "members not all healthy: {:?}\n{}",
            self.members(),
            self.log()
        );
    }

    /// Stops it with SIGTERM (clean exit checked); returns its stdout.
    pub fn stop(mut self) -> String {
        let dir = self.dir.path().join("up.log");
        stop(&mut self.child, &|| {
            std::fs::read_to_string(&dir).unwrap_or_default()
        })
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (rule, status, labels) of every alert in the webhook notifications received,
/// in order of arrival.
pub fn notified(
    requests: &[etcdmon_testkit::SinkRequest],
) -> Vec<(String, String, serde_json::Value)> {
    requests
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                a["labels"]["rule"].as_str().unwrap_or("").to_owned(),
                a["status"].as_str().unwrap_or("").to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

/// (rule, status, member) of every alert notified to `sink`'s `/hook` so far.
pub fn paged(sink: &etcdmon_testkit::HttpSink) -> Vec<(String, String, String)> {
    notified(&sink.requests("/hook"))
        .into_iter()
        .map(|(r, s, labels)| (r, s, labels["member"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Waits (at most `secs`) until (rule, status, member) was notified; fails
/// with what was, and `up`'s log, otherwise.
pub fn wait_paged(sink: &etcdmon_testkit::HttpSink, up: &Up, want: (&str, &str, &str), secs: u64) {
    let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
    sink.wait_for("/hook", Duration::from_secs(secs), |_| {
        paged(sink).contains(&want)
    });
    assert!(
        paged(sink).contains(&want),
        "{want:?} not notified: {:?}\n{}",
        paged(sink),
        up.log()
    );
}
