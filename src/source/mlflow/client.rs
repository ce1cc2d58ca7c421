//! HTTP client for MLflow's search endpoints: paging with stable order, per-request timeout, retries with
//! exponential backoff and jitter on connection errors, 429 and 5xx (never on other 4xx), Basic or Bearer
//! auth, TLS with a custom CA and client certificate, and the latency of every call recorded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use prometheus::HistogramVec;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::model::*;
use crate::config::{MlflowSettings, Secret};
use crate::error::MlflowError;
use crate::source::http::{self, error_chain, is_tls_error};

/// Longest `Retry-After` honoured; beyond it the normal backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// MLflow's page-size limits per endpoint.
const EXPERIMENTS_PAGE: u32 = 50_000;
const MODELS_PAGE: u32 = 1_000;
/// Runs searches take this many experiment ids at once (MLflow sets no limit; this keeps bodies small).
const EXPERIMENT_BATCH: usize = 5_000;

pub struct MlflowClient {
    http: reqwest::Client,
    api: String,
    auth: Option<Auth>,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    page_size: u32,
    latency: Option<HistogramVec>,
}

/// A filter for a runs search, with the order that keeps MLflow's offset-based page tokens stable.
#[derive(Debug, Clone, Copy)]
pub enum RunsQuery<'a> {
    All,
    Filter(&'a str),
}

impl MlflowClient {
    /// Builds the client; `latency` receives one observation per HTTP request, labelled by endpoint.
    pub fn new(s: &MlflowSettings, latency: Option<HistogramVec>) -> Result<Self, MlflowError> {
        let b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("mlflow-exporter/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(s.insecure_tls);
        let files = [s.server_cert_path.as_deref(), s.client_cert_path.as_deref()];
        let http = http::with_tls_files(b, files[0], files[1])
            .and_then(|b| http::build(b, &files))
            .map_err(MlflowError::Setup)?;
        // As in MLflow's client: Basic wins when both a user and a token are set.
        let auth = match (&s.username, &s.password, &s.token) {
            (Some(user), pw, _) => Some(Auth::Basic(user.clone(), pw.clone().unwrap_or_default())),
            (None, _, Some(token)) => Some(Auth::Bearer(token.clone())),
            _ => None,
        };
        Ok(MlflowClient {
            http,
            api: format!("{}/api/2.0/mlflow/", s.tracking_uri.trim_end_matches('/')),
            auth,
            timeout: s.timeout,
            max_retries: s.max_retries,
            backoff: s.retry_backoff,
            page_size: s.page_size,
            latency,
        })
    }

    /// Every experiment, active and deleted.
    pub async fn experiments(&self) -> Result<(Vec<Experiment>, usize), MlflowError> {
        let mut all = Vec::new();
        let requests = self
            .pages::<SearchExperimentsResponse, _>(
                "experiments/search",
                |token| {
                    Request::Post(json!({
                        "view_type": "ALL",
                        "max_results": EXPERIMENTS_PAGE,
                        "order_by": ["experiment_id ASC"],
                        "page_token": token,
                    }))
                },
                |page| all.extend(page),
            )
            .await?;
        Ok((all, requests))
    }

    /// Runs of the given experiments, active and deleted, handed to `sink` page by page so that a large
    /// install is never held in memory as JSON. Returns the number of requests made.
    pub async fn runs(
        &self,
        experiment_ids: &[String],
        query: RunsQuery<'_>,
        mut sink: impl FnMut(Vec<Run>),
    ) -> Result<usize, MlflowError> {
        let filter = match query {
            RunsQuery::All => "",
            RunsQuery::Filter(f) => f,
        };
        let mut requests = 0;
        for batch in experiment_ids.chunks(EXPERIMENT_BATCH) {
            requests += self
                .pages::<SearchRunsResponse, _>(
                    "runs/search",
                    |token| {
                        Request::Post(json!({
                            "experiment_ids": batch,
                            "filter": filter,
                            "run_view_type": "ALL",
                            "max_results": self.page_size,
                            "order_by": ["attributes.start_time ASC", "attributes.run_id ASC"],
                            "page_token": token,
                        }))
                    },
                    &mut sink,
                )
                .await?;
        }
        Ok(requests)
    }

    /// Every registered model with its aliases.
    pub async fn registered_models(&self) -> Result<(Vec<RegisteredModel>, usize), MlflowError> {
        let mut all = Vec::new();
        let requests = self
            .pages::<SearchRegisteredModelsResponse, _>(
                "registered-models/search",
                |token| {
                    let mut q = vec![
                        ("max_results", MODELS_PAGE.to_string()),
                        ("order_by", "name ASC".to_string()),
                    ];
                    q.extend(token.map(|t| ("page_token", t.to_string())));
                    Request::Get(q)
                },
                |page| all.extend(page),
            )
            .await?;
        Ok((all, requests))
    }

    /// Model versions, most recently updated first. With `since`, stops after the first page that reaches
    /// versions last updated before it (MLflow cannot filter versions by time, but it can order by it).
    pub async fn model_versions(
        &self,
        since: Option<i64>,
    ) -> Result<(Vec<ModelVersion>, usize), MlflowError> {
        let mut all = Vec::new();
        let mut requests = 0;
        let mut done = false;
        let api = "model-versions/search";
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![
                ("max_results", self.page_size.to_string()),
                ("order_by", "last_updated_timestamp DESC".to_string()),
                ("order_by", "name ASC".to_string()),
                ("order_by", "version_number ASC".to_string()),
            ];
            q.extend(token.as_ref().map(|t| ("page_token", t.clone())));
            let page: SearchModelVersionsResponse = self.call(api, &Request::Get(q)).await?;
            requests += 1;
            let (items, next) = page.into_parts();
            for v in items {
                match (since, v.last_updated_timestamp) {
                    (Some(s), Some(t)) if t < s => done = true,
                    _ => all.push(v),
                }
            }
            match next {
                Some(t) if !done => {
                    if !seen.insert(t.clone()) {
                        return Err(MlflowError::PageLoop {
                            endpoint: api,
                            token: t,
                        });
                    }
                    token = Some(t);
                }
                _ => return Ok((all, requests)),
            }
        }
    }

    /// Registers a webhook that sends alias moves to `url`, signed with `secret`; returns MLflow's
    /// answer (the webhook with its id).
    pub async fn create_webhook(
        &self,
        name: &str,
        url: &str,
        secret: &str,
    ) -> Result<serde_json::Value, MlflowError> {
        let body = json!({
            "name": name,
            "url": url,
            "secret": secret,
            "status": "ACTIVE",
            "description": "Deployments for mlflow-exporter's delivery metrics",
            "events": [
                {"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"},
                {"entity": "MODEL_VERSION_ALIAS", "action": "DELETED"},
            ],
        });
        self.call("webhooks", &Request::Post(body)).await
    }

    /// Walks the pages of one search, refusing a page token MLflow has already handed out.
    async fn pages<P, F>(
        &self,
        endpoint: &'static str,
        request: impl Fn(Option<&str>) -> Request,
        mut sink: F,
    ) -> Result<usize, MlflowError>
    where
        P: Page + DeserializeOwned,
        F: FnMut(Vec<P::Item>),
    {
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        let mut requests = 0;
        loop {
            let page: P = self.call(endpoint, &request(token.as_deref())).await?;
            requests += 1;
            let (items, next) = page.into_parts();
            sink(items);
            match next {
                None => return Ok(requests),
                Some(t) => {
                    if !seen.insert(t.clone()) {
                        return Err(MlflowError::PageLoop { endpoint, token: t });
                    }
                    token = Some(t);
                }
            }
        }
    }

    /// One API call with retries.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        req: &Request,
    ) -> Result<T, MlflowError> {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = self.once(endpoint, req).await;
            if let Some(h) = &self.latency {
                h.with_label_values(&[endpoint])
                    .observe(started.elapsed().as_secs_f64());
            }
            let (err, retry_after) = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = match &err {
                MlflowError::Connect { .. } => true,
                MlflowError::Status { status, .. } => *status == 429 || *status >= 500,
                _ => false,
            };
            if !retryable || attempt >= self.max_retries {
                if let MlflowError::Status {
                    status, error_code, ..
                } = &err
                {
                    tracing::warn!(endpoint, status, error_code = %error_code, attempts = attempt + 1, "MLflow request failed");
                } else {
                    tracing::warn!(endpoint, reason = err.reason(), attempts = attempt + 1, error = %err, "MLflow request failed");
                }
                return Err(err);
            }
            let delay = retry_after.unwrap_or_else(|| backoff(self.backoff, attempt));
            tracing::debug!(
                endpoint,
                attempt,
                delay_ms = delay.as_millis() as u64,
                reason = err.reason(),
                "retrying MLflow request"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One HTTP request; on failure also returns a `Retry-After` the server asked for.
    async fn once<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        req: &Request,
    ) -> Result<T, (MlflowError, Option<Duration>)> {
        let url = format!("{}{}", self.api, endpoint);
        let mut builder = match req {
            Request::Get(q) => self.http.request(Method::GET, &url).query(q),
            Request::Post(body) => self.http.request(Method::POST, &url).json(body),
        };
        builder = match &self.auth {
            Some(Auth::Basic(user, pw)) => builder.basic_auth(user, Some(pw.expose())),
            Some(Auth::Bearer(token)) => builder.bearer_auth(token.expose()),
            None => builder,
        };
        let resp = builder
            .send()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .filter(|d| *d <= MAX_RETRY_AFTER);
        let body = resp
            .bytes()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?;
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                error_code: String::new(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
            return Err((
                MlflowError::Status {
                    endpoint,
                    status: status.as_u16(),
                    error_code: err.error_code,
                    message: err.message,
                    hint: status_hint(status),
                },
                retry_after,
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            (
                MlflowError::Decode {
                    endpoint,
                    detail: e.to_string(),
                },
                None,
            )
        })
    }

    fn transport_error(&self, endpoint: &'static str, e: reqwest::Error) -> MlflowError {
        if e.is_timeout() {
            MlflowError::Timeout {
                endpoint,
                timeout: self.timeout,
            }
        } else if is_tls_error(&e) {
            MlflowError::Tls {
                endpoint,
                detail: error_chain(&e),
            }
        } else if e.is_decode() || e.is_body() {
            MlflowError::Decode {
                endpoint,
                detail: error_chain(&e),
            }
        } else {
            MlflowError::Connect {
                endpoint,
                detail: error_chain(&e),
            }
        }
    }
}

/// Credentials, sent on every request; reqwest marks the header sensitive so it is never logged.
enum Auth {
    Basic(String, Secret),
    Bearer(Secret),
}

enum Request {
    Get(Vec<(&'static str, String)>),
    Post(serde_json::Value),
}

/// `base × 2^attempt`, with jitter over its upper half so that many exporters don't retry in step.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(1u32 << attempt.min(16));
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

fn status_hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
        403 => "; grant the exporter's MLflow user read permission",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let full = base * (1 << attempt);
            for _ in 0..50 {
                let d = backoff(base, attempt);
                assert!(
                    d >= full / 2 && d <= full,
                    "{d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }
}
