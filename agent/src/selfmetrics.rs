//! The agent's own metrics, served on its `/metrics`: one counter per
//! failure mode so an operator can tell a dead etcd from a broken agent.

use etcdmon_proto::v1::{report::Body, ErrorKind};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Counters and histograms of the agent.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Collection rounds by collector.
    pub collections: IntCounterVec,
    /// Failed calls by collector, call and error kind.
    pub failures: IntCounterVec,
    /// Calls that ran into the probe timeout, by collector.
    pub probe_timeouts: IntCounterVec,
    /// Scrapes of etcd's /metrics that failed (any reason).
    pub scrape_failures: IntCounter,
    /// Malformed lines skipped in etcd's /metrics.
    pub parse_errors: IntCounter,
    /// Time one collection round took, by collector.
    pub duration: HistogramVec,
    /// Unix time of the last successful round, by collector.
    pub last_success: IntGaugeVec,
    /// Reports dropped because the sink was full.
    pub reports_dropped: IntCounter,
    /// Batches built and spooled.
    pub batches_built: IntCounter,
    /// Batches sent to the collector (resends included).
    pub batches_sent: IntCounter,
    /// Batches the collector acknowledged as stored.
    pub batches_acked: IntCounter,
    /// Batches the collector refused for good (dropped).
    pub batches_rejected: IntCounter,
    /// Batches over the collector's size limit, sent without their reports.
    pub batches_too_large: IntCounter,
    /// Welcomes that said more was stored than this agent ever numbered.
    pub stored_through_ahead: IntCounter,
    /// Collector streams that failed (each followed by a reconnect).
    pub stream_errors: IntCounter,
    /// 1 while a stream to the collector is open.
    pub collector_connected: IntGauge,
    /// Bytes of unacknowledged batches, by tier (memory, disk).
    pub spool_bytes: IntGaugeVec,
    /// Unacknowledged batches held.
    pub spool_batches: IntGauge,
    /// Batches dropped since start because the disk budget was full (or a
    /// spooled file was corrupt).
    pub spool_dropped_batches: IntGauge,
    /// Bytes of those batches.
    pub spool_dropped_bytes: IntGauge,
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("etcdmon_agent".into()), None)
            .expect("static prefix is a valid metric name");
        let collections = IntCounterVec::new(
            Opts::new("collections_total", "Collection rounds, by collector."),
            &["collector"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "failures_total",
                "Failed calls, by collector, call and error kind (refused, timeout, tls, auth, ...).",
            ),
            &["collector", "call", "kind"],
        )
        .expect("valid metric");
        let probe_timeouts = IntCounterVec::new(
            Opts::new(
                "probe_timeouts_total",
                "Calls that hit the probe timeout, by collector.",
            ),
            &["collector"],
        )
        .expect("valid metric");
        let scrape_failures = IntCounter::new(
            "scrape_failures_total",
            "Scrapes of etcd's Prometheus endpoint that failed.",
        )
        .expect("valid metric");
        let parse_errors = IntCounter::new(
            "parse_errors_total",
            "Malformed lines skipped while parsing etcd's metrics.",
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "collect_duration_seconds",
                "Duration of one collection round.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["collector"],
        )
        .expect("valid metric");
        let last_success = IntGaugeVec::new(
            Opts::new(
                "last_success_timestamp_seconds",
                "Unix time of the last round without failures, by collector.",
            ),
            &["collector"],
        )
        .expect("valid metric");
        let reports_dropped = IntCounter::new(
            "reports_dropped_total",
            "Reports dropped because the sink was full.",
        )
        .expect("valid metric");
        let counter = |n: &str, h: &str| IntCounter::new(n, h).expect("valid metric");
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).expect("valid metric");
        let batches_built = counter("batches_built_total", "Batches built and spooled.");
        let batches_sent = counter(
            "batches_sent_total",
            "Batches sent to the collector, resends included.",
        );
        let batches_acked = counter(
            "batches_acked_total",
            "Batches the collector acknowledged as stored.",
        );
        let batches_rejected = counter(
            "batches_rejected_total",
            "Batches the collector refused for good (dropped).",
        );
        let batches_too_large = counter(
            "batches_too_large_total",
            "Batches larger than the collector accepts (Welcome.max_batch_bytes): sent \
             without their reports, which are lost.",
        );
        let stored_through_ahead = counter(
            "stored_through_ahead_total",
            "Collector streams refused because the collector said batches were stored \
             that this agent never numbered (another agent with the same agent id).",
        );
        let stream_errors = counter(
            "stream_errors_total",
            "Collector streams that failed; each is followed by a reconnect.",
        );
        let collector_connected = gauge(
            "collector_connected",
            "1 while a stream to the collector is open.",
        );
        let spool_bytes = IntGaugeVec::new(
            Opts::new("spool_bytes", "Bytes of unacknowledged batches, by tier."),
            &["tier"],
        )
        .expect("valid metric");
        let spool_batches = gauge("spool_batches", "Unacknowledged batches held.");
        let spool_dropped_batches = gauge(
            "spool_dropped_batches",
            "Batches dropped since start: disk budget full or spooled file corrupt.",
        );
        let spool_dropped_bytes = gauge("spool_dropped_bytes", "Bytes of the dropped batches.");
        for c in [
            Box::new(batches_built.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batches_sent.clone()),
            Box::new(batches_acked.clone()),
            Box::new(batches_rejected.clone()),
            Box::new(batches_too_large.clone()),
            Box::new(stored_through_ahead.clone()),
            Box::new(stream_errors.clone()),
            Box::new(collector_connected.clone()),
            Box::new(spool_bytes.clone()),
            Box::new(spool_batches.clone()),
            Box::new(spool_dropped_batches.clone()),
            Box::new(spool_dropped_bytes.clone()),
            Box::new(collections.clone()),
            Box::new(failures.clone()),
            Box::new(probe_timeouts.clone()),
            Box::new(scrape_failures.clone()),
            Box::new(parse_errors.clone()),
            Box::new(duration.clone()),
            Box::new(last_success.clone()),
            Box::new(reports_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            collections,
            failures,
            probe_timeouts,
            scrape_failures,
            parse_errors,
            duration,
            last_success,
            reports_dropped,
            batches_built,
            batches_sent,
            batches_acked,
            batches_rejected,
            batches_too_large,
            stored_through_ahead,
            stream_errors,
            collector_connected,
            spool_bytes,
            spool_batches,
            spool_dropped_batches,
            spool_dropped_bytes,
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished round of `collector`.
    pub fn observe(&self, collector: &str, body: &Body, seconds: f64, now_unix: i64) {
        self.collections.with_label_values(&[collector]).inc();
        self.duration
            .with_label_values(&[collector])
            .observe(seconds);
        let failures = body.failures();
        for f in &failures {
            let kind = ErrorKind::try_from(f.kind).unwrap_or(ErrorKind::Other);
            self.failures
                .with_label_values(&[collector, f.call.as_str(), kind.short_name()])
                .inc();
            if kind == ErrorKind::Timeout {
                self.probe_timeouts.with_label_values(&[collector]).inc();
            }
        }
        if let Body::Metrics(m) = body {
            if m.failure.is_some() {
                self.scrape_failures.inc();
            }
            self.parse_errors.inc_by(u64::from(m.parse_errors));
        }
        if failures.is_empty() {
            self.last_success
                .with_label_values(&[collector])
                .set(now_unix);
        }
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}
