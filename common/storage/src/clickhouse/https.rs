//! The HTTP client for an `https://` ClickHouse (`clickhouses://` in
//! `storage.url`): rustls on ring, trusting `storage.clickhouse.ca_file` or else
//! the system's roots, with the pool and keepalive settings the `clickhouse`
//! crate uses for plain HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::StorageError;

/// TCP keepalive on connections to the server (as the crate's default client).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed before ClickHouse's 3 s keep-alive does.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `clickhouse::Client` speaking HTTPS, trusting the CA in `ca_file` (PEM) or
/// the system's roots.
pub(super) fn client(ca_file: Option<&Path>) -> Result<clickhouse::Client, StorageError> {
    let invalid = |field: &str, why: String| {
        StorageError::InvalidConfig(format!("storage.clickhouse.{field}: {why}"))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("ca_file", format!("read {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid(
                    "ca_file",
                    format!("{} holds no usable certificate", path.display()),
                ));
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid("ca_file", e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| invalid("url", format!("no system CA certificates: {e}")))?,
    };
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let https = builder.https_only().enable_http1().wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https);
    Ok(clickhouse::Client::with_http_client(client))
}
