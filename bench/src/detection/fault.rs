//! The faults a trial injects, and how each is removed again.
//!
//! * `kill`: SIGKILL of the next member in turn; removed by a restart on the
//!   same data.
//! * `stop-leader`, `stop-follower`: SIGSTOP of the current leader, or of the
//!   next follower in turn: the process hangs with its ports open, so only
//!   timeouts can tell; removed by SIGCONT.
//! * `isolate`: the next member in turn loses its peer traffic both ways (the
//!   test kit's `PeerNet` proxies) while its clients still reach it; removed
//!   by healing the links.
//! * `nospace`: writes of 256 KiB values through the next member in turn
//!   until etcd refuses one with "database space exceeded" (a 16 MiB
//!   `--quota-backend-bytes`); `t0` is the moment the refusal returned,
//!   when the alarm is already raised. Removed as the runbook says: delete,
//!   compact, defragment every member, `alarm disarm`.
//!
//! "Healthy again" is every member's `/health` answering healthy (etcd
//! reports an active alarm and a member without a leader as unhealthy).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use etcd_client::{Client, DeleteOptions};
use etcdmon_testkit::{EtcdCluster, EtcdClusterBuilder};

use crate::support::{blocking, now_ms};

/// The backend quota of the `nospace` cluster.
pub const NOSPACE_QUOTA: u64 = 16 << 20;
/// Longest wait for a member to be healthy again after a fault is removed.
const HEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// A fault injected into one member (or, for `nospace`, the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// `kill -9` of a member, restarted after.
    Kill,
    /// SIGSTOP of the leader, SIGCONT after.
    StopLeader,
    /// SIGSTOP of a follower, SIGCONT after.
    StopFollower,
    /// A member cut off from its peers, healed after.
    Isolate,
    /// The backend quota filled until writes are refused (NOSPACE alarm).
    Nospace,
}

impl Fault {
    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::StopLeader => "stop-leader",
            Fault::StopFollower => "stop-follower",
            Fault::Isolate => "isolate",
            Fault::Nospace => "nospace",
        }
    }

    /// What a trial does, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "`kill -9` of one member, then a restart on the same data",
            Fault::StopLeader => "SIGSTOP of the leader, then SIGCONT",
            Fault::StopFollower => "SIGSTOP of a follower, then SIGCONT",
            Fault::Isolate => {
                "one member's peer traffic dropped both ways (its clients still reach it), then healed"
            }
            Fault::Nospace => {
                "writes until the 16 MiB quota refuses one (NOSPACE), then delete, compact, defrag, `alarm disarm`"
            }
        }
    }

    /// The cluster this fault needs.
    pub fn cluster(self, builder: EtcdClusterBuilder) -> EtcdClusterBuilder {
        match self {
            Fault::Isolate => builder.peer_net(true),
            Fault::Nospace => builder.arg(format!("--quota-backend-bytes={NOSPACE_QUOTA}")),
            _ => builder,
        }
    }

    /// Whether the fault concerns one member (its alert names the member),
    /// not the whole cluster.
    pub fn per_member(self) -> bool {
        self != Fault::Nospace
    }

    /// The member trial `k` injects the fault into.
    pub async fn victim(self, cluster: &EtcdCluster, k: usize) -> Result<usize> {
        let n = cluster.members().len();
        match self {
            Fault::StopLeader => wait_leader(cluster).await,
            Fault::StopFollower => {
                // The followers in turn.
                let leader = wait_leader(cluster).await?;
                let followers: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                Ok(followers[k % followers.len()])
            }
            _ => Ok(k % n),
        }
    }

    /// Injects the fault into member `i`; returns `t0`, the wall clock (ms)
    /// at which it took effect.
    pub async fn inject(self, cluster: &mut EtcdCluster, i: usize) -> Result<i64> {
        let t0 = now_ms();
        match self {
            Fault::Kill => blocking(|| cluster.kill(i))?,
            Fault::StopLeader | Fault::StopFollower => blocking(|| cluster.stop(i))?,
            Fault::Isolate => cluster
                .peer_net()
                .context("the isolate fault needs a cluster with peer_net")?
                .isolate(i),
            Fault::Nospace => return fill_until_refused(&cluster.member(i).client_url).await,
        }
        Ok(t0)
    }

    /// Removes the fault and waits until every member is healthy again.
    pub async fn heal(self, cluster: &mut EtcdCluster, i: usize) -> Result<()> {
        match self {
            Fault::Kill => blocking(|| cluster.restart(i))?,
            Fault::StopLeader | Fault::StopFollower => blocking(|| cluster.resume(i))?,
            Fault::Isolate => cluster
                .peer_net()
                .context("the isolate fault needs a cluster with peer_net")?
                .heal(i),
            Fault::Nospace => {
                free_space(cluster).await?;
                blocking(|| cluster.etcdctl(&["alarm", "disarm"]))?;
            }
        }
        for j in 0..cluster.members().len() {
            blocking(|| cluster.wait_healthy(j, HEAL_TIMEOUT))
                .with_context(|| format!("member {j} after removing the {} fault", self.name()))?;
        }
        Ok(())
    }
}

/// The leader's index, once one is known (30 s at most).
async fn wait_leader(cluster: &EtcdCluster) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = blocking(|| cluster.leader_index())? {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            bail!("no leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes 256 KiB values through `endpoint` until one is refused for lack
/// of space; returns when the refusal arrived (ms).
async fn fill_until_refused(endpoint: &str) -> Result<i64> {
    let mut c = Client::connect([endpoint], None)
        .await
        .context("connect to fill the quota")?;
    let value = vec![b'x'; 256 << 10];
    for k in 0..(NOSPACE_QUOTA / (256 << 10)) * 4 {
        if let Err(e) = c.put(format!("fill/{k}"), value.clone(), None).await {
            let at = now_ms();
            let msg = e.to_string();
            if msg.contains("database space exceeded") {
                return Ok(at);
            }
            bail!("a put failed for another reason than NOSPACE: {msg}");
        }
    }
    bail!("the quota of {NOSPACE_QUOTA} bytes never refused a write")
}

/// Deletes what the fill wrote, compacts and defragments every member.
async fn free_space(cluster: &EtcdCluster) -> Result<()> {
    let endpoints: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| m.client_url.clone())
        .collect();
    let mut c = Client::connect(&endpoints, None)
        .await
        .context("connect to free the quota")?;
    let deleted = c
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .context("delete the fill (allowed under NOSPACE)")?;
    let revision = deleted.header().map_or(0, |h| h.revision());
    c.compact(revision, None).await.context("compact")?;
    for e in &endpoints {
        let mut one = Client::connect([e.as_str()], None)
            .await
            .with_context(|| format!("connect to {e} to defragment"))?;
        one.defragment()
            .await
            .with_context(|| format!("defragment {e}"))?;
    }
    Ok(())
}
