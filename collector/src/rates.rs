//! Figures derived from consecutive scrapes of one member's etcd metrics:
//! histogram quantiles and counter rates over the interval between two
//! scrapes, and a db growth trend. Kept in the live state for the rules.
//!
//! Counters and histogram buckets are cumulative since etcd started, so
//! the interesting numbers are differences between scrapes. A counter
//! that goes down means etcd restarted: that interval is skipped.

use etcdmon_proto::v1::{MetricFamily, Sample};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// gRPC codes that count as server errors; client mistakes (NotFound,
/// InvalidArgument, ...) and OK do not. Same set as the etcd mixin.
const ERROR_CODES: &[&str] = &[
    "Unknown",
    "FailedPrecondition",
    "ResourceExhausted",
    "Internal",
    "Unavailable",
    "DataLoss",
    "DeadlineExceeded",
];
/// Long-lived streams end with Unavailable or Canceled whenever a client
/// goes away; counting those is the mixin's well-known false positive.
const STREAM_METHODS: &[&str] = &["Watch", "LeaseKeepAlive"];
/// How much db size history the growth trend looks at.
const GROWTH_WINDOW_MS: i64 = 3_600_000;
/// Most points kept for the trend (bounds memory whatever the interval).
const GROWTH_POINTS: usize = 720;
/// etcd observes each peer's smoothed round-trip time only every 30 s
/// (rafthttp's `statusMonitoringInterval`), so most scrape intervals hold no
/// new round trip. Reading "nothing observed" as "no longer slow" made
/// `peer_rtt_high` fire for one scrape and resolve at the next, every 30 s,
/// and never last its `for`. The last figure stands until a new one arrives
/// or this long has passed: two missed observations and a scrape.
const PEER_RTT_HOLD_MS: i64 = 75_000;

/// What the rules read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Derived {
    /// WAL fsync p99 over the last scrape interval, seconds.
    pub wal_fsync_p99: Option<f64>,
    /// Backend commit p99 over the last interval, seconds.
    pub backend_commit_p99: Option<f64>,
    /// Peer round-trip p99 over the last interval with a round trip in it
    /// (all peers; at most [`PEER_RTT_HOLD_MS`] old), seconds.
    pub peer_rtt_p99: Option<f64>,
    /// Unary gRPC handling p99 without Defragment (needs
    /// `--metrics=extensive`), seconds.
    pub grpc_unary_p99: Option<f64>,
    /// Share of gRPC calls that failed with a server error, excluding
    /// cancelled Watch/LeaseKeepAlive streams.
    pub grpc_error_ratio: Option<f64>,
    /// Failed proposals per second.
    pub proposals_failed_rate: Option<f64>,
    /// Proposals pending now.
    pub proposals_pending: Option<f64>,
    /// db growth in bytes per second over the last hour (least squares).
    pub db_growth_bytes_per_second: Option<f64>,
    /// WAL fsync p50 over the last interval, seconds.
    pub wal_fsync_p50: Option<f64>,
    /// Backend commit p50 over the last interval, seconds.
    pub backend_commit_p50: Option<f64>,
    /// Unary gRPC handling p50 and p95 (as `grpc_unary_p99`), seconds.
    pub grpc_unary_p50: Option<f64>,
    /// See `grpc_unary_p50`.
    pub grpc_unary_p95: Option<f64>,
    /// gRPC calls started per second.
    pub request_rate: Option<f64>,
    /// Proposals committed per second.
    pub proposals_committed_rate: Option<f64>,
    /// Proposals applied per second.
    pub proposals_applied_rate: Option<f64>,
    /// Bytes per second received from clients over gRPC.
    pub client_received_bytes_rate: Option<f64>,
    /// Bytes per second sent to clients over gRPC.
    pub client_sent_bytes_rate: Option<f64>,
    /// Watchers now.
    pub watchers: Option<f64>,
    /// Watch streams now.
    pub watch_streams: Option<f64>,
    #[serde(skip)]
    prev: Option<Snapshot>,
    /// When `peer_rtt_p99` was last computed from new round trips, ms.
    #[serde(skip)]
    peer_rtt_at_ms: i64,
    #[serde(skip)]
    db_sizes: VecDeque<(i64, f64)>,
}

/// The cumulative figures of one scrape.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    ts_ms: i64,
    wal: Buckets,
    commit: Buckets,
    peer: Buckets,
    unary: Buckets,
    grpc_total: f64,
    grpc_errors: f64,
    proposals_failed: f64,
    /// Counters (monotonic gauges, for the proposals) turned into rates.
    grpc_started: f64,
    proposals_committed: f64,
    proposals_applied: f64,
    client_received: f64,
    client_sent: f64,
}

/// Cumulative bucket counts by upper bound (`le`).
type Buckets = BTreeMap<OrdF64, f64>;

/// f64 with a total order, for bucket bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OrdF64(pub(crate) f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

fn label<'a>(s: &'a Sample, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

fn le(s: &Sample) -> Option<f64> {
    parse_le(label(s, "le")?)
}

/// A histogram bucket's `le` bound: a number, or `+Inf`.
pub(crate) fn parse_le(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The gauges of one scrape that are used as they are.
#[derive(Debug, Default)]
struct Gauges {
    pending: Option<f64>,
    db: Option<f64>,
    watchers: Option<f64>,
    watch_streams: Option<f64>,
}

fn snapshot(families: &[MetricFamily], ts_ms: i64) -> (Snapshot, Gauges) {
    let mut snap = Snapshot {
        ts_ms,
        ..Default::default()
    };
    let mut g = Gauges::default();
    for f in families {
        for s in &f.samples {
            match s.name.as_str() {
                "etcd_disk_wal_fsync_duration_seconds_bucket" => add(&mut snap.wal, s),
                "etcd_disk_backend_commit_duration_seconds_bucket" => add(&mut snap.commit, s),
                "etcd_network_peer_round_trip_time_seconds_bucket" => add(&mut snap.peer, s),
                "grpc_server_handling_seconds_bucket"
                    if label(s, "grpc_type") == Some("unary")
                        && label(s, "grpc_method") != Some("Defragment") =>
                {
                    add(&mut snap.unary, s)
                }
                "grpc_server_handled_total" => {
                    snap.grpc_total += s.value;
                    let code = label(s, "grpc_code").unwrap_or("");
                    let method = label(s, "grpc_method").unwrap_or("");
                    let stream_end = STREAM_METHODS.contains(&method)
                        && matches!(code, "Unavailable" | "Canceled");
                    if ERROR_CODES.contains(&code) && !stream_end {
                        snap.grpc_errors += s.value;
                    }
                }
                "etcd_server_proposals_failed_total" => snap.proposals_failed += s.value,
                "etcd_server_proposals_pending" => g.pending = Some(s.value),
                "etcd_mvcc_db_total_size_in_bytes" => g.db = Some(s.value),
                "grpc_server_started_total" => snap.grpc_started += s.value,
                "etcd_server_proposals_committed_total" => snap.proposals_committed += s.value,
                "etcd_server_proposals_applied_total" => snap.proposals_applied += s.value,
                "etcd_network_client_grpc_received_bytes_total" => snap.client_received += s.value,
                "etcd_network_client_grpc_sent_bytes_total" => snap.client_sent += s.value,
                "etcd_debugging_mvcc_watcher_total" => g.watchers = Some(s.value),
                "etcd_debugging_mvcc_watch_stream_total" => g.watch_streams = Some(s.value),
                _ => {}
            }
        }
    }
    (snap, g)
}

/// Per-second rate of a counter between two scrapes; none when it went down
/// (etcd restarted).
pub(crate) fn per_second(prev: f64, cur: f64, secs: f64) -> Option<f64> {
    (cur >= prev && secs > 0.0).then(|| (cur - prev) / secs)
}

/// Sums buckets of the same bound across label sets (e.g. all peers).
fn add(b: &mut Buckets, s: &Sample) {
    if let Some(le) = le(s) {
        *b.entry(OrdF64(le)).or_insert(0.0) += s.value;
    }
}

impl Derived {
    /// Folds in one scrape of the member's metrics.
    pub fn update(&mut self, families: &[MetricFamily], ts_ms: i64) {
        let (snap, g) = snapshot(families, ts_ms);
        self.proposals_pending = g.pending;
        self.watchers = g.watchers;
        self.watch_streams = g.watch_streams;
        if let Some(db) = g.db {
            self.db_sizes.push_back((ts_ms, db));
            while self.db_sizes.len() > GROWTH_POINTS
                || self
                    .db_sizes
                    .front()
                    .is_some_and(|(t, _)| ts_ms - t > GROWTH_WINDOW_MS)
            {
                self.db_sizes.pop_front();
            }
            self.db_growth_bytes_per_second = slope(&self.db_sizes);
        }
        if let Some(prev) = self.prev.take() {
            let secs = (snap.ts_ms - prev.ts_ms) as f64 / 1000.0;
            if secs > 0.0 {
                self.wal_fsync_p99 = delta_quantile(0.99, &prev.wal, &snap.wal);
                self.backend_commit_p99 = delta_quantile(0.99, &prev.commit, &snap.commit);
                self.update_peer_rtt(&prev.peer, &snap.peer, snap.ts_ms);
                self.grpc_unary_p99 = delta_quantile(0.99, &prev.unary, &snap.unary);
                let total = snap.grpc_total - prev.grpc_total;
                let errors = snap.grpc_errors - prev.grpc_errors;
                self.grpc_error_ratio = (total > 0.0 && errors >= 0.0).then(|| errors / total);
                self.proposals_failed_rate =
                    per_second(prev.proposals_failed, snap.proposals_failed, secs);
                self.wal_fsync_p50 = delta_quantile(0.5, &prev.wal, &snap.wal);
                self.backend_commit_p50 = delta_quantile(0.5, &prev.commit, &snap.commit);
                self.grpc_unary_p50 = delta_quantile(0.5, &prev.unary, &snap.unary);
                self.grpc_unary_p95 = delta_quantile(0.95, &prev.unary, &snap.unary);
                self.request_rate = per_second(prev.grpc_started, snap.grpc_started, secs);
                self.proposals_committed_rate =
                    per_second(prev.proposals_committed, snap.proposals_committed, secs);
                self.proposals_applied_rate =
                    per_second(prev.proposals_applied, snap.proposals_applied, secs);
                self.client_received_bytes_rate =
                    per_second(prev.client_received, snap.client_received, secs);
                self.client_sent_bytes_rate = per_second(prev.client_sent, snap.client_sent, secs);
            }
        }
        self.prev = Some(snap);
    }

    /// See [`PEER_RTT_HOLD_MS`]: a new figure replaces the held one; an
    /// interval without round trips keeps it while it is fresh; a restart
    /// (counts went down) clears it.
    fn update_peer_rtt(&mut self, prev: &Buckets, cur: &Buckets, ts_ms: i64) {
        if let Some(p99) = delta_quantile(0.99, prev, cur) {
            self.peer_rtt_p99 = Some(p99);
            self.peer_rtt_at_ms = ts_ms;
        } else if went_down(prev, cur) || ts_ms - self.peer_rtt_at_ms > PEER_RTT_HOLD_MS {
            self.peer_rtt_p99 = None;
        }
    }
}

/// Whether a cumulative bucket count decreased (etcd restarted).
fn went_down(prev: &Buckets, cur: &Buckets) -> bool {
    cur.iter()
        .any(|(le, c)| prev.get(le).is_some_and(|p| c < p))
}

/// `histogram_quantile` over the increase between two cumulative
/// snapshots, as Prometheus computes it: find the bucket holding the rank
/// and interpolate linearly inside it. None when nothing was observed or
/// etcd restarted (counts went down).
fn delta_quantile(q: f64, prev: &Buckets, cur: &Buckets) -> Option<f64> {
    let mut d: Vec<(f64, f64)> = Vec::with_capacity(cur.len());
    for (le, c) in cur {
        let p = prev.get(le).copied().unwrap_or(0.0);
        if c < &p {
            return None;
        }
        d.push((le.0, c - p));
    }
    quantile(q, &d)
}

/// Quantile of cumulative (upper bound, count) buckets sorted by bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || buckets.last()?.0 != f64::INFINITY {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (i, (le, count)) in buckets.iter().enumerate() {
        if *count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: report that bound.
                return Some(if i > 0 { buckets[i - 1].0 } else { 0.0 });
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(*le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        lower = *le;
        below = *count;
    }
    None
}

/// Least-squares slope (value per second) of (ms, value) points.
fn slope(points: &VecDeque<(i64, f64)>) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let t0 = points.front()?.0;
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for (t, v) in points {
        let x = (t - t0) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxx += x * x;
        sxy += x * v;
    }
    let den = n * sxx - sx * sx;
    (den > 0.0).then(|| (n * sxy - sx * sy) / den)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_proto::v1::Label;

    fn s(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| Label {
                    name: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            value,
            timestamp_unix_ms: 0,
        }
    }

    fn fam(samples: Vec<Sample>) -> Vec<MetricFamily> {
        vec![MetricFamily {
            name: "x".into(),
            r#type: 0,
            samples,
        }]
    }

    fn wal(counts: [f64; 4]) -> Vec<Sample> {
        let n = "etcd_disk_wal_fsync_duration_seconds_bucket";
        vec![
            s(n, &[("le", "0.001")], counts[0]),
            s(n, &[("le", "0.01")], counts[1]),
            s(n, &[("le", "0.1")], counts[2]),
            s(n, &[("le", "+Inf")], counts[3]),
        ]
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let b = [
            (0.001, 0.0),
            (0.01, 50.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 50 falls at the top of the (0.001, 0.01] bucket.
        assert!((quantile(0.5, &b).expect("q") - 0.01).abs() < 1e-12);
        // rank 99: 49 of 50 into (0.01, 0.1].
        assert!((quantile(0.99, &b).expect("q") - (0.01 + 0.09 * 49.0 / 50.0)).abs() < 1e-12);
        assert_eq!(quantile(0.99, &[(f64::INFINITY, 0.0)]), None);
        // Everything above the last finite bound.
        assert_eq!(
            quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 5.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn wal_p99_is_over_the_interval_not_since_start() {
        let mut d = Derived::default();
        // Since start: 1000 fast fsyncs.
        d.update(&fam(wal([1000.0, 1000.0, 1000.0, 1000.0])), 0);
        assert_eq!(d.wal_fsync_p99, None, "needs two scrapes");
        // In the interval: 10 new fsyncs, all between 10 and 100 ms.
        d.update(&fam(wal([1000.0, 1000.0, 1010.0, 1010.0])), 5_000);
        let p99 = d.wal_fsync_p99.expect("p99");
        assert!(p99 > 0.01 && p99 <= 0.1, "{p99}");
        // etcd restarted: counts went down, no figure for that interval.
        d.update(&fam(wal([1.0, 1.0, 1.0, 1.0])), 10_000);
        assert_eq!(d.wal_fsync_p99, None);
    }

    fn peer(counts: [f64; 3]) -> Vec<Sample> {
        let n = "etcd_network_peer_round_trip_time_seconds_bucket";
        vec![
            s(n, &[("le", "0.0512")], counts[0]),
            s(n, &[("le", "0.1024")], counts[1]),
            s(n, &[("le", "+Inf")], counts[2]),
        ]
    }

    /// etcd observes peer round trips every 30 s; scrapes every 5 s.
    #[test]
    fn peer_rtt_p99_holds_between_etcds_observations_and_expires() {
        let mut d = Derived::default();
        d.update(&fam(peer([10.0, 10.0, 10.0])), 0);
        // One slow round trip in (51.2, 102.4] ms.
        d.update(&fam(peer([10.0, 11.0, 11.0])), 5_000);
        let slow = d.peer_rtt_p99.expect("p99");
        assert!(slow > 0.0512 && slow <= 0.1024, "{slow}");
        // Five scrapes without a new round trip: the figure stands.
        for t in [10_000, 15_000, 20_000, 25_000, 30_000] {
            d.update(&fam(peer([10.0, 11.0, 11.0])), t);
            assert_eq!(d.peer_rtt_p99, Some(slow), "at {t} ms");
        }
        // The next observation is fast: it replaces the slow one.
        d.update(&fam(peer([11.0, 12.0, 12.0])), 35_000);
        let fast = d.peer_rtt_p99.expect("p99");
        assert!(fast <= 0.0512, "{fast}");
        // No round trip for longer than the hold: unknown, not "fast".
        d.update(&fam(peer([11.0, 12.0, 12.0])), 35_000 + PEER_RTT_HOLD_MS);
        assert_eq!(d.peer_rtt_p99, Some(fast));
        d.update(&fam(peer([11.0, 12.0, 12.0])), 40_000 + PEER_RTT_HOLD_MS);
        assert_eq!(d.peer_rtt_p99, None);
        // A restart clears a held figure at once.
        d.update(&fam(peer([11.0, 13.0, 13.0])), 45_000 + PEER_RTT_HOLD_MS);
        assert!(d.peer_rtt_p99.is_some());
        d.update(&fam(peer([0.0, 0.0, 0.0])), 50_000 + PEER_RTT_HOLD_MS);
        assert_eq!(d.peer_rtt_p99, None);
    }

    #[test]
    fn cancelled_watch_streams_are_not_errors() {
        let h = "grpc_server_handled_total";
        let scrape = |ok: f64, watch_unavail: f64, range_unavail: f64| {
            fam(vec![
                s(h, &[("grpc_code", "OK"), ("grpc_method", "Range")], ok),
                s(
                    h,
                    &[("grpc_code", "Unavailable"), ("grpc_method", "Watch")],
                    watch_unavail,
                ),
                s(
                    h,
                    &[("grpc_code", "Canceled"), ("grpc_method", "LeaseKeepAlive")],
                    watch_unavail,
                ),
                s(
                    h,
                    &[("grpc_code", "Unavailable"), ("grpc_method", "Range")],
                    range_unavail,
                ),
                s(
                    h,
                    &[("grpc_code", "NotFound"), ("grpc_method", "Range")],
                    0.0,
                ),
            ])
        };
        let mut d = Derived::default();
        d.update(&scrape(100.0, 0.0, 0.0), 0);
        // 100 cancelled streams and no real error: ratio 0.
        d.update(&scrape(200.0, 100.0, 0.0), 5_000);
        assert_eq!(d.grpc_error_ratio, Some(0.0));
        // 10 real errors in 110 calls.
        d.update(&scrape(300.0, 100.0, 10.0), 10_000);
        let r = d.grpc_error_ratio.expect("ratio");
        assert!((r - 10.0 / 110.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn db_growth_is_a_least_squares_slope() {
        let mut d = Derived::default();
        for i in 0..10 {
            let db = s(
                "etcd_mvcc_db_total_size_in_bytes",
                &[],
                1_000.0 + 50.0 * i as f64,
            );
            d.update(&fam(vec![db]), i * 5_000);
        }
        let g = d.db_growth_bytes_per_second.expect("slope");
        assert!((g - 10.0).abs() < 1e-9, "{g}");
    }

    #[test]
    fn request_and_proposal_rates_are_per_second_between_scrapes() {
        let scrape = |started: f64, committed: f64, watchers: f64| {
            fam(vec![
                s(
                    "grpc_server_started_total",
                    &[("grpc_method", "Range")],
                    started,
                ),
                s(
                    "grpc_server_started_total",
                    &[("grpc_method", "Put")],
                    started / 2.0,
                ),
                s("etcd_server_proposals_committed_total", &[], committed),
                s("etcd_debugging_mvcc_watcher_total", &[], watchers),
            ])
        };
        let mut d = Derived::default();
        d.update(&scrape(100.0, 10.0, 3.0), 0);
        assert_eq!(d.request_rate, None, "one scrape is no rate");
        assert_eq!(d.watchers, Some(3.0), "a gauge is there at once");
        // 150 calls (both methods) and 20 proposals in 5 s.
        d.update(&scrape(200.0, 30.0, 4.0), 5_000);
        assert_eq!(d.request_rate, Some(30.0));
        assert_eq!(d.proposals_committed_rate, Some(4.0));
        assert_eq!(d.watchers, Some(4.0));
        // etcd restarted: counters went down, no rate rather than a negative one.
        d.update(&scrape(10.0, 1.0, 0.0), 10_000);
        assert_eq!(d.request_rate, None);
    }
}
