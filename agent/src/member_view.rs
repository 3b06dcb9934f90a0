//! State shared between collectors: the identity (completed as the status
//! collector learns the member id and name) and the latest member list
//! (which the peer RTT collector probes).

use crate::config::IdentityConfig;
use crate::probes::status::KvHashSlot;
use etcdmon_proto::v1::{Identity, Member};
use std::sync::{Arc, RwLock};

/// Cheap to clone; all clones see the same state.
#[derive(Clone, Default)]
pub struct MemberView {
    inner: Arc<RwLock<Inner>>,
    /// The collector's consistency-check requests (from the stream) and their
    /// answers (from the status probe).
    kv_hash: KvHashSlot,
}

#[derive(Default)]
struct Inner {
    identity: Identity,
    members: Vec<Member>,
    /// Whether member_name came from config (then never overwritten).
    name_from_config: bool,
}

impl MemberView {
    /// State seeded from the configured identity.
    pub fn new(cfg: &IdentityConfig) -> Self {
        let node = if cfg.node.is_empty() {
            hostname()
        } else {
            cfg.node.clone()
        };
        let identity = Identity {
            cluster: cfg.cluster.clone(),
            member_name: cfg.member_name.clone(),
            member_id: 0,
            node,
            region: cfg.region.clone(),
            tags: cfg.tags.clone().into_iter().collect(),
        };
        Self {
            inner: Arc::new(RwLock::new(Inner {
                identity,
                members: Vec::new(),
                name_from_config: !cfg.member_name.is_empty(),
            })),
            kv_hash: KvHashSlot::default(),
        }
    }

    /// The identity as currently known.
    pub fn identity(&self) -> Identity {
        self.read(|i| i.identity.clone())
    }

    /// Where the stream leaves the collector's hash requests for the status probe.
    pub fn kv_hash(&self) -> &KvHashSlot {
        &self.kv_hash
    }

    /// The latest member list seen by the status collector.
    pub fn members(&self) -> Vec<Member> {
        self.read(|i| i.members.clone())
    }

    /// Records what one status round learned: our member id and the member
    /// list (from which our name follows, unless configured).
    pub fn learn(&self, member_id: u64, members: Option<Vec<Member>>) {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if member_id != 0 {
            g.identity.member_id = member_id;
        }
        if let Some(members) = members {
            if !g.name_from_config {
                let id = g.identity.member_id;
                if let Some(m) = members.iter().find(|m| m.id == id && !m.name.is_empty()) {
                    g.identity.member_name = m.name.clone();
                }
            }
            g.members = members;
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        // A panic while holding the lock cannot leave Inner half-written in
        // a way that matters to readers (plain field stores), so recover.
        match self.inner.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }
}

/// This host's name, from the kernel; "unknown" if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
