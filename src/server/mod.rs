//! The HTTP side: `/metrics` (the already encoded exposition, gzip when asked), the landing page,
//! `/-/healthy`, `/-/ready`, and the webhook receivers of [`ingest`]. Handlers only read what the
//! sync loop published; none waits on MLflow.

pub mod body;
pub mod ingest;
pub mod web;
pub mod web_config;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::exposition::Publisher;
use crate::telemetry::{REVISION, VERSION};

/// Content type of the text exposition format 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<Publisher>,
    pub ready: Arc<AtomicBool>,
    pub telemetry_path: String,
    /// The webhook receivers; none when the exporter runs without a recorder (benchmarks).
    pub ingest: Option<Arc<ingest::Ingest>>,
}

pub fn router(state: AppState) -> Router {
    let ingest = state.ingest.clone();
    let router = Router::new()
        .route(&state.telemetry_path.clone(), get(metrics))
        .route("/", get(landing))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .with_state(state);
    match ingest {
        Some(i) => router.merge(ingest::router(i)),
        None => router,
    }
}

/// Serves every route, secured as `web` says, until `shutdown` resolves; then finishes the requests
/// in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    web: Arc<web::Web>,
    limits: web::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = web::secure(router(state), web.clone(), &limits);
    web::serve(listener, router, web, limits, shutdown).await
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let encoded = state.publisher.current();
    let gzip = accepts_gzip(&headers);
    let parts = body::Parts(encoded.parts(gzip).into());
    let mut resp = axum::body::Body::new(parts).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// True when `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let zero_q = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_q
        })
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "Ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready: waiting for the first successful sync with MLflow\n",
        )
    }
}

async fn landing(State(state): State<AppState>) -> Html<String> {
    let path = html_escape(&state.telemetry_path);
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MLflow Exporter</title></head>
<body>
<h1>MLflow Exporter</h1>
<p>Adoption, delivery, cost and reliability metrics of an MLflow platform, for Prometheus.</p>
<p>Version {VERSION} (revision {REVISION})</p>
<ul>
<li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li>
</ul>
</body></html>
"#
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        accepts_gzip(&h)
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accept("gzip"));
        assert!(accept("deflate, gzip;q=0.5"));
        assert!(accept("*"));
        assert!(!accept("gzip;q=0"));
        assert!(!accept("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
