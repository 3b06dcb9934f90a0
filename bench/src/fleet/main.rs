//! `fleet-query`: how fast the collector's API answers for a whole fleet.
//!
//! # What is measured
//!
//! 1. A store holding a week of a fleet ([`data`]): 50 clusters of 3
//!    members on ClickHouse by default (`--backend sqlite`: 5 clusters),
//!    every member's WAL fsync histogram, db size and a gRPC counter at the
//!    agent's default 5 s metrics interval, with where each member runs.
//! 2. The collector binary's code in this process on that store, and one
//!    live gRPC stream per member sending a status every second (the agent's
//!    default), so the live state holds the whole fleet.
//! 3. Each endpoint, requested `--requests` times one after another over
//!    HTTP, as a client would: p50, p99 and max of the whole exchange.
//!
//! The targets (issue 14): p99 under 20 ms for the current-state endpoints,
//! under 300 ms for a 24 h history query with a quantile, under 1 s for a
//! 7-day comparison of one metric across all clusters. The Grafana
//! dashboards' panel SQL (`grafana/dashboards`) is timed too, with the
//! plugin's macros expanded for the last 24 h, on ClickHouse.
//!
//! A benchmark, not a test: it always exits 0 once it has measured, and
//! prints whether each target is met.

mod data;
mod feed;
mod panels;

use anyhow::Context as _;
use clap::Parser;
use data::Fleet;
use etcdmon_collector::config::CollectorConfig;
use etcdmon_collector::{AlertSink, Collector, Listeners};
use etcdmon_core::shutdown::Shutdown;
use etcdmon_testkit::{http_get, ClickHouseServer};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Clickhouse,
    Sqlite,
}

/// Times the collector's fleet API on a stored week of a fleet.
#[derive(Debug, Parser)]
#[command(name = "fleet-query")]
struct Args {
    /// The store.
    #[arg(long, value_enum, default_value = "clickhouse")]
    backend: Backend,
    /// Clusters of 3 members [default: 50 on ClickHouse, 5 on SQLite].
    #[arg(long)]
    clusters: Option<usize>,
    /// Days of data, ending now.
    #[arg(long, default_value_t = 7)]
    days: i64,
    /// Requests per endpoint (the slowest endpoints get a tenth, at least 5).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Only the requests whose label contains this text (`web`, `Grafana`,
    /// `7-day`, ...); every request when not given.
    #[arg(long)]
    only: Option<String>,
    /// After measuring, keep the store and the collector up until Enter is
    /// pressed, printing where they listen, to try queries by hand.
    #[arg(long)]
    hold: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-query: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn run(args: &Args) -> anyhow::Result<()> {
    etcdmon_core::telemetry::init("warn", etcdmon_core::telemetry::LogFormat::Text);
    let fleet = Fleet {
        clusters: args.clusters.unwrap_or(match args.backend {
            Backend::Clickhouse => 50,
            Backend::Sqlite => 5,
        }),
        days: args.days.max(1),
        end_ms: now_ms(),
    };
    eprintln!(
        "fleet-query: {:?}, {} clusters x {} members, {} days: {} sample rows",
        args.backend,
        fleet.clusters,
        data::MEMBERS,
        fleet.days,
        fleet.rows()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let clickhouse = match args.backend {
        Backend::Clickhouse => Some(ClickHouseServer::start()?),
        Backend::Sqlite => None,
    };
    let url = match &clickhouse {
        Some(server) => format!("clickhouse://127.0.0.1:{}/etcdmon", server.http_port()),
        None => format!("sqlite:{}", dir.path().join("fleet.sqlite").display()),
    };
    let mut cfg = CollectorConfig::default();
    cfg.storage.url = url;
    cfg.grpc.allow_plaintext = true;
    cfg.http.auth.anonymous = Some(etcdmon_collector::config::Role::Admin);
    cfg.validate().context("collector config")?;

    let started = Instant::now();
    let running = rt.block_on(async {
        let running = Collector::serve(
            &cfg,
            Listeners::loopback().await?,
            AlertSink::LogOnly,
            &Shutdown::new(),
        )
        .await?
        .context("stopped while opening the store")?;
        let storage = running.stores.storage.clone();
        for m in fleet.members() {
            storage.record_member(&m).await?;
        }
        anyhow::Ok(running)
    })?;
    match &clickhouse {
        Some(server) => {
            let storage = running.stores.storage.clone();
            rt.block_on(storage.write(&etcdmon_storage::WriteSet {
                series: data::series_rows(&fleet),
                ..Default::default()
            }))?;
            data::fill_clickhouse(server, "etcdmon", &fleet)?;
        }
        None => rt.block_on(data::fill_through_writes(
            running.stores.storage.as_ref(),
            &fleet,
        ))?,
    }
    eprintln!("fleet-query: stored in {:.1?}", started.elapsed());

    let feeders = rt.block_on(feed::start(&running.grpc_url(), &fleet))?;
    let base = format!("http://{}", running.http_addr);
    wait_for_fleet(&base, fleet.clusters)?;

    let n = args.requests.max(5);
    let slow = (n / 10).max(5);
    let c0 = data::cluster_name(0);
    let endpoints: Vec<(&str, String, usize, Option<f64>)> = vec![
        ("current: GET /api/v1/clusters (whole fleet)", "/api/v1/clusters".into(), n, Some(20.0)),
        ("current: GET /api/v1/clusters/{c}", format!("/api/v1/clusters/{c0}"), n, Some(20.0)),
        ("current: GET /api/v1/clusters/{c}/members", format!("/api/v1/clusters/{c0}/members"), n, Some(20.0)),
        ("current: GET /api/v1/clusters?region=eu-west", "/api/v1/clusters?region=eu-west".into(), n, Some(20.0)),
        ("GET /api/v1/clusters/{c}/metrics/current", format!("/api/v1/clusters/{c0}/metrics/current"), slow, None),
        ("GET /api/v1/clusters/{c}/latency", format!("/api/v1/clusters/{c0}/latency"), slow, None),
        (
            "24 h history with a quantile (one cluster, WAL fsync p99 per member)",
            format!("/api/v1/query?metric=etcd_disk_wal_fsync_duration_seconds&fn=quantile&q=0.99&cluster={c0}&from=now-24h"),
            slow,
            Some(300.0),
        ),
        (
            "7-day comparison across all clusters (db size, max per cluster)",
            "/api/v1/compare?metric=etcd_mvcc_db_total_size_in_bytes&from=now-7d".into(),
            slow,
            Some(1000.0),
        ),
        (
            "7-day comparison across all clusters (WAL fsync p99, worst per region)",
            "/api/v1/compare?metric=etcd_disk_wal_fsync_duration_seconds&fn=quantile&q=0.99&by=region&from=now-7d".into(),
            slow,
            None,
        ),
    ];
    println!("\n| request | n | p50 ms | p99 ms | max ms | target | met |");
    println!("|---|---|---|---|---|---|---|");
    let wanted = |label: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| label.contains(o.as_str()))
    };
    for (label, path, n, target) in endpoints {
        if !wanted(label) {
            continue;
        }
        let t = time(n, || {
            let r = http_get(&format!("{base}{path}"), Duration::from_secs(30))?;
            anyhow::ensure!(r.status == 200, "{path}: HTTP {}: {}", r.status, r.body);
            Ok(())
        })?;
        print_row(label, n, &t, target);
    }
    if wanted("web page") {
        render(&base, fleet.clusters)?;
    }
    if let Some(server) = clickhouse.as_ref().filter(|_| wanted("Grafana panel")) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
        let mut slowest = Vec::new();
        for (label, sql) in panels::queries(server, &dir, now_ms())? {
            let t = time(3, || {
                server
                    .query_in("etcdmon", &sql)
                    .map(|_| ())
                    .with_context(|| format!("panel {label}"))
            })?;
            print_row(
                &format!("Grafana panel (24 h, all selected): {label}"),
                3,
                &t,
                None,
            );
            slowest.push((t[t.len() - 1], label));
        }
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!("fleet-query: {} panel queries; slowest:", slowest.len());
        for (ms, label) in slowest.iter().take(5) {
            eprintln!("  {ms:.0} ms  {label}");
        }
    }
    if args.hold {
        if let Some(server) = &clickhouse {
            eprintln!(
                "fleet-query: ClickHouse on 127.0.0.1, HTTP port {}, native port {}, database etcdmon",
                server.http_port(),
                server.tcp_port()
            );
        }
        eprintln!("fleet-query: the collector's API on {base}; press Enter to stop");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    rt.block_on(async {
        feeders.stop().await;
        running.drain().await
    })?;
    Ok(())
}

/// The web page in headless Chromium: from navigation to every cluster's
/// tile drawn, over fresh loads, and what the first load transferred.
fn render(base: &str, clusters: usize) -> anyhow::Result<()> {
    let browser = etcdmon_testkit::browser::Browser::start()?;
    let tiles = r#"[data-testid="cluster-tile"]"#;
    let mut bytes = 0;
    let t = time(5, || {
        browser.goto("about:blank")?;
        let started = Instant::now();
        browser.goto(&format!("{base}/"))?;
        while browser.find_all(tiles)?.len() < clusters {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the overview did not draw {clusters} tiles within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Page, script and stylesheet as transferred (gzipped; cached after the
        // first load, so the largest is the first load); API calls aside.
        let v = browser.eval(
            "const n = performance.getEntriesByType('navigation')[0];
             return n.transferSize + performance.getEntriesByType('resource')
               .filter(r => r.name.includes('/assets/'))
               .reduce((s, r) => s + r.transferSize, 0);",
            serde_json::json!([]),
        )?;
        bytes = bytes.max(v.as_u64().unwrap_or(0));
        Ok(())
    })?;
    print_row(
        &format!("web page: navigation to all {clusters} overview tiles drawn (first load {bytes} bytes transferred)"),
        t.len(),
        &t,
        Some(1000.0),
    );
    Ok(())
}

/// Waits until the live state holds every member of every cluster.
fn wait_for_fleet(base: &str, clusters: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http_get(&format!("{base}/api/v1/clusters"), Duration::from_secs(10))?;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let members: usize = v["clusters"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["members"].as_object().map(|m| m.len()))
                    .sum()
            })
            .unwrap_or(0);
        if members >= clusters * data::MEMBERS {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {members} members live after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `f` run `n` times: latencies in ms, sorted.
fn time(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn print_row(label: &str, n: usize, sorted: &[f64], target: Option<f64>) {
    let q = |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1];
    let p99 = q(0.99);
    let (target, met) = match target {
        Some(t) => (
            format!("p99 < {t} ms"),
            if p99 < t { "yes" } else { "**no**" },
        ),
        None => ("-".to_owned(), "-"),
    };
    println!(
        "| {label} | {n} | {:.1} | {:.1} | {:.1} | {target} | {met} |",
        q(0.5),
        p99,
        sorted[sorted.len() - 1]
    );
}
