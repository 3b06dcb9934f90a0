//! One system's trials: inject a fault (`kill -9` of a member by default,
//! see [`Fault`]), time the firing webhook, remove the fault, time the
//! resolved webhook.
//!
//! Both systems post Alertmanager's webhook JSON (version 4) to the same
//! kind of receiver, the test kit's `HttpSink`, which stamps every request
//! with its arrival time on the wall clock. A [`Probe`] says which alert in
//! those bodies stands for "the victim is down" in one system; the runner
//! only reads the sink, so it times every system the same way:
//!
//! 1. Wait until the system is quiet: every member healthy, no probe's
//!    alert firing in the sink for any member, and the system's own
//!    readiness check ([`System::not_quiet`]) satisfied, all continuously
//!    for the settle time. Then wait a random time, uniform in one cycle
//!    of the system's periodic work ([`Pacing::jitter`]), so the kill
//!    lands at a random phase of its scrape, evaluation and flush timers
//!    instead of a fixed one (the end of the previous trial is itself tied
//!    to those timers).
//! 2. `t0` = wall clock just before the fault is injected into the victim
//!    (for `kill`, SIGKILL of the members in turn; `nospace` takes the
//!    moment the refused write returned); firing latency = arrival of the
//!    first request after `t0` whose body has the probe's alert for the
//!    victim with status `firing`, minus `t0`.
//! 3. `t_restart` = just before the fault is removed (for `kill`, the
//!    restart); once every member's `/health` says healthy: `t_healthy`.
//!    The resolved notice is the first request after the firing one with
//!    the alert `resolved`; its latency is reported from `t_healthy` (the
//!    recovery) and from `t_restart`.
//!
//! A probe that does not fire (or resolve) within its timeout is recorded
//! as a timeout, never dropped.
//!
//! Victims rotate over the members, so with 3 members each is killed every
//! third trial. etcd-monitor's alerter deliberately holds an alert that
//! fires and resolves too often (flap detection, on by default); trials of
//! a system with such damping are spaced ([`Pacing::per_member`]) so that
//! every trial is a separate incident, not a crash loop.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use etcdmon_testkit::{EtcdCluster, HttpSink, SinkRequest};
use serde_json::Value as Json;

use crate::fault::Fault;
use crate::support::{blocking, fmt_ms, now_ms};

/// The member killed in a trial, as each system names it.
#[derive(Debug, Clone)]
pub struct Victim {
    /// etcd member name (`m0`), etcd-monitor's `member` label.
    pub name: String,
    /// `host:port` Prometheus scrapes it on, its `instance` label.
    pub target: String,
}

impl Victim {
    /// Member `i` of `cluster`.
    pub fn of(cluster: &EtcdCluster, i: usize) -> Self {
        let m = cluster.member(i);
        Self {
            name: m.name.clone(),
            target: scrape_target(&m.metrics_url),
        }
    }
}

/// `host:port` of a metrics URL: what Prometheus puts in `instance`.
pub fn scrape_target(metrics_url: &str) -> String {
    let rest = metrics_url
        .split_once("://")
        .map_or(metrics_url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Which alert in a webhook body means "the victim is down".
#[derive(Debug, Clone)]
pub enum Matcher {
    /// etcd-monitor: `labels.rule` and `labels.member == victim name`.
    Member {
        /// The rule name, e.g. `member_unreachable`.
        rule: String,
    },
    /// Prometheus per-target rule: `labels.alertname` and
    /// `labels.instance == victim target`.
    Instance {
        /// The alert name.
        alertname: String,
    },
    /// Prometheus rule about the whole cluster (the mixin aggregates the
    /// instance away): `labels.alertname` only.
    Cluster {
        /// The alert name.
        alertname: String,
    },
    /// etcd-monitor rule about the whole cluster (`alarm_active`):
    /// `labels.rule` only.
    Rule {
        /// The rule name.
        rule: String,
    },
}

impl Matcher {
    /// Whether `alert` (one element of a body's `alerts`) is this probe's
    /// alert for `victim`.
    pub fn matches(&self, alert: &Json, victim: &Victim) -> bool {
        let labels = &alert["labels"];
        match self {
            Matcher::Member { rule } => {
                labels["rule"] == **rule && labels["member"] == *victim.name
            }
            Matcher::Instance { alertname } => {
                labels["alertname"] == **alertname && labels["instance"] == *victim.target
            }
            Matcher::Cluster { alertname } => labels["alertname"] == **alertname,
            Matcher::Rule { rule } => labels["rule"] == **rule,
        }
    }
}

/// One alert of one system that is timed.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Row label in the report, e.g. `up == 0`.
    pub rule: String,
    /// Path prefix of the system's webhook on the sink.
    pub path: String,
    /// Which alert it is.
    pub matcher: Matcher,
    /// Longest wait for the firing notice, from the kill.
    pub fire_timeout: Duration,
    /// Longest wait for the resolved notice, from the member's recovery.
    pub resolve_timeout: Duration,
}

/// A system under test, as the runner sees it.
pub trait System {
    /// Name used in progress lines and the report.
    fn name(&self) -> &str;
    /// The alerts timed in each trial.
    fn probes(&self) -> &[Probe];
    /// `Ok(None)` when the system's own view is quiet and healthy (e.g. it
    /// has seen every member up), else why not. Blocking.
    fn not_quiet(&self) -> Result<Option<String>>;
    /// Fails when one of the system's processes has exited.
    fn ensure_running(&self) -> Result<()>;
}

/// What one probe saw in one trial; latencies in ms.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Kill to firing notice; `None`: timed out.
    pub firing: Option<i64>,
    /// Member healthy again to resolved notice (negative if the notice came
    /// first); `None`: timed out or never fired.
    pub resolved_after_healthy: Option<i64>,
    /// Restart command to resolved notice.
    pub resolved_after_restart: Option<i64>,
    /// Why a figure is missing.
    pub note: Option<String>,
}

/// One trial: the victim, how long its restart took, and one outcome per
/// probe (in [`System::probes`] order).
#[derive(Debug, Clone)]
pub struct Trial {
    /// Member killed.
    pub victim: String,
    /// Restart command to healthy, ms.
    pub recovery_ms: i64,
    /// Per probe.
    pub outcomes: Vec<Outcome>,
}

/// How the runner paces a system.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// Trials to run.
    pub trials: usize,
    /// How long the quiet state must hold before a kill.
    pub settle: Duration,
    /// Longest wait for the quiet state.
    pub quiet_timeout: Duration,
    /// The kill comes a random time in `[0, jitter)` after the quiet state
    /// settled: one period of the system's timers.
    pub jitter: Duration,
    /// At most this many kills of one member within this span, so that
    /// each trial is a separate incident to a system that damps repeated
    /// ones (see [`flap_spacing`]).
    pub per_member: Option<(usize, Duration)>,
}

/// The spacing that keeps every trial clear of the alerter's flap
/// detection, which holds an alert with `max_transitions` transitions
/// within `window`: a member killed at most `k` times within `window` plus
/// `margin` (the time one trial takes to resolve) shows at most `2k + 1`
/// transitions in any window (the resolve of the kill before those `k`,
/// two per kill in it), so `k = (max_transitions - 2) / 2`. `None` when
/// detection is off.
pub fn flap_spacing(
    max_transitions: usize,
    window: Duration,
    margin: Duration,
) -> Option<(usize, Duration)> {
    (max_transitions > 0).then(|| {
        (
            (max_transitions.saturating_sub(2) / 2).max(1),
            window + margin,
        )
    })
}

/// Every alert in the sink's requests under `path`, with the request's
/// arrival time, in arrival order.
fn alerts(requests: &[SinkRequest]) -> Vec<(i64, Json)> {
    requests
        .iter()
        .flat_map(|r| {
            let body = r.json();
            let list = body["alerts"].as_array().cloned().unwrap_or_default();
            list.into_iter().map(move |a| (r.received_ms, a))
        })
        .collect()
}

/// Arrival time of the first request at or after `since_ms` that carries
/// `matcher`'s alert for `victim` with `status`.
pub fn first_with_status(
    requests: &[SinkRequest],
    matcher: &Matcher,
    victim: &Victim,
    status: &str,
    since_ms: i64,
) -> Option<i64> {
    alerts(requests)
        .into_iter()
        .find(|(t, a)| *t >= since_ms && a["status"] == status && matcher.matches(a, victim))
        .map(|(t, _)| t)
}

/// The status of the last notice about `matcher`'s alert for `victim`.
pub fn last_status(requests: &[SinkRequest], matcher: &Matcher, victim: &Victim) -> Option<String> {
    alerts(requests)
        .into_iter()
        .rev()
        .find(|(_, a)| matcher.matches(a, victim))
        .and_then(|(_, a)| a["status"].as_str().map(str::to_owned))
}

/// Runs `pacing.trials` trials of `system` on `cluster`, appending each
/// to `trials` as it completes (so an error keeps the ones before it).
pub async fn run(
    system: &dyn System,
    cluster: &mut EtcdCluster,
    sink: &HttpSink,
    pacing: &Pacing,
    fault: Fault,
    trials: &mut Vec<Trial>,
) -> Result<()> {
    let n = cluster.members().len();
    let mut kills: Vec<Vec<Instant>> = vec![Vec::new(); n];
    for k in 0..pacing.trials {
        wait_quiet(system, cluster, sink, pacing)
            .await
            .with_context(|| format!("{}: trial {} never became quiet", system.name(), k + 1))?;
        let i = fault.victim(cluster, k).await?;
        let victim = Victim::of(cluster, i);
        if let Some((limit, span)) = pacing.per_member {
            let past = &kills[i];
            if past.len() >= limit {
                let not_before = past[past.len() - limit] + span;
                let wait = not_before.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    eprintln!(
                        "[{}] waiting {:.1} s before killing {} again: at most {limit} kills of one \
                         member per {} s, so the alerter's flap detection does not hold the alert",
                        system.name(),
                        wait.as_secs_f64(),
                        victim.name,
                        span.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    wait_quiet(system, cluster, sink, pacing)
                        .await
                        .with_context(|| {
                            format!("{}: trial {} never became quiet", system.name(), k + 1)
                        })?;
                }
            }
        }
        let jitter_ms = pacing.jitter.as_millis() as u64;
        if jitter_ms > 0 {
            let delay = rand::random_range(0..jitter_ms);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        eprintln!(
            "[{}] trial {}/{}: {} {} ({})",
            system.name(),
            k + 1,
            pacing.trials,
            fault.name(),
            victim.name,
            victim.target
        );
        kills[i].push(Instant::now());
        let t0 = fault.inject(cluster, i).await?;

        let probes = system.probes();
        let fired = wait_all(
            system,
            sink,
            probes
                .iter()
                .map(|p| (p, "firing", t0, t0, p.fire_timeout))
                .collect(),
            &victim,
        )
        .await?;
        let mut outcomes: Vec<Outcome> = fired
            .iter()
            .zip(probes)
            .map(|(at, p)| Outcome {
                firing: at.map(|t| t - t0),
                note: at
                    .is_none()
                    .then(|| format!("no firing notice within {:?}", p.fire_timeout)),
                ..Outcome::default()
            })
            .collect();
        for (o, p) in outcomes.iter().zip(probes) {
            match o.firing {
                Some(ms) => eprintln!(
                    "[{}]   {}: firing after {}",
                    system.name(),
                    p.rule,
                    fmt_ms(ms)
                ),
                None => eprintln!(
                    "[{}]   {}: TIMEOUT (no firing notice)",
                    system.name(),
                    p.rule
                ),
            }
        }

        let t_restart = now_ms();
        fault
            .heal(cluster, i)
            .await
            .with_context(|| format!("remove the {} fault of {}", fault.name(), victim.name))?;
        let t_healthy = now_ms();
        eprintln!(
            "[{}]   {} healthy again {} after the fault was removed",
            system.name(),
            victim.name,
            fmt_ms(t_healthy - t_restart)
        );
        let pending = probes
            .iter()
            .zip(&fired)
            .filter_map(|(p, at)| at.map(|t| (p, "resolved", t, t_healthy, p.resolve_timeout)))
            .collect();
        let resolved = wait_all(system, sink, pending, &victim).await?;
        let mut resolved = resolved.into_iter();
        for (o, p) in outcomes.iter_mut().zip(probes) {
            if o.firing.is_none() {
                continue;
            }
            match resolved.next().flatten() {
                Some(t) => {
                    o.resolved_after_healthy = Some(t - t_healthy);
                    o.resolved_after_restart = Some(t - t_restart);
                    eprintln!(
                        "[{}]   {}: resolved {} after healthy ({} after the restart command)",
                        system.name(),
                        p.rule,
                        fmt_ms(t - t_healthy),
                        fmt_ms(t - t_restart)
                    );
                }
                None => {
                    o.note = Some(format!(
                        "no resolved notice within {:?} of recovery",
                        p.resolve_timeout
                    ));
                    eprintln!(
                        "[{}]   {}: TIMEOUT (no resolved notice)",
                        system.name(),
                        p.rule
                    );
                }
            }
        }
        trials.push(Trial {
            victim: victim.name,
            recovery_ms: t_healthy - t_restart,
            outcomes,
        });
    }
    Ok(())
}

/// Waits for each `(probe, status, since_ms, clock_start_ms, timeout)`:
/// the arrival time of the first notice with `status` at or after
/// `since_ms`, or `None` once `timeout` has passed since `clock_start_ms`.
async fn wait_all(
    system: &dyn System,
    sink: &HttpSink,
    waits: Vec<(&Probe, &str, i64, i64, Duration)>,
    victim: &Victim,
) -> Result<Vec<Option<i64>>> {
    let mut found: Vec<Option<i64>> = vec![None; waits.len()];
    let mut done = vec![false; waits.len()];
    let started = Instant::now();
    let mut next_progress = Duration::from_secs(30);
    while done.iter().any(|d| !d) {
        for (j, (probe, status, since, clock_start, timeout)) in waits.iter().enumerate() {
            if done[j] {
                continue;
            }
            let requests = sink.requests(&probe.path);
            if let Some(t) = first_with_status(&requests, &probe.matcher, victim, status, *since) {
                found[j] = Some(t);
                done[j] = true;
            } else if now_ms() - clock_start >= timeout.as_millis() as i64 {
                done[j] = true;
            }
        }
        if started.elapsed() >= next_progress && done.iter().any(|d| !d) {
            eprintln!(
                "[{}]   still waiting ({} s) for {}",
                system.name(),
                started.elapsed().as_secs(),
                waits
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| !**d)
                    .map(|((p, s, ..), _)| format!("{} {s}", p.rule))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            next_progress += Duration::from_secs(30);
        }
        blocking(|| system.ensure_running())?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(found)
}

/// Waits until every member is healthy, no probe's alert is firing in the
/// sink for any member, and the system says it is quiet, continuously for
/// `pacing.settle`.
async fn wait_quiet(
    system: &dyn System,
    cluster: &EtcdCluster,
    sink: &HttpSink,
    pacing: &Pacing,
) -> Result<()> {
    let deadline = Instant::now() + pacing.quiet_timeout;
    let mut quiet_since: Option<Instant> = None;
    loop {
        blocking(|| system.ensure_running())?;
        let reason = blocking(|| quiet_reason(system, cluster, sink))?;
        match reason {
            None => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= pacing.settle {
                    return Ok(());
                }
            }
            Some(why) => {
                quiet_since = None;
                if Instant::now() >= deadline {
                    anyhow::bail!("not quiet within {:?}: {why}", pacing.quiet_timeout);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quiet_reason(
    system: &dyn System,
    cluster: &EtcdCluster,
    sink: &HttpSink,
) -> Result<Option<String>> {
    for m in cluster.members() {
        if !matches!(m.check_health(Duration::from_secs(1)), Ok(true)) {
            return Ok(Some(format!("etcd member {} is not healthy", m.name)));
        }
    }
    for i in 0..cluster.members().len() {
        let victim = Victim::of(cluster, i);
        for p in system.probes() {
            let requests = sink.requests(&p.path);
            if last_status(&requests, &p.matcher, &victim).as_deref() == Some("firing") {
                return Ok(Some(format!("{} is firing for {}", p.rule, victim.name)));
            }
        }
    }
    system.not_quiet()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(received_ms: i64, body: &str) -> SinkRequest {
        SinkRequest {
            method: "POST".into(),
            path: "/hook".into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            received_ms,
        }
    }

    fn victim() -> Victim {
        Victim {
            name: "m1".into(),
            target: "127.0.0.1:2379".into(),
        }
    }

    #[test]
    fn flap_spacing_from_the_alerters_settings() {
        let w = Duration::from_secs(600);
        let m = Duration::from_secs(60);
        assert_eq!(flap_spacing(6, w, m), Some((2, Duration::from_secs(660))));
        assert_eq!(flap_spacing(8, w, m).map(|x| x.0), Some(3));
        assert_eq!(flap_spacing(0, w, m), None);
    }

    #[test]
    fn scrape_target_is_host_and_port() {
        assert_eq!(
            scrape_target("http://127.0.0.1:2379/metrics"),
            "127.0.0.1:2379"
        );
        assert_eq!(scrape_target("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn finds_the_victims_alert_by_status_and_time() {
        let ours = Matcher::Member {
            rule: "member_unreachable".into(),
        };
        let requests = [
            request(
                100,
                r#"{"alerts":[{"status":"firing","labels":{"rule":"member_unreachable","member":"m0"}}]}"#,
            ),
            request(
                200,
                r#"{"alerts":[{"status":"firing","labels":{"rule":"leader_changed","member":"m1"}},
                              {"status":"firing","labels":{"rule":"member_unreachable","member":"m1"}}]}"#,
            ),
            request(
                300,
                r#"{"alerts":[{"status":"resolved","labels":{"rule":"member_unreachable","member":"m1"}}]}"#,
            ),
            request(400, "not json"),
        ];
        let v = victim();
        assert_eq!(
            first_with_status(&requests, &ours, &v, "firing", 0),
            Some(200)
        );
        assert_eq!(first_with_status(&requests, &ours, &v, "firing", 201), None);
        assert_eq!(
            first_with_status(&requests, &ours, &v, "resolved", 200),
            Some(300)
        );
        assert_eq!(
            last_status(&requests, &ours, &v).as_deref(),
            Some("resolved")
        );
        assert_eq!(
            last_status(&requests[..2], &ours, &v).as_deref(),
            Some("firing")
        );
    }

    #[test]
    fn prometheus_alerts_match_by_instance_or_cluster() {
        let up = Matcher::Instance {
            alertname: "EtcdMemberDown".into(),
        };
        let mixin = Matcher::Cluster {
            alertname: "etcdMembersDown".into(),
        };
        let requests = [request(
            5,
            r#"{"version":"4","alerts":[
                {"status":"firing","labels":{"alertname":"EtcdMemberDown","instance":"127.0.0.1:9","job":"etcd"}},
                {"status":"firing","labels":{"alertname":"etcdMembersDown","job":"etcd"}}]}"#,
        )];
        let v = victim();
        assert_eq!(first_with_status(&requests, &up, &v, "firing", 0), None);
        assert_eq!(
            first_with_status(&requests, &mixin, &v, "firing", 0),
            Some(5)
        );
        let other = Victim {
            name: "m2".into(),
            target: "127.0.0.1:9".into(),
        };
        assert_eq!(
            first_with_status(&requests, &up, &other, "firing", 0),
            Some(5)
        );
    }
}
