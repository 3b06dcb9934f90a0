//! `[certs]`: certificate expiry.

use std::path::PathBuf;
use std::time::Duration;

use etcdmon_core::config::{positive, FieldError};
use serde::{Deserialize, Serialize};

/// Certificate expiry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    /// Run this collector.
    pub enabled: bool,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Certificate files besides `etcd.tls.ca` and `etcd.tls.cert`, e.g. the
    /// member's server and peer certificates.
    pub files: Vec<CertFile>,
    /// Beside a local member, also watch the files its own flags name
    /// (`--cert-file`, `--peer-cert-file`, `--trusted-ca-file`,
    /// `--peer-trusted-ca-file`).
    pub discover: bool,
    /// When `etcd.endpoint` is `https://`, also check the certificate the member
    /// serves there (a TLS handshake, nothing sent), remote members included: the
    /// certificate clients actually see, whatever the files on disk say.
    pub served: bool,
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
            files: Vec::new(),
            discover: true,
            served: true,
        }
    }
}

/// One certificate file to watch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM file (the first certificate in it is checked).
    pub path: PathBuf,
    /// `ca`, `client`, `server` or `peer`.
    pub role: CertRoleConfig,
}

/// Role of a certificate file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRoleConfig {
    /// A CA bundle.
    Ca,
    /// A client certificate.
    Client,
    /// A server certificate.
    Server,
    /// A peer certificate.
    Peer,
}

impl CertsConfig {
    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        positive("certs.interval", self.interval)
    }
}
