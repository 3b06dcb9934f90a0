//! OIDC/JWT bearer tokens for the API (`[http.auth.jwt]`): a token signed by the
//! identity provider's key, for this issuer and audience, not expired, names its
//! holder (`name_claim`) and carries a role (`role_claim`, a role name or a list
//! of names, or group names mapped by `roles`; the highest counts).
//!
//! ```text
//! token ─> header: alg, kid ─> the key with that kid (JWKS) or the one key
//!       ─> alg must be the key's ─> signature, exp/nbf (60 s leeway), iss, aud
//!       ─> role claim ─> Caller { name, role, via: "jwt" }
//! ```
//!
//! Keys come from a JWKS file, a PEM public key file, or the provider's
//! `jwks_url`, fetched on first use and again when a token names a key id not
//! seen yet (a key rotation) or the keys are older than [`JWKS_MAX_AGE`], at
//! most once per [`JWKS_MIN_INTERVAL`]. A failed fetch keeps the keys there
//! were. The algorithm is the key's, never the token's choice: a token cannot
//! pick `none` or an HMAC keyed with the public key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

use super::auth::{Caller, Role};
use crate::config::JwtConfig;

/// Keys fetched from `jwks_url` are fetched again after this long.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// At most one fetch of `jwks_url` per this long (unknown key ids cannot make
/// the collector hammer the provider).
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Clock difference tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// Longest wait for the provider's JWKS.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a JWT is refused.
#[derive(Debug)]
pub enum JwtRefusal {
    /// Not a valid token of this provider for this collector (401).
    Invalid(String),
    /// A valid token whose holder has no role here (403).
    NoRole {
        /// Who it names.
        name: String,
        /// Why, in a sentence.
        message: String,
    },
}

/// Checks JWTs against `[http.auth.jwt]`.
pub struct JwtVerifier {
    cfg: JwtConfig,
    source: Source,
    keys: Mutex<Keys>,
}

enum Source {
    /// Read once at start.
    Fixed,
    /// Fetched from the provider.
    Url(reqwest::Client, reqwest::Url),
}

#[derive(Default)]
struct Keys {
    /// By key id; a key without one is stored under "".
    by_id: HashMap<String, (DecodingKey, Algorithm)>,
    /// When they were fetched (URL source), and when a fetch was last tried.
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

impl JwtVerifier {
    /// Reads the key files of `cfg` (a URL is fetched on first use). The error
    /// names the field.
    pub fn new(cfg: &JwtConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut keys = Keys::default();
        let source = if let Some(url) = &cfg.jwks_url {
            let url = reqwest::Url::parse(url).context("http.auth.jwt.jwks_url")?;
            let mut client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("http.auth.jwt.ca_file: read {}", ca.display()))?;
                for cert in
                    reqwest::Certificate::from_pem_bundle(&pem).context("http.auth.jwt.ca_file")?
                {
                    client = client.add_root_certificate(cert);
                }
            }
            Source::Url(client.build().context("http.auth.jwt: HTTP client")?, url)
        } else if let Some(path) = &cfg.jwks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("http.auth.jwt.jwks_file: read {}", path.display()))?;
            keys.by_id = jwks_keys(&text).context("http.auth.jwt.jwks_file")?;
            Source::Fixed
        } else if let Some(path) = &cfg.key_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("http.auth.jwt.key_file: read {}", path.display()))?;
            let algorithm: Algorithm = cfg.algorithm.parse().map_err(|_| {
                anyhow::anyhow!("http.auth.jwt.algorithm: unknown {:?}", cfg.algorithm)
            })?;
            let key = pem_key(&pem, algorithm).context("http.auth.jwt.key_file")?;
            keys.by_id.insert(String::new(), (key, algorithm));
            Source::Fixed
        } else {
            anyhow::bail!("http.auth.jwt: set jwks_url, jwks_file or key_file");
        };
        Ok(Self {
            cfg: cfg.clone(),
            source,
            keys: Mutex::new(keys),
        })
    }

    /// The caller a token names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Caller, JwtRefusal> {
        let invalid = JwtRefusal::Invalid;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        let kid = header.kid.clone().unwrap_or_default();
        let (key, algorithm) = self.key(&kid).await.map_err(invalid)?;
        if header.alg != algorithm {
            return Err(invalid(format!(
                "the token is signed with {:?}; its key is for {algorithm:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[&self.cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key, &validation)
            .map_err(|e| invalid(format!("invalid JWT: {e}")))?;
        let claims = data.claims;
        let name = claims
            .get(&self.cfg.name_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(format!("the token has no {:?} claim", self.cfg.name_claim)))?;
        let role =
            self.role(claims.get(&self.cfg.role_claim))
                .ok_or_else(|| JwtRefusal::NoRole {
                    name: name.to_owned(),
                    message: format!(
                        "the token of {name:?} grants no etcdmon role in its {:?} claim",
                        self.cfg.role_claim
                    ),
                })?;
        Ok(Caller {
            name: name.to_owned(),
            role,
            via: "jwt",
        })
    }

    /// The highest role the claim's value(s) name, directly or through `roles`.
    fn role(&self, claim: Option<&Value>) -> Option<Role> {
        let values: Vec<&str> = match claim? {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter_map(|v| {
                if self.cfg.roles.is_empty() {
                    serde_json::from_value::<Role>(Value::String(v.to_owned())).ok()
                } else {
                    self.cfg.roles.get(v).copied()
                }
            })
            .max()
    }

    /// The key for `kid`, fetching the provider's keys when needed.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), String> {
        let mut keys = self.keys.lock().await;
        if let Source::Url(client, url) = &self.source {
            let stale = keys.fetched.is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
            let unknown = lookup(&keys, kid).is_none();
            let may_try = keys.tried.is_none_or(|t| t.elapsed() > JWKS_MIN_INTERVAL);
            if (stale || unknown) && may_try {
                keys.tried = Some(Instant::now());
                match fetch(client, url).await {
                    Ok(by_id) => {
                        keys.by_id = by_id;
                        keys.fetched = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "could not fetch the JWT keys; keeping the ones there were")
                    }
                }
            }
        }
        lookup(&keys, kid).ok_or_else(|| {
            if kid.is_empty() {
                "the token names no key id and there is not exactly one key".to_owned()
            } else {
                format!("no key {kid:?} among the identity provider's keys")
            }
        })
    }
}

/// The key for `kid`: by id, or the only key when the token names none.
fn lookup(keys: &Keys, kid: &str) -> Option<(DecodingKey, Algorithm)> {
    if let Some(k) = keys.by_id.get(kid) {
        return Some(k.clone());
    }
    if kid.is_empty() && keys.by_id.len() == 1 {
        return keys.by_id.values().next().cloned();
    }
    None
}

async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
    let response = client.get(url.clone()).send().await?.error_for_status()?;
    let text = response.text().await?;
    jwks_keys(&text)
}

/// The signing keys of a JWKS document with the algorithm each is for.
fn jwks_keys(text: &str) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
    let set: JwkSet = serde_json::from_str(text)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        // Encryption keys and keys of unknown kinds are not for signatures.
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let Some(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        let key = DecodingKey::from_jwk(jwk)?;
        keys.insert(
            jwk.common.key_id.clone().unwrap_or_default(),
            (key, algorithm),
        );
    }
    anyhow::ensure!(!keys.is_empty(), "no signing key in the JWKS");
    Ok(keys)
}

/// A JWK's algorithm: its `alg`, else what its key type and curve imply.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            // HMAC keys are shared secrets, never published; RSA1_5 and
            // friends are for encryption.
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}

/// A PEM public key for `algorithm`.
fn pem_key(pem: &[u8], algorithm: Algorithm) -> anyhow::Result<DecodingKey> {
    Ok(match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem)?,
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem)?,
        other => anyhow::bail!("{other:?} is not a public-key algorithm"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn config(key_file: &std::path::Path) -> JwtConfig {
        JwtConfig {
            issuer: "https://idp.test".into(),
            audience: "etcdmon".into(),
            jwks_url: None,
            ca_file: None,
            jwks_file: None,
            key_file: Some(key_file.to_owned()),
            algorithm: "ES256".into(),
            role_claim: "etcdmon_role".into(),
            name_claim: "email".into(),
            roles: Default::default(),
        }
    }

    /// A PEM public key without key ids; role names straight from the claim,
    /// a list counting its highest.
    #[tokio::test]
    async fn a_pem_key_and_role_names_in_the_claim() {
        let pair = rcgen::KeyPair::generate().expect("key");
        let dir = tempfile::tempdir().expect("tmp");
        let key_file = dir.path().join("idp.pem");
        std::fs::write(&key_file, pair.public_key_pem()).expect("write");
        let verifier = JwtVerifier::new(&config(&key_file)).expect("verifier");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 300;
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::ES256),
                &claims,
                &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key"),
            )
            .expect("sign")
        };
        let base = json!({"iss": "https://idp.test", "aud": ["etcdmon", "grafana"], "exp": exp,
                          "email": "alice@example.test"});
        let with_role = |role: serde_json::Value| {
            let mut c = base.clone();
            c["etcdmon_role"] = role;
            sign(c)
        };
        let caller = verifier
            .verify(&with_role(json!(["viewer", "operator", "unknown"])))
            .await
            .expect("valid");
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("alice@example.test", Role::Operator)
        );
        assert_eq!(
            verifier
                .verify(&with_role(json!("admin")))
                .await
                .expect("valid")
                .role,
            Role::Admin
        );
        assert!(matches!(
            verifier.verify(&with_role(json!("superuser"))).await,
            Err(JwtRefusal::NoRole { .. })
        ));
        assert!(matches!(
            verifier.verify(&sign(base.clone())).await,
            Err(JwtRefusal::NoRole { .. })
        ));
        let mut nameless = base.clone();
        nameless["etcdmon_role"] = json!("admin");
        nameless.as_object_mut().expect("object").remove("email");
        assert!(matches!(
            verifier.verify(&sign(nameless)).await,
            Err(JwtRefusal::Invalid(_))
        ));
    }

    #[test]
    fn a_key_file_that_is_not_a_key_names_the_field() {
        let dir = tempfile::tempdir().expect("tmp");
        let key_file = dir.path().join("idp.pem");
        std::fs::write(&key_file, "not a key").expect("write");
        let err = JwtVerifier::new(&config(&key_file)).err().expect("refused");
        assert!(
            format!("{err:#}").contains("http.auth.jwt.key_file"),
            "{err:#}"
        );
    }
}
