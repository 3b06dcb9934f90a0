//! The `etcdmon` command line. `up` runs everything on one machine: one
//! agent per etcd member (discovered through the member list), the
//! collector on the embedded SQLite store, and the API on one port.
//!
//! The agents stream to the collector over loopback gRPC, exactly as
//! separate processes would, so the embedded mode runs the production data
//! path (spool, acks, dedup) rather than a shortcut.
//!
//! The operator's tools sit beside it: `maintenance` (windows that page
//! nobody) and `disk` (is this disk fit for etcd's data dir?).

pub mod disk;
pub mod maintenance;
pub mod up;
