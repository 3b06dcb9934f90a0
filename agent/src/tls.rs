//! TLS material towards etcd, read once at start-up so a missing or broken
//! file is a start-up error naming the file rather than a failure every
//! second.

use crate::config::TlsConfig;
use anyhow::Context as _;
use std::path::Path;

/// PEM bytes of the configured files.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// CA bundle.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify in the server certificate.
    pub server_name: Option<String>,
}

impl TlsMaterial {
    /// Reads the files named in `cfg`.
    pub fn load(cfg: &TlsConfig) -> anyhow::Result<Self> {
        let ca = cfg
            .ca
            .as_deref()
            .map(|p| read("etcd.tls.ca", p))
            .transpose()?;
        let identity = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((read("etcd.tls.cert", c)?, read("etcd.tls.key", k)?)),
            _ => None,
        };
        Ok(Self {
            ca,
            identity,
            server_name: cfg.server_name.clone(),
        })
    }

    /// Whether any TLS setting was given.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// A tonic TLS config for the gRPC channel.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            c = c.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        c
    }

    /// Applies the material to a reqwest client builder (metrics scrape).
    pub fn reqwest(&self, mut b: reqwest::ClientBuilder) -> anyhow::Result<reqwest::ClientBuilder> {
        if let Some(ca) = &self.ca {
            for cert in reqwest::Certificate::from_pem_bundle(ca).context("parse etcd.tls.ca")? {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .context("parse etcd.tls.cert and etcd.tls.key")?,
            );
        }
        Ok(b)
    }
}

fn read(field: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {field} {}", path.display()))
}
