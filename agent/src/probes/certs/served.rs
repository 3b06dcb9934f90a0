//! The certificate a member serves on its `https://` client URL, read by a TLS
//! handshake.
//!
//! The files on disk are not the whole truth: etcd reads its certificate at
//! start, so a renewed file is not served until a restart, and a remote member's
//! files are out of reach. The handshake sees what every client sees.
//!
//! Nothing is sent over the connection: the verifier records the server's leaf
//! certificate and accepts it (trust is not the question here; the status probe
//! verifies the server properly), and no client certificate is presented, so no
//! key is used. With `--client-cert-auth` the server may then abort the handshake,
//! but only after it sent its certificate, which is all this needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcdmon_proto::v1::ErrorKind;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How long the connection and the handshake may take together.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The served certificate of one endpoint.
#[derive(Debug, Clone)]
pub struct ServedCert {
    /// The endpoint's URL, reported as the certificate's `path`.
    pub url: String,
    addr: String,
    server_name: ServerName<'static>,
}

impl ServedCert {
    /// A check of `endpoint`'s certificate; `None` for a plain `http://` endpoint.
    /// `server_name` overrides the name sent in the handshake (SNI).
    pub fn new(endpoint: &str, server_name: Option<&str>) -> anyhow::Result<Option<Self>> {
        let url = url::Url::parse(endpoint)
            .map_err(|e| anyhow::anyhow!("etcd.endpoint {endpoint:?}: {e}"))?;
        if url.scheme() != "https" {
            return Ok(None);
        }
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("etcd.endpoint {endpoint:?} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let name = server_name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| anyhow::anyhow!("server name {name:?}: {e}"))?;
        Ok(Some(Self {
            url: format!("{}://{}:{port}", url.scheme(), host),
            addr: format!("{host}:{port}"),
            server_name,
        }))
    }

    /// Connects, shakes hands and returns the DER of the leaf certificate served,
    /// or what failed and why.
    pub async fn fetch(&self) -> Result<Vec<u8>, (ErrorKind, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let recorder = Arc::new(Recorder {
            seen: Mutex::new(None),
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| (ErrorKind::Local, format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| (ErrorKind::Refused, format!("connect to {}: {e}", self.addr)))?;
            connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map(drop)
                .map_err(|e| {
                    (
                        ErrorKind::Tls,
                        format!("TLS handshake with {}: {e}", self.addr),
                    )
                })
        };
        let outcome = tokio::time::timeout(TIMEOUT, handshake)
            .await
            .unwrap_or_else(|_| {
                Err((
                    ErrorKind::Timeout,
                    format!("no TLS handshake with {} within {TIMEOUT:?}", self.addr),
                ))
            });
        // A handshake refused after the certificate arrived (client-cert-auth) still
        // told us what we came for.
        let seen = recorder.seen.lock().map(|s| s.clone()).unwrap_or(None);
        match (seen, outcome) {
            (Some(der), _) => Ok(der),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err((
                ErrorKind::Protocol,
                format!("{} sent no certificate", self.addr),
            )),
        }
    }
}

/// Records the server's leaf certificate and accepts it.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
