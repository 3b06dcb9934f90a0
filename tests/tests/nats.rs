//! End-to-end tests of the NATS harness: every test starts a real `nats-server -js`.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use etcdmon_testkit::{http_get, NatsCluster, NatsServer};

const TIMEOUT: Duration = Duration::from_secs(5);

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Creates a file-backed stream `name` on subjects `<name>.>` through the JetStream API.
fn create_stream(server: &NatsServer, name: &str) -> Result<String> {
    let config = format!(
        r#"{{"name":"{name}","subjects":["{name}.>"],"storage":"file","retention":"limits","max_consumers":-1,"max_msgs":-1,"max_bytes":-1,"max_age":0,"discard":"old","num_replicas":1}}"#
    );
    let reply = server.request(
        &format!("$JS.API.STREAM.CREATE.{name}"),
        config.as_bytes(),
        TIMEOUT,
    )?;
    ensure!(
        !reply.contains("\"error\""),
        "create stream {name}: {reply}"
    );
    Ok(reply)
}

#[test]
fn starts_with_jetstream_inside_its_temp_dir() -> Result<()> {
    let server = NatsServer::start()?;
    assert!(server.pid().is_some_and(pid_exists));
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert_ne!(server.port(), server.monitor_port());

    let varz = http_get(&format!("{}/varz", server.monitor_url()), TIMEOUT)?;
    assert_eq!(varz.status, 200);
    assert!(varz.body.contains("\"version\": \"2."), "{}", varz.body);
    assert!(varz.body.contains("\"jetstream\""), "{}", varz.body);

    let info = server.request("$JS.API.INFO", b"", TIMEOUT)?;
    assert!(info.contains("account_info_response"), "{info}");
    create_stream(&server, "HARNESS")?;
    assert!(server.store_dir().starts_with(server.dir()));
    assert!(server.store_dir().is_dir());
    Ok(())
}

#[test]
fn stream_and_messages_survive_stop_and_start_again() -> Result<()> {
    let mut server = NatsServer::start()?;
    let (port, monitor) = (server.port(), server.monitor_port());
    create_stream(&server, "KEEP")?;
    // A request to a stream subject is answered with a PubAck by JetStream.
    let ack = server.request("KEEP.a", b"hello", TIMEOUT)?;
    assert!(ack.contains("\"seq\":1"), "{ack}");

    let old_pid = server.pid().context("running server has a pid")?;
    server.stop()?;
    assert!(!server.is_running());
    assert!(!pid_exists(old_pid));
    assert!(server
        .request("$JS.API.INFO", b"", Duration::from_millis(300))
        .is_err());
    server.stop()?; // idempotent

    server.start_again()?;
    assert_eq!((server.port(), server.monitor_port()), (port, monitor));
    let info = server.request("$JS.API.STREAM.INFO.KEEP", b"", TIMEOUT)?;
    assert!(info.contains("\"messages\":1"), "{info}");
    Ok(())
}

#[test]
fn frozen_server_does_not_answer_until_thawed() -> Result<()> {
    let server = NatsServer::start()?;
    server.freeze()?;
    assert!(server
        .request("$JS.API.INFO", b"", Duration::from_millis(300))
        .is_err());
    server.thaw()?;
    server.request("$JS.API.INFO", b"", TIMEOUT)?;
    Ok(())
}

#[test]
fn drop_kills_the_server_and_removes_the_temp_dir() -> Result<()> {
    let server = NatsServer::start()?;
    let pid = server.pid().context("running server has a pid")?;
    let dir = server.dir().to_owned();
    drop(server);
    assert!(!pid_exists(pid), "nats-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
    Ok(())
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `secs`.
fn wait_some<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_three_server_cluster_keeps_a_replicated_stream_through_a_killed_leader() -> Result<()> {
    let mut nats = NatsCluster::start(3)?;
    assert_eq!(nats.url().split(',').count(), 3);
    // Created with one copy, as on a single server, then raised to three in place:
    // the upgrade path from one server to a cluster (docs/deploy.md).
    let config = |replicas: u8| {
        format!(r#"{{"name":"R3","subjects":["R3.>"],"storage":"file","num_replicas":{replicas}}}"#)
    };
    let created =
        nats.server(0)
            .request("$JS.API.STREAM.CREATE.R3", config(1).as_bytes(), TIMEOUT)?;
    ensure!(!created.contains("\"error\""), "{created}");
    let updated =
        nats.server(0)
            .request("$JS.API.STREAM.UPDATE.R3", config(3).as_bytes(), TIMEOUT)?;
    ensure!(!updated.contains("\"error\""), "{updated}");
    assert_eq!(nats.stream_info("R3")?["config"]["num_replicas"], 3);
    let leader = wait_some(20, || nats.stream_leader("R3").ok().flatten())
        .context("the stream never got a leader")?;
    let ack = nats.server(0).request("R3.a", b"one", TIMEOUT)?;
    assert!(ack.contains("\"seq\":1"), "{ack}");

    nats.kill(leader)?;
    let next = wait_some(30, || {
        nats.stream_leader("R3")
            .ok()
            .flatten()
            .filter(|&l| l != leader)
    })
    .context("no new stream leader after the old one was killed")?;
    assert_ne!(next, leader);
    let alive = (leader + 1) % nats.len();
    let ack = wait_some(10, || {
        nats.server(alive)
            .request("R3.a", b"two", TIMEOUT)
            .ok()
            .filter(|a| a.contains("\"seq\":2"))
    })
    .context("no PubAck from the two remaining servers")?;
    assert!(ack.contains("\"stream\":\"R3\""), "{ack}");

    // The killed server comes back as the same member and catches up.
    nats.start_again(leader)?;
    let caught_up = wait_some(30, || {
        let info = nats.stream_info("R3").ok()?;
        let replicas = info["cluster"]["replicas"].as_array()?.clone();
        (replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true)).then_some(info)
    })
    .context("the restarted server did not catch up")?;
    assert_eq!(caught_up["state"]["messages"], 2, "{caught_up}");
    Ok(())
}
