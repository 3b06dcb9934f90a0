//! The collectors. Each gathers one kind of result on its own interval and
//! never blocks the others: slow calls are bounded by timeouts, blocking
//! file I/O runs on tokio's blocking pool.
//!
//! A collector is anything that implements [`Collector`]; [`build`] makes
//! the enabled ones from the config.

use crate::config::AgentConfig;
use crate::shared::Shared;
use crate::tls::TlsMaterial;
use etcdmon_proto::v1::report::Body;
use futures::future::BoxFuture;
use std::time::Duration;

pub mod certs;
pub mod fsync;
pub mod host;
pub mod liveness;
pub mod metrics;
pub mod peers;
pub mod status;

/// One kind of measurement, taken repeatedly.
pub trait Collector: Send {
    /// Short name used in logs and metric labels (`status`, `metrics`, ...).
    fn name(&self) -> &'static str;
    /// How often to run.
    fn interval(&self) -> Duration;
    /// Takes one measurement. Failures are part of the result, never a
    /// panic or an endless wait.
    fn collect(&mut self) -> BoxFuture<'_, Body>;
    /// Signalled when something happened that makes a round due before the
    /// next tick (the status collector's liveness watch broke or came back).
    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// Builds the collectors enabled in `cfg`, in the order `collect --once`
/// runs them (status first: it learns the member list that peers needs).
pub fn build(cfg: &AgentConfig, shared: &Shared) -> anyhow::Result<Vec<Box<dyn Collector>>> {
    let tls = TlsMaterial::load(&cfg.etcd.tls)?;
    let mut out: Vec<Box<dyn Collector>> = Vec::new();
    if cfg.status.enabled {
        out.push(Box::new(status::StatusCollector::new(
            cfg,
            &tls,
            shared.clone(),
        )?));
    }
    if cfg.metrics.enabled {
        out.push(Box::new(metrics::MetricsCollector::new(cfg, &tls)?));
    }
    if cfg.host.enabled {
        out.push(Box::new(host::HostCollector::new(cfg)));
    }
    if cfg.fsync.enabled {
        if let Some(dir) = cfg.fsync_dir() {
            out.push(Box::new(fsync::FsyncCollector::new(
                &cfg.fsync,
                dir.clone(),
            )));
        } else {
            tracing::warn!("fsync probe disabled: set etcd.data_dir (--data-dir) or fsync.dir");
        }
    }
    if cfg.peers.enabled {
        out.push(Box::new(peers::PeersCollector::new(
            &cfg.peers,
            shared.clone(),
        )));
    }
    if cfg.certs.enabled {
        out.push(Box::new(certs::CertsCollector::new(cfg)));
    }
    Ok(out)
}
