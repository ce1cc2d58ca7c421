//! HTTP client for MLflow's search endpoints: paging with stable order, per-request timeout, retries with
//! exponential backoff and jitter on connection errors, 429 and 5xx (never on other 4xx), Basic or Bearer
//! auth, TLS with a custom CA and client certificate, and the latency of every call recorded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{stream, StreamExt};
use prometheus::HistogramVec;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONNECTION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::model::*;
use super::Connection;
use crate::config::MlflowSettings;
use crate::error::MlflowError;
use crate::source::http::{error_chain, is_tls_error};

/// MLflow's page-size limits per endpoint.
mod transport;
use transport::{decode, unseen, Request};

const EXPERIMENTS_PAGE: u32 = 50_000;
const MODELS_PAGE: u32 = 1_000;
/// What makes a registered model a prompt; a search without it leaves prompts out.
const PROMPT_FILTER: &str = "tags.`mlflow.prompt.is_prompt` = 'true'";
/// MLflow's page-size limit of the logged-models search.
const LOGGED_MODELS_PAGE: u32 = 50;
/// Experiments per logged-models search.
const LOGGED_MODELS_BATCH: usize = 100;
/// MLflow's largest page of a traces search.
const TRACES_PAGE: u32 = 500;
/// Experiments named in one traces search (each is a location of the request).
const TRACES_BATCH: usize = 100;
/// Page size of the versions search of an incremental cycle.
const RECENT_VERSIONS_PAGE: u32 = 100;
/// Runs searches take this many experiment ids at once (MLflow sets no limit; this keeps bodies small).
const EXPERIMENT_BATCH: usize = 5_000;
/// Fewer experiments than this are searched together: splitting a small install only adds requests.
const MIN_GROUP: usize = 25;

/// Header that names the workspace a request reads on a workspace-enabled MLflow 3.
pub const WORKSPACE_HEADER: &str = "X-MLFLOW-WORKSPACE";

/// Cheap to clone (the connection pool is shared): [`MlflowClient::in_workspace`] makes one per
/// workspace.
#[derive(Clone)]
pub struct MlflowClient {
    http: reqwest::Client,
    api: String,
    /// MLflow 3's API root, for the server's info and its workspaces.
    api3: String,
    /// The workspace every request names, if any.
    workspace: Option<std::sync::Arc<str>>,
    /// `Authorization`, from the [`Connection`] (sensitive: never printed).
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    page_size: u32,
    /// `mlflow.max_response_bytes`.
    max_response: usize,
    concurrency: usize,
    /// `mlflow.keep_alive`: reuse connections, but for a full read's runs pages.
    keep_alive: bool,
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
        let connection = Connection::new(s)?;
        let http = connection.client(
            reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(s.timeout)
                .connect_timeout(s.timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("mlflow-exporter/", env!("CARGO_PKG_VERSION"))),
        )?;
        Ok(MlflowClient {
            http,
            api: connection.url("api/2.0/mlflow/"),
            api3: connection.url("api/3.0/mlflow/"),
            workspace: None,
            authorization: connection.authorization().cloned(),
            timeout: s.timeout,
            max_retries: s.max_retries,
            backoff: s.retry_backoff,
            page_size: s.page_size,
            max_response: s.max_response_bytes,
            concurrency: s.concurrency.max(1),
            keep_alive: s.keep_alive,
            latency,
        })
    }

    /// The same client, its requests naming `workspace` (`X-MLFLOW-WORKSPACE`).
    pub fn in_workspace(&self, workspace: &str) -> MlflowClient {
        MlflowClient {
            workspace: Some(workspace.into()),
            ..self.clone()
        }
    }

    /// The workspace this client's requests name.
    pub fn workspace(&self) -> Option<&str> {
        self.workspace.as_deref()
    }

    /// What the server supports (MLflow 3); `None` from a server without the endpoint (MLflow 2
    /// answers 404), which then has no workspaces.
    pub async fn server_info(&self) -> Result<Option<ServerInfo>, MlflowError> {
        match self.call("server-info", &Request::Get(Vec::new())).await {
            Ok(info) => Ok(Some(info)),
            Err(MlflowError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every workspace of a workspace-enabled server, by name.
    pub async fn workspaces(&self) -> Result<Vec<String>, MlflowError> {
        let r: ListWorkspacesResponse = self.call("workspaces", &Request::Get(Vec::new())).await?;
        Ok(r.workspaces.into_iter().map(|w| w.name).collect())
    }

    /// `mlflow.concurrency`: requests in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
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

    /// Runs of the given experiments, active and deleted, page by page so that a large install is
    /// never held in memory as JSON. Each page is decoded (its runs borrow from its bytes) and handed
    /// to `prepare` on a blocking thread, so that pages are decoded on every core while this task
    /// waits for MLflow; `sink` gets what `prepare` made, on this task, one page at a time.
    /// A full read (`RunsQuery::All`) searches groups of experiments side by side
    /// ([`experiment_groups`]); a filtered one makes as few requests as it can. Returns the number
    /// of requests made.
    pub async fn runs<T, P, S>(
        &self,
        experiment_ids: &[String],
        query: RunsQuery<'_>,
        prepare: P,
        sink: S,
    ) -> Result<usize, MlflowError>
    where
        T: Send + 'static,
        P: for<'p> Fn(Vec<Run<'p>>) -> T + Clone + Send + 'static,
        S: FnMut(T),
    {
        let (filter, concurrency) = match query {
            RunsQuery::All => ("", self.concurrency),
            RunsQuery::Filter(f) => (f, 1),
        };
        // The searches share this task, so the lock is never contended; it makes the future `Send`.
        let sink = Mutex::new(sink);
        // Futures made up front: a `map` closure in the stream would hit rustc's higher-ranked `Send`
        // limitation (rust-lang/rust#102211) once the sync task is spawned.
        let groups: Vec<_> = experiment_groups(experiment_ids, concurrency)
            .into_iter()
            .map(|group| self.run_pages(group, filter, prepare.clone(), &sink))
            .collect();
        let mut searches = stream::iter(groups).buffer_unordered(concurrency);
        let mut requests = 0;
        while let Some(done) = searches.next().await {
            requests += done?;
        }
        Ok(requests)
    }

    /// The pages of one runs search, refusing a page token MLflow has already handed out.
    async fn run_pages<T, P, S>(
        &self,
        experiment_ids: &[String],
        filter: &str,
        prepare: P,
        sink: &Mutex<S>,
    ) -> Result<usize, MlflowError>
    where
        T: Send + 'static,
        P: for<'p> Fn(Vec<Run<'p>>) -> T + Clone + Send + 'static,
        S: FnMut(T),
    {
        const ENDPOINT: &str = "runs/search";
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        let mut requests = 0;
        loop {
            let request = Request::Post(json!({
                "experiment_ids": experiment_ids,
                "filter": filter,
                "run_view_type": "ALL",
                "max_results": self.page_size,
                "order_by": ["attributes.start_time ASC", "attributes.run_id ASC"],
                "page_token": token,
            }));
            // A full read's page costs MLflow about a second of CPU. A kept-alive connection stays
            // with the server worker that accepted it, and both searches' connections often land
            // on one worker of several (gunicorn, uvicorn), which then answers the whole read while
            // the others idle. Connections per page spread over the workers: 8-9 s instead of
            // 14-16 s for 12 pages on a two-worker MLflow (BENCHMARKS.md), so even with
            // `keep_alive` on a full read's pages close theirs.
            let fresh = filter.is_empty();
            let body = self.fetch(ENDPOINT, &request, fresh).await?;
            requests += 1;
            let prepare = prepare.clone();
            let (next, prepared) = tokio::task::spawn_blocking(move || {
                let page: SearchRunsResponse<'_> = decode(ENDPOINT, &body)?;
                let next = page.next_page_token.filter(|t| !t.is_empty());
                Ok::<_, MlflowError>((next, prepare(page.runs)))
            })
            .await
            .map_err(|e| MlflowError::Decode {
                endpoint: ENDPOINT,
                detail: format!("the thread decoding a page failed: {e}"),
            })??;
            (sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))(prepared);
            match next {
                None => return Ok(requests),
                Some(t) => token = Some(unseen(&mut seen, ENDPOINT, t)?),
            }
        }
    }

    /// Every logged model (MLflow 3) of the given experiments, 50 to a page (MLflow's limit).
    pub async fn logged_models(
        &self,
        experiment_ids: &[String],
    ) -> Result<(Vec<LoggedModelInfo>, usize), MlflowError> {
        let mut all = Vec::new();
        let mut requests = 0;
        for batch in experiment_ids.chunks(LOGGED_MODELS_BATCH) {
            requests += self
                .pages::<SearchLoggedModelsResponse, _>(
                    "logged-models/search",
                    |token| {
                        Request::Post(json!({
                            "experiment_ids": batch,
                            "max_results": LOGGED_MODELS_PAGE,
                            "page_token": token,
                        }))
                    },
                    |page| all.extend(page.into_iter().map(|m| m.info)),
                )
                .await?;
        }
        Ok((all, requests))
    }

    /// The traces of `experiment_ids` that started at `since_ms` or later (all of them without
    /// it), oldest first, 500 (MLflow's maximum) to a page; each page goes to `sink` as it comes.
    /// Returns the requests made.
    pub async fn traces(
        &self,
        experiment_ids: &[String],
        since_ms: Option<i64>,
        mut sink: impl FnMut(Vec<TraceInfo>),
    ) -> Result<usize, MlflowError> {
        let mut requests = 0;
        for batch in experiment_ids.chunks(TRACES_BATCH) {
            let locations: Vec<_> = batch
                .iter()
                .map(|id| json!({"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": id}}))
                .collect();
            let filter = since_ms.map(|t| format!("trace.timestamp_ms >= {t}"));
            requests += self
                .pages::<SearchTracesResponse, _>(
                    "traces/search",
                    |token| {
                        Request::Post(json!({
                            "locations": locations,
                            "filter": filter,
                            "max_results": TRACES_PAGE,
                            "order_by": ["timestamp_ms ASC"],
                            "page_token": token,
                        }))
                    },
                    &mut sink,
                )
                .await?;
        }
        Ok(requests)
    }

    /// The LLM calls (spans naming a model) of one experiment's traces and what MLflow priced
    /// them at, by model, over `[from_ms, to_ms]` (inclusive; no lower bound without `from_ms`):
    /// MLflow's own aggregation (`traces/metrics`, SPANS view), one request each (and a page per
    /// 1 000 models). Calls count by their trace's start, cost by the span's.
    pub async fn llm_calls(
        &self,
        experiment_id: &str,
        from_ms: Option<i64>,
        to_ms: i64,
    ) -> Result<(Vec<LlmCalls>, usize), MlflowError> {
        let mut by_model: std::collections::BTreeMap<String, LlmCalls> = Default::default();
        let mut requests = 0;
        for (metric, aggregation) in [("span_count", "COUNT"), ("total_cost", "SUM")] {
            requests += self
                .pages::<TraceMetricsResponse, _>(
                    "traces/metrics",
                    |token| {
                        Request::Post(json!({
                            "experiment_ids": [experiment_id],
                            "view_type": "SPANS",
                            "metric_name": metric,
                            "aggregations": [{"aggregation_type": aggregation}],
                            "dimensions": ["span_model_name"],
                            "start_time_ms": from_ms,
                            "end_time_ms": to_ms,
                            "page_token": token,
                        }))
                    },
                    |points| {
                        for p in points {
                            let (Some(model), Some(v)) =
                                (p.dimensions.span_model_name, p.values.get(aggregation))
                            else {
                                continue;
                            };
                            let slot = by_model.entry(model.clone()).or_insert_with(|| LlmCalls {
                                model,
                                ..LlmCalls::default()
                            });
                            match metric {
                                "span_count" => slot.calls = v.max(0.0).round() as u64,
                                _ => slot.cost = *v,
                            }
                        }
                    },
                )
                .await?;
        }
        Ok((by_model.into_values().collect(), requests))
    }

    /// The LLM calls of each of `trace_ids` (whole traces, spans and all: one request), by trace
    /// id; a trace MLflow no longer has is left out.
    pub async fn span_calls(
        &self,
        trace_ids: &[String],
    ) -> Result<Vec<(String, Vec<SpanCall>)>, MlflowError> {
        let q = trace_ids
            .iter()
            .map(|id| ("trace_ids", id.clone()))
            .collect();
        let answer: BatchGetTracesResponse = self.call("traces/batchGet", &Request::Get(q)).await?;
        Ok(answer
            .traces
            .into_iter()
            .map(|t| {
                let calls = t.spans.iter().filter_map(Span::call).collect();
                (t.trace_info.trace_id, calls)
            })
            .collect())
    }

    /// Every registered model with its aliases (MLflow hides prompts from this search).
    pub async fn registered_models(&self) -> Result<(Vec<RegisteredModel>, usize), MlflowError> {
        self.registered_models_where(None).await
    }

    /// Every prompt of MLflow's prompt registry (registered models tagged as prompts), with its
    /// aliases.
    pub async fn prompts(&self) -> Result<(Vec<RegisteredModel>, usize), MlflowError> {
        self.registered_models_where(Some(PROMPT_FILTER)).await
    }

    /// Every version of every prompt.
    pub async fn prompt_versions(&self) -> Result<(Vec<ModelVersion>, usize), MlflowError> {
        let mut all = Vec::new();
        let requests = self
            .pages::<SearchModelVersionsResponse, _>(
                "model-versions/search",
                |token| {
                    let mut q = vec![
                        ("max_results", self.page_size.to_string()),
                        ("filter", PROMPT_FILTER.to_string()),
                        ("order_by", "name ASC".to_string()),
                        ("order_by", "version_number ASC".to_string()),
                    ];
                    q.extend(token.map(|t| ("page_token", t.to_string())));
                    Request::Get(q)
                },
                |page| all.extend(page),
            )
            .await?;
        Ok((all, requests))
    }

    async fn registered_models_where(
        &self,
        filter: Option<&str>,
    ) -> Result<(Vec<RegisteredModel>, usize), MlflowError> {
        let mut all = Vec::new();
        let requests = self
            .pages::<SearchRegisteredModelsResponse, _>(
                "registered-models/search",
                |token| {
                    let mut q = vec![
                        ("max_results", MODELS_PAGE.to_string()),
                        ("order_by", "name ASC".to_string()),
                    ];
                    q.extend(filter.map(|f| ("filter", f.to_string())));
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
            // Since a cursor, a cycle usually finds a handful: a small first page is 4x cheaper for
            // MLflow (a 1 000-version page took it 114 ms, a 100-version one 29 ms).
            let page = match since {
                Some(_) => self.page_size.min(RECENT_VERSIONS_PAGE),
                None => self.page_size,
            };
            let mut q = vec![
                ("max_results", page.to_string()),
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
                Some(t) if !done => token = Some(unseen(&mut seen, api, t)?),
                _ => return Ok((all, requests)),
            }
        }
    }

    /// One registered model, with its tags.
    pub async fn registered_model(&self, name: &str) -> Result<RegisteredModel, MlflowError> {
        let q = vec![("name", name.to_string())];
        let r: GetRegisteredModelResponse =
            self.call("registered-models/get", &Request::Get(q)).await?;
        Ok(r.registered_model)
    }

    /// One model version.
    pub async fn model_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<ModelVersion, MlflowError> {
        let q = vec![("name", name.to_string()), ("version", version.to_string())];
        let r: GetModelVersionResponse = self.call("model-versions/get", &Request::Get(q)).await?;
        Ok(r.model_version)
    }

    /// A run's start and end.
    pub async fn run_times(&self, run_id: &str) -> Result<RunTimesInfo, MlflowError> {
        let q = vec![("run_id", run_id.to_string())];
        let r: GetRunResponse = self.call("runs/get", &Request::Get(q)).await?;
        Ok(r.run.info)
    }

    /// Registers a webhook that sends alias moves (of models and of prompts) to `url`, signed with `secret`; returns MLflow's
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
                {"entity": "PROMPT_ALIAS", "action": "CREATED"},
                {"entity": "PROMPT_ALIAS", "action": "DELETED"},
            ],
        });
        self.call("webhooks", &Request::Post(body)).await
    }
}

/// How the experiments of a full read are split into searches run side by side: with `concurrency`
/// above one, about four groups per concurrent search (so that a few large experiments rarely make
/// one search the long pole), of at least [`MIN_GROUP`] ids; otherwise one search per
/// [`EXPERIMENT_BATCH`] ids. Public so that the
/// benchmark's download-only floor requests exactly the same pages.
pub fn experiment_groups(ids: &[String], concurrency: usize) -> Vec<&[String]> {
    let size = if concurrency <= 1 {
        EXPERIMENT_BATCH
    } else {
        ids.len()
            .div_ceil(concurrency * 4)
            .clamp(MIN_GROUP, EXPERIMENT_BATCH)
    };
    ids.chunks(size).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_are_grouped_only_when_there_are_enough() {
        let ids = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>();
        let sizes = |n: usize, c: usize| {
            experiment_groups(&ids(n), c)
                .iter()
                .map(|g| g.len())
                .collect::<Vec<_>>()
        };
        // Small installs: one search, as before concurrency existed.
        assert_eq!(sizes(3, 2), vec![3]);
        assert_eq!(sizes(25, 2), vec![25]);
        // 60 ids, 2 at once: groups of at least 25.
        assert_eq!(sizes(60, 2), vec![25, 25, 10]);
        // 1 000 ids, 2 at once: eight groups of 125.
        assert_eq!(sizes(1_000, 2), vec![125; 8]);
        // One at a time: batches of 5 000.
        assert_eq!(sizes(12_000, 1), vec![5_000, 5_000, 2_000]);
        assert!(experiment_groups(&[], 2).is_empty());
        // Contiguous and complete, in order.
        let all = ids(1_000);
        assert_eq!(experiment_groups(&all, 4).concat(), all);
    }
}
