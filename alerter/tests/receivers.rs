//! The receivers against real endpoints on loopback: an HTTP server (axum) standing in
//! for webhook consumers, Slack and PagerDuty that records every request and answers as
//! scripted, and a real SMTP server (aiosmtpd, via the testkit's `SmtpSink`).
//!
//! Configs are parsed from TOML through figment, as the alerter reads them. Payloads are
//! checked against the documented formats: Alertmanager's webhook v4, Slack's Block Kit
//! limits, PagerDuty's Events API v2.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use etcdmon_alert::AlertState;

use etcdmon_alerter::notification::{Notification, NotifiedAlert, Notifier, NotifyError, Reason};
use etcdmon_alerter::receivers::{EmailConfig, PagerDutyConfig, SlackConfig, WebhookConfig};
use etcdmon_alerter::template::Templates;
use etcdmon_testkit::smtp::{SmtpSink, SmtpTls};
use figment::providers::{Format, Toml};
use figment::Figment;
use hmac::{Hmac, Mac};
use serde_json::Value as Json;
use sha2::Sha256;

// ---------------------------------------------------------------------------------------
// The scripted HTTP endpoint.

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Debug)]
struct EndpointState {
    requests: Vec<Recorded>,
    script: VecDeque<Answer>,
    default: Answer,
}

/// An HTTP server on a loopback port chosen by the kernel (bound before use, so no
/// other process can take it in between) that records requests and answers from its
/// script, then with the default answer.
#[derive(Clone)]
struct Endpoint {
    state: Arc<Mutex<EndpointState>>,
    base: String,
}

impl Endpoint {
    async fn start(default: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let endpoint = Endpoint {
            state: Arc::new(Mutex::new(EndpointState {
                requests: Vec::new(),
                script: VecDeque::new(),
                default,
            })),
            base,
        };
        let app = Router::new().fallback(record).with_state(endpoint.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        endpoint
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn then(&self, answer: Answer) {
        self.state.lock().unwrap().script.push_back(answer);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn last(&self) -> Recorded {
        self.requests().pop().expect("a request arrived")
    }
}

async fn record(
    State(endpoint): State<Endpoint>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut state = endpoint.state.lock().unwrap();
        state.requests.push(Recorded {
            method,
            path: uri.path().to_owned(),
            headers,
            body,
        });
        state
            .script
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    };
    tokio::time::sleep(answer.delay).await;
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::try_from(value).unwrap(),
        );
    }
    response
}

// ---------------------------------------------------------------------------------------
// Notifications and configs.

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const STARTS_AT_MS: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z
const STARTS_AT: &str = "2024-05-01T12:00:00.000Z";

fn alert(member: &str, status: AlertState, severity: &str) -> NotifiedAlert {
    NotifiedAlert {
        fingerprint: format!("fp-{member}"),
        transition: 1,
        status,
        labels: labels(&[
            ("cluster", "prod"),
            ("member", member),
            ("rule", "NoLeader"),
            ("severity", severity),
        ]),
        annotations: labels(&[
            ("summary", &format!("member {member} has no leader")),
            (
                "description",
                "Raft has no leader; writes fail. Café <b>bold</b>",
            ),
            ("runbook_url", "https://runbooks.invalid/alerts.md#NoLeader"),
        ]),
        value: 0.0,
        starts_at_ms: STARTS_AT_MS,
        ends_at_ms: (status == AlertState::Resolved).then_some(STARTS_AT_MS + 300_000),
        acknowledged: false,
        generator_url: format!("http://etcdmon.invalid/api/v1/alerts/fp-{member}"),
    }
}

/// A group with two firing alerts and one resolved one.
fn notification() -> Notification {
    Notification {
        receiver: "ops".to_owned(),
        group_key: r#"{}/{cluster="prod"}:{cluster="prod", rule="NoLeader"}"#.to_owned(),
        group_labels: labels(&[("cluster", "prod"), ("rule", "NoLeader")]),
        common_labels: labels(&[
            ("cluster", "prod"),
            ("rule", "NoLeader"),
            ("severity", "critical"),
        ]),
        common_annotations: labels(&[(
            "runbook_url",
            "https://runbooks.invalid/alerts.md#NoLeader",
        )]),
        status: AlertState::Firing,
        reason: Reason::New,
        alerts: vec![
            alert("m1", AlertState::Firing, "critical"),
            alert("m2", AlertState::Firing, "critical"),
            alert("m3", AlertState::Resolved, "critical"),
        ],
        external_url: "http://etcdmon.invalid".to_owned(),
    }
}

/// Parses a receiver table from TOML, as the alerter's config loader does.
fn config<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    Figment::from(Toml::string(toml))
        .extract()
        .unwrap_or_else(|e| panic!("parse config {toml}: {e}"))
}

fn retry_after(err: &NotifyError) -> Option<Duration> {
    match err {
        NotifyError::Retryable { retry_after, .. } => *retry_after,
        NotifyError::Permanent(reason) => {
            panic!("expected a retryable error, got permanent: {reason}")
        }
    }
}

fn keys(value: &Json) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Webhook.

#[tokio::test]
async fn webhook_sends_alertmanager_v4_message_with_valid_signature() {
    let endpoint = Endpoint::start(Answer::new(200, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("hmac.key");
    std::fs::write(&key_file, "s3cret\n").unwrap();
    let webhook = config::<WebhookConfig>(&format!(
        r#"
        url = "{}"
        hmac_secret_file = "{}"
        headers = {{ "X-Team" = "storage" }}
        "#,
        endpoint.url("/hook"),
        key_file.display()
    ))
    .build(&Templates::new())
    .unwrap();
    assert_eq!(webhook.kind(), "webhook");

    let n = notification();
    assert_eq!(webhook.notify(&n).await.unwrap(), "HTTP 200 OK");
    let request = endpoint.last();
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-team"), Some("storage"));

    // The signature is an HMAC-SHA256 of the exact body bytes, with the file's key
    // (without its trailing newline).
    let signature = request.header("x-etcdmon-signature").expect("signed");
    let hex_mac = signature.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&request.body);
    mac.verify_slice(&hex::decode(hex_mac).unwrap())
        .expect("signature verifies");

    let body = request.json();
    assert_eq!(
        keys(&body),
        BTreeSet::from([
            "version",
            "groupKey",
            "truncatedAlerts",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
            "reason",
        ])
    );
    assert_eq!(body["version"], "4");
    assert_eq!(body["groupKey"], n.group_key.as_str());
    assert_eq!(body["truncatedAlerts"], 0);
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "ops");
    assert_eq!(
        body["groupLabels"],
        serde_json::json!({"cluster": "prod", "rule": "NoLeader"})
    );
    assert_eq!(body["commonLabels"]["severity"], "critical");
    assert_eq!(
        body["commonAnnotations"]["runbook_url"],
        "https://runbooks.invalid/alerts.md#NoLeader"
    );
    assert_eq!(body["externalURL"], "http://etcdmon.invalid");
    assert_eq!(body["reason"], "new");
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 3);
    for (alert, sent) in alerts.iter().zip(&n.alerts) {
        assert_eq!(
            keys(alert),
            BTreeSet::from([
                "status",
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL",
                "fingerprint"
            ])
        );
        assert_eq!(alert["status"], sent.status.as_str());
        assert_eq!(alert["labels"], serde_json::to_value(&sent.labels).unwrap());
        assert_eq!(
            alert["annotations"],
            serde_json::to_value(&sent.annotations).unwrap()
        );
        assert_eq!(alert["startsAt"], STARTS_AT);
        assert_eq!(alert["generatorURL"], sent.generator_url.as_str());
        assert_eq!(alert["fingerprint"], sent.fingerprint.as_str());
    }
    assert_eq!(
        alerts[0]["endsAt"], "0001-01-01T00:00:00Z",
        "firing: Go's zero time"
    );
    assert_eq!(alerts[2]["endsAt"], "2024-05-01T12:05:00.000Z");
}

#[tokio::test]
async fn webhook_truncates_and_classifies_failures() {
    let endpoint = Endpoint::start(Answer::new(200, "")).await;
    let webhook = config::<WebhookConfig>(&format!(
        "url = \"{}\"\nmax_alerts = 2\ntimeout = \"500ms\"",
        endpoint.url("/")
    ))
    .build(&Templates::new())
    .unwrap();
    let n = notification();

    webhook.notify(&n).await.unwrap();
    let body = endpoint.last().json();
    assert_eq!(body["truncatedAlerts"], 1);
    let sent: Vec<&str> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["fp-m1", "fp-m2"], "firing alerts are kept first");
    assert!(endpoint.last().header("x-etcdmon-signature").is_none());

    // 503 with Retry-After as an HTTP date two minutes ahead.
    let at = httpdate(SystemTime::now() + Duration::from_secs(120));
    endpoint.then(Answer::new(503, "maintenance").header("retry-after", at));
    let err = webhook.notify(&n).await.unwrap_err();
    let wait = retry_after(&err).expect("Retry-After honoured");
    assert!(
        (Duration::from_secs(117)..=Duration::from_secs(120)).contains(&wait),
        "{wait:?}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert!(err.to_string().contains("maintenance"), "{err}");

    endpoint.then(Answer::new(429, ""));
    assert_eq!(retry_after(&webhook.notify(&n).await.unwrap_err()), None);

    for status in [400, 401, 404] {
        endpoint.then(Answer::new(status, "no"));
        let err = webhook.notify(&n).await.unwrap_err();
        assert!(!err.is_retryable(), "{status}: {err}");
    }

    // A redirect is reported, not followed (a POST would turn into a GET).
    let before = endpoint.requests().len();
    endpoint.then(Answer::new(302, "").header("location", endpoint.url("/elsewhere")));
    let err = webhook.notify(&n).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(endpoint.requests().len(), before + 1);

    // A reply slower than the timeout.
    endpoint.then(Answer::new(200, "").delayed(Duration::from_secs(5)));
    let started = Instant::now();
    let err = webhook.notify(&n).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Nobody listening.
    let closed = etcdmon_testkit::free_port();
    let unreachable = config::<WebhookConfig>(&format!("url = \"http://127.0.0.1:{closed}/\""))
        .build(&Templates::new())
        .unwrap();
    let err = unreachable.notify(&n).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

/// IMF-fixdate, as servers send in `Retry-After`.
fn httpdate(time: SystemTime) -> String {
    // humantime gives RFC 3339; rebuild the HTTP form from its fields.
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    let (date, clock) = rfc3339.trim_end_matches('Z').split_once('T').unwrap();
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (year, month, day) = (
        ymd.next().unwrap(),
        ymd.next().unwrap(),
        ymd.next().unwrap(),
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let days = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    format!(
        "{}, {day:02} {} {year} {clock} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

// ---------------------------------------------------------------------------------------
// Slack.

/// Checks the Block Kit limits Slack enforces and returns the blocks.
fn assert_valid_slack_message(message: &Json) -> Vec<Json> {
    let text = message["text"].as_str().expect("text fallback present");
    assert!(!text.trim().is_empty());
    assert!(text.chars().count() <= 4000);
    let blocks = message["blocks"].as_array().expect("blocks").clone();
    assert!(
        !blocks.is_empty() && blocks.len() <= 50,
        "{} blocks",
        blocks.len()
    );
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    let header = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(
        !header.is_empty() && header.chars().count() <= 150,
        "{header}"
    );
    for block in &blocks[1..] {
        assert_eq!(block["type"], "section", "{block}");
        assert_eq!(block["text"]["type"], "mrkdwn");
        let section = block["text"]["text"].as_str().unwrap();
        assert!(!section.is_empty() && section.chars().count() <= 3000);
    }
    blocks
}

#[tokio::test]
async fn slack_posts_text_and_blocks_within_limits() {
    let endpoint = Endpoint::start(Answer::new(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("slack-url");
    std::fs::write(&url_file, endpoint.url("/services/T0/B0/xyz") + "\n").unwrap();
    let slack = config::<SlackConfig>(&format!(
        r##"
        url_file = "{}"
        channel = "#etcd"
        username = "etcd-monitor"
        icon_emoji = ":rotating_light:"
        "##,
        url_file.display()
    ))
    .build(&Templates::new())
    .unwrap();
    assert_eq!(slack.kind(), "slack");

    assert_eq!(slack.notify(&notification()).await.unwrap(), "HTTP 200 OK");
    let request = endpoint.last();
    assert_eq!(request.path, "/services/T0/B0/xyz");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let message = request.json();
    assert_eq!(message["channel"], "#etcd");
    assert_eq!(message["username"], "etcd-monitor");
    assert_eq!(message["icon_emoji"], ":rotating_light:");
    assert!(message.get("icon_url").is_none());
    let text = message["text"].as_str().unwrap();
    assert!(
        text.starts_with("[FIRING:2] NoLeader cluster=prod\n"),
        "{text}"
    );
    assert!(text.contains("RESOLVED: member m3 has no leader"), "{text}");

    let blocks = assert_valid_slack_message(&message);
    assert_eq!(blocks.len(), 4, "header and one section per alert");
    assert_eq!(
        blocks[0]["text"]["text"],
        "[FIRING:2] NoLeader cluster=prod"
    );
    let first = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        first.starts_with(":red_circle: *member m1 has no leader*"),
        "{first}"
    );
    // mrkdwn control characters in data are escaped; links use Slack's <url|text>.
    assert!(first.contains("Café &lt;b&gt;bold&lt;/b&gt;"), "{first}");
    assert!(
        first.contains("<https://runbooks.invalid/alerts.md#NoLeader|Runbook>"),
        "{first}"
    );
    let third = blocks[3]["text"]["text"].as_str().unwrap();
    assert!(third.starts_with(":large_green_circle:"), "{third}");
}

#[tokio::test]
async fn slack_cuts_large_groups_to_slack_limits() {
    let endpoint = Endpoint::start(Answer::new(200, "ok")).await;
    let slack = config::<SlackConfig>(&format!("url = \"{}\"", endpoint.url("/s")))
        .build(&Templates::new())
        .unwrap();
    let mut n = notification();
    let long_cluster = "c".repeat(300);
    n.group_labels.insert("cluster".into(), long_cluster);
    n.alerts = (0..120)
        .map(|i| {
            let mut a = alert(&format!("m{i}"), AlertState::Firing, "warning");
            a.annotations.insert("description".into(), "x".repeat(5000));
            a
        })
        .collect();
    slack.notify(&n).await.unwrap();
    let message = endpoint.last().json();
    let blocks = assert_valid_slack_message(&message);
    assert_eq!(blocks.len(), 50);
    assert!(blocks[0]["text"]["text"].as_str().unwrap().ends_with('…'));
    assert!(blocks[1]["text"]["text"].as_str().unwrap().ends_with('…'));
    let note = blocks[49]["text"]["text"].as_str().unwrap();
    assert!(note.starts_with("…and 72 more alerts"), "{note}");
    assert!(message["text"].as_str().unwrap().chars().count() <= 4000);
}

#[tokio::test]
async fn slack_failures_are_classified() {
    let endpoint = Endpoint::start(Answer::new(200, "ok")).await;
    let slack = config::<SlackConfig>(&format!("url = \"{}\"", endpoint.url("/s")))
        .build(&Templates::new())
        .unwrap();
    let n = notification();

    endpoint.then(Answer::new(429, "rate_limited").header("retry-after", "7"));
    let err = slack.notify(&n).await.unwrap_err();
    assert_eq!(retry_after(&err), Some(Duration::from_secs(7)));

    endpoint.then(Answer::new(500, "rollup_error"));
    assert!(slack.notify(&n).await.unwrap_err().is_retryable());

    for (status, body) in [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ] {
        endpoint.then(Answer::new(status, body));
        match slack.notify(&n).await.unwrap_err() {
            NotifyError::Permanent(reason) => assert!(reason.contains(body), "{reason}"),
            other => panic!("{status} must be permanent, got {other:?}"),
        }
    }
    // Recovered.
    slack.notify(&n).await.unwrap();
}

/// A Slack webhook URL is a secret (its path is the token): a failed attempt's
/// reason, which goes to the log, the delivery history and the API, must not carry
/// it. reqwest's transport errors print the URL they failed on.
#[tokio::test]
async fn a_failed_attempt_does_not_reveal_the_webhook_url() {
    let closed = etcdmon_testkit::free_port();
    let url = format!("http://127.0.0.1:{closed}/services/T000/B000/SECRETTOKEN123");
    let slack = config::<SlackConfig>(&format!("url = \"{url}\""))
        .build(&Templates::new())
        .unwrap();
    let err = slack.notify(&notification()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("SECRETTOKEN123"), "{text}");
    assert!(!text.contains("/services/"), "{text}");
}

// ---------------------------------------------------------------------------------------
// PagerDuty.

const PD_ACCEPTED: &str =
    r#"{"status":"success","message":"Event processed","dedup_key":"from-pagerduty"}"#;

async fn pagerduty(endpoint: &Endpoint, extra: &str) -> Arc<dyn Notifier> {
    config::<PagerDutyConfig>(&format!(
        "url = \"{}\"\nrouting_key = \"R0UT1NGKEY0000000000000000000000\"\n{extra}",
        endpoint.url("/v2/enqueue")
    ))
    .build(&Templates::new())
    .unwrap()
}

#[tokio::test]
async fn pagerduty_trigger_acknowledge_resolve_share_one_dedup_key() {
    let endpoint = Endpoint::start(Answer::new(202, PD_ACCEPTED)).await;
    let pd = pagerduty(&endpoint, "").await;
    assert_eq!(pd.kind(), "pagerduty");

    let mut n = notification();
    let detail = pd.notify(&n).await.unwrap();
    assert_eq!(detail, "HTTP 202 Accepted trigger dedup_key=from-pagerduty");
    let trigger = endpoint.last();
    assert_eq!(trigger.path, "/v2/enqueue");
    assert_eq!(trigger.header("content-type"), Some("application/json"));
    let trigger = trigger.json();
    assert_eq!(
        keys(&trigger),
        BTreeSet::from([
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "links",
            "client",
            "client_url"
        ])
    );
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0000000000000000000000");
    assert_eq!(trigger["event_action"], "trigger");
    let dedup_key = trigger["dedup_key"].as_str().unwrap().to_owned();
    assert_eq!(dedup_key.len(), 64);
    assert!(dedup_key.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(trigger["client"], "etcd-monitor");
    assert_eq!(trigger["client_url"], "http://etcdmon.invalid");

    let payload = &trigger["payload"];
    let allowed = BTreeSet::from([
        "summary",
        "source",
        "severity",
        "timestamp",
        "component",
        "group",
        "class",
        "custom_details",
    ]);
    assert!(keys(payload).is_subset(&allowed), "{payload}");
    assert_eq!(payload["summary"], "[FIRING:2] NoLeader cluster=prod");
    assert_eq!(payload["source"], "prod");
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["timestamp"], STARTS_AT);
    assert_eq!(payload["group"], "prod");
    assert_eq!(payload["class"], "NoLeader");
    assert!(
        payload.get("component").is_none(),
        "no common member: {payload}"
    );
    let details = &payload["custom_details"];
    assert_eq!(details["num_firing"], 2);
    assert_eq!(details["num_resolved"], 1);
    assert_eq!(details["alerts"].as_array().unwrap().len(), 3);
    let links = trigger["links"].as_array().unwrap();
    assert_eq!(
        links[0]["href"],
        "https://runbooks.invalid/alerts.md#NoLeader"
    );
    assert!(links
        .iter()
        .all(|l| keys(l) == BTreeSet::from(["href", "text"])));

    n.reason = Reason::Acknowledged;
    pd.notify(&n).await.unwrap();
    let ack = endpoint.last().json();
    assert_eq!(
        keys(&ack),
        BTreeSet::from(["routing_key", "event_action", "dedup_key"])
    );
    assert_eq!(ack["event_action"], "acknowledge");
    assert_eq!(ack["dedup_key"], dedup_key.as_str());

    n.reason = Reason::New;
    n.status = AlertState::Resolved;
    for a in &mut n.alerts {
        a.status = AlertState::Resolved;
        a.ends_at_ms = Some(STARTS_AT_MS + 1);
    }
    pd.notify(&n).await.unwrap();
    let resolve = endpoint.last().json();
    assert_eq!(
        keys(&resolve),
        BTreeSet::from(["routing_key", "event_action", "dedup_key"])
    );
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup_key.as_str());

    // Another group gets another incident.
    n.group_key.push('x');
    n.status = AlertState::Firing;
    n.alerts[0].status = AlertState::Firing;
    pd.notify(&n).await.unwrap();
    assert_ne!(endpoint.last().json()["dedup_key"], dedup_key.as_str());
}

#[tokio::test]
async fn pagerduty_severity_summary_and_failures() {
    let endpoint = Endpoint::start(Answer::new(202, PD_ACCEPTED)).await;
    let severity_of = |severities: &[&str]| {
        let mut n = notification();
        n.alerts = severities
            .iter()
            .enumerate()
            .map(|(i, s)| alert(&format!("m{i}"), AlertState::Firing, s))
            .collect();
        if let [only] = &n.alerts[..] {
            // The dispatcher computes common labels; with one alert they are its own.
            n.common_labels = only.labels.clone();
        }
        n
    };
    let pd = pagerduty(&endpoint, "").await;
    for (severities, expected) in [
        (&["warning", "info"][..], "warning"),
        (&["info"][..], "info"),
        (&["warning", "critical"][..], "critical"),
        (&["page-me"][..], "error"),
        (&["error", "warning"][..], "error"),
    ] {
        pd.notify(&severity_of(severities)).await.unwrap();
        let payload = &endpoint.last().json()["payload"];
        assert_eq!(payload["severity"], expected, "{severities:?}");
        if severities.len() == 1 {
            // One alert: the member is common, and its summary joins the title.
            assert_eq!(payload["component"], "m0");
            assert!(payload["summary"]
                .as_str()
                .unwrap()
                .ends_with(": member m0 has no leader"));
        }
    }

    let long = pagerduty(&endpoint, "summary = \"{{ 'x' * 2000 }}\"").await;
    long.notify(&notification()).await.unwrap();
    let summary = endpoint.last().json()["payload"]["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(summary.chars().count(), 1024);

    let n = notification();
    endpoint.then(Answer::new(429, r#"{"status":"throttle event"}"#).header("retry-after", "30"));
    assert_eq!(
        retry_after(&pd.notify(&n).await.unwrap_err()),
        Some(Duration::from_secs(30))
    );
    endpoint.then(Answer::new(500, "oops"));
    assert!(pd.notify(&n).await.unwrap_err().is_retryable());
    endpoint.then(Answer::new(
        400,
        r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#,
    ));
    match pd.notify(&n).await.unwrap_err() {
        NotifyError::Permanent(reason) => assert!(reason.contains("routing_key"), "{reason}"),
        other => panic!("400 must be permanent, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Email.

fn email(port: u16, extra: &str) -> Arc<dyn Notifier> {
    config::<EmailConfig>(&format!(
        r#"
        host = "127.0.0.1"
        port = {port}
        from = "etcd-monitor <alerts@example.invalid>"
        to = ["ops@example.invalid", "Storage Team <dba@example.invalid>"]
        hello_name = "alerter.example.invalid"
        timeout = "5s"
        {extra}
        "#
    ))
    .build(&Templates::new())
    .unwrap()
}

#[tokio::test]
async fn email_arrives_with_from_to_subject_and_bodies() {
    let sink = SmtpSink::start().unwrap();
    let mailer = email(sink.port(), "tls = \"none\"");
    assert_eq!(mailer.kind(), "email");
    let detail = mailer.notify(&notification()).await.unwrap();
    assert!(detail.starts_with("SMTP 250 "), "{detail}");

    let mails = sink.wait_for_messages(1, Duration::from_secs(10)).unwrap();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.mail_from, "alerts@example.invalid");
    assert_eq!(mail.rcpt_to, ["ops@example.invalid", "dba@example.invalid"]);
    assert_eq!(
        mail.header("From"),
        Some("etcd-monitor <alerts@example.invalid>")
    );
    assert_eq!(
        mail.header("To"),
        Some("ops@example.invalid, Storage Team <dba@example.invalid>")
    );
    assert_eq!(
        mail.header("Subject"),
        Some("[FIRING:2] NoLeader cluster=prod")
    );
    assert!(mail.header("Date").is_some());

    let text = mail.part("text/plain").expect("text/plain part");
    assert!(
        text.starts_with("2 firing, 1 resolved (cluster=prod, rule=NoLeader)."),
        "{text}"
    );
    for needle in [
        "* member m1 has no leader",
        "* member m3 has no leader",
        "Raft has no leader; writes fail. Café <b>bold</b>",
        "Value:    0",
        "Member:   m2",
        &format!("Started:  {STARTS_AT}"),
        "Resolved: 2024-05-01T12:05:00.000Z",
        "Runbook:  https://runbooks.invalid/alerts.md#NoLeader",
        "Details:  http://etcdmon.invalid/api/v1/alerts/fp-m1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let html = mail.part("text/html").expect("text/html alternative");
    // Escaped (minijinja also escapes `/`, as OWASP advises).
    assert!(html.contains("Café &lt;b&gt;bold&lt;&#x2f;b&gt;"), "{html}");
    assert!(html.contains("<h3>Resolved</h3>"), "{html}");
}

#[tokio::test]
async fn email_with_custom_templates_and_plain_text_only() {
    let sink = SmtpSink::start().unwrap();
    let mailer = email(
        sink.port(),
        r#"
        tls = "none"
        send_html = false
        subject = """{{ receiver }}:
          {{ num_firing }} firing"""
        body = "{% for a in firing %}{{ a.labels.member }} {% endfor %}"
        "#,
    );
    mailer.notify(&notification()).await.unwrap();
    let mail = &sink.wait_for_messages(1, Duration::from_secs(10)).unwrap()[0];
    assert_eq!(mail.header("Subject"), Some("ops: 2 firing"));
    assert_eq!(mail.parts.len(), 1);
    assert_eq!(mail.part("text/plain").map(str::trim_end), Some("m1 m2"));
}

#[tokio::test]
async fn email_failures_are_classified() {
    // Nobody listening: retry later.
    let closed = etcdmon_testkit::free_port();
    let err = email(closed, "tls = \"none\"")
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // The server's own verdicts: 550 is final, 451 is "try again later".
    let sink = SmtpSink::start().unwrap();
    let reject = |to: &str| {
        config::<EmailConfig>(&format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"a@example.invalid\"\nto = [\"{to}\"]",
            sink.port()
        ))
        .build(&Templates::new())
        .unwrap()
    };
    match reject("reject-permanent@example.invalid")
        .notify(&notification())
        .await
    {
        Err(NotifyError::Permanent(reason)) => assert!(reason.contains("550"), "{reason}"),
        other => panic!("550 must be permanent, got {other:?}"),
    }
    let err = reject("reject-transient@example.invalid")
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("451"),
        "{err}"
    );
    assert!(sink.messages().unwrap().is_empty());
}

#[tokio::test]
async fn email_over_implicit_tls_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = etcdmon_testkit::generate_tls(dir.path(), 1).unwrap();
    let ca = format!("ca_file = \"{}\"", tls.ca_cert.display());

    let smtps = SmtpSink::start_tls(SmtpTls::Implicit(&tls)).unwrap();
    email(smtps.port(), &format!("tls = \"tls\"\n{ca}"))
        .notify(&notification())
        .await
        .unwrap();
    smtps.wait_for_messages(1, Duration::from_secs(10)).unwrap();

    let starttls = SmtpSink::start_tls(SmtpTls::StartTls(&tls)).unwrap();
    email(starttls.port(), &format!("tls = \"starttls\"\n{ca}"))
        .notify(&notification())
        .await
        .unwrap();
    starttls
        .wait_for_messages(1, Duration::from_secs(10))
        .unwrap();

    // Without the private CA the server's certificate is not trusted: nothing is sent.
    let err = email(starttls.port(), "tls = \"starttls\"")
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(starttls.messages().unwrap().len(), 1);

    // A plain-text client against a server that requires STARTTLS is refused.
    let err = email(starttls.port(), "tls = \"none\"")
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}
