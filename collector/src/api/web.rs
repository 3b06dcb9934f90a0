//! The web page (`collector/web`, docs/web.md), embedded at build time by
//! `build.rs`: `GET /` is its `index.html` and `GET /assets/{file}` its
//! scripts and styles. They hold no data (the page reads the API with the
//! viewer's credentials), so they are served to anyone: a browser without a
//! token must get the page to be asked for one.
//!
//! Files are served gzipped when the browser accepts it. Built assets carry a
//! content hash in their names and are cached for good; `index.html` is
//! revalidated, so a new collector's page is picked up at once.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

// `WEB_ASSETS`: (path, content type, bytes, gzipped bytes), written by build.rs.
include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Scripts and styles only from here; no inline scripts, no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Whether the page was built into this binary.
pub fn embedded() -> bool {
    !WEB_ASSETS.is_empty()
}

/// `/` and `/assets/{file}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    if !embedded() {
        // Built without the page (no `web/dist`): the server-rendered status.
        return Redirect::to("/status").into_response();
    }
    serve("/index.html", &headers, "no-cache")
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(
        &format!("/assets/{file}"),
        &headers,
        "public, max-age=31536000, immutable",
    )
}

fn serve(path: &str, headers: &HeaderMap, cache: &'static str) -> Response {
    let Some((_, content_type, raw, gzipped)) = WEB_ASSETS.iter().find(|(p, ..)| *p == path) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no file {path}") })),
        )
            .into_response();
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = if gzip {
        let mut r = gzipped.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        raw.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}
