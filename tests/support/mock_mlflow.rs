//! A wiremock MLflow for tests of faults a real server will not produce on demand: the endpoints,
//! runs and experiments as MLflow writes them, and a small install (one experiment, two runs, one
//! model with an alias, one version).

use std::net::TcpListener;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const EXPERIMENTS: &str = "experiments/search";
pub const RUNS: &str = "runs/search";
pub const MODELS: &str = "registered-models/search";
pub const VERSIONS: &str = "model-versions/search";
pub const LOGGED_MODELS: &str = "logged-models/search";
pub const TRACES: &str = "traces/search";

/// The URL path of an MLflow endpoint (MLflow 3's traces under /api/3.0).
pub fn api(endpoint: &str) -> String {
    match endpoint {
        TRACES => format!("/api/3.0/mlflow/{endpoint}"),
        _ => format!("/api/2.0/mlflow/{endpoint}"),
    }
}

/// HTTP method MLflow uses for each search.
pub fn verb(endpoint: &str) -> &'static str {
    match endpoint {
        EXPERIMENTS | RUNS | LOGGED_MODELS | TRACES => "POST",
        _ => "GET",
    }
}

/// A 32-hex-digit run id.
pub fn run_id(n: u32) -> String {
    format!("{n:032x}")
}

pub fn experiment(id: &str, name: &str) -> Value {
    json!({"experiment_id": id, "name": name, "lifecycle_stage": "active",
           "tags": [{"key": "team", "value": "a"}]})
}

pub fn run(n: u32, experiment_id: &str, status: &str) -> Value {
    json!({
        "info": {"run_id": run_id(n), "experiment_id": experiment_id, "user_id": "alice",
                 "status": status, "start_time": 1000, "end_time": 61000, "lifecycle_stage": "active"},
        "data": {"tags": [{"key": "team", "value": "a"}], "params": [{"key": "lr", "value": "0.1"}],
                 "metrics": [{"key": "loss", "value": 0.5}]}
    })
}

pub fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// Answers every request to `endpoint` with `body`.
pub async fn mount(server: &MockServer, endpoint: &str, body: Value) {
    Mock::given(method(verb(endpoint)))
        .and(path(api(endpoint)))
        .respond_with(ok(body))
        .mount(server)
        .await;
}

/// Requests the server received on `endpoint`, in order.
pub async fn received(server: &MockServer, endpoint: &str) -> Vec<Request> {
    let want = api(endpoint);
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .into_iter()
        .filter(|r| r.url.path() == want)
        .collect()
}

/// The JSON body of a POST request.
pub fn body(r: &Request) -> Value {
    r.body_json().expect("JSON body")
}

/// A port on 127.0.0.1 nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// One experiment, two ended runs, model `m` with `champion` on version 2.
pub async fn mount_small_install(server: &MockServer) {
    mount(
        server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "e")]}),
    )
    .await;
    mount(
        server,
        RUNS,
        json!({"runs": [run(1, "1", "FINISHED"), run(2, "1", "FAILED")]}),
    )
    .await;
    mount(
        server,
        MODELS,
        json!({"registered_models": [{"name": "m", "aliases": [{"alias": "champion", "version": "2"}]}]}),
    )
    .await;
    mount(
        server,
        VERSIONS,
        json!({"model_versions": [{"name": "m", "version": "2", "current_stage": "None",
                                   "status": "READY", "last_updated_timestamp": 5}]}),
    )
    .await;
}
