//! `GET /status`: a small server-rendered HTML page (no script) with the
//! clusters seen right now, links to the API endpoints, `/metrics` and
//! `/healthz`, and the operator docs, which are compiled in and served at
//! `/docs/{name}` so the links work without the source tree. The web page
//! itself is at `/` ([`super::web`]).

use crate::state::LiveState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;

/// The operator docs served at `/docs/{name}`: (file name, title, text).
const DOCS: &[(&str, &str, &str)] = &[
    ("api.md", "REST API", include_str!("../../../docs/api.md")),
    (
        "alerts.md",
        "Alert rules and runbooks",
        include_str!("../../../docs/alerts.md"),
    ),
    (
        "notifications.md",
        "Notifications (the alerter)",
        include_str!("../../../docs/notifications.md"),
    ),
    (
        "collector.md",
        "Collector options and metrics",
        include_str!("../../../docs/collector.md"),
    ),
    (
        "agent.md",
        "Agent: what it collects, options",
        include_str!("../../../docs/agent.md"),
    ),
    (
        "storage.md",
        "Storage: schemas and retention",
        include_str!("../../../docs/storage.md"),
    ),
    (
        "install.md",
        "Install",
        include_str!("../../../docs/install.md"),
    ),
    (
        "troubleshooting.md",
        "Troubleshooting",
        include_str!("../../../docs/troubleshooting.md"),
    ),
    (
        "architecture.md",
        "Architecture",
        include_str!("../../../docs/architecture.md"),
    ),
    (
        "security.md",
        "Security: threat model and guarantees",
        include_str!("../../../docs/security.md"),
    ),
    (
        "web.md",
        "The web page",
        include_str!("../../../docs/web.md"),
    ),
    (
        "grafana.md",
        "Grafana dashboards",
        include_str!("../../../docs/grafana.md"),
    ),
    (
        "deploy.md",
        "Deploying: Kubernetes, VMs, compose",
        include_str!("../../../docs/deploy.md"),
    ),
    (
        "openapi.json",
        "OpenAPI 3 description of the API",
        include_str!("../../../docs/openapi.json"),
    ),
];

/// The endpoints listed on the page: (method, path, link target if a GET without
/// parameters, what it answers).
const ENDPOINTS: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "GET",
        "/api/v1/clusters",
        Some("/api/v1/clusters"),
        "live state of every cluster and member",
    ),
    (
        "GET",
        "/api/v1/clusters/{cluster}/metrics/history?metric=NAME&from=now-15m",
        None,
        "stored history of one metric",
    ),
    (
        "GET",
        "/api/v1/alerts",
        Some("/api/v1/alerts"),
        "alerts firing now",
    ),
    (
        "GET",
        "/api/v1/alerts/history",
        Some("/api/v1/alerts/history"),
        "alert transitions and deliveries",
    ),
    (
        "POST",
        "/api/v1/alerts/{fingerprint}/ack",
        None,
        "acknowledge an alert",
    ),
    (
        "GET",
        "/api/v1/silences",
        Some("/api/v1/silences"),
        "silences (POST to create one)",
    ),
    (
        "GET",
        "/metrics",
        Some("/metrics"),
        "the collector's own metrics (Prometheus text)",
    ),
    ("GET", "/healthz", Some("/healthz"), "health (200 or 503)"),
];

/// `/` and `/docs/{name}`.
pub fn router(state: LiveState) -> Router {
    Router::new()
        .route("/status", get(home))
        .route("/docs/{name}", get(doc))
        .with_state(state)
}

async fn home(State(state): State<LiveState>) -> Html<String> {
    Html(render(&state))
}

async fn doc(Path(name): Path<String>) -> Response {
    match DOCS.iter().find(|(file, _, _)| *file == name) {
        Some((file, _, text)) => (
            [(
                header::CONTENT_TYPE,
                if file.ends_with(".json") {
                    "application/json"
                } else {
                    "text/markdown; charset=utf-8"
                },
            )],
            *text,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no document {name:?}") })),
        )
            .into_response(),
    }
}

fn render(state: &LiveState) -> String {
    let mut s = String::with_capacity(8 * 1024);
    s.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>etcd-monitor</title><style>",
        "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}",
        "table{border-collapse:collapse}td,th{padding:.2rem .8rem .2rem 0;text-align:left;vertical-align:top}",
        "code{font-size:90%}.bad{color:#b00020}.ok{color:#1b5e20}",
        "@media (prefers-color-scheme:dark){body{background:#121212;color:#ddd}a{color:#8ab4f8}",
        ".bad{color:#ff8a80}.ok{color:#a5d6a7}}",
        "</style></head><body>\n<h1>etcd-monitor</h1>\n",
        "<p>The web page is not built yet; this page lists what the collector serves.</p>\n",
    ));

    s.push_str("<h2>Clusters</h2>\n");
    let clusters = state.snapshot();
    if clusters.is_empty() {
        s.push_str("<p>No agent has reported yet.</p>\n");
    } else {
        s.push_str("<table><tr><th>cluster</th><th>members</th><th>leader</th></tr>\n");
        for c in &clusters {
            let healthy = c.members.values().filter(|m| m.healthy).count();
            let class = if healthy == c.members.len() {
                "ok"
            } else {
                "bad"
            };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"{class}\">{healthy} of {} healthy</td><td>{}</td></tr>",
                escape(&c.name),
                c.members.len(),
                if c.leader_id.is_empty() {
                    "none".to_owned()
                } else {
                    escape(&c.leader_id)
                },
            );
        }
        s.push_str("</table>\n");
    }

    s.push_str("<h2>API</h2>\n<table>\n");
    for (method, path, link, what) in ENDPOINTS {
        let path = match link {
            Some(href) => format!("<a href=\"{href}\"><code>{}</code></a>", escape(path)),
            None => format!("<code>{}</code>", escape(path)),
        };
        let _ = writeln!(
            s,
            "<tr><td>{method}</td><td>{path}</td><td>{what}</td></tr>"
        );
    }
    s.push_str("</table>\n<h2>Documentation</h2>\n<ul>\n");
    for (file, title, _) in DOCS {
        let _ = writeln!(s, "<li><a href=\"/docs/{file}\">{title}</a></li>");
    }
    s.push_str("</ul>\n</body></html>\n");
    s
}

/// HTML-escapes text from agents (cluster names come from the network).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_every_endpoint_and_document_and_escapes_names() {
        let state = LiveState::default();
        let html = render(&state);
        assert!(html.contains("<title>etcd-monitor</title>"));
        assert!(html.contains("No agent has reported yet"));
        for (_, path, link, _) in ENDPOINTS {
            assert!(html.contains(&escape(path)), "{path} missing");
            if let Some(href) = link {
                assert!(html.contains(&format!("href=\"{href}\"")), "{href}");
            }
        }
        for (file, _, text) in DOCS {
            assert!(html.contains(&format!("/docs/{file}")), "{file}");
            if file.ends_with(".json") {
                assert!(
                    serde_json::from_str::<serde_json::Value>(text).is_ok(),
                    "{file} is not JSON"
                );
            } else {
                assert!(text.starts_with('#'), "{file} is not a markdown doc");
            }
        }
        assert_eq!(
            escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
