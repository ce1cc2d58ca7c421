//! Full sync against a synthetic MLflow: this program run again as a separate process (axum on
//! 127.0.0.1) serves MLflow's search endpoints over 1 000 experiments, 1 000 000 runs, 500 registered
//! models with aliases and 5 000 model versions, generated from a fixed seed page by page (never
//! held as JSON). The measured side is this process: `Pipeline::open`, one full cycle (read
//! everything, detect, derive, publish) and one incremental cycle with nothing changed, with the wall
//! time, this process's CPU seconds (all threads: tokio, reqwest, decoding, deriving), its peak and
//! steady resident memory, and the requests made. Targets: full sync ≤ 10 s, steady memory ≤ 300 MB,
//! incremental cycle ≤ 5 requests and ≤ 200 ms. `cargo bench --bench sync`.
//!
//! `SYNC_RUNS` sets the runs (1 000 000 by default) and `SYNC_WORKSPACES` a number of workspaces
//! (0 by default: a server without them): the server then answers MLflow 3's server-info and
//! workspace list, and each request reads the workspace its `X-MLFLOW-WORKSPACE` header names
//! (`default`, `ws-1`, …; experiment and model `i` belong to workspace `i % SYNC_WORKSPACES`).

mod floor;
mod heap;
mod procfs;
use procfs::cpu_seconds;
mod rt;
mod server;

use rt::runtime;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use heap::{live_mib, PEAK};
use mlflow_exporter::app::Pipeline;

const EXPERIMENTS: usize = 1_000;
/// `SYNC_RUNS`, default 1 000 000.
fn runs_n() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| env_usize("SYNC_RUNS", 1_000_000))
}

/// `SYNC_WORKSPACES`, default 0 (no workspaces).
fn workspaces_n() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| env_usize("SYNC_WORKSPACES", 0))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// The workspace a request names: its index (`default` is 0, `ws-N` is N).
fn workspace_of(headers: &axum::http::HeaderMap) -> usize {
    match headers
        .get("x-mlflow-workspace")
        .and_then(|v| v.to_str().ok())
    {
        Some(w) => w
            .strip_prefix("ws-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        None => 0,
    }
}

/// Whether a search is of the prompt registry (a filter on MLflow's prompt tag).
fn is_prompt_search(q: &[(String, String)]) -> bool {
    param(q, "filter").is_some_and(|f| f.contains("mlflow.prompt.is_prompt"))
}

/// Whether object `i` (an experiment or a model) belongs to workspace `ws`.
fn in_workspace(i: usize, ws: usize) -> bool {
    workspaces_n() == 0 || i % workspaces_n() == ws
}
const MODELS: usize = 500;
const VERSIONS_PER_MODEL: usize = 10;
const USERS: usize = 2_000;
const TEAMS: usize = 20;
const INSTANCE_TYPES: [&str; 12] = [
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "c5.4xlarge",
    "r5.2xlarge",
    "g4dn.xlarge",
    "g5.xlarge",
    "g5.2xlarge",
    "g5.12xlarge",
    "p3.2xlarge",
    "p4d.24xlarge",
    "trn1.32xlarge",
];
const ESTIMATORS: [&str; 8] = [
    "XGBClassifier",
    "LGBMRegressor",
    "RandomForestClassifier",
    "LogisticRegression",
    "TorchTrainer",
    "HFTrainer",
    "CatBoostClassifier",
    "KerasModel",
];
const SEED: u64 = 0x5eed;
const DAY_MS: i64 = 86_400_000;
const SPAN_MS: i64 = 90 * DAY_MS;

/// Set in the server process: MLflow's "now" (ms) the data is generated around.
const SERVER: &str = "SYNC_BENCH_SERVER_NOW";

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

// ---------------------------------------------------------------------------------------------
// The synthetic MLflow (child process).

/// What the server keeps of a run to answer filters; the JSON is generated from the run's index.
#[derive(Clone, Copy)]
struct RunIdx {
    start: i64,
    /// `i64::MIN` while running.
    end: i64,
    exp: u16,
    /// 0 FINISHED, 1 FAILED, 2 KILLED, 3 RUNNING.
    status: u8,
}

const STATUSES: [&str; 4] = ["FINISHED", "FAILED", "KILLED", "RUNNING"];

struct Data {
    now: i64,
    runs: Vec<RunIdx>,
    /// (end time, run) of ended runs, by end time.
    by_end: Vec<(i64, u32)>,
    running: Vec<u32>,
    by_id: HashMap<u128, u32>,
    /// (name index, version, created, last updated, run, stage) by last updated DESC, name, version.
    versions: Vec<(usize, usize, i64, i64, u32, &'static str)>,
    /// Aliases of each model: (alias, version).
    aliases: Vec<Vec<(&'static str, usize)>>,
    /// Runs of each group of experiments a full read asked for (by the experiments' bitmap).
    groups: std::sync::Mutex<HashMap<Vec<bool>, Arc<Vec<u32>>>>,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 32-hex-digit run id, unique per index (splitmix64 is a bijection of the upper half).
fn run_key(i: usize) -> u128 {
    u128::from(splitmix(i as u64 ^ SEED)) << 64 | u128::from(splitmix(!(i as u64)))
}

impl Data {
    fn generate(now: i64) -> Data {
        let mut rng = fastrand::Rng::with_seed(SEED);
        let step = SPAN_MS / runs_n() as i64;
        let t0 = now - SPAN_MS;
        let (lo, hi) = ((30_000f64).ln(), (6.0 * 3_600_000f64).ln());
        let mut runs = Vec::with_capacity(runs_n());
        for i in 0..runs_n() {
            // Strictly increasing start times, so offset paging in start order is index order.
            let start = t0 + i as i64 * step + rng.i64(0..step);
            let dur = (lo + rng.f64() * (hi - lo)).exp() as i64;
            let zombie = rng.u32(0..5_000) == 0;
            let (status, end) = if zombie || start + dur > now {
                (3, i64::MIN)
            } else {
                let s = match rng.u8(0..100) {
                    0..80 => 0,
                    80..93 => 1,
                    _ => 2,
                };
                (s, start + dur)
            };
            let exp = rng.u16(0..EXPERIMENTS as u16);
            runs.push(RunIdx {
                start,
                end,
                exp,
                status,
            });
        }
        let mut by_end: Vec<(i64, u32)> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status != 3)
            .map(|(i, r)| (r.end, i as u32))
            .collect();
        by_end.sort_unstable();
        let running = (0..runs_n() as u32)
            .filter(|&i| runs[i as usize].status == 3)
            .collect();
        let by_id = (0..runs_n()).map(|i| (run_key(i), i as u32)).collect();
        let stages = ["None", "None", "Staging", "Production", "Archived"];
        let mut versions = Vec::with_capacity(MODELS * VERSIONS_PER_MODEL);
        let mut aliases = Vec::with_capacity(MODELS);
        for m in 0..MODELS {
            for v in 1..=VERSIONS_PER_MODEL {
                // A finished run of the model's era; the version registered after it ended.
                let mut r = rng.usize(0..runs_n());
                while runs[r].status != 0 {
                    r = rng.usize(0..runs_n());
                }
                let created = runs[r].end + rng.i64(60_000..DAY_MS);
                // Updated up to a week later, but at least an hour before now (spread, not piled up).
                let mut updated = created + rng.i64(0..7 * DAY_MS);
                if updated > now - 3_600_000 {
                    updated = now - 3_600_000 - rng.i64(0..DAY_MS);
                }
                let created = created.min(updated);
                let stage = stages[rng.usize(0..stages.len())];
                versions.push((m, v, created, updated, r as u32, stage));
            }
            let mut a = vec![("champion", rng.usize(1..=VERSIONS_PER_MODEL))];
            if rng.bool() {
                a.push(("challenger", VERSIONS_PER_MODEL));
            }
            if m % 5 == 0 {
                a.push(("production", rng.usize(1..=VERSIONS_PER_MODEL)));
            }
            aliases.push(a);
        }
        versions.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        Data {
            now,
            runs,
            by_end,
            running,
            by_id,
            versions,
            aliases,
            groups: Default::default(),
        }
    }

    /// One run as MLflow's runs/search renders it: about 2 KB with ~10 params, a few metrics (GPU
    /// system metrics on GPU instances) and the tags MLflow and a typical training script set.
    fn write_run(&self, out: &mut String, i: usize) {
        let r = self.runs[i];
        let mut rng = fastrand::Rng::with_seed(splitmix(i as u64 ^ 0xabcdef));
        let id = run_key(i);
        let user = rng.usize(0..USERS);
        let name = [
            "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind",
        ][rng.usize(0..8)];
        let animal = ["owl", "fox", "bee", "cat", "elk", "yak", "ram", "koi"][rng.usize(0..8)];
        let run_name = format!("{name}-{animal}-{}", rng.u32(0..1000));
        let deleted = i % 40 == 0;
        let _ = write!(
            out,
            r#"{{"info":{{"run_uuid":"{id:032x}","experiment_id":"{exp}","run_name":"{run_name}","user_id":"user{user}@example.com","status":"{status}","start_time":{start},"#,
            exp = r.exp as usize + 1,
            status = STATUSES[r.status as usize],
            start = r.start,
        );
        if r.status != 3 {
            let _ = write!(out, r#""end_time":{},"#, r.end);
        }
        let _ = write!(
            out,
            r#""artifact_uri":"s3://mlflow-artifacts/{exp}/{id:032x}/artifacts","lifecycle_stage":"{stage}","run_id":"{id:032x}"}},"data":{{"metrics":["#,
            exp = r.exp as usize + 1,
            stage = if deleted { "deleted" } else { "active" },
        );
        let ts = if r.status == 3 {
            self.now - 1_000
        } else {
            r.end
        };
        let itype = rng.usize(0..INSTANCE_TYPES.len());
        let gpus = if INSTANCE_TYPES[itype].starts_with(['g', 'p']) {
            rng.usize(1..5)
        } else {
            0
        };
        let mut first = true;
        let mut metric = |out: &mut String, key: &str, value: f64, step: u32| {
            let sep = if first { "" } else { "," };
            first = false;
            let _ = write!(
                out,
                r#"{sep}{{"key":"{key}","value":{value},"timestamp":{ts},"step":{step}}}"#
            );
        };
        if r.status == 0 || rng.bool() {
            let steps = rng.u32(1..200);
            metric(out, "accuracy", rng.f64(), steps);
            metric(out, "loss", rng.f64() * 3.0, steps);
            metric(out, "val_loss", rng.f64() * 3.0, steps);
            if rng.bool() {
                metric(out, "f1", rng.f64(), steps);
                metric(out, "auc", rng.f64(), steps);
            }
        }
        for g in 0..gpus {
            let u = rng.f64() * 100.0;
            metric(out, &format!("system/gpu_{g}_utilization_percentage"), u, 0);
            metric(
                out,
                &format!("system/gpu_{g}_memory_usage_megabytes"),
                u * 400.0,
                0,
            );
        }
        if gpus > 0 || rng.bool() {
            metric(
                out,
                "system/cpu_utilization_percentage",
                rng.f64() * 100.0,
                0,
            );
            metric(
                out,
                "system/system_memory_usage_megabytes",
                rng.f64() * 60_000.0,
                0,
            );
        }
        out.push_str(r#"],"params":["#);
        let est = ESTIMATORS[rng.usize(0..ESTIMATORS.len())];
        let _ = write!(
            out,
            r#"{{"key":"estimator","value":"{est}"}},{{"key":"learning_rate","value":"{:.5}"}},{{"key":"batch_size","value":"{}"}},{{"key":"epochs","value":"{}"}},{{"key":"max_depth","value":"{}"}},{{"key":"seed","value":"{}"}},{{"key":"optimizer","value":"adamw"}},{{"key":"dataset","value":"s3://datasets/project-{}/v{}/train.parquet"}},{{"key":"n_features","value":"{}"}},{{"key":"early_stopping","value":"True"}}"#,
            rng.f64() / 10.0,
            [32, 64, 128, 256][rng.usize(0..4)],
            rng.u32(1..100),
            rng.u32(2..16),
            rng.u32(..),
            r.exp,
            rng.u32(1..20),
            rng.u32(10..500),
        );
        let _ = write!(
            out,
            r#"],"tags":[{{"key":"mlflow.user","value":"user{user}@example.com"}},{{"key":"mlflow.runName","value":"{run_name}"}},{{"key":"mlflow.source.type","value":"JOB"}},{{"key":"mlflow.source.name","value":"pipelines/project_{}/train.py"}},{{"key":"mlflow.source.git.commit","value":"{:016x}{:016x}{:08x}"}},{{"key":"mlflow.project.env","value":"conda"}}"#,
            r.exp,
            rng.u64(..),
            rng.u64(..),
            rng.u32(..),
        );
        if i % 7 != 0 {
            let _ = write!(
                out,
                r#",{{"key":"team","value":"team-{}"}}"#,
                rng.usize(0..TEAMS)
            );
        }
        if i % 3 != 0 {
            let _ = write!(
                out,
                r#",{{"key":"instance_type","value":"{}"}}"#,
                INSTANCE_TYPES[itype]
            );
        }
        if r.status == 0 && rng.u8(0..4) == 0 {
            let _ = write!(
                out,
                r#",{{"key":"mlflow.log-model.history","value":"[{{\"run_id\": \"{id:032x}\", \"artifact_path\": \"model\", \"utc_time_created\": \"2026-11-01 10:00:00.000000\", \"flavors\": {{\"python_function\": {{\"loader_module\": \"mlflow.sklearn\", \"python_version\": \"3.11.9\", \"env\": {{\"conda\": \"conda.yaml\", \"virtualenv\": \"python_env.yaml\"}}}}, \"sklearn\": {{\"pickled_model\": \"model.pkl\", \"sklearn_version\": \"1.5.2\", \"serialization_format\": \"cloudpickle\"}}}}, \"model_uuid\": \"{:032x}\", \"mlflow_version\": \"2.17.2\"}}]"}}"#,
                rng.u128(..)
            );
        }
        out.push_str("]}");
        if rng.u8(0..3) == 0 {
            let _ = write!(
                out,
                r#","inputs":{{"dataset_inputs":[{{"tags":[{{"key":"mlflow.data.context","value":"train"}}],"dataset":{{"name":"train","digest":"{:08x}","source_type":"s3","source":"{{\"uri\": \"s3://datasets/project-{}/train.parquet\"}}","schema":"","profile":"{{\"num_rows\": {}}}"}}}}]}}"#,
                rng.u32(..),
                r.exp,
                rng.u32(1000..1_000_000)
            );
        } else {
            out.push_str(r#","inputs":{}"#);
        }
        out.push('}');
    }
}

fn token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"offset\": {offset}}}"))
}

/// The offset a page token carries (0 without one); `None` for a token this server never gave.
fn offset(token: Option<&str>) -> Option<usize> {
    let Some(t) = token.filter(|t| !t.is_empty()) else {
        return Some(0);
    };
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.trim_start_matches("{\"offset\": ")
                .trim_end_matches('}')
                .parse()
                .ok()
        })
}

fn bad(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error_code": "INVALID_PARAMETER_VALUE", "message": msg})),
    )
        .into_response()
}

fn json_body(s: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], s).into_response()
}

async fn experiments(
    State(d): State<Arc<Data>>,
    headers: axum::http::HeaderMap,
    Json(b): Json<serde_json::Value>,
) -> Response {
    let max = b["max_results"].as_u64().unwrap_or(1000) as usize;
    let Some(from) = offset(b["page_token"].as_str()) else {
        return bad("Invalid page token");
    };
    let ws = workspace_of(&headers);
    let listed: Vec<usize> = (0..EXPERIMENTS).filter(|e| in_workspace(*e, ws)).collect();
    let to = (from + max).min(listed.len());
    let mut out = String::from(r#"{"experiments":["#);
    for (k, &e) in listed[from.min(to)..to].iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        let created = d.now - SPAN_MS - (e as i64 * 3_600_000);
        let _ = write!(
            out,
            r#"{{"experiment_id":"{id}","name":"/Users/user{u}@example.com/project-{e}/training","artifact_location":"s3://mlflow-artifacts/{id}","lifecycle_stage":"{stage}","last_update_time":{created},"creation_time":{created},"tags":[{{"key":"team","value":"team-{team}"}},{{"key":"mlflow.ownerEmail","value":"user{u}@example.com"}},{{"key":"mlflow.experimentType","value":"MLFLOW_EXPERIMENT"}}]}}"#,
            id = e + 1,
            u = e * 7 % USERS,
            stage = if e % 50 == 49 { "deleted" } else { "active" },
            team = e % TEAMS,
        );
    }
    out.push(']');
    if to < listed.len() {
        let _ = write!(out, r#","next_page_token":"{}""#, token(to));
    }
    out.push('}');
    json_body(out)
}

/// The filters the exporter sends; anything else is refused as MLflow refuses bad syntax.
enum Filter {
    All,
    EndedSince(i64),
    Running,
    Ids(Vec<u32>),
}

fn parse_filter(d: &Data, f: &str) -> Option<Filter> {
    let f = f.trim();
    if f.is_empty() {
        return Some(Filter::All);
    }
    if let Some(x) = f.strip_prefix("attributes.end_time >= ") {
        return x.trim().parse().ok().map(Filter::EndedSince);
    }
    if f == "attributes.status = 'RUNNING'" {
        return Some(Filter::Running);
    }
    let list = f
        .strip_prefix("attributes.run_id IN (")?
        .strip_suffix(')')?;
    let ids = list
        .split(',')
        .filter_map(|s| u128::from_str_radix(s.trim().trim_matches('\''), 16).ok())
        .filter_map(|k| d.by_id.get(&k).copied())
        .collect();
    Some(Filter::Ids(ids))
}

async fn runs(State(d): State<Arc<Data>>, Json(b): Json<serde_json::Value>) -> Response {
    let max = b["max_results"].as_u64().unwrap_or(1000).min(50_000) as usize;
    let Some(from) = offset(b["page_token"].as_str()) else {
        return bad("Invalid page token");
    };
    let mut wanted = vec![false; EXPERIMENTS];
    let mut n = 0;
    for id in b["experiment_ids"].as_array().into_iter().flatten() {
        if let Some(e) = id.as_str().and_then(|s| s.parse::<usize>().ok()) {
            if (1..=EXPERIMENTS).contains(&e) && !wanted[e - 1] {
                wanted[e - 1] = true;
                n += 1;
            }
        }
    }
    let Some(filter) = parse_filter(&d, b["filter"].as_str().unwrap_or("")) else {
        return bad(&format!("Invalid filter {}", b["filter"]));
    };
    // The page's runs and whether more follow, in start order (start times are index order).
    let (page, more): (Vec<usize>, bool) = match filter {
        Filter::All if n == EXPERIMENTS => {
            let to = (from + max).min(runs_n());
            ((from..to).collect(), to < runs_n())
        }
        // A group of experiments (a full read with `mlflow.concurrency` > 1): its runs listed once
        // and kept, as a database answers from an index rather than scanning every run per page.
        Filter::All => {
            let group = {
                let mut groups = d.groups.lock().unwrap();
                groups
                    .entry(wanted.clone())
                    .or_insert_with(|| {
                        Arc::new(
                            (0..runs_n() as u32)
                                .filter(|i| wanted[d.runs[*i as usize].exp as usize])
                                .collect(),
                        )
                    })
                    .clone()
            };
            let to = (from + max).min(group.len());
            let page = group.get(from..to).unwrap_or(&[]);
            (page.iter().map(|i| *i as usize).collect(), to < group.len())
        }
        f => {
            let mut m: Vec<usize> = match f {
                Filter::All => unreachable!("answered above"),
                Filter::EndedSince(t) => {
                    let p = d.by_end.partition_point(|(e, _)| *e < t);
                    d.by_end[p..].iter().map(|(_, i)| *i as usize).collect()
                }
                Filter::Running => d.running.iter().map(|i| *i as usize).collect(),
                Filter::Ids(ids) => ids.into_iter().map(|i| i as usize).collect(),
            };
            m.retain(|i| wanted[d.runs[*i].exp as usize]);
            m.sort_unstable();
            let to = (from + max).min(m.len());
            let more = to < m.len();
            (m.get(from..to).unwrap_or(&[]).to_vec(), more)
        }
    };
    let mut out = String::with_capacity(page.len() * 2_200 + 64);
    out.push_str(r#"{"runs":["#);
    for (k, i) in page.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        d.write_run(&mut out, *i);
    }
    out.push(']');
    if more {
        let _ = write!(out, r#","next_page_token":"{}""#, token(from + max));
    }
    out.push('}');
    json_body(out)
}

fn query(q: &Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

async fn registered_models(
    State(d): State<Arc<Data>>,
    headers: axum::http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = query(&q);
    let max = param(&q, "max_results")
        .and_then(|m| m.parse().ok())
        .unwrap_or(100usize);
    let Some(from) = offset(param(&q, "page_token")) else {
        return bad("Invalid page token");
    };
    let ws = workspace_of(&headers);
    // A store without prompts: the prompt registry's search finds none.
    let listed: Vec<usize> = match is_prompt_search(&q) {
        true => Vec::new(),
        false => (0..MODELS).filter(|m| in_workspace(*m, ws)).collect(),
    };
    let to = (from + max).min(listed.len());
    let mut out = String::from(r#"{"registered_models":["#);
    for (k, &m) in listed[from.min(to)..to].iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        let created = d.now - SPAN_MS + m as i64 * 600_000;
        let _ = write!(
            out,
            r#"{{"name":"model-{m:03}","creation_timestamp":{created},"last_updated_timestamp":{},"user_id":"user{}@example.com","description":"Model {m} of team {}","latest_versions":[{{"name":"model-{m:03}","version":"{VERSIONS_PER_MODEL}","creation_timestamp":{created},"current_stage":"None","status":"READY"}}],"tags":[{{"key":"team","value":"team-{}"}}],"aliases":["#,
            d.now - 3_600_000,
            m * 13 % USERS,
            m % TEAMS,
            m % TEAMS,
        );
        for (k, (alias, v)) in d.aliases[m].iter().enumerate() {
            let sep = if k > 0 { "," } else { "" };
            let _ = write!(out, r#"{sep}{{"alias":"{alias}","version":"{v}"}}"#);
        }
        out.push_str("]}");
    }
    out.push(']');
    if to < listed.len() {
        let _ = write!(out, r#","next_page_token":"{}""#, token(to));
    }
    out.push('}');
    json_body(out)
}

async fn model_versions(
    State(d): State<Arc<Data>>,
    headers: axum::http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = query(&q);
    let max = param(&q, "max_results")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000usize);
    let Some(from) = offset(param(&q, "page_token")) else {
        return bad("Invalid page token");
    };
    let ws = workspace_of(&headers);
    let listed: Vec<_> = d
        .versions
        .iter()
        .filter(|v| in_workspace(v.0, ws) && !is_prompt_search(&q))
        .collect();
    let to = (from + max).min(listed.len());
    let mut out = String::from(r#"{"model_versions":["#);
    for (k, (m, v, created, updated, run, stage)) in listed[from.min(to)..to].iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"name":"model-{m:03}","version":"{v}","creation_timestamp":{created},"last_updated_timestamp":{updated},"user_id":"user{}@example.com","current_stage":"{stage}","description":"","source":"models:/m-{:032x}","run_id":"{:032x}","status":"READY","tags":[{{"key":"validation","value":"passed"}}],"run_link":"","aliases":[]}}"#,
            m * 13 % USERS,
            run_key(*run as usize) ^ 1,
            run_key(*run as usize),
        );
    }
    out.push(']');
    if to < listed.len() {
        let _ = write!(out, r#","next_page_token":"{}""#, token(to));
    }
    out.push('}');
    json_body(out)
}

/// The server process: generates the index, prints its port, serves until its parent closes stdin.
fn serve(now: i64) {
    let data = Arc::new(Data::generate(now));
    let rt = runtime(2);
    rt.block_on(async move {
        let app = Router::new()
            .route("/api/2.0/mlflow/experiments/search", post(experiments))
            .route("/api/2.0/mlflow/runs/search", post(runs))
            .route(
                "/api/2.0/mlflow/registered-models/search",
                get(registered_models),
            )
            .route("/api/2.0/mlflow/model-versions/search", get(model_versions));
        // MLflow 3's server info and workspaces, when there are workspaces (without, a 404 as
        // from an MLflow 2).
        let app = match workspaces_n() {
            0 => app,
            n => app
                // An MLflow 3 without logged models.
                .route(
                    "/api/2.0/mlflow/logged-models/search",
                    post(|| async { Json(serde_json::json!({"models": []})) }),
                )
                .route(
                    "/api/3.0/mlflow/server-info",
                    get(|| async { Json(serde_json::json!({"workspaces_enabled": true})) }),
                )
                .route(
                    "/api/3.0/mlflow/workspaces",
                    get(move || async move {
                        let names: Vec<serde_json::Value> = (0..n)
                            .map(|i| match i {
                                0 => serde_json::json!({"name": "default"}),
                                i => serde_json::json!({ "name": format!("ws-{i}") }),
                            })
                            .collect();
                        Json(serde_json::json!({ "workspaces": names }))
                    }),
                ),
        };
        server::serve(app.with_state(data)).await;
    });
}

// ---------------------------------------------------------------------------------------------
// The measured side (this process).

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn main() {
    if let Ok(now) = std::env::var(SERVER) {
        serve(now.parse().unwrap());
        return;
    }
    let now = now_ms();
    let t = Instant::now();
    let (server, port) = server::spawn(SERVER, &now.to_string());
    let server_pid = server.0.id().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let generated_s = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().unwrap();
    let settings = server::settings(&base, dir.path());
    let rt = runtime(2);
    let rss_start = procfs::status_mib("self", "VmRSS:");
    let mut pipeline = rt.block_on(Pipeline::open(&settings, now)).unwrap();

    // Full sync: read everything, detect registry changes, derive and publish.
    let (cpu0, scpu0) = (cpu_seconds("self"), cpu_seconds(&server_pid));
    let t = Instant::now();
    let full = rt.block_on(pipeline.cycle(now_ms())).unwrap();
    let full_s = t.elapsed().as_secs_f64();
    let (cpu1, scpu1) = (cpu_seconds("self"), cpu_seconds(&server_pid));
    let peak_full = procfs::status_mib("self", "VmHWM:");
    let rss_full = procfs::status_mib("self", "VmRSS:");
    let (live_full, peak_live_full) = (
        live_mib(),
        PEAK.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
    );
    let runs_held = pipeline.syncer.snapshot().runs.len();
    // The snapshot's own share of the live heap: a copy of it, measured (a clone is exact-sized,
    // as the trimmed original is).
    let before_copy = live_mib();
    let copy = pipeline.syncer.snapshot().clone();
    let snapshot_mib = live_mib() - before_copy;
    drop(copy);
    let versions_held = pipeline.syncer.snapshot().versions.len();
    let models_held = pipeline.syncer.snapshot().models.len();

    // Incremental cycle, nothing changed since.
    std::thread::sleep(Duration::from_secs(1));
    let (cpu2, scpu2) = (cpu_seconds("self"), cpu_seconds(&server_pid));
    let t = Instant::now();
    let inc = rt.block_on(pipeline.cycle(now_ms())).unwrap();
    let inc_s = t.elapsed().as_secs_f64();
    let (cpu3, scpu3) = (cpu_seconds("self"), cpu_seconds(&server_pid));
    let rss_inc = procfs::status_mib("self", "VmRSS:");
    let live_inc = live_mib();
    let peak = procfs::status_mib("self", "VmHWM:");
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = procfs::status_mib("self", "VmRSS:");

    // The floor: the same runs pages downloaded without decoding.
    let ids: Vec<String> = (1..=EXPERIMENTS).map(|e| e.to_string()).collect();
    let sd0 = cpu_seconds(&server_pid);
    let floor::Download {
        seconds: dl_s,
        pages: dl_pages,
        bytes: dl_bytes,
    } = rt.block_on(floor::runs(
        &base,
        &ids,
        settings.mlflow.concurrency,
        settings.mlflow.page_size,
    ));
    let sd1 = cpu_seconds(&server_pid);
    rt.block_on(pipeline.recorder.store().close());
    let before_drop = live_mib();
    drop(pipeline);
    let held = before_drop - live_mib();
    drop(server);

    let ok = |met: bool| if met { "met" } else { "MISSED" };
    // Five searches per workspace, and the list of workspaces.
    let max_requests = match workspaces_n() {
        0 => 5,
        n => 5 * n + 1,
    };
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| synthetic MLflow (another process): {EXPERIMENTS} experiments, {} runs, {MODELS} models, {} versions, {} workspaces, index generated | {generated_s:.1} s | – |",
        runs_n(),
        MODELS * VERSIONS_PER_MODEL,
        workspaces_n()
    );
    println!(
        "| full sync, Pipeline::cycle (read, detect, derive, publish), {} runs read, {} requests; snapshot holds {runs_held} runs, {models_held} models, {versions_held} versions | {full_s:.2} s (reading MLflow: {:.2} s) | ≤ 10 s ({}) |",
        full.runs_read,
        full.requests,
        full.seconds,
        ok(full_s <= 10.0)
    );
    println!(
        "| CPU of the exporter's side during the full sync (utime + stime, all threads) | {:.2} s | – |",
        cpu1 - cpu0
    );
    println!(
        "| CPU of the synthetic server during the full sync (not the exporter's) | {:.2} s | – |",
        scpu1 - scpu0
    );
    println!("| peak resident memory (VmHWM) after the full sync | {peak_full:.0} MiB | – |");
    println!(
        "| steady resident memory (VmRSS) after the full sync / after the incremental cycle / 2 s later (at open: {rss_start:.0} MiB) | {rss_full:.0} / {rss_inc:.0} / {rss_idle:.0} MiB | ≤ 300 MB ({}) |",
        ok(rss_full.max(rss_inc).max(rss_idle) * 1.048_576 <= 300.0)
    );
    println!(
        "| incremental cycle, nothing changed: {} runs read (ended in the overlap, or running){} | {} requests, {:.0} ms (reading MLflow: {:.0} ms) | ≤ {} requests, ≤ 200 ms ({}) |",
        inc.runs_read,
        match workspaces_n() {
            0 => String::new(),
            n => format!(", {n} workspaces"),
        },
        inc.requests,
        inc_s * 1000.0,
        inc.seconds * 1000.0,
        max_requests,
        ok(inc.requests <= max_requests && inc_s <= 0.2)
    );
    println!(
        "| CPU during the incremental cycle: exporter / server | {:.3} s / {:.3} s | – |",
        cpu3 - cpu2,
        scpu3 - scpu2
    );
    println!("| peak resident memory (VmHWM) at the end | {peak:.0} MiB | – |");
    println!(
        "| live heap (counting allocator): after the full sync / after the incremental cycle / its peak during the full sync / held by the Pipeline (freed when dropped), of which the snapshot | {live_full:.0} / {live_inc:.0} / {peak_live_full:.0} / {held:.0} MiB, snapshot {snapshot_mib:.0} MiB ({:.0} bytes a run) | – |",
        snapshot_mib * (1 << 20) as f64 / runs_n() as f64
    );
    println!(
        "| download floor: the same runs pages fetched, bytes only ({dl_pages} pages, {:.0} MiB, ~{:.0} bytes a run) | {dl_s:.2} s (server CPU {:.2} s) | – |",
        dl_bytes as f64 / (1 << 20) as f64,
        dl_bytes as f64 / runs_n() as f64,
        sd1 - sd0
    );
}
