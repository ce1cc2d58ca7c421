//! The download-only floor of a full sync, shared by the sync benches: the same requests the
//! exporter's MLflow client makes (same bodies, groups of experiments, page size and concurrency), with
//! only the bytes kept — what the server and the loopback cost before the exporter decodes anything.
// Each bench uses the part it needs.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlflow_exporter::source::mlflow::client::experiment_groups;

/// Pages one search may take before the floor gives up (a server that never ends its pages).
const MAX_PAGES: usize = 100_000;
/// MLflow's page limits the client uses for experiments and registered models.
const EXPERIMENTS_PAGE: u32 = 50_000;
const MODELS_PAGE: u32 = 1_000;

/// What one download took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Download {
    pub seconds: f64,
    pub pages: usize,
    pub bytes: usize,
}

impl Download {
    fn add(&mut self, o: Download) {
        self.pages += o.pages;
        self.bytes += o.bytes;
    }
}

/// The floor of a full sync: experiments (for their ids, as the exporter reads them), every runs
/// page, registered models and all model versions. `runs` is the runs part alone, timed on its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct FullFloor {
    pub total: Download,
    pub runs: Download,
    pub experiments: usize,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// The next page token, read from the end of the body without decoding it (MLflow writes it last,
/// with or without spaces: its server pretty-prints).
fn next_token(body: &[u8]) -> Option<String> {
    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(300)..]);
    let (_, rest) = tail.rsplit_once("\"next_page_token\"")?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let token = &rest[..rest.find('"')?];
    (!token.is_empty()).then(|| token.to_string())
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> impl std::ops::Deref<Target = [u8]> {
    let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        status.is_success(),
        "{what}: {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    body
}

/// Every runs page of `ids` as a full sync requests them: the groups of [`experiment_groups`], each
/// paged in order, at most `concurrency` groups in flight.
pub async fn runs(base: &str, ids: &[String], concurrency: usize, page_size: u32) -> Download {
    let groups: Arc<Vec<Vec<String>>> = Arc::new(
        experiment_groups(ids, concurrency)
            .into_iter()
            .map(<[String]>::to_vec)
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/2.0/mlflow/runs/search");
    let t = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (groups, next, url, http) = (groups.clone(), next.clone(), url.clone(), client());
            tokio::spawn(async move {
                let mut got = Download::default();
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    let Some(group) = groups.get(g) else {
                        return got;
                    };
                    let mut token = None::<String>;
                    for _ in 0..MAX_PAGES {
                        let body = serde_json::json!({
                            "experiment_ids": group, "filter": "", "run_view_type": "ALL",
                            "max_results": page_size,
                            "order_by": ["attributes.start_time ASC", "attributes.run_id ASC"],
                            "page_token": token,
                        });
                        // As the exporter asks: a connection per page of a full read.
                        let req = http.post(&url).header("connection", "close").json(&body);
                        let b = send(req, "runs/search").await;
                        got.pages += 1;
                        got.bytes += b.len();
                        token = next_token(&b);
                        if token.is_none() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = Download::default();
    for w in workers {
        all.add(w.await.unwrap());
    }
    all.seconds = t.elapsed().as_secs_f64();
    all
}

/// Pages a GET search of the registry with `query` (plus the page token) to its end.
async fn registry(http: &reqwest::Client, url: &str, query: &[(&str, String)]) -> Download {
    let mut got = Download::default();
    let mut token = None::<String>;
    for _ in 0..MAX_PAGES {
        let mut q = query.to_vec();
        q.extend(token.take().map(|t| ("page_token", t)));
        let b = send(http.get(url).query(&q), url).await;
        got.pages += 1;
        got.bytes += b.len();
        token = next_token(&b);
        if token.is_none() {
            break;
        }
    }
    got
}

/// The whole floor of a full sync, in the exporter's order: experiments, runs, registered models,
/// model versions.
pub async fn full_sync(base: &str, concurrency: usize, page_size: u32) -> FullFloor {
    let http = client();
    let api = format!("{base}/api/2.0/mlflow");
    let t = Instant::now();
    let mut total = Download::default();
    let mut ids = Vec::new();
    let mut token = None::<String>;
    for _ in 0..MAX_PAGES {
        let body = serde_json::json!({
            "view_type": "ALL", "max_results": EXPERIMENTS_PAGE,
            "order_by": ["experiment_id ASC"], "page_token": token,
        });
        let b = send(
            http.post(format!("{api}/experiments/search")).json(&body),
            "experiments/search",
        )
        .await;
        total.pages += 1;
        total.bytes += b.len();
        // The ids are needed for the runs searches, as in the exporter: the one page decoded here.
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        ids.extend(
            v["experiments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["experiment_id"].as_str().map(str::to_string)),
        );
        token = next_token(&b);
        if token.is_none() {
            break;
        }
    }
    let runs = runs(base, &ids, concurrency, page_size).await;
    total.add(runs);
    let models = registry(
        &http,
        &format!("{api}/registered-models/search"),
        &[
            ("max_results", MODELS_PAGE.to_string()),
            ("order_by", "name ASC".to_string()),
        ],
    )
    .await;
    total.add(models);
    let versions = registry(
        &http,
        &format!("{api}/model-versions/search"),
        &[
            ("max_results", page_size.to_string()),
            ("order_by", "last_updated_timestamp DESC".to_string()),
            ("order_by", "name ASC".to_string()),
            ("order_by", "version_number ASC".to_string()),
        ],
    )
    .await;
    total.add(versions);
    total.seconds = t.elapsed().as_secs_f64();
    FullFloor {
        total,
        runs,
        experiments: ids.len(),
    }
}
