//! `detection-latency`: how long after `kill -9` of one member of a
//! 3-member etcd cluster a webhook hears about it, and how long after the
//! member's recovery it hears that it is resolved, for etcd-monitor with
//! its default settings and for Prometheus + Alertmanager in their default
//! and in a tuned-to-the-limit configuration.
//!
//! # What is measured
//!
//! Each system gets a fresh 3-member etcd cluster (Debian's etcd, through
//! `etcdmon-testkit`) and a fresh webhook receiver (the test kit's
//! `HttpSink`, which stamps each request's arrival). Then, per trial
//! ([`trial`]): wait until quiet, SIGKILL the next member in turn, time the
//! firing notice; restart the member, time the resolved notice from the
//! moment it is healthy again and from the restart command.
//!
//! * `ours` ([`ours`]): nats-server, the collector on SQLite, one agent per
//!   member and the alerter, all at their defaults.
//! * `tuned`, `default` ([`prom`]): Prometheus scraping the members'
//!   `/metrics` and Alertmanager, with the rules and settings described
//!   there; `--mixin` adds the etcd mixin's `etcdMembersDown` to `default`.
//!
//! Systems run one after the other, never side by side, so none slows
//! another down. Trials of `ours` are spaced so that no member is killed
//! more than twice within the alerter's default flap window (10 minutes)
//! plus a minute: 10 trials then take about 12 minutes, mostly waiting. The report ([`report`]) goes to stdout as Markdown,
//! progress to stderr. Benchmarks are programs, not timed assertions: the
//! exit status is 0 once everything was measured, whatever the figures,
//! and 1 if a system could not be measured.

mod fault;
mod ours;
mod prom;
mod report;
mod support;
mod trial;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use etcdmon_testkit::{http_get, EtcdCluster, HttpSink};

use crate::fault::Fault;
use crate::prom::Profile;
use crate::report::SystemResult;
use crate::support::blocking;
use crate::trial::{Pacing, System, Trial};

/// Members of the etcd cluster.
const MEMBERS: usize = 3;
/// Added to the alerter's flap window when spacing kills of one member:
/// longer than one trial's kill-to-resolved time.
const FLAP_MARGIN: Duration = Duration::from_secs(60);

/// Times alert notifications for a killed etcd member: etcd-monitor at its
/// defaults against Prometheus + Alertmanager, default and tuned.
#[derive(Debug, Parser)]
#[command(name = "detection-latency")]
struct Args {
    /// Trials of `ours` and `tuned` [default: 10; --quick: 3].
    #[arg(long)]
    trials: Option<usize>,
    /// Systems to measure, in this order [default: ours,tuned,default;
    /// --quick: ours,tuned].
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Option<Vec<SystemArg>>,
    /// Trials of `default`: each takes minutes (about 2 until firing, 5
    /// until resolved).
    #[arg(long, default_value_t = 1)]
    default_trials: usize,
    /// Also time the etcd mixin's `etcdMembersDown` in `default`; the
    /// member then stays down until it fires (about `--mixin-for` plus
    /// 2 minutes).
    #[arg(long)]
    mixin: bool,
    /// `for` of the mixin rule; etcd-io/etcd's `contrib/mixin` says 10m.
    #[arg(long, default_value = "10m", value_parser = parse_prom_duration)]
    mixin_for: String,
    /// Seconds the quiet state (every member healthy, nothing firing) must
    /// hold before each kill [default: 3; --quick: 2].
    #[arg(long)]
    settle_seconds: Option<u64>,
    /// A short run for smoke testing (the defaults in brackets after
    /// "--quick:"; explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// The fault each trial injects (see `fault.rs`). Faults other than
    /// `kill` run etcd-monitor's alerter without flap detection, so that
    /// trials can follow each other (flap detection only holds back
    /// repeated notices of one alert, never the first one of an incident).
    #[arg(long, value_enum, default_value = "kill")]
    fault: Fault,
}

/// A system to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SystemArg {
    /// etcd-monitor at its default settings.
    Ours,
    /// Prometheus + Alertmanager tuned to the limit.
    Tuned,
    /// Prometheus + Alertmanager at their defaults.
    Default,
}

/// A Prometheus duration such as `10m` or `1h30m`.
fn parse_prom_duration(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || "smhdwy".contains(c))
        && s.ends_with(|c: char| !c.is_ascii_digit());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a Prometheus duration like 10m or 1h30m"
        ))
    }
}

impl Args {
    fn trials(&self) -> usize {
        self.trials
            .unwrap_or(if self.quick { 3 } else { 10 })
            .max(1)
    }

    fn systems(&self) -> Vec<SystemArg> {
        self.systems.clone().unwrap_or_else(|| {
            if self.quick {
                vec![SystemArg::Ours, SystemArg::Tuned]
            } else {
                vec![SystemArg::Ours, SystemArg::Tuned, SystemArg::Default]
            }
        })
    }

    fn pacing(&self, system: SystemArg) -> Pacing {
        let settle = self
            .settle_seconds
            .unwrap_or(if self.quick { 2 } else { 3 });
        let (trials, quiet_timeout) = match system {
            SystemArg::Ours | SystemArg::Tuned => (self.trials(), Duration::from_secs(120)),
            // The first scrape may come a whole interval after the start.
            SystemArg::Default => (self.default_trials.max(1), Duration::from_secs(600)),
        };
        // etcd-monitor's alerter holds an alert that fires and resolves too
        // often (its default `[flapping]`); trials must be separate incidents.
        let per_member = match system {
            SystemArg::Ours if self.fault == Fault::Kill => {
                let flap = etcdmon_alerter::flap::FlapConfig::default();
                trial::flap_spacing(flap.max_transitions, flap.window, FLAP_MARGIN)
            }
            _ => None,
        };
        // One period of the system's timers: the agent's status poll, or
        // Prometheus's scrape and evaluation interval.
        let jitter = match system {
            SystemArg::Ours => {
                etcdmon_agent::config::AgentConfig::default()
                    .status
                    .interval
            }
            SystemArg::Tuned => Duration::from_secs(1),
            SystemArg::Default => Duration::from_secs(60),
        };
        Pacing {
            trials,
            settle: Duration::from_secs(settle),
            quiet_timeout,
            jitter,
            per_member,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("detection-latency: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measures every system and prints the report; `Ok(false)` when one could
/// not be measured completely.
async fn run(args: &Args) -> Result<bool> {
    let command = std::iter::once("bench/detection-latency".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "detection-latency: fault {}, systems {:?}, {} trials, {} default trial(s), mixin {}",
        args.fault.name(),
        args.systems(),
        args.trials(),
        args.default_trials,
        if args.mixin {
            args.mixin_for.as_str()
        } else {
            "off"
        }
    );
    let mut ctx = report::Context {
        command,
        fault: args.fault,
        versions: vec![
            prom::version("etcd", "etcd-server"),
            prom::version("prometheus", "prometheus"),
            prom::version("prometheus-alertmanager", "prometheus-alertmanager"),
        ],
        scrape_bytes: None,
        members: MEMBERS,
        agent_intervals: {
            let c = etcdmon_agent::config::AgentConfig::default();
            (
                c.status.interval.as_secs_f64(),
                c.metrics.interval.as_secs_f64(),
            )
        },
    };
    let mut results = Vec::new();
    for system in args.systems() {
        let mut result = SystemResult {
            name: format!("{system:?}").to_lowercase(),
            title: title(system, args),
            rules: Vec::new(),
            trials: Vec::new(),
            error: None,
        };
        if let Err(e) = measure(system, args, &mut ctx, &mut result).await {
            eprintln!("[{}] FAILED: {e:#}", result.name);
            result.error = Some(format!("{e:#}").replace('\n', " "));
        }
        results.push(result);
    }
    let mut out = std::io::stdout().lock();
    report::print(&mut out, &ctx, &results).context("write the report")?;
    Ok(results.iter().all(|r| r.error.is_none()))
}

/// The report's name for a system, with its settings.
fn title(system: SystemArg, args: &Args) -> String {
    match system {
        SystemArg::Ours => "**etcd-monitor, default settings**".to_owned(),
        SystemArg::Tuned => format!(
            "Prometheus + Alertmanager, tuned ({})",
            Profile::Tuned.describe()
        ),
        SystemArg::Default => {
            let mixin = if args.mixin {
                format!(", mixin `for: {}`", args.mixin_for)
            } else {
                String::new()
            };
            format!(
                "Prometheus + Alertmanager, defaults ({}{mixin})",
                Profile::Default.describe()
            )
        }
    }
}

/// Starts a cluster, the system and the sink, and runs the trials into
/// `result` (kept when a later trial fails).
async fn measure(
    system: SystemArg,
    args: &Args,
    ctx: &mut report::Context,
    result: &mut SystemResult,
) -> Result<()> {
    eprintln!("[{}] starting a {MEMBERS}-member etcd cluster", result.name);
    let mut cluster = blocking(|| {
        args.fault
            .cluster(EtcdCluster::builder().members(MEMBERS))
            .start()
    })
    .context("start etcd")?;
    if ctx.scrape_bytes.is_none() {
        let url = cluster.member(0).metrics_url.clone();
        ctx.scrape_bytes = blocking(|| http_get(&url, Duration::from_secs(5)))
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body.len());
    }
    let sink = HttpSink::start().context("start the webhook sink")?;
    let start_timeout = Duration::from_secs(60);
    let stack: Box<dyn System> = match system {
        SystemArg::Ours => Box::new(
            ours::OurStack::start(&cluster, &sink, start_timeout, args.fault)
                .await
                .context("start etcd-monitor")?,
        ),
        SystemArg::Tuned => Box::new(
            prom::PromStack::start(
                Profile::Tuned,
                &cluster,
                &sink,
                None,
                start_timeout,
                args.fault,
            )
            .await
            .context("start Prometheus and Alertmanager")?,
        ),
        SystemArg::Default => Box::new(
            prom::PromStack::start(
                Profile::Default,
                &cluster,
                &sink,
                args.mixin.then_some(args.mixin_for.as_str()),
                start_timeout,
                args.fault,
            )
            .await
            .context("start Prometheus and Alertmanager")?,
        ),
    };
    result.rules = stack.probes().iter().map(|p| p.rule.clone()).collect();
    eprintln!("[{}] started; waiting until quiet", result.name);
    let trials: &mut Vec<Trial> = &mut result.trials;
    trial::run(
        stack.as_ref(),
        &mut cluster,
        &sink,
        &args.pacing(system),
        args.fault,
        trials,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_and_explicit_flags() {
        let a = Args::parse_from(["x", "--quick"]);
        assert_eq!(a.trials(), 3);
        assert_eq!(a.systems(), [SystemArg::Ours, SystemArg::Tuned]);
        let a = Args::parse_from(["x", "--systems", "default,ours", "--trials", "5"]);
        assert_eq!(a.systems(), [SystemArg::Default, SystemArg::Ours]);
        assert_eq!(a.pacing(SystemArg::Ours).trials, 5);
        assert_eq!(a.pacing(SystemArg::Default).trials, 1);
        assert_eq!(a.mixin_for, "10m");
    }

    #[test]
    fn mixin_for_must_be_a_prometheus_duration() {
        assert!(parse_prom_duration("20m").is_ok());
        assert!(parse_prom_duration("1h30m").is_ok());
        for bad in ["", "m", "10", "10 m", "-1m"] {
            assert!(parse_prom_duration(bad).is_err(), "{bad}");
        }
    }
}
