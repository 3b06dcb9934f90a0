//! The consistency check: members' data compared at a common revision.
//!
//! Every `consistency.interval` the collector picks, per cluster, the lowest
//! revision its healthy members have reported (so every one of them has
//! applied it) and asks each agent of the cluster for its member's `HashKV`
//! at that revision, over the agent's own stream (`HashRequest`). The answers
//! come back in status reports (`EtcdStatus.kv_hash`) into the live state,
//! where the `data_inconsistent` rule compares them: at the same revision
//! and compaction, every member's hash must be the same.
//!
//! The check is driven from here, not by each agent on its own, because the
//! members must be hashed at the same revision, and only the collector sees
//! every member's revision. Agents that do not offer the feature in their
//! Hello (older agents) are never asked.

use crate::config::ConsistencyConfig;
use crate::state::{ClusterState, LiveState};
use etcdmon_proto::v1::{stream_response, HashRequest, StreamResponse};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The way back to one agent: its stream's outgoing messages.
pub type AgentOutbound = mpsc::Sender<Result<StreamResponse, Status>>;

/// The streams of agents that answer hash requests, by cluster; cheap to clone.
#[derive(Clone, Default)]
pub struct HashAskers {
    inner: Arc<Mutex<HashMap<String, HashMap<u64, AgentOutbound>>>>,
    next: Arc<AtomicU64>,
}

/// Keeps one stream registered; unregisters it when dropped (the session ended).
pub struct Registration {
    askers: HashAskers,
    cluster: String,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut g = self.askers.lock();
        if let Some(streams) = g.get_mut(&self.cluster) {
            streams.remove(&self.key);
            if streams.is_empty() {
                g.remove(&self.cluster);
            }
        }
    }
}

impl HashAskers {
    /// Registers the stream of an agent of `cluster` until the result is dropped.
    pub fn register(&self, cluster: &str, out: AgentOutbound) -> Registration {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(cluster.to_owned())
            .or_default()
            .insert(key, out);
        Registration {
            askers: self.clone(),
            cluster: cluster.to_owned(),
            key,
        }
    }

    /// Asks every registered agent of `cluster` for its hash at `revision`;
    /// returns how many were asked. Never waits: a stream whose outgoing queue
    /// is full (its acks are backed up) is skipped this round.
    pub fn ask(&self, cluster: &str, revision: i64) -> usize {
        let g = self.lock();
        let Some(streams) = g.get(cluster) else {
            return 0;
        };
        streams
            .values()
            .filter(|out| {
                out.try_send(Ok(StreamResponse {
                    kind: Some(stream_response::Kind::HashRequest(HashRequest { revision })),
                }))
                .is_ok()
            })
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, AgentOutbound>>> {
        // Plain map updates: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The revision to compare `c`'s members at: the lowest one its healthy
/// members reported, which each of them has applied. `None` with fewer than
/// two such members (nothing to compare).
pub fn common_revision(c: &ClusterState) -> Option<i64> {
    let revisions: Vec<i64> = c
        .members
        .values()
        .filter(|m| m.healthy && !m.stale && !m.removed && m.revision > 0)
        .map(|m| m.revision)
        .collect();
    if revisions.len() < 2 {
        return None;
    }
    revisions.into_iter().min()
}

/// Asks for hashes every `cfg.interval` until `shutdown`.
pub async fn run(
    cfg: ConsistencyConfig,
    state: LiveState,
    askers: HashAskers,
    shutdown: CancellationToken,
) {
    if !cfg.enabled {
        tracing::info!("consistency check disabled (consistency.enabled = false)");
        return;
    }
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once, before any agent reported: skip it.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for c in state.snapshot() {
            if let Some(revision) = common_revision(&c) {
                let asked = askers.ask(&c.name, revision);
                tracing::debug!(cluster = %c.name, revision, asked, "consistency check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemberState;

    fn member(revision: i64, healthy: bool) -> MemberState {
        let mut m = MemberState::default();
        (m.revision, m.healthy) = (revision, healthy);
        m
    }

    #[test]
    fn the_common_revision_is_the_lowest_of_the_healthy_members() {
        let mut c = ClusterState::default();
        c.members.insert("m1".into(), member(120, true));
        assert_eq!(common_revision(&c), None, "one member: nothing to compare");
        c.members.insert("m2".into(), member(118, true));
        c.members.insert("m3".into(), member(7, false));
        assert_eq!(
            common_revision(&c),
            Some(118),
            "the down member is left out"
        );
    }

    #[tokio::test]
    async fn agents_are_asked_until_their_stream_ends() {
        let askers = HashAskers::default();
        let (tx, mut rx) = mpsc::channel(2);
        let reg = askers.register("c1", tx);
        assert_eq!(askers.ask("c1", 42), 1);
        assert_eq!(askers.ask("other", 42), 0);
        let Some(Ok(StreamResponse {
            kind: Some(stream_response::Kind::HashRequest(h)),
        })) = rx.recv().await
        else {
            panic!("expected a HashRequest");
        };
        assert_eq!(h.revision, 42);
        drop(reg);
        assert_eq!(askers.ask("c1", 43), 0);
    }
}
