//! The collector's own metrics, served on its `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters, gauges and histograms of the collector.
#[derive(Clone)]
pub struct CollectorMetrics {
    registry: Registry,
    /// Batches stored (acknowledged).
    pub batches_stored: IntCounter,
    /// Batches acknowledged without writing: already stored (resends).
    pub batches_duplicate: IntCounter,
    /// Batches the store refused for good.
    pub batches_rejected: IntCounter,
    /// Samples written.
    pub samples_stored: IntCounter,
    /// Events written.
    pub events_stored: IntCounter,
    /// Encoded size of received batches.
    pub batch_bytes: Histogram,
    /// Duration of one storage write.
    pub write_seconds: Histogram,
    /// Rows in one storage write.
    pub write_rows: Histogram,
    /// Failed storage writes by error class (`unavailable`, `rejected`).
    pub write_failures: IntCounterVec,
    /// Batches waiting for the writer.
    pub queue_batches: IntGauge,
    /// Estimated bytes of rows queued for or in a write.
    pub queue_bytes: IntGauge,
    /// Open agent streams.
    pub agents_connected: IntGauge,
    /// Streams refused or ended with an error, by reason.
    pub streams_rejected: IntCounterVec,
    /// Time from a report's timestamp to its rows being stored.
    pub ingest_latency_seconds: Histogram,
    /// Alert transitions by rule and state (firing, resolved).
    pub alert_transitions: IntCounterVec,
    /// Alerts currently firing.
    pub alerts_firing: IntGauge,
    /// Duration of one evaluation of all rules.
    pub rules_seconds: Histogram,
    /// Alert candidates waiting in the outbox (NATS slow or down).
    pub alerts_outbox_pending: IntGauge,
    /// Alert candidates published since start.
    pub alerts_published: IntGauge,
    /// Alert candidates dropped since start (outbox full or refused).
    pub alerts_dropped: IntGauge,
    /// Alert candidates sent again after the outbox dropped some.
    pub alerts_restated: IntCounter,
    /// Heartbeats handed to the outbox (`alerting.heartbeat_interval`).
    pub heartbeats: IntCounter,
    /// 1 when the alerter's durable consumer exists on the alert stream, 0 when not.
    pub alerter_consumer: IntGauge,
    /// Candidates in the stream not yet delivered to the alerter.
    pub alerter_consumer_pending: IntGauge,
    /// Candidates delivered to the alerter and not yet acknowledged.
    pub alerter_consumer_unacknowledged: IntGauge,
    /// API requests refused, by reason (`host`, `unauthenticated`, `forbidden`).
    pub api_refused: IntCounterVec,
    /// Audit rows the store did not take (logged with what they recorded).
    pub audit_write_failures: IntCounter,
    /// Refused API requests not written to the audit log (over the per-second budget).
    pub audit_suppressed: IntCounter,
}

impl CollectorMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("etcdmon_collector".into()), None)
            .expect("static prefix is a valid metric name");
        let c = |n: &str, h: &str| IntCounter::new(n, h).expect("valid metric");
        let batches_stored = c(
            "batches_stored_total",
            "Agent batches stored and acknowledged.",
        );
        let batches_duplicate = c(
            "batches_duplicate_total",
            "Resent batches acknowledged without writing (already stored).",
        );
        let batches_rejected = c(
            "batches_rejected_total",
            "Batches the store refused for good.",
        );
        let samples_stored = c("samples_stored_total", "Samples written to storage.");
        let events_stored = c("events_stored_total", "Events written to storage.");
        let batch_bytes = Histogram::with_opts(
            HistogramOpts::new("batch_bytes", "Encoded size of received agent batches.")
                .buckets(prometheus::exponential_buckets(1024.0, 4.0, 8).expect("valid buckets")),
        )
        .expect("valid metric");
        let alerts_restated = c(
            "alerts_restated_total",
            "Alert candidates sent again because the outbox dropped some while NATS was away.",
        );
        let heartbeats = c(
            "heartbeats_total",
            "Heartbeats handed to the alert outbox for the alerter's watchdog.",
        );
        let g = |n: &str, h: &str| IntGauge::new(n, h).expect("valid metric");
        let alerter_consumer = g(
            "alerter_consumer",
            "1 when the alerter's durable consumer exists on the alert stream, 0 when not \
             (as of the last check, every 15 s).",
        );
        let alerter_consumer_pending = g(
            "alerter_consumer_pending",
            "Alert candidates in the stream not yet delivered to the alerter.",
        );
        let alerter_consumer_unacknowledged = g(
            "alerter_consumer_unacknowledged",
            "Alert candidates delivered to the alerter and not yet acknowledged.",
        );
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new("storage_write_seconds", "Duration of one storage write.").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
        )
        .expect("valid metric");
        let write_rows = Histogram::with_opts(
            HistogramOpts::new("storage_write_rows", "Rows in one storage write.")
                .buckets(prometheus::exponential_buckets(10.0, 4.0, 9).expect("valid buckets")),
        )
        .expect("valid metric");
        let write_failures = IntCounterVec::new(
            Opts::new(
                "storage_write_failures_total",
                "Failed storage writes, by class.",
            ),
            &["class"],
        )
        .expect("valid metric");
        let queue_bytes = IntGauge::new(
            "queue_bytes",
            "Estimated memory of rows waiting for the writer or being written (ingest.queue_bytes bounds it).",
        )
        .expect("valid metric");
        let api_refused = IntCounterVec::new(
            Opts::new(
                "api_refused_total",
                "API requests refused, by reason (host, unauthenticated, forbidden).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let audit_write_failures = c(
            "audit_write_failures_total",
            "Audit log rows the store did not take (each is logged).",
        );
        let audit_suppressed = c(
            "audit_suppressed_total",
            "Refused API requests beyond the audit log's per-second budget (counted, not written).",
        );
        let queue_batches = IntGauge::new("queue_batches", "Batches waiting for the writer.")
            .expect("valid metric");
        let agents_connected =
            IntGauge::new("agents_connected", "Open agent streams.").expect("valid metric");
        let streams_rejected = IntCounterVec::new(
            Opts::new(
                "streams_rejected_total",
                "Agent streams refused or ended with an error, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let ingest_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ingest_latency_seconds",
                "Time from a report's timestamp to its rows being stored.",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let alert_transitions = IntCounterVec::new(
            Opts::new(
                "alert_transitions_total",
                "Alert transitions, by rule and state.",
            ),
            &["rule", "state"],
        )
        .expect("valid metric");
        let alerts_firing =
            IntGauge::new("alerts_firing", "Alerts currently firing.").expect("valid metric");
        let rules_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rules_evaluation_seconds",
                "Duration of one evaluation of all rules.",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]),
        )
        .expect("valid metric");
        let alerts_outbox_pending = IntGauge::new(
            "alerts_outbox_pending",
            "Alert candidates waiting in the outbox (NATS slow or down).",
        )
        .expect("valid metric");
        let alerts_published = IntGauge::new(
            "alerts_published",
            "Alert candidates published since start.",
        )
        .expect("valid metric");
        let alerts_dropped = IntGauge::new(
            "alerts_dropped",
            "Alert candidates dropped since start (outbox full or refused by NATS).",
        )
        .expect("valid metric");
        for m in [
            Box::new(alerts_outbox_pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(alerts_published.clone()),
            Box::new(alerts_dropped.clone()),
            Box::new(alerts_restated.clone()),
            Box::new(heartbeats.clone()),
            Box::new(alerter_consumer.clone()),
            Box::new(alerter_consumer_pending.clone()),
            Box::new(alerter_consumer_unacknowledged.clone()),
            Box::new(api_refused.clone()),
            Box::new(audit_write_failures.clone()),
            Box::new(audit_suppressed.clone()),
            Box::new(alert_transitions.clone()),
            Box::new(alerts_firing.clone()),
            Box::new(rules_seconds.clone()),
            Box::new(batches_stored.clone()),
            Box::new(batches_duplicate.clone()),
            Box::new(batches_rejected.clone()),
            Box::new(samples_stored.clone()),
            Box::new(events_stored.clone()),
            Box::new(batch_bytes.clone()),
            Box::new(write_seconds.clone()),
            Box::new(write_rows.clone()),
            Box::new(write_failures.clone()),
            Box::new(queue_batches.clone()),
            Box::new(queue_bytes.clone()),
            Box::new(agents_connected.clone()),
            Box::new(streams_rejected.clone()),
            Box::new(ingest_latency_seconds.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            batches_stored,
            batches_duplicate,
            batches_rejected,
            samples_stored,
            events_stored,
            batch_bytes,
            write_seconds,
            write_rows,
            write_failures,
            queue_batches,
            queue_bytes,
            agents_connected,
            streams_rejected,
            ingest_latency_seconds,
            alert_transitions,
            alerts_firing,
            rules_seconds,
            alerts_outbox_pending,
            alerts_published,
            alerts_dropped,
            alerts_restated,
            heartbeats,
            alerter_consumer,
            alerter_consumer_pending,
            alerter_consumer_unacknowledged,
            api_refused,
            audit_write_failures,
            audit_suppressed,
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
