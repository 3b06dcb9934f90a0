//! The agent against a real 3-member etcd cluster: every collector returns
//! real values; a killed member is reported as `refused` and a SIGSTOPped
//! one as `timeout`, within the probe timeout, while the others keep
//! reporting.

use etcdmon_agent::probes::fsync::PROBE_FILE;
use etcdmon_agent::probes::metrics::find_sample;
use etcdmon_agent::runner::Probes;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::AgentConfig;
use etcdmon_proto::v1::{report::Body, ErrorKind, ProcessDiscovery, Report};
use etcdmon_testkit::{EtcdCluster, EtcdMember};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn config_for(m: &EtcdMember) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.identity.cluster = "test".into();
    cfg.identity.region = "local".into();
    cfg.identity.tags.insert("suite".into(), "agent".into());
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.metrics_url = m.metrics_url.clone();
    cfg.etcd.data_dir = Some(m.data_dir.clone());
    cfg.fsync.writes = 5;
    cfg
}

fn body<'a>(reports: &'a [Report], name: &str) -> &'a Body {
    reports
        .iter()
        .filter_map(|r| r.body.as_ref())
        .find(|b| body_name(b) == name)
        .unwrap_or_else(|| panic!("no {name} report"))
}

fn body_name(b: &Body) -> &'static str {
    match b {
        Body::Metrics(_) => "metrics",
        Body::Status(_) => "status",
        Body::Host(_) => "host",
        Body::Fsync(_) => "fsync",
        Body::PeerRtt(_) => "peers",
        Body::Certs(_) => "certs",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_collector_returns_real_values() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let m = cluster.member(0);
    let mut agent = Probes::new(&config_for(m), AgentMetrics::new()).expect("agent");
    let reports = agent.collect_once().await;

    // Identity: configured labels plus what the status round learned.
    let id = reports[0].identity.clone().expect("identity");
    assert_eq!(id.cluster, "test");
    assert_eq!(id.member_name, m.name);
    assert_ne!(id.member_id, 0);
    assert_eq!(id.tags.get("suite").map(String::as_str), Some("agent"));
    assert!(reports.iter().all(|r| r.identity.as_ref() == Some(&id)));

    let Body::Status(st) = body(&reports, "status") else {
        unreachable!()
    };
    assert!(st.reachable, "{:?}", st.failures);
    assert!(st.failures.is_empty(), "{:?}", st.failures);
    assert_eq!(st.member_id, id.member_id);
    assert_ne!(st.leader_id, 0);
    assert!(st.raft_term >= 1 && st.raft_index >= st.raft_applied_index.min(1));
    assert!(st.db_size_bytes > 0 && st.db_size_in_use_bytes > 0);
    assert!(st.version.starts_with("3."), "{}", st.version);
    assert_eq!(st.members.len(), 3);
    assert!(st.alarms.is_empty());
    let lin = st.linearizable_read.as_ref().expect("linearizable");
    let ser = st.serializable_read.as_ref().expect("serializable");
    assert!(lin.failure.is_none() && lin.latency_seconds > 0.0);
    assert!(ser.failure.is_none() && ser.latency_seconds > 0.0);
    assert!(st.revision >= 1);

    let Body::Metrics(mx) = body(&reports, "metrics") else {
        unreachable!()
    };
    assert!(mx.failure.is_none(), "{:?}", mx.failure);
    assert_eq!(mx.parse_errors, 0);
    assert!(mx.payload_bytes > 10_000);
    let has_leader = find_sample(&mx.families, "etcd_server_has_leader", &[]).expect("has_leader");
    assert_eq!(has_leader.value, 1.0);
    // Histograms keep their buckets, ending at +Inf.
    let wal = mx
        .families
        .iter()
        .find(|f| f.name == "etcd_disk_wal_fsync_duration_seconds")
        .expect("wal fsync histogram");
    let buckets: Vec<_> = wal
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .collect();
    assert!(buckets.len() > 5);
    assert!(buckets
        .iter()
        .any(|s| s.labels.iter().any(|l| l.name == "le" && l.value == "+Inf")));

    let Body::Host(h) = body(&reports, "host") else {
        unreachable!()
    };
    let cpu = h.cpu.as_ref().expect("cpu");
    assert!(cpu.cores >= 1 && (0.0..=1.0).contains(&cpu.utilization));
    assert!(h.memory.as_ref().expect("memory").total_bytes > 0);
    let fs = h.filesystem.as_ref().expect("filesystem");
    assert!(fs.total_bytes > 0 && fs.inodes_total > 0);
    assert!(!h.interfaces.is_empty());
    let p = h.process.as_ref().expect("process");
    assert_eq!(
        p.discovery,
        ProcessDiscovery::ListenPort as i32,
        "{}",
        p.not_found_reason
    );
    assert_eq!(Some(p.pid as u32), m.pid());
    assert!(p.rss_bytes > 1_000_000 && p.open_fds > 0 && p.max_fds >= p.open_fds && p.threads > 1);

    let Body::Fsync(f) = body(&reports, "fsync") else {
        unreachable!()
    };
    assert!(f.failure.is_none(), "{:?}", f.failure);
    assert_eq!(f.writes, 5);
    assert_eq!(f.block_size, 2300);
    assert_eq!(f.path, m.data_dir.join(PROBE_FILE).display().to_string());
    assert!(
        f.p50_seconds > 0.0 && f.p50_seconds <= f.p99_seconds && f.p99_seconds <= f.max_seconds
    );
    assert!(
        !m.data_dir.join(PROBE_FILE).exists(),
        "probe file left behind"
    );

    let Body::PeerRtt(peers) = body(&reports, "peers") else {
        unreachable!()
    };
    assert_eq!(peers.peers.len(), 2, "{peers:?}");
    for p in &peers.peers {
        assert!(p.failure.is_none(), "{:?}", p.failure);
        assert!(p.rtt_seconds > 0.0);
        assert_ne!(p.member_id, id.member_id);
    }
}

/// Runs agents for every member in run mode and returns their reports as
/// they arrive.
struct Fleet {
    rx: mpsc::Receiver<Report>,
    shutdown: CancellationToken,
}

impl Fleet {
    fn start(cluster: &EtcdCluster) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        for m in cluster.members() {
            let mut cfg = config_for(m);
            cfg.fsync.interval = Duration::from_secs(1);
            cfg.host.interval = Duration::from_secs(1);
            let agent = Probes::new(&cfg, AgentMetrics::new()).expect("agent");
            agent.spawn(tx.clone(), shutdown.clone());
        }
        Self { rx, shutdown }
    }

    /// Collects reports for `d` and returns them.
    async fn gather(&mut self, d: Duration) -> Vec<Report> {
        let until = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(r)) = tokio::time::timeout_at(until.into(), self.rx.recv()).await {
            out.push(r);
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn status_of<'a>(
    reports: &'a [Report],
    member: &str,
) -> Vec<(&'a Report, &'a etcdmon_proto::v1::EtcdStatus)> {
    reports
        .iter()
        .filter(|r| r.identity.as_ref().is_some_and(|i| i.member_name == member))
        .filter_map(|r| match &r.body {
            Some(Body::Status(s)) => Some((r, s)),
            _ => None,
        })
        .collect()
}

fn kinds_of(s: &etcdmon_proto::v1::EtcdStatus) -> Vec<i32> {
    s.failures.iter().map(|f| f.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_is_refused_while_others_keep_reporting() {
    let mut cluster = EtcdCluster::start(3).expect("start etcd");
    let mut fleet = Fleet::start(&cluster);
    // Let every agent learn its member name.
    fleet.gather(Duration::from_secs(2)).await;

    cluster.kill(1).expect("kill");
    let victim = cluster.member(1).name.clone();
    let reports = fleet.gather(Duration::from_secs(4)).await;

    let dead = status_of(&reports, &victim);
    assert!(
        dead.len() >= 3,
        "victim agent kept reporting: {}",
        dead.len()
    );
    // After the kill every round says "refused", quickly.
    let (last_r, last) = dead.last().expect("a report");
    assert!(!last.reachable);
    assert!(
        kinds_of(last)
            .iter()
            .all(|k| *k == ErrorKind::Refused as i32),
        "{:?}",
        last.failures
    );
    assert!(
        last_r.duration_seconds < 0.8 + 0.3,
        "round took {}",
        last_r.duration_seconds
    );

    for other in [0, 2] {
        let name = &cluster.member(other).name;
        let alive = status_of(&reports, name);
        assert!(alive.len() >= 3, "{name} stopped reporting");
        let (_, s) = alive.last().expect("report");
        assert!(s.reachable, "{name}: {:?}", s.failures);
        assert_eq!(s.members.len(), 3);
    }
    // The dead member's other collectors kept going too.
    let host_reports = reports
        .iter()
        .filter(|r| r.identity.as_ref().is_some_and(|i| i.member_name == victim))
        .filter(|r| matches!(r.body, Some(Body::Host(_))))
        .count();
    assert!(host_reports >= 2, "host collector stalled: {host_reports}");

    // Restart: the member is reachable again.
    cluster.restart(1).expect("restart");
    let reports = fleet.gather(Duration::from_secs(3)).await;
    let back = status_of(&reports, &victim);
    assert!(
        back.last().expect("report").1.reachable,
        "{:?}",
        back.last().map(|b| &b.1.failures)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_times_out_within_the_probe_timeout() {
    let mut cluster = EtcdCluster::start(3).expect("start etcd");
    let mut fleet = Fleet::start(&cluster);
    fleet.gather(Duration::from_secs(2)).await;

    cluster.stop(2).expect("SIGSTOP");
    let victim = cluster.member(2).name.clone();
    let reports = fleet.gather(Duration::from_secs(5)).await;
    cluster.resume(2).expect("SIGCONT");

    let hung = status_of(&reports, &victim);
    assert!(
        hung.len() >= 3,
        "victim agent stalled: {} status reports",
        hung.len()
    );
    let (last_r, last) = hung.last().expect("a report");
    assert!(!last.reachable);
    assert!(
        kinds_of(last)
            .iter()
            .all(|k| *k == ErrorKind::Timeout as i32),
        "{:?}",
        last.failures
    );
    // Bounded by the 800 ms probe timeout (plus scheduling slack), not hung.
    assert!(
        last_r.duration_seconds < 0.8 + 0.4,
        "round took {}",
        last_r.duration_seconds
    );
    assert!(
        last_r.duration_seconds >= 0.75,
        "timeout fired early: {}",
        last_r.duration_seconds
    );

    for other in [0, 1] {
        let name = &cluster.member(other).name;
        let alive = status_of(&reports, name);
        assert!(alive.len() >= 3, "{name} stopped reporting");
        assert!(alive.last().expect("r").1.reachable);
    }
}

/// With a status interval far longer than the test, only the liveness watch can
/// produce a prompt status round: a killed member's exit and its return are both
/// reported long before the next tick (and with the watch disabled, neither is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_liveness_watch_reports_an_exit_and_a_return_without_waiting_for_the_tick() {
    let mut cluster = EtcdCluster::start(3).expect("start etcd");
    let (tx, mut rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let agent_for = |i: usize, watch: bool| {
        let mut cfg = config_for(cluster.member(i));
        cfg.status.interval = Duration::from_secs(300);
        cfg.status.liveness_watch = watch;
        cfg.metrics.enabled = false;
        cfg.host.enabled = false;
        cfg.fsync.enabled = false;
        cfg.peers.enabled = false;
        cfg.certs.enabled = false;
        Probes::new(&cfg, AgentMetrics::new()).expect("agent")
    };
    agent_for(1, true).spawn(tx.clone(), shutdown.clone());
    agent_for(2, false).spawn(tx.clone(), shutdown.clone());
    // First rounds (at start), then quiet: the next tick is 5 minutes away.
    let first = drain(&mut rx, Duration::from_secs(2)).await;
    let (watched, unwatched) = (
        cluster.member(1).name.clone(),
        cluster.member(2).name.clone(),
    );
    assert_eq!(status_of(&first, &watched).len(), 1, "one round at start");

    cluster.kill(1).expect("kill");
    cluster.kill(2).expect("kill");
    let reports = drain(&mut rx, Duration::from_secs(5)).await;
    let down = status_of(&reports, &watched);
    assert_eq!(down.len(), 1, "one extra round, woken by the broken watch");
    assert!(!down[0].1.reachable);
    assert!(
        status_of(&reports, &unwatched).is_empty(),
        "without the watch nothing is reported before the tick"
    );

    cluster.restart(1).expect("restart");
    let reports = drain(&mut rx, Duration::from_secs(8)).await;
    let back = status_of(&reports, &watched);
    assert!(
        back.last().is_some_and(|(_, s)| s.reachable),
        "the return is reported when the watch re-opens: {:?}",
        back.iter().map(|(_, s)| s.reachable).collect::<Vec<_>>()
    );
    shutdown.cancel();
}

/// Reports received within `d`.
async fn drain(rx: &mut mpsc::Receiver<Report>, d: Duration) -> Vec<Report> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(until.into(), rx.recv()).await {
        out.push(r);
    }
    out
}
