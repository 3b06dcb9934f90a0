//! Shared pieces of the collector's system tests: the collector binary as a
//! real process, and agents run in-process whose reports are teed so the
//! test knows exactly which samples must end up stored.

#![allow(dead_code)] // each test binary uses a different subset
#![allow(missing_docs)] // test support, not an API

use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::{Agent, AgentConfig, RunningAgent};
use etcdmon_collector::ingest::convert::{report_rows, Target};
use etcdmon_collector::state::member_key;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_proto::v1::{
    report, stream_request, Batch, EtcdStatus, Hello, Identity, Report, StreamRequest,
};
use etcdmon_testkit::{free_port, http_get, EtcdCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The collector binary on free ports.
pub struct CollectorProc {
    pub child: Option<Child>,
    pub grpc: u16,
    pub http: u16,
    pub storage: String,
    pub log: PathBuf,
    pub envs: Vec<(String, String)>,
    /// Arguments after the listen addresses and the store (default
    /// `--allow-plaintext --anonymous admin`: tests talk plain gRPC and call
    /// the API without credentials unless they test those).
    pub args: Vec<String>,
}

/// Plain gRPC from anyone, and the whole API without credentials (loopback).
fn open_args() -> Vec<String> {
    ["--allow-plaintext", "--anonymous", "admin"]
        .map(str::to_owned)
        .to_vec()
}

impl CollectorProc {
    pub fn start(storage: &str, dir: &Path) -> Self {
        let mut c = Self {
            child: None,
            grpc: free_port(),
            http: free_port(),
            storage: storage.to_string(),
            log: dir.join("collector.log"),
            envs: Vec::new(),
            args: open_args(),
        };
        c.spawn();
        c
    }

    /// Like `start`, with `args` instead of `--allow-plaintext` (a config file).
    pub fn start_with_args(storage: &str, dir: &Path, args: &[&str]) -> Self {
        let mut c = Self {
            child: None,
            grpc: free_port(),
            http: free_port(),
            storage: storage.to_string(),
            log: dir.join("collector.log"),
            envs: Vec::new(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        c.spawn();
        c
    }

    /// Like `start`, with extra environment (config overrides).
    pub fn start_with_env(storage: &str, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let mut c = Self {
            child: None,
            grpc: free_port(),
            http: free_port(),
            storage: storage.to_string(),
            log: dir.join("collector.log"),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: open_args(),
        };
        c.spawn();
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("collector log");
        let child = Command::new(env!("CARGO_BIN_EXE_etcdmon-collector"))
            .args(["--grpc-listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http)])
            .args(["--storage", &self.storage])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http_get(&self.url("/healthz"), Duration::from_secs(2)) {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("collector exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "collector not ready: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an init system stops it; returns how it exited (panics after 60 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("collector running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("collector ignored SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CollectorProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Samples each member's agents produced: member -> {(name, labels, ts)}.
pub type Expected = Arc<Mutex<BTreeMap<String, BTreeSet<(String, String, i64)>>>>;

/// In-process agents streaming to a collector, started as `etcdmon-agent run`
/// starts them, with every report teed so the test knows what must be stored.
pub struct Agents {
    pub running: Vec<RunningAgent>,
    pub metrics: Vec<AgentMetrics>,
    pub expected: Expected,
}

pub fn agent_config(
    cluster: &str,
    m: &etcdmon_testkit::EtcdMember,
    collector: &str,
    spool: &Path,
) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.identity.cluster = cluster.into();
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.metrics_url = m.metrics_url.clone();
    cfg.etcd.data_dir = Some(m.data_dir.clone());
    cfg.metrics.interval = Duration::from_secs(1);
    cfg.host.interval = Duration::from_secs(1);
    cfg.fsync.interval = Duration::from_secs(2);
    cfg.fsync.writes = 3;
    cfg.upstream.address = Some(collector.parse().expect("collector URL"));
    cfg.upstream.batch_interval = Duration::from_millis(200);
    cfg.upstream.spool_dir = Some(spool.join(&m.name));
    cfg.upstream.shutdown_grace = Duration::from_secs(10);
    // A mixed fleet: the first member's agent streams gzip (as agents before zstd
    // did), the others zstd, so every system test proves the collector takes both.
    if m.name == "m0" {
        cfg.upstream.compression = etcdmon_agent::config::Compression::Gzip;
    }
    cfg
}

impl Agents {
    pub fn start(cluster_name: &str, cluster: &EtcdCluster, collector: &str, spool: &Path) -> Self {
        let expected: Expected = Arc::default();
        let mut running = Vec::new();
        let mut metrics = Vec::new();
        for m in cluster.members() {
            let cfg = agent_config(cluster_name, m, collector, spool);
            let am = AgentMetrics::new();
            let exp = expected.clone();
            let tap = Box::new(move |r: &Report| {
                let id = r.identity.clone().unwrap_or_default();
                let member = member_key(&id);
                let (rows, _) = report_rows(
                    &Target {
                        cluster: &id.cluster,
                        member: &member,
                    },
                    r,
                );
                let mut e = exp.lock().expect("lock");
                let set = e.entry(member).or_default();
                for s in rows {
                    set.insert((s.name, s.labels, s.ts_ms));
                }
            });
            let agent = Agent::serve_tapped(&cfg, am.clone(), None, Some(tap), &Shutdown::new())
                .expect("agent");
            running.push(agent);
            metrics.push(am);
        }
        Self {
            running,
            metrics,
            expected,
        }
    }

    /// Stops the agents; they flush and wait for their last acks.
    pub async fn stop(self) -> (BTreeMap<String, usize>, Vec<AgentMetrics>) {
        for a in self.running {
            a.drain().await.expect("agent drained");
        }
        let e = self.expected.lock().expect("lock");
        (
            e.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
            self.metrics,
        )
    }
}

/// Distinct stored samples per member of `cluster`, whatever the store.
pub async fn stored_counts(
    storage: &dyn etcdmon_storage::Storage,
    cluster: &str,
) -> BTreeMap<String, usize> {
    storage
        .count_samples(cluster, 0, i64::MAX)
        .await
        .expect("count stored samples")
        .into_iter()
        .map(|c| (c.member, c.samples as usize))
        .collect()
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Hello from `agent` for member `member` of `cluster`.
pub fn hello_of(cluster: &str, member: &str, agent: &str) -> StreamRequest {
    StreamRequest {
        kind: Some(stream_request::Kind::Hello(Hello {
            identity: Some(Identity {
                cluster: cluster.into(),
                member_name: member.into(),
                ..Default::default()
            }),
            agent_version: "test".into(),
            protocol_version: 1,
            agent_id: agent.into(),
            features: Vec::new(),
        })),
    }
}

/// Batch `sequence` with one report of `body` for `member` of `cluster`, now.
pub fn batch_of(sequence: u64, cluster: &str, member: &str, body: report::Body) -> StreamRequest {
    StreamRequest {
        kind: Some(stream_request::Kind::Batch(Batch {
            sequence,
            reports: vec![Report {
                timestamp_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as i64,
                identity: Some(Identity {
                    cluster: cluster.into(),
                    member_name: member.into(),
                    member_id: 1,
                    ..Default::default()
                }),
                duration_seconds: 0.0,
                body: Some(body),
            }],
        })),
    }
}

/// Batch `sequence` with one healthy status report of `member` of `cluster`.
pub fn member_batch(sequence: u64, cluster: &str, member: &str) -> StreamRequest {
    batch_of(
        sequence,
        cluster,
        member,
        report::Body::Status(EtcdStatus {
            reachable: true,
            member_id: 1,
            leader_id: 1,
            raft_term: 2,
            version: "3.5.1".into(),
            ..Default::default()
        }),
    )
}
