//! End to end against a real MLflow seeded with the known history of tests/fixtures/seed.py: every
//! metric's exact value after the first (full) sync, then after one incremental cycle that sees new
//! runs, an ended run, a new version and a moved alias. Expected values are worked out by hand there.

use crate::support::exporter::example_config;
use crate::support::mlflow::MlflowServer;
use crate::support::now_ms;
use crate::support::scrape::{assert_family, scrape, Scrape};
use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{FlagOverrides, Settings};
use mlflow_exporter::sync::snapshot::run_key;
use mlflow_exporter::sync::Mode;

const MIN: i64 = 60_000;

/// A family's samples: labels to value.
type Series = std::collections::BTreeMap<std::collections::BTreeMap<String, String>, f64>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_after_a_full_and_an_incremental_sync() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    exact_metrics(server, true).await;
}

/// The last MLflow 2 has none of MLflow 3's endpoints: read as before, the same figures, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_mlflow_2_gives_the_same_exact_metrics() {
    let server = tokio::task::block_in_place(MlflowServer::start_mlflow2);
    exact_metrics(server, false).await;
}

/// Every figure after the initial history and after the incremental one; `mlflow3` says whether
/// the server has MLflow 3's `server-info`.
async fn exact_metrics(server: MlflowServer, mlflow3: bool) {
    // T is whole seconds, so that every expected duration below is exact.
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| server.seed(t, "initial"));

    let config = example_config();
    let env = [("MLFLOW_TRACKING_URI".to_string(), server.url.clone())].into();
    let flags = FlagOverrides {
        storage_path: Some(server.dir.path().join("events.db").display().to_string()),
        ..FlagOverrides::default()
    };
    let settings = Settings::load(Some(&config), &env, &flags).unwrap();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    let publisher = pipeline.publisher.clone();

    // Before any sync: not up, nothing derived yet.
    let s = scrape(&publisher);
    assert_eq!(s.get("mlflow_up", &[]), 0.0);
    assert!(s.family("mlflow_runs").is_empty());

    // First sync at T + 1 min.
    let s1 = t + MIN;
    let report = pipeline.cycle(s1).await.unwrap();
    assert_eq!(report.mode, Mode::Full);
    // The server's info (MLflow 3: no workspaces; MLflow 2 has none, a 404), then experiments,
    // runs, registered models, model versions and (MLflow 3) logged models, prompts, prompt
    // versions and traces: one page each.
    assert_eq!(report.requests, 4 + 5 * usize::from(mlflow3));
    // Traces of every experiment, the deleted one's too, read without an error.
    assert!(
        report.traces_failed.is_empty(),
        "{:?}",
        report.traces_failed
    );
    assert_eq!(report.runs_read, 15);
    let s = scrape(&publisher);

    assert_eq!(s.get("mlflow_up", &[]), 1.0);
    let errors = s.family("mlflow_exporter_sync_errors_total");
    assert_eq!(errors.values().sum::<f64>(), 0.0, "{errors:?}");
    // What only MLflow 3 has: at 0 from the start there (this history logs no model), absent
    // from an MLflow 2.
    let registrations = s
        .family("mlflow_logged_model_time_to_registration_seconds_count")
        .into_values()
        .collect::<Vec<_>>();
    assert_eq!(registrations, if mlflow3 { vec![0.0] } else { vec![] });
    if !mlflow3 {
        assert!(s.family("mlflow_logged_models_created_total").is_empty());
    }
    assert_eq!(s.get("mlflow_exporter_snapshot_runs", &[]), 15.0);
    assert_eq!(
        s.get(
            "mlflow_exporter_api_request_duration_seconds_count",
            &[("endpoint", "runs/search")]
        ),
        1.0
    );
    assert!(s.get("mlflow_exporter_sync_duration_seconds", &[("mode", "full")]) > 0.0);
    assert!(s.get("mlflow_exporter_last_sync_timestamp_seconds", &[]) >= (t / 1000) as f64);

    // Inventory.
    assert_family(
        &s,
        "mlflow_experiments",
        &[
            (&[("lifecycle_stage", "active")], 4.0),
            (&[("lifecycle_stage", "deleted")], 1.0),
        ],
    );
    assert_family(&s, "mlflow_registered_models", &[(&[], 3.0)]);
    assert_family(
        &s,
        "mlflow_model_versions",
        &[
            (
                &[
                    ("model", "churn-model"),
                    ("stage", "None"),
                    ("status", "READY"),
                ],
                3.0,
            ),
            (
                &[
                    ("model", "fraud-model"),
                    ("stage", "Staging"),
                    ("status", "READY"),
                ],
                1.0,
            ),
            (
                &[
                    ("model", "fraud-model"),
                    ("stage", "Production"),
                    ("status", "READY"),
                ],
                1.0,
            ),
        ],
    );
    assert_family(
        &s,
        "mlflow_model_alias_version",
        &[
            (&[("model", "churn-model"), ("alias", "champion")], 2.0),
            (&[("model", "churn-model"), ("alias", "challenger")], 3.0),
        ],
    );

    // Runs shown by MLflow's UI: active runs of active experiments (r6 is deleted, old-exp too).
    let runs = |exp, counts: [f64; 5]| {
        ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]
            .into_iter()
            .zip(counts)
            .map(move |(st, n)| (exp, st, n))
    };
    let expect_runs = |s: &Scrape, rows: Vec<(&str, &str, f64)>| {
        let rows: Vec<([(&str, &str); 2], f64)> = rows
            .into_iter()
            .map(|(e, st, n)| ([("experiment", e), ("status", st)], n))
            .collect();
        let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, n)| (&l[..], *n)).collect();
        assert_family(s, "mlflow_runs", &rows);
    };
    expect_runs(
        &s,
        runs("Default", [0.0; 5])
            .chain(runs("vision", [1.0, 0.0, 2.0, 1.0, 1.0]))
            .chain(runs("nlp", [0.0, 0.0, 2.0, 1.0, 0.0]))
            .chain(runs("forecast", [1.0, 1.0, 1.0, 0.0, 1.0]))
            .collect(),
    );

    // Every ended run, deleted ones included, by experiment, status and estimator.
    let ended = |rows: &[(&str, &str, &str, f64)]| -> Vec<([(&'static str, String); 3], f64)> {
        rows.iter()
            .map(|(e, st, est, n)| {
                (
                    [
                        ("experiment", e.to_string()),
                        ("status", st.to_string()),
                        ("estimator", est.to_string()),
                    ],
                    *n,
                )
            })
            .collect()
    };
    let check_ended = |s: &Scrape, name: &str, rows: &[(&str, &str, &str, f64)]| {
        let owned = ended(rows);
        let labels: Vec<Vec<(&str, &str)>> = owned
            .iter()
            .map(|(l, _)| l.iter().map(|(k, v)| (*k, v.as_str())).collect())
            .collect();
        let rows: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&owned)
            .map(|(l, (_, n))| (&l[..], *n))
            .collect();
        assert_family(s, name, &rows);
    };
    let ended_1 = [
        ("vision", "FINISHED", "ResNet", 1.0),
        ("vision", "FAILED", "ResNet", 1.0),
        ("vision", "KILLED", "ResNet", 0.0),
        ("vision", "FINISHED", "", 1.0),
        ("vision", "FAILED", "", 0.0),
        ("vision", "KILLED", "", 1.0),
        ("vision", "FINISHED", "XGBoost", 1.0),
        ("vision", "FAILED", "XGBoost", 0.0),
        ("vision", "KILLED", "XGBoost", 0.0),
        ("nlp", "FINISHED", "BERT", 1.0),
        ("nlp", "FAILED", "BERT", 0.0),
        ("nlp", "KILLED", "BERT", 0.0),
        ("nlp", "FINISHED", "", 1.0),
        ("nlp", "FAILED", "", 1.0),
        ("nlp", "KILLED", "", 0.0),
        ("forecast", "FINISHED", "", 1.0),
        ("forecast", "FAILED", "", 0.0),
        ("forecast", "KILLED", "", 1.0),
        ("old-exp", "FINISHED", "", 1.0),
        ("old-exp", "FAILED", "", 1.0),
        ("old-exp", "KILLED", "", 0.0),
    ];
    check_ended(&s, "mlflow_runs_ended_total", &ended_1);

    // Durations: count and sum of each series with observations (seconds).
    let durations_1 = [
        ("vision", "FINISHED", "ResNet", 1.0, 3600.0),
        ("vision", "FAILED", "ResNet", 1.0, 600.0),
        ("vision", "FINISHED", "", 1.0, 3600.0),
        ("vision", "KILLED", "", 1.0, 1800.0),
        ("vision", "FINISHED", "XGBoost", 1.0, 7200.0),
        ("nlp", "FINISHED", "BERT", 1.0, 1800.0),
        ("nlp", "FINISHED", "", 1.0, 1200.0),
        ("nlp", "FAILED", "", 1.0, 60.0),
        ("forecast", "FINISHED", "", 1.0, 14400.0),
        ("forecast", "KILLED", "", 1.0, 900.0),
        ("old-exp", "FINISHED", "", 1.0, 3600.0),
        ("old-exp", "FAILED", "", 1.0, 300.0),
    ];
    // Every series of ended runs has its histogram; those not listed hold no observation.
    let check_durations = |s: &Scrape, rows: &[(&str, &str, &str, f64, f64)]| {
        let of = |e: &str, st: &str, x: &str| {
            rows.iter()
                .find(|r| (r.0, r.1, r.2) == (e, st, x))
                .map_or((0.0, 0.0), |r| (r.3, r.4))
        };
        let counts: Vec<_> = ended_1
            .iter()
            .map(|(e, st, x, _)| (*e, *st, *x, of(e, st, x).0))
            .collect();
        let sums: Vec<_> = ended_1
            .iter()
            .map(|(e, st, x, _)| (*e, *st, *x, of(e, st, x).1))
            .collect();
        check_ended(s, "mlflow_run_duration_seconds_count", &counts);
        check_ended(s, "mlflow_run_duration_seconds_sum", &sums);
    };
    check_durations(&s, &durations_1);
    // Buckets are cumulative and `le` is inclusive: a 7200 s run is in le=7200, not in le=3600.
    let bucket = |s: &Scrape, le: &str| {
        s.get(
            "mlflow_run_duration_seconds_bucket",
            &[
                ("experiment", "vision"),
                ("status", "FINISHED"),
                ("estimator", "XGBoost"),
                ("le", le),
            ],
        )
    };
    assert_eq!(
        ["60", "3600", "7200", "86400", "+Inf"].map(|le| bucket(&s, le)),
        [0.0, 0.0, 1.0, 1.0, 1.0]
    );

    // Users at T + 1 min (see the seed: alice, bob, carol, dave, erin, frank, gina).
    let users = |s: &Scrape, name: &str, v: [f64; 3]| {
        assert_family(
            s,
            name,
            &[
                (&[("window", "1d")], v[0]),
                (&[("window", "7d")], v[1]),
                (&[("window", "30d")], v[2]),
            ],
        );
    };
    assert_family(&s, "mlflow_users", &[(&[], 7.0)]);
    users(&s, "mlflow_active_users", [4.0, 5.0, 6.0]);
    users(&s, "mlflow_new_users", [1.0, 2.0, 4.0]);
    users(&s, "mlflow_churned_users", [1.0, 1.0, 1.0]);

    // Cost at T + 1 min: running runs are timed up to the sync (r3: 31 min, r11: 3 h 1 min).
    let cost_rows = |rows: &[(&'static str, &'static str, &'static str, f64)]| {
        rows.iter()
            .map(|(e, tm, it, v)| {
                (
                    [("experiment", *e), ("team", *tm), ("instance_type", *it)],
                    *v,
                )
            })
            .collect::<Vec<_>>()
    };
    let check_cost =
        |s: &Scrape, name: &str, rows: &[(&'static str, &'static str, &'static str, f64)]| {
            let rows = cost_rows(rows);
            let rows: Vec<(&[(&str, &str)], f64)> =
                rows.iter().map(|(l, v)| (&l[..], *v)).collect();
            assert_family(s, name, &rows);
        };
    let h = |secs: f64, rate: f64| secs * rate / 3600.0;
    check_cost(
        &s,
        "mlflow_run_compute_seconds_total",
        &[
            ("vision", "vision", "g5.xlarge", 7800.0),
            ("vision", "vision", "cpu.large", 1860.0),
            ("vision", "platform", "", 7200.0),
            ("vision", "vision", "", 1800.0),
            ("nlp", "nlp", "", 3060.0),
            ("forecast", "", "", 900.0),
            ("forecast", "", "g5.xlarge", 14400.0),
            ("forecast", "", "m5.large", 10860.0),
            ("old-exp", "vision", "", 3900.0),
        ],
    );
    check_cost(
        &s,
        "mlflow_run_cost_total",
        &[
            ("vision", "vision", "g5.xlarge", h(7800.0, 1.2)),
            ("vision", "vision", "cpu.large", h(1860.0, 0.1)),
            ("vision", "platform", "", h(7200.0, 0.5)),
            ("vision", "vision", "", h(1800.0, 0.5)),
            ("nlp", "nlp", "", h(3060.0, 0.5)),
            ("forecast", "", "", h(900.0, 0.5)),
            ("forecast", "", "g5.xlarge", h(14400.0, 1.2)),
            ("forecast", "", "m5.large", h(10860.0, 0.5)),
            ("old-exp", "vision", "", h(3900.0, 0.5)),
        ],
    );
    // GPUs: the g5.xlarge rate says 1 (r10 logged 4); cpu.large has no count, so r3's one logged GPU
    // counts; r11 (no rate) logged two.
    check_cost(
        &s,
        "mlflow_run_gpu_seconds_total",
        &[
            ("vision", "vision", "g5.xlarge", 7800.0),
            ("vision", "vision", "cpu.large", 1860.0),
            ("vision", "platform", "", 0.0),
            ("vision", "vision", "", 0.0),
            ("nlp", "nlp", "", 0.0),
            ("forecast", "", "", 0.0),
            ("forecast", "", "g5.xlarge", 14400.0),
            ("forecast", "", "m5.large", 21720.0),
            ("old-exp", "vision", "", 0.0),
        ],
    );
    assert_family(
        &s,
        "mlflow_exporter_cost_currency_info",
        &[(&[("currency", "USD")], 1.0)],
    );
    assert_family(
        &s,
        "mlflow_exporter_label_values_folded",
        &[
            (&[("label", "experiment")], 0.0),
            (&[("label", "team")], 0.0),
            (&[("label", "instance_type")], 0.0),
            (&[("label", "model")], 0.0),
            (&[("label", "estimator")], 0.0),
        ],
    );

    north_star(&s, &server, t, Phase::First);
    delivery(&s, &server, t, s1, Phase::First);

    // MLflow changes; the next cycle, at T + 2 min, is incremental.
    tokio::task::block_in_place(|| server.seed(t, "incremental"));
    let s2 = t + 2 * MIN;
    let report = pipeline.cycle(s2).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental);
    // experiments, ended runs, running runs, r11 read by id, registered models, model versions
    // (and on MLflow 3 the traces).
    assert_eq!(report.requests, 6 + usize::from(mlflow3));
    let s = scrape(&publisher);
    assert_eq!(s.get("mlflow_exporter_snapshot_runs", &[]), 17.0);
    assert_eq!(
        s.get(
            "mlflow_exporter_api_request_duration_seconds_count",
            &[("endpoint", "runs/search")]
        ),
        4.0
    );

    expect_runs(
        &s,
        runs("Default", [0.0; 5])
            .chain(runs("vision", [1.0, 0.0, 3.0, 1.0, 1.0]))
            .chain(runs("nlp", [0.0, 0.0, 3.0, 1.0, 0.0]))
            .chain(runs("forecast", [0.0, 1.0, 2.0, 0.0, 1.0]))
            .collect(),
    );
    let ended_2: Vec<_> = ended_1
        .iter()
        .map(|r| match (r.0, r.1, r.2) {
            ("vision", "FINISHED", "") => (r.0, r.1, r.2, 2.0), // r3 ended
            ("nlp", "FINISHED", "BERT") => (r.0, r.1, r.2, 2.0), // r16
            ("forecast", "FINISHED", "") => (r.0, r.1, r.2, 2.0), // r11, backdated
            _ => *r,
        })
        .collect();
    check_ended(&s, "mlflow_runs_ended_total", &ended_2);
    let durations_2: Vec<_> = durations_1
        .iter()
        .map(|r| match (r.0, r.1, r.2) {
            ("vision", "FINISHED", "") => (r.0, r.1, r.2, 2.0, 3600.0 + 1900.0),
            ("nlp", "FINISHED", "BERT") => (r.0, r.1, r.2, 2.0, 1800.0 + 1290.0),
            ("forecast", "FINISHED", "") => (r.0, r.1, r.2, 2.0, 14400.0 + 3600.0),
            _ => *r,
        })
        .collect();
    check_durations(&s, &durations_2);

    assert_family(&s, "mlflow_users", &[(&[], 7.0)]);
    // gina's new run makes her active again: no longer churned in the 1d window.
    users(&s, "mlflow_active_users", [5.0, 5.0, 6.0]);
    users(&s, "mlflow_new_users", [1.0, 2.0, 4.0]);
    users(&s, "mlflow_churned_users", [0.0, 1.0, 1.0]);

    check_cost(
        &s,
        "mlflow_run_compute_seconds_total",
        &[
            ("vision", "vision", "g5.xlarge", 7800.0 + 90.0),
            ("vision", "vision", "cpu.large", 1900.0),
            ("vision", "platform", "", 7200.0),
            ("vision", "vision", "", 1800.0),
            ("nlp", "nlp", "", 3060.0 + 1290.0),
            ("forecast", "", "", 900.0),
            ("forecast", "", "g5.xlarge", 14400.0),
            // r11 ran 1 h by its backdated end, less than the 3 h 1 min counted while it ran:
            // the counter keeps what it counted, and the 2 h 1 min are a correction (below).
            ("forecast", "", "m5.large", 10860.0),
            ("old-exp", "vision", "", 3900.0),
        ],
    );
    check_cost(
        &s,
        "mlflow_run_cost_total",
        &[
            ("vision", "vision", "g5.xlarge", h(7890.0, 1.2)),
            ("vision", "vision", "cpu.large", h(1900.0, 0.1)),
            ("vision", "platform", "", h(7200.0, 0.5)),
            ("vision", "vision", "", h(1800.0, 0.5)),
            ("nlp", "nlp", "", h(4350.0, 0.5)),
            ("forecast", "", "", h(900.0, 0.5)),
            ("forecast", "", "g5.xlarge", h(14400.0, 1.2)),
            ("forecast", "", "m5.large", h(10860.0, 0.5)),
            ("old-exp", "vision", "", h(3900.0, 0.5)),
        ],
    );
    check_cost(
        &s,
        "mlflow_run_gpu_seconds_total",
        &[
            ("vision", "vision", "g5.xlarge", 7890.0),
            ("vision", "vision", "cpu.large", 1900.0),
            ("vision", "platform", "", 0.0),
            ("vision", "vision", "", 0.0),
            ("nlp", "nlp", "", 0.0),
            ("forecast", "", "", 0.0),
            ("forecast", "", "g5.xlarge", 14400.0),
            ("forecast", "", "m5.large", 21720.0),
            ("old-exp", "vision", "", 0.0),
        ],
    );
    let corrections: Vec<(String, f64)> = [
        ("mlflow_run_compute_seconds_total", 7260.0),
        ("mlflow_run_cost_total", h(7260.0, 0.5)),
        ("mlflow_run_gpu_seconds_total", 14520.0),
    ]
    .into_iter()
    .map(|(f, v)| (f.to_string(), v))
    .collect();
    for (family, amount) in &corrections {
        assert_eq!(
            s.get("mlflow_exporter_corrections_total", &[("family", family)]),
            *amount,
            "{family}"
        );
    }
    assert_eq!(
        s.family("mlflow_exporter_corrections_total")
            .values()
            .sum::<f64>(),
        corrections.iter().map(|(_, v)| v).sum::<f64>()
    );
    assert_family(
        &s,
        "mlflow_model_versions",
        &[
            (
                &[
                    ("model", "churn-model"),
                    ("stage", "None"),
                    ("status", "READY"),
                ],
                4.0,
            ),
            (
                &[
                    ("model", "fraud-model"),
                    ("stage", "Staging"),
                    ("status", "READY"),
                ],
                1.0,
            ),
            (
                &[
                    ("model", "fraud-model"),
                    ("stage", "Production"),
                    ("status", "READY"),
                ],
                1.0,
            ),
        ],
    );
    assert_family(
        &s,
        "mlflow_model_alias_version",
        &[
            (&[("model", "churn-model"), ("alias", "champion")], 3.0),
            (&[("model", "churn-model"), ("alias", "challenger")], 3.0),
        ],
    );

    north_star(&s, &server, t, Phase::Second);
    delivery(&s, &server, t, s2, Phase::Second);

    // A full resync of the same MLflow gives the same figures as the incremental path.
    let incremental_text = s.text.clone();
    pipeline.syncer.full(s2).await.unwrap();
    pipeline.publish(s2).await;
    let full = scrape(&publisher);
    assert_eq!(derived(&full), derived(&Scrape::parse(&incremental_text)));
}

/// The samples derived from MLflow's data: the exporter's own and `mlflow_up` left out.
fn derived(s: &Scrape) -> Vec<(String, Series)> {
    s.samples
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("mlflow_exporter_") && !k.starts_with("process_") && *k != "mlflow_up"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// With `mlflow.running_interval`, a cycle between searches of the running runs finds the new runs
/// by their start time in a real MLflow, and the run ended with a backdated end time only once the
/// running runs are due; then the figures are those of a full read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_running_searches_new_runs_are_found_by_start_time() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| server.seed(t, "initial"));
    let env = [("MLFLOW_TRACKING_URI".to_string(), server.url.clone())].into();
    let flags = FlagOverrides {
        storage_path: Some(server.dir.path().join("events.db").display().to_string()),
        ..FlagOverrides::default()
    };
    let mut settings = Settings::load(Some(&example_config()), &env, &flags).unwrap();
    settings.mlflow.running_interval = std::time::Duration::from_secs(300);
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    assert_eq!(pipeline.cycle(t + MIN).await.unwrap().mode, Mode::Full);

    tokio::task::block_in_place(|| server.seed(t, "incremental"));
    let state = server.seed_state();
    let status = |p: &Pipeline, key: &str| {
        let id = state["runs"][key].as_str().unwrap();
        let snap = p.syncer.snapshot();
        format!("{:?}", snap.runs.get(&run_key(id)).unwrap().status)
    };
    // Experiments, runs ended and runs started since the cursor, models, versions, traces.
    let report = pipeline.cycle(t + 2 * MIN).await.unwrap();
    assert_eq!((report.mode, report.requests), (Mode::Incremental, 6));
    assert_eq!(pipeline.syncer.snapshot().runs.len(), 17);
    assert_eq!(status(&pipeline, "r16"), "Finished");
    assert_eq!(status(&pipeline, "r17"), "Running");
    assert_eq!(status(&pipeline, "r3"), "Finished");
    // Ended with an end time before the cursor: not seen yet.
    assert_eq!(status(&pipeline, "r11"), "Running");

    // Five minutes after the full read: the running runs are searched, and r11 read by id; the
    // prompt registry is due too (`mlflow.prompts_interval`: prompts and their versions).
    let report = pipeline.cycle(t + 6 * MIN).await.unwrap();
    assert_eq!((report.mode, report.requests), (Mode::Incremental, 7 + 2));
    assert_eq!(status(&pipeline, "r11"), "Finished");
    let incremental = scrape(&pipeline.publisher);

    pipeline.syncer.full(t + 6 * MIN).await.unwrap();
    pipeline.publish(t + 6 * MIN).await;
    assert_eq!(derived(&scrape(&pipeline.publisher)), derived(&incremental));
}

#[derive(PartialEq)]
enum Phase {
    First,
    Second,
}

/// Teams, usage, creations, activation, time to value, features, GPU use and model quality (the
/// north-star figures) in both phases; only the noted series change in the second.
fn north_star(s: &Scrape, server: &MlflowServer, t: i64, phase: Phase) {
    let second = phase == Phase::Second;
    assert_family(s, "mlflow_teams", &[(&[], 3.0)]);
    assert_family(
        s,
        "mlflow_active_teams",
        &[
            (&[("window", "1d")], 2.0),
            (&[("window", "7d")], 2.0),
            (&[("window", "30d")], 3.0),
        ],
    );
    let started = |e, tm, n| ([("experiment", e), ("team", tm)], n);
    let rows = [
        started("vision", "vision", if second { 6.0 } else { 5.0 }), // r17
        started("vision", "platform", 1.0),
        started("nlp", "nlp", if second { 4.0 } else { 3.0 }), // r16
        started("forecast", "", 3.0),                          // r9 is only scheduled
        started("old-exp", "vision", 2.0),
    ];
    let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, n)| (&l[..], *n)).collect();
    assert_family(s, "mlflow_runs_started_total", &rows);
    assert_family(
        s,
        "mlflow_experiments_created_total",
        &[
            (&[("team", "")], 2.0),
            (&[("team", "vision")], 2.0),
            (&[("team", "nlp")], 1.0),
        ],
    );
    assert_family(
        s,
        "mlflow_registered_models_created_total",
        &[
            (&[("team", "")], 1.0),
            (&[("team", "vision")], 1.0),
            (&[("team", "risk")], 1.0),
        ],
    );
    assert_family(
        s,
        "mlflow_model_versions_created_total",
        &[
            (&[("model", "churn-model")], if second { 4.0 } else { 3.0 }),
            (&[("model", "fraud-model")], 2.0),
        ],
    );

    // Activation: alice (r1), bob (r4), carol (r7), dave (r10) and frank (r14) have versions.
    assert_family(s, "mlflow_activated_users", &[(&[], 5.0)]);
    let state = server.seed_state();
    let created = |v: &str| state["versions"][v].as_i64().unwrap();
    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;
    // First version of each user's runs minus their first run's start.
    let ttv_ms = [
        created("churn-model/1") - (t - 3 * H),  // alice: r2
        created("churn-model/2") - (t - 50 * D), // bob: r12
        created("churn-model/3") - (t - 40 * D), // carol: r5
        created("fraud-model/1") - (t - 8 * D),  // dave: r10
        created("fraud-model/2") - (t - 9 * D),  // frank: r14
    ];
    let name = "mlflow_user_time_to_first_model_seconds";
    assert_eq!(s.get(&format!("{name}_count"), &[]), 5.0);
    assert_eq!(
        s.get(&format!("{name}_sum"), &[]),
        ttv_ms.iter().sum::<i64>() as f64 / 1000.0
    );
    for (le, hours) in [
        ("21600", 6),
        ("86400", 24),
        ("1209600", 336),
        ("5184000", 1440),
    ] {
        let want = ttv_ms.iter().filter(|ms| **ms <= hours * H).count() as f64;
        assert_eq!(
            s.get(&format!("{name}_bucket"), &[("le", le)]),
            want,
            "le={le}"
        );
    }
    // alice ≈ 3 h, dave ≈ 8 d and frank ≈ 9 d, bob ≈ 50 d and carol ≈ 40 d: three buckets apart.
    assert_eq!(s.get(&format!("{name}_bucket"), &[("le", "21600")]), 1.0);
    assert_eq!(s.get(&format!("{name}_bucket"), &[("le", "1209600")]), 3.0);
    assert_eq!(s.get(&format!("{name}_bucket"), &[("le", "5184000")]), 5.0);

    // Features of the users whose runs started in each window.
    let features = [
        ("registry", [2.0, 2.0, 5.0]),
        ("system_metrics", [3.0, 3.0, 3.0]),
        ("autolog", [1.0, 2.0, 2.0]),
        ("git", [2.0, 2.0, 2.0]),
        ("nested_runs", [2.0, 2.0, 2.0]),
        ("datasets", [1.0, 1.0, 1.0]),
        // This history loads no prompt (tests/it/workspaces_mlflow.rs does).
        ("prompts", [0.0, 0.0, 0.0]),
        // Nor a GenAI evaluation or a trace (tests/it/traces_mlflow.rs has them).
        ("tracing", [0.0, 0.0, 0.0]),
        ("evaluation", [0.0, 0.0, 0.0]),
    ];
    let rows: Vec<([(&str, &str); 2], f64)> = features
        .iter()
        .flat_map(|(f, v)| {
            ["1d", "7d", "30d"]
                .into_iter()
                .zip(*v)
                .map(move |(w, n)| ([("feature", *f), ("window", w)], n))
        })
        .collect();
    let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, n)| (&l[..], *n)).collect();
    assert_family(s, "mlflow_feature_users", &rows);

    // GPU utilization of ended runs: r1 (80 %, 60 %) and r10 (20–80 %); then r3 (30 %) and r11 (90 %).
    let util = |e, tm, count: f64, sum: f64| ([("experiment", e), ("team", tm)], count, sum);
    let utils = if second {
        [
            util("vision", "vision", 2.0, 0.7 + 0.3),
            util("forecast", "", 2.0, 0.5 + 0.9),
        ]
    } else {
        [
            util("vision", "vision", 1.0, 0.7),
            util("forecast", "", 1.0, 0.5),
        ]
    };
    let counts: Vec<(&[(&str, &str)], f64)> = utils.iter().map(|(l, c, _)| (&l[..], *c)).collect();
    let sums: Vec<(&[(&str, &str)], f64)> = utils.iter().map(|(l, _, v)| (&l[..], *v)).collect();
    assert_family(s, "mlflow_run_gpu_utilization_ratio_count", &counts);
    assert_family(s, "mlflow_run_gpu_utilization_ratio_sum", &sums);
    let bucket = |le| {
        s.get(
            "mlflow_run_gpu_utilization_ratio_bucket",
            &[("experiment", "vision"), ("team", "vision"), ("le", le)],
        )
    };
    let want = if second {
        [0.0, 1.0, 1.0, 2.0]
    } else {
        [0.0, 0.0, 0.0, 1.0]
    };
    assert_eq!(["0.2", "0.3", "0.6", "0.7"].map(bucket), want);

    // Money on idle GPUs: cost × (1 − utilization) of those runs.
    let idle = |e, tm, it, v| ([("experiment", e), ("team", tm), ("instance_type", it)], v);
    let rows = [
        idle("vision", "vision", "g5.xlarge", 1.2 * (1.0 - 0.7)),
        idle(
            "vision",
            "vision",
            "cpu.large",
            if second {
                1900.0 * 0.1 / 3600.0 * (1.0 - 0.3)
            } else {
                0.0
            },
        ),
        idle("vision", "platform", "", 0.0),
        idle("vision", "vision", "", 0.0),
        idle("nlp", "nlp", "", 0.0),
        idle("forecast", "", "", 0.0),
        idle("forecast", "", "g5.xlarge", 4.8 * (1.0 - 0.5)),
        idle(
            "forecast",
            "",
            "m5.large",
            if second { 0.5 * (1.0 - 0.9) } else { 0.0 },
        ),
        idle("old-exp", "vision", "", 0.0),
    ];
    let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, n)| (&l[..], *n)).collect();
    assert_family(s, "mlflow_run_idle_gpu_cost_total", &rows);

    // Best quality among finished, not deleted runs: r2 (failed) and r6 (deleted) score higher
    // accuracy than r1 but do not count; rmse is lower-is-better.
    assert_family(
        s,
        "mlflow_experiment_best_metric",
        &[
            (&[("experiment", "vision"), ("key", "accuracy")], 0.91),
            (&[("experiment", "vision"), ("key", "f1")], 0.75),
            (
                &[("experiment", "nlp"), ("key", "f1")],
                if second { 0.85 } else { 0.8 },
            ),
            (&[("experiment", "nlp"), ("key", "rmse")], 0.25),
            (&[("experiment", "forecast"), ("key", "rmse")], 12.5),
        ],
    );
}

/// The registry as the first cycle finds it is a baseline; the champion's move to version 3 (r7's)
/// in the second is a deployment, with lead time from r7's start.
fn delivery(s: &Scrape, server: &MlflowServer, t: i64, now: i64, phase: Phase) {
    let second = phase == Phase::Second;
    let champion: &[(&str, &str)] = &[("model", "churn-model"), ("alias", "champion")];
    let production: &[(&str, &str)] = &[("model", "fraud-model"), ("alias", "Production")];
    let deployed = if second { 1.0 } else { 0.0 };
    assert_family(
        s,
        "mlflow_model_deployments_total",
        &[(champion, deployed), (production, 0.0)],
    );
    assert_family(
        s,
        "mlflow_model_rollbacks_total",
        &[(champion, 0.0), (production, 0.0)],
    );
    assert_eq!(
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "poll"), ("outcome", "recorded")]
        ),
        if second { 3.0 } else { 2.0 }
    );
    // What the served versions' runs logged: v2 of churn-model is r4's, v3 r7's; fraud v2 r14's.
    let metric = |m: &'static str, a: &'static str, k: &'static str, g: &'static str| {
        [("model", m), ("alias", a), ("key", k), ("goal", g)]
    };
    let rows = if second {
        vec![
            (metric("churn-model", "champion", "f1", "maximize"), 0.8),
            (metric("churn-model", "champion", "rmse", "minimize"), 0.3),
            (
                metric("fraud-model", "Production", "rmse", "minimize"),
                0.25,
            ),
        ]
    } else {
        vec![
            (
                metric("churn-model", "champion", "accuracy", "maximize"),
                0.87,
            ),
            (metric("churn-model", "champion", "f1", "maximize"), 0.75),
            (
                metric("fraud-model", "Production", "rmse", "minimize"),
                0.25,
            ),
        ]
    };
    let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, v)| (&l[..], *v)).collect();
    assert_family(s, "mlflow_model_metric", &rows);
    // What the champion's move replaced: version 2, r4's.
    let replaced = [
        (
            metric("churn-model", "champion", "accuracy", "maximize"),
            0.87,
        ),
        (metric("churn-model", "champion", "f1", "maximize"), 0.75),
    ];
    let replaced: Vec<(&[(&str, &str)], f64)> = replaced
        .iter()
        .take(if second { 2 } else { 0 })
        .map(|(l, v)| (&l[..], *v))
        .collect();
    assert_family(s, "mlflow_model_replaced_metric", &replaced);
    if !second {
        // Baselines: dated by the creation of the versions they serve.
        let state = server.seed_state();
        let created = |v: &str| state["versions"][v].as_i64().unwrap() as f64 / 1000.0;
        assert_family(
            s,
            "mlflow_model_deployed_timestamp_seconds",
            &[
                (champion, created("churn-model/2")),
                (production, created("fraud-model/2")),
            ],
        );
        return;
    }
    const H: i64 = 3_600_000;
    let created = server.seed_state()["versions"]["churn-model/3"]
        .as_i64()
        .unwrap();
    let (run_start, run_end) = (t - 20 * H, t - 20 * H + H / 2);
    let secs = |ms: i64| ms as f64 / 1000.0;
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", champion),
        secs(now)
    );
    let get = |name: &str, labels: &[(&str, &str)]| s.get(name, labels);
    // The histograms are by the model's team (both models are among the first seen serving, so
    // shown apart).
    let churn: &[(&str, &str)] = &[("team", "vision"), ("model", "churn-model")];
    let fraud: &[(&str, &str)] = &[("team", "risk"), ("model", "fraud-model")];
    assert_eq!(get("mlflow_model_lead_time_seconds_count", churn), 1.0);
    assert_eq!(
        get("mlflow_model_lead_time_seconds_sum", churn),
        secs(now - run_start)
    );
    assert_eq!(
        get("mlflow_model_last_lead_time_seconds", champion),
        secs(now - run_start)
    );
    assert_eq!(
        get("mlflow_model_time_to_deploy_seconds_sum", churn),
        secs(now - created)
    );
    assert_eq!(
        get("mlflow_model_time_to_register_seconds_sum", churn),
        secs(created - run_end)
    );
    // 20 h 2 min: above the 6 h bucket, within 24 h.
    let bucket = |le| {
        get(
            "mlflow_model_lead_time_seconds_bucket",
            &[churn, &[("le", le)]].concat(),
        )
    };
    assert_eq!([bucket("21600"), bucket("86400")], [0.0, 1.0]);
    assert_eq!(get("mlflow_model_lead_time_seconds_count", fraud), 0.0);
}
