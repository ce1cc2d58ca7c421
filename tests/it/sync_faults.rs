//! Faults of MLflow a real server will not produce on demand, each met by the whole pipeline (sync,
//! derive, publish) against a wiremock MLflow: after a good cycle, a faulty one must leave every
//! derived figure as it was, say so with `mlflow_up 0`, an unchanged last-sync time and one count of
//! the right reason; and the next good cycle must recover by itself.

use std::time::Duration;

use crate::support::mock_mlflow::*;
use crate::support::now_ms;
use crate::support::scrape::{assert_family, scrape, Scrape};
use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::Settings;
use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TIMEOUT: Duration = Duration::from_millis(500);

fn settings(uri: &str, dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.mlflow.tracking_uri = uri.to_string();
    s.mlflow.timeout = TIMEOUT;
    s.mlflow.max_retries = 1;
    s.mlflow.retry_backoff = Duration::from_millis(10);
    s.mlflow.max_response_bytes = 16 * 1024;
    s.probes.mlflow_health = false;
    s.storage.path = dir.join("events.db");
    s
}

/// The derived figures of a scrape: every line but the exporter's own health and process metrics.
fn figures(s: &Scrape) -> Vec<String> {
    s.text
        .lines()
        .filter(|l| {
            !(l.contains("mlflow_up") || l.contains("mlflow_exporter_") || l.contains("process_"))
        })
        .map(String::from)
        .collect()
}

/// A fault: what MLflow answers during it, and the reason the failed cycle is counted under.
struct Fault {
    name: &'static str,
    reason: &'static str,
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "down",
        reason: "connect",
    },
    Fault {
        name: "slower than the timeout",
        reason: "timeout",
    },
    Fault {
        name: "5xx storm",
        reason: "server_error",
    },
    Fault {
        name: "429 with Retry-After",
        reason: "server_error",
    },
    Fault {
        name: "truncated JSON",
        reason: "decode",
    },
    Fault {
        name: "invalid JSON",
        reason: "decode",
    },
    Fault {
        name: "larger than the cap",
        reason: "too_large",
    },
    Fault {
        name: "a page token that repeats forever",
        reason: "decode",
    },
    Fault {
        name: "interrupted half way",
        reason: "server_error",
    },
];

/// Mounts the fault on a server that answers experiments normally, so that the runs search is
/// where it strikes (the model searches answer too, to show they change nothing).
async fn mount_fault(server: &MockServer, name: &str) {
    mount(
        server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "e")]}),
    )
    .await;
    mount(server, MODELS, json!({})).await;
    mount(server, VERSIONS, json!({})).await;
    let runs = Mock::given(method("POST")).and(path(api(RUNS)));
    let answer = match name {
        "slower than the timeout" => ok(json!({})).set_delay(TIMEOUT * 3),
        "5xx storm" => ResponseTemplate::new(503).set_body_string("overloaded"),
        "429 with Retry-After" => ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        "truncated JSON" => ResponseTemplate::new(200).set_body_string(r#"{"runs": [{"info": "#),
        "invalid JSON" => ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"),
        "larger than the cap" => {
            let many: Vec<_> = (0..100).map(|n| run(n, "1", "FINISHED")).collect();
            ok(json!({ "runs": many }))
        }
        "a page token that repeats forever" => {
            ok(json!({"runs": [run(7, "1", "FINISHED")], "next_page_token": "same"}))
        }
        "interrupted half way" => {
            // Page one is good and announces page two; page two fails.
            Mock::given(method("POST"))
                .and(path(api(RUNS)))
                .and(body_partial_json(json!({"page_token": "p2"})))
                .respond_with(ResponseTemplate::new(503))
                .mount(server)
                .await;
            ok(json!({"runs": [run(7, "1", "FAILED")], "next_page_token": "p2"}))
        }
        other => panic!("no fault {other}"),
    };
    runs.respond_with(answer).mount(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_leaves_the_figures_as_they_were_says_so_and_recovers() {
    for fault in FAULTS {
        let dir = tempfile::tempdir().unwrap();
        // Not from wiremock's pool: a pooled server lives on when dropped.
        let server = MockServer::builder().start().await;
        let addr = *server.address();
        mount_small_install(&server).await;
        let s = settings(&server.uri(), dir.path());
        let mut pipeline = Pipeline::open(&s, now_ms()).await.unwrap();
        let publisher = pipeline.publisher.clone();

        pipeline.cycle(now_ms()).await.unwrap();
        let good = scrape(&publisher);
        assert_eq!(good.get("mlflow_up", &[]), 1.0);
        assert_eq!(good.get("mlflow_exporter_snapshot_runs", &[]), 2.0);
        let last_sync = good.get("mlflow_exporter_last_sync_timestamp_seconds", &[]);
        assert!(last_sync > 0.0);
        let expected = figures(&good);
        assert!(
            expected.iter().any(|l| l.starts_with("mlflow_runs{")),
            "{expected:?}"
        );

        // The fault. "Down" stops the server; every other one answers wrongly.
        let server = if fault.name == "down" {
            drop(server);
            None
        } else {
            server.reset().await;
            mount_fault(&server, fault.name).await;
            Some(server)
        };
        let err = pipeline.cycle(now_ms()).await.expect_err(fault.name);
        assert_eq!(err.reason(), fault.reason, "{}: {err}", fault.name);
        let bad = scrape(&publisher);
        assert_eq!(bad.get("mlflow_up", &[]), 0.0, "{}", fault.name);
        assert_eq!(
            bad.get("mlflow_exporter_last_sync_timestamp_seconds", &[]),
            last_sync,
            "{}",
            fault.name
        );
        assert_eq!(
            bad.get(
                "mlflow_exporter_sync_errors_total",
                &[("reason", fault.reason), ("workspace", "")]
            ),
            1.0,
            "{}",
            fault.name
        );
        assert_eq!(figures(&bad), expected, "{}: figures changed", fault.name);
        assert_eq!(bad.get("mlflow_exporter_snapshot_runs", &[]), 2.0);

        // MLflow answers again (on the same address when it was down): recovered, nothing kept of
        // the fault (run 7 of the half-read page is not there).
        let server = match server {
            Some(s) => {
                s.reset().await;
                s
            }
            None => {
                let listener = std::net::TcpListener::bind(addr).unwrap();
                MockServer::builder().listener(listener).start().await
            }
        };
        mount_small_install(&server).await;
        pipeline.cycle(now_ms()).await.unwrap();
        let after = scrape(&publisher);
        assert_eq!(after.get("mlflow_up", &[]), 1.0, "{}", fault.name);
        assert!(after.get("mlflow_exporter_last_sync_timestamp_seconds", &[]) >= last_sync);
        assert_eq!(
            after.get("mlflow_exporter_snapshot_runs", &[]),
            2.0,
            "{}",
            fault.name
        );
        assert_eq!(
            figures(&after),
            expected,
            "{}: recovered figures",
            fault.name
        );
        pipeline.recorder.store().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_connect_failure_and_nothing_is_served_as_up() {
    let dir = tempfile::tempdir().unwrap();
    // `.invalid` never resolves (RFC 2606).
    let s = settings("http://mlflow.invalid:5000", dir.path());
    let mut pipeline = Pipeline::open(&s, now_ms()).await.unwrap();
    let err = pipeline.cycle(now_ms()).await.unwrap_err();
    assert_eq!(err.reason(), "connect", "{err}");
    assert!(err.to_string().contains("MLFLOW_TRACKING_URI"), "{err}");
    let s = scrape(&pipeline.publisher);
    assert_eq!(s.get("mlflow_up", &[]), 0.0);
    assert_eq!(
        s.get(
            "mlflow_exporter_sync_errors_total",
            &[("reason", "connect"), ("workspace", "")]
        ),
        1.0
    );
    assert!(
        s.family("mlflow_runs").is_empty(),
        "no figures before a good sync"
    );
    pipeline.recorder.store().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_on_two_pages_counts_once_and_future_timestamps_stay_sane() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    mount(
        &server,
        EXPERIMENTS,
        json!({"experiments": [experiment("1", "e")]}),
    )
    .await;
    mount(&server, MODELS, json!({})).await;
    mount(&server, VERSIONS, json!({})).await;
    let now = now_ms();
    // Run 3 starts tomorrow (a client with a wrong clock) and ran for ten minutes.
    let mut future = run(3, "1", "FINISHED");
    future["info"]["start_time"] = json!(now + 86_400_000);
    future["info"]["end_time"] = json!(now + 86_400_000 + 600_000);
    // Page two repeats run 2 (an offset page shifted by a run created meanwhile) with a later status.
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .and(body_partial_json(json!({"page_token": "p2"})))
        .respond_with(ok(json!({"runs": [run(2, "1", "KILLED"), future]})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(api(RUNS)))
        .respond_with(ok(json!({
            "runs": [run(1, "1", "FINISHED"), run(2, "1", "FAILED")],
            "next_page_token": "p2"
        })))
        .mount(&server)
        .await;
    let s = settings(&server.uri(), dir.path());
    let mut pipeline = Pipeline::open(&s, now).await.unwrap();
    pipeline.cycle(now).await.unwrap();
    let s = scrape(&pipeline.publisher);
    assert_eq!(s.get("mlflow_exporter_snapshot_runs", &[]), 3.0);
    // Run 2 once, as its last answer says.
    assert_family(
        &s,
        "mlflow_runs",
        &[
            (&[("experiment", "e"), ("status", "FINISHED")], 2.0),
            (&[("experiment", "e"), ("status", "KILLED")], 1.0),
            (&[("experiment", "e"), ("status", "FAILED")], 0.0),
            (&[("experiment", "e"), ("status", "RUNNING")], 0.0),
            (&[("experiment", "e"), ("status", "SCHEDULED")], 0.0),
        ],
    );
    assert_eq!(
        s.get(
            "mlflow_run_duration_seconds_sum",
            &[("experiment", "e"), ("status", "FINISHED")]
        ),
        60.0 + 600.0
    );
    // No figure is negative, whatever the clock of the client that logged the run.
    for line in s.text.lines().filter(|l| !l.starts_with('#')) {
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= 0.0, "{line}");
    }
    pipeline.recorder.store().close().await;
}
