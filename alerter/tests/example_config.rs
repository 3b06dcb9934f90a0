//! `deploy/config/alerter.example.toml` parses, builds, and says what its comments say.
//!
//! The example reads its secrets from the files systemd's `LoadCredential=` provides
//! (`deploy/systemd/etcdmon-alerter.service`). Building a receiver reads its secret
//! file, so the test checks every path against the unit's credentials, then points the
//! parsed config at temporary files before `build()`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use etcdmon_alerter::config::{AlerterConfig, DeliveryConfig, ReceiverKind};
use etcdmon_alerter::flap::FlapConfig;
use etcdmon_alerter::receivers::TlsMode;
use etcdmon_alerter::route::{EscalationStep, Route};
use etcdmon_bus::jetstream::JetStreamConfig;

const EXAMPLE: &str = include_str!("../../deploy/config/alerter.example.toml");
const UNIT: &str = include_str!("../../deploy/systemd/etcdmon-alerter.service");
const CREDENTIALS_DIR: &str = "/run/credentials/etcdmon-alerter.service/";

fn example() -> AlerterConfig {
    etcdmon_core::config::from_toml_str(EXAMPLE).expect("the example parses")
}

/// Every secret file of the config, by receiver, as a mutable slot.
fn secret_files(cfg: &mut AlerterConfig) -> Vec<(String, &mut Option<PathBuf>)> {
    let mut out = Vec::new();
    for r in &mut cfg.receivers {
        let name = r.name.clone();
        match &mut r.kind {
            ReceiverKind::Webhook(w) => out.push((name, &mut w.hmac_secret_file)),
            ReceiverKind::Slack(s) => out.push((name, &mut s.url_file)),
            ReceiverKind::PagerDuty(p) => out.push((name, &mut p.routing_key_file)),
            ReceiverKind::Email(e) => out.push((name, &mut e.password_file)),
            ReceiverKind::Log => {}
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The receivers an alert with `pairs` reaches, in tree order.
fn receivers_of(route: &Route, pairs: &[(&str, &str)]) -> Vec<String> {
    route
        .matching(&labels(pairs))
        .iter()
        .map(|node| node.receiver.clone())
        .collect()
}

#[test]
fn secrets_come_from_the_units_credentials_and_none_is_inline() {
    let credentials: BTreeSet<&str> = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .filter_map(|l| l.split_once(':').map(|(id, _)| id))
        .collect();
    let mut cfg = example();
    let mut used = BTreeSet::new();
    for (receiver, slot) in secret_files(&mut cfg) {
        let path = slot
            .as_ref()
            .unwrap_or_else(|| panic!("{receiver}: secret not read from a file"));
        let id = path
            .to_str()
            .and_then(|p| p.strip_prefix(CREDENTIALS_DIR))
            .unwrap_or_else(|| panic!("{receiver}: {path:?} is not under {CREDENTIALS_DIR}"));
        assert!(
            credentials.contains(id),
            "{receiver}: no LoadCredential={id}:... in the unit"
        );
        used.insert(id.to_owned());
    }
    assert_eq!(used.len(), 5, "{used:?}");
    assert_eq!(
        used.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        credentials,
        "the unit loads exactly the credentials the example uses"
    );
    for r in &cfg.receivers {
        let inline = match &r.kind {
            ReceiverKind::Webhook(w) => w.hmac_secret.is_some(),
            ReceiverKind::Slack(s) => s.url.is_some(),
            ReceiverKind::PagerDuty(p) => p.routing_key.is_some(),
            ReceiverKind::Email(e) => e.password.is_some(),
            ReceiverKind::Log => false,
        };
        assert!(!inline, "{}: inline secret in the example", r.name);
    }
}

#[test]
fn the_example_builds_and_routes_as_its_comments_say() {
    let mut cfg = example();
    let dir = tempfile::tempdir().expect("temp dir");
    for (receiver, slot) in secret_files(&mut cfg) {
        let file = dir.path().join(&receiver);
        let secret = if receiver == "slack" {
            "https://hooks.slack.com/services/T000/B000/XXXX\n"
        } else {
            "not-a-real-secret\n"
        };
        std::fs::write(&file, secret).expect("write secret");
        *slot = Some(file);
    }
    let (route, receivers) = cfg.build().expect("the example builds");

    let kinds: BTreeMap<&str, &str> = receivers
        .notifiers
        .iter()
        .map(|(name, n)| (name.as_str(), n.kind()))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("dba-email", "email"),
            ("ops-webhook", "webhook"),
            ("pagerduty", "pagerduty"),
            ("pagerduty-secondary", "pagerduty"),
            ("slack", "slack"),
        ])
    );
    let email = cfg
        .receivers
        .iter()
        .find_map(|r| match &r.kind {
            ReceiverKind::Email(e) => Some(e),
            _ => None,
        })
        .expect("an email receiver");
    assert_eq!((email.tls, email.port), (TlsMode::Starttls, Some(587)));

    // Critical alerts page, db_* alerts mail the DBAs, everything reaches Slack and the
    // webhook.
    assert_eq!(
        receivers_of(
            &route,
            &[
                ("cluster", "prod"),
                ("rule", "db_near_quota"),
                ("severity", "critical")
            ]
        ),
        ["pagerduty", "dba-email", "ops-webhook", "slack"]
    );
    assert_eq!(
        receivers_of(
            &route,
            &[
                ("cluster", "prod"),
                ("rule", "db_fragmented"),
                ("severity", "info")
            ]
        ),
        ["dba-email", "ops-webhook", "slack"]
    );
    assert_eq!(
        receivers_of(
            &route,
            &[
                ("cluster", "prod"),
                ("rule", "wal_fsync_slow"),
                ("severity", "warning")
            ]
        ),
        ["ops-webhook", "slack"]
    );
    // Anchored: "xdb_..." is not a db_ rule.
    assert_eq!(
        receivers_of(&route, &[("rule", "xdb_near_quota")]),
        ["ops-webhook", "slack"]
    );

    let pager = &route.routes[0];
    assert_eq!(
        pager.escalation,
        [EscalationStep {
            after: Duration::from_secs(600),
            receiver: "pagerduty-secondary".into(),
        }]
    );
    assert_eq!(pager.repeat_interval, Duration::from_secs(4 * 3600));
    let dba = &route.routes[1];
    assert_eq!(dba.group_wait, Duration::from_secs(30));
    assert_eq!(dba.repeat_interval, Duration::from_secs(12 * 3600));
    assert!(
        dba.escalation.is_empty(),
        "siblings do not inherit escalation"
    );
    assert_eq!(
        dba.group_key(&labels(&[
            ("cluster", "prod"),
            ("rule", "db_near_quota"),
            ("member", "m1")
        ])),
        r#"0.1:{cluster="prod",rule="db_near_quota"}"#
    );

    // Inhibition: the built-in quorum rule is kept, and NOSPACE hides the quota warnings.
    let rules = cfg.inhibit_rules();
    assert_eq!(rules.len(), 4);
    // The metrics symptoms linger as the built-in rules do.
    let lingers: Vec<Option<std::time::Duration>> = rules.iter().map(|r| r.linger).collect();
    let metrics = Some(etcdmon_alerter::inhibit::METRICS_LINGER);
    assert_eq!(lingers, [None, metrics, metrics, None]);
    let inhibited = |source: &[(&str, &str)], target: &[(&str, &str)]| {
        rules
            .iter()
            .any(|r| r.inhibits(&labels(source), &labels(target)))
    };
    let lost = [("cluster", "a"), ("rule", "quorum_lost")];
    assert!(inhibited(
        &lost,
        &[("cluster", "a"), ("rule", "member_unreachable")]
    ));
    assert!(!inhibited(
        &lost,
        &[("cluster", "b"), ("rule", "member_unreachable")]
    ));
    let nospace = [
        ("cluster", "a"),
        ("rule", "alarm_active"),
        ("alarm", "NOSPACE"),
    ];
    assert!(inhibited(
        &nospace,
        &[("cluster", "a"), ("rule", "db_near_quota")]
    ));
    let corrupt = [
        ("cluster", "a"),
        ("rule", "alarm_active"),
        ("alarm", "CORRUPT"),
    ];
    assert!(!inhibited(
        &corrupt,
        &[("cluster", "a"), ("rule", "db_near_quota")]
    ));
}

#[test]
fn sections_said_to_show_defaults_do() {
    let cfg = example();
    let defaults = AlerterConfig::default();
    assert_eq!(cfg.nats, JetStreamConfig::default());
    assert_eq!(cfg.delivery, DeliveryConfig::default());
    assert_eq!(cfg.flapping, FlapConfig::default());
    assert_eq!(cfg.refresh_interval, defaults.refresh_interval);
    assert_eq!(cfg.log.level, defaults.log.level);
    // Set on purpose, as the comments say.
    assert_ne!(cfg.external_url, defaults.external_url);
    assert_ne!(cfg.http.listen, defaults.http.listen);
    assert!(cfg.storage.url.starts_with("clickhouse://"));
    cfg.storage.target().expect("storage.url is valid");
}
