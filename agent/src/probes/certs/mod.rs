//! Days until the certificates expire: the CA and client certificate used
//! towards etcd, any listed in `certs.files` (the member's server and peer
//! certificates; beside a local member its own flags add them), and the
//! certificate the member serves on an `https://` endpoint ([`served`]). Only
//! the first certificate of a PEM file is checked: that is the leaf for a chain,
//! the CA for a bundle.

use super::{Probe, Target};
use etcdmon_proto::v1::{report::Body, CertExpiry, CertRole, Certificate, ErrorKind, Failure};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod config;
pub mod served;

pub use config::{CertFile, CertRoleConfig, CertsConfig};
use served::ServedCert;

/// Collects [`CertExpiry`].
pub struct CertsProbe {
    interval: Duration,
    files: Vec<(PathBuf, CertRole)>,
    served: Option<ServedCert>,
}

impl CertsProbe {
    /// A probe of the CA and client certificate used towards etcd and the files
    /// listed in `certs.files`.
    pub fn new(cfg: &CertsConfig, target: &Target) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        if let Some(ca) = &target.etcd.tls.ca {
            files.push((ca.clone(), CertRole::Ca));
        }
        if let Some(c) = &target.etcd.tls.cert {
            files.push((c.clone(), CertRole::Client));
        }
        for f in &cfg.files {
            let role = match f.role {
                CertRoleConfig::Ca => CertRole::Ca,
                CertRoleConfig::Client => CertRole::Client,
                CertRoleConfig::Server => CertRole::Server,
                CertRoleConfig::Peer => CertRole::Peer,
            };
            // A file named twice (the CA given to the agent is etcd's own) is one
            // alert subject: report it once.
            if files.iter().all(|(p, _)| p != &f.path) {
                files.push((f.path.clone(), role));
            }
        }
        let served = if cfg.served {
            ServedCert::new(
                &target.etcd.endpoint,
                target.etcd.tls.server_name.as_deref(),
            )?
        } else {
            None
        };
        Ok(Self {
            interval: cfg.interval,
            files,
            served,
        })
    }
}

impl Probe for CertsProbe {
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
        let mut certificates: Vec<Certificate> = self
            .files
            .iter()
            .map(|(p, role)| inspect(p, *role, now))
            .collect();
        let served = self.served.clone();
        Box::pin(async move {
            if let Some(served) = served {
                certificates.push(inspect_served(&served, now).await);
            }
            Body::Certs(CertExpiry { certificates })
        })
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

/// Reads the certificate `served` sends in a TLS handshake; its `path` is the URL.
pub async fn inspect_served(served: &ServedCert, now_unix: i64) -> Certificate {
    let mut out = Certificate {
        path: served.url.clone(),
        role: CertRole::Server as i32,
        ..Default::default()
    };
    let read = served.fetch().await.and_then(|der| {
        describe(&der).map_err(|e| {
            (
                ErrorKind::Protocol,
                format!("{}: not an X.509 certificate: {e}", served.url),
            )
        })
    });
    match read {
        Ok((subject, not_after)) => {
            out.subject = subject;
            out.not_after_unix = not_after;
            out.days_left = (not_after - now_unix) as f64 / 86_400.0;
        }
        Err((kind, msg)) => out.failure = Some(Failure::new("served_certificate", kind, msg)),
    }
    out
}

fn read_not_after(path: &Path) -> Result<(String, i64), String> {
    let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data)
        .map_err(|e| format!("{}: not a PEM file: {e}", path.display()))?;
    describe(&pem.contents)
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))
}

/// Subject and expiry (unix seconds) of a DER certificate.
fn describe(der: &[u8]) -> Result<(String, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.timestamp(),
    ))
}
