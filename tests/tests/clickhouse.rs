//! End-to-end tests of the ClickHouse harness: every test starts a real `clickhouse-server`.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use etcdmon_testkit::ClickHouseServer;

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn starts_inside_its_temp_dir_and_answers_version() -> Result<()> {
    let server = ClickHouseServer::start()?;
    assert!(server.pid().is_some_and(pid_exists));
    assert_eq!(
        server.http_url(),
        format!("http://127.0.0.1:{}", server.http_port())
    );
    assert_ne!(server.http_port(), server.tcp_port());

    let version = server.query("SELECT version()")?;
    assert!(
        version.trim().starts_with("18.16."),
        "expected Debian's 18.16, got {version:?}"
    );
    // Everything the server writes stays in the temp dir.
    assert!(server.data_dir().starts_with(server.dir()));
    assert!(server.data_dir().join("metadata").is_dir());
    assert!(server.dir().join("logs/clickhouse-server.log").is_file());
    // The config pins UTC (18.16 reports it by its alias `Etc/UTC` on Debian, and prints
    // the epoch itself as the zero date, hence a day later).
    assert_eq!(
        server.query("SELECT toString(toDateTime(86400 + 3600))")?,
        "1970-01-02 01:00:00\n"
    );

    let err = server
        .query("SELECT * FROM no_such_table")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_table") && err.contains("Code: 60"),
        "{err}"
    );
    Ok(())
}

#[test]
fn create_insert_select_round_trip_over_http_and_native_client() -> Result<()> {
    let server = ClickHouseServer::start()?;
    server.query("CREATE TABLE kv (k String, v Int64) ENGINE = MergeTree() ORDER BY k")?;
    server.query("INSERT INTO kv VALUES ('a', 1), ('b', 2), ('c', 3)")?;
    assert_eq!(
        server.query("SELECT k, v FROM kv ORDER BY k")?,
        "a\t1\nb\t2\nc\t3\n"
    );

    let output = server
        .client_command()
        .args(["--query", "SELECT sum(v) FROM kv"])
        .output()
        .context("run clickhouse-client")?;
    ensure!(
        output.status.success(),
        "clickhouse-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "6\n");
    Ok(())
}

#[test]
fn stop_and_start_again_keep_data_and_ports() -> Result<()> {
    let mut server = ClickHouseServer::start()?;
    let (http, tcp) = (server.http_port(), server.tcp_port());
    server.query("CREATE TABLE t (x UInt32) ENGINE = MergeTree() ORDER BY x")?;
    server.query("INSERT INTO t SELECT number FROM numbers(1000)")?;

    let old_pid = server.pid().context("running server has a pid")?;
    server.stop()?;
    assert!(!server.is_running());
    assert!(!pid_exists(old_pid));
    assert!(
        server.query("SELECT 1").is_err(),
        "a stopped server answered"
    );
    server.stop()?; // idempotent

    server.start_again()?;
    assert_eq!((server.http_port(), server.tcp_port()), (http, tcp));
    assert_eq!(
        server.query("SELECT count(), sum(x) FROM t")?,
        "1000\t499500\n"
    );
    Ok(())
}

#[test]
fn drop_kills_the_server_and_removes_the_temp_dir() -> Result<()> {
    let server = ClickHouseServer::start()?;
    let pid = server.pid().context("running server has a pid")?;
    let dir = server.dir().to_owned();
    drop(server);
    assert!(!pid_exists(pid), "clickhouse-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
    Ok(())
}

#[test]
fn frozen_server_does_not_answer_until_thawed() -> Result<()> {
    let mut server = ClickHouseServer::start()?;
    server.freeze()?;
    let err = etcdmon_testkit::http_get(
        &format!("{}/ping", server.http_url()),
        std::time::Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no complete response"),
        "{err:#}"
    );
    server.thaw()?;
    assert_eq!(server.query("SELECT 1")?, "1\n");
    // Stopping a frozen server still shuts it down gracefully.
    server.freeze()?;
    server.stop()?;
    assert!(!server.is_running());
    Ok(())
}
