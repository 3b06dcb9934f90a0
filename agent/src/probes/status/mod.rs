//! etcd's view of itself through the gRPC API: maintenance status, alarms,
//! members, and two timed health reads (linearizable and serializable).
//!
//! One client per endpoint, over a plain tonic channel to that one member:
//! etcd-client's own multi-endpoint balancing would route around the member
//! we are watching. The five calls of a round run concurrently, each bounded
//! by the probe timeout, so a hung member costs one timeout per round and
//! never stalls other collectors. The channel is created lazily and
//! reconnects by itself; a dead member shows as `refused` (nothing listens)
//! and a hung one as `timeout`.

use super::{Probe, Target};
use crate::error_kind::{classify_etcd, etcd_message, timeout};
use crate::member_view::MemberView;
use crate::tls::TlsMaterial;
use anyhow::Context as _;
use etcd_client::{AlarmAction, AlarmType, Client, ConnectOptions, GetOptions};
use etcdmon_proto::v1::{report::Body, Alarm, EtcdStatus, Failure, Member, ReadProbe};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

mod config;
mod hashkv;
mod liveness;

pub use config::StatusConfig;
pub use hashkv::KvHashSlot;

/// Collects [`EtcdStatus`] from one member.
pub struct StatusProbe {
    endpoint: String,
    channel: tonic::transport::Channel,
    options: ConnectOptions,
    /// Created on the first round that can reach etcd (with auth this
    /// fetches a token, which needs a live member).
    client: Option<Client>,
    interval: Duration,
    timeout: Duration,
    /// Deadline of one `HashKV` for the consistency check.
    hash_timeout: Duration,
    health_key: String,
    shared: MemberView,
    /// Woken by the liveness watch (see [`liveness`]); `None` when disabled.
    wake: Option<Arc<Notify>>,
    /// The liveness watch task, started with the client and aborted on drop.
    liveness: Option<tokio::task::AbortHandle>,
}

impl Drop for StatusProbe {
    fn drop(&mut self) {
        if let Some(task) = &self.liveness {
            task.abort();
        }
    }
}

impl StatusProbe {
    /// Prepares the channel; no connection is made until the first round, so
    /// the agent starts (and reports) even while etcd is down.
    pub fn new(cfg: &StatusConfig, target: &Target) -> anyhow::Result<Self> {
        let endpoint = target.etcd.endpoint.clone();
        let channel = channel(&endpoint, &target.tls, cfg.timeout)?;
        let mut options = ConnectOptions::new();
        if let (Some(u), Some(p)) = (&target.etcd.username, &target.etcd.password) {
            options = options
                .with_user(u.clone(), p.expose().to_owned())
                .with_auto_token_refresh(true);
        }
        Ok(Self {
            endpoint,
            channel,
            options,
            client: None,
            interval: cfg.interval,
            timeout: cfg.timeout,
            hash_timeout: cfg.hash_timeout,
            health_key: cfg.health_key.clone(),
            shared: target.view.clone(),
            wake: cfg.liveness_watch.then(|| Arc::new(Notify::new())),
            liveness: None,
        })
    }

    async fn client(&mut self) -> Result<Client, Failure> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // Without auth, from_channel does no I/O; with auth it authenticates.
        let c = bounded(
            "authenticate",
            self.timeout,
            Client::from_channel(
                etcd_client::Channel::Tonic(self.channel.clone()),
                Some(self.options.clone()),
            ),
        )
        .await?;
        self.client = Some(c.clone());
        if let Some(wake) = &self.wake {
            let task = tokio::spawn(liveness::watch(
                c.clone(),
                self.health_key.clone(),
                wake.clone(),
            ));
            self.liveness = Some(task.abort_handle());
        }
        Ok(c)
    }

    async fn round(&mut self) -> EtcdStatus {
        let mut out = EtcdStatus {
            endpoint: self.endpoint.clone(),
            ..Default::default()
        };
        let client = match self.client().await {
            Ok(c) => c,
            Err(f) => {
                out.failures.push(f);
                return out;
            }
        };
        let t = self.timeout;
        // The answer to the collector's last hash request, if it finished; and
        // the next request started (it runs beside the rounds, see hashkv).
        let kv_hash = self.shared.kv_hash();
        out.kv_hash = kv_hash.take_done();
        kv_hash.start(&client, self.hash_timeout);
        let key = self.health_key.clone();
        let mut c_status = client.maintenance_client();
        let mut c_alarm = client.maintenance_client();
        let mut c_members = client.cluster_client();
        let mut c_lin = client.kv_client();
        let mut c_ser = client.kv_client();

        let (status, alarms, members, lin, ser) = tokio::join!(
            bounded("status", t, async move {
                let started = Instant::now();
                c_status.status().await.map(|s| (s, started.elapsed()))
            }),
            bounded("alarm_list", t, async move {
                c_alarm.alarm(AlarmAction::Get, AlarmType::None, None).await
            }),
            bounded(
                "member_list",
                t,
                async move { c_members.member_list().await }
            ),
            timed("linearizable_read", t, {
                let key = key.clone();
                async move { c_lin.get(key, None).await }
            }),
            timed("serializable_read", t, async move {
                c_ser
                    .get(key, Some(GetOptions::new().with_serializable()))
                    .await
            }),
        );
        match status {
            Ok((s, status_latency)) => {
                out.reachable = true;
                out.status_latency_seconds = status_latency.as_secs_f64();
                out.member_id = s.header().map(|h| h.member_id()).unwrap_or_default();
                out.leader_id = s.leader();
                out.raft_term = s.raft_term();
                out.raft_index = s.raft_index();
                out.raft_applied_index = s.raft_applied_index();
                out.db_size_bytes = s.db_size();
                out.db_size_in_use_bytes = s.raft_used_db_size();
                out.version = s.version().to_string();
                out.errors = s.errors().to_vec();
                out.is_learner = s.is_learner();
            }
            Err(f) => out.failures.push(f),
        }
        match alarms {
            Ok(a) => {
                out.alarms = a
                    .alarms()
                    .iter()
                    .map(|m| Alarm {
                        member_id: m.member_id(),
                        alarm: alarm_name(m.alarm()).to_string(),
                    })
                    .collect();
            }
            Err(f) => out.failures.push(f),
        }
        let mut member_list = None;
        match members {
            Ok(m) => {
                let list: Vec<Member> = m
                    .members()
                    .iter()
                    .map(|m| Member {
                        id: m.id(),
                        name: m.name().to_string(),
                        peer_urls: m.peer_urls().to_vec(),
                        client_urls: m.client_urls().to_vec(),
                        is_learner: m.is_learner(),
                    })
                    .collect();
                out.members = list.clone();
                member_list = Some(list);
            }
            Err(f) => out.failures.push(f),
        }
        let (lin_probe, _) = lin;
        let (ser_probe, revision) = ser;
        out.failures.extend(lin_probe.failure.clone());
        out.failures.extend(ser_probe.failure.clone());
        out.linearizable_read = Some(lin_probe);
        out.serializable_read = Some(ser_probe);
        out.revision = revision;

        self.shared.learn(out.member_id, member_list);
        out
    }
}

impl Probe for StatusProbe {
    fn name(&self) -> &'static str {
        "status"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        Box::pin(async move { Body::Status(self.round().await) })
    }
    fn wake(&self) -> Option<Arc<Notify>> {
        self.wake.clone()
    }
}

/// A tonic channel to exactly one endpoint, connecting lazily.
fn channel(
    endpoint: &str,
    tls: &TlsMaterial,
    probe_timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::Endpoint;
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("parse etcd.endpoint {endpoint:?}"))?
        .connect_timeout(probe_timeout)
        .tcp_nodelay(true)
        // HTTP/2 pings notice a silently dead connection between rounds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        ep = ep
            .tls_config(tls.tonic())
            .context("configure TLS for etcd.endpoint")?;
    } else if tls.is_configured() {
        tracing::warn!(
            endpoint,
            "etcd.tls is set but etcd.endpoint is not https://; TLS not used"
        );
    }
    Ok(ep.connect_lazy())
}

/// Runs `fut` with a deadline; errors and timeouts become [`Failure`]s.
async fn bounded<T, F>(call: &'static str, t: Duration, fut: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::new(call, classify_etcd(&e), etcd_message(&e))),
        Err(_) => Err(timeout(call, t)),
    }
}

/// A timed read: latency on success, failure otherwise; also the revision.
async fn timed<F>(call: &'static str, t: Duration, fut: F) -> (ReadProbe, i64)
where
    F: Future<Output = Result<etcd_client::GetResponse, etcd_client::Error>>,
{
    let started = Instant::now();
    match bounded(call, t, fut).await {
        Ok(r) => (
            ReadProbe {
                latency_seconds: started.elapsed().as_secs_f64(),
                failure: None,
            },
            r.header().map(|h| h.revision()).unwrap_or_default(),
        ),
        Err(f) => (
            ReadProbe {
                latency_seconds: 0.0,
                failure: Some(f),
            },
            0,
        ),
    }
}

fn alarm_name(a: AlarmType) -> &'static str {
    match a {
        AlarmType::None => "NONE",
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}
