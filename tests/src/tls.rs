//! Throwaway TLS material: a self-signed CA plus a server and a client certificate.
//!
//! Everything is generated in-process with `rcgen` (ECDSA P-256 keys, ring backend), so
//! tests need no `openssl` binary and no fixtures that could expire. Files are PEM, which
//! is what etcd, etcdctl and rustls-based clients read.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Paths of the PEM files written by [`generate_tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The directory holding all files.
    pub dir: PathBuf,
    /// The CA certificate (`ca.pem`): trust root for both server and client certificates.
    pub ca_cert: PathBuf,
    /// The server certificate (`server.pem`) for IP 127.0.0.1 and DNS localhost.
    pub server_cert: PathBuf,
    /// The server's private key (`server-key.pem`, PKCS#8).
    pub server_key: PathBuf,
    /// The client certificate (`client.pem`), common name `etcdmon-testkit-client`.
    pub client_cert: PathBuf,
    /// The client's private key (`client-key.pem`, PKCS#8).
    pub client_key: PathBuf,
}

/// Generates a CA, a server certificate and a client certificate into `dir` (created if
/// missing) and returns their paths.
///
/// Every certificate is valid from one hour ago (to tolerate clock skew) until
/// `now + valid_days`, so a small `valid_days` gives certificates that are about to expire
/// and `0` gives ones that expire right away, for expiry-monitoring tests.
///
/// The server certificate carries both the server and the client auth extended key usage:
/// etcd's gRPC gateway dials its own client listener with the server certificate, and with
/// `--client-cert-auth` that connection is rejected unless the certificate allows client
/// auth.
pub fn generate_tls(dir: &Path, valid_days: u32) -> Result<TlsFiles> {
    generate_tls_with(
        dir,
        Validity {
            ca_days: valid_days,
            server_days: valid_days,
            client_days: valid_days,
        },
    )
}

/// Days each certificate of [`generate_tls_with`] is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The CA's.
    pub ca_days: u32,
    /// The server certificate's.
    pub server_days: u32,
    /// The client certificate's.
    pub client_days: u32,
}

/// [`generate_tls`] with a validity per certificate, e.g. a server certificate about
/// to expire under a CA and a client certificate valid for years.
pub fn generate_tls_with(dir: &Path, validity: Validity) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("create TLS dir {}", dir.display()))?;
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::hours(1);
    let until = |days: u32| now + Duration::days(i64::from(days));

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "etcdmon-testkit CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = until(validity.ca_days);
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-sign CA")?;

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .context("server certificate params")?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "etcdmon-testkit-server");
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    server_params.not_before = not_before;
    server_params.not_after = until(validity.server_days);
    server_params.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().context("generate server key")?;
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .context("sign server certificate")?;

    let mut client_params =
        CertificateParams::new(Vec::<String>::new()).context("client certificate params")?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "etcdmon-testkit-client");
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.not_before = not_before;
    client_params.not_after = until(validity.client_days);
    client_params.use_authority_key_identifier_extension = true;
    let client_key = KeyPair::generate().context("generate client key")?;
    let client_cert = client_params
        .signed_by(&client_key, &ca)
        .context("sign client certificate")?;

    let files = TlsFiles {
        dir: dir.to_owned(),
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    write_pem(&files.ca_cert, &ca.pem(), 0o644)?;
    write_pem(&files.server_cert, &server_cert.pem(), 0o644)?;
    write_pem(&files.server_key, &server_key.serialize_pem(), 0o600)?;
    write_pem(&files.client_cert, &client_cert.pem(), 0o644)?;
    write_pem(&files.client_key, &client_key.serialize_pem(), 0o600)?;
    Ok(files)
}

/// Writes one PEM file; keys get mode 0600 because some TLS tools refuse or warn about
/// world-readable private keys.
fn write_pem(path: &Path, pem: &str, mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_tls(&dir.path().join("tls"), 30).unwrap();
        for cert in [&files.ca_cert, &files.server_cert, &files.client_cert] {
            let text = std::fs::read_to_string(cert).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
        for key in [&files.server_key, &files.client_key] {
            let text = std::fs::read_to_string(key).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        }
        assert_ne!(
            std::fs::read(&files.server_cert).unwrap(),
            std::fs::read(&files.client_cert).unwrap()
        );
    }
}
