//! The `etcdmon-agent` binary as an operator uses it: `collect --once` in
//! both formats and its exit codes, config errors, and the `/metrics` and
//! `/healthz` endpoints with a clean SIGTERM.

use etcdmon_testkit::{free_port, http_get, EtcdCluster};
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_etcdmon-agent"));
    // Keep the test independent of the caller's environment.
    c.env_remove("ETCDMON_AGENT_CONFIG").env("RUST_LOG", "warn");
    c
}

#[test]
fn collect_once_json_against_a_real_member() {
    let cluster = EtcdCluster::start(1).expect("etcd");
    let m = cluster.member(0);
    let out = agent()
        .args([
            "--etcd-endpoint",
            &m.client_url,
            "--metrics-url",
            &m.metrics_url,
        ])
        .arg("--data-dir")
        .arg(&m.data_dir)
        .args([
            "--cluster",
            "cli-test",
            "collect",
            "--once",
            "--format",
            "json",
        ])
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let reports = v.as_array().expect("array");
    assert_eq!(
        reports.len(),
        6,
        "status, metrics, host, fsync, certs, peers"
    );
    assert_eq!(reports[0]["identity"]["cluster"], "cli-test");
    assert_eq!(reports[0]["body"]["status"]["reachable"], true);
    assert!(reports[1]["body"]["metrics"]["families"]
        .as_array()
        .is_some_and(|f| f.len() > 50));
    assert_eq!(
        reports[1]["body"]["metrics"]["families"][0]["type"],
        "gauge"
    );
    assert!(
        reports[2]["body"]["host"]["cpu"]["cores"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert!(
        reports[3]["body"]["fsync"]["p99_seconds"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        reports[0]["body"]["status"]["leader_id"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

/// The README's first look: `collect --once` with nothing but the endpoint finds
/// the member's data dir from the local etcd's own flags (fsync probe and
/// filesystem metrics run) and names the cluster as `etcdmon up` does.
#[test]
fn collect_once_with_only_the_endpoint_finds_the_data_dir_and_names_the_cluster_local() {
    let cluster = EtcdCluster::start(1).expect("etcd");
    let m = cluster.member(0);
    let out = agent()
        .args(["--etcd-endpoint", &m.client_url, "collect", "--once"])
        .output()
        .expect("run agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("cluster local "), "{stdout}");
    let probe = m.data_dir.join(".etcdmon-fsync-probe");
    let fsync = stdout
        .lines()
        .find(|l| l.starts_with("FSYNC"))
        .unwrap_or_else(|| panic!("no fsync probe ran:\n{stdout}"));
    assert!(
        fsync.contains(&probe.display().to_string()) && fsync.contains("p99"),
        "{fsync}"
    );
    assert!(!stdout.contains("etcd.data_dir is not set"), "{stdout}");
}

#[test]
fn collect_once_table_exits_non_zero_with_the_reason_when_unreachable() {
    let port = free_port();
    let out = agent()
        .args([
            "--etcd-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "collect",
            "--once",
        ])
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("UNREACHABLE") && stdout.contains("refused"),
        "{stdout}"
    );
    assert!(
        stderr.contains("unreachable") && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

#[test]
fn invalid_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[fsync]\nwrites = \"lots\"\n").expect("write");
    let out = agent()
        .arg("--config")
        .arg(&path)
        .args(["collect", "--once"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fsync.writes"), "{stderr}");

    std::fs::write(&path, "[etcd]\nendpoint = \"2379\"\n").expect("write");
    let out = agent()
        .arg("--config")
        .arg(&path)
        .args(["collect", "--once"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd.endpoint"));

    let out = agent()
        .args(["--collector", "127.0.0.1:7070", "run"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream.address") && stderr.contains("http:// or https://"),
        "{stderr}"
    );

    let out = agent()
        .env("ETCDMON_AGENT_STATUS__TIMEOUT", "never")
        .args(["collect", "--once"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`status.timeout`") && stderr.contains("ETCDMON_AGENT_"),
        "{stderr}"
    );
}

#[test]
fn continuous_collect_serves_metrics_and_healthz_and_stops_on_sigterm() {
    let cluster = EtcdCluster::start(1).expect("etcd");
    let m = cluster.member(0);
    let http = free_port();
    let mut child = agent()
        .args([
            "--etcd-endpoint",
            &m.client_url,
            "--metrics-url",
            &m.metrics_url,
        ])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["collect", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Drain stdout as a reader would, keeping the first line.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all.lines().next().map(str::to_string)
    });
    let url = |path: &str| format!("http://127.0.0.1:{http}{path}");

    // Wait for the first status round to be counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        if let Ok(r) = http_get(&url("/metrics"), Duration::from_secs(5)) {
            if r.status == 200
                && r.body
                    .contains("etcdmon_agent_collections_total{collector=\"status\"}")
            {
                break r.body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent /metrics never showed a status round"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("etcdmon_agent_collect_duration_seconds_bucket"));
    let health = http_get(&url("/healthz"), Duration::from_secs(5)).expect("healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains("\"healthy\":true"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let first_line = reader.join().expect("reader").expect("a JSON line");
    let first: serde_json::Value = serde_json::from_str(&first_line).expect("json line");
    assert!(first["identity"].is_object());
}

/// The shutdown policy every service shares: the first SIGTERM drains (here the
/// agent waits for acks from a collector that never answers, up to a long
/// `upstream.shutdown_grace`), a second one exits at once with status 130.
#[test]
fn a_second_sigterm_exits_at_once_while_draining() {
    let cluster = EtcdCluster::start(1).expect("etcd");
    let m = cluster.member(0);
    let dir = tempfile::tempdir().expect("tmp");
    let nobody = free_port();
    let mut child = agent()
        .args(["--etcd-endpoint", &m.client_url])
        .args(["--collector", &format!("http://127.0.0.1:{nobody}")])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .env("ETCDMON_AGENT_UPSTREAM__SPOOL_DIR", dir.path())
        .env("ETCDMON_AGENT_UPSTREAM__SHUTDOWN_GRACE", "60s")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Batches are spooled (nobody acknowledges them).
    std::thread::sleep(Duration::from_secs(3));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let term = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    term();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the first SIGTERM drains: it waits for acks"
    );
    term();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a second SIGTERM must exit at once"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
}
