//! Nobody uses the API who does not belong, and what they change is audited:
//! the collector binary with API tokens of each role, no anonymous access and
//! one allowed host name. Requests without or with unknown credentials get 401,
//! too low a role 403, an unknown Host name 403; an operator's silence and
//! every refusal land in the audit log that only an admin may read.

mod common;

use common::CollectorProc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const VIEWER: &str = "viewer-token-1c2d";
const OPERATOR: &str = "operator-token-3e4f";
const ADMIN: &str = "admin-token-5a6b";

fn config(dir: &std::path::Path, anonymous: Option<&str>) -> std::path::PathBuf {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let anonymous = anonymous.map_or(String::new(), |r| format!("auth.anonymous = \"{r}\"\n"));
    let toml = format!(
        "[grpc]\nallow_plaintext = true\n\n[http]\nallowed_hosts = [\"etcdmon.test\"]\n{anonymous}\n\
         [[http.auth.tokens]]\nname = \"grafana\"\ntoken_sha256 = \"{}\"\nrole = \"viewer\"\n\n\
         [[http.auth.tokens]]\nname = \"oncall\"\ntoken_sha256 = \"{}\"\nrole = \"operator\"\n\n\
         [[http.auth.tokens]]\nname = \"root\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n",
        hash(VIEWER),
        hash(OPERATOR),
        hash(ADMIN)
    );
    let path = dir.join("collector.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

struct Api {
    collector: CollectorProc,
    client: reqwest::Client,
}

impl Api {
    fn start(dir: &std::path::Path, anonymous: Option<&str>) -> Self {
        let cfg = config(dir, anonymous);
        let collector = CollectorProc::start_with_args(
            &format!("sqlite:{}", dir.join("db.sqlite").display()),
            dir,
            &["--config", cfg.to_str().expect("utf-8 path")],
        );
        Self {
            collector,
            client: reqwest::Client::new(),
        }
    }

    /// `method path` with `token` (if any) and `body` (if any): status and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self.client.request(method, self.collector.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }
}

fn silence() -> Value {
    json!({"matchers": ["cluster=\"prod\""], "duration": "1h", "comment": "maintenance"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_get_their_role_and_changes_and_refusals_are_audited() {
    let dir = tempfile::tempdir().expect("tmp");
    let api = Api::start(dir.path(), None);

    // Probes need nothing; everything else needs a known token.
    let (s, _, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body, headers) = api.call(Method::GET, "/api/v1/clusters", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    let (s, _, _) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/clusters", Some("guessed"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");

    // A viewer reads but cannot silence.
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(VIEWER), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/whoami", Some(VIEWER), None)
        .await;
    assert_eq!(
        body,
        json!({"name": "grafana", "role": "viewer", "via": "token"}),
        "{s}"
    );
    let (s, body, _) = api
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(VIEWER),
            Some(silence()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("operator"),
        "{body}"
    );

    // An operator silences, as itself, and expires the silence.
    let (s, body, _) = api
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(OPERATOR),
            Some(silence()),
        )
        .await;
    assert!(s.is_success(), "{s} {body}");
    assert_eq!(body["created_by"], "oncall", "the token's name: {body}");
    let id = body["id"].as_str().expect("silence id").to_owned();
    let (s, body, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/silences/{id}"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {body}");

    // Only an admin reads the audit log.
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/audit", Some(OPERATOR), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/audit", Some(ADMIN), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let entries = body["entries"].as_array().expect("entries").clone();
    let seen: Vec<(String, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_owned(),
                e["method"].as_str().unwrap_or("").to_owned(),
                e["path"].as_str().unwrap_or("").to_owned(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let has = |actor: &str, method: &str, path: &str, status: u64| {
        seen.iter()
            .any(|(a, m, p, s)| a == actor && m == method && p.starts_with(path) && *s == status)
    };
    assert!(
        has("", "GET", "/api/v1/clusters", 401),
        "a wrong token: {seen:?}"
    );
    assert!(has("grafana", "POST", "/api/v1/silences", 403), "{seen:?}");
    assert!(has("oncall", "POST", "/api/v1/silences", 201), "{seen:?}");
    assert!(
        has("oncall", "DELETE", "/api/v1/silences/", 200),
        "{seen:?}"
    );
    assert!(has("oncall", "GET", "/api/v1/audit", 403), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|(_, m, p, s)| m == "GET" && p == "/api/v1/clusters" && *s == 200),
        "reads are not audited: {seen:?}"
    );
    // A request without credentials is not a login attempt.
    assert_eq!(
        seen.iter().filter(|(_, _, _, s)| *s == 401).count(),
        1,
        "{seen:?}"
    );
    let created = entries
        .iter()
        .find(|e| e["method"] == "POST" && e["status"] == 201)
        .expect("the silence");
    assert_eq!(created["role"], "operator");
    assert_eq!(created["via"], "token");
    assert!(
        created["remote"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{created}"
    );
    let text = entries.iter().map(Value::to_string).collect::<String>();
    for token in [VIEWER, OPERATOR, ADMIN, "guessed"] {
        assert!(!text.contains(token), "a token in the audit log: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_servers_names_are_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let api = Api::start(dir.path(), Some("viewer"));
    let get = |host: &'static str| {
        let url = api.collector.url("/api/v1/clusters");
        let client = api.client.clone();
        async move {
            client
                .get(url)
                .header("host", host)
                .send()
                .await
                .expect("request")
                .status()
        }
    };
    // A page on rebind.attacker.example whose name now points at 127.0.0.1.
    assert_eq!(get("rebind.attacker.example").await, StatusCode::FORBIDDEN);
    assert_eq!(
        get("rebind.attacker.example:8080").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get("etcdmon.test:8080").await, StatusCode::OK);
    assert_eq!(get("ETCDMON.TEST").await, StatusCode::OK);
    assert_eq!(get("localhost:8080").await, StatusCode::OK);
    assert_eq!(get("10.1.2.3").await, StatusCode::OK);
    // Probes are never refused for their Host.
    assert_eq!(
        api.client
            .get(api.collector.url("/healthz"))
            .header("host", "kubelet.example")
            .send()
            .await
            .expect("request")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_viewers_read_but_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let api = Api::start(dir.path(), Some("viewer"));
    let (s, _, _) = api.call(Method::GET, "/api/v1/alerts", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body, _) = api
        .call(Method::POST, "/api/v1/silences", None, Some(silence()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body, _) = api
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(OPERATOR),
            Some(silence()),
        )
        .await;
    assert!(
        s.is_success(),
        "a token still works beside anonymous access: {s} {body}"
    );
    let (_, body, _) = api.call(Method::GET, "/api/v1/silences", None, None).await;
    assert_eq!(
        body["silences"].as_array().map(Vec::len),
        Some(1),
        "only the operator's silence: {body}"
    );
}

/// Admins make tokens through the API: the secret is answered once and works
/// with its role at once; it is stored hashed (nowhere in listings, the audit
/// log or the log file), refused once revoked or expired, and kept across a
/// restart. Only admins manage tokens; config tokens cannot be revoked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_make_and_revoke_tokens_that_work_until_revoked_or_expired() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut api = Api::start(dir.path(), None);
    let make = |name: &str, role: &str, expires_in: Option<&str>| {
        let mut body = json!({"name": name, "role": role});
        if let Some(e) = expires_in {
            body["expires_in"] = json!(e);
        }
        body
    };

    let (s, body, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(OPERATOR),
            Some(make("ci-bot", "viewer", None)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins make tokens: {body}");
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/tokens", Some(VIEWER), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, created, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(ADMIN),
            Some(make("ci-bot", "operator", None)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["token_secret"].as_str().expect("secret").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with("etm_") && secret.len() == 68, "{secret}");
    assert_eq!(created["state"], "active");
    assert_eq!(created["created_by"], "root");

    // It works at once, with its role.
    let (_, me, _) = api
        .call(Method::GET, "/api/v1/whoami", Some(&secret), None)
        .await;
    assert_eq!(
        me,
        json!({"name": "ci-bot", "role": "operator", "via": "token"})
    );
    let (s, body, _) = api
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(&secret),
            Some(silence()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/audit", Some(&secret), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an operator token is not admin");

    // Names are unique among tokens in use, and checked.
    for (body, want) in [
        (make("ci-bot", "viewer", None), StatusCode::CONFLICT),
        (make("grafana", "viewer", None), StatusCode::CONFLICT),
        (make("no spaces", "viewer", None), StatusCode::BAD_REQUEST),
        (make("x", "root", None), StatusCode::BAD_REQUEST),
        (make("x", "viewer", Some("0s")), StatusCode::BAD_REQUEST),
        (make("x", "viewer", Some("11y")), StatusCode::BAD_REQUEST),
        (
            json!({"name": "x", "role": "viewer", "token_sha256": "00"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, answer, _) = api
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(ADMIN),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, want, "{body} -> {answer}");
    }

    // A short-lived token works, then expires.
    let (s, short, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(ADMIN),
            Some(make("short", "viewer", Some("1s"))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{short}");
    let short_secret = short["token_secret"].as_str().expect("secret").to_owned();
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(&short_secret), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(&short_secret), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("expired"),
        "{body}"
    );

    // Revoked: refused at once. Config tokens are not revoked here.
    let (s, body, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(&secret), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("revoked"),
        "{body}"
    );
    let (s, _, _) = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/tok_nothing",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/config:grafana",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The name of a revoked token may be used again.
    let (s, again, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(ADMIN),
            Some(make("ci-bot", "viewer", None)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    let again_secret = again["token_secret"].as_str().expect("secret").to_owned();

    // The listing: every token with its state, no secret and no hash.
    let (s, listed, _) = api
        .call(Method::GET, "/api/v1/tokens", Some(ADMIN), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let states: Vec<(String, String, String)> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_owned(),
                t["source"].as_str().unwrap_or("").to_owned(),
                t["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expect = |n: &str, src: &str, st: &str| (n.to_owned(), src.to_owned(), st.to_owned());
    assert_eq!(
        states,
        vec![
            expect("grafana", "config", "active"),
            expect("oncall", "config", "active"),
            expect("root", "config", "active"),
            expect("ci-bot", "api", "revoked"),
            expect("short", "api", "expired"),
            expect("ci-bot", "api", "active"),
        ]
    );

    // Audited with their ids; no secret anywhere.
    let (_, audit, _) = api
        .call(Method::GET, "/api/v1/audit", Some(ADMIN), None)
        .await;
    let audit_text = audit.to_string();
    assert!(
        audit_text.contains(&format!("created {id} (ci-bot, operator)")),
        "{audit}"
    );
    assert!(audit_text.contains(&format!("revoked {id}")), "{audit}");
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    for text in [listed.to_string(), audit_text, api.collector.log_text()] {
        for s in [&secret, &short_secret, &again_secret, &hash] {
            assert!(
                !text.contains(s.as_str()),
                "a secret or its hash leaked: {text}"
            );
        }
    }

    // Tokens outlive a restart, with their state.
    api.collector.terminate();
    api.collector.spawn();
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(&again_secret), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api
        .call(Method::GET, "/api/v1/clusters", Some(&secret), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
