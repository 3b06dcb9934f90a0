//! etcd-monitor with its default settings: nats-server, the collector on
//! SQLite, one agent per member and the alerter posting to the sink.
//!
//! Wired like `alerter/tests/system.rs` (`Stack::start`), except that
//! nothing is tuned: the agents get only their identity, the collector
//! address and a spool dir; the alerter config has only the settings it
//! requires (NATS, storage, listen address, one webhook receiver and the
//! root route).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use etcdmon_testkit::{free_port, http_get, ChildProcess, EtcdCluster, HttpSink, NatsServer};
use serde_json::Value as Json;

use crate::fault::Fault;
use crate::support::{blocking, ensure_running, sibling_bin, wait_http_ok};
use crate::trial::{Matcher, Probe, System};

/// The etcd-monitor cluster name the agents report.
const CLUSTER: &str = "bench";
/// Path of our webhook on the sink.
const HOOK_PATH: &str = "/ours";

/// The running stack; dropping it kills every process.
pub struct OurStack {
    // Processes first: they die before the temp dir goes.
    agents: Vec<ChildProcess>,
    alerter: ChildProcess,
    collector: ChildProcess,
    _nats: NatsServer,
    api: String,
    members: Vec<String>,
    probes: Vec<Probe>,
    _dir: tempfile::TempDir,
}

impl OurStack {
    /// Starts the stack for `cluster`, posting to `sink`; returns once the
    /// collector and the alerter answer `/healthz` and the agents are
    /// spawned (readiness of the agents is [`System::not_quiet`]'s job).
    pub async fn start(
        cluster: &EtcdCluster,
        sink: &HttpSink,
        timeout: Duration,
        fault: Fault,
    ) -> Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("etcdmon-bench-ours-")
            .tempdir()
            .context("create temp dir")?;
        // The logs of every process, to see where the time of a trial went.
        if std::env::var_os("ETCDMON_BENCH_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!(
                "[ours] keeping {} (ETCDMON_BENCH_KEEP)",
                dir.path().display()
            );
        }
        let d = dir.path();
        let nats = blocking(NatsServer::start).context("start nats-server")?;
        let db = format!("sqlite:{}", d.join("etcdmon.sqlite").display());
        let (grpc, http, alerter_http) = (free_port(), free_port(), free_port());

        let mut cmd = Command::new(sibling_bin("etcdmon-collector")?);
        cmd.args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--allow-plaintext", "--anonymous", "admin"])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--storage", &db])
            .args(["--nats", &nats.url()]);
        let collector = ChildProcess::spawn("etcdmon-collector", cmd, &d.join("collector.log"))?;
        let api = format!("http://127.0.0.1:{http}");
        wait_http_ok(&format!("{api}/healthz"), &collector, timeout).await?;

        let config = d.join("alerter.toml");
        std::fs::write(
            &config,
            alerter_toml(
                &nats.url(),
                &db,
                alerter_http,
                &sink.url(HOOK_PATH),
                fault == Fault::Kill,
            ),
        )
        .context("write alerter.toml")?;
        let mut cmd = Command::new(sibling_bin("etcdmon-alerter")?);
        cmd.arg("--config").arg(&config);
        let alerter = ChildProcess::spawn("etcdmon-alerter", cmd, &d.join("alerter.log"))?;
        wait_http_ok(
            &format!("http://127.0.0.1:{alerter_http}/healthz"),
            &alerter,
            timeout,
        )
        .await?;

        let agent = sibling_bin("etcdmon-agent")?;
        let collector_url = format!("http://127.0.0.1:{grpc}");
        let agents = cluster
            .members()
            .iter()
            .map(|m| spawn_agent(&agent, d, &m.name, &m.client_url, &collector_url))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            agents,
            alerter,
            collector,
            _nats: nats,
            api,
            members: cluster.members().iter().map(|m| m.name.clone()).collect(),
            probes: vec![Probe {
                rule: rule(fault).into(),
                path: HOOK_PATH.into(),
                matcher: if fault.per_member() {
                    Matcher::Member {
                        rule: rule(fault).into(),
                    }
                } else {
                    Matcher::Rule {
                        rule: rule(fault).into(),
                    }
                },
                fire_timeout: Duration::from_secs(30),
                resolve_timeout: Duration::from_secs(30),
            }],
            _dir: dir,
        })
    }
}

/// One agent with every setting at its default but identity, collector and
/// spool dir (host metrics and the fsync probe stay on, as shipped).
/// The rule that pages for `fault`.
fn rule(fault: Fault) -> &'static str {
    match fault {
        Fault::Kill | Fault::StopLeader | Fault::StopFollower => "member_unreachable",
        Fault::Isolate => "member_isolated",
        Fault::Nospace => "alarm_active",
    }
}

fn spawn_agent(
    bin: &Path,
    dir: &Path,
    name: &str,
    client_url: &str,
    collector_url: &str,
) -> Result<ChildProcess> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .args(["--etcd-endpoint", client_url])
        .args(["--cluster", CLUSTER])
        .args(["--member-name", name])
        .args(["--collector", collector_url])
        .args(["--http-listen", "127.0.0.1:0"])
        .env(
            "ETCDMON_AGENT_UPSTREAM__SPOOL_DIR",
            dir.join(format!("spool-{name}")),
        );
    ChildProcess::spawn(
        format!("etcdmon-agent {name}"),
        cmd,
        &dir.join(format!("agent-{name}.log")),
    )
}

/// The alerter's config: only what it requires.
pub fn alerter_toml(
    nats_url: &str,
    db: &str,
    http_port: u16,
    hook_url: &str,
    flap_detection: bool,
) -> String {
    let flapping = if flap_detection {
        ""
    } else {
        "[flapping]\nmax_transitions = 0\n"
    };
    format!(
        r#"[nats]
url = "{nats_url}"
[storage]
url = "{db}"
[http]
listen = "127.0.0.1:{http_port}"
[[receivers]]
name = "hook"
webhook = {{ url = "{hook_url}" }}
[route]
receiver = "hook"
{flapping}"#
    )
}

/// Why the collector's view of `members` is not "every agent connected
/// and every member reachable", from its `/api/v1/clusters` answer.
pub fn cluster_not_ready(body: &Json, members: &[String]) -> Option<String> {
    let Some(cluster) = body["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == CLUSTER))
    else {
        return Some(format!("the collector has no cluster {CLUSTER:?} yet"));
    };
    for name in members {
        let m = &cluster["members"][name.as_str()];
        if m.is_null() {
            return Some(format!("the collector has not heard of member {name} yet"));
        }
        if m["agent_connected"] != true || m["reachable"] != true {
            return Some(format!(
                "member {name}: agent_connected={}, reachable={}",
                m["agent_connected"], m["reachable"]
            ));
        }
    }
    None
}

impl System for OurStack {
    fn name(&self) -> &str {
        "ours"
    }

    fn probes(&self) -> &[Probe] {
        &self.probes
    }

    fn not_quiet(&self) -> Result<Option<String>> {
        let url = format!("{}/api/v1/clusters", self.api);
        let r = http_get(&url, Duration::from_secs(2)).with_context(|| format!("GET {url}"))?;
        if r.status != 200 {
            return Ok(Some(format!("GET {url}: {} {}", r.status, r.body)));
        }
        let body: Json = serde_json::from_str(&r.body)
            .with_context(|| format!("parse GET {url}: {}", r.body))?;
        Ok(cluster_not_ready(&body, &self.members))
    }

    fn ensure_running(&self) -> Result<()> {
        ensure_running(
            [&self.collector, &self.alerter]
                .into_iter()
                .chain(self.agents.iter()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerter_config_has_only_required_settings() {
        let toml = alerter_toml(
            "nats://127.0.0.1:4222",
            "sqlite:/t/db",
            9,
            "http://h/ours",
            true,
        );
        assert!(
            toml.contains("[[receivers]]\nname = \"hook\"\nwebhook = { url = \"http://h/ours\" }")
        );
        assert!(toml.ends_with("[route]\nreceiver = \"hook\"\n"));
        assert!(!toml.contains("refresh_interval") && !toml.contains("group_"));
    }

    #[test]
    fn readiness_needs_every_member_connected_and_reachable() {
        let members = vec!["m0".to_owned(), "m1".to_owned()];
        let body = |m1: &str| -> Json {
            serde_json::from_str(&format!(
                r#"{{"clusters":[{{"name":"bench","members":{{
                    "m0":{{"agent_connected":true,"reachable":true}},
                    "m1":{m1}}}}}]}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            cluster_not_ready(
                &body(r#"{"agent_connected":true,"reachable":true}"#),
                &members
            ),
            None
        );
        assert!(cluster_not_ready(
            &body(r#"{"agent_connected":true,"reachable":null}"#),
            &members
        )
        .unwrap()
        .contains("m1"));
        assert!(cluster_not_ready(&serde_json::json!({"clusters": []}), &members).is_some());
    }
}
