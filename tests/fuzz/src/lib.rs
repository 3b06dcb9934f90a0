//! Fuzz targets: each takes arbitrary bytes and drives one of etcdmon's input
//! paths the way untrusted or operator-written input reaches it. A target
//! passes when it returns; a panic, a hang or an out-of-memory abort is a
//! finding.
//!
//! The same functions are driven two ways:
//! - by libFuzzer, coverage-guided, from `tests/fuzz/libfuzzer/` on a nightly
//!   toolchain (`scripts/fuzz`), which grows the corpus;
//! - by `tests/replay.rs` on stable, in every test run: every file of the
//!   committed corpus (`tests/fuzz/corpus/<target>/`) and a fixed set of
//!   deterministic mutations of it, so a fixed finding stays fixed.
//!
//! | target | input | path |
//! |---|---|---|
//! | [`promtext`] | bytes | etcd's `/metrics` text through the parser, every value and label read |
//! | [`report_rows`] | protobuf `Report` | agent report to stored rows (the collector's conversion) |
//! | [`live_state`] | protobuf `Report`s | agent reports applied to the live state, then every rule evaluated |
//! | [`time_range`] | `from\nto` | the API's `from`/`to` parameters |
//! | [`matcher`] | text | an alert matcher (silences, routes, inhibition) parsed and matched |
//! | [`template`] | text | a receiver's custom template compiled and rendered |

use std::collections::BTreeMap;

use etcdmon_proto::v1::{Identity, Report};
use prost::Message as _;

/// A fuzz target: arbitrary bytes in, a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and libFuzzer binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("promtext", promtext),
    ("report_rows", report_rows),
    ("live_state", live_state),
    ("time_range", time_range),
    ("matcher", matcher),
    ("template", template),
];

/// Parses `data` as Prometheus text and reads every family, sample, label and
/// value, so lazily computed parts are exercised too.
pub fn promtext(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let exposition = etcdmon_promtext::parse(text);
    let mut seen = exposition.error_count() + exposition.non_sample_lines();
    for family in exposition.families() {
        seen += family.name.len() + family.help.map_or(0, str::len);
        for sample in exposition.family_samples(family) {
            seen += sample.name.len() + usize::from(sample.value.is_nan());
            for label in exposition.labels(sample) {
                seen += label.name.len() + label.value().len();
            }
        }
    }
    for sample in exposition.samples() {
        seen += usize::from(exposition.label(sample, "le").is_some());
    }
    std::hint::black_box(seen);
}

/// Decodes a `Report` and converts it to sample and series rows.
pub fn report_rows(data: &[u8]) {
    let Ok(report) = Report::decode(data) else {
        return;
    };
    let target = etcdmon_collector::ingest::convert::Target {
        cluster: "fuzz",
        member: "m0",
    };
    let (samples, series) = etcdmon_collector::ingest::convert::report_rows(&target, &report);
    std::hint::black_box((samples.len(), series.len()));
}

/// Splits `data` into up to four length-prefixed `Report`s from up to three
/// members and applies them to one live state (stamped one second apart), then
/// evaluates every built-in rule twice.
pub fn live_state(data: &[u8]) {
    use etcdmon_collector::rules::{config::RuleSet, Rules};
    use etcdmon_collector::state::LiveState;
    let state = LiveState::new(std::time::Duration::from_secs(30));
    let mut rules = Rules::new(RuleSet::default());
    let mut rest = data;
    let mut t = 1_000_000_i64;
    for _ in 0..4 {
        let Some((&head, tail)) = rest.split_first() else {
            break;
        };
        let len = usize::from(head & 0x3f).min(tail.len()) * 16;
        let len = len.min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        let Ok(report) = Report::decode(msg) else {
            continue;
        };
        let member = head >> 6;
        let id = Identity {
            cluster: "fuzz".into(),
            member_name: format!("m{member}"),
            member_id: u64::from(member) + 1,
            node: "node".into(),
            ..Default::default()
        };
        state.apply_at(&id, &report, t);
        std::hint::black_box(rules.evaluate(&state.snapshot_at(t), t));
        t += 1_000;
    }
    std::hint::black_box(rules.evaluate(&state.snapshot_at(t + 60_000), t + 60_000));
}

/// The API's `from` and `to` parameters (`data` is `from\nto`): on success the
/// range is ordered and within the bounds every query relies on.
pub fn time_range(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (from, to) = text.split_once('\n').unwrap_or((text, "now"));
    if let Ok((from_ms, to_ms)) =
        etcdmon_collector::api::parse_range(Some(from), Some(to), 3_600_000)
    {
        assert!(from_ms <= to_ms, "{from:?} {to:?} -> {from_ms} > {to_ms}");
        assert!(from_ms >= 0, "{from:?} -> {from_ms}");
        assert!(
            to_ms <= etcdmon_collector::api::MAX_TIME_MS,
            "{to:?} -> {to_ms}"
        );
    }
}

/// Parses a matcher and matches it against a few label sets.
pub fn matcher(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = etcdmon_alert::Matcher::parse(text) else {
        return;
    };
    let sets: [BTreeMap<String, String>; 3] = [
        BTreeMap::new(),
        etcdmon_alert::labels(&[("cluster", "prod"), ("rule", "member_unreachable")]),
        etcdmon_alert::labels(&[("", ""), ("a", "\u{0}\u{ffff}")]),
    ];
    for labels in &sets {
        std::hint::black_box(m.matches(labels));
    }
}

/// Compiles `data` as a custom receiver template and renders it with a real
/// notification's context (the alerter's own example).
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    etcdmon_alerter::template::fuzz_render(text);
}
