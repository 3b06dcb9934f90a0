//! The etcdmon alerter: turns alert candidates from the collector's rules into
//! deduplicated, grouped, silenced, acknowledged and escalated notifications.
//!
//! ```text
//! Subscriber (JetStream or in-process) ──> alert loop ──> engine (routes, groups, silences,
//!        ▲ ack after the transition is stored     │     inhibition, flapping, acks)
//!        │                                        ▼
//!        └──────────────────────────── sender: retries, records every attempt ──> receivers
//! ```
//!
//! [`Setup::new`] checks the config and builds routes and receivers once;
//! [`Alerter::serve`] runs it and [`Running::drain`] stops it (see [`serve`]).
//! The standalone `etcdmon-alerter` (JetStream) and the all-in-one `etcdmon up`
//! (in-process channel) both start it that way.

pub mod alert_loop;
pub mod cli;
pub mod config;
pub mod engine;
pub mod flap;
pub mod inhibit;
pub mod metrics;
pub mod notification;
pub mod receivers;
pub mod route;
pub mod sender;
pub mod serve;
pub mod template;
pub mod watchdog;

pub use serve::{Alerter, Candidates, Running, Setup};
