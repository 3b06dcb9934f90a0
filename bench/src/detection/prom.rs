//! Prometheus (Debian `prometheus`) scraping the members and Alertmanager
//! (Debian `prometheus-alertmanager`) posting to the sink, in two profiles.
//!
//! * [`Profile::Default`]: Prometheus's and Alertmanager's defaults, written
//!   out: scrape and evaluation every 1 m; `up{job="etcd"} == 0` without
//!   `for`; route `group_wait` 30 s, `group_interval` 5 m, `repeat_interval`
//!   4 h. With `--mixin`, also the etcd mixin's `etcdMembersDown`.
//! * [`Profile::Tuned`]: as fast as the design allows: scrape and evaluation
//!   every 1 s, `for: 0s`, `group_wait` 0 s, `group_interval` 1 s.
//!
//! Alerts are grouped by `alertname` so the rules' notifications do not
//! wait for each other. Both processes run on free loopback ports with
//! their data in a temp dir; Alertmanager's gossip is off
//! (`--cluster.listen-address=`).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use etcdmon_testkit::{free_port, http_get, ChildProcess, EtcdCluster, HttpSink};
use serde_json::Value as Json;

use crate::fault::Fault;
use crate::support::{bench_binary, ensure_running, wait_http_ok};
use crate::trial::{scrape_target, Matcher, Probe, System};

/// Alert name of the plain per-target rule.
pub const UP_ALERT: &str = "EtcdMemberDown";
/// Alert name of the etcd mixin's rule.
pub const MIXIN_ALERT: &str = "etcdMembersDown";
/// Alert name of the per-target "no leader" rule (an isolated member loses
/// its leader after the election timeout).
pub const NO_LEADER_ALERT: &str = "EtcdNoLeader";
/// `etcd_server_has_leader` is the only metric that shows an isolated member.
const NO_LEADER_EXPR: &str = "etcd_server_has_leader{job=\"etcd\"} == 0";
/// Alert name of the refused-writes rule. etcd exports no alarm metric (3.4,
/// 3.5): the first sign of NOSPACE in `/metrics` is a write refused with
/// `ResourceExhausted`, counted in `grpc_server_handled_total`.
pub const NOSPACE_ALERT: &str = "EtcdNoSpace";
const NOSPACE_EXPR: &str =
    "increase(grpc_server_handled_total{job=\"etcd\",grpc_code=\"ResourceExhausted\"}[1m]) > 0";

/// The etcd mixin's `etcdMembersDown` expression, as rendered from
/// etcd-io/etcd `contrib/mixin/mixin.libsonnet` with its defaults
/// (`etcd_selector` `job=~".*etcd.*"`, `etcd_instance_labels` `instance`,
/// `scrape_interval_seconds` 30, hence the 120 s rate window).
pub const MIXIN_EXPR: &str = r#"max without (endpoint) (
  sum without (instance) (up{job=~".*etcd.*"} == bool 0)
or
  count without (To) (
    sum without (instance) (rate(etcd_network_peer_sent_failures_total{job=~".*etcd.*"}[120s])) > 0.01
  )
)
> 0"#;

/// Which configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The shipped defaults.
    Default,
    /// Tuned to the limit.
    Tuned,
}

/// The settings a profile stands for, as Prometheus duration strings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `global.scrape_interval`.
    pub scrape_interval: &'static str,
    /// `global.scrape_timeout`, if set.
    pub scrape_timeout: Option<&'static str>,
    /// `global.evaluation_interval`.
    pub evaluation_interval: &'static str,
    /// `for` of the `up == 0` rule; `None`: no `for` at all.
    pub up_for: Option<&'static str>,
    /// Route `group_wait`.
    pub group_wait: &'static str,
    /// Route `group_interval`.
    pub group_interval: &'static str,
    /// Route `repeat_interval`.
    pub repeat_interval: &'static str,
}

impl Profile {
    /// Its settings.
    pub fn settings(self) -> Settings {
        match self {
            Profile::Default => Settings {
                scrape_interval: "1m",
                scrape_timeout: None,
                evaluation_interval: "1m",
                up_for: None,
                group_wait: "30s",
                group_interval: "5m",
                repeat_interval: "4h",
            },
            Profile::Tuned => Settings {
                scrape_interval: "1s",
                scrape_timeout: Some("1s"),
                evaluation_interval: "1s",
                up_for: Some("0s"),
                group_wait: "0s",
                group_interval: "1s",
                repeat_interval: "4h",
            },
        }
    }

    /// Short name: `default` or `tuned`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Tuned => "tuned",
        }
    }

    /// One line describing the settings, for the report.
    pub fn describe(self) -> String {
        let s = self.settings();
        format!(
            "scrape {} / evaluation {}, rules {}, group_wait {}, group_interval {}",
            s.scrape_interval,
            s.evaluation_interval,
            s.up_for
                .map_or("without `for`".to_owned(), |f| format!("`for: {f}`")),
            s.group_wait,
            s.group_interval
        )
    }
}

/// `prometheus.yml`: one job `etcd` over `targets`, alerts to Alertmanager
/// on `am_port`.
pub fn prometheus_yml(s: &Settings, targets: &[String], am_port: u16) -> String {
    let timeout = s
        .scrape_timeout
        .map(|t| format!("  scrape_timeout: {t}\n"))
        .unwrap_or_default();
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "global:\n  scrape_interval: {si}\n{timeout}  evaluation_interval: {ei}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
         rule_files: ['rules.yml']\n\
         scrape_configs:\n  - job_name: etcd\n    static_configs:\n      - targets: [{targets}]\n",
        si = s.scrape_interval,
        ei = s.evaluation_interval,
    )
}

/// `rules.yml`: the `up == 0` rule, and the mixin's `etcdMembersDown` with
/// `for: mixin_for` when given.
pub fn rules_yml(s: &Settings, mixin_for: Option<&str>) -> String {
    let mut out = String::from("groups:\n  - name: etcd-bench\n    rules:\n");
    for (alert, expr) in [
        (UP_ALERT, "up{job=\"etcd\"} == 0"),
        (NO_LEADER_ALERT, NO_LEADER_EXPR),
        (NOSPACE_ALERT, NOSPACE_EXPR),
    ] {
        out.push_str(&format!("      - alert: {alert}\n        expr: {expr}\n"));
        if let Some(f) = s.up_for {
            out.push_str(&format!("        for: {f}\n"));
        }
        out.push_str("        labels:\n          severity: critical\n");
    }
    if let Some(f) = mixin_for {
        out.push_str(&format!("      - alert: {MIXIN_ALERT}\n        expr: |\n"));
        for line in MIXIN_EXPR.lines() {
            out.push_str(&format!("          {line}\n"));
        }
        out.push_str(&format!(
            "        for: {f}\n        labels:\n          severity: critical\n"
        ));
    }
    out
}

/// `alertmanager.yml`: every alert to one webhook, grouped by alert name.
pub fn alertmanager_yml(s: &Settings, hook_url: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: ['alertname']\n  group_wait: {gw}\n  \
         group_interval: {gi}\n  repeat_interval: {ri}\n\
         receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{hook_url}'\n        send_resolved: true\n",
        gw = s.group_wait,
        gi = s.group_interval,
        ri = s.repeat_interval,
    )
}

/// Prometheus and Alertmanager running for one profile; dropping it kills
/// both.
pub struct PromStack {
    prometheus: ChildProcess,
    alertmanager: ChildProcess,
    prom_api: String,
    name: String,
    members: usize,
    probes: Vec<Probe>,
    _dir: tempfile::TempDir,
}

impl PromStack {
    /// Starts both for `cluster`, posting to `sink`; returns once both
    /// answer `/-/ready`. `mixin_for` adds the mixin rule (default profile).
    pub async fn start(
        profile: Profile,
        cluster: &EtcdCluster,
        sink: &HttpSink,
        mixin_for: Option<&str>,
        timeout: Duration,
        fault: Fault,
    ) -> Result<Self> {
        let s = profile.settings();
        let dir = tempfile::Builder::new()
            .prefix(&format!("etcdmon-bench-prom-{}-", profile.name()))
            .tempdir()
            .context("create temp dir")?;
        let d = dir.path();
        let path = format!("/prom-{}", profile.name());
        let (am_port, prom_port) = (free_port(), free_port());

        std::fs::write(
            d.join("alertmanager.yml"),
            alertmanager_yml(&s, &sink.url(&path)),
        )?;
        let mut cmd = Command::new(bench_binary(
            "prometheus-alertmanager",
            "prometheus-alertmanager",
        )?);
        cmd.arg(format!(
            "--config.file={}",
            d.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", d.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=");
        let alertmanager = ChildProcess::spawn("alertmanager", cmd, &d.join("alertmanager.log"))?;
        wait_http_ok(
            &format!("http://127.0.0.1:{am_port}/-/ready"),
            &alertmanager,
            timeout,
        )
        .await?;

        let targets: Vec<String> = cluster
            .members()
            .iter()
            .map(|m| scrape_target(&m.metrics_url))
            .collect();
        std::fs::write(
            d.join("prometheus.yml"),
            prometheus_yml(&s, &targets, am_port),
        )?;
        std::fs::write(d.join("rules.yml"), rules_yml(&s, mixin_for))?;
        let mut cmd = Command::new(bench_binary("prometheus", "prometheus")?);
        cmd.arg(format!(
            "--config.file={}",
            d.join("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
        let prometheus = ChildProcess::spawn("prometheus", cmd, &d.join("prometheus.log"))?;
        let prom_api = format!("http://127.0.0.1:{prom_port}");
        wait_http_ok(&format!("{prom_api}/-/ready"), &prometheus, timeout).await?;

        let (fire, resolve) = match profile {
            Profile::Tuned => (Duration::from_secs(30), Duration::from_secs(30)),
            Profile::Default => (Duration::from_secs(600), Duration::from_secs(600)),
        };
        let (rule, matcher) = match fault {
            Fault::Kill | Fault::StopLeader | Fault::StopFollower => (
                "`up == 0`".to_owned(),
                Matcher::Instance {
                    alertname: UP_ALERT.into(),
                },
            ),
            Fault::Isolate => (
                format!("`{NO_LEADER_EXPR}`"),
                Matcher::Instance {
                    alertname: NO_LEADER_ALERT.into(),
                },
            ),
            Fault::Nospace => (
                format!("`{NOSPACE_EXPR}`"),
                Matcher::Cluster {
                    alertname: NOSPACE_ALERT.into(),
                },
            ),
        };
        // Refused writes stay in the 1 m window of `increase` for a minute after
        // the last one, whatever the alarm does.
        let resolve = match fault {
            Fault::Nospace => resolve.max(Duration::from_secs(120)),
            _ => resolve,
        };
        let mut probes = vec![Probe {
            rule,
            path: path.clone(),
            matcher,
            fire_timeout: fire,
            resolve_timeout: resolve,
        }];
        if let Some(f) = mixin_for {
            probes.push(Probe {
                rule: format!("mixin `etcdMembersDown` (`for: {f}`)"),
                path,
                matcher: Matcher::Cluster {
                    alertname: MIXIN_ALERT.into(),
                },
                fire_timeout: Duration::from_secs(1800),
                resolve_timeout: Duration::from_secs(1800),
            });
        }
        Ok(Self {
            prometheus,
            alertmanager,
            prom_api,
            name: profile.name().to_owned(),
            members: cluster.members().len(),
            probes,
            _dir: dir,
        })
    }

    fn query(&self, path: &str) -> Result<Json> {
        let url = format!("{}{path}", self.prom_api);
        let r = http_get(&url, Duration::from_secs(2)).with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(r.status == 200, "GET {url}: {} {}", r.status, r.body);
        serde_json::from_str(&r.body).with_context(|| format!("parse GET {url}: {}", r.body))
    }
}

/// Why Prometheus's view is not "every target up, no alert pending or
/// firing", from its `/api/v1/query?query=up` and `/api/v1/alerts` answers.
pub fn prometheus_not_quiet(up: &Json, alerts: &Json, members: usize) -> Option<String> {
    let series = up["data"]["result"].as_array().cloned().unwrap_or_default();
    let up_count = series.iter().filter(|s| s["value"][1] == "1").count();
    if series.len() != members || up_count != members {
        return Some(format!(
            "Prometheus sees {up_count} of {members} targets up ({} series)",
            series.len()
        ));
    }
    let active = alerts["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(a) = active.first() {
        return Some(format!(
            "Prometheus has {} active alert(s), e.g. {} {}",
            active.len(),
            a["labels"]["alertname"],
            a["state"]
        ));
    }
    None
}

impl System for PromStack {
    fn name(&self) -> &str {
        &self.name
    }

    fn probes(&self) -> &[Probe] {
        &self.probes
    }

    fn not_quiet(&self) -> Result<Option<String>> {
        let up = self.query("/api/v1/query?query=up")?;
        let alerts = self.query("/api/v1/alerts")?;
        Ok(prometheus_not_quiet(&up, &alerts, self.members))
    }

    fn ensure_running(&self) -> Result<()> {
        ensure_running([&self.prometheus, &self.alertmanager])
    }
}

/// First line of `<binary> --version` (Prometheus tools print it on
/// stdout or stderr depending on the version).
pub fn version(binary: &str, package: &str) -> String {
    let Ok(path) = bench_binary(binary, package) else {
        return format!("{binary}: not installed");
    };
    match Command::new(path).arg("--version").output() {
        Ok(out) => {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(e) => format!("{binary}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_is_written_out_defaults() {
        let s = Profile::Default.settings();
        let prom = prometheus_yml(&s, &["127.0.0.1:1".into(), "127.0.0.1:2".into()], 9);
        assert!(prom.contains("scrape_interval: 1m\n  evaluation_interval: 1m\n"));
        assert!(!prom.contains("scrape_timeout"));
        assert!(prom.contains("targets: ['127.0.0.1:1', '127.0.0.1:2']"));
        assert!(prom.contains("targets: ['127.0.0.1:9']"));
        let rules = rules_yml(&s, None);
        assert!(rules.contains("expr: up{job=\"etcd\"} == 0\n"));
        assert!(!rules.contains("for:"), "{rules}");
        assert!(!rules.contains(MIXIN_ALERT));
        let am = alertmanager_yml(&s, "http://h/p");
        assert!(am.contains("group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 4h\n"));
    }

    #[test]
    fn tuned_profile_and_mixin_rule() {
        let s = Profile::Tuned.settings();
        assert!(prometheus_yml(&s, &[], 9).contains("scrape_interval: 1s\n  scrape_timeout: 1s\n"));
        let rules = rules_yml(&s, Some("10m"));
        assert!(rules.contains("== 0\n        for: 0s\n"), "{rules}");
        assert!(
            rules.contains("          > 0\n        for: 10m\n"),
            "{rules}"
        );
        assert!(rules.contains("[120s])) > 0.01\n"));
        assert!(alertmanager_yml(&s, "u").contains("group_wait: 0s\n  group_interval: 1s\n"));
    }

    #[test]
    fn quiet_needs_all_targets_up_and_no_alerts() {
        let up = |v: [&str; 3]| -> Json {
            serde_json::json!({"data": {"result": v.iter().map(|x| serde_json::json!({"value": [0, x]})).collect::<Vec<_>>()}})
        };
        let none = serde_json::json!({"data": {"alerts": []}});
        assert_eq!(prometheus_not_quiet(&up(["1", "1", "1"]), &none, 3), None);
        assert!(prometheus_not_quiet(&up(["1", "0", "1"]), &none, 3).is_some());
        let pending = serde_json::json!({"data": {"alerts": [{"labels": {"alertname": "x"}, "state": "pending"}]}});
        assert!(prometheus_not_quiet(&up(["1", "1", "1"]), &pending, 3)
            .unwrap()
            .contains("pending"));
    }
}
