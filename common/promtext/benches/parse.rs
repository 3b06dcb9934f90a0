//! Throughput on a real etcd `/metrics` payload, against two crates.io parsers.
//!
//! Each function does a full parse and then touches every sample value and
//! every label, so that no parser gets credit for work it defers (the other
//! two keep values as strings or maps; reading them is part of the job).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ETCD: &str = include_str!("../tests/fixtures/etcd-3.4.23.txt");

fn etcdmon_promtext(text: &str) -> (f64, usize) {
    let exp = etcdmon_promtext::parse(text);
    let mut sum = 0.0;
    let mut label_bytes = 0;
    for s in exp.samples() {
        sum += s.value;
        for l in exp.labels(s) {
            label_bytes += l.name.len() + l.value().len();
        }
    }
    (sum, label_bytes + exp.families().len())
}

fn prom_text_format_parser(text: &str) -> (f64, usize) {
    let scrape = prom_text_format_parser::Scrape::parse(text).expect("fixture parses");
    let mut sum = 0.0;
    let mut label_bytes = 0;
    for m in &scrape.metrics {
        for s in &m.samples {
            sum += s.value.value.as_f64();
            for l in s.labels.iter() {
                label_bytes += l.key.len() + l.value.len();
            }
        }
    }
    (sum, label_bytes + scrape.metrics.len())
}

fn prometheus_parse(text: &str) -> (f64, usize) {
    use prometheus_parse::Value;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("fixture parses");
    let mut sum = 0.0;
    let mut label_bytes = 0;
    for s in &scrape.samples {
        sum += match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.less_than + b.count).sum(),
            Value::Summary(q) => q.iter().map(|b| b.quantile + b.count).sum(),
        };
        for (k, v) in s.labels.iter() {
            label_bytes += k.len() + v.len();
        }
    }
    (sum, label_bytes + scrape.docs.len())
}

fn bench_parse(c: &mut Criterion) {
    // Guard against comparing a parser that silently fails on the input.
    assert_eq!(etcdmon_promtext::parse(ETCD).error_count(), 0);
    assert!(prom_text_format_parser(ETCD).0 > 0.0);
    assert!(prometheus_parse(ETCD).0 > 0.0);

    let mut group = c.benchmark_group("parse_etcd_metrics");
    group.throughput(Throughput::Bytes(ETCD.len() as u64));
    group.bench_function("etcdmon_promtext", |b| {
        b.iter(|| etcdmon_promtext(black_box(ETCD)))
    });
    group.bench_function("prom_text_format_parser", |b| {
        b.iter(|| prom_text_format_parser(black_box(ETCD)))
    });
    group.bench_function("prometheus_parse", |b| {
        b.iter(|| prometheus_parse(black_box(ETCD)))
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
