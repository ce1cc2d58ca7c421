//! Webhook endpoints for delivery events pushed to the exporter: MLflow's webhook (signed),
//! Alertmanager's webhook and CI/CD events. Each checks its bearer token (constant time), refuses
//! bodies over the limit and bad JSON with a 4xx and a JSON error saying what was wrong (nothing
//! recorded), and answers 2xx only after the events are committed; a store failure answers 503 so
//! the sender retries.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::config::{Receiver, WebhookSettings};
use crate::delivery::recorder::Recorder;
use crate::delivery::{Event, Kind, Source, Subject, VersionTimes};
use crate::source::events_api::{ApiEvent, ApiKind};
use crate::source::mlflow::MlflowClient;
use crate::source::{alertmanager, mlflow_webhook};
use crate::sync::shape::Shape;
use crate::telemetry::Telemetry;

/// Times of every version in the last snapshot, for the lead time of pushed deployments.
pub type VersionIndex = Arc<ArcSwap<HashMap<(Subject, String, u32), VersionTimes>>>;

pub struct Ingest {
    pub recorder: Arc<Recorder>,
    pub settings: WebhookSettings,
    pub versions: VersionIndex,
    /// For the events counter (refusals and duplicates).
    pub telemetry: Arc<Telemetry>,
    /// Whether MLflow has workspaces, to name pushed models as the snapshot names them.
    pub shape: Arc<Shape>,
    /// Aliases whose moves are deployments.
    pub serving_aliases: Vec<String>,
    /// MLflow delivery ids taken recently (with when), to refuse replays within the freshness window.
    pub deliveries: std::sync::Mutex<HashMap<String, i64>>,
    /// Requests per second per (receiver, client address).
    pub limiter: Limiter,
    /// MLflow, to read a version deployed before a sync has seen it (so its lead time is known);
    /// and the tag that names a model's team.
    pub mlflow: Option<Arc<MlflowClient>>,
    pub team_tag: String,
}

pub type Limiter = governor::DefaultKeyedRateLimiter<(Source, IpAddr)>;

/// The rate limit of `webhooks.rate_limit` and `webhooks.rate_burst`.
pub fn limiter(s: &WebhookSettings) -> Limiter {
    let per_second = NonZeroU32::new(s.rate_limit).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(s.rate_burst).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst))
}

/// Clients remembered at most; past this, those whose bucket is full again are forgotten.
const LIMITER_KEYS: usize = 10_000;

/// Refuses a client over its rate with 429 and `Retry-After`, before its token or body is read.
/// Counted as rejected, and logged at debug only: a flood must not flood the log too.
async fn rate_limit(State(ingest): State<Arc<Ingest>>, req: Request, next: Next) -> Response {
    let source = match req.uri().path() {
        "/api/v1/webhooks/mlflow" => Source::MlflowWebhook,
        "/api/v1/webhooks/alertmanager" => Source::Alertmanager,
        _ => Source::Api,
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    if let Err(not_until) = ingest.limiter.check_key(&(source, ip)) {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ingest.telemetry.event_rejected(source);
        tracing::debug!(source = source.as_str(), %ip, "webhook request over the rate limit");
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": format!(
                "more than {} requests a second from {ip}; retry after {secs} s (webhooks.rate_limit)",
                ingest.settings.rate_limit
            ) })),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
    if ingest.limiter.len() > LIMITER_KEYS {
        ingest.limiter.retain_recent();
    }
    next.run(req).await
}

pub fn router(ingest: Arc<Ingest>) -> Router {
    let limit = ingest.settings.max_body_bytes;
    Router::new()
        .route("/api/v1/webhooks/mlflow", post(mlflow_webhook))
        .route("/api/v1/webhooks/alertmanager", post(alertmanager_webhook))
        .route("/api/v1/events", post(api_event))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            ingest.clone(),
            rate_limit,
        ))
        .with_state(ingest)
}

/// A refused request: counted, and answered with a JSON error.
fn refuse(ingest: &Ingest, source: Source, status: StatusCode, message: String) -> Response {
    ingest.telemetry.event_rejected(source);
    tracing::warn!(source = source.as_str(), status = status.as_u16(), error = %message, "webhook request refused");
    let mut resp = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
    }
    resp
}

/// Checks that the receiver is on and the request carries its token; then the body.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
fn admit(
    ingest: &Ingest,
    receiver: &Receiver,
    source: Source,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Response> {
    if !receiver.enabled {
        return Err(refuse(
            ingest,
            source,
            StatusCode::NOT_FOUND,
            format!("the {name} receiver is off; set webhooks.{name}.enabled: true"),
        ));
    }
    if let Some(token) = &receiver.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            return Err(refuse(
                ingest,
                source,
                StatusCode::UNAUTHORIZED,
                format!("missing or wrong bearer token (webhooks.{name}.token)"),
            ));
        }
    }
    body.map_err(|e| refuse(ingest, source, e.status(), e.body_text()))
}

/// Compares secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Version and run times of a version, from the last sync; one created since is read from MLflow
/// (within [`FETCH_TIMEOUT`]; if MLflow cannot say, the deployment is recorded without them).
/// `key` is the history's name of the model ([`crate::delivery::model_key`]), `name` MLflow's
/// in `workspace`.
async fn times_of(
    ingest: &Ingest,
    subject: Subject,
    key: &str,
    workspace: Option<&str>,
    name: &str,
    version: u32,
) -> VersionTimes {
    if let Some(t) = ingest
        .versions
        .load()
        .get(&(subject, key.to_string(), version))
    {
        return t.clone();
    }
    let Some(client) = &ingest.mlflow else {
        return VersionTimes::default();
    };
    let in_workspace;
    let client = match ingest.shape.workspaces() {
        true => {
            in_workspace = client.in_workspace(workspace.unwrap_or("default"));
            &in_workspace
        }
        false => &**client,
    };
    match tokio::time::timeout(
        FETCH_TIMEOUT,
        fetch_times(client, &ingest.team_tag, name, version),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(model = key, version, reason = e.reason(), error = %e, "cannot read a deployed version from MLflow; its lead time is not observed");
            VersionTimes::default()
        }
        Err(_) => {
            tracing::warn!(model = key, version, "MLflow did not say in time what a deployed version is; its lead time is not observed");
            VersionTimes::default()
        }
    }
}

/// How long a webhook waits for MLflow to describe a version the last sync has not seen.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn fetch_times(
    client: &MlflowClient,
    team_tag: &str,
    model: &str,
    version: u32,
) -> Result<VersionTimes, crate::error::MlflowError> {
    let (v, m) = tokio::try_join!(
        client.model_version(model, version),
        client.registered_model(model)
    )?;
    let run = match v.run_id.as_str() {
        "" => None,
        id => Some(client.run_times(id).await?),
    };
    Ok(VersionTimes {
        run_start_ms: run.as_ref().and_then(|r| r.start_time),
        run_end_ms: run.as_ref().and_then(|r| r.end_time),
        created_ms: v.creation_timestamp,
        team: m
            .tags
            .iter()
            .find(|t| t.key == team_tag)
            .map(|t| t.value.clone()),
    })
}

/// Records one registry change; when the history says it already happened (`make` gives none),
/// answers and counts a duplicate, whichever source reported it.
async fn commit_change(
    ingest: &Ingest,
    source: Source,
    now_ms: i64,
    make: impl FnOnce(&crate::delivery::Delivery) -> Option<Event>,
) -> Response {
    let mut unchanged = false;
    let resp = commit(
        ingest,
        source,
        now_ms,
        |d| {
            let e = make(d);
            unchanged = e.is_none();
            e.into_iter().collect()
        },
        json!({}),
    )
    .await;
    if unchanged && resp.status() == StatusCode::OK {
        ingest.telemetry.event_duplicate(source);
        return (
            StatusCode::OK,
            Json(json!({ "recorded": 0, "duplicates": 1 })),
        )
            .into_response();
    }
    resp
}

async fn commit(
    ingest: &Ingest,
    source: Source,
    now_ms: i64,
    make: impl FnOnce(&crate::delivery::Delivery) -> Vec<Event>,
    extra: serde_json::Value,
) -> Response {
    match ingest.recorder.record(source, now_ms, make).await {
        Ok(o) => {
            let mut body = json!({ "recorded": o.recorded, "duplicates": o.duplicates });
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("cannot store the events, nothing was recorded; retry later ({e})") })),
        )
            .into_response(),
    }
}

async fn mlflow_webhook(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = Source::MlflowWebhook;
    let r = &ingest.settings.mlflow;
    let receiver = Receiver {
        enabled: r.enabled,
        token: r.token.clone(),
    };
    let body = match admit(&ingest, &receiver, source, "mlflow", &headers, body) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let delivery = mlflow_webhook::Delivery {
        id: header("x-mlflow-delivery-id"),
        timestamp: header("x-mlflow-timestamp"),
        signature: header("x-mlflow-signature"),
    };
    let now = chrono::Utc::now().timestamp_millis();
    let secret = r
        .secret
        .as_ref()
        .map(|s| s.expose().as_bytes())
        .unwrap_or_default();
    let sent_ms = match mlflow_webhook::verify(secret, &delivery, &body, now) {
        Ok(t) => t,
        Err(e) => return refuse(&ingest, source, StatusCode::UNAUTHORIZED, e),
    };
    let window_ms = 2 * mlflow_webhook::MAX_AGE_S * 1000;
    {
        let mut seen = ingest.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| now - *t <= window_ms);
        if seen.contains_key(delivery.id) {
            drop(seen);
            return refuse(
                &ingest,
                source,
                StatusCode::CONFLICT,
                format!(
                    "delivery {} was already received; refused as a replay",
                    delivery.id
                ),
            );
        }
    }
    let payload: mlflow_webhook::Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                &ingest,
                source,
                StatusCode::BAD_REQUEST,
                format!("not an MLflow webhook payload: {e}"),
            )
        }
    };
    let at = alertmanager::parse_time(&payload.timestamp).unwrap_or(sent_ms);
    // A prompt's alias moves are deployments of the prompt, in the prompts' history.
    let subject = match payload.entity.as_str() {
        "prompt_alias" => Subject::Prompt,
        _ => Subject::Model,
    };
    let alias = match (payload.entity.as_str(), payload.action.as_str()) {
        ("model_version_alias" | "prompt_alias", "created" | "deleted") => {
            match serde_json::from_value::<mlflow_webhook::AliasData>(payload.data.clone()) {
                Ok(a) => Some(a),
                Err(e) => {
                    return refuse(
                        &ingest,
                        source,
                        StatusCode::BAD_REQUEST,
                        format!("alias event data: {e}"),
                    )
                }
            }
        }
        _ => None,
    };
    let Some(a) = alias.filter(|a| ingest.serving_aliases.contains(&a.alias)) else {
        // Other events (version created, tags, non-serving aliases) say nothing about deployments.
        remember(&ingest, delivery.id, now);
        return (
            StatusCode::OK,
            Json(json!({ "recorded": 0, "duplicates": 0, "ignored": 1 })),
        )
            .into_response();
    };
    let workspace = payload.workspace.as_deref().or(a.workspace.as_deref());
    let workspaces = ingest.shape.workspaces();
    let model = crate::delivery::model_key(workspaces, workspace, &a.name);
    let resp = if payload.action == "created" {
        let Some(version) = a.version.as_deref().and_then(|v| v.parse::<u32>().ok()) else {
            return refuse(
                &ingest,
                source,
                StatusCode::BAD_REQUEST,
                "alias event without a numeric version".into(),
            );
        };
        let times = times_of(&ingest, subject, &model, workspace, &a.name, version).await;
        commit_change(&ingest, source, now, |d| {
            history(d, subject).change(
                Kind::Deployment,
                source,
                &model,
                &a.alias,
                version,
                at,
                times,
            )
        })
        .await
    } else {
        commit_change(&ingest, source, now, |d| {
            history(d, subject).deletion(source, &model, &a.alias, at)
        })
        .await
    };
    if resp.status() == StatusCode::OK {
        remember(&ingest, delivery.id, now);
    }
    resp
}

/// The history a subject's changes are recorded in: the models', or the prompts'.
fn history(d: &crate::delivery::Delivery, subject: Subject) -> &crate::delivery::Delivery {
    match subject {
        Subject::Model => d,
        Subject::Prompt => d.prompts(),
    }
}

/// Marks a delivery as taken; a failed one is not, so MLflow's retry of it is accepted.
fn remember(ingest: &Ingest, id: &str, now_ms: i64) {
    ingest
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), now_ms);
}

async fn alertmanager_webhook(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = Source::Alertmanager;
    let body = match admit(
        &ingest,
        &ingest.settings.alertmanager,
        source,
        "alertmanager",
        &headers,
        body,
    ) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let payload: alertmanager::Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                &ingest,
                source,
                StatusCode::BAD_REQUEST,
                format!("not an Alertmanager webhook payload: {e}"),
            )
        }
    };
    let s = &ingest.settings;
    let workspaces = ingest.shape.workspaces();
    let (events, ignored) =
        match alertmanager::events(&payload, &s.model_label, &s.severity_label, workspaces) {
            Ok(x) => x,
            Err(e) => return refuse(&ingest, source, StatusCode::BAD_REQUEST, e),
        };
    let now = chrono::Utc::now().timestamp_millis();
    commit(
        &ingest,
        source,
        now,
        |_| events,
        json!({ "ignored": ignored }),
    )
    .await
}

async fn api_event(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = Source::Api;
    let body = match admit(
        &ingest,
        &ingest.settings.events,
        source,
        "events",
        &headers,
        body,
    ) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let event: ApiEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return refuse(
                &ingest,
                source,
                StatusCode::BAD_REQUEST,
                format!("not an event: {e}"),
            )
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let at = match event.check(now) {
        Ok(at) => at,
        Err(e) => return refuse(&ingest, source, StatusCode::BAD_REQUEST, e),
    };
    let severity = event.severity.clone().unwrap_or_default();
    let workspace = event.workspace.as_deref();
    let model = crate::delivery::model_key(ingest.shape.workspaces(), workspace, &event.model);
    match event.kind {
        ApiKind::Deployment => {
            let (alias, version) = (
                event.alias.clone().unwrap_or_default(),
                event.version.unwrap_or(0),
            );
            let times = times_of(
                &ingest,
                Subject::Model,
                &model,
                workspace,
                &event.model,
                version,
            )
            .await;
            commit_change(&ingest, source, now, |d| {
                d.change(Kind::Deployment, source, &model, &alias, version, at, times)
            })
            .await
        }
        kind => {
            let kind = if kind == ApiKind::IncidentOpened {
                Kind::IncidentOpened
            } else {
                Kind::IncidentResolved
            };
            let e = Event::incident(kind, source, &event.id, &model, &severity, at);
            commit(&ingest, source, now, |_| vec![e], json!({})).await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(super::constant_time_eq(b"token", b"token"));
        assert!(!super::constant_time_eq(b"token", b"tokem"));
        assert!(!super::constant_time_eq(b"token", b"token2"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
