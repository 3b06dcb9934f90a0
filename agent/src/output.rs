//! Rendering of reports for `etcdmon-agent collect`: a readable table for
//! people (the default) and JSON for scripts.

use crate::probes::metrics::find_sample;
use etcdmon_proto::v1::{
    report::Body, CertExpiry, CertRole, ErrorKind, EtcdStatus, Failure, FsyncProbe, HostMetrics,
    MetricsScrape, PeerRtt, ProcessDiscovery, Report,
};
use std::fmt::Write as _;

/// Output format of `collect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// JSON: an array for `--once`, one object per line otherwise.
    Json,
}

/// Renders a whole `--once` result.
pub fn render_all(reports: &[Report], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(reports)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        Format::Table => {
            let mut s = String::new();
            if let Some(id) = reports.first().and_then(|r| r.identity.as_ref()) {
                let _ = writeln!(
                    s,
                    "cluster {}  member {} ({})  node {}  region {}",
                    or_dash(&id.cluster),
                    or_dash(&id.member_name),
                    if id.member_id == 0 {
                        "-".into()
                    } else {
                        format!("{:x}", id.member_id)
                    },
                    or_dash(&id.node),
                    or_dash(&id.region),
                );
            }
            for r in reports {
                s.push_str(&render_one(r, Format::Table));
            }
            s
        }
    }
}

/// Renders one report: a JSON line or a table section.
pub fn render_one(r: &Report, format: Format) -> String {
    if format == Format::Json {
        let mut line =
            serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        line.push('\n');
        return line;
    }
    let mut s = String::new();
    match &r.body {
        Some(Body::Status(st)) => status(&mut s, st),
        Some(Body::Metrics(m)) => metrics(&mut s, m),
        Some(Body::Host(h)) => host(&mut s, h),
        Some(Body::Fsync(f)) => fsync(&mut s, f),
        Some(Body::PeerRtt(p)) => peers(&mut s, p),
        Some(Body::Certs(c)) => certs(&mut s, c),
        None => {}
    }
    s
}

fn status(s: &mut String, st: &EtcdStatus) {
    if !st.reachable {
        let _ = writeln!(s, "STATUS   {}  UNREACHABLE", st.endpoint);
        failures(s, &st.failures);
        return;
    }
    let role = if st.leader_id == st.member_id {
        "leader"
    } else if st.leader_id == 0 {
        "NO LEADER"
    } else {
        "follower"
    };
    let _ = writeln!(
        s,
        "STATUS   {}  v{}  {role}{}  term {}  index {} (applied {})  db {} (in use {})  {}",
        st.endpoint,
        st.version,
        if st.is_learner { " (learner)" } else { "" },
        st.raft_term,
        st.raft_index,
        st.raft_applied_index,
        bytes(st.db_size_bytes.max(0) as u64),
        bytes(st.db_size_in_use_bytes.max(0) as u64),
        ms(st.status_latency_seconds),
    );
    let alarms = if st.alarms.is_empty() {
        "none".to_string()
    } else {
        st.alarms
            .iter()
            .map(|a| format!("{} on {:x}", a.alarm, a.member_id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let members: Vec<String> = st
        .members
        .iter()
        .map(|m| {
            let mut n = if m.name.is_empty() {
                format!("{:x}", m.id)
            } else {
                m.name.clone()
            };
            if m.is_learner {
                n.push_str(" (learner)");
            }
            n
        })
        .collect();
    let read = |p: &Option<etcdmon_proto::v1::ReadProbe>| match p {
        Some(p) if p.failure.is_none() => ms(p.latency_seconds),
        Some(_) => "FAILED".into(),
        None => "-".into(),
    };
    let _ = writeln!(
        s,
        "         alarms: {alarms}  members: {} [{}]  reads: linearizable {}, serializable {}  revision {}",
        members.len(),
        members.join(", "),
        read(&st.linearizable_read),
        read(&st.serializable_read),
        st.revision,
    );
    if !st.errors.is_empty() {
        let _ = writeln!(s, "         errors: {}", st.errors.join("; "));
    }
    failures(s, &st.failures);
}

fn metrics(s: &mut String, m: &MetricsScrape) {
    if let Some(f) = &m.failure {
        let _ = writeln!(s, "METRICS  {}  FAILED", m.url);
        failures(s, std::slice::from_ref(f));
        return;
    }
    let samples: usize = m.families.iter().map(|f| f.samples.len()).sum();
    let _ = writeln!(
        s,
        "METRICS  {}  {} samples in {} families, {}, {} malformed lines",
        m.url,
        samples,
        m.families.len(),
        bytes(m.payload_bytes),
        m.parse_errors,
    );
    let pick = |name: &str| find_sample(&m.families, name, &[]).map(|s| s.value);
    let mut parts = Vec::new();
    for (label, name) in [
        ("has_leader", "etcd_server_has_leader"),
        ("leader_changes", "etcd_server_leader_changes_seen_total"),
        ("proposals_failed", "etcd_server_proposals_failed_total"),
        ("proposals_pending", "etcd_server_proposals_pending"),
    ] {
        if let Some(v) = pick(name) {
            parts.push(format!("{label}={v}"));
        }
    }
    if !parts.is_empty() {
        let _ = writeln!(s, "         {}", parts.join("  "));
    }
}

fn host(s: &mut String, h: &HostMetrics) {
    let mut line = String::from("HOST    ");
    if let Some(c) = &h.cpu {
        let _ = write!(
            line,
            " cpu {:.0}% of {} cores (iowait {:.0}%), load {:.2}/{:.2}/{:.2}, {} runnable{}",
            c.utilization * 100.0,
            c.cores,
            c.iowait_utilization * 100.0,
            c.load1,
            c.load5,
            c.load15,
            c.procs_running,
            psi(c.psi_some_avg10),
        );
    }
    if let Some(m) = &h.memory {
        let _ = write!(
            line,
            "  mem {} used of {}, swap {} used{}",
            bytes(m.used_bytes),
            bytes(m.total_bytes),
            bytes(m.swap_used_bytes),
            psi(m.psi_some_avg10),
        );
    }
    let _ = writeln!(s, "{line}");
    if let Some(fs) = &h.filesystem {
        let used_inodes = fs.inodes_total.saturating_sub(fs.inodes_free);
        let _ = writeln!(
            s,
            "         fs {} on {} ({}): {} free of {}, inodes {} of {} used",
            fs.path,
            fs.mount_point,
            or_dash(&fs.device),
            bytes(fs.available_bytes),
            bytes(fs.total_bytes),
            used_inodes,
            fs.inodes_total,
        );
    }
    if let Some(d) = &h.disk {
        let _ = writeln!(
            s,
            "         disk {}: util {:.1}%, await {:.2} ms, queue {:.2}, iops r/w {:.0}/{:.0}, bytes/s r/w {}/{}",
            d.device,
            d.utilization * 100.0,
            d.await_ms,
            d.queue_depth,
            d.read_iops,
            d.write_iops,
            bytes(d.read_bytes_per_second as u64),
            bytes(d.write_bytes_per_second as u64),
        );
    }
    if !h.interfaces.is_empty() {
        let nics: Vec<String> = h
            .interfaces
            .iter()
            .map(|i| {
                format!(
                    "{} rx {} tx {} err {} drop {}",
                    i.name,
                    bytes(i.rx_bytes),
                    bytes(i.tx_bytes),
                    i.rx_errors + i.tx_errors,
                    i.rx_drops + i.tx_drops
                )
            })
            .collect();
        let _ = writeln!(s, "         net {}", nics.join("; "));
    }
    if let Some(p) = &h.process {
        if p.discovery == ProcessDiscovery::NotFound as i32 {
            let _ = writeln!(s, "         etcd process: {}", p.not_found_reason);
        } else {
            let how = ProcessDiscovery::try_from(p.discovery)
                .map(|d| match d {
                    ProcessDiscovery::PidFile => "pid file",
                    ProcessDiscovery::ListenPort => "listen port",
                    ProcessDiscovery::Name => "name",
                    _ => "?",
                })
                .unwrap_or("?");
            let _ = writeln!(
                s,
                "         etcd process {} (by {how}): cpu {:.3} cores, rss {}, fds {} of {}, {} threads",
                p.pid,
                p.cpu_cores,
                bytes(p.rss_bytes),
                p.open_fds,
                if p.max_fds == u64::MAX { "unlimited".into() } else { p.max_fds.to_string() },
                p.threads,
            );
        }
    }
    failures(s, &h.failures);
}

fn fsync(s: &mut String, f: &FsyncProbe) {
    match &f.failure {
        Some(fail) => {
            let _ = writeln!(s, "FSYNC    {}  FAILED", f.path);
            failures(s, std::slice::from_ref(fail));
        }
        None => {
            let _ = writeln!(
                s,
                "FSYNC    {}  {} x {} B write+fdatasync: p50 {}  p99 {}  max {}",
                f.path,
                f.writes,
                f.block_size,
                ms(f.p50_seconds),
                ms(f.p99_seconds),
                ms(f.max_seconds),
            );
        }
    }
}

fn peers(s: &mut String, p: &PeerRtt) {
    if p.peers.is_empty() {
        let _ = writeln!(
            s,
            "PEERS    none known (member list not read yet, or a single member)"
        );
        return;
    }
    let parts: Vec<String> = p
        .peers
        .iter()
        .map(|r| match &r.failure {
            None => format!(
                "{} {} {}",
                or_dash(&r.member_name),
                r.url,
                ms(r.rtt_seconds)
            ),
            Some(f) => format!("{} {} FAILED ({})", or_dash(&r.member_name), r.url, kind(f)),
        })
        .collect();
    let _ = writeln!(s, "PEERS    {}", parts.join("; "));
}

fn certs(s: &mut String, c: &CertExpiry) {
    if c.certificates.is_empty() {
        let _ = writeln!(s, "CERTS    none configured");
        return;
    }
    for cert in &c.certificates {
        let role = CertRole::try_from(cert.role)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("CERT_ROLE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        match &cert.failure {
            None => {
                let _ = writeln!(
                    s,
                    "CERTS    {} ({role}): {:.1} days left  [{}]",
                    cert.path, cert.days_left, cert.subject
                );
            }
            Some(f) => {
                let _ = writeln!(s, "CERTS    {} ({role}): FAILED  {}", cert.path, f.message);
            }
        }
    }
}

/// One line per distinct (kind, message); a dead member fails every call
/// the same way and one line says it.
fn failures(s: &mut String, fs: &[Failure]) {
    let mut groups: Vec<(Vec<&str>, &Failure)> = Vec::new();
    for f in fs {
        match groups
            .iter_mut()
            .find(|(_, g)| g.kind == f.kind && g.message == f.message)
        {
            Some((calls, _)) => calls.push(&f.call),
            None => groups.push((vec![&f.call], f)),
        }
    }
    for (calls, f) in groups {
        let _ = writeln!(
            s,
            "         ! {} {}: {}",
            calls.join(", "),
            kind(f),
            f.message
        );
    }
}

fn kind(f: &Failure) -> &'static str {
    ErrorKind::try_from(f.kind)
        .unwrap_or(ErrorKind::Other)
        .short_name()
}

fn psi(v: f64) -> String {
    if v < 0.0 {
        String::new()
    } else {
        format!(", psi {:.1}%", v * 100.0)
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Seconds as a short human duration: "850µs", "3.2 ms", "1.20 s".
pub fn ms(secs: f64) -> String {
    if secs < 0.001 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// Bytes with a binary unit.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(150_862), "147.3 KiB");
        assert_eq!(ms(0.00085), "850µs");
        assert_eq!(ms(0.0032), "3.2 ms");
        assert_eq!(ms(1.2), "1.20 s");
    }

    #[test]
    fn unreachable_status_shows_the_reason() {
        let r = Report {
            body: Some(Body::Status(EtcdStatus {
                endpoint: "http://127.0.0.1:1".into(),
                failures: vec![Failure::new(
                    "status",
                    ErrorKind::Refused,
                    "connection refused",
                )],
                ..Default::default()
            })),
            ..Default::default()
        };
        let t = render_one(&r, Format::Table);
        assert!(
            t.contains("UNREACHABLE") && t.contains("status refused: connection refused"),
            "{t}"
        );
        let j = render_one(&r, Format::Json);
        assert!(j.contains("\"kind\":\"refused\""), "{j}");
    }
}
