//! Days until the configured certificates expire: the CA and client
//! certificate used towards etcd, plus any listed in `certs.files` (the
//! member's server and peer certificates). Only the first certificate of a
//! PEM file is checked: that is the leaf for a chain, the CA for a bundle.

use super::Collector;
use crate::config::{AgentConfig, CertRoleConfig};
use etcdmon_proto::v1::{report::Body, CertExpiry, CertRole, Certificate, ErrorKind, Failure};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Collects [`CertExpiry`].
pub struct CertsCollector {
    interval: Duration,
    files: Vec<(PathBuf, CertRole)>,
}

impl CertsCollector {
    /// A collector for the certificate files named in `cfg`.
    pub fn new(cfg: &AgentConfig) -> Self {
        let mut files = Vec::new();
        if let Some(ca) = &cfg.etcd.tls.ca {
            files.push((ca.clone(), CertRole::Ca));
        }
        if let Some(c) = &cfg.etcd.tls.cert {
            files.push((c.clone(), CertRole::Client));
        }
        for f in &cfg.certs.files {
            let role = match f.role {
                CertRoleConfig::Ca => CertRole::Ca,
                CertRoleConfig::Client => CertRole::Client,
                CertRoleConfig::Server => CertRole::Server,
                CertRoleConfig::Peer => CertRole::Peer,
            };
            files.push((f.path.clone(), role));
        }
        Self {
            interval: cfg.certs.interval,
            files,
        }
    }
}

impl Collector for CertsCollector {
    fn name(&self) -> &'static str {
        "certs"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let certificates = self
            .files
            .iter()
            .map(|(p, role)| inspect(p, *role, now))
            .collect();
        Box::pin(async move { Body::Certs(CertExpiry { certificates }) })
    }
}

/// Reads the first certificate of a PEM file.
pub fn inspect(path: &Path, role: CertRole, now_unix: i64) -> Certificate {
    let mut out = Certificate {
        path: path.display().to_string(),
        role: role as i32,
        ..Default::default()
    };
    match read_not_after(path) {
        Ok((subject, not_after)) => {
            out.subject = subject;
            out.not_after_unix = not_after;
            out.days_left = (not_after - now_unix) as f64 / 86_400.0;
        }
        Err(msg) => out.failure = Some(Failure::new("read_certificate", ErrorKind::Local, msg)),
    }
    out
}

fn read_not_after(path: &Path) -> Result<(String, i64), String> {
    let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data)
        .map_err(|e| format!("{}: not a PEM file: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.timestamp(),
    ))
}
