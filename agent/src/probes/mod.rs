//! The probes. Each gathers one kind of result on its own interval and never
//! blocks the others: slow calls are bounded by timeouts, blocking file I/O
//! runs on tokio's blocking pool.
//!
//! Every probe has the same shape: a folder with `mod.rs` (the probe, which
//! implements [`Probe`]) and `config.rs` (its `[section]` of the agent's
//! config, with its defaults and checks), and one constructor,
//! `XProbe::new(&XConfig, &Target) -> anyhow::Result<XProbe>`, where the
//! [`Target`] is what every probe shares: the member it watches and what the
//! agent has learned about it. [`build`] makes the enabled ones.

use crate::config::{AgentConfig, EtcdConfig};
use crate::member_view::MemberView;
use crate::tls::TlsMaterial;
use etcdmon_proto::v1::report::Body;
use futures::future::BoxFuture;
use std::time::Duration;

pub mod certs;
pub mod fsync;
pub mod host;
pub mod metrics;
pub mod peers;
pub mod status;

/// One kind of measurement, taken repeatedly.
pub trait Probe: Send {
    /// Short name used in logs and metric labels (`status`, `metrics`, ...); the
    /// same as the report body's [`kind`](Body::kind).
    fn name(&self) -> &'static str;
    /// How often to run.
    fn interval(&self) -> Duration;
    /// Takes one measurement. Failures are part of the result, never a
    /// panic or an endless wait.
    fn collect(&mut self) -> BoxFuture<'_, Body>;
    /// Signalled when something happened that makes a round due before the
    /// next tick (the status probe's liveness watch broke or came back).
    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Whether a round's result goes to the collector. A probe that runs
    /// often to notice a change sooner may send only the changes and a
    /// regular summary; every round is sent by default.
    fn worth_sending(&mut self, _body: &Body) -> bool {
        true
    }
}

/// What every probe is given besides its own section: the member it watches.
pub struct Target {
    /// How to reach the member: endpoint, metrics URL, data dir, credentials,
    /// TLS files.
    pub etcd: EtcdConfig,
    /// The TLS material of `etcd.tls`, read once for every probe that speaks to
    /// etcd.
    pub tls: TlsMaterial,
    /// What the agent has learned about its member (identity, member list).
    pub view: MemberView,
}

/// Builds the probes enabled in `cfg`, in the order `collect --once` runs them
/// (status first: it learns the member list that peers needs). Fails on
/// unreadable TLS files or bad URLs.
pub fn build(cfg: &AgentConfig, view: &MemberView) -> anyhow::Result<Vec<Box<dyn Probe>>> {
    let mut etcd = cfg.etcd.clone();
    // Read once here, so every probe sees the password and none reads the file.
    etcd.password = etcdmon_core::secret::resolve(
        cfg.etcd.password.as_ref(),
        cfg.etcd.password_file.as_deref(),
        "etcd.password",
        "etcd.password_file",
    )?;
    etcd.password_file = None;
    let target = Target {
        etcd,
        tls: TlsMaterial::load(&cfg.etcd.tls)?,
        view: view.clone(),
    };
    let mut out: Vec<Box<dyn Probe>> = Vec::new();
    if cfg.status.enabled {
        out.push(Box::new(status::StatusProbe::new(&cfg.status, &target)?));
    }
    if cfg.metrics.enabled {
        out.push(Box::new(metrics::MetricsProbe::new(&cfg.metrics, &target)?));
    }
    if cfg.host.enabled {
        out.push(Box::new(host::HostProbe::new(&cfg.host, &target)?));
    }
    if cfg.fsync.enabled {
        if cfg.fsync_dir().is_some() {
            out.push(Box::new(fsync::FsyncProbe::new(&cfg.fsync, &target)?));
        } else {
            tracing::warn!("fsync probe disabled: set etcd.data_dir (--data-dir) or fsync.dir");
        }
    }
    if cfg.peers.enabled {
        out.push(Box::new(peers::PeersProbe::new(&cfg.peers, &target)?));
    }
    if cfg.certs.enabled {
        out.push(Box::new(certs::CertsProbe::new(&cfg.certs, &target)?));
    }
    Ok(out)
}
