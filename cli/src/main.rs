//! `etcdmon`: wiring only.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// etcd-monitor command line.
#[derive(Debug, Parser)]
#[command(name = "etcdmon", version, about)]
struct Cli {
    /// Log level or filter.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a cluster from this machine: agents, collector and API in one process.
    Up(etcdmon::up::UpArgs),
    /// Open, list and end maintenance windows (planned work pages nobody).
    Maintenance(etcdmon::maintenance::MaintenanceArgs),
    /// Test a disk for etcd: fdatasync latency (the fio recipe), sequential
    /// write throughput, random read IOPS, and a verdict.
    Disk(etcdmon::disk::DiskArgs),
}

/// mimalloc rather than glibc's malloc: `etcdmon up` runs the collector,
/// which allocates per sample, and glibc's malloc and free took about 40% of
/// the collector's CPU under load (perf, `ingest-load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    etcdmon_core::telemetry::init(&cli.log_level, etcdmon_core::telemetry::LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdmon: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(args) => {
                let shutdown = etcdmon_core::shutdown::Shutdown::on_signals();
                etcdmon::up::run(args, shutdown).await
            }
            Command::Maintenance(args) => etcdmon::maintenance::run(args).await,
            // Blocking file I/O from start to end: off the runtime's threads.
            Command::Disk(args) => tokio::task::spawn_blocking(move || etcdmon::disk::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("disk test: {e}"))),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
