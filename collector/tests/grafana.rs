//! The Grafana dashboards of `grafana/`, without a Grafana (none can run here).
//!
//! `dashboards_are_well_formed` reads every dashboard and the provisioning
//! files: required fields, unique panel ids, every datasource reference on the
//! provisioned uid, every `$var` / `${var}` a template variable or a macro this
//! file expands.
//!
//! `every_panel_query_answers_from_a_real_cluster` runs every panel's SQL the
//! way Grafana and the ClickHouse plugin would:
//!
//! ```text
//!  etcd m0 m1 m2 ──> 6 agents (cluster eu in eu-west, cluster ap in ap-south)
//!                      ──> collector ──> ClickHouse <── alerter <── NATS <── collector
//!  variable queries ──> values ──┐
//!  panel rawSql ──> $__conditionalAll, variables (frontend) ──> $__fromTime... (backend)
//!               ──> ClickHouse HTTP, FORMAT JSONCompact ──> shape of the answer
//! ```
//!
//! A client writes keys all along (an idle etcd never fsyncs its WAL, so the
//! disk histograms would stay flat), and the leader is killed half-way, so the
//! alert tables hold a real `member_unreachable` transition and the events a
//! leader change. The second cluster reports the same three etcd members
//! under another name and region: the dashboards compare labels, and a second
//! etcd would only cost time.

mod common;

use common::CollectorProc;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_testkit::grafana::{self, *};
use etcdmon_testkit::{
    free_port, http_get, http_post, workspace_bin, ChildProcess, ClickHouseServer, EtcdCluster,
    HttpSink, NatsServer,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The datasource uid that `grafana/provisioning/datasources/clickhouse.yaml` sets
/// and every panel references.
const DATASOURCE_UID: &str = "etcdmon-clickhouse";
/// The plugin's id.
const DATASOURCE_TYPE: &str = "grafana-clickhouse-datasource";
/// The database the provisioned datasource defaults to.
const DATABASE: &str = "etcdmon";

/// A second interval the panels run at: three scrapes per bucket.
const COARSE_MS: i64 = 6_000;

/// The two clusters (and their regions) the agents report.
const CLUSTERS: [(&str, &str); 2] = [("eu", "eu-west"), ("ap", "ap-south")];

/// Panels whose query may rightly answer no rows from the test's data, by
/// title, why, and the columns their query must still answer.
const MAY_BE_EMPTY: &[(&str, &str, &[&str])] = &[
    (
        "Consistency alerts (data_inconsistent)",
        "the members of a healthy cluster agree",
        &[
            "time", "cluster", "rule", "state", "severity", "member", "summary", "observed",
        ],
    ),
    (
        "TLS certificates",
        "the test cluster speaks plain HTTP",
        &["cluster", "member", "path", "role", "days_left"],
    ),
];

// ---------------------------------------------------------------------------
// Reading the files.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("collector/ has a parent")
        .to_path_buf()
}

// ---------------------------------------------------------------------------
// Part (a): the files alone.

#[test]
fn dashboards_are_well_formed() {
    let root = repo_root();
    let ds = std::fs::read_to_string(root.join("grafana/provisioning/datasources/clickhouse.yaml"))
        .expect("datasource provisioning file");
    assert_eq!(yaml_value(&ds, "uid").as_deref(), Some(DATASOURCE_UID));
    assert_eq!(yaml_value(&ds, "type").as_deref(), Some(DATASOURCE_TYPE));
    assert_eq!(
        yaml_value(&ds, "defaultDatabase").as_deref(),
        Some(DATABASE)
    );
    for key in ["host", "port", "protocol", "username", "password"] {
        assert!(yaml_value(&ds, key).is_some(), "datasource sets no {key}");
    }
    assert!(
        yaml_value(&ds, "password").is_some_and(|p| p.starts_with('$')),
        "the password comes from the environment"
    );
    let dp =
        std::fs::read_to_string(root.join("grafana/provisioning/dashboards/etcd-monitor.yaml"))
            .expect("dashboard provisioning file");
    assert_eq!(yaml_value(&dp, "type").as_deref(), Some("file"));
    assert!(
        yaml_value(&dp, "path").is_some(),
        "file provider without a path"
    );

    let all = dashboards(&repo_root().join("grafana/dashboards"));
    let files: BTreeSet<&str> = all.iter().map(|d| d.file.as_str()).collect();
    for want in [
        "alerts.json",
        "cluster-detail.json",
        "fleet-overview.json",
        "region-compare.json",
    ] {
        assert!(files.contains(want), "no {want}: {files:?}");
    }
    let mut uids = BTreeSet::new();
    for d in &all {
        let f = &d.file;
        let j = &d.json;
        for key in ["title", "uid"] {
            assert!(
                j[key].as_str().is_some_and(|s| !s.is_empty()),
                "{f}: no {key}"
            );
        }
        let uid = j["uid"].as_str().expect("uid");
        assert!(uid.len() <= 40, "{f}: uid longer than Grafana's 40");
        assert!(uids.insert(uid.to_owned()), "{f}: uid {uid} used twice");
        assert!(
            j["schemaVersion"].as_u64().is_some(),
            "{f}: no schemaVersion"
        );
        assert!(
            j["panels"].as_array().is_some_and(|p| !p.is_empty()),
            "{f}: no panels"
        );
        assert!(
            j["templating"]["list"].is_array(),
            "{f}: no templating.list"
        );
        // Provisioned dashboards must not carry a database id.
        assert!(j["id"].is_null(), "{f}: id must be null");

        let mut ids = BTreeSet::new();
        for p in panels(j) {
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{f}: panel without id: {p}"));
            assert!(ids.insert(id), "{f}: panel id {id} used twice");
            assert!(p["title"].is_string(), "{f}: panel {id} has no title");
            assert!(p["type"].is_string(), "{f}: panel {id} has no type");
            assert!(p["gridPos"]["w"].is_u64(), "{f}: panel {id} has no gridPos");
        }
        check_datasource_refs(f, j);

        let vars = variables(j);
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        for want in ["region", "cluster", "member"] {
            assert!(names.contains(&want), "{f}: no variable {want}");
        }
        for (i, v) in vars.iter().enumerate() {
            assert!(!v.query.is_empty(), "{f}: variable {} has no query", v.name);
            // A variable may use only those defined before it (Grafana resolves
            // them in order).
            check_references(&format!("{f}: variable {}", v.name), &v.query, &names[..i]);
        }
        let ts = targets(j);
        assert!(!ts.is_empty(), "{f}: no queries");
        for t in ts {
            let what = format!("{f}: {}", t.title());
            assert_eq!(t.target["editorType"], "sql", "{what}: editorType");
            assert!(matches!(t.format(), 0 | 1), "{what}: format must be 0 or 1");
            assert!(!t.sql().trim().is_empty(), "{what}: empty rawSql");
            // macropro strips comments before expanding; none here, so what the
            // test sends is what the plugin sends.
            assert!(
                !t.sql().contains("--") && !t.sql().contains("/*"),
                "{what}: no SQL comments"
            );
            check_references(&what, t.sql(), &names);
        }
    }
}

/// Every `datasource` object in the dashboard names the provisioned uid and type.
fn check_datasource_refs(file: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "datasource" {
                    assert_eq!(x["uid"], DATASOURCE_UID, "{file}: datasource {x}");
                    assert_eq!(x["type"], DATASOURCE_TYPE, "{file}: datasource {x}");
                } else {
                    check_datasource_refs(file, x);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_datasource_refs(file, x)),
        _ => {}
    }
}

fn check_references(what: &str, sql: &str, vars: &[&str]) {
    for name in referenced_names(sql) {
        assert!(!name.starts_with("[["), "{what}: deprecated [[var]] syntax");
        let known = match name.strip_prefix("__") {
            Some(m) => BACKEND_MACROS.contains(&m) || FRONTEND_MACROS.contains(&m),
            None => vars.contains(&name.as_str()),
        };
        assert!(known, "{what}: ${name} is no variable (or not defined before it) and no macro the test expands");
    }
}

// ---------------------------------------------------------------------------
// Expanding a query as Grafana and the plugin do.

#[test]
fn expansion_matches_the_plugin() {
    let vars: Settings = [
        (
            "region".into(),
            Selected::All(vec!["eu".into(), "o'x".into()]),
        ),
        ("cluster".into(), Selected::One("c1".into())),
    ]
    .into();
    let multi = ["region".to_owned(), "cluster".to_owned()].into();
    let range = TimeRange {
        from_s: 100,
        to_s: 200,
        interval_ms: 15_500,
    };
    let sql = "SELECT 1 WHERE $__conditionalAll(r IN (${region:singlequote}), $region) \
               AND $__conditionalAll(c IN (${cluster:singlequote}), $cluster) AND x IN ($cluster) \
               AND t >= $__fromTime AND t <= $__toTime GROUP BY intDiv(t, $__interval_s)";
    assert_eq!(
        expand(sql, &vars, &multi, range),
        "SELECT 1 WHERE 1=1 AND c IN ('c1') AND x IN ('c1') \
         AND t >= toDateTime(100) AND t <= toDateTime(200) GROUP BY intDiv(t, 15)"
    );
    let one: Settings = [("region".into(), Selected::One("o'x".into()))].into();
    assert_eq!(
        expand(
            "$__conditionalAll(r IN (${region:singlequote}), $region)",
            &one,
            &multi,
            range
        ),
        "r IN ('o\\'x')"
    );
    let short = TimeRange {
        interval_ms: 200,
        ..range
    };
    assert_eq!(expand("$__interval_s", &vars, &multi, short), "1");
}

// ---------------------------------------------------------------------------
// Part (b): every query against a real ClickHouse with real data.

/// An answer of ClickHouse's `JSONCompact` format.
#[derive(Debug)]
struct Answer {
    /// (name, type) of each column.
    columns: Vec<(String, String)>,
    rows: Vec<Vec<Value>>,
}

impl Answer {
    fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }
}

/// Runs `sql` as the datasource would (default database `etcdmon`), over HTTP.
fn run_sql(ch: &str, sql: &str) -> Result<Answer, String> {
    let url = format!("{ch}/?database={DATABASE}");
    let body = format!("{sql}\nFORMAT JSONCompact");
    let r = http_post(&url, body.as_bytes(), Duration::from_secs(30)).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(r.body);
    }
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    Ok(Answer {
        columns: v["meta"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["type"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        rows: v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect(),
    })
}

fn scalar(ch: &str, sql: &str) -> i64 {
    let a = run_sql(ch, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    a.rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(0)
}

fn is_numeric(ty: &str) -> bool {
    let t = ty.trim_start_matches("Nullable(");
    ["Float", "Int", "UInt", "Decimal"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// The values of a dashboard's variables, resolved in order by running their
/// queries with the settings of the ones before; `choose` picks each setting.
fn resolve(
    ch: &str,
    file: &str,
    vars: &[Variable],
    range: TimeRange,
    mut choose: impl FnMut(&Variable, &[String]) -> Selected,
) -> Settings {
    let options = |v: &Variable, sql: &str, settings: &Settings| {
        let a =
            run_sql(ch, sql).unwrap_or_else(|e| panic!("{file}: variable {}: {e}\n{sql}", v.name));
        assert!(
            matches!(a.columns.len(), 1 | 2),
            "{file}: variable {} must answer one or two columns: {:?}",
            v.name,
            a.columns
        );
        // One column: value and text; two: the first is the value (the plugin's
        // metricFindQuery).
        let values: Vec<String> = a
            .rows
            .iter()
            .map(|r| match &r[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        assert!(
            !values.is_empty(),
            "{file}: variable {} has no values with {settings:?}:\n{sql}",
            v.name
        );
        Ok::<_, std::convert::Infallible>(values)
    };
    let checked_choice = |v: &Variable, values: &[String]| {
        let sel = choose(v, values);
        if matches!(sel, Selected::All(_)) {
            assert!(v.include_all, "{file}: {} has no All option", v.name);
        }
        sel
    };
    match grafana::resolve(vars, range, options, checked_choice) {
        Ok(settings) => settings,
        Err(never) => match never {},
    }
}

/// How a run of the panels is judged.
struct Run<'a> {
    what: String,
    settings: Settings,
    /// Every panel outside `may_be_empty` must answer rows.
    want_rows: bool,
    may_be_empty: &'a [&'a str],
    /// Columns that must hold only these values (a filter's effect).
    only: Vec<(&'a str, BTreeSet<String>)>,
}

/// Runs every query of dashboard `d` with `run`'s settings; returns failures.
fn check_panels(ch: &str, d: &Dashboard, run: &Run<'_>, range: TimeRange) -> Vec<String> {
    let vars = variables(&d.json);
    let multi = multi_valued(&vars);
    let mut failures = Vec::new();
    for t in targets(&d.json) {
        let what = format!("{} / {} / {}", d.file, run.what, t.title());
        let interval_ms = t.min_interval_ms().unwrap_or(0).max(range.interval_ms);
        let r = TimeRange {
            interval_ms,
            ..range
        };
        let sql = expand(t.sql(), &run.settings, &multi, r);
        let a = match run_sql(ch, &sql) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{what}: {e}\n{sql}"));
                continue;
            }
        };
        let title = t.panel["title"].as_str().unwrap_or_default();
        let may_be_empty = run.may_be_empty.contains(&title);
        if run.want_rows && !may_be_empty && a.rows.is_empty() {
            failures.push(format!("{what}: no rows\n{sql}"));
        }
        if let Err(e) = check_shape(t.format(), &a) {
            failures.push(format!("{what}: {e}\n{sql}"));
        }
        if let Some((_, _, columns)) = MAY_BE_EMPTY.iter().find(|(p, ..)| *p == title) {
            let got: Vec<&str> = a.columns.iter().map(|(n, _)| n.as_str()).collect();
            if got != *columns {
                failures.push(format!("{what}: columns {got:?}, want {columns:?}"));
            }
        }
        for (column, allowed) in &run.only {
            if let Some(i) = a.column(column) {
                for row in &a.rows {
                    let v = row[i].as_str().unwrap_or_default();
                    if !allowed.contains(v) {
                        failures.push(format!("{what}: {column} {v} not in {allowed:?}"));
                    }
                }
            }
        }
    }
    failures
}

/// Time series (format 0): a `DateTime` column, ascending (the backend turns
/// long frames into wide ones, which needs sorted time), and at least one
/// numeric column without NaN or infinities (ClickHouse writes those as null).
/// Tables (format 1): at least one column.
fn check_shape(format: i64, a: &Answer) -> Result<(), String> {
    if a.columns.is_empty() {
        return Err("no columns".into());
    }
    if format != 0 {
        return Ok(());
    }
    let time = a
        .columns
        .iter()
        .position(|(_, t)| t.starts_with("DateTime"))
        .ok_or_else(|| format!("no time column: {:?}", a.columns))?;
    let numeric: Vec<usize> = (0..a.columns.len())
        .filter(|&i| i != time && is_numeric(&a.columns[i].1))
        .collect();
    if numeric.is_empty() {
        return Err(format!("no numeric column: {:?}", a.columns));
    }
    let times: Vec<&str> = a
        .rows
        .iter()
        .map(|r| r[time].as_str().unwrap_or_default())
        .collect();
    if times.windows(2).any(|w| w[0] > w[1]) {
        return Err("time is not ascending".into());
    }
    for row in &a.rows {
        for &i in &numeric {
            if row[i].is_null() {
                return Err(format!("{} is NaN or infinite: {row:?}", a.columns[i].0));
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// The alerter on the same ClickHouse and NATS, notifying a local sink.
fn start_alerter(
    dir: &Path,
    nats: &NatsServer,
    ch: &ClickHouseServer,
    sink: &HttpSink,
    bin: &Path,
) -> (ChildProcess, u16) {
    let http = free_port();
    let config = dir.join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            "refresh_interval = \"200ms\"\n\
             [nats]\nurl = \"{}\"\n\
             [storage]\nurl = \"clickhouse://127.0.0.1:{}/{DATABASE}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [delivery]\ninitial_backoff = \"100ms\"\n\
             [[receivers]]\nname = \"hook\"\nwebhook = {{ url = \"{}\" }}\n\
             [route]\nreceiver = \"hook\"\n",
            nats.url(),
            ch.http_port(),
            sink.url("/hook"),
        ),
    )
    .expect("write alerter.toml");
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
    let p = ChildProcess::spawn("alerter", cmd, &dir.join("alerter.log")).expect("alerter");
    let url = format!("http://127.0.0.1:{http}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&url, Duration::from_secs(1)).is_ok_and(|r| r.status == 200) {
        assert!(p.is_running(), "alerter exited: {}", p.log_tail(40));
        assert!(
            Instant::now() < deadline,
            "alerter not ready: {}",
            p.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (p, http)
}

/// Polls the ClickHouse scalar `sql` until it reaches `want` or `timeout` passes.
async fn until_at_least(ch: &str, sql: &str, want: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let got = scalar(ch, sql);
        if got >= want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_answers_from_a_real_cluster() {
    // Built (or found fresh) before the clock starts.
    let built = Instant::now();
    let alerter_bin = workspace_bin("etcdmon-alerter", "etcdmon-alerter").expect("alerter binary");
    eprintln!("alerter binary ready after {:.1?}", built.elapsed());
    let started = Instant::now();
    let from_s = now_ms() / 1000 - 1;
    // The data dirs on the disk the build uses, not the harness's tmpfs, so the
    // agents find a block device for the Disk utilization panel.
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("data root");
    let mut etcd = EtcdCluster::builder()
        .members(3)
        .data_root(disk.path())
        .start()
        .expect("etcd");
    let ch_server = ClickHouseServer::start().expect("clickhouse");
    let ch = ch_server.http_url();
    let nats = NatsServer::start().expect("nats");
    let sink = HttpSink::start().expect("http sink");
    let dir = tempfile::tempdir().expect("tmp");
    let collector = CollectorProc::start_with_env(
        &format!(
            "clickhouse://127.0.0.1:{}/{DATABASE}",
            ch_server.http_port()
        ),
        dir.path(),
        &[("ETCDMON_COLLECTOR_ALERTING__JETSTREAM__URL", &nats.url())],
    );
    let (alerter, _) = start_alerter(dir.path(), &nats, &ch_server, &sink, &alerter_bin);

    let mut agents = Vec::new();
    for (cluster, region) in CLUSTERS {
        for m in etcd.members() {
            let mut cfg =
                common::agent_config(cluster, m, &collector.grpc_url(), &dir.path().join(cluster));
            cfg.identity.region = region.into();
            cfg.identity.tags = [("env".to_owned(), "test".to_owned())].into();
            // Every 2 s: enough points per 15 s bucket, half the load of 1 s.
            cfg.metrics.interval = Duration::from_secs(2);
            agents.push(
                Agent::serve_tapped(&cfg, AgentMetrics::new(), None, None, &Shutdown::new())
                    .expect("agent"),
            );
        }
    }

    // Writes, so that the WAL, the backend and the proposal counters move.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let endpoints = etcd.client_urls();
        tokio::spawn(async move {
            let mut client = None;
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = etcd_client::Client::connect(endpoints.clone(), None)
                        .await
                        .ok();
                }
                if let Some(c) = client.as_mut() {
                    let put = c.put(format!("grafana/{}", n % 64), "v".repeat(256), None);
                    let _ = tokio::time::timeout(Duration::from_secs(1), put).await;
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let members = until_at_least(
        &ch,
        "SELECT count() FROM (SELECT DISTINCT cluster, member FROM samples \
         WHERE name = 'etcdmon_status_up')",
        6,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        members,
        6,
        "not every agent's samples arrived: {}",
        collector.log_text()
    );
    eprintln!("all agents' samples stored after {:.1?}", started.elapsed());
    // A few scrapes of everything (every 2 s; host and peers every 5 s) before
    // the leader dies.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let leader = etcd.leader_index().expect("leader").expect("one leader");
    let victim = etcd.member(leader).name.clone();
    etcd.kill(leader).expect("kill the leader");
    let firing = until_at_least(
        &ch,
        "SELECT count(DISTINCT cluster) FROM alert_transitions \
         WHERE rule = 'member_unreachable' AND state = 'firing'",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        firing,
        2,
        "no member_unreachable transition of both clusters: {}",
        alerter.log_tail(40)
    );
    let changes = until_at_least(
        &ch,
        "SELECT count() FROM events WHERE kind = 'leader_changed'",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert!(changes >= 1, "no leader change stored");
    eprintln!(
        "alert and leader change stored after {:.1?}",
        started.elapsed()
    );
    until_at_least(
        &ch,
        "SELECT count() FROM alert_deliveries",
        1,
        Duration::from_secs(10),
    )
    .await;
    // etcd observes its peer round trip histogram only every 30 s per peer:
    // wait until an observation lies between two COARSE buckets, where the
    // panels' increases can see it.
    let rtt = until_at_least(
        &ch,
        &format!(
            "SELECT count() FROM (SELECT cluster, member, labels, \
             intDiv(ts_ms, {COARSE_MS}) AS b, max(value) AS v FROM samples \
             WHERE name = 'etcd_network_peer_round_trip_time_seconds_count' \
             GROUP BY cluster, member, labels, b) \
             GROUP BY cluster, member, labels HAVING max(v) > min(v)"
        ),
        1,
        Duration::from_secs(50),
    )
    .await;
    assert!(rtt >= 1, "etcd observed no peer round trip");
    writing.store(false, Ordering::Relaxed);
    let _ = writer.await;
    let data_done = started.elapsed();

    let range = TimeRange {
        from_s,
        to_s: now_ms() / 1000 + 1,
        // What Grafana's auto interval would be for this range on a wide panel
        // (range / ~1000 points): the plugin raises it to 1 s.
        interval_ms: 100,
    };
    let alive: Vec<String> = etcd
        .members()
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| *m != victim)
        .collect();
    // Where the data dir has no block device (overlay, tmpfs), the agents
    // report no disk and that panel is rightly empty.
    let mut may_be_empty: Vec<&'static str> = MAY_BE_EMPTY.iter().map(|(p, ..)| *p).collect();
    if scalar(
        &ch,
        "SELECT count() FROM samples WHERE name = 'etcdmon_host_disk_utilization'",
    ) == 0
    {
        eprintln!(
            "note: no block device under {}: Disk utilization may be empty",
            disk.path().display()
        );
        may_be_empty.push("Disk utilization");
    }
    let ch2 = ch.clone();
    let mut failures =
        tokio::task::spawn_blocking(move || check_all(&ch2, range, &alive, &may_be_empty))
            .await
            .expect("panel checks");
    failures.extend(check_values(&ch, range, &victim));
    let ch2 = ch.clone();
    failures.extend(
        tokio::task::spawn_blocking(move || check_rollups(&ch2, range))
            .await
            .expect("rollup checks"),
    );
    eprintln!(
        "data for {:.1?}, all panels checked after {:.1?}",
        data_done,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    drop(agents);
}

/// What some panels must say about the test's story: every member reported,
/// one was killed, the leader moved.
fn check_values(ch: &str, range: TimeRange, victim: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let clusters = answer(ch, "fleet-overview.json", "Clusters", range);
    let col = |name: &str| clusters.column(name).expect(name);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for row in &clusters.rows {
        let got = [text(&row[col("members")]), text(&row[col("members_up")])];
        if got != ["3", "2"] {
            failures.push(format!("Clusters: want 3 members, 2 up: {row:?}"));
        }
        let leader = text(&row[col("leader_member")]);
        if leader.is_empty() || leader == victim {
            failures.push(format!("Clusters: leader {leader:?} after {victim} died"));
        }
    }
    let up = answer(ch, "cluster-detail.json", "Members up", range);
    let values: BTreeSet<String> = up.rows.iter().map(|r| r[2].to_string()).collect();
    if !values.contains("3") || !values.contains("2") {
        failures.push(format!("Members up: want 3 then 2, got {values:?}"));
    }
    let wal = answer(ch, "cluster-detail.json", "Disk sync duration (p99)", range);
    for row in &wal.rows {
        let v = row[2].as_f64().unwrap_or(-1.0);
        if !(v > 0.0 && v < 10.0) {
            failures.push(format!("WAL fsync p99 out of range: {row:?}"));
        }
    }
    failures
}

/// The condition of the raw-sample branch of a panel that can also read
/// `rollup_1m`, and of the rollup branch: exactly one holds for an interval.
const RAW_BRANCH: &str = "($__interval_s < 60 OR $__interval_s % 60 != 0)";
const ROLLUP_BRANCH: &str = "$__interval_s >= 60 AND $__interval_s % 60 = 0";

/// Panels that read `rollup_1m` at whole-minute intervals answer as they
/// would from raw samples: each query at a 1-minute interval, and again with
/// its branches swapped so that raw samples answer, every variable on All.
fn check_rollups(ch: &str, range: TimeRange) -> Vec<String> {
    // The rollup holds whole minutes, and live data is still arriving in the
    // current one: compare on a copy of the data so far, moved back one day,
    // where no sample will ever arrive again. The copy is an INSERT into
    // samples like the collector's, so the rollup views fill from it as they do
    // in production. (Waiting for two whole minutes of live data instead cost
    // the suite up to a hundred seconds.)
    const DAY_MS: i64 = 86_400_000;
    let from_ms = range.from_s * 1000;
    // Increases need two buckets: the copy must reach a few scrapes past the
    // first minute's edge, which the data story above usually has already.
    let first = scalar(
        ch,
        &format!("SELECT intDiv(min(ts_ms), 60000) FROM samples WHERE ts_ms >= {from_ms}"),
    );
    while now_ms() < (first + 1) * 60_000 + 10_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cutoff_ms = now_ms();
    let copy = format!(
        "INSERT INTO {DATABASE}.samples (date, cluster, member, name, labels, ts_ms, value) \
         SELECT date - 1, cluster, member, name, labels, ts_ms - {DAY_MS}, value \
         FROM {DATABASE}.samples WHERE ts_ms >= {from_ms} AND ts_ms < {cutoff_ms}"
    );
    let r = http_post(&format!("{ch}/"), copy.as_bytes(), Duration::from_secs(30))
        .expect("copy samples");
    assert_eq!(r.status, 200, "{copy}: {}", r.body);
    // The range ends where the copy's last minute ends, starting where the copy
    // starts (nothing lies before it).
    let end_ms = ((cutoff_ms - DAY_MS) / 60_000 + 1) * 60_000;
    let minute = TimeRange {
        interval_ms: 60_000,
        from_s: range.from_s - DAY_MS / 1000,
        to_s: end_ms / 1000 - 1,
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for d in dashboards(&repo_root().join("grafana/dashboards")) {
        let vars = variables(&d.json);
        let multi = multi_valued(&vars);
        let all = resolve(ch, &d.file, &vars, range, |_, v| Selected::All(v.to_vec()));
        for t in targets(&d.json) {
            let sql = t.sql();
            if !sql.contains("FROM rollup_1m") {
                continue;
            }
            let what = format!("{} / {} (1-minute interval)", d.file, t.title());
            if !sql.contains(RAW_BRANCH) || !sql.contains(ROLLUP_BRANCH) {
                failures.push(format!("{what}: reads rollup_1m without both branches"));
                continue;
            }
            let from_rollup = expand(sql, &all, &multi, minute);
            let forced_raw = sql.replace(RAW_BRANCH, "1").replace(ROLLUP_BRANCH, "0");
            let from_raw = expand(&forced_raw, &all, &multi, minute);
            match (run_sql(ch, &from_rollup), run_sql(ch, &from_raw)) {
                (Ok(a), Ok(b)) => {
                    if let Err(e) = same_answer(&a, &b) {
                        failures.push(format!("{what}: rollup and raw differ: {e}"));
                    }
                    compared += usize::from(!a.rows.is_empty());
                }
                (Err(e), _) | (_, Err(e)) => failures.push(format!("{what}: {e}")),
            }
        }
    }
    eprintln!("{compared} rollup-reading panels answered rows at a 1-minute interval");
    // The data spans a minute's edge: the increases across it are not all empty.
    if compared == 0 {
        failures.push("no rollup-reading panel answered rows at a 1-minute interval".into());
    }
    failures
}

/// Equal rows in the same order, numbers within a relative 1e-9.
fn same_answer(a: &Answer, b: &Answer) -> Result<(), String> {
    if a.rows.len() != b.rows.len() {
        return Err(format!("{} rows against {}", a.rows.len(), b.rows.len()));
    }
    for (x, y) in a.rows.iter().zip(&b.rows) {
        let close = x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(u, v)| match (u.as_f64(), v.as_f64()) {
                    (Some(u), Some(v)) => (u - v).abs() <= 1e-9 * u.abs().max(v.abs()).max(1.0),
                    _ => u == v,
                });
        if !close {
            return Err(format!("{x:?} against {y:?}"));
        }
    }
    Ok(())
}

/// The answer of panel `title`'s first query with every variable on All.
fn answer(ch: &str, file: &str, title: &str, range: TimeRange) -> Answer {
    let d = dashboards(&repo_root().join("grafana/dashboards"))
        .into_iter()
        .find(|d| d.file == file)
        .expect("dashboard");
    let vars = variables(&d.json);
    let settings = resolve(ch, file, &vars, range, |_, v| Selected::All(v.to_vec()));
    let t = targets(&d.json)
        .into_iter()
        .find(|t| t.panel["title"] == title)
        .unwrap_or_else(|| panic!("{file} has no panel {title}"));
    let range = TimeRange {
        interval_ms: t.min_interval_ms().unwrap_or(0).max(range.interval_ms),
        ..range
    };
    let sql = expand(t.sql(), &settings, &BTreeSet::new(), range);
    run_sql(ch, &sql).unwrap_or_else(|e| panic!("{file} {title}: {e}"))
}

/// Every dashboard, with: every variable on All (at Grafana's auto interval
/// and at [`COARSE_MS`]); each region alone; one cluster and one live member
/// alone.
fn check_all(ch: &str, range: TimeRange, alive: &[String], may_be_empty: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let regions: BTreeMap<&str, &str> = CLUSTERS.iter().map(|(c, r)| (*r, *c)).collect();
    for d in dashboards(&repo_root().join("grafana/dashboards")) {
        let vars = variables(&d.json);
        let all = resolve(ch, &d.file, &vars, range, |_, values| {
            Selected::All(values.to_vec())
        });
        for (name, sel) in &all {
            if let Selected::All(values) = sel {
                let want: &[&str] = match name.as_str() {
                    "region" => &["ap-south", "eu-west"],
                    "cluster" => &["ap", "eu"],
                    _ => &[],
                };
                for w in want {
                    assert!(
                        values.iter().any(|v| v == w),
                        "{}: variable {name} lacks {w}: {values:?}",
                        d.file
                    );
                }
            }
        }
        for interval_ms in [range.interval_ms, COARSE_MS] {
            failures.extend(check_panels(
                ch,
                &d,
                &Run {
                    what: format!("all, interval {interval_ms} ms"),
                    settings: all.clone(),
                    want_rows: true,
                    may_be_empty,
                    only: Vec::new(),
                },
                TimeRange {
                    interval_ms,
                    ..range
                },
            ));
        }
        for (region, cluster) in &regions {
            let settings = resolve(ch, &d.file, &vars, range, |v, values| {
                if v.name == "region" {
                    Selected::One((*region).into())
                } else {
                    if v.name == "cluster" {
                        assert_eq!(values, [cluster.to_string()], "clusters of {region}");
                    }
                    Selected::All(values.to_vec())
                }
            });
            failures.extend(check_panels(
                ch,
                &d,
                &Run {
                    what: format!("region {region}"),
                    settings,
                    want_rows: true,
                    may_be_empty,
                    only: vec![
                        ("region", [region.to_string()].into()),
                        ("cluster", [cluster.to_string()].into()),
                    ],
                },
                range,
            ));
        }
        let settings = resolve(ch, &d.file, &vars, range, |v, values| {
            match v.name.as_str() {
                "cluster" => Selected::One("eu".into()),
                "member" => {
                    assert!(values.contains(&alive[0]), "{values:?}");
                    Selected::One(alive[0].clone())
                }
                _ => Selected::All(values.to_vec()),
            }
        });
        failures.extend(check_panels(
            ch,
            &d,
            &Run {
                what: format!("cluster eu, member {}", alive[0]),
                settings,
                want_rows: false,
                may_be_empty,
                // Cluster-wide events and alerts (no member) stay in view.
                only: vec![
                    ("cluster", ["eu".to_string()].into()),
                    ("member", [alive[0].clone(), String::new()].into()),
                ],
            },
            range,
        ));
    }
    failures
}
