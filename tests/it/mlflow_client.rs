//! Integration tests of the MLflow client and the syncer against a wiremock MLflow: paging, page-token
//! loops, retries, auth headers, timeouts, connection and decode errors, latency recording and sync requests.

use std::time::{Duration, Instant};

use mlflow_exporter::config::{MlflowSettings, Secret, Settings};
use mlflow_exporter::error::MlflowError;
use mlflow_exporter::source::mlflow::client::RunsQuery;
use mlflow_exporter::source::mlflow::model::Run;
use mlflow_exporter::source::mlflow::MlflowClient;
use mlflow_exporter::sync::snapshot::run_key;
use mlflow_exporter::sync::{Mode, Syncer};
use prometheus::{HistogramOpts, HistogramVec};
use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::mock_mlflow::*;

/// Settings pointing at `uri`, with fast retries and a generous timeout.
fn settings(uri: &str) -> Settings {
    let mut s = Settings::default();
    s.mlflow.tracking_uri = uri.to_string();
    s.mlflow.retry_backoff = Duration::from_millis(10);
    s.mlflow.max_retries = 3;
    s.mlflow.timeout = Duration::from_secs(5);
    s
}

fn client(s: &Settings) -> MlflowClient {
    MlflowClient::new(&s.mlflow, None).expect("client builds")
}

/// What a test keeps of a page of runs: (run id, status) of each.
fn ids_and_statuses(page: Vec<Run>) -> Vec<(String, String)> {
    page.iter()
        .map(|r| (r.info.run_id.to_string(), r.info.status.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Paging

#[tokio::test]
async fn experiments_are_read_over_three_pages_in_order() {
    let server = MockServer::start().await;
    let pages = [
        (
            Value::Null,
            json!({"experiments": [experiment("1", "a"), experiment("2", "b")], "next_page_token": "p2"}),
        ),
        (
            json!("p2"),
            json!({"experiments": [experiment("3", "c")], "next_page_token": "p3"}),
        ),
        (json!("p3"), json!({"experiments": [experiment("4", "d")]})),
    ];
    for (token, answer) in pages {
        Mock::given(method("POST"))
            .and(path(api(EXPERIMENTS)))
            .and(body_partial_json(json!({"page_token": token})))
            .respond_with(ok(answer))
            .expect(1)
            .mount(&server)
            .await;
    }
    let (exps, requests) = client(&settings(&server.uri()))
        .experiments()
        .await
        .unwrap();
    assert_eq!(requests, 3);
    let got: Vec<(&str, &str)> = exps
        .iter()
        .map(|e| (e.experiment_id.as_str(), e.name.as_str()))
        .collect();
    assert_eq!(got, [("1", "a"), ("2", "b"), ("3", "c"), ("4", "d")]);
    assert_eq!(exps[0].tags[0].key, "team");
    assert_eq!(exps[0].tags[0].value, "a");

    let reqs = received(&server, EXPERIMENTS).await;
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        body(&reqs[0]),
        json!({"view_type": "ALL", "max_results": 50000, "order_by": ["experiment_id ASC"], "page_token": null})
    );
    let tokens: Vec<Value> = reqs.iter().map(|r| body(r)["page_token"].clone()).collect();
    assert_eq!(tokens, [Value::Null, json!("p2"), json!("p3")]);
}

/// A full read of many experiments searches groups of them two at a time: every group is paged to
/// its end, every run arrives once, and the requests are counted over all groups.
#[tokio::test]
async fn a_full_read_searches_groups_of_experiments_side_by_side() {
    let server = MockServer::start().await;
    let ids: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    // Groups of 25, 25 and 10 (see `experiment_groups`), two pages each.
    for (g, group) in ids.chunks(25).enumerate() {
        let g = g as u32;
        let (first, second) = (format!("g{g}-p2"), Value::Null);
        for (token, answer) in [
            (
                Value::Null,
                json!({"runs": [run(10 * g + 1, &group[0], "FINISHED")], "next_page_token": first}),
            ),
            (
                json!(first),
                json!({"runs": [run(10 * g + 2, &group[1], "FAILED")], "next_page_token": second}),
            ),
        ] {
            Mock::given(method("POST"))
                .and(path(api(RUNS)))
                .and(body_partial_json(
                    json!({"experiment_ids": group, "page_token": token, "filter": ""}),
                ))
                // The first group's first page is slow: the others are read meanwhile.
                .respond_with(ok(answer).set_delay(if g == 0 && token.is_null() {
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                }))
                .expect(1)
                .mount(&server)
                .await;
        }
    }
    let mut s = settings(&server.uri());
    s.mlflow.concurrency = 2;
    let mut seen = Vec::new();
    let requests = client(&s)
        .runs(&ids, RunsQuery::All, ids_and_statuses, |page| {
            seen.extend(page.into_iter().map(|(id, _)| id))
        })
        .await
        .unwrap();
    assert_eq!(requests, 6);
    // While the first group waits, the second is read to its end and the third takes its place.
    assert_eq!(seen, [11, 12, 21, 22, 1, 2].map(run_id));
}

#[tokio::test]
async fn runs_are_read_over_three_pages_in_order_and_requests_counted() {
    let server = MockServer::start().await;
    let pages = [
        (
            Value::Null,
            json!({"runs": [run(1, "1", "FINISHED"), run(2, "1", "FAILED")], "next_page_token": "t2"}),
        ),
        (
            json!("t2"),
            json!({"runs": [run(3, "2", "RUNNING"), run(4, "2", "KILLED")], "next_page_token": "t3"}),
        ),
        (
            json!("t3"),
            json!({"runs": [run(5, "2", "FINISHED")], "next_page_token": ""}),
        ),
    ];
    for (token, answer) in pages {
        Mock::given(method("POST"))
            .and(path(api(RUNS)))
            .and(body_partial_json(json!({"page_token": token})))
            .respond_with(ok(answer))
            .expect(1)
            .mount(&server)
            .await;
    }
    let mut s = settings(&server.uri());
    s.mlflow.page_size = 2;
    let ids = vec!["1".to_string(), "2".to_string()];
    let mut pages_seen = Vec::new();
    let requests = client(&s)
        .runs(&ids, RunsQuery::All, ids_and_statuses, |page| {
            pages_seen.push(page)
        })
        .await
        .unwrap();
    assert_eq!(requests, 3);
    assert_eq!(
        pages_seen,
        vec![
            vec![
                (run_id(1), "FINISHED".to_string()),
                (run_id(2), "FAILED".to_string())
            ],
            vec![
                (run_id(3), "RUNNING".to_string()),
                (run_id(4), "KILLED".to_string())
            ],
            vec![(run_id(5), "FINISHED".to_string())],
        ]
    );

    let reqs = received(&server, RUNS).await;
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        body(&reqs[0]),
        json!({
            "experiment_ids": ["1", "2"],
            "filter": "",
            "run_view_type": "ALL",
            "max_results": 2,
            "order_by": ["attributes.start_time ASC", "attributes.run_id ASC"],
            "page_token": null,
        })
    );
    let tokens: Vec<Value> = reqs.iter().map(|r| body(r)["page_token"].clone()).collect();
    assert_eq!(tokens, [Value::Null, json!("t2"), json!("t3")]);
    // Each page of a full read on a connection of its own, so that a server with several workers
    // hands the next page to a free one.
    assert_eq!(connection_headers(&reqs), ["close", "close", "close"]);
}

/// The `Connection` header of each request ("" when none).
fn connection_headers(reqs: &[wiremock::Request]) -> Vec<&str> {
    reqs.iter()
        .map(|r| {
            r.headers
                .get("connection")
                .map_or("", |v| v.to_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn with_keep_alive_only_a_full_reads_runs_pages_close_their_connections() {
    let server = MockServer::start().await;
    mount_small_install(&server).await;
    let mut s = settings(&server.uri());
    assert!(!s.mlflow.keep_alive, "off by default");
    s.mlflow.keep_alive = true;
    let c = client(&s);
    c.experiments().await.unwrap();
    let ids = vec!["1".to_string()];
    c.runs(&ids, RunsQuery::All, ids_and_statuses, |_| {})
        .await
        .unwrap();
    c.runs(
        &ids,
        RunsQuery::Filter("attributes.status = 'RUNNING'"),
        ids_and_statuses,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        connection_headers(&received(&server, EXPERIMENTS).await),
        [""]
    );
    // The full read's page closes; the filtered search keeps its connection.
    assert_eq!(
        connection_headers(&received(&server, RUNS).await),
        ["close", ""]
    );
}

#[tokio::test]
async fn registered_models_page_through_the_page_token_query_param() {
    let server = MockServer::start().await;
    let model =
        |name: &str| json!({"name": name, "aliases": [{"alias": "champion", "version": "2"}]});
    Mock::given(method("GET"))
        .and(path(api(MODELS)))
        .and(query_param_is_missing("page_token"))
        .and(query_param("max_results", "1000"))
        .and(query_param("order_by", "name ASC"))
        .respond_with(ok(
            json!({"registered_models": [model("a")], "next_page_token": "m2"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(api(MODELS)))
        .and(query_param("page_token", "m2"))
        .respond_with(ok(
            json!({"registered_models": [model("b")], "next_page_token": "m3"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(api(MODELS)))
        .and(query_param("page_token", "m3"))
        .respond_with(ok(json!({"registered_models": [model("c")]})))
        .expect(1)
        .mount(&server)
        .await;

    let (models, requests) = client(&settings(&server.uri()))
        .registered_models()
        .await
        .unwrap();
    assert_eq!(requests, 3);
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(models[2].aliases.len(), 1);
    assert_eq!(models[2].aliases[0].alias, "champion");
    assert_eq!(models[2].aliases[0].version, "2");
    assert_eq!(received(&server, MODELS).await.len(), 3);
}

#[tokio::test]
async fn a_page_token_that_repeats_forever_stops_with_page_loop() {
    let server = MockServer::start().await;
    mount(
        &server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "e")], "next_page_token": "again"}),
    )
    .await;
    // Bounded, so that a regression fails instead of hanging.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        client(&settings(&server.uri())).experiments(),
    )
    .await
    .expect("the page walk stops")
    .unwrap_err();
    match &err {
        MlflowError::PageLoop { endpoint, token } => {
            assert_eq!(*endpoint, EXPERIMENTS);
            assert_eq!(token, "again");
        }
        other => panic!("expected PageLoop, got {other:?}"),
    }
    assert_eq!(err.reason(), "decode");
    // The first page hands out "again", the second repeats it: the walk stops there.
    assert_eq!(received(&server, EXPERIMENTS).await.len(), 2);
}

// ---------------------------------------------------------------------------------------------------
// Retries

/// Answers `endpoint` with `first` `times` times, then with `then`.
async fn mount_then(
    server: &MockServer,
    endpoint: &str,
    first: ResponseTemplate,
    times: u64,
    then: ResponseTemplate,
) {
    Mock::given(method(verb(endpoint)))
        .and(path(api(endpoint)))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method(verb(endpoint)))
        .and(path(api(endpoint)))
        .respond_with(then)
        .with_priority(2)
        .mount(server)
        .await;
}

#[tokio::test]
async fn two_503s_then_200_succeeds_after_exactly_three_requests() {
    let server = MockServer::start().await;
    mount_then(
        &server,
        EXPERIMENTS,
        ResponseTemplate::new(503),
        2,
        ok(json!({"experiments": [experiment("7", "seven")]})),
    )
    .await;
    let (exps, requests) = client(&settings(&server.uri()))
        .experiments()
        .await
        .unwrap();
    // Retries are not counted as pages.
    assert_eq!(requests, 1);
    assert_eq!(exps.len(), 1);
    assert_eq!(exps[0].experiment_id, "7");
    assert_eq!(received(&server, EXPERIMENTS).await.len(), 3);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let server = MockServer::start().await;
    mount_then(
        &server,
        MODELS,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        1,
        ok(json!({"registered_models": [{"name": "m"}]})),
    )
    .await;
    let started = Instant::now();
    let (models, requests) = client(&settings(&server.uri()))
        .registered_models()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(requests, 1, "retries are not counted as pages");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name, "m");
    assert_eq!(received(&server, MODELS).await.len(), 2);
    // The backoff is 10 ms: only honouring Retry-After makes the retry wait a second.
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn a_400_is_not_retried_and_carries_mlflows_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": "bad filter"
        })))
        .mount(&server)
        .await;
    let err = client(&settings(&server.uri()))
        .runs(
            &["1".to_string()],
            RunsQuery::Filter("nonsense"),
            ids_and_statuses,
            |_| {},
        )
        .await
        .unwrap_err();
    match &err {
        MlflowError::Status {
            endpoint,
            status,
            error_code,
            message,
            ..
        } => {
            assert_eq!(*endpoint, RUNS);
            assert_eq!(*status, 400);
            assert_eq!(error_code, "INVALID_PARAMETER_VALUE");
            assert_eq!(message, "bad filter");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert_eq!(err.reason(), "client_error");
    assert_eq!(
        err.to_string(),
        "MLflow answered runs/search with HTTP 400 INVALID_PARAMETER_VALUE: bad filter"
    );
    let reqs = received(&server, RUNS).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(body(&reqs[0])["filter"], "nonsense");
}

#[tokio::test]
async fn a_404_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(api(VERSIONS)))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "error_code": "ENDPOINT_NOT_FOUND",
            "message": "No API route"
        })))
        .mount(&server)
        .await;
    let err = client(&settings(&server.uri()))
        .model_versions(None)
        .await
        .unwrap_err();
    match &err {
        MlflowError::Status {
            endpoint,
            status,
            error_code,
            message,
            ..
        } => {
            assert_eq!(*endpoint, VERSIONS);
            assert_eq!(*status, 404);
            assert_eq!(error_code, "ENDPOINT_NOT_FOUND");
            assert_eq!(message, "No API route");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert_eq!(err.reason(), "client_error");
    assert_eq!(received(&server, VERSIONS).await.len(), 1);
}

#[tokio::test]
async fn server_errors_beyond_max_retries_fail_after_max_retries_plus_one_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(api(EXPERIMENTS)))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "error_code": "INTERNAL_ERROR",
            "message": "database is locked"
        })))
        .mount(&server)
        .await;
    let mut s = settings(&server.uri());
    s.mlflow.max_retries = 2;
    let err = client(&s).experiments().await.unwrap_err();
    match &err {
        MlflowError::Status {
            status,
            error_code,
            message,
            ..
        } => {
            assert_eq!(*status, 500);
            assert_eq!(error_code, "INTERNAL_ERROR");
            assert_eq!(message, "database is locked");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert_eq!(err.reason(), "server_error");
    assert_eq!(received(&server, EXPERIMENTS).await.len(), 3);
}

// ---------------------------------------------------------------------------------------------------
// Auth

/// The Authorization header of the one request a client with these credentials sends.
async fn authorization_sent(
    username: Option<&str>,
    password: Option<&str>,
    token: Option<&str>,
) -> Option<String> {
    let server = MockServer::start().await;
    mount(&server, EXPERIMENTS, json!({})).await;
    let mut s = settings(&server.uri());
    s.mlflow.username = username.map(str::to_string);
    s.mlflow.password = password.map(Secret::new);
    s.mlflow.token = token.map(Secret::new);
    assert!(client(&s).experiments().await.unwrap().0.is_empty());
    let reqs = received(&server, EXPERIMENTS).await;
    assert_eq!(reqs.len(), 1);
    reqs[0]
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn username_and_password_send_basic_auth() {
    // base64("alice:s3cret")
    assert_eq!(
        authorization_sent(Some("alice"), Some("s3cret"), None)
            .await
            .as_deref(),
        Some("Basic YWxpY2U6czNjcmV0")
    );
}

#[tokio::test]
async fn a_token_alone_sends_bearer_auth() {
    assert_eq!(
        authorization_sent(None, None, Some("tok-123"))
            .await
            .as_deref(),
        Some("Bearer tok-123")
    );
}

#[tokio::test]
async fn basic_auth_wins_over_a_token() {
    // base64("svc:pw")
    assert_eq!(
        authorization_sent(Some("svc"), Some("pw"), Some("tok-123"))
            .await
            .as_deref(),
        Some("Basic c3ZjOnB3")
    );
}

#[tokio::test]
async fn no_credentials_send_no_authorization_header() {
    assert_eq!(authorization_sent(None, None, None).await, None);
}

// ---------------------------------------------------------------------------------------------------
// Transport and decode failures

#[tokio::test]
async fn a_slow_answer_times_out_and_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(api(EXPERIMENTS)))
        .respond_with(ok(json!({})).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let mut s = settings(&server.uri());
    s.mlflow.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = client(&s).experiments().await.unwrap_err();
    let took = started.elapsed();
    match &err {
        MlflowError::Timeout { endpoint, timeout } => {
            assert_eq!(*endpoint, EXPERIMENTS);
            assert_eq!(*timeout, Duration::from_millis(200));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(err.reason(), "timeout");
    assert!(took < Duration::from_millis(1500), "gave up after {took:?}");
    assert_eq!(received(&server, EXPERIMENTS).await.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let mut s = settings(&format!("http://127.0.0.1:{}", closed_port()));
    s.mlflow.max_retries = 1;
    let err = client(&s).experiments().await.unwrap_err();
    assert!(
        matches!(
            err,
            MlflowError::Connect {
                endpoint: EXPERIMENTS,
                ..
            }
        ),
        "expected Connect, got {err:?}"
    );
    assert_eq!(err.reason(), "connect");
}

#[tokio::test]
async fn truncated_json_is_a_decode_error_naming_the_endpoint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"runs": ["#))
        .mount(&server)
        .await;
    let err = client(&settings(&server.uri()))
        .runs(&["1".to_string()], RunsQuery::All, ids_and_statuses, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, MlflowError::Decode { endpoint: RUNS, .. }),
        "expected Decode, got {err:?}"
    );
    assert_eq!(err.reason(), "decode");
    let text = err.to_string();
    assert!(
        text.starts_with("MLflow's answer to runs/search is not the JSON expected: "),
        "{text}"
    );
    assert_eq!(
        received(&server, RUNS).await.len(),
        1,
        "decode errors are not retried"
    );
}

// ---------------------------------------------------------------------------------------------------
// Syncer

const NOW: i64 = 1_700_000_000_000;

/// One experiment, two ended runs, one model with an alias and one version.
#[tokio::test]
async fn a_failed_cycle_keeps_the_last_good_snapshot() {
    let server = MockServer::start().await;
    mount_small_install(&server).await;
    let s = settings(&server.uri());
    let mut syncer = Syncer::new(client(&s), &s);

    let report = syncer.full(NOW).await.unwrap();
    assert_eq!(report.mode, Mode::Full);
    assert_eq!(report.requests, 4);
    assert_eq!(report.runs_read, 2);

    let check = |syncer: &Syncer| {
        let snap = syncer.snapshot();
        let mut runs: Vec<u128> = snap.runs.keys().collect();
        runs.sort();
        assert_eq!(runs, [run_key(&run_id(1)), run_key(&run_id(2))]);
        assert_eq!(snap.experiments.len(), 1);
        let (id, exp) = snap.experiments.iter().next().unwrap();
        assert_eq!(snap.strings.get(*id), "1");
        assert_eq!(snap.strings.get(exp.name), "e");
        assert_eq!(exp.team.map(|t| snap.strings.get(t)), Some("a"));
        assert_eq!(snap.models.len(), 1);
        let (name, model) = snap.models.iter().next().unwrap();
        assert_eq!(snap.strings.get(*name), "m");
        let aliases: Vec<(&str, u32)> = model
            .aliases
            .iter()
            .map(|(a, v)| (snap.strings.get(*a), *v))
            .collect();
        assert_eq!(aliases, [("champion", 2)]);
        assert_eq!(snap.versions.len(), 1);
    };
    check(&syncer);

    server.reset().await;
    mount(
        &server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "e")]}),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"runs": ["#))
        .mount(&server)
        .await;
    mount(&server, MODELS, json!({})).await;
    mount(&server, VERSIONS, json!({})).await;

    let err = syncer.full(NOW + 60_000).await.unwrap_err();
    assert!(
        matches!(err, MlflowError::Decode { endpoint: RUNS, .. }),
        "{err:?}"
    );
    check(&syncer);
    let err = syncer.incremental(NOW + 120_000).await.unwrap_err();
    assert!(
        matches!(err, MlflowError::Decode { endpoint: RUNS, .. }),
        "{err:?}"
    );
    check(&syncer);
    assert!(syncer.has_synced());
}

#[tokio::test]
async fn latency_is_recorded_for_every_attempt() {
    let server = MockServer::start().await;
    mount_then(
        &server,
        EXPERIMENTS,
        ResponseTemplate::new(503),
        1,
        ok(json!({"experiments": [experiment("1", "e")]})),
    )
    .await;
    let latency = HistogramVec::new(
        HistogramOpts::new("mlflow_request_seconds", "MLflow request latency"),
        &["endpoint"],
    )
    .unwrap();
    let s = settings(&server.uri());
    let c = MlflowClient::new(&s.mlflow, Some(latency.clone())).unwrap();
    assert_eq!(c.experiments().await.unwrap().0.len(), 1);

    let families = prometheus::core::Collector::collect(&latency);
    assert_eq!(families.len(), 1);
    let series = families[0].get_metric();
    assert_eq!(series.len(), 1, "one endpoint was called");
    assert_eq!(series[0].get_label()[0].name(), "endpoint");
    assert_eq!(series[0].get_label()[0].value(), EXPERIMENTS);
    assert_eq!(
        latency.with_label_values(&[EXPERIMENTS]).get_sample_count(),
        2
    );
}

/// Forgets every mock, then answers with one experiment and nothing else.
async fn mount_empty_install(server: &MockServer) {
    mount_empty_install_of(server, json!([experiment("1", "e")])).await;
}

/// Forgets every mock, then answers with `experiments` and nothing else.
async fn mount_empty_install_of(server: &MockServer, experiments: Value) {
    server.reset().await;
    mount(server, EXPERIMENTS, json!({ "experiments": experiments })).await;
    mount(server, RUNS, json!({})).await;
    mount(server, MODELS, json!({})).await;
    mount(server, VERSIONS, json!({})).await;
}

/// Settings for `server` with one of the intervals that default to every cycle set to 5 minutes.
fn every_5m(server: &str, interval: fn(&mut MlflowSettings) -> &mut Duration) -> Settings {
    let mut s = settings(server);
    let every = interval(&mut s.mlflow);
    assert_eq!(*every, Duration::ZERO, "every cycle by default");
    *every = Duration::from_secs(300);
    s
}

/// The filters of the runs searches `server` received, sorted (they are sent at once).
async fn runs_filters(server: &MockServer) -> Vec<String> {
    let mut f: Vec<String> = received(server, RUNS)
        .await
        .iter()
        .map(|r| body(r)["filter"].as_str().unwrap().to_string())
        .collect();
    f.sort_unstable();
    f
}

#[tokio::test]
async fn between_running_searches_a_cycle_searches_the_runs_started_since_its_cursor() {
    let server = MockServer::start().await;
    mount_empty_install(&server).await;
    // The full read finds run 3 running; the cycles after it get empty answers.
    let runs = json!({"runs": [run(1, "1", "FINISHED"), run(3, "1", "RUNNING")]});
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .respond_with(ok(runs))
        .with_priority(1)
        .mount(&server)
        .await;
    let s = every_5m(&server.uri(), |m| &mut m.running_interval);
    let overlap_ms = s.mlflow.sync_overlap.as_millis() as i64;
    let mut syncer = Syncer::new(client(&s), &s);
    syncer.full(NOW).await.unwrap();

    // A minute later: runs that ended or started since the cursor; run 3, held as running and in
    // neither answer, is not read by id. Experiments, two runs searches, models, versions.
    mount_empty_install(&server).await;
    let report = syncer.incremental(NOW + 60_000).await.unwrap();
    assert_eq!(report.requests, 5);
    let since = NOW - overlap_ms;
    assert_eq!(
        runs_filters(&server).await,
        [
            format!("attributes.end_time >= {since}"),
            format!("attributes.start_time >= {since}"),
        ]
    );

    // Five minutes after the full read the running runs are due: searched, and run 3 read by id.
    mount_empty_install(&server).await;
    let report = syncer.incremental(NOW + 300_000).await.unwrap();
    assert_eq!(report.requests, 6);
    let since = NOW + 60_000 - overlap_ms;
    assert_eq!(
        runs_filters(&server).await,
        [
            format!("attributes.end_time >= {since}"),
            format!("attributes.run_id IN ('{}')", run_id(3)),
            "attributes.status = 'RUNNING'".to_string(),
        ]
    );

    // And a minute after that, not again.
    mount_empty_install(&server).await;
    syncer.incremental(NOW + 360_000).await.unwrap();
    let since = NOW + 300_000 - overlap_ms;
    assert_eq!(
        runs_filters(&server).await,
        [
            format!("attributes.end_time >= {since}"),
            format!("attributes.start_time >= {since}"),
        ]
    );
}

#[tokio::test]
async fn an_incremental_cycle_reads_models_every_registry_interval_and_looks_back_by_the_overlap() {
    let server = MockServer::start().await;
    mount_small_install(&server).await;
    let s = every_5m(&server.uri(), |m| &mut m.registry_interval);
    let overlap_ms = s.mlflow.sync_overlap.as_millis() as i64;
    let registry_ms = 300_000;
    let mut syncer = Syncer::new(client(&s), &s);
    syncer.full(NOW).await.unwrap();

    // Empty answers everywhere but the experiments: without an experiment there is no runs search.
    mount_empty_install(&server).await;

    // A minute after the full read the registered models are not due: four requests.
    let report = syncer.incremental(NOW + 60_000).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental);
    assert_eq!(report.requests, 4);
    assert_eq!(report.runs_read, 0);
    let all = server.received_requests().await.unwrap();
    // Asked at once (two at a time): in any order.
    let mut paths: Vec<&str> = all.iter().map(|r| r.url.path()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [api(EXPERIMENTS), api(VERSIONS), api(RUNS), api(RUNS)]
    );
    assert_eq!(
        runs_filters(&server).await,
        [
            "attributes.end_time >= 1699999700000",
            "attributes.status = 'RUNNING'",
        ]
    );
    assert_eq!(NOW - overlap_ms, 1_699_999_700_000);
    // A connection per request (`mlflow.keep_alive` off): MLflow's multi-worker server answers a
    // reused connection 40 ms late.
    assert_eq!(connection_headers(&all), ["close"; 4]);
    // Since a cursor, versions come in pages of 100 (the full read asked for the page size).
    let versions = &received(&server, VERSIONS).await[0];
    assert!(
        versions
            .url
            .query_pairs()
            .any(|(k, v)| k == "max_results" && v == "100"),
        "{}",
        versions.url
    );
    // Nothing changed, and skipping the models kept them: the snapshot still holds both runs and
    // the model.
    assert_eq!(syncer.snapshot().runs.len(), 2);
    assert_eq!(syncer.snapshot().models.len(), 1);

    // One registry interval after the full read, the models are read again: five requests.
    mount_empty_install(&server).await;
    let report = syncer.incremental(NOW + registry_ms).await.unwrap();
    assert_eq!(report.requests, 5);
    let all = server.received_requests().await.unwrap();
    let mut paths: Vec<&str> = all.iter().map(|r| r.url.path()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            api(EXPERIMENTS),
            api(VERSIONS),
            api(MODELS),
            api(RUNS),
            api(RUNS),
        ]
    );
    // MLflow now lists no model, so the model and its versions are gone.
    assert_eq!(syncer.snapshot().models.len(), 0);
    assert_eq!(syncer.snapshot().versions.len(), 0);
}

#[tokio::test]
async fn an_incremental_cycle_searches_the_runs_of_an_experiment_created_since_the_last() {
    let server = MockServer::start().await;
    mount_small_install(&server).await;
    let s = settings(&server.uri());
    let mut syncer = Syncer::new(client(&s), &s);
    syncer.full(NOW).await.unwrap();

    // Experiment 2 appeared, with a run already running: the searches over the experiments known
    // at the full read cannot see it.
    let two = json!([experiment("1", "e"), experiment("2", "new")]);
    mount_empty_install_of(&server, two.clone()).await;
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .and(body_partial_json(json!({"experiment_ids": ["2"]})))
        .respond_with(ok(json!({"runs": [run(3, "2", "RUNNING")]})))
        .with_priority(1)
        .mount(&server)
        .await;

    let report = syncer.incremental(NOW + 60_000).await.unwrap();
    // Five as usual, then the two runs searches over experiment 2 alone.
    assert_eq!(report.requests, 7);
    let mut searched: Vec<(Value, String)> = received(&server, RUNS)
        .await
        .iter()
        .map(|r| {
            let b = body(r);
            (
                b["experiment_ids"].clone(),
                b["filter"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    searched.sort_by_key(|(ids, filter)| (ids.to_string(), filter.clone()));
    let ended = "attributes.end_time >= 1699999700000".to_string();
    let running = "attributes.status = 'RUNNING'".to_string();
    assert_eq!(
        searched,
        [
            (json!(["1"]), ended.clone()),
            (json!(["1"]), running.clone()),
            (json!(["2"]), ended),
            (json!(["2"]), running),
        ]
    );
    // The mock answers both searches over experiment 2 with the run: read twice, held once.
    assert_eq!(report.runs_read, 2);
    assert_eq!(syncer.snapshot().runs.len(), 3);
    assert_eq!(syncer.snapshot().experiments.len(), 2);

    // The next cycle searches both experiments together. Run 3, held as running, is in neither
    // answer of the empty install now, so it is read by id: six requests, all over both.
    mount_empty_install_of(&server, two).await;
    let report = syncer.incremental(NOW + 120_000).await.unwrap();
    assert_eq!(report.requests, 6);
    for r in received(&server, RUNS).await {
        assert_eq!(body(&r)["experiment_ids"], json!(["1", "2"]));
    }
}

#[tokio::test]
async fn a_full_cycle_counts_every_experiments_page() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(api(EXPERIMENTS)))
        .and(body_partial_json(json!({"page_token": null})))
        .respond_with(ok(
            json!({"experiments": [experiment("1", "a")], "next_page_token": "p2"}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(api(EXPERIMENTS)))
        .and(body_partial_json(json!({"page_token": "p2"})))
        .respond_with(ok(json!({"experiments": [experiment("2", "b")]})))
        .mount(&server)
        .await;
    mount(&server, RUNS, json!({})).await;
    mount(&server, MODELS, json!({})).await;
    mount(&server, VERSIONS, json!({})).await;
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/server-info"))
        .respond_with(ok(json!({"workspaces_enabled": false})))
        .mount(&server)
        .await;
    mount(&server, LOGGED_MODELS, json!({})).await;
    mount(&server, TRACES, json!({})).await;
    let s = settings(&server.uri());
    let mut syncer = Syncer::new(client(&s), &s);
    let report = syncer.full(NOW).await.unwrap();
    assert_eq!(syncer.snapshot().experiments.len(), 2);
    let sent = server.received_requests().await.unwrap().len();
    // The server's info + 2 experiments pages + 1 runs page + 1 models page + 1 versions page
    // + (an MLflow 3) 1 logged-models page, 1 prompts page, 1 prompt versions page, 1 traces page.
    assert_eq!(sent, 10);
    // CycleReport.requests is documented as "HTTP requests that returned a page (retries not counted)".
    assert_eq!(report.requests, sent);
}

// ---------------------------------------------------------------------------------------------------
// Workspaces (MLflow 3)

#[tokio::test]
async fn server_info_says_whether_workspaces_are_on_and_an_older_server_has_none() {
    let server = MockServer::start().await;
    let c = client(&settings(&server.uri()));
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/server-info"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"store_type": "SqlStore", "workspaces_enabled": true})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let info = c.server_info().await.unwrap().unwrap();
    assert!(info.workspaces_enabled);
    // MLflow 2 has no such endpoint: a 404, read as "no workspaces", not as a failure.
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/server-info"))
        .respond_with(ResponseTemplate::new(404).set_body_string("<html>Not Found</html>"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    assert_eq!(c.server_info().await.unwrap(), None);
    // Anything else is an error of the cycle, with its reason.
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/server-info"))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(json!({"error_code": "PERMISSION_DENIED", "message": "no"})),
        )
        .mount(&server)
        .await;
    assert_eq!(c.server_info().await.unwrap_err().reason(), "auth");
}

#[tokio::test]
async fn a_workspace_client_names_its_workspace_on_every_request_and_lists_them() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/workspaces"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"workspaces": [
                {"name": "default", "description": "Default workspace"},
                {"name": "team-b"},
            ]})),
        )
        .mount(&server)
        .await;
    mount(
        &server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "a")]}),
    )
    .await;
    let base = client(&settings(&server.uri()));
    assert_eq!(base.workspaces().await.unwrap(), ["default", "team-b"]);
    assert_eq!(base.workspace(), None);
    base.experiments().await.unwrap();
    let team_b = base.in_workspace("team-b");
    assert_eq!(team_b.workspace(), Some("team-b"));
    team_b.experiments().await.unwrap();
    let sent: Vec<Option<String>> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("x-mlflow-workspace")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(sent, [None, None, Some("team-b".to_string())]);
}

/// A workspace-enabled MLflow that lists `workspaces`.
async fn mount_workspaces(server: &MockServer, workspaces: &[&str]) {
    let listed: Vec<Value> = workspaces.iter().map(|w| json!({ "name": w })).collect();
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/server-info"))
        .respond_with(ok(json!({"workspaces_enabled": true})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/workspaces"))
        .respond_with(ok(json!({ "workspaces": listed })))
        .mount(server)
        .await;
}

/// Answers `endpoint` in workspace `ws` with `answer`.
async fn mount_in(server: &MockServer, ws: &str, endpoint: &str, answer: ResponseTemplate) {
    Mock::given(method(verb(endpoint)))
        .and(path(api(endpoint)))
        .and(wiremock::matchers::header("x-mlflow-workspace", ws))
        .respond_with(answer)
        .mount(server)
        .await;
}

/// Workspace `ws` with experiment `id` (named `e` in every workspace) and the runs `runs` in it.
async fn mount_part(server: &MockServer, ws: &str, id: &str, runs: &[u32]) {
    let runs: Vec<Value> = runs.iter().map(|n| run(*n, id, "FINISHED")).collect();
    mount_in(
        server,
        ws,
        EXPERIMENTS,
        ok(json!({"experiments": [experiment(id, "e")]})),
    )
    .await;
    mount_in(server, ws, RUNS, ok(json!({ "runs": runs }))).await;
    let model = json!({"registered_models": [{"name": "m", "aliases": [{"alias": "champion", "version": "1"}]}]});
    mount_in(server, ws, MODELS, ok(model)).await;
    let version = json!({"model_versions": [{"name": "m", "version": "1", "creation_timestamp": 5, "last_updated_timestamp": 5}]});
    mount_in(server, ws, VERSIONS, ok(version)).await;
    mount_in(server, ws, LOGGED_MODELS, ok(json!({}))).await;
    mount_in(server, ws, TRACES, ok(json!({}))).await;
}

/// Names of the snapshot's experiments, models and versions, and its runs, sorted.
fn parts(syncer: &Syncer) -> (Vec<String>, Vec<String>, Vec<String>, Vec<u128>) {
    let snap = syncer.snapshot();
    let s = &snap.strings;
    let mut exps: Vec<String> = snap
        .experiments
        .values()
        .map(|e| s.get(e.name).to_string())
        .collect();
    exps.sort();
    let models: Vec<String> = snap.models.keys().map(|m| s.get(*m).to_string()).collect();
    let mut versions: Vec<String> = snap
        .versions
        .keys()
        .map(|(m, n)| format!("{}:{n}", s.get(*m)))
        .collect();
    versions.sort();
    let mut runs: Vec<u128> = snap.runs.keys().collect();
    runs.sort();
    (exps, models, versions, runs)
}

#[tokio::test]
async fn each_selected_workspace_is_read_and_one_that_fails_keeps_its_last_records() {
    let server = MockServer::start().await;
    mount_workspaces(&server, &["default", "team-b", "sandbox"]).await;
    mount_part(&server, "default", "1", &[1]).await;
    mount_part(&server, "team-b", "2", &[2]).await;
    let mut s = settings(&server.uri());
    s.mlflow.workspaces.exclude = vec!["sandbox".into()];
    let mut syncer = Syncer::new(client(&s), &s);

    let report = syncer.full(NOW).await.unwrap();
    assert!(report.failed.is_empty());
    assert_eq!(report.workspaces, 2);
    // Server info and the list, then 8 searches in each workspace (logged models, prompts,
    // prompt versions and traces too).
    assert_eq!(report.requests, 2 + 2 * 8);
    assert!(syncer.workspaces_enabled());
    assert_eq!(syncer.workspaces(), ["default", "team-b"]);
    let both = (
        vec!["default/e".to_string(), "team-b/e".to_string()],
        vec!["default/m".to_string(), "team-b/m".to_string()],
        vec!["default/m:1".to_string(), "team-b/m:1".to_string()],
        vec![run_key(&run_id(1)), run_key(&run_id(2))],
    );
    assert_eq!(parts(&syncer), both);
    let snap = syncer.snapshot();
    let team_b = snap.strings.lookup("team-b");
    let m = snap.strings.lookup("team-b/m").unwrap();
    assert_eq!(snap.models[&m].workspace, team_b);
    // The excluded workspace is never asked.
    let asked: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.headers.get("x-mlflow-workspace"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(!asked.contains(&"sandbox".to_string()), "{asked:?}");
    assert_eq!(asked.len(), 16);

    // team-b answers 503 from now on; default gains run 3.
    server.reset().await;
    mount_workspaces(&server, &["default", "team-b", "sandbox"]).await;
    mount_part(&server, "default", "1", &[1, 3]).await;
    mount_in(&server, "team-b", EXPERIMENTS, ResponseTemplate::new(503)).await;
    let report = syncer.full(NOW + 60_000).await.unwrap();
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|(w, e)| (w.as_str(), e.reason()))
        .collect();
    assert_eq!(failed, [("team-b", "server_error")]);
    let mut kept = both.clone();
    kept.3 = vec![
        run_key(&run_id(1)),
        run_key(&run_id(2)),
        run_key(&run_id(3)),
    ];
    assert_eq!(parts(&syncer), kept);
    // Nothing of team-b is gone: its runs are not found removed, and a full read that failed in
    // a part does not say what is gone (the tally would count as removed what a workspace it
    // could not read holds).
    let (gone, full) = syncer.take_gone();
    assert!(gone.is_empty());
    assert!(!full, "a partial full read is not a full one");
    let report = syncer.incremental(NOW + 120_000).await.unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(parts(&syncer), kept);

    // A workspace created since is read whole at the next cycle, incremental or not; team-b is
    // back, and one deleted from MLflow is gone at the next full cycle.
    server.reset().await;
    mount_workspaces(&server, &["default", "team-c"]).await;
    mount_part(&server, "default", "1", &[1, 3]).await;
    mount_part(&server, "team-c", "4", &[4]).await;
    let report = syncer.incremental(NOW + 180_000).await.unwrap();
    assert!(report.failed.is_empty());
    assert_eq!(syncer.workspaces(), ["default", "team-c"]);
    let (exps, _, _, runs) = parts(&syncer);
    assert_eq!(exps, ["default/e", "team-b/e", "team-c/e"]);
    assert_eq!(runs.len(), 4);
    syncer.full(NOW + 240_000).await.unwrap();
    let (exps, models, _, runs) = parts(&syncer);
    assert_eq!(exps, ["default/e", "team-c/e"]);
    assert_eq!(models, ["default/m", "team-c/m"]);
    assert_eq!(
        runs,
        [
            run_key(&run_id(1)),
            run_key(&run_id(3)),
            run_key(&run_id(4))
        ]
    );
    let (gone, full) = syncer.take_gone();
    assert!(full);
    assert_eq!(
        gone.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [run_key(&run_id(2))]
    );
}

// ---------------------------------------------------------------------------------------------------
// MLflow 3's aggregations and whole traces, as faults make them

/// `traces/metrics` answers that MLflow does not write on its own: a second page, a group without
/// a model, values of the wrong type. Both pages are read, the odd groups left out, never a panic;
/// an answer that is not JSON is a `decode` failure the cycle reports.
#[tokio::test]
async fn llm_calls_read_every_page_and_leave_odd_groups_out() {
    let server = MockServer::start().await;
    let point = |model: Value, agg: &str, v: Value| json!({"metric_name": "m", "dimensions": {"span_model_name": model}, "values": {agg: v}});
    for (metric, agg, first, second) in [
        ("span_count", "COUNT", json!(4.0), json!(2.0)),
        ("total_cost", "SUM", json!(0.25), json!("x")),
    ] {
        Mock::given(method("POST"))
            .and(path("/api/3.0/mlflow/traces/metrics"))
            .and(body_partial_json(json!({"metric_name": metric, "page_token": null})))
            .respond_with(ok(json!({
                "data_points": [point(json!("gpt-4o"), agg, first), point(Value::Null, agg, json!(9.0)), "odd"],
                "next_page_token": "p2",
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/3.0/mlflow/traces/metrics"))
            .and(body_partial_json(
                json!({"metric_name": metric, "page_token": "p2"}),
            ))
            .respond_with(ok(
                json!({"data_points": [point(json!("house-llm"), agg, second)]}),
            ))
            .mount(&server)
            .await;
    }
    let c = client(&settings(&server.uri()));
    let (calls, requests) = c.llm_calls("7", None, 1_000).await.unwrap();
    assert_eq!(requests, 4);
    let got: Vec<(String, u64, f64)> = calls
        .into_iter()
        .map(|c| (c.model, c.calls, c.cost))
        .collect();
    // A cost that is no number is no cost; the group without a model is left out.
    assert_eq!(
        got,
        [("gpt-4o".into(), 4, 0.25), ("house-llm".into(), 2, 0.0)]
    );

    let broken = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/3.0/mlflow/traces/metrics"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"))
        .mount(&broken)
        .await;
    let err = client(&settings(&broken.uri()))
        .llm_calls("7", Some(0), 1_000)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "decode");
}

/// `traces/batchGet` (the rate card's whole traces): each id asked for once in one request; a
/// server error is retried and then reported with its reason, not a panic.
#[tokio::test]
async fn span_calls_ask_for_every_trace_in_one_request_and_report_failures() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/traces/batchGet"))
        .respond_with(ok(json!({"traces": [
            {"trace_info": {"trace_id": "tr-1"}, "spans": [{"attributes": [
                {"key": "mlflow.llm.model", "value": {"string_value": "house-llm"}},
                {"key": "mlflow.chat.tokenUsage", "value": {"kvlist_value": {"values": [
                    {"key": "input_tokens", "value": {"int_value": "7"}}]}}}]}]},
            {"trace_info": {"trace_id": "tr-2"}, "spans": "not a list"}
        ]})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let c = client(&settings(&server.uri()));
    let got = c
        .span_calls(&["tr-1".to_string(), "tr-2".to_string()])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "tr-1");
    assert_eq!(
        (
            got[0].1[0].model.as_str(),
            got[0].1[0].input_tokens,
            got[0].1[0].priced
        ),
        ("house-llm", 7, false)
    );
    assert!(got[1].1.is_empty());
    let asked = server.received_requests().await.unwrap();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].url.query(), Some("trace_ids=tr-1&trace_ids=tr-2"));
    Mock::given(method("GET"))
        .and(path("/api/3.0/mlflow/traces/batchGet"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let err = c.span_calls(&["tr-1".to_string()]).await.unwrap_err();
    assert_eq!(err.reason(), "server_error");
    // The first answer, then the first try and three retries of the second.
    assert_eq!(server.received_requests().await.unwrap().len(), 1 + 4);
}
