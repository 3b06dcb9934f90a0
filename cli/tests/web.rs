//! The web page in a real browser (headless Chromium over WebDriver) against
//! `etcdmon up` watching a real 3-member etcd: the overview shows the
//! cluster, a killed member turns it red without a reload, a chart draws
//! stored points, an alert acknowledged from the page is acknowledged in the
//! API, and a viewer can neither acknowledge nor silence.
//!
//! Screenshots of each page are kept in `target/web-screenshots/` (the
//! overview also in `docs/images/` when `ETCDMON_UPDATE_SCREENSHOTS=1`).

use etcdmon_testkit::browser::Browser;
use etcdmon_testkit::{http_get, http_post_json, http_post_json_as, EtcdCluster};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod support;
use support::{poll, Up};

/// The page's localStorage key for an API token.
const TOKEN_KEY: &str = "etcdmon.token";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots")
}

fn json_get(up: &Up, path: &str) -> Value {
    let r = http_get(&up.api(path), Duration::from_secs(5)).expect("GET");
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

/// The value of attribute `name` of the first element matching `css`.
fn attr_of(b: &Browser, css: &str, name: &str) -> Option<String> {
    let e = b.find_all(css).ok()?.into_iter().next()?;
    b.attr(&e, name).ok().flatten()
}

/// Waits (`secs` at most) until the first element matching `css` has
/// attribute `name` equal to `want`.
fn wait_attr(b: &Browser, css: &str, name: &str, want: &str, secs: u64) -> bool {
    poll(Duration::from_secs(secs), || {
        (attr_of(b, css, name).as_deref() == Some(want)).then_some(())
    })
    .is_some()
}

#[test]
fn the_page_follows_the_cluster_live_and_acts_on_alerts_by_role() {
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let up = Up::start(&etcd.member(0).client_url, &["--cluster", "web"], &[]);
    up.wait_healthy(3);
    let browser = Browser::start().expect("chromium and chromedriver (scripts/setup)");
    let page = |fragment: &str| up.api(&format!("/{fragment}"));

    // The overview: one healthy tile, and the stream is live.
    browser.goto(&page("")).expect("open /");
    let tile = r#"[data-testid="cluster-tile"][data-cluster="web"]"#;
    browser
        .wait_for(tile, Duration::from_secs(15))
        .expect("a tile for the cluster");
    assert!(
        wait_attr(&browser, tile, "data-health", "ok", 15),
        "tile never ok: {:?}",
        attr_of(&browser, tile, "data-health")
    );
    let live = poll(Duration::from_secs(10), || {
        let e = browser.find_all(r#"[data-testid="live-indicator"]"#).ok()?;
        let text = browser.text(e.first()?).ok()?;
        (text.trim() == "live").then_some(())
    });
    assert!(live.is_some(), "the live indicator never said live");
    browser
        .screenshot(&shots().join("overview.png"))
        .expect("screenshot");
    if std::env::var_os("ETCDMON_UPDATE_SCREENSHOTS").is_some() {
        browser
            .screenshot(
                &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/images/overview.png"),
            )
            .expect("screenshot for the README");
    }

    // A member dies: the tile turns red without a reload, within 2 s of the
    // API knowing it.
    etcd.kill(2).expect("kill m2");
    let known = poll(Duration::from_secs(10), || {
        let m = up.members()?;
        (m["m2"]["reachable"] == false).then(Instant::now)
    })
    .expect("the API never saw m2 down");
    let red = poll(Duration::from_secs(10), || {
        (attr_of(&browser, tile, "data-health").as_deref() == Some("critical")).then(Instant::now)
    })
    .expect("the tile never turned critical");
    let lag = red.saturating_duration_since(known);
    assert!(
        lag <= Duration::from_secs(2),
        "the tile turned red {lag:?} after the API knew"
    );
    browser
        .screenshot(&shots().join("overview-member-down.png"))
        .expect("screenshot");

    // The cluster page: m2 unreachable, and a chart drew stored points.
    browser
        .goto(&page("#/cluster/web?range=15m"))
        .expect("open the cluster page");
    let m2 = r#"[data-testid="member-row"][data-member="m2"]"#;
    assert!(
        wait_attr(&browser, m2, "data-reachable", "false", 15),
        "m2 not shown unreachable"
    );
    let drawn = poll(Duration::from_secs(20), || {
        let charts = browser.find_all(r#"[data-testid="chart"]"#).ok()?;
        charts.iter().find_map(|c| {
            let n: usize = browser.attr(c, "data-points").ok()??.parse().ok()?;
            (n > 0).then_some(n)
        })
    });
    assert!(drawn.is_some(), "no chart drew a point");
    browser
        .screenshot(&shots().join("cluster.png"))
        .expect("screenshot");

    // The alerts page: acknowledge m2's alert from the page.
    browser
        .goto(&page("#/alerts"))
        .expect("open the alerts page");
    let row = r#"[data-testid="alert-row"][data-rule="member_unreachable"]"#;
    browser
        .wait_for(row, Duration::from_secs(20))
        .expect("m2's alert on the page");
    let ack = browser
        .wait_for(
            &format!("{row} [data-testid=\"ack-button\"]"),
            Duration::from_secs(5),
        )
        .expect("an ack button for an admin");
    browser.click(&ack).expect("click ack");
    let acked = poll(Duration::from_secs(10), || {
        let alerts = json_get(&up, "/api/v1/alerts");
        alerts["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["rule"] == "member_unreachable")
            .filter(|a| a["acknowledged"]["by"].is_string())
            .cloned()
    });
    assert!(
        acked.is_some(),
        "not acknowledged in the API: {}",
        json_get(&up, "/api/v1/alerts")
    );
    assert!(
        wait_attr(&browser, row, "data-state", "acknowledged", 10),
        "the page does not show it acknowledged"
    );
    browser
        .screenshot(&shots().join("alerts.png"))
        .expect("screenshot");

    // A viewer's token: the page offers neither ack nor silence, and the API
    // refuses a silence made with it.
    let made = http_post_json(
        &up.api("/api/v1/tokens"),
        &json!({"name": "web-viewer", "role": "viewer"}).to_string(),
        Duration::from_secs(5),
    )
    .expect("make a token");
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = serde_json::from_str::<Value>(&made.body).expect("json")["token_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    // Where the page keeps a token its login box took (collector/web/src/api.ts).
    browser
        .eval(
            "localStorage.setItem(arguments[0], arguments[1]); location.reload(); return true;",
            json!([TOKEN_KEY, secret]),
        )
        .expect("store the token and reload");
    let role = poll(Duration::from_secs(10), || {
        let e = browser.find_all(r#"[data-testid="whoami"]"#).ok()?;
        let text = browser.text(e.first()?).ok()?;
        text.contains("viewer").then_some(())
    });
    assert!(role.is_some(), "the page does not show the viewer role");
    browser
        .wait_for(row, Duration::from_secs(10))
        .expect("the alert, as a viewer");
    for control in ["ack-button", "silence-button"] {
        let found = browser
            .find_all(&format!("[data-testid=\"{control}\"]"))
            .expect("find");
        assert!(found.is_empty(), "a viewer is offered {control}");
    }
    let refused = http_post_json_as(
        &up.api("/api/v1/silences"),
        &json!({"matchers": [{"name": "cluster", "value": "web"}], "duration": "1h", "comment": "no"})
            .to_string(),
        &secret,
        Duration::from_secs(5),
    )
    .expect("POST as a viewer");
    assert_eq!(refused.status, 403, "{}", refused.body);

    up.stop();
}
