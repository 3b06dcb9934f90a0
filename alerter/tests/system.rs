//! The whole alerting path with real processes: a 3-member etcd, one agent process per
//! member, the collector and the alerter binaries, nats-server with JetStream, an SMTP
//! sink (aiosmtpd) and a local HTTP server standing in for the webhook and PagerDuty.
//!
//! What is proven: a killed member reaches every receiver exactly once, its recovery
//! exactly once, even when the alerter and the collector are both killed and restarted
//! mid-incident; a frozen leader fires and resolves; a silence created through the API
//! mutes, and an acknowledgement through the API reaches PagerDuty as `acknowledge`;
//! the collectors' heartbeats keep a dead-man's switch pinged, and when the collector
//! dies the switch stops hearing from us and the alerter pages on its own; on three
//! clustered nats-servers, killing the one leading the alert stream mid-incident
//! loses and duplicates no notification.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use etcdmon_testkit::smtp::{ReceivedMail, SmtpSink};
use etcdmon_testkit::{
    free_port, http_delete, http_get, http_post_json, workspace_bin, ChildProcess, EtcdCluster,
    HttpSink, NatsCluster, NatsServer, SinkRequest,
};
use serde_json::Value as Json;

/// The NATS a scenario runs on.
enum Nats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    fn url(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.url(),
        }
    }

    /// Replicas of the alert stream: one per server, up to 3.
    fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(cluster) => cluster.len().min(3),
        }
    }
}

/// Everything one scenario runs.
struct Stack {
    etcd: EtcdCluster,
    nats: Nats,
    nats_url: String,
    dir: tempfile::TempDir,
    sink: HttpSink,
    smtp: SmtpSink,
    collector_bin: PathBuf,
    collector: Option<ChildProcess>,
    collector_http: u16,
    collector_grpc: u16,
    agents: Vec<ChildProcess>,
    alerter: Option<ChildProcess>,
    alerter_http: u16,
    /// Appended to the alerter's config.
    alerter_extra: String,
    /// Set in the collector's environment.
    collector_env: Vec<(String, String)>,
}

impl Stack {
    fn start(cluster: &str) -> Self {
        Self::start_with(cluster, "", &[])
    }

    fn start_with(cluster: &str, alerter_extra: &str, collector_env: &[(&str, &str)]) -> Self {
        let nats = Nats::Single(Box::new(NatsServer::start().expect("nats")));
        Self::start_on(cluster, nats, alerter_extra, collector_env)
    }

    fn start_on(
        cluster: &str,
        nats: Nats,
        alerter_extra: &str,
        collector_env: &[(&str, &str)],
    ) -> Self {
        let etcd = EtcdCluster::start(3).expect("etcd");
        let nats_url = nats.url();
        let replicas = nats.replicas().to_string();
        let collector_env = collector_env.iter().copied().chain([(
            "ETCDMON_COLLECTOR_ALERTING__JETSTREAM__REPLICAS",
            replicas.as_str(),
        )]);
        let mut s = Self {
            etcd,
            nats,
            nats_url,
            dir: tempfile::tempdir().expect("tmp"),
            sink: HttpSink::start().expect("http sink"),
            smtp: SmtpSink::start().expect("smtp sink"),
            collector_bin: workspace_bin("etcdmon-collector", "etcdmon-collector")
                .expect("collector binary"),
            collector: None,
            collector_http: free_port(),
            collector_grpc: free_port(),
            agents: Vec::new(),
            alerter: None,
            alerter_http: free_port(),
            alerter_extra: alerter_extra.to_owned(),
            collector_env: collector_env
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        std::fs::write(s.dir.path().join("alerter.toml"), s.alerter_toml()).expect("config");
        s.spawn_collector();
        s.spawn_alerter();
        let agent = workspace_bin("etcdmon-agent", "etcdmon-agent").expect("agent binary");
        for i in 0..3 {
            let (name, url) = (
                s.etcd.member(i).name.clone(),
                s.etcd.member(i).client_url.clone(),
            );
            let mut cmd = Command::new(&agent);
            cmd.arg("run")
                .args(["--etcd-endpoint", &url])
                .args(["--cluster", cluster])
                .args(["--member-name", &name])
                .args(["--collector", &s.collector_url()])
                .args(["--http-listen", "127.0.0.1:0"])
                // The section's name before it became `upstream`, on purpose beside the
                // `--collector` flag (which sets `upstream.address`): old environments
                // must keep working.
                .env(
                    "ETCDMON_AGENT_COLLECTOR__SPOOL_DIR",
                    s.dir.path().join(format!("spool-{name}")),
                )
                // Host metrics and the probe are not what these tests are about.
                .env("ETCDMON_AGENT_HOST__ENABLED", "false")
                .env("ETCDMON_AGENT_FSYNC__ENABLED", "false")
                .env("RUST_LOG", "info");
            let log = s.dir.path().join(format!("agent-{name}.log"));
            s.agents
                .push(ChildProcess::spawn(format!("agent {name}"), cmd, &log).expect("agent"));
        }
        s
    }

    fn db(&self) -> String {
        format!(
            "sqlite:{}",
            self.dir.path().join("etcdmon.sqlite").display()
        )
    }

    fn collector_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.collector_grpc)
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.collector_http)
    }

    fn alerter_toml(&self) -> String {
        let route = |receiver: &str| {
            format!(
                "[[route.routes]]\nmatchers = ['rule=~\".+\"']\nreceiver = \"{receiver}\"\ncontinue = true\n"
            )
        };
        format!(
            r#"external_url = "{api}"
refresh_interval = "200ms"
[nats]
url = "{nats}"
replicas = {replicas}
[storage]
url = "{db}"
[http]
listen = "127.0.0.1:{http}"
[delivery]
initial_backoff = "100ms"
[[receivers]]
name = "hook"
webhook = {{ url = "{hook}" }}
[[receivers]]
name = "pd"
pagerduty = {{ url = "{pd}", routing_key = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12" }}
[[receivers]]
name = "mail"
email = {{ host = "127.0.0.1", port = {smtp}, tls = "none", from = "etcdmon@example.com", to = ["oncall@example.com"] }}
[route]
receiver = "hook"
{routes}
{extra}"#,
            api = self.api(""),
            nats = self.nats_url,
            replicas = self.nats.replicas(),
            db = self.db(),
            http = self.alerter_http,
            hook = self.sink.url("/hook"),
            pd = self.sink.url("/pd/v2/enqueue"),
            smtp = self.smtp.port(),
            routes = [route("hook"), route("pd"), route("mail")].concat(),
            extra = self.alerter_extra,
        )
    }

    fn spawn_collector(&mut self) {
        let mut cmd = Command::new(&self.collector_bin);
        cmd.args([
            "--grpc-listen",
            &format!("127.0.0.1:{}", self.collector_grpc),
        ])
        .args([
            "--http-listen",
            &format!("127.0.0.1:{}", self.collector_http),
        ])
        .args(["--storage", &self.db()])
        .args(["--nats", &self.nats_url])
        .args(["--allow-plaintext", "--anonymous", "admin"])
        .envs(self.collector_env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info");
        let log = self.dir.path().join("collector.log");
        self.collector = Some(ChildProcess::spawn("collector", cmd, &log).expect("collector"));
        wait_healthy(
            &self.api("/healthz"),
            self.collector.as_ref().expect("spawned"),
        );
    }

    fn spawn_alerter(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdmon-alerter"));
        cmd.arg("--config")
            .arg(self.dir.path().join("alerter.toml"))
            .env("RUST_LOG", "info");
        let log = self.dir.path().join("alerter.log");
        self.alerter = Some(ChildProcess::spawn("alerter", cmd, &log).expect("alerter"));
        let url = format!("http://127.0.0.1:{}/healthz", self.alerter_http);
        wait_healthy(&url, self.alerter.as_ref().expect("spawned"));
    }

    fn logs(&self) -> String {
        let tail =
            |p: &Option<ChildProcess>| p.as_ref().map(|c| c.log_tail(40)).unwrap_or_default();
        format!(
            "--- collector\n{}\n--- alerter\n{}",
            tail(&self.collector),
            tail(&self.alerter)
        )
    }

    fn post(&self, path: &str, body: &str) -> (u16, Json) {
        let r = http_post_json(&self.api(path), body, Duration::from_secs(5)).expect("post");
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Json::Null),
        )
    }

    fn get(&self, path: &str) -> Json {
        let r = http_get(&self.api(path), Duration::from_secs(5)).expect("get");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).expect("json")
    }
}

fn wait_healthy(url: &str, process: &ChildProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(http_get(url, Duration::from_secs(2)), Ok(r) if r.status == 200) {
            return;
        }
        assert!(
            process.is_running(),
            "{} exited: {}",
            process.name(),
            process.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "{} not healthy: {}",
            process.name(),
            process.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(status, alert)` of every alert of `rule` on `member` in webhook bodies, in order.
fn webhook_alerts(requests: &[SinkRequest], rule: &str, member: &str) -> Vec<String> {
    requests
        .iter()
        .flat_map(|r| {
            let body = r.json();
            body["alerts"].as_array().cloned().unwrap_or_default()
        })
        .filter(|a| a["labels"]["rule"] == rule && a["labels"]["member"] == member)
        .map(|a| a["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// PagerDuty event actions of the group of `rule`, from its first trigger that
/// mentions `member` on (a group holds every member's alert of one rule).
fn pagerduty_actions(requests: &[SinkRequest], rule: &str, member: &str) -> Vec<String> {
    let events: Vec<Json> = requests.iter().map(SinkRequest::json).collect();
    let Some(first) = events.iter().position(|e| {
        let details = e["payload"]["custom_details"].to_string();
        e["event_action"] == "trigger" && details.contains(rule) && details.contains(member)
    }) else {
        return Vec::new();
    };
    let key = events[first]["dedup_key"].clone();
    events[first..]
        .iter()
        .filter(|e| e["dedup_key"] == key)
        .map(|e| e["event_action"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// "firing"/"resolved" of every email about `rule` on `member`.
fn email_states(mails: &[ReceivedMail], rule: &str, member: &str) -> Vec<String> {
    mails
        .iter()
        .filter(|m| {
            let text = m.part("text/plain").unwrap_or(&m.raw);
            text.contains(&format!("rule={rule}")) && text.contains(&format!("member={member}"))
        })
        .map(|m| {
            let subject = m.header("Subject").unwrap_or("").to_ascii_uppercase();
            if subject.starts_with("[RESOLVED") {
                "resolved"
            } else {
                "firing"
            }
            .to_owned()
        })
        .collect()
}

/// Waits for `member_unreachable` of `victim` to resolve on every receiver, then
/// (after 3 s more for late repeats or duplicates) asserts that each was told
/// exactly one firing and one resolution.
fn assert_told_once(s: &Stack, victim: &str) {
    let resolved = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", victim).contains(&"resolved".to_owned())
    };
    s.sink.wait_for("/hook", Duration::from_secs(60), resolved);
    let pd_done = |r: &[SinkRequest]| {
        pagerduty_actions(r, "member_unreachable", victim).contains(&"resolve".to_owned())
    };
    s.sink.wait_for("/pd", Duration::from_secs(10), pd_done);
    let mails = s
        .smtp
        .wait_for_messages(2, Duration::from_secs(10))
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(3));
    let hook = s.sink.requests("/hook");
    let pd = s.sink.requests("/pd");
    let mails = s.smtp.messages().unwrap_or(mails);
    assert_eq!(
        webhook_alerts(&hook, "member_unreachable", victim),
        ["firing", "resolved"],
        "webhook: exactly one firing and one resolved\n{}",
        s.logs()
    );
    assert_eq!(
        pagerduty_actions(&pd, "member_unreachable", victim),
        ["trigger", "resolve"],
        "pagerduty\n{}",
        s.logs()
    );
    assert_eq!(
        email_states(&mails, "member_unreachable", victim),
        ["firing", "resolved"],
        "email\n{}",
        s.logs()
    );
}

#[test]
fn a_killed_member_reaches_every_receiver_once_across_alerter_and_collector_restarts() {
    let mut s = Stack::start("sys-kill");
    std::thread::sleep(Duration::from_secs(3));
    let early: Vec<String> = s
        .sink
        .requests("/")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        early.is_empty(),
        "healthy cluster: no notification: {early:?}\n{}",
        s.logs()
    );

    let victim = s.etcd.member(1).name.clone();
    s.etcd.kill(1).expect("kill -9");
    let hook = s.sink.wait_for("/hook", Duration::from_secs(20), |r| {
        webhook_alerts(r, "member_unreachable", &victim).contains(&"firing".to_owned())
    });
    assert_eq!(
        webhook_alerts(&hook, "member_unreachable", &victim),
        ["firing"],
        "{}",
        s.logs()
    );
    // Webhook body: Alertmanager version 4.
    let body = hook.last().expect("request").json();
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "hook");

    // Every receiver has it (a delivery is recorded right after the receiver answers;
    // a crash inside that window of one attempt would send it again: at least once).
    let pd_fired =
        |r: &[SinkRequest]| !pagerduty_actions(r, "member_unreachable", &victim).is_empty();
    assert!(pd_fired(&s.sink.wait_for(
        "/pd",
        Duration::from_secs(10),
        pd_fired
    )));
    let deadline = Instant::now() + Duration::from_secs(10);
    while email_states(
        &s.smtp.messages().unwrap_or_default(),
        "member_unreachable",
        &victim,
    )
    .is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mails = s.smtp.messages().unwrap_or_default();
    assert_eq!(
        email_states(&mails, "member_unreachable", &victim),
        ["firing"]
    );
    std::thread::sleep(Duration::from_millis(500));

    // Mid-incident, kill -9 both the alerter and the collector, and start them again.
    s.alerter
        .take()
        .expect("alerter")
        .kill()
        .expect("kill alerter");
    s.collector
        .take()
        .expect("collector")
        .kill()
        .expect("kill collector");
    s.spawn_collector();
    s.spawn_alerter();
    // Agents reconnect; the rules take over the firing alert; nothing is re-sent.
    std::thread::sleep(Duration::from_secs(6));

    s.etcd.restart(1).expect("restart member");
    assert_told_once(&s, &victim);

    // The API shows the alert resolved, with its transitions and successful deliveries.
    let current = s.get("/api/v1/alerts?state=all");
    let alert = current["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| {
            a["labels"]["rule"] == "member_unreachable" && a["labels"]["member"] == victim.as_str()
        })
        .cloned()
        .expect("alert listed");
    assert_eq!(alert["state"], "resolved");
    let fp = alert["fingerprint"].as_str().expect("fingerprint");
    let history = s.get(&format!("/api/v1/alerts/history?fingerprint={fp}"));
    let states: Vec<&str> = history["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["resolved", "firing"], "newest first: {history}");
    let ok: usize = history["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["outcome"] == "ok")
        .count();
    assert_eq!(ok, 6, "3 receivers x (firing, resolved): {history}");
}

#[test]
fn a_frozen_leader_fires_and_resolves() {
    let mut s = Stack::start("sys-stop");
    std::thread::sleep(Duration::from_secs(3));
    let clusters = s.get("/api/v1/clusters");
    let leader_name = clusters["clusters"][0]["members"]
        .as_object()
        .expect("members")
        .values()
        .find(|m| m["is_leader"] == true)
        .and_then(|m| m["name"].as_str())
        .unwrap_or_else(|| panic!("a leader in {clusters}"))
        .to_owned();
    let leader = (0..3)
        .find(|&i| s.etcd.member(i).name == leader_name)
        .expect("leader is a member");
    let name = s.etcd.member(leader).name.clone();
    s.etcd.stop(leader).expect("SIGSTOP leader");
    let fired = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", &name).contains(&"firing".to_owned())
    };
    let hook = s.sink.wait_for("/hook", Duration::from_secs(20), fired);
    assert!(fired(&hook), "the frozen leader is reported\n{}", s.logs());
    s.etcd.resume(leader).expect("SIGCONT");
    let resolved = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", &name).contains(&"resolved".to_owned())
    };
    let hook = s.sink.wait_for("/hook", Duration::from_secs(30), resolved);
    assert_eq!(
        webhook_alerts(&hook, "member_unreachable", &name),
        ["firing", "resolved"],
        "{}",
        s.logs()
    );
}

#[test]
fn a_silence_from_the_api_mutes_and_an_acknowledgement_reaches_pagerduty() {
    let mut s = Stack::start("sys-api");
    std::thread::sleep(Duration::from_secs(3));
    let (m1, m2) = (s.etcd.member(1).name.clone(), s.etcd.member(2).name.clone());

    // Silence m2 for an hour; bad requests are refused with a reason.
    let (code, err) = s.post(
        "/api/v1/silences",
        r#"{"matchers": ["member=~\"(\""], "duration": "1h", "created_by": "t"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("regular expression"),
        "{err}"
    );
    let (code, silence) = s.post(
        "/api/v1/silences",
        &format!(r#"{{"matchers": ["member=\"{m2}\""], "duration": "1h", "created_by": "test", "comment": "maintenance"}}"#),
    );
    assert_eq!(code, 201, "{silence}");
    assert_eq!(silence["state"], "active");
    let id = silence["id"].as_str().expect("id").to_owned();
    std::thread::sleep(Duration::from_millis(800)); // the alerter re-reads silences

    s.etcd.kill(2).expect("kill m2");
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        webhook_alerts(&s.sink.requests("/hook"), "member_unreachable", &m2).is_empty(),
        "silenced\n{}",
        s.logs()
    );
    let listed = s.get("/api/v1/alerts");
    let silenced = listed["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| {
            a["labels"]["member"] == m2.as_str() && a["labels"]["rule"] == "member_unreachable"
        })
        .expect("the silenced alert is still listed")
        .clone();
    assert_eq!(silenced["silenced_by"], serde_json::json!([id]));

    // Expiring the silence lets the still-firing alert through.
    let r = http_delete(
        &s.api(&format!("/api/v1/silences/{id}")),
        Duration::from_secs(5),
    )
    .expect("delete");
    assert_eq!(r.status, 200, "{}", r.body);
    let fired = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", &m2).contains(&"firing".to_owned())
    };
    assert!(
        fired(&s.sink.wait_for("/hook", Duration::from_secs(10), fired)),
        "{}",
        s.logs()
    );
    s.etcd.restart(2).expect("restart m2");
    s.etcd
        .wait_healthy(2, Duration::from_secs(30))
        .expect("m2 healthy");
    let resolved = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", &m2).contains(&"resolved".to_owned())
    };
    s.sink.wait_for("/hook", Duration::from_secs(30), resolved);

    // Acknowledge m1's alert through the API: PagerDuty gets `acknowledge`, once.
    s.etcd.kill(1).expect("kill m1");
    let triggered = |r: &[SinkRequest]| !pagerduty_actions(r, "member_unreachable", &m1).is_empty();
    s.sink.wait_for("/pd", Duration::from_secs(20), triggered);
    let alert = s.get("/api/v1/alerts")["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| {
            a["labels"]["member"] == m1.as_str() && a["labels"]["rule"] == "member_unreachable"
        })
        .cloned()
        .expect("m1 alert");
    let fp = alert["fingerprint"].as_str().expect("fingerprint");
    let (code, body) = s.post(
        &format!("/api/v1/alerts/{fp}/ack"),
        r#"{"by": "alice", "comment": "on it"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let acked = |r: &[SinkRequest]| {
        pagerduty_actions(r, "member_unreachable", &m1).contains(&"acknowledge".to_owned())
    };
    let pd = s.sink.wait_for("/pd", Duration::from_secs(10), acked);
    assert_eq!(
        pagerduty_actions(&pd, "member_unreachable", &m1),
        ["trigger", "acknowledge"],
        "{}",
        s.logs()
    );
    let listed = s.get(&format!("/api/v1/alerts?fingerprint={fp}"));
    assert_eq!(listed["alerts"][0]["acknowledged"]["by"], "alice");
    let (code, _) = s.post("/api/v1/alerts/nope/ack", r#"{"by": "alice"}"#);
    assert_eq!(code, 404);
}

/// `status` of every alert of `rule` in webhook bodies, in order.
fn webhook_rule_states(requests: &[SinkRequest], rule: &str) -> Vec<String> {
    requests
        .iter()
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["rule"] == rule)
        .map(|a| a["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The collector's heartbeats reach the dead-man's-switch receiver as the
/// watchdog alert, repeated, and no other receiver. When the collector is killed
/// the pings stop (the switch would page) and the alerter's own receivers get
/// `monitoring_pipeline_down`; when it is back, both recover.
#[test]
fn heartbeats_ping_the_dead_mans_switch_and_a_dead_collector_pages() {
    let sink = HttpSink::start().expect("dms sink");
    let extra = format!(
        r#"[[receivers]]
name = "dms"
webhook = {{ url = "{}" }}
[watchdog]
receiver = "dms"
repeat_interval = "1s"
pipeline_down_after = "4s"
"#,
        sink.url("/dms")
    );
    let mut s = Stack::start_with(
        "sys-watchdog",
        &extra,
        &[("ETCDMON_COLLECTOR_ALERTING__HEARTBEAT_INTERVAL", "500ms")],
    );
    let pings = |n: usize| move |r: &[SinkRequest]| webhook_rule_states(r, "watchdog").len() >= n;
    let dms = sink.wait_for("/dms", Duration::from_secs(20), pings(3));
    assert!(
        webhook_rule_states(&dms, "watchdog")
            .iter()
            .all(|st| st == "firing"),
        "the switch hears the watchdog firing, repeated\n{}",
        s.logs()
    );
    assert!(
        webhook_rule_states(&s.sink.requests("/hook"), "watchdog").is_empty()
            && s.sink.requests("/pd").is_empty(),
        "the watchdog goes to the switch alone"
    );

    s.collector
        .take()
        .expect("collector")
        .kill()
        .expect("kill -9 the collector");
    let down = |r: &[SinkRequest]| {
        webhook_rule_states(r, "monitoring_pipeline_down").contains(&"firing".to_owned())
    };
    s.sink.wait_for("/hook", Duration::from_secs(20), down);
    let pd = s.sink.wait_for("/pd", Duration::from_secs(10), |r| {
        pagerduty_actions(r, "monitoring_pipeline_down", "").contains(&"trigger".to_owned())
    });
    assert!(
        pagerduty_actions(&pd, "monitoring_pipeline_down", "").contains(&"trigger".to_owned()),
        "PagerDuty is paged too\n{}",
        s.logs()
    );
    // The switch hears nothing more (three repeat intervals), not even a
    // resolved notice, which it would take for a ping.
    let after_down = sink.requests("/dms");
    std::thread::sleep(Duration::from_secs(3));
    let quiet = sink.requests("/dms");
    assert_eq!(
        quiet.len(),
        after_down.len(),
        "no ping while the pipeline is down\n{}",
        s.logs()
    );
    assert!(!webhook_rule_states(&quiet, "watchdog").contains(&"resolved".to_owned()));

    s.spawn_collector();
    let up = |r: &[SinkRequest]| {
        webhook_rule_states(r, "monitoring_pipeline_down").contains(&"resolved".to_owned())
    };
    let hook = s.sink.wait_for("/hook", Duration::from_secs(20), up);
    assert_eq!(
        webhook_rule_states(&hook, "monitoring_pipeline_down"),
        ["firing", "resolved"],
        "paged once, resolved once\n{}",
        s.logs()
    );
    let back = sink.wait_for("/dms", Duration::from_secs(10), |r| {
        webhook_rule_states(&r[quiet.len()..], "watchdog").contains(&"firing".to_owned())
    });
    assert!(
        back.len() > quiet.len(),
        "the switch is pinged again\n{}",
        s.logs()
    );
}

/// The alert stream on three nats-servers at 3 replicas. The server leading the
/// stream is SIGKILLed mid-incident, with the collector and the alerter perhaps
/// connected to it: they move to the other two, and the recovery still reaches
/// every receiver exactly once.
#[test]
fn a_killed_nats_server_of_three_loses_and_duplicates_no_notification() {
    let nats = Nats::Cluster(NatsCluster::start(3).expect("nats cluster"));
    let mut s = Stack::start_on("sys-nats", nats, "", &[]);
    let victim = s.etcd.member(1).name.clone();
    s.etcd.kill(1).expect("kill -9");
    let firing = |r: &[SinkRequest]| {
        webhook_alerts(r, "member_unreachable", &victim).contains(&"firing".to_owned())
    };
    assert!(
        firing(&s.sink.wait_for("/hook", Duration::from_secs(20), firing)),
        "{}",
        s.logs()
    );

    let Nats::Cluster(cluster) = &mut s.nats else {
        unreachable!("started on a cluster")
    };
    let info = cluster.stream_info("ETCDMON_ALERTS").expect("stream info");
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    let leader = cluster
        .stream_leader("ETCDMON_ALERTS")
        .expect("stream info")
        .expect("the stream has a leader");
    cluster.kill(leader).expect("kill the stream's leader");

    s.etcd.restart(1).expect("restart member");
    assert_told_once(&s, &victim);
}
