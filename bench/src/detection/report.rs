//! The results as Markdown on stdout, ready for `docs/benchmarks.md`: a
//! summary table, every trial's raw figures, the scrape cost and the
//! verdicts against the targets.

use std::io::Write;

use crate::fault::Fault;
use crate::support::fmt_ms;
use crate::trial::{Outcome, Trial};

/// Target: p99 kill -> firing notice of our defaults, ms.
pub const TARGET_FIRING_P99_MS: i64 = 1_000;
/// Target: p99 fault -> firing notice for the other faults (a hung member,
/// an isolated one, NOSPACE), ms.
pub const TARGET_OTHER_FIRING_P99_MS: i64 = 2_000;
/// Target: member recovered -> resolved notice of our defaults, ms.
pub const TARGET_RESOLVED_MS: i64 = 3_000;

/// One system's results.
pub struct SystemResult {
    /// Short name (`ours`, `tuned`, `default`).
    pub name: String,
    /// What ran, with its settings.
    pub title: String,
    /// The alerts timed, in the order of each trial's outcomes.
    pub rules: Vec<String>,
    /// The trials.
    pub trials: Vec<Trial>,
    /// Set when the system could not be measured (start failed, never
    /// quiet): the trials up to then are kept.
    pub error: Option<String>,
}

/// Everything the report needs besides the trials.
pub struct Context {
    /// The command line that ran.
    pub command: String,
    /// The fault every trial injected.
    pub fault: Fault,
    /// Versions of etcd, Prometheus, Alertmanager.
    pub versions: Vec<String>,
    /// Bytes of one `/metrics` answer of a member, if fetched.
    pub scrape_bytes: Option<usize>,
    /// Members per cluster.
    pub members: usize,
    /// The agent's default status and metrics intervals, seconds.
    pub agent_intervals: (f64, f64),
}

/// Quantiles of a sample where `None` is a timeout, i.e. longer than any
/// figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Trials.
    pub n: usize,
    /// Median (mean of the two middle values for an even count).
    pub median: Option<i64>,
    /// Nearest-rank p99: the maximum for up to 100 trials.
    pub p99: Option<i64>,
    /// Maximum.
    pub max: Option<i64>,
}

impl Summary {
    /// Summarises `values`; `None` for an empty sample.
    pub fn of(values: &[Option<i64>]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        // Timeouts sort last.
        v.sort_by_key(|x| x.map_or((1, 0), |ms| (0, ms)));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            match (v[n / 2 - 1], v[n / 2]) {
                (Some(a), Some(b)) => Some((a + b) / 2),
                _ => None,
            }
        };
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Some(Self {
            n,
            median,
            p99: v[rank - 1],
            max: v[n - 1],
        })
    }
}

fn cell(v: Option<i64>) -> String {
    v.map_or_else(|| "timeout".to_owned(), fmt_ms)
}

fn outcomes<'a>(r: &'a SystemResult, j: usize) -> impl Iterator<Item = &'a Outcome> + 'a {
    r.trials.iter().filter_map(move |t| t.outcomes.get(j))
}

/// The summary of one column of one rule: `None` values that are not
/// timeouts (resolved figures of trials that never fired) are left out.
fn column(
    r: &SystemResult,
    j: usize,
    pick: impl Fn(&Outcome) -> Option<Option<i64>>,
) -> Option<Summary> {
    let v: Vec<Option<i64>> = outcomes(r, j).filter_map(pick).collect();
    Summary::of(&v)
}

fn firing(o: &Outcome) -> Option<Option<i64>> {
    Some(o.firing)
}

fn after_healthy(o: &Outcome) -> Option<Option<i64>> {
    o.firing.map(|_| o.resolved_after_healthy)
}

fn after_restart(o: &Outcome) -> Option<Option<i64>> {
    o.firing.map(|_| o.resolved_after_restart)
}

/// Writes the whole report.
pub fn print(out: &mut impl Write, ctx: &Context, results: &[SystemResult]) -> std::io::Result<()> {
    writeln!(out, "## Detection latency\n")?;
    writeln!(out, "Command: `{}`\n", ctx.command)?;
    writeln!(
        out,
        "Fault (`--fault {}`): {}.\n",
        ctx.fault.name(),
        ctx.fault.describe()
    )?;
    for v in &ctx.versions {
        writeln!(out, "- {v}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| system | alert | trials | firing: median | p99 | max | resolved after recovery: median | p99 | max | resolved after restart command: median | p99 | max |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in results {
        for (j, rule) in r.rules.iter().enumerate() {
            let f = column(r, j, firing);
            let h = column(r, j, after_healthy);
            let s = column(r, j, after_restart);
            let q = |x: Option<Summary>| -> [String; 3] {
                x.map_or_else(
                    || ["-".into(), "-".into(), "-".into()],
                    |x| [cell(x.median), cell(x.p99), cell(x.max)],
                )
            };
            let [fm, fp, fx] = q(f);
            let [hm, hp, hx] = q(h);
            let [sm, sp, sx] = q(s);
            writeln!(
                out,
                "| {} | {rule} | {} | {fm} | {fp} | {fx} | {hm} | {hp} | {hx} | {sm} | {sp} | {sx} |",
                r.title,
                f.map_or(0, |x| x.n)
            )?;
        }
        if let Some(e) = &r.error {
            writeln!(out, "| {} | (not completed) | {e} |||||||||| ", r.title)?;
        }
    }
    writeln!(
        out,
        "\np99 is the nearest-rank 99th percentile: with up to 100 trials it is the maximum. \
         \"Recovery\" is the moment the restarted member's `/health` first answered healthy \
         (polled every 50 ms); a negative figure means the resolved notice came first. \
         A timeout counts as longer than any figure.\n"
    )?;

    writeln!(out, "### Every trial\n")?;
    writeln!(
        out,
        "| system | alert | trial | victim | firing | resolved after recovery | after restart command | restart -> healthy | note |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for r in results {
        for (k, t) in r.trials.iter().enumerate() {
            for (j, o) in t.outcomes.iter().enumerate() {
                let resolved = |v: Option<i64>| match o.firing {
                    Some(_) => cell(v),
                    None => "-".to_owned(),
                };
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.name,
                    r.rules[j],
                    k + 1,
                    t.victim,
                    cell(o.firing),
                    resolved(o.resolved_after_healthy),
                    resolved(o.resolved_after_restart),
                    fmt_ms(t.recovery_ms),
                    o.note.as_deref().unwrap_or("")
                )?;
            }
        }
    }

    writeln!(out, "\n### Cost of the tuned configuration\n")?;
    match ctx.scrape_bytes {
        Some(b) => {
            let per_s = b * ctx.members;
            writeln!(
                out,
                "One `/metrics` answer of a member: {b} bytes ({:.0} KB, uncompressed). Scraping {} \
                 members every second (tuned) reads {:.0} KB/s, {:.1} GB/day, and parses and stores \
                 every sample of it. etcd-monitor's agent, at its defaults, reads the same page every \
                 {} s ({:.0} KB/s for {} members) and a status call every {} s.",
                b as f64 / 1000.0,
                ctx.members,
                per_s as f64 / 1000.0,
                per_s as f64 * 86_400.0 / 1e9,
                ctx.agent_intervals.1,
                per_s as f64 / 1000.0 / ctx.agent_intervals.1,
                ctx.members,
                ctx.agent_intervals.0,
            )?;
        }
        None => writeln!(out, "(The `/metrics` page could not be fetched.)")?,
    }

    writeln!(out, "\n### Verdict\n")?;
    let find = |name: &str| results.iter().find(|r| r.name == name);
    match find("ours") {
        Some(ours) if !ours.rules.is_empty() => {
            let f = column(ours, 0, firing);
            let h = column(ours, 0, after_healthy);
            let p99 = f.and_then(|x| x.p99);
            let worst = h.and_then(|x| x.max);
            let target = match ctx.fault {
                Fault::Kill => TARGET_FIRING_P99_MS,
                _ => TARGET_OTHER_FIRING_P99_MS,
            };
            writeln!(
                out,
                "- Firing, p99 under {}: **{}** (p99 {}).",
                fmt_ms(target),
                met(p99.is_some_and(|v| v < target)),
                f.map_or("-".into(), |x| cell(x.p99))
            )?;
            if ctx.fault == Fault::Kill {
                writeln!(
                    out,
                    "- Resolved within {} of recovery, every trial: **{}** (max {}).",
                    fmt_ms(TARGET_RESOLVED_MS),
                    met(worst.is_some_and(|v| v <= TARGET_RESOLVED_MS)),
                    h.map_or("-".into(), |x| cell(x.max))
                )?;
            }
            if let Some(tuned) = find("tuned") {
                let t = column(tuned, 0, firing);
                // A tuned median that timed out is beaten by any figure.
                let beats = match (p99, t) {
                    (Some(a), Some(t)) => t.median.is_none_or(|b| a < b),
                    _ => false,
                };
                writeln!(
                    out,
                    "- Our p99 below the tuned Prometheus's median: **{}** (ours p99 {}, tuned median {}, tuned p99 {}).",
                    met(beats),
                    cell(p99),
                    t.map_or("-".into(), |x| cell(x.median)),
                    t.map_or("-".into(), |x| cell(x.p99)),
                )?;
            }
        }
        _ => writeln!(out, "- etcd-monitor was not measured in this run.")?,
    }
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_even_and_timeouts() {
        let s = Summary::of(&[Some(3), Some(1), Some(2)]).unwrap();
        assert_eq!((s.median, s.p99, s.max), (Some(2), Some(3), Some(3)));
        let s = Summary::of(&[Some(4), Some(1), Some(2), Some(3)]).unwrap();
        assert_eq!(s.median, Some(2));
        let s = Summary::of(&[Some(1), None, Some(2)]).unwrap();
        assert_eq!((s.median, s.p99, s.max), (Some(2), None, None));
        assert_eq!(Summary::of(&[]), None);
        // 200 values: p99 is the 198th smallest, not the maximum.
        let v: Vec<Option<i64>> = (1..=200).map(Some).collect();
        assert_eq!(Summary::of(&v).unwrap().p99, Some(198));
    }

    #[test]
    fn report_has_tables_timeouts_and_verdicts() {
        let trial = |f: Option<i64>, h: Option<i64>| Trial {
            victim: "m0".into(),
            recovery_ms: 1_200,
            outcomes: vec![Outcome {
                firing: f,
                resolved_after_healthy: h,
                resolved_after_restart: h.map(|v| v + 1_200),
                note: f.is_none().then(|| "no firing notice within 30s".into()),
            }],
        };
        let results = [
            SystemResult {
                name: "ours".into(),
                title: "etcd-monitor".into(),
                rules: vec!["member_unreachable".into()],
                trials: vec![trial(Some(400), Some(500)), trial(Some(600), Some(700))],
                error: None,
            },
            SystemResult {
                name: "tuned".into(),
                title: "Prometheus tuned".into(),
                rules: vec!["`up == 0`".into()],
                trials: vec![trial(Some(830), Some(900)), trial(None, None)],
                error: None,
            },
        ];
        let ctx = Context {
            command: "detection-latency".into(),
            fault: Fault::Kill,
            versions: vec!["etcd 3.4.23".into()],
            scrape_bytes: Some(150_000),
            members: 3,
            agent_intervals: (1.0, 5.0),
        };
        let mut out = Vec::new();
        print(&mut out, &ctx, &results).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("| etcd-monitor | member_unreachable | 2 | 0.50 s | 0.60 s | 0.60 s |"),
            "{text}"
        );
        assert!(
            text.contains("| Prometheus tuned | `up == 0` | 2 | timeout | timeout | timeout |"),
            "{text}"
        );
        assert!(text.contains("| tuned | `up == 0` | 2 | m0 | timeout | - | - | 1.20 s | no firing notice within 30s |"), "{text}");
        assert!(text.contains("reads 450 KB/s"), "{text}");
        assert!(text.contains("Firing, p99 under 1.00 s: **met**"), "{text}");
        assert!(
            text.contains("below the tuned Prometheus's median: **met**"),
            "{text}"
        );
    }
}
