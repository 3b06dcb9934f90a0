//! End-to-end tests of the etcd harness: every test starts real `etcd` processes.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use etcdmon_testkit::{generate_tls, http_get, require_binary, EtcdCluster, EtcdVersion};

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn client_addr(cluster: &EtcdCluster, i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, cluster.member(i).client_port()))
}

/// A member that is not the leader, so faults on it do not force an election that could
/// make the follow-up requests race with it.
fn follower(cluster: &EtcdCluster) -> Result<usize> {
    let leader = cluster.leader_index()?.context("cluster has no leader")?;
    Ok((leader + 1) % cluster.members().len())
}

/// Runs the real etcdctl binary with explicit flags (not the harness's helper), the way a
/// person would.
fn etcdctl(args: &[String]) -> Result<String> {
    let output = Command::new(require_binary("etcdctl")?)
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .context("run etcdctl")?;
    ensure!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn three_members_start_healthy_with_leader_and_serve_etcdctl() -> Result<()> {
    let cluster = EtcdCluster::start(3)?;
    assert_eq!(cluster.members().len(), 3);
    for (i, member) in cluster.members().iter().enumerate() {
        assert_eq!(member.name, format!("m{i}"));
        assert!(member.pid().is_some_and(pid_exists));
        assert!(member.data_dir.starts_with(cluster.dir()));
        assert!(member.log_path.starts_with(cluster.dir()));
        assert_eq!(member.metrics_url, format!("{}/metrics", member.client_url));
        assert!(member.check_health(Duration::from_secs(2))?);
        cluster.wait_healthy(i, Duration::from_secs(5))?;
    }
    assert!(cluster.leader_index()?.is_some());

    let endpoints = format!("--endpoints={}", cluster.client_urls().join(","));
    let put = etcdctl(&[
        endpoints.clone(),
        "put".into(),
        "greeting".into(),
        "hello".into(),
    ])?;
    assert_eq!(put, "OK");
    let get = etcdctl(&[
        endpoints,
        "get".into(),
        "greeting".into(),
        "--print-value-only".into(),
    ])?;
    assert_eq!(get, "hello");
    Ok(())
}

#[test]
fn killed_member_refuses_connections_and_restarts() -> Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    let victim = follower(&cluster)?;
    let old_pid = cluster.member(victim).pid().context("victim pid")?;

    cluster.kill(victim)?;
    assert_eq!(cluster.member(victim).pid(), None);
    assert!(!pid_exists(old_pid));
    let err = TcpStream::connect_timeout(&client_addr(&cluster, victim), Duration::from_secs(1))
        .expect_err("a killed member's client port must refuse connections");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // The remaining two members are a quorum.
    assert_eq!(cluster.live_client_urls().len(), 2);
    assert_eq!(
        cluster
            .etcdctl(&["put", "after-kill", "still-here"])?
            .trim(),
        "OK"
    );

    cluster.restart(victim)?;
    assert!(cluster
        .member(victim)
        .pid()
        .is_some_and(|pid| pid != old_pid));
    assert!(cluster
        .member(victim)
        .check_health(Duration::from_secs(2))?);
    // The restarted member rejoined with its old data and caught up on the write it missed.
    let value = cluster.etcdctl_on(victim, &["get", "after-kill", "--print-value-only"])?;
    assert_eq!(value.trim(), "still-here");
    Ok(())
}

#[test]
fn fully_killed_cluster_restarts_member_by_member() -> Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    cluster.etcdctl(&["put", "durable", "1"])?;
    for i in 0..3 {
        cluster.kill(i)?;
    }
    assert!(cluster.live_client_urls().is_empty());
    // The first member alone has no quorum: restart only waits for its port.
    cluster.restart(0)?;
    // With the second one a quorum exists, so this restart waits for health.
    cluster.restart(1)?;
    cluster.wait_healthy(0, Duration::from_secs(10))?;
    cluster.restart(2)?;
    assert_eq!(
        cluster
            .etcdctl(&["get", "durable", "--print-value-only"])?
            .trim(),
        "1"
    );
    Ok(())
}

#[test]
fn stopped_member_accepts_tcp_but_does_not_answer_until_resumed() -> Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    let victim = follower(&cluster)?;

    cluster.stop(victim)?;
    assert!(cluster.member(victim).is_stopped());
    assert!(cluster.member(victim).pid().is_some());
    // The kernel completes the handshake into the listen backlog of the frozen process...
    TcpStream::connect_timeout(&client_addr(&cluster, victim), Duration::from_secs(1))
        .context("connect to a stopped member")?;
    // ...but no HTTP answer comes.
    let health_url = cluster.member(victim).health_url().to_owned();
    let err = http_get(&health_url, Duration::from_millis(300))
        .expect_err("a stopped member must not answer /health");
    assert!(
        format!("{err:#}").contains("no complete response"),
        "{err:#}"
    );
    assert!(cluster
        .wait_healthy(victim, Duration::from_secs(1))
        .is_err());

    cluster.resume(victim)?;
    assert!(!cluster.member(victim).is_stopped());
    cluster.wait_healthy(victim, Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn separate_metrics_listener_serves_metrics() -> Result<()> {
    let cluster = EtcdCluster::builder()
        .members(1)
        .separate_metrics_listener(true)
        .start()?;
    let member = cluster.member(0);
    assert!(member.metrics_url.starts_with("http://127.0.0.1:"));
    assert!(!member.metrics_url.starts_with(&member.client_url));
    let response = http_get(&member.metrics_url, Duration::from_secs(2))?;
    assert_eq!(response.status, 200);
    assert!(response.body.contains("etcd_server_has_leader 1"));
    assert_eq!(cluster.leader_index()?, Some(0));
    Ok(())
}

#[test]
fn tls_cluster_serves_etcdctl_with_client_certificates() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let tls = generate_tls(certs.path(), 7)?;
    let cluster = EtcdCluster::builder().members(3).client_tls(&tls).start()?;
    assert_eq!(cluster.tls(), Some(&tls));
    for member in cluster.members() {
        assert!(member.client_url.starts_with("https://127.0.0.1:"));
        // Health and metrics are probed on the separate plain-HTTP listener.
        assert!(member.metrics_url.starts_with("http://127.0.0.1:"));
        assert!(member.health_url().starts_with("http://127.0.0.1:"));
    }

    let tls_flags = [
        format!("--cacert={}", tls.ca_cert.display()),
        format!("--cert={}", tls.client_cert.display()),
        format!("--key={}", tls.client_key.display()),
    ];
    let by_ip = format!("--endpoints={}", cluster.client_urls().join(","));
    let mut put = vec![by_ip];
    put.extend(tls_flags.iter().cloned());
    put.extend(strings(&["put", "secure", "yes"]));
    assert_eq!(etcdctl(&put)?, "OK");

    // The DNS SAN works too.
    let by_name = format!(
        "--endpoints=https://localhost:{}",
        cluster.member(1).client_port()
    );
    let mut get = vec![by_name.clone()];
    get.extend(tls_flags.iter().cloned());
    get.extend(strings(&["get", "secure", "--print-value-only"]));
    assert_eq!(etcdctl(&get)?, "yes");

    // Without a client certificate the server refuses (--client-cert-auth).
    let no_client_cert = vec![
        by_name,
        tls_flags[0].clone(),
        "--dial-timeout=1s".into(),
        "--command-timeout=1s".into(),
        "get".into(),
        "secure".into(),
    ];
    assert!(etcdctl(&no_client_cert).is_err());
    Ok(())
}

#[test]
fn startup_failure_reports_member_log() {
    let err = EtcdCluster::builder()
        .members(1)
        .arg("--auto-compaction-mode=no-such-mode")
        .start()
        .expect_err("etcd must reject an unknown auto-compaction mode");
    let message = format!("{err:#}");
    assert!(
        message.contains("etcd member m0 exited during startup"),
        "{message}"
    );
    // The tail of the member's log explains why.
    assert!(message.contains("no-such-mode"), "{message}");
}

fn assert_cleaned_up(pids: &[u32], dir: &Path) {
    for &pid in pids {
        assert!(!pid_exists(pid), "etcd pid {pid} survived the cluster");
    }
    assert!(!dir.exists(), "{} survived the cluster", dir.display());
}

#[test]
fn drop_kills_all_members_and_removes_dir() -> Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    cluster.stop(1)?; // a frozen member must be cleaned up as well
    let pids: Vec<u32> = cluster.members().iter().filter_map(|m| m.pid()).collect();
    assert_eq!(pids.len(), 3);
    let dir = cluster.dir().to_owned();
    assert!(dir.is_dir());
    drop(cluster);
    assert_cleaned_up(&pids, &dir);
    Ok(())
}

#[test]
fn panicking_test_still_cleans_up() {
    let (tx, rx) = mpsc::channel::<(Vec<u32>, PathBuf)>();
    let handle = std::thread::spawn(move || {
        let mut cluster = EtcdCluster::start(1).expect("start cluster");
        cluster.stop(0).expect("stop member");
        let pids = cluster.members().iter().filter_map(|m| m.pid()).collect();
        tx.send((pids, cluster.dir().to_owned()))
            .expect("send pids");
        panic!("deliberate panic to check cleanup during unwinding");
    });
    assert!(handle.join().is_err(), "the thread should have panicked");
    let (pids, dir) = rx.recv().expect("pids from the panicking thread");
    assert_eq!(pids.len(), 1);
    assert_cleaned_up(&pids, &dir);
}

#[test]
fn both_etcd_releases_start_and_say_which_they_are() -> Result<()> {
    for version in EtcdVersion::ALL {
        let cluster = EtcdCluster::builder().members(1).version(version).start()?;
        assert_eq!(cluster.version(), version);
        let out = cluster.etcdctl(&["version"])?;
        assert!(
            out.contains(&format!("etcdctl version: {}.", version.as_str())),
            "{version:?}: {out}"
        );
        let status = cluster.etcdctl(&["endpoint", "status", "-w", "json"])?;
        assert!(
            status.contains(&format!("\"version\":\"{}.", version.as_str())),
            "{version:?}: {status}"
        );
    }
    Ok(())
}

#[test]
fn a_learner_joins_a_3_5_cluster_and_is_promoted() -> Result<()> {
    let mut cluster = EtcdCluster::builder()
        .members(3)
        .version(EtcdVersion::V3_5)
        .start()?;
    let i = cluster.add_member(true)?;
    let list = cluster.etcdctl(&["member", "list"])?;
    let line = list
        .lines()
        .find(|l| l.contains(&format!(", m{i}, ")))
        .unwrap_or_default();
    assert!(line.ends_with("true"), "a learner: {list}");
    cluster.promote(i)?;
    let list = cluster.etcdctl(&["member", "list"])?;
    assert!(
        list.lines().all(|l| l.ends_with("false")),
        "all voters: {list}"
    );
    cluster.wait_healthy(i, Duration::from_secs(30))?;
    Ok(())
}
