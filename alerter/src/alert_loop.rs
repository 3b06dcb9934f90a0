//! The alerter's main loop: candidates in, state persisted, notifications out.
//!
//! ```text
//! start:  store ──latest transitions, recent history, successful deliveries──> engine.restore
//! loop:   subscriber.next ──> engine.on_candidate ──> store.record_transitions (retried)
//!                                                 ──> delivery.ack ──> engine.due ──> sender
//!         (a heartbeat goes to the watchdog instead, whose own candidates take the
//!          same way into the engine)
//!         every 200 ms: engine.due (timers), and when an inhibition hold ends
//!         every refresh_interval: silences, acks
//! ```
//!
//! A candidate is acknowledged on the bus only after its transition is stored, so a
//! crash before that gets it redelivered; the notification log makes the redelivery
//! harmless.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcdmon_alert::{AlertCandidate, AlertState, Silence};
use etcdmon_bus::{BusError, Delivery, Subscriber};
use etcdmon_core::ops::FailingSince;
use etcdmon_core::retry::RetryPolicy;
use etcdmon_storage::{AlertHistoryQuery, AlertStore};
use tokio_util::sync::CancellationToken;

use crate::engine::{Applied, Engine, Told};
use crate::metrics::AlerterMetrics;
use crate::sender::{now_ms, Sender};
use crate::watchdog::Watchdog;

/// How far back state is restored at start-up (resolved alerts and deliveries older
/// than this no longer matter; firing alerts are restored whatever their age).
const RESTORE_WINDOW_MS: i64 = 24 * 3_600_000;
/// How often timers are checked.
const TICK: Duration = Duration::from_millis(200);
/// Most rows read back at start-up per table.
const RESTORE_LIMIT: usize = 100_000;
/// Waits while the store does not answer at start-up.
const RESTORE_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(30));
/// Waits while a transition cannot be recorded (its candidate stays unacknowledged).
const RECORD_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10));

/// The alerter's loop over the candidates.
pub struct AlertLoop {
    engine: Engine,
    watchdog: Watchdog,
    store: Arc<dyn AlertStore>,
    sender: Sender,
    metrics: AlerterMetrics,
    refresh_interval: Duration,
    store_health: FailingSince,
}

impl AlertLoop {
    /// A service over a configured engine, store and sender.
    pub fn new(
        engine: Engine,
        watchdog: Watchdog,
        store: Arc<dyn AlertStore>,
        sender: Sender,
        metrics: AlerterMetrics,
        refresh_interval: Duration,
    ) -> Self {
        Self {
            engine,
            watchdog,
            store,
            sender,
            metrics,
            refresh_interval,
            store_health: FailingSince::default(),
        }
    }

    /// Since when the store has been failing (for `/healthz`): while it is, new
    /// transitions cannot be recorded and the alerter holds them.
    pub fn store_health(&self) -> FailingSince {
        self.store_health.clone()
    }

    /// Restores the engine from the store, retrying until it answers or `shutdown`.
    async fn restore(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = RESTORE_RETRY.backoff();
        loop {
            match self.try_restore().await {
                Ok(()) => {
                    self.store_health.ok();
                    return true;
                }
                Err(e) => {
                    self.store_health.failing();
                    self.metrics.store_errors.inc();
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "restore alert state from the store");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn try_restore(&mut self) -> etcdmon_storage::Result<()> {
        let now = now_ms();
        let since = now - RESTORE_WINDOW_MS;
        let latest = self.store.latest_transitions(since).await?;
        let query = AlertHistoryQuery {
            from_ms: since,
            to_ms: i64::MAX,
            limit: RESTORE_LIMIT,
            ..Default::default()
        };
        let mut history = self.store.alert_history(&query).await?;
        history.reverse(); // oldest first

        // What receivers were told about alerts still firing, however long ago:
        // otherwise an alert firing for days would be "new" again after a restart.
        let oldest_firing = latest
            .iter()
            .filter(|r| r.state.is_firing())
            .map(|r| r.active_since_ms)
            .min()
            .unwrap_or(since);
        let deliveries = self
            .store
            .deliveries(&AlertHistoryQuery {
                from_ms: oldest_firing.min(since),
                ..query.clone()
            })
            .await?;
        let told: Vec<(String, String, Told)> = deliveries
            .into_iter()
            .filter(|d| d.outcome == "ok")
            .filter_map(|d| {
                Told::from_stored(&d.state, d.transition).map(|t| (d.receiver, d.fingerprint, t))
            })
            .collect();
        tracing::info!(
            alerts = latest.len(),
            deliveries = told.len(),
            "alert state restored"
        );
        self.engine.restore(&latest, &history, told, now);
        let firing: Vec<(String, u64)> = self
            .engine
            .alerts()
            .iter()
            .filter(|a| a.status == AlertState::Firing)
            .map(|a| (a.fingerprint.clone(), a.transition))
            .collect();
        self.watchdog
            .restore(|fp| firing.iter().find_map(|(f, t)| (f == fp).then_some(*t)));
        self.refresh().await;
        Ok(())
    }

    /// Re-reads silences and acknowledgements; keeps the previous ones on failure.
    async fn refresh(&mut self) {
        let now = now_ms();
        match self.store.silences(now - RESTORE_WINDOW_MS).await {
            Ok(rows) => {
                self.store_health.ok();
                let silences = rows
                    .iter()
                    .filter_map(|r| match Silence::try_from(r) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a stored silence");
                            None
                        }
                    })
                    .collect();
                self.engine.set_silences(silences);
            }
            Err(e) => {
                self.store_health.failing();
                self.metrics.store_errors.inc();
                tracing::warn!(error = %e, "read silences; keeping the previous ones");
            }
        }
        // Only firing alerts can be acknowledged, and never before they began: the
        // acks made since the oldest firing alert began are all that matter (an
        // alert acknowledged days ago and still firing stays acknowledged), and
        // this read stays small however many old acks the store keeps.
        let since = self.engine.oldest_firing_since_ms().unwrap_or(now);
        match self.store.acks(since).await {
            Ok(rows) => {
                let acks: HashSet<(String, u64)> = rows
                    .into_iter()
                    .map(|a| (a.fingerprint, a.transition))
                    .collect();
                self.engine.set_acks(acks);
            }
            Err(e) => {
                self.store_health.failing();
                self.metrics.store_errors.inc();
                tracing::warn!(error = %e, "read acknowledgements; keeping the previous ones");
            }
        }
    }

    /// Runs until `shutdown` or until the subscriber closes.
    pub async fn run(mut self, mut subscriber: Box<dyn Subscriber>, shutdown: CancellationToken) {
        if !self.restore(&shutdown).await {
            return;
        }
        self.watchdog.listening_since(now_ms());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(self.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // An alert held back by inhibition timing is notified the moment its
            // hold ends, not at the next tick.
            let held = etcdmon_core::sleep_until_epoch_ms(self.engine.next_wake_ms());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = held => {}
                next = subscriber.next() => match next {
                    Ok(delivery) => {
                        if !self.apply(delivery, &shutdown).await {
                            break;
                        }
                    }
                    Err(BusError::Closed) => {
                        tracing::info!("candidate channel closed; alerter stops");
                        break;
                    }
                    Err(e) => {
                        // The subscriber paces its own recovery.
                        tracing::warn!(error = %e, "receive alert candidates");
                    }
                },
                _ = tick.tick() => {}
                _ = refresh.tick() => self.refresh().await,
            }
            if !self.heartbeats(&shutdown).await {
                break;
            }
            self.dispatch();
        }
    }

    /// Applies one candidate: persist, then ack. False when shutdown interrupted it
    /// (the candidate stays unacknowledged and is delivered again). A heartbeat is
    /// only noted.
    async fn apply(&mut self, delivery: Delivery, shutdown: &CancellationToken) -> bool {
        if delivery.candidate.is_heartbeat() {
            let now = now_ms();
            self.watchdog.on_heartbeat(&delivery.candidate, now);
            self.metrics
                .candidates
                .with_label_values(&["heartbeat"])
                .inc();
            self.metrics.last_heartbeat.set(now / 1000);
        } else if !self.record(&delivery.candidate, shutdown).await {
            return false;
        }
        if let Err(e) = delivery.ack().await {
            // Redelivered later and then recognised as unchanged.
            tracing::debug!(error = %e, "ack alert candidate");
        }
        true
    }

    /// Feeds the watchdog's own candidates (see [`crate::watchdog`]) to the engine.
    /// False when shutdown interrupted recording one.
    async fn heartbeats(&mut self, shutdown: &CancellationToken) -> bool {
        for candidate in self.watchdog.poll(now_ms()) {
            tracing::info!(
                rule = %candidate.labels.get("rule").map_or("", String::as_str),
                state = %candidate.state,
                "heartbeat watchdog"
            );
            if !self.record(&candidate, shutdown).await {
                return false;
            }
        }
        true
    }

    /// Applies `candidate` to the engine and stores the transition it makes, retrying
    /// until the store takes it. False when shutdown interrupted that.
    async fn record(&mut self, candidate: &AlertCandidate, shutdown: &CancellationToken) -> bool {
        let now = now_ms();
        match self.engine.on_candidate(candidate, now) {
            Applied::Transition(row) => {
                self.metrics
                    .candidates
                    .with_label_values(&["transition"])
                    .inc();
                let mut backoff = RECORD_RETRY.backoff();
                while let Err(e) = self
                    .store
                    .record_transitions(std::slice::from_ref(&row))
                    .await
                {
                    self.store_health.failing();
                    self.metrics.store_errors.inc();
                    tracing::warn!(error = %e, fingerprint = %row.fingerprint, "record alert transition; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
                self.store_health.ok();
            }
            Applied::Unchanged => {
                self.metrics
                    .candidates
                    .with_label_values(&["unchanged"])
                    .inc();
            }
            Applied::Stale => {
                self.metrics.candidates.with_label_values(&["stale"]).inc();
            }
        }
        true
    }

    fn dispatch(&mut self) {
        let now = now_ms();
        for n in self.engine.due(now) {
            self.sender.send(n);
        }
        let firing = self
            .engine
            .alerts()
            .iter()
            .filter(|a| a.status == AlertState::Firing)
            .count();
        self.metrics.alerts_firing.set(firing as i64);
    }
}
