//! Counters Prometheus can trust, against a real MLflow seeded by tests/fixtures/seed.py: `mlflow
//! gc` of counted runs, a full resync, a value overtaking others under a small
//! `metrics.max_label_values`, and restarts (with a gc while the exporter was down) lower no
//! counter or histogram series and remove none; what MLflow no longer shows is counted as a
//! correction, once.

use std::path::Path;
use std::process::Command;

use crate::support::exporter::{example_config, ExporterProcess};
use crate::support::http::{http_post, wait_until};
use crate::support::mlflow::MlflowServer;
use crate::support::scrape::{assert_counters_kept, process_counter, scrape, Scrape};
use crate::support::{now_ms, project_dir, venv_bin};
use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{FlagOverrides, Settings};
use mlflow_exporter::sync::Mode;

const MIN: i64 = 60_000;

fn settings(server: &MlflowServer, store: &Path) -> Settings {
    let env = [("MLFLOW_TRACKING_URI".to_string(), server.url.clone())].into();
    let flags = FlagOverrides {
        storage_path: Some(store.display().to_string()),
        ..FlagOverrides::default()
    };
    let mut s = Settings::load(Some(&example_config()), &env, &flags).unwrap();
    s.metrics.max_label_values = 2;
    s
}

/// `mlflow gc` of runs (deleted first, as gc requires), on the server's store.
fn gc(server: &MlflowServer, run_ids: &[&str]) {
    for id in run_ids {
        let r = http_post(
            &server.addr,
            "/api/2.0/mlflow/runs/delete",
            &[("Content-Type", "application/json")],
            format!(r#"{{"run_id":"{id}"}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let out = Command::new(venv_bin("mlflow"))
        .args(["gc", "--backend-store-uri"])
        .arg(format!(
            "sqlite:///{}",
            server.dir.path().join("mlflow.db").display()
        ))
        .args(["--run-ids", &run_ids.join(",")])
        .env("MLFLOW_TRACKING_URI", &server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlflow gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn corrections(s: &Scrape) -> Vec<(String, f64)> {
    s.family("mlflow_exporter_corrections_total")
        .into_iter()
        .filter(|(_, v)| *v != 0.0)
        .map(|(l, v)| (l["family"].clone(), v))
        .collect()
}

/// Runs ended of an experiment and status, whatever their estimator.
fn ended(s: &Scrape, experiment: &str, status: &str) -> f64 {
    s.family("mlflow_runs_ended_total")
        .iter()
        .filter(|(l, _)| l["experiment"] == experiment && l["status"] == status)
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_resyncs_overtaking_and_restarts_lower_no_counter() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| server.seed(t, "initial"));
    let state = server.seed_state();
    let run = |key: &str| state["runs"][key].as_str().unwrap().to_string();
    let store = server.dir.path().join("events.db");
    let settings = settings(&server, &store);
    let h = |secs: f64, rate: f64| secs * rate / 3600.0;

    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    assert_eq!(pipeline.cycle(t + MIN).await.unwrap().mode, Mode::Full);
    let s1 = scrape(&pipeline.publisher);
    // Two experiments keep their own series: vision (6 runs) and forecast (4); nlp (3), old-exp
    // (2) and Default (none) are __other__.
    assert_eq!(ended(&s1, "vision", "FINISHED"), 3.0);
    assert_eq!(ended(&s1, "__other__", "FINISHED"), 3.0);
    assert!(corrections(&s1).is_empty());

    // gc of r6 (FINISHED, 1 h on g5.xlarge at 1.2 an hour, one GPU by the rate; deleted already)
    // and r2 (FAILED, 10 min on g5.xlarge), then a full resync.
    tokio::task::block_in_place(|| gc(&server, &[&run("r6"), &run("r2")]));
    pipeline.syncer.full(t + 2 * MIN).await.unwrap();
    pipeline.publish(t + 2 * MIN).await;
    let s2 = scrape(&pipeline.publisher);
    let compared = assert_counters_kept(&s1, &s2, |_| false);
    assert!(compared > 300, "{compared}");
    assert_eq!(ended(&s2, "vision", "FINISHED"), 3.0);
    assert_eq!(ended(&s2, "vision", "FAILED"), 1.0);
    assert_eq!(pipeline.syncer.snapshot().runs.len(), 11);
    // gc also removed the deleted experiment old-exp for good, with r12 (FINISHED, 1 h) and r13
    // (FAILED, 5 min), both on the 0.5 default rate.
    let after_gc = vec![
        ("mlflow_experiments_created_total".to_string(), 1.0),
        ("mlflow_run_compute_seconds_total".to_string(), 8100.0),
        (
            "mlflow_run_cost_total".to_string(),
            h(4200.0, 1.2) + h(3900.0, 0.5),
        ),
        ("mlflow_run_duration_seconds".to_string(), 4.0),
        ("mlflow_run_gpu_seconds_total".to_string(), 4200.0),
        ("mlflow_runs_ended_total".to_string(), 4.0),
        ("mlflow_runs_started_total".to_string(), 4.0),
    ];
    assert_eq!(corrections(&s2).len(), after_gc.len());
    for ((family, got), (want_family, want)) in corrections(&s2).iter().zip(&after_gc) {
        assert_eq!(family, want_family);
        assert!((got - want).abs() < 1e-9, "{family}: {got} != {want}");
    }

    // nlp gets six more runs (9 now) and overtakes vision (4 left): nothing moves between series.
    tokio::task::block_in_place(|| server.seed(t, "overtake"));
    assert_eq!(
        pipeline.cycle(t + 3 * MIN).await.unwrap().mode,
        Mode::Incremental
    );
    let s3 = scrape(&pipeline.publisher);
    assert_counters_kept(&s2, &s3, |_| false);
    assert_eq!(ended(&s3, "__other__", "FINISHED"), 3.0 + 6.0);
    assert_eq!(ended(&s3, "vision", "FINISHED"), 3.0);
    assert!(s3
        .family("mlflow_runs_ended_total")
        .keys()
        .all(|l| l["experiment"] != "nlp"));
    // A full read of the same MLflow changes nothing.
    pipeline.syncer.full(t + 3 * MIN).await.unwrap();
    pipeline.publish(t + 3 * MIN).await;
    let s3 = scrape(&pipeline.publisher);
    assert_counters_kept(&s2, &s3, |_| false);
    assert_eq!(corrections(&s3), corrections(&s2));

    // Stopped; r5 (KILLED, 30 min, no instance type: the 0.5 default) is removed meanwhile; a
    // restart on the same store counts it as a correction, and lowers nothing.
    drop(pipeline);
    tokio::task::block_in_place(|| gc(&server, &[&run("r5")]));
    let mut pipeline = Pipeline::open(&settings, t + 4 * MIN).await.unwrap();
    assert_eq!(pipeline.cycle(t + 4 * MIN).await.unwrap().mode, Mode::Full);
    let s4 = scrape(&pipeline.publisher);
    assert_counters_kept(&s3, &s4, process_counter);
    let mut want = after_gc.clone();
    for (family, v) in want.iter_mut() {
        *v += match family.as_str() {
            "mlflow_run_compute_seconds_total" => 1800.0,
            "mlflow_run_cost_total" => h(1800.0, 0.5),
            "mlflow_run_gpu_seconds_total" | "mlflow_experiments_created_total" => 0.0,
            _ => 1.0,
        };
    }
    let got = corrections(&s4);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((family, got), (want_family, want)) in got.iter().zip(&want) {
        assert_eq!(family, want_family);
        assert!((got - want).abs() < 1e-9, "{family}: {got} != {want}");
    }
    // Another restart, nothing removed: the same figures, no correction counted twice.
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, t + 5 * MIN).await.unwrap();
    pipeline.cycle(t + 5 * MIN).await.unwrap();
    let s5 = scrape(&pipeline.publisher);
    assert_counters_kept(&s4, &s5, process_counter);
    assert_eq!(corrections(&s5), corrections(&s4));
}

/// Families a fresh install does not have until its data exists; README ("Series from the start")
/// names each and why.
const LATE: &[&str] = &[
    // No HTTPS endpoint is probed.
    "mlflow_probe_tls_cert_expiry_timestamp_seconds",
    // Nothing was deployed yet: no version was replaced, no lead time measured.
    "mlflow_model_replaced_metric",
    "mlflow_model_last_lead_time_seconds",
    // MLflow 3's prompt registry holds no prompt yet: nothing for a prompt series to count.
    "mlflow_prompts",
    "mlflow_prompt_versions_created_total",
    "mlflow_prompt_deployments_total",
    "mlflow_prompt_rollbacks_total",
    "mlflow_prompt_lead_time_seconds",
    // No GenAI app has logged a trace yet.
    "mlflow_traces_total",
    "mlflow_trace_duration_seconds",
    "mlflow_trace_tokens_total",
    "mlflow_trace_cost_total",
    "mlflow_app_active_users",
    "mlflow_app_active_sessions",
    // What LLM judges cost: from an app's first trace; feedback: from its first feedback of a name.
    "mlflow_trace_judge_cost_total",
    "mlflow_trace_feedback_total",
    "mlflow_trace_feedback_score",
    // An app's LLM calls: from the first window of its traces with a call naming a model.
    "mlflow_trace_llm_calls_total",
    "mlflow_trace_llm_cost_total",
    // Traces by logged model: from an app's first trace naming one.
    "mlflow_logged_model_traces_total",
    // What the rate card priced: from the first call it prices (none without cost.token_rates).
    "mlflow_trace_rated_tokens_total",
    "mlflow_trace_rated_cost_total",
];

/// Every `mlflow_…` family a board's queries or a rule reads (recording rules' names, with a `:`,
/// are not families of the exporter).
fn families_read() -> std::collections::BTreeSet<String> {
    let ident = regex::Regex::new(r"\bmlflow_[a-zA-Z0-9_]*").unwrap();
    let dir = |d: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(project_dir().join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let mut out = std::collections::BTreeSet::new();
    for path in dir("grafana/dashboards")
        .into_iter()
        .chain(dir("deploy/prometheus/rules"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        // The queries: a board's `expr`s (its descriptions name label values too), a rule file whole.
        let text = if path.extension().is_some_and(|e| e == "json") {
            let board: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut exprs = Vec::new();
            collect_exprs(&board, &mut exprs);
            exprs.join("\n")
        } else {
            text
        };
        for m in ident.find_iter(&text) {
            let end = m.end();
            // A recording rule's name, or a label value (`source="mlflow_webhook"`).
            let before = &text[..m.start()];
            let value = ["=\"", "~\""].iter().any(|q| before.ends_with(q));
            if text[end..].starts_with(':') || value {
                continue;
            }
            let name = m.as_str();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
    }
    out
}

/// Every `expr` string anywhere in a board (panels, rows, variables).
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr" | "query" | "definition", Some(e)) => out.push(e.to_string()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// A fresh install on a registry with serving aliases, nothing deployed and no incident yet: every
/// family the boards and the rules read is in the first scrape, but those of [`LATE`].
#[test]
fn a_fresh_install_serves_every_family_boards_and_rules_read() {
    let server = MlflowServer::start();
    server.seed(now_ms() / 1000 * 1000, "initial");
    let mut exporter = ExporterProcess::start(
        server.dir.path(),
        &["--config.file", example_config().to_str().unwrap()],
        &[("MLFLOW_TRACKING_URI", &server.url)],
    );
    exporter.wait_ready();
    // The /health probe's first result.
    wait_until(
        std::time::Duration::from_secs(20),
        "the first probe",
        || !exporter.scrape().family("mlflow_probe_success").is_empty(),
    );
    let s = exporter.scrape();
    let read = families_read();
    assert!(read.len() > 40, "{read:?}");
    let missing: Vec<&String> = read
        .iter()
        .filter(|f| !LATE.contains(&f.as_str()))
        .filter(|f| {
            !s.samples.contains_key(*f)
                && !["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|x| s.samples.contains_key(&format!("{f}{x}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in a fresh install's scrape: {missing:?}"
    );
    for late in LATE {
        assert!(read.contains(*late), "{late} is read by no board or rule");
        assert!(!s.samples.contains_key(*late), "{late} is there after all");
    }
    // The README says which families come late, and why.
    let readme = std::fs::read_to_string(project_dir().join("README.md")).unwrap();
    let section = readme
        .split("### Series from the start")
        .nth(1)
        .expect("README has a section on series from the start");
    for late in LATE {
        assert!(section.contains(late), "README does not explain {late}");
    }
    // Incidents of each served model at each configured severity, at 0.
    for model in ["churn-model", "fraud-model"] {
        for sev in ["critical", "warning"] {
            let l = [("model", model), ("severity", sev)];
            assert_eq!(s.get("mlflow_incidents_total", &l), 0.0);
            assert_eq!(s.get("mlflow_incidents_open", &l), 0.0);
        }
    }
}
