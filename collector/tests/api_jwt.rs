//! OIDC/JWT login to the API: the collector binary fetches the identity
//! provider's keys from a JWKS URL (served here), takes tokens signed by them
//! for its issuer and audience, maps group claims to roles, follows a key
//! rotation, and refuses expired, foreign, forged and role-less tokens.

mod common;

use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use common::CollectorProc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://login.example.test/realms/ops";
const AUDIENCE: &str = "etcdmon";

/// An ES256 signing key and its JWK.
struct Key {
    kid: String,
    private_pem: String,
    jwk: Value,
}

impl Key {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Self {
            kid: kid.to_owned(),
            private_pem: pair.serialize_pem(),
            jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_pem(self.private_pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn claims(sub: &str, groups: &[&str]) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups,
           "iat": now(), "exp": now() + 300})
}

/// Serves `keys` as a JWKS at `/jwks`; returns its URL.
async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let keys = keys.clone();
            async move { axum::Json(json!({ "keys": *keys.lock().expect("lock") })) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}/jwks")
}

async fn call(
    collector: &CollectorProc,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, collector.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_identity_provider_log_in_with_the_role_of_their_groups() {
    let first = Key::new("k1");
    let published = Arc::new(Mutex::new(vec![first.jwk.clone()]));
    let jwks = jwks_server(published.clone()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[grpc]\nallow_plaintext = true\n\n[http.auth.jwt]\nissuer = \"{ISSUER}\"\n\
             audience = \"{AUDIENCE}\"\njwks_url = \"{jwks}\"\nrole_claim = \"groups\"\n\n\
             [http.auth.jwt.roles]\nsre = \"operator\"\netcd-admins = \"admin\"\n"
        ),
    )
    .expect("config");
    let collector = CollectorProc::start_with_args(
        &format!("sqlite:{}", dir.path().join("db.sqlite").display()),
        dir.path(),
        &["--config", config.to_str().expect("utf-8")],
    );
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let sre = first.sign(&claims("alice", &["dev", "sre"]));
    let (s, body) = call(&collector, get.clone(), "/api/v1/whoami", &sre, None).await;
    assert_eq!(
        body,
        json!({"name": "alice", "role": "operator", "via": "jwt"}),
        "{s}"
    );
    let (s, body) = call(
        &collector,
        post.clone(),
        "/api/v1/silences",
        &sre,
        Some(json!({"matchers": ["cluster=\"prod\""], "duration": "1h"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["created_by"], "alice");
    let (s, _) = call(&collector, get.clone(), "/api/v1/audit", &sre, None).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an operator cannot read the audit log"
    );

    let admin = first.sign(&claims("bob", &["etcd-admins"]));
    let (s, body) = call(&collector, get.clone(), "/api/v1/audit", &admin, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let created = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["method"] == "POST" && e["status"] == 201)
        .cloned()
        .expect("the silence is audited");
    assert_eq!(created["actor"], "alice");
    assert_eq!(created["via"], "jwt");

    // Valid, but no group the collector maps to a role: who it is, not allowed.
    let dev = first.sign(&claims("carol", &["dev"]));
    let (s, body) = call(&collector, get.clone(), "/api/v1/clusters", &dev, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

    // Refused outright.
    let stranger = Key::new("k1"); // another key under the same id
    let mut expired = claims("alice", &["sre"]);
    expired["exp"] = json!(now() - 120);
    let mut foreign_audience = claims("alice", &["sre"]);
    foreign_audience["aud"] = json!("grafana");
    let mut foreign_issuer = claims("alice", &["sre"]);
    foreign_issuer["iss"] = json!("https://evil.example.test");
    let public_key_as_secret = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims("mallory", &["etcd-admins"]),
            &EncodingKey::from_secret(first.jwk.to_string().as_bytes()),
        )
        .expect("sign")
    };
    for (why, token) in [
        ("expired", first.sign(&expired)),
        ("another audience", first.sign(&foreign_audience)),
        ("another issuer", first.sign(&foreign_issuer)),
        (
            "another key",
            stranger.sign(&claims("mallory", &["etcd-admins"])),
        ),
        ("HMAC with the public key", public_key_as_secret),
        ("not a JWT", "a.b.c".to_owned()),
    ] {
        let (s, body) = call(&collector, get.clone(), "/api/v1/clusters", &token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {body}");
    }

    // The provider rotates its key: a token with the new key id makes the
    // collector fetch the keys again (at most every 5 s).
    let second = Key::new("k2");
    published.lock().expect("lock").push(second.jwk.clone());
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let rotated = second.sign(&claims("dave", &["sre"]));
    let (s, body) = call(&collector, get, "/api/v1/whoami", &rotated, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "dave");
}
