//! The alerter's own metrics, served on its `/metrics` (prefix `etcdmon_alerter_`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Counters and gauges of the alerter.
#[derive(Clone)]
pub struct AlerterMetrics {
    registry: Registry,
    /// Candidates received, by result (`transition`, `unchanged`, `stale`, `heartbeat`).
    pub candidates: IntCounterVec,
    /// Notification attempts by receiver and outcome (`ok`, `retry`, `failed`, `dropped`).
    pub notifications: IntCounterVec,
    /// Duration of one delivery attempt, by receiver.
    pub delivery_seconds: HistogramVec,
    /// Deliveries that could not be recorded in the store.
    pub record_failures: IntCounter,
    /// Alerts currently firing.
    pub alerts_firing: IntGauge,
    /// Store calls that failed (transitions, silences, acknowledgements).
    pub store_errors: IntCounter,
    /// When the latest collector heartbeat arrived (Unix seconds; 0: none yet).
    pub last_heartbeat: IntGauge,
}

impl AlerterMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("etcdmon_alerter".into()), None)
            .expect("static prefix is a valid metric name");
        let candidates = IntCounterVec::new(
            Opts::new("candidates_total", "Alert candidates received, by result."),
            &["result"],
        )
        .expect("valid metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "Notification attempts by receiver and outcome.",
            ),
            &["receiver", "outcome"],
        )
        .expect("valid metric");
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new("delivery_seconds", "Duration of one delivery attempt.").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["receiver"],
        )
        .expect("valid metric");
        let record_failures = IntCounter::new(
            "delivery_record_failures_total",
            "Delivery attempts that could not be recorded in the store.",
        )
        .expect("valid metric");
        let alerts_firing =
            IntGauge::new("alerts_firing", "Alerts currently firing.").expect("valid metric");
        let store_errors =
            IntCounter::new("store_errors_total", "Failed store calls.").expect("valid metric");
        let last_heartbeat = IntGauge::new(
            "last_heartbeat_timestamp_seconds",
            "When the latest collector heartbeat arrived (Unix seconds; 0: none yet).",
        )
        .expect("valid metric");
        for m in [
            Box::new(candidates.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_heartbeat.clone()),
            Box::new(notifications.clone()),
            Box::new(delivery_seconds.clone()),
            Box::new(record_failures.clone()),
            Box::new(alerts_firing.clone()),
            Box::new(store_errors.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Self {
            registry,
            candidates,
            notifications,
            delivery_seconds,
            record_failures,
            alerts_firing,
            store_errors,
            last_heartbeat,
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for AlerterMetrics {
    fn default() -> Self {
        Self::new()
    }
}
