//! What one simulated agent sends each second.
//!
//! A batch holds two reports, as a real agent's batch does:
//!
//! * a **metrics** report: the real etcd 3.4.23 `/metrics` payload in
//!   `common/promtext/tests/fixtures/etcd-3.4.23.txt` (1,290 samples),
//!   parsed with `etcdmon_promtext::parse` and converted with the agent's own
//!   `collectors::metrics::to_wire`, exactly what the agent puts on the wire;
//! * a **status** report (reachable, leader, raft indexes, db size, member
//!   list, both read probes), what the status collector sends.
//!
//! The real agent sends status every second and metrics every 5 s; here
//! every batch carries a full metrics scrape, five times the real metrics
//! rate per agent. That is the heavier, conservative choice: one simulated
//! agent stands for about five real ones in samples per second, but pays
//! the per-stream and per-batch costs only once.
//!
//! # Encoding
//!
//! Each agent's reports are encoded once, without their timestamp. A batch
//! is then the concatenation of `StreamRequest.batch { sequence, reports }`
//! with each report's `timestamp_unix_ms` (field 1, which prost writes
//! first) put in front of its pre-encoded rest. The bytes are identical to
//! what prost produces for the same message (see the tests), so the
//! collector decodes exactly what a real agent sends, while the load
//! generator spends its CPU on gzip and transport rather than on
//! re-encoding 1,300 samples per batch.

use etcdmon_collector::ingest::convert::{report_rows, Target};
use etcdmon_proto::v1::{
    report, EtcdStatus, Hello, Identity, Member, MetricsScrape, ReadProbe, Report,
};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message as _;

/// The real etcd payload the metrics report is made of.
pub const FIXTURE: &str = include_str!("../../common/promtext/tests/fixtures/etcd-3.4.23.txt");

/// Cluster name of the simulated agents.
pub const CLUSTER: &str = "bench";

/// Tag of `StreamRequest.batch` (field 2, length-delimited).
const TAG_REQUEST_BATCH: u8 = (2 << 3) | 2;
/// Tag of `Batch.sequence` (field 1, varint).
const TAG_BATCH_SEQUENCE: u8 = 1 << 3;
/// Tag of `Batch.reports` (field 2, length-delimited).
const TAG_BATCH_REPORT: u8 = (2 << 3) | 2;
/// Tag of `Report.timestamp_unix_ms` (field 1, varint).
const TAG_REPORT_TIMESTAMP: u8 = 1 << 3;

/// The reports of one batch, without identity and timestamp.
pub struct Payload {
    templates: Vec<Report>,
    samples_per_batch: usize,
}

impl Payload {
    /// Parses the fixture and builds the metrics and status reports.
    pub fn new() -> Self {
        let expo = etcdmon_promtext::parse(FIXTURE);
        let metrics = Report {
            timestamp_unix_ms: 0,
            identity: None,
            duration_seconds: 0.012,
            body: Some(report::Body::Metrics(MetricsScrape {
                url: "https://127.0.0.1:2379/metrics".into(),
                failure: None,
                families: etcdmon_agent::probes::metrics::to_wire(&expo),
                parse_errors: u32::try_from(expo.error_count()).unwrap_or(u32::MAX),
                payload_bytes: FIXTURE.len() as u64,
            })),
        };
        let probe = |latency_seconds| ReadProbe {
            latency_seconds,
            failure: None,
        };
        let status = Report {
            timestamp_unix_ms: 0,
            identity: None,
            duration_seconds: 0.004,
            body: Some(report::Body::Status(EtcdStatus {
                endpoint: "https://127.0.0.1:2379".into(),
                reachable: true,
                failures: Vec::new(),
                member_id: 0,
                leader_id: 1,
                raft_term: 7,
                raft_index: 1_234_567,
                raft_applied_index: 1_234_567,
                db_size_bytes: 25 << 20,
                db_size_in_use_bytes: 21 << 20,
                version: "3.4.23".into(),
                errors: Vec::new(),
                is_learner: false,
                status_latency_seconds: 0.0021,
                alarms: Vec::new(),
                members: (1..=3)
                    .map(|id| Member {
                        id,
                        name: format!("a{}", id - 1),
                        peer_urls: vec![format!("https://10.0.0.{id}:2380")],
                        client_urls: vec![format!("https://10.0.0.{id}:2379")],
                        is_learner: false,
                    })
                    .collect(),
                linearizable_read: Some(probe(0.0034)),
                serializable_read: Some(probe(0.0008)),
                revision: 987_654,
                kv_hash: None,
            })),
        };
        let templates = vec![status, metrics];
        let target = Target {
            cluster: CLUSTER,
            member: "a0",
        };
        let samples_per_batch = templates
            .iter()
            .map(|r| report_rows(&target, r).0.len())
            .sum();
        Self {
            templates,
            samples_per_batch,
        }
    }

    /// Sample rows the collector makes of one batch (NaN values are not
    /// stored; the metrics report adds `etcdmon_scrape_*`).
    pub fn samples_per_batch(&self) -> usize {
        self.samples_per_batch
    }

    /// The reports with `identity` and `ts_ms`, as prost messages (for the
    /// native-insert rows and the tests).
    pub fn reports(&self, identity: &Identity, ts_ms: i64) -> Vec<Report> {
        self.templates
            .iter()
            .map(|t| {
                let mut r = t.clone();
                r.identity = Some(identity.clone());
                r.timestamp_unix_ms = ts_ms;
                if let Some(report::Body::Status(s)) = &mut r.body {
                    s.member_id = identity.member_id;
                }
                r
            })
            .collect()
    }

    /// The pre-encoded reports of one agent.
    pub fn for_agent(&self, identity: &Identity) -> AgentPayload {
        // Timestamp 0 is not written, so this is each report minus field 1.
        let rest = self
            .reports(identity, 0)
            .iter()
            .map(|r| r.encode_to_vec())
            .collect();
        AgentPayload { rest }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::new()
    }
}

/// Identity of simulated agent `index`: cluster `bench`, member `a{index}`.
pub fn identity(index: usize) -> Identity {
    Identity {
        cluster: CLUSTER.into(),
        member_name: format!("a{index}"),
        member_id: index as u64 + 1,
        node: format!("bench-node-{index}"),
        ..Default::default()
    }
}

/// The Hello of simulated agent `index`, with its own agent id.
pub fn hello(index: usize, agent_id: &str) -> Hello {
    Hello {
        identity: Some(identity(index)),
        agent_version: concat!("ingest-load/", env!("CARGO_PKG_VERSION")).into(),
        protocol_version: etcdmon_proto::PROTOCOL_VERSION,
        agent_id: agent_id.into(),
        features: Vec::new(),
    }
}

/// One agent's reports, encoded without their timestamps.
pub struct AgentPayload {
    rest: Vec<Vec<u8>>,
}

impl AgentPayload {
    /// Writes the encoded `StreamRequest { batch: { sequence, reports } }`
    /// with every report stamped `ts_ms` into `out` (cleared first).
    pub fn encode_batch(&self, sequence: u64, ts_ms: i64, out: &mut Vec<u8>) {
        // Negative int64 varints are 10 bytes; the bench only stamps "now".
        let ts = ts_ms as u64;
        let ts_len = if ts == 0 {
            0
        } else {
            1 + encoded_len_varint(ts)
        };
        let report_len = |rest: &Vec<u8>| ts_len + rest.len();
        let mut batch_len = if sequence == 0 {
            0
        } else {
            1 + encoded_len_varint(sequence)
        };
        for rest in &self.rest {
            let len = report_len(rest);
            batch_len += 1 + encoded_len_varint(len as u64) + len;
        }
        out.clear();
        out.reserve(1 + encoded_len_varint(batch_len as u64) + batch_len);
        out.push(TAG_REQUEST_BATCH);
        encode_varint(batch_len as u64, out);
        if sequence != 0 {
            out.push(TAG_BATCH_SEQUENCE);
            encode_varint(sequence, out);
        }
        for rest in &self.rest {
            out.push(TAG_BATCH_REPORT);
            encode_varint(report_len(rest) as u64, out);
            if ts != 0 {
                out.push(TAG_REPORT_TIMESTAMP);
                encode_varint(ts, out);
            }
            out.extend_from_slice(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_proto::v1::{stream_request, Batch, StreamRequest};

    #[test]
    fn the_payload_is_the_real_etcd_scrape_plus_a_status_report() {
        let p = Payload::new();
        let reports = p.reports(&identity(3), 1_700_000_000_000);
        let Some(report::Body::Metrics(m)) = &reports[1].body else {
            panic!("metrics report second");
        };
        let samples: usize = m.families.iter().map(|f| f.samples.len()).sum();
        assert_eq!(samples, 1_290);
        assert_eq!(m.parse_errors, 0);
        // NaN quantiles are dropped; scrape_up, parse_errors and the status
        // gauges are added.
        assert!(
            (1_250..1_350).contains(&p.samples_per_batch()),
            "{}",
            p.samples_per_batch()
        );
    }

    #[test]
    fn encoded_batches_are_what_prost_encodes() {
        let p = Payload::new();
        let id = identity(7);
        let agent = p.for_agent(&id);
        let mut out = Vec::new();
        for (sequence, ts) in [(1, 1_700_000_000_123), (300, 1_800_000_000_000), (0, 5)] {
            agent.encode_batch(sequence, ts, &mut out);
            let expected = StreamRequest {
                kind: Some(stream_request::Kind::Batch(Batch {
                    sequence,
                    reports: p.reports(&id, ts),
                })),
            };
            assert_eq!(out, expected.encode_to_vec(), "sequence {sequence}");
            assert_eq!(StreamRequest::decode(out.as_slice()).unwrap(), expected);
        }
    }
}
