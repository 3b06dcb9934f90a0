//! Parses a real etcd 3.4.23 `/metrics` payload and cross-checks it against
//! two independent parsers.

use std::collections::BTreeMap;

use etcdmon_promtext::{parse, parse_into, Exposition, MetricType};

const ETCD: &str = include_str!("fixtures/etcd-3.4.23.txt");

/// Lines that are neither blank nor comments, counted without our parser.
fn sample_line_count(text: &str) -> usize {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn family<'e, 'a>(exp: &'e Exposition<'a>, name: &str) -> &'e etcdmon_promtext::Family<'a> {
    let mut matching = exp.families().iter().filter(|f| f.name == name);
    let f = matching
        .next()
        .unwrap_or_else(|| panic!("no family {name}"));
    assert!(matching.next().is_none(), "family {name} is split");
    f
}

#[test]
fn fixture_parses_without_errors() {
    let exp = parse(ETCD);
    assert_eq!(exp.errors(), &[]);
    assert_eq!(exp.error_count(), 0);
    assert_eq!(exp.samples().len(), sample_line_count(ETCD));
    assert_eq!(exp.samples().len(), 1290);
    assert_eq!(
        exp.samples().len() + exp.non_sample_lines(),
        ETCD.lines().count()
    );
}

#[test]
fn fixture_families_follow_type_lines() {
    let exp = parse(ETCD);
    let type_lines: Vec<(&str, &str)> = ETCD
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').expect("type word"))
        .collect();
    assert_eq!(exp.families().len(), type_lines.len());
    assert_eq!(exp.families().len(), 127);
    for (f, (name, word)) in exp.families().iter().zip(&type_lines) {
        assert_eq!(f.name, *name);
        assert_eq!(f.kind.as_str(), *word);
        let help = f.help.unwrap_or_else(|| panic!("{name} has no help"));
        assert!(ETCD.contains(&format!("# HELP {name} {help}\n")));
        assert!(!exp.family_samples(f).is_empty(), "{name} has no samples");
        for s in exp.family_samples(f) {
            assert!(s.name.starts_with(f.name), "{} in {}", s.name, f.name);
        }
    }
    let total: usize = exp
        .families()
        .iter()
        .map(|f| exp.family_samples(f).len())
        .sum();
    assert_eq!(total, exp.samples().len());
}

#[test]
fn fixture_cluster_version() {
    let exp = parse(ETCD);
    let f = family(&exp, "etcd_cluster_version");
    assert_eq!(f.kind, MetricType::Gauge);
    assert_eq!(
        f.help,
        Some(
            "Which version is running. 1 for 'cluster_version' label with current cluster version"
        )
    );
    let samples = exp.family_samples(f);
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(s.name, "etcd_cluster_version");
    assert_eq!(s.value, 1.0);
    assert_eq!(s.timestamp_ms, None);
    let labels = exp.labels(s);
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].name, "cluster_version");
    assert_eq!(labels[0].value(), "3.4");
    // It is the first sample of the payload (line 3).
    assert_eq!(exp.samples()[0], *s);
}

#[test]
fn fixture_wal_fsync_histogram() {
    let exp = parse(ETCD);
    let f = family(&exp, "etcd_disk_wal_fsync_duration_seconds");
    assert_eq!(f.kind, MetricType::Histogram);
    let samples = exp.family_samples(f);
    let buckets: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "etcd_disk_wal_fsync_duration_seconds_bucket")
        .collect();
    assert_eq!(buckets.len(), 15);
    assert_eq!(samples.len(), 17);
    let les: Vec<String> = buckets
        .iter()
        .map(|s| exp.label(s, "le").expect("le label").value().into_owned())
        .collect();
    assert_eq!(les.first().map(String::as_str), Some("0.001"));
    assert_eq!(les.last().map(String::as_str), Some("+Inf"));
    let bounds: Vec<f64> = les
        .iter()
        .map(|le| le.parse().expect("le is a float"))
        .collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{les:?}");
    let counts: Vec<f64> = buckets.iter().map(|s| s.value).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(counts[0], 200.0);
    assert_eq!(counts[14], 212.0);
    assert_eq!(samples[15].name, "etcd_disk_wal_fsync_duration_seconds_sum");
    assert_eq!(samples[15].value, 0.1173204870000001);
    assert_eq!(
        samples[16].name,
        "etcd_disk_wal_fsync_duration_seconds_count"
    );
    assert_eq!(samples[16].value, 212.0);
}

#[test]
fn fixture_grpc_handled_total() {
    let exp = parse(ETCD);
    let f = family(&exp, "grpc_server_handled_total");
    assert_eq!(f.kind, MetricType::Counter);
    let samples = exp.family_samples(f);
    assert_eq!(samples.len(), 697);
    for s in samples {
        let names: Vec<&str> = exp.labels(s).iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            ["grpc_code", "grpc_method", "grpc_service", "grpc_type"]
        );
    }
    let aborted_alarm = samples
        .iter()
        .find(|s| {
            exp.label(s, "grpc_code").map(|l| l.raw_value()) == Some("Aborted")
                && exp.label(s, "grpc_method").map(|l| l.raw_value()) == Some("Alarm")
        })
        .expect("Aborted/Alarm sample");
    assert_eq!(aborted_alarm.value, 0.0);
    assert_eq!(
        exp.label(aborted_alarm, "grpc_service").map(|l| l.value()),
        Some("etcdserverpb.Maintenance".into())
    );
}

#[test]
fn fixture_go_gc_summary() {
    let exp = parse(ETCD);
    let f = family(&exp, "go_gc_duration_seconds");
    assert_eq!(f.kind, MetricType::Summary);
    let samples = exp.family_samples(f);
    let quantiles: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.name == f.name)
        .map(|s| {
            (
                exp.label(s, "quantile")
                    .expect("quantile")
                    .value()
                    .into_owned(),
                s.value,
            )
        })
        .collect();
    assert_eq!(
        quantiles,
        vec![
            ("0".to_string(), 1.5812e-05),
            ("0.25".to_string(), 2.2263e-05),
            ("0.5".to_string(), 9.3416e-05),
            ("0.75".to_string(), 0.000108646),
            ("1".to_string(), 0.00039708),
        ]
    );
    assert_eq!(samples.len(), 7);
}

#[test]
fn fixture_recycled_parse_is_identical() {
    let first = parse(ETCD);
    let expected: Vec<_> = first
        .samples()
        .iter()
        .map(|s| (s.name, s.value, first.labels(s).to_vec()))
        .collect();
    let families = first.families().to_vec();
    let copy = ETCD.to_string();
    let mut again = first.recycle();
    parse_into(&copy, &mut again);
    let got: Vec<_> = again
        .samples()
        .iter()
        .map(|s| (s.name, s.value, again.labels(s).to_vec()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(again.families(), &families[..]);
}

/// `(name, labels, value bits)`, with `le`/`quantile` normalised through
/// `f64` because `prometheus-parse` only keeps them as numbers.
type Flat = (String, BTreeMap<String, String>, u64);

fn normalise(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for key in ["le", "quantile"] {
        if let Some(v) = labels.get_mut(key) {
            if let Ok(f) = v.parse::<f64>() {
                *v = f.to_string();
            }
        }
    }
    labels
}

#[test]
fn fixture_matches_prometheus_parse() {
    use prometheus_parse::{Scrape, Value};

    let theirs = Scrape::parse(ETCD.lines().map(|l| Ok(l.to_string()))).expect("scrape");
    let mut their_flat: Vec<Flat> = Vec::new();
    for s in &theirs.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                their_flat.push((s.metric.clone(), normalise(labels), v.to_bits()));
            }
            Value::Histogram(buckets) => {
                for b in buckets {
                    let mut l = labels.clone();
                    l.insert("le".into(), b.less_than.to_string());
                    their_flat.push((format!("{}_bucket", s.metric), l, b.count.to_bits()));
                }
            }
            Value::Summary(quantiles) => {
                for q in quantiles {
                    let mut l = labels.clone();
                    l.insert("quantile".into(), q.quantile.to_string());
                    their_flat.push((s.metric.clone(), l, q.count.to_bits()));
                }
            }
        }
    }

    let exp = parse(ETCD);
    let mut our_flat: Vec<Flat> = exp
        .samples()
        .iter()
        .map(|s| {
            let labels = exp
                .labels(s)
                .iter()
                .map(|l| (l.name.to_string(), l.raw_value().to_string()))
                .collect();
            (s.name.to_string(), normalise(labels), s.value.to_bits())
        })
        .collect();

    assert_eq!(our_flat.len(), their_flat.len());
    our_flat.sort();
    their_flat.sort();
    for (ours, theirs) in our_flat.iter().zip(&their_flat) {
        assert_eq!(ours, theirs);
    }
}

#[test]
fn fixture_matches_prom_text_format_parser() {
    use prom_text_format_parser::{Scrape, Type};

    let theirs = Scrape::parse(ETCD).expect("scrape");
    let exp = parse(ETCD);
    assert_eq!(theirs.metrics.len(), exp.families().len());
    for (m, f) in theirs.metrics.iter().zip(exp.families()) {
        assert_eq!(m.name, f.name);
        let kind = match m.kind {
            Type::Counter => MetricType::Counter,
            Type::Gauge => MetricType::Gauge,
            Type::Histogram => MetricType::Histogram,
            Type::Summary => MetricType::Summary,
            Type::Untyped => MetricType::Untyped,
        };
        assert_eq!(kind, f.kind, "{}", f.name);
        assert_eq!(m.help_desc.as_deref(), f.help, "{}", f.name);
        let ours = exp.family_samples(f);
        assert_eq!(m.samples.len(), ours.len(), "{}", f.name);
        for (ts, os) in m.samples.iter().zip(ours) {
            assert_eq!(ts.value.value.as_f64().to_bits(), os.value.to_bits());
            assert_eq!(ts.value.timestamp, os.timestamp_ms);
            let their_labels: Vec<(&str, &str)> = ts
                .labels
                .iter()
                .map(|l| (l.key.as_str(), l.value.as_str()))
                .collect();
            let our_labels: Vec<(&str, &str)> = exp
                .labels(os)
                .iter()
                .map(|l| (l.name, l.raw_value()))
                .collect();
            assert_eq!(their_labels, our_labels, "{}", os.name);
        }
    }
}
