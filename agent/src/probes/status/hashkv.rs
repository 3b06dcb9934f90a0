//! The agent's side of the collector's consistency check.
//!
//! The collector picks a revision every member has applied and asks each
//! agent of the cluster for its member's `HashKV` at that revision (a
//! `HashRequest` on the stream). The stream puts the request into the
//! [`KvHashSlot`]; the status probe starts the hash on its next round and
//! sends the answer in the first status report after it finished.
//!
//! The hash runs in its own task with its own deadline: `HashKV` reads the
//! member's whole store (seconds on a large one), and the status rounds that
//! detect a dead member must not wait for it. One hash runs at a time; a
//! request that arrives meanwhile waits, and a newer one replaces it.

use crate::error_kind::{classify_etcd, etcd_message, timeout};
use etcd_client::Client;
use etcdmon_proto::v1::KvHash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Requests from the collector and the finished answer; cheap to clone.
#[derive(Clone, Default)]
pub struct KvHashSlot(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    /// The revision the collector asked for last, not yet started.
    requested: Option<i64>,
    /// A hash is running.
    running: bool,
    /// The last answer, not yet reported.
    done: Option<KvHash>,
}

impl KvHashSlot {
    /// The collector asks for the hash at `revision`.
    pub fn request(&self, revision: i64) {
        self.lock().requested = Some(revision);
    }

    /// Starts the requested hash, if any and none runs, on `client`.
    pub(super) fn start(&self, client: &Client, deadline: Duration) {
        let revision = {
            let mut s = self.lock();
            if s.running {
                return;
            }
            let Some(r) = s.requested.take() else { return };
            s.running = true;
            r
        };
        let (slot, mut maintenance) = (self.clone(), client.maintenance_client());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut out = KvHash {
                revision,
                ..Default::default()
            };
            match tokio::time::timeout(deadline, maintenance.hash_kv(revision)).await {
                Ok(Ok(r)) => {
                    out.hash = r.hash();
                    out.compact_revision = r.compact_version();
                }
                Ok(Err(e)) => {
                    out.failure = Some(etcdmon_proto::v1::Failure::new(
                        "hash_kv",
                        classify_etcd(&e),
                        etcd_message(&e),
                    ))
                }
                Err(_) => out.failure = Some(timeout("hash_kv", deadline)),
            }
            out.duration_seconds = started.elapsed().as_secs_f64();
            match &out.failure {
                None => tracing::debug!(
                    revision,
                    hash = out.hash,
                    seconds = out.duration_seconds,
                    "kv hash"
                ),
                Some(f) => {
                    tracing::warn!(revision, error = %f.message, "kv hash for the consistency check failed")
                }
            }
            let mut s = slot.lock();
            s.running = false;
            s.done = Some(out);
        });
    }

    /// The finished answer, once.
    pub(super) fn take_done(&self) -> Option<KvHash> {
        self.lock().done.take()
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Plain field stores: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_request_replaces_one_not_yet_started() {
        let slot = KvHashSlot::default();
        slot.request(10);
        slot.request(12);
        assert_eq!(slot.lock().requested, Some(12));
        assert!(slot.take_done().is_none());
    }
}
