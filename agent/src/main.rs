//! `etcdmon-agent`: wiring only. Parses flags, loads config, starts tracing
//! and the ops server, and runs the chosen command until done or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use etcdmon_agent::cli::{self, Cli, Command};
use etcdmon_agent::output::{render_all, render_one};
use etcdmon_agent::runner::Probes;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_proto::v1::report::Body;
use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    etcdmon_agent::allocator::tune();
    let cli = Cli::parse();
    let cfg = match cli::load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcdmon-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    etcdmon_core::telemetry::init(&cfg.log.level, cfg.log.format);
    // One thread is plenty for an agent that mostly waits; blocking probes
    // (fsync, /proc scans) run on the small blocking pool. This keeps RSS
    // and CPU low beside the etcd it watches.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdmon-agent: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("etcdmon-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, mut cfg: etcdmon_agent::AgentConfig) -> anyhow::Result<ExitCode> {
    etcdmon_agent::fill_from_local_etcd(&mut cfg);
    let metrics = AgentMetrics::new();
    match cli.command.unwrap_or(Command::Run) {
        Command::Collect { once: true, format } => {
            let mut probes = Probes::new(&cfg, metrics)?;
            let reports = probes.collect_once().await;
            print!("{}", render_all(&reports, format));
            // The operator asked "can the agent see etcd?": answer with the exit code.
            let unreachable = reports.iter().find_map(|r| match &r.body {
                Some(Body::Status(s)) if !s.reachable => Some(
                    s.failures
                        .first()
                        .map(|f| f.message.clone())
                        .unwrap_or_default(),
                ),
                _ => None,
            });
            if let Some(reason) = unreachable {
                eprintln!(
                    "etcdmon-agent: etcd endpoint {} unreachable: {reason}",
                    cfg.etcd.endpoint
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Collect {
            once: false,
            format,
        } => {
            let probes = Probes::new(&cfg, metrics.clone())?;
            let shutdown = Shutdown::on_signals();
            let listener = etcdmon_core::ops::bind(cfg.http.listen).await?;
            tracing::info!(addr = %cfg.http.listen, "serving /metrics and /healthz");
            let router = etcdmon_core::ops::router(metrics.registry().clone(), probes.health());
            let ops = shutdown.spawn_server(
                "ops server",
                etcdmon_core::ops::serve(listener, router, shutdown.token()),
            );
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let tasks = probes.spawn(tx, shutdown.token());
            // stdout may block (a slow pipe); write from a blocking thread so
            // the probes and /healthz keep running. When the reader falls
            // behind, the channel fills and reports are dropped and counted
            // rather than buffered without bound.
            let printer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut out = std::io::stdout().lock();
                while let Some(r) = rx.blocking_recv() {
                    out.write_all(render_one(&r, format).as_bytes())?;
                    out.flush()?;
                }
                Ok(())
            });
            futures::future::join_all(tasks).await;
            printer
                .await
                .context("stdout task")?
                .context("write to stdout")?;
            ops.await.context("ops server task")?;
            match shutdown.failure() {
                Some(reason) => anyhow::bail!(reason),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Run => {
            if cfg.upstream.address.is_none() {
                eprintln!(
                    "etcdmon-agent: no collector address: set --collector or upstream.address \
                     (or use `etcdmon-agent collect` to print results here)"
                );
                return Ok(ExitCode::from(2));
            }
            if cfg.identity.cluster == etcdmon_core::DEFAULT_CLUSTER {
                tracing::warn!(
                    cluster = etcdmon_core::DEFAULT_CLUSTER,
                    "identity.cluster is not set: reporting under the default name; give every \
                     agent of one etcd cluster the same name (--cluster) so clusters do not mix"
                );
            }
            let shutdown = Shutdown::on_signals();
            let ops = etcdmon_core::ops::bind(cfg.http.listen).await?;
            tracing::info!(addr = %cfg.http.listen, "serving /metrics and /healthz");
            let agent = Agent::serve(&cfg, metrics, Some(ops), &shutdown)?;
            shutdown.cancelled().await;
            agent.drain().await?;
            match shutdown.failure() {
                Some(reason) => anyhow::bail!(reason),
                None => Ok(ExitCode::SUCCESS),
            }
        }
    }
}
