//! Turns agent reports into sample rows.
//!
//! etcd's own metrics keep their names and labels. Everything else the
//! agent measures becomes a sample under an `etcdmon_` name, so one query
//! path (and one Grafana datasource) serves all of it:
//!
//! | report | metric names |
//! |---|---|
//! | status | `etcdmon_status_up`, `etcdmon_status_is_leader`, `etcdmon_status_has_leader`, `etcdmon_status_leader_id`, `etcdmon_status_raft_term`, `etcdmon_status_raft_index`, `etcdmon_status_raft_applied_index`, `etcdmon_status_db_size_bytes`, `etcdmon_status_db_size_in_use_bytes`, `etcdmon_status_alarms{alarm}`, `etcdmon_status_members`, `etcdmon_status_learners`, `etcdmon_status_latency_seconds`, `etcdmon_read_latency_seconds{mode}`, `etcdmon_read_up{mode}`, `etcdmon_status_revision` |
//! | host | `etcdmon_host_cpu_utilization`, `etcdmon_host_load1`, `etcdmon_host_memory_available_bytes`, `etcdmon_host_fs_available_bytes`, `etcdmon_host_disk_utilization`, `etcdmon_host_disk_await_seconds`, `etcdmon_host_net_rx_bytes_total{interface}`, `etcdmon_process_rss_bytes`, `etcdmon_process_open_fds`, ... |
//! | fsync | `etcdmon_fsync_probe_seconds{quantile}`, `etcdmon_fsync_probe_up` |
//! | peers | `etcdmon_peer_rtt_seconds{peer}`, `etcdmon_peer_up{peer}` |
//! | certs | `etcdmon_cert_days_left{path,role}` |
//! | every report | `etcdmon_probe_failures{collector,call,kind}` per failure |

use etcdmon_proto::v1::{
    report::Body, CertExpiry, ErrorKind, EtcdStatus, FsyncProbe, HostMetrics, Label, MetricType,
    MetricsScrape, PeerRtt, Report,
};
use etcdmon_storage::{canonical_labels, SampleRow, SeriesRow};
use std::sync::Arc;

/// Where a report's rows go.
pub struct Target<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Member name (or id in hex).
    pub member: &'a str,
}

struct Out<'a> {
    t: &'a Target<'a>,
    /// `t`'s strings, made once per report and shared by its rows.
    cluster: Arc<str>,
    member: Arc<str>,
    ts: i64,
    rows: Vec<SampleRow>,
}

impl Out<'_> {
    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.rows.push(SampleRow {
            cluster: self.cluster.clone(),
            member: self.member.clone(),
            name: name.to_string(),
            labels: canonical_labels(labels.iter().copied()),
            ts_ms: self.ts,
            value,
        });
    }

    fn gauge(&mut self, name: &str, value: f64) {
        self.push(name, &[], value);
    }
}

/// Samples of one report, and the series metadata of etcd's metrics.
pub fn report_rows(t: &Target<'_>, r: &Report) -> (Vec<SampleRow>, Vec<SeriesRow>) {
    report_rows_where(t, r, |_, _| true)
}

/// [`report_rows`], with a series row only for the series `new_series(name, labels)`
/// accepts (the collector's set of series it has already written). Deciding before
/// building the row saves five allocations for every sample of a known series, which
/// is nearly every sample after the first scrape.
pub fn report_rows_where(
    t: &Target<'_>,
    r: &Report,
    mut new_series: impl FnMut(&str, &str) -> bool,
) -> (Vec<SampleRow>, Vec<SeriesRow>) {
    let mut out = Out {
        t,
        cluster: t.cluster.into(),
        member: t.member.into(),
        ts: r.timestamp_unix_ms,
        rows: Vec::new(),
    };
    let mut series = Vec::new();
    match &r.body {
        Some(Body::Metrics(m)) => metrics(&mut out, m, &mut series, &mut new_series),
        Some(Body::Status(s)) => status(&mut out, s),
        Some(Body::Host(h)) => host(&mut out, h),
        Some(Body::Fsync(f)) => fsync(&mut out, f),
        Some(Body::PeerRtt(p)) => peers(&mut out, p),
        Some(Body::Certs(c)) => certs(&mut out, c),
        None => {}
    }
    if let Some(body) = &r.body {
        for f in body.failures() {
            let kind = ErrorKind::try_from(f.kind)
                .unwrap_or(ErrorKind::Other)
                .short_name();
            out.push(
                "etcdmon_probe_failures",
                &[
                    ("collector", body.kind()),
                    ("call", &f.call),
                    ("kind", kind),
                ],
                1.0,
            );
        }
    }
    (out.rows, series)
}

fn metrics(
    out: &mut Out<'_>,
    m: &MetricsScrape,
    series: &mut Vec<SeriesRow>,
    new_series: &mut impl FnMut(&str, &str) -> bool,
) {
    out.gauge(
        "etcdmon_scrape_up",
        if m.failure.is_none() { 1.0 } else { 0.0 },
    );
    if m.failure.is_some() {
        return;
    }
    out.gauge("etcdmon_scrape_parse_errors", f64::from(m.parse_errors));
    out.rows
        .reserve(m.families.iter().map(|f| f.samples.len()).sum());
    for f in &m.families {
        let ty = type_name(f.r#type);
        for s in &f.samples {
            // NaN is "no value" in the exposition (a summary quantile with
            // no observations); storing it would mean something else to
            // SQLite (NULL) than to ClickHouse, so neither stores it.
            if s.value.is_nan() {
                continue;
            }
            let ts = if s.timestamp_unix_ms != 0 {
                s.timestamp_unix_ms
            } else {
                out.ts
            };
            let labels = sample_labels(&s.labels);
            if new_series(&s.name, &labels) {
                series.push(SeriesRow {
                    cluster: out.t.cluster.to_string(),
                    member: out.t.member.to_string(),
                    name: s.name.clone(),
                    labels: labels.clone(),
                    metric_type: ty.to_string(),
                    seen_ms: ts,
                });
            }
            out.rows.push(SampleRow {
                cluster: out.cluster.clone(),
                member: out.member.clone(),
                name: s.name.clone(),
                labels,
                ts_ms: ts,
                value: s.value,
            });
        }
    }
}

/// [`canonical_labels`] of a sample's labels, built in one allocation.
///
/// This runs for every sample of every scrape, so the usual case takes a
/// shortcut: the agent keeps the exposition's label order, which etcd (like
/// every Prometheus Go client) writes sorted by name, and values seldom hold
/// a character that needs escaping. Labels not strictly sorted by name go
/// through [`canonical_labels`] itself; the output is the same either way.
fn sample_labels(labels: &[Label]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    if !labels.windows(2).all(|w| w[0].name < w[1].name) {
        return canonical_labels(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
    }
    // name="value" per label, commas between.
    let len = labels
        .iter()
        .map(|l| l.name.len() + l.value.len() + 4)
        .sum::<usize>()
        - 1;
    let mut out = String::with_capacity(len);
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&l.name);
        out.push_str("=\"");
        if l.value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            for c in l.value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
        } else {
            out.push_str(&l.value);
        }
        out.push('"');
    }
    out
}

fn type_name(t: i32) -> &'static str {
    match MetricType::try_from(t).unwrap_or(MetricType::Untyped) {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        MetricType::Summary => "summary",
        MetricType::Untyped | MetricType::Unspecified => "untyped",
    }
}

fn bool_f(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn status(out: &mut Out<'_>, s: &EtcdStatus) {
    out.gauge("etcdmon_status_up", bool_f(s.reachable));
    if s.reachable {
        out.gauge(
            "etcdmon_status_is_leader",
            bool_f(s.leader_id != 0 && s.leader_id == s.member_id),
        );
        out.gauge("etcdmon_status_has_leader", bool_f(s.leader_id != 0));
        out.gauge("etcdmon_status_leader_id", s.leader_id as f64);
        out.gauge("etcdmon_status_raft_term", s.raft_term as f64);
        out.gauge("etcdmon_status_raft_index", s.raft_index as f64);
        out.gauge(
            "etcdmon_status_raft_applied_index",
            s.raft_applied_index as f64,
        );
        out.gauge("etcdmon_status_db_size_bytes", s.db_size_bytes as f64);
        out.gauge(
            "etcdmon_status_db_size_in_use_bytes",
            s.db_size_in_use_bytes as f64,
        );
        out.gauge("etcdmon_status_latency_seconds", s.status_latency_seconds);
        out.gauge("etcdmon_status_is_learner", bool_f(s.is_learner));
    }
    if !s.members.is_empty() {
        out.gauge("etcdmon_status_members", s.members.len() as f64);
        out.gauge(
            "etcdmon_status_learners",
            s.members.iter().filter(|m| m.is_learner).count() as f64,
        );
    }
    for a in &s.alarms {
        let id = format!("{:x}", a.member_id);
        out.push(
            "etcdmon_status_alarms",
            &[("alarm", &a.alarm), ("alarm_member", &id)],
            1.0,
        );
    }
    for (mode, p) in [
        ("linearizable", &s.linearizable_read),
        ("serializable", &s.serializable_read),
    ] {
        if let Some(p) = p {
            out.push(
                "etcdmon_read_up",
                &[("mode", mode)],
                bool_f(p.failure.is_none()),
            );
            if p.failure.is_none() {
                out.push(
                    "etcdmon_read_latency_seconds",
                    &[("mode", mode)],
                    p.latency_seconds,
                );
            }
        }
    }
    if s.revision > 0 {
        out.gauge("etcdmon_status_revision", s.revision as f64);
    }
}

fn host(out: &mut Out<'_>, h: &HostMetrics) {
    if let Some(c) = &h.cpu {
        out.gauge("etcdmon_host_cpu_utilization", c.utilization);
        out.gauge("etcdmon_host_cpu_iowait", c.iowait_utilization);
        out.gauge("etcdmon_host_cpu_cores", f64::from(c.cores));
        out.gauge("etcdmon_host_load1", c.load1);
        out.gauge("etcdmon_host_load5", c.load5);
        out.gauge("etcdmon_host_load15", c.load15);
        out.gauge("etcdmon_host_procs_running", f64::from(c.procs_running));
        out.gauge("etcdmon_host_procs_blocked", f64::from(c.procs_blocked));
        if c.psi_some_avg10 >= 0.0 {
            out.gauge("etcdmon_host_cpu_pressure", c.psi_some_avg10);
        }
    }
    if let Some(m) = &h.memory {
        out.gauge("etcdmon_host_memory_total_bytes", m.total_bytes as f64);
        out.gauge(
            "etcdmon_host_memory_available_bytes",
            m.available_bytes as f64,
        );
        out.gauge("etcdmon_host_memory_used_bytes", m.used_bytes as f64);
        out.gauge("etcdmon_host_swap_used_bytes", m.swap_used_bytes as f64);
        if m.psi_some_avg10 >= 0.0 {
            out.gauge("etcdmon_host_memory_pressure", m.psi_some_avg10);
        }
    }
    if let Some(fs) = &h.filesystem {
        out.gauge("etcdmon_host_fs_total_bytes", fs.total_bytes as f64);
        out.gauge("etcdmon_host_fs_available_bytes", fs.available_bytes as f64);
        out.gauge("etcdmon_host_fs_inodes_total", fs.inodes_total as f64);
        out.gauge("etcdmon_host_fs_inodes_free", fs.inodes_free as f64);
    }
    if let Some(d) = &h.disk {
        let dev = [("device", d.device.as_str())];
        out.push("etcdmon_host_disk_utilization", &dev, d.utilization);
        out.push("etcdmon_host_disk_await_seconds", &dev, d.await_ms / 1000.0);
        out.push("etcdmon_host_disk_queue_depth", &dev, d.queue_depth);
        out.push("etcdmon_host_disk_read_iops", &dev, d.read_iops);
        out.push("etcdmon_host_disk_write_iops", &dev, d.write_iops);
        out.push(
            "etcdmon_host_disk_read_bytes_per_second",
            &dev,
            d.read_bytes_per_second,
        );
        out.push(
            "etcdmon_host_disk_write_bytes_per_second",
            &dev,
            d.write_bytes_per_second,
        );
    }
    for i in &h.interfaces {
        let l = [("interface", i.name.as_str())];
        out.push("etcdmon_host_net_rx_bytes_total", &l, i.rx_bytes as f64);
        out.push("etcdmon_host_net_tx_bytes_total", &l, i.tx_bytes as f64);
        out.push(
            "etcdmon_host_net_errors_total",
            &l,
            (i.rx_errors + i.tx_errors) as f64,
        );
        out.push(
            "etcdmon_host_net_drops_total",
            &l,
            (i.rx_drops + i.tx_drops) as f64,
        );
    }
    if let Some(p) = &h.process {
        out.gauge("etcdmon_process_found", bool_f(p.pid != 0));
        if p.pid != 0 {
            out.gauge("etcdmon_process_cpu_cores", p.cpu_cores);
            out.gauge("etcdmon_process_rss_bytes", p.rss_bytes as f64);
            out.gauge("etcdmon_process_open_fds", p.open_fds as f64);
            if p.max_fds != u64::MAX {
                out.gauge("etcdmon_process_max_fds", p.max_fds as f64);
            }
            out.gauge("etcdmon_process_threads", p.threads as f64);
        }
    }
}

fn fsync(out: &mut Out<'_>, f: &FsyncProbe) {
    out.gauge("etcdmon_fsync_probe_up", bool_f(f.failure.is_none()));
    if f.failure.is_none() && f.writes > 0 {
        out.push(
            "etcdmon_fsync_probe_seconds",
            &[("quantile", "0.5")],
            f.p50_seconds,
        );
        out.push(
            "etcdmon_fsync_probe_seconds",
            &[("quantile", "0.99")],
            f.p99_seconds,
        );
        out.push(
            "etcdmon_fsync_probe_seconds",
            &[("quantile", "1")],
            f.max_seconds,
        );
    }
}

fn peers(out: &mut Out<'_>, p: &PeerRtt) {
    for r in &p.peers {
        let peer = if r.member_name.is_empty() {
            format!("{:x}", r.member_id)
        } else {
            r.member_name.clone()
        };
        let l = [("peer", peer.as_str()), ("url", r.url.as_str())];
        out.push("etcdmon_peer_up", &l, bool_f(r.failure.is_none()));
        if r.failure.is_none() {
            out.push("etcdmon_peer_rtt_seconds", &l, r.rtt_seconds);
        }
    }
}

fn certs(out: &mut Out<'_>, c: &CertExpiry) {
    for cert in &c.certificates {
        if cert.failure.is_none() {
            let role = etcdmon_proto::v1::CertRole::try_from(cert.role)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("CERT_ROLE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push(
                "etcdmon_cert_days_left",
                &[("path", &cert.path), ("role", &role)],
                cert.days_left,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_proto::v1::{MetricFamily, Sample};

    fn report(body: Body) -> Report {
        Report {
            timestamp_unix_ms: 1_000,
            identity: None,
            duration_seconds: 0.0,
            body: Some(body),
        }
    }

    #[test]
    fn etcd_metrics_keep_names_and_labels() {
        let r = report(Body::Metrics(MetricsScrape {
            families: vec![MetricFamily {
                name: "h".into(),
                r#type: MetricType::Histogram as i32,
                samples: vec![Sample {
                    name: "h_bucket".into(),
                    labels: vec![Label {
                        name: "le".into(),
                        value: "+Inf".into(),
                    }],
                    value: 3.0,
                    timestamp_unix_ms: 0,
                }],
            }],
            ..Default::default()
        }));
        let t = Target {
            cluster: "c",
            member: "m",
        };
        let (rows, series) = report_rows(&t, &r);
        let s = rows.iter().find(|s| s.name == "h_bucket").expect("bucket");
        assert_eq!(s.labels, "le=\"+Inf\"");
        assert_eq!((s.ts_ms, s.value), (1_000, 3.0));
        assert_eq!(series[0].metric_type, "histogram");
        assert!(rows
            .iter()
            .any(|s| s.name == "etcdmon_scrape_up" && s.value == 1.0));

        // Known series: the same samples, no series row; the filter sees each
        // sample's name and canonical labels.
        let mut asked = Vec::new();
        let (known_rows, known_series) = report_rows_where(&t, &r, |name, labels| {
            asked.push(format!("{name}{{{labels}}}"));
            false
        });
        assert_eq!(known_rows, rows);
        assert!(known_series.is_empty());
        assert_eq!(asked, ["h_bucket{le=\"+Inf\"}"]);
    }

    #[test]
    fn unreachable_status_is_up_zero_with_failure_kinds() {
        let r = report(Body::Status(EtcdStatus {
            failures: vec![etcdmon_proto::v1::Failure::new(
                "status",
                ErrorKind::Refused,
                "x",
            )],
            ..Default::default()
        }));
        let (rows, _) = report_rows(
            &Target {
                cluster: "c",
                member: "m",
            },
            &r,
        );
        assert!(rows
            .iter()
            .any(|s| s.name == "etcdmon_status_up" && s.value == 0.0));
        let f = rows
            .iter()
            .find(|s| s.name == "etcdmon_probe_failures")
            .expect("failure");
        assert_eq!(
            f.labels,
            "call=\"status\",collector=\"status\",kind=\"refused\""
        );
        assert!(!rows.iter().any(|s| s.name == "etcdmon_status_raft_term"));
    }

    #[test]
    fn sample_labels_are_the_canonical_labels() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("le", "+Inf")],
            &[
                ("grpc_code", "OK"),
                ("grpc_method", "Range"),
                ("le", "0.005"),
            ],
            // Unsorted, duplicate names, and values that need escaping.
            &[("method", "GET"), ("le", "0.1")],
            &[("a", "2"), ("a", "1"), ("b", "x")],
            &[("path", "C:\\etcd\"x\"\nnext"), ("z", "ü\\")],
            &[("b", "q\"uote"), ("a", "new\nline")],
        ];
        for pairs in cases {
            let labels: Vec<Label> = pairs
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect();
            assert_eq!(
                sample_labels(&labels),
                canonical_labels(pairs.iter().copied()),
                "{pairs:?}"
            );
        }
    }
}
