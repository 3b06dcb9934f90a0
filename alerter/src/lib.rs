//! The etcdmon alerter: turns alert candidates from the collector's rules into
//! deduplicated, grouped, silenced, acknowledged and escalated notifications.
//!
//! ```text
//! Subscriber (JetStream or in-process) ──> service ──> engine (routes, groups, silences,
//!        ▲ ack after the transition is stored     │     inhibition, flapping, acks)
//!        │                                        ▼
//!        └──────────────────────────── sender: retries, records every attempt ──> receivers
//! ```
//!
//! [`build`] assembles the parts from an [`config::AlerterConfig`]; the
//! standalone `etcdmon-alerter` (JetStream) and the all-in-one `etcdmon up` (in-process
//! channel) both use it.

pub mod cli;
pub mod config;
pub mod engine;
pub mod flap;
pub mod inhibit;
pub mod matcher;
pub mod metrics;
pub mod notification;
pub mod receivers;
pub mod route;
pub mod sender;
pub mod service;
pub mod silence;
pub mod template;
#[cfg(test)]
mod test_support;

use std::collections::HashSet;
use std::sync::Arc;

use etcdmon_core::config::FieldError;
use etcdmon_storage::AlertStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::AlerterConfig;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::AlerterMetrics;
use crate::sender::Sender;
use crate::service::Alerter;

/// The alerter's parts, ready to run.
pub struct Parts {
    /// The service; run it with a subscriber.
    pub alerter: Alerter,
    /// The delivery workers (already running); they end at shutdown.
    pub workers: Vec<JoinHandle<()>>,
    /// Self-metrics.
    pub metrics: AlerterMetrics,
}

/// Validates `cfg`, builds the receivers and starts the delivery workers.
pub fn build(
    cfg: &AlerterConfig,
    store: Arc<dyn AlertStore>,
    shutdown: CancellationToken,
) -> Result<Parts, FieldError> {
    let (route, receivers) = cfg.build()?;
    let metrics = AlerterMetrics::new();
    // PagerDuty incidents are acknowledged when the alert is.
    let ack_receivers: HashSet<String> = receivers
        .notifiers
        .iter()
        .filter(|(_, n)| n.kind() == "pagerduty")
        .map(|(name, _)| name.clone())
        .collect();
    let engine = Engine::new(
        route,
        EngineConfig {
            inhibit_rules: cfg.inhibit_rules(),
            flapping: cfg.flapping.clone(),
            ack_receivers,
            external_url: cfg.external_url.clone(),
        },
    );
    let (sender, workers) = Sender::start(
        &receivers.notifiers,
        store.clone(),
        &cfg.delivery,
        metrics.clone(),
        shutdown,
    );
    let alerter = Alerter::new(engine, store, sender, metrics.clone(), cfg.refresh_interval);
    Ok(Parts {
        alerter,
        workers,
        metrics,
    })
}
