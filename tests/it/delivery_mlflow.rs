//! Delivery end to end against a real MLflow: tests/fixtures/registry.py moves serving aliases and the
//! Production stage between cycles; exact figures after each, a restart on the same store, the audit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::support::exporter::example_config;
use crate::support::mlflow::MlflowServer;
use crate::support::scrape::{assert_family, scrape, to_labels, Labels, Scrape};
use crate::support::{now_ms, project_dir, venv_bin};
use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{FlagOverrides, Settings};
use serde_json::{json, Value};

const MIN: i64 = 60_000;
const H: i64 = 60 * MIN;
const D: i64 = 24 * H;

/// Bucket bounds (seconds) of the delivery histograms: the defaults, which the example config keeps.
const LEAD_TIME_LE: &[u64] = &[
    900, 3600, 21600, 86400, 259200, 604800, 1209600, 2592000, 7776000, 15552000,
];
const TIME_TO_REGISTER_LE: &[u64] = &[60, 900, 3600, 21600, 86400, 259200, 604800, 2592000];
const TIME_TO_DEPLOY_LE: &[u64] = &[
    900, 3600, 21600, 86400, 259200, 604800, 1209600, 2592000, 7776000,
];
const RECOVERY_LE: &[u64] = &[60, 900, 3600, 21600, 86400, 259200, 604800];

/// Every sample name the delivery families expose.
const DELIVERY_SAMPLES: &[&str] = &[
    "mlflow_model_deployments_total",
    "mlflow_model_rollbacks_total",
    "mlflow_model_lead_time_seconds_bucket",
    "mlflow_model_lead_time_seconds_sum",
    "mlflow_model_lead_time_seconds_count",
    "mlflow_model_time_to_register_seconds_bucket",
    "mlflow_model_time_to_register_seconds_sum",
    "mlflow_model_time_to_register_seconds_count",
    "mlflow_model_time_to_deploy_seconds_bucket",
    "mlflow_model_time_to_deploy_seconds_sum",
    "mlflow_model_time_to_deploy_seconds_count",
    "mlflow_model_deployed_timestamp_seconds",
    "mlflow_model_last_lead_time_seconds",
    "mlflow_model_rollback_recovery_seconds_bucket",
    "mlflow_model_rollback_recovery_seconds_sum",
    "mlflow_model_rollback_recovery_seconds_count",
    "mlflow_model_metric",
    "mlflow_model_replaced_metric",
    "mlflow_incidents_total",
    "mlflow_incidents_open",
    "mlflow_incident_recovery_seconds_count",
];

const CHAMPION: &[(&str, &str)] = &[("model", "churn-model"), ("alias", "champion")];
const FRAUD_PRODUCTION: &[(&str, &str)] = &[("model", "fraud-model"), ("alias", "Production")];
const FRAUD_PROD: &[(&str, &str)] = &[("model", "fraud-model"), ("alias", "prod")];
/// The delivery histograms are by team and model.
const CHURN: &[(&str, &str)] = &[("team", "vision"), ("model", "churn-model")];
const FRAUD: &[(&str, &str)] = &[("team", "risk"), ("model", "fraud-model")];

/// Start and end (ms) of the seeded runs behind versions, from the RUNS table of seed.py.
fn run_times(t: i64, key: &str) -> (i64, i64) {
    let (start, duration) = match key {
        "r4" => (-10 * D, 2 * H),
        "r7" => (-20 * H, 30 * MIN),
        "r10" => (-8 * D, 4 * H),
        "r14" => (-9 * D, 20 * MIN),
        _ => panic!("no times for run {key}"),
    };
    (t + start, t + start + duration)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The example configuration with this server, this store file and more variables.
fn settings(server: &MlflowServer, store: &Path, vars: &[(&str, &str)]) -> Settings {
    let env = [("MLFLOW_TRACKING_URI", server.url.as_str())]
        .iter()
        .chain(vars)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flags = FlagOverrides {
        storage_path: Some(store.display().to_string()),
        ..FlagOverrides::default()
    };
    Settings::load(Some(&example_config()), &env, &flags).unwrap()
}

/// Applies registry actions with tests/fixtures/registry.py, which prints nothing on success.
fn registry(server: &MlflowServer, args: &[&str]) {
    let out = tokio::task::block_in_place(|| {
        Command::new(venv_bin("python"))
            .arg(project_dir().join("tests/fixtures/registry.py"))
            .args(args)
            .env("MLFLOW_TRACKING_URI", &server.url)
            .output()
            .expect("run registry.py")
    });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "registry.py {args:?} failed: {stderr}"
    );
    assert_eq!(
        (&*stdout, &*stderr),
        ("", ""),
        "registry.py {args:?} output"
    );
}

/// What one target (model, alias or `Production`) should show, in ms.
#[derive(Debug, Clone, Default)]
struct Fig {
    deployments: u64,
    rollbacks: u64,
    deployed_ms: Option<i64>,
    last_lead: Option<i64>,
}

/// What the histograms of one team and model should hold: observations in ms.
#[derive(Debug, Clone, Default)]
struct Hist {
    lead: Vec<i64>,
    to_deploy: Vec<i64>,
    register: Vec<i64>,
    recovery: Vec<i64>,
}

/// A quality series: model, alias, key, goal.
type Quality = (&'static str, &'static str, &'static str, &'static str);

/// The expected delivery figures, updated by hand after each registry change.
#[derive(Debug, Clone, Default)]
struct Expected {
    targets: BTreeMap<(&'static str, &'static str), Fig>,
    /// By team and model (both models of the seed are among the first seen serving: shown apart).
    hists: BTreeMap<(&'static str, &'static str), Hist>,
    /// `mlflow_model_metric` and `mlflow_model_replaced_metric`.
    quality: BTreeMap<Quality, f64>,
    replaced: BTreeMap<Quality, f64>,
    /// `mlflow_exporter_events_total{source="poll",outcome="recorded"}` of this process.
    recorded: f64,
}

impl Expected {
    fn target(&mut self, model: &'static str, alias: &'static str) -> &mut Fig {
        self.targets.entry((model, alias)).or_default()
    }

    fn hist(&mut self, model: &'static str) -> &mut Hist {
        let team = match model {
            "churn-model" => "vision",
            "fraud-model" => "risk",
            _ => "",
        };
        self.hists.entry((team, model)).or_default()
    }
}

fn target_labels(model: &str, alias: &str) -> Labels {
    to_labels(&[("model", model), ("alias", alias)])
}

/// Asserts that a family holds exactly the series wanted, naming each one that differs.
fn assert_series(name: &str, got: &BTreeMap<Labels, f64>, want: &BTreeMap<Labels, f64>) {
    let keys: BTreeSet<&Labels> = got.keys().chain(want.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k:?}: got {:?}, want {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diff.is_empty(), "{name}:\n  {}", diff.join("\n  "));
}

/// Asserts every series of a histogram: each bucket (cumulative, `le` inclusive), sum and count.
fn check_histogram<'a>(
    s: &Scrape,
    name: &str,
    le: &[u64],
    rows: impl Iterator<Item = (Labels, &'a Vec<i64>)>,
) {
    let (mut buckets, mut sums, mut counts) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (labels, obs) in rows {
        for bound in le.iter().map(|b| Some(*b)).chain([None]) {
            let mut l = labels.clone();
            let (text, n) = match bound {
                Some(b) => (
                    b.to_string(),
                    obs.iter().filter(|ms| **ms <= b as i64 * 1000).count(),
                ),
                None => ("+Inf".to_string(), obs.len()),
            };
            l.insert("le".to_string(), text);
            buckets.insert(l, n as f64);
        }
        sums.insert(labels.clone(), secs(obs.iter().sum()));
        counts.insert(labels, obs.len() as f64);
    }
    for (suffix, want) in [("bucket", buckets), ("sum", sums), ("count", counts)] {
        let sample = format!("{name}_{suffix}");
        assert_series(&sample, &s.family(&sample), &want);
    }
}

/// Asserts every delivery family exactly: the series present and their values.
fn check(s: &Scrape, e: &Expected) {
    let per_target = |f: &dyn Fn(&Fig) -> Option<f64>| -> BTreeMap<Labels, f64> {
        e.targets
            .iter()
            .filter_map(|((m, a), fig)| f(fig).map(|v| (target_labels(m, a), v)))
            .collect()
    };
    assert_series(
        "mlflow_model_deployments_total",
        &s.family("mlflow_model_deployments_total"),
        &per_target(&|f| Some(f.deployments as f64)),
    );
    assert_series(
        "mlflow_model_rollbacks_total",
        &s.family("mlflow_model_rollbacks_total"),
        &per_target(&|f| Some(f.rollbacks as f64)),
    );
    assert_series(
        "mlflow_model_deployed_timestamp_seconds",
        &s.family("mlflow_model_deployed_timestamp_seconds"),
        &per_target(&|f| f.deployed_ms.map(secs)),
    );
    assert_series(
        "mlflow_model_last_lead_time_seconds",
        &s.family("mlflow_model_last_lead_time_seconds"),
        &per_target(&|f| f.last_lead.map(secs)),
    );
    let rows = |pick: fn(&Hist) -> &Vec<i64>| {
        e.hists
            .iter()
            .map(move |((team, m), h)| (to_labels(&[("team", team), ("model", m)]), pick(h)))
    };
    check_histogram(
        s,
        "mlflow_model_lead_time_seconds",
        LEAD_TIME_LE,
        rows(|h| &h.lead),
    );
    check_histogram(
        s,
        "mlflow_model_time_to_deploy_seconds",
        TIME_TO_DEPLOY_LE,
        rows(|h| &h.to_deploy),
    );
    check_histogram(
        s,
        "mlflow_model_rollback_recovery_seconds",
        RECOVERY_LE,
        rows(|h| &h.recovery),
    );
    check_histogram(
        s,
        "mlflow_model_time_to_register_seconds",
        TIME_TO_REGISTER_LE,
        rows(|h| &h.register),
    );
    for (name, values) in [
        ("mlflow_model_metric", &e.quality),
        ("mlflow_model_replaced_metric", &e.replaced),
    ] {
        let want: BTreeMap<Labels, f64> = values
            .iter()
            .map(|((m, a, k, g), v)| {
                (
                    to_labels(&[("model", m), ("alias", a), ("key", k), ("goal", g)]),
                    *v,
                )
            })
            .collect();
        assert_series(name, &s.family(name), &want);
    }
    // No incident was ever reported: every served model has its series of each configured
    // severity at 0 from its first sight, so that the first one is an increase.
    let models: BTreeSet<&str> = e.targets.keys().map(|(m, _)| *m).collect();
    let zeros: BTreeMap<Labels, f64> = models
        .iter()
        .flat_map(|m| {
            ["critical", "warning"].map(|sev| (to_labels(&[("model", m), ("severity", sev)]), 0.0))
        })
        .collect();
    for name in ["mlflow_incidents_total", "mlflow_incidents_open"] {
        assert_series(name, &s.family(name), &zeros);
    }
    let by_team: BTreeMap<Labels, f64> = e
        .hists
        .keys()
        .flat_map(|(team, m)| {
            ["critical", "warning"].map(|sev| {
                (
                    to_labels(&[("team", team), ("model", m), ("severity", sev)]),
                    0.0,
                )
            })
        })
        .collect();
    assert_series(
        "mlflow_incident_recovery_seconds_count",
        &s.family("mlflow_incident_recovery_seconds_count"),
        &by_team,
    );
    let events = |outcome| {
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "poll"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        [events("recorded"), events("duplicate"), events("error")],
        [e.recorded, 0.0, 0.0],
        "mlflow_exporter_events_total"
    );
}

/// The run behind a version and the version's creation time, as a stored event carries them.
struct Served {
    version: u32,
    run: (i64, i64),
    created: i64,
}

/// One stored event as `mlflow-exporter events` prints it; `n` is its change number of the target.
fn event(n: u64, kind: &str, (model, target): (&str, &str), at: i64, s: Option<&Served>) -> Value {
    let mut v = json!({
        "dedup_key": format!("{model}\u{1f}{target}\u{1f}{n}"),
        "kind": kind,
        "source": "poll",
        "subject": "model",
        "model": model,
        "target": target,
        "version": s.map(|s| s.version),
        "at_ms": at,
        "run_start_ms": s.map(|s| s.run.0),
        "run_end_ms": s.map(|s| s.run.1),
        "version_created_ms": s.map(|s| s.created),
    });
    // Changes to a version carry the model's team tag (seed.py: churn-model is vision's).
    if s.is_some() {
        let team = if model == "churn-model" {
            "vision"
        } else {
            "risk"
        };
        v["team"] = json!(team);
    }
    v
}

/// Runs `mlflow-exporter events` on a store file: one JSON value per line.
fn stored_events(server: &MlflowServer, store: &Path) -> Vec<Value> {
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"))
            .arg("events")
            .arg("--storage.path")
            .arg(store)
            .env("MLFLOW_TRACKING_URI", &server.url)
            .output()
            .expect("run mlflow-exporter events")
    });
    assert!(
        out.status.success(),
        "mlflow-exporter events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with('\n'), "output ends with a newline: {text:?}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_rollbacks_and_lead_time_across_registry_changes_and_a_restart() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    // T is whole seconds, so that every expected duration below is exact.
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| server.seed(t, "initial"));
    let state_file = server.dir.path().join("seed-state.json");
    let created = |v: &str| {
        server.seed_state()["versions"][v]
            .as_i64()
            .unwrap_or_else(|| panic!("no creation time of {v} in the seed state"))
    };
    let cycle_at = |k: i64| t + k * MIN;

    let store = server.dir.path().join("events.db");
    let settings = settings(&server, &store, &[]);
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    let publisher = pipeline.publisher.clone();

    // 1. The first cycle sees champion → 2 and fraud-model's Production (version 2): baselines only.
    let s1 = cycle_at(1);
    pipeline.cycle(s1).await.unwrap();
    let mut e = Expected::default();
    // A baseline dates what an alias serves by the version's creation: it cannot be older.
    e.target("churn-model", "champion").deployed_ms = Some(created("churn-model/2"));
    e.target("fraud-model", "Production").deployed_ms = Some(created("fraud-model/2"));
    e.hist("churn-model");
    e.hist("fraud-model");
    // v2 of churn-model is r4's; fraud-model's v2 r14's.
    e.quality
        .insert(("churn-model", "champion", "accuracy", "maximize"), 0.87);
    e.quality
        .insert(("churn-model", "champion", "f1", "maximize"), 0.75);
    e.quality
        .insert(("fraud-model", "Production", "rmse", "minimize"), 0.25);
    e.recorded = 2.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_eq!(s.get("mlflow_model_deployments_total", CHAMPION), 0.0);
    assert_eq!(
        s.get("mlflow_model_deployments_total", FRAUD_PRODUCTION),
        0.0
    );

    // 2. champion 2 → 3 (r7's): a deployment, with lead time from r7's start.
    registry(&server, &["alias", "churn-model", "champion", "3"]);
    let s2 = cycle_at(2);
    pipeline.cycle(s2).await.unwrap();
    let r7 = run_times(t, "r7");
    let churn_v3 = created("churn-model/3");
    let c = e.target("churn-model", "champion");
    c.deployments = 1;
    c.deployed_ms = Some(s2);
    c.last_lead = Some(s2 - r7.0);
    let h = e.hist("churn-model");
    h.lead.push(s2 - r7.0);
    h.to_deploy.push(s2 - churn_v3);
    h.register.push(churn_v3 - r7.1);
    e.quality
        .remove(&("churn-model", "champion", "accuracy", "maximize"));
    e.quality
        .insert(("churn-model", "champion", "f1", "maximize"), 0.8);
    e.quality
        .insert(("churn-model", "champion", "rmse", "minimize"), 0.3);
    // What it replaced: v2, r4's.
    e.replaced
        .insert(("churn-model", "champion", "accuracy", "maximize"), 0.87);
    e.replaced
        .insert(("churn-model", "champion", "f1", "maximize"), 0.75);
    e.recorded = 3.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_eq!(s.get("mlflow_model_deployments_total", CHAMPION), 1.0);
    assert_eq!(s.get("mlflow_model_rollbacks_total", CHAMPION), 0.0);
    // 20 h 2 min: above the 6 h bucket, within 24 h.
    assert_eq!(s.get("mlflow_model_lead_time_seconds_sum", CHURN), 72_120.0);
    let bucket = |s: &Scrape, name: &str, labels: &[(&str, &str)], le: &str| {
        s.get(&format!("{name}_bucket"), &[labels, &[("le", le)]].concat())
    };
    assert_eq!(
        ["21600", "86400"].map(|le| bucket(&s, "mlflow_model_lead_time_seconds", CHURN, le)),
        [0.0, 1.0]
    );
    assert_eq!(
        s.get("mlflow_model_time_to_deploy_seconds_sum", CHURN),
        secs(s2 - churn_v3)
    );
    assert_eq!(
        s.get("mlflow_model_time_to_register_seconds_sum", CHURN),
        secs(churn_v3 - (t - 20 * H + 30 * MIN))
    );
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", CHAMPION),
        secs(s2)
    );

    // 3. champion 3 → 2: a rollback (lower), which restores service one cycle after 3 was deployed.
    registry(&server, &["alias", "churn-model", "champion", "2"]);
    let s3 = cycle_at(3);
    pipeline.cycle(s3).await.unwrap();
    let c = e.target("churn-model", "champion");
    c.deployments = 2;
    c.rollbacks = 1;
    c.deployed_ms = Some(s3);
    e.hist("churn-model").recovery.push(s3 - s2);
    let f1 = ("churn-model", "champion", "f1", "maximize");
    let rmse = ("churn-model", "champion", "rmse", "minimize");
    let accuracy = ("churn-model", "champion", "accuracy", "maximize");
    e.quality.insert(f1, 0.75);
    e.quality.remove(&rmse);
    e.quality.insert(accuracy, 0.87);
    // It replaced v3 (r7's).
    e.replaced.remove(&accuracy);
    e.replaced.insert(f1, 0.8);
    e.replaced.insert(rmse, 0.3);
    e.recorded = 4.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_eq!(s.get("mlflow_model_rollbacks_total", CHAMPION), 1.0);
    assert_eq!(
        s.get("mlflow_model_rollback_recovery_seconds_sum", CHURN),
        60.0
    );
    // `le` is inclusive: exactly 60 s is in the first bucket.
    assert_eq!(
        bucket(&s, "mlflow_model_rollback_recovery_seconds", CHURN, "60"),
        1.0
    );
    // A rollback restores an old change: no lead time.
    assert_eq!(s.get("mlflow_model_lead_time_seconds_count", CHURN), 1.0);
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", CHAMPION),
        secs(s3)
    );

    // 4. fraud-model version 1 enters Production and archives version 2: Production moves 2 → 1, a
    // rollback. The replaced version was only seen (baseline at s1), so recovery counts from then.
    registry(
        &server,
        &["stage", "fraud-model", "1", "Production", "--archive"],
    );
    let s4 = cycle_at(4);
    pipeline.cycle(s4).await.unwrap();
    let p = e.target("fraud-model", "Production");
    p.deployments = 1;
    p.rollbacks = 1;
    p.deployed_ms = Some(s4);
    e.hist("fraud-model").recovery.push(s4 - s1);
    // Version 1 is r10's; it replaced version 2, r14's.
    let fraud_rmse = ("fraud-model", "Production", "rmse", "minimize");
    e.quality.insert(fraud_rmse, 12.5);
    e.replaced.insert(fraud_rmse, 0.25);
    e.recorded = 5.0;
    let s = scrape(&publisher);
    check(&s, &e);
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
                    ("stage", "Production"),
                    ("status", "READY"),
                ],
                1.0,
            ),
            (
                &[
                    ("model", "fraud-model"),
                    ("stage", "Archived"),
                    ("status", "READY"),
                ],
                1.0,
            ),
        ],
    );
    assert_eq!(
        s.get("mlflow_model_deployments_total", FRAUD_PRODUCTION),
        1.0
    );
    assert_eq!(s.get("mlflow_model_rollbacks_total", FRAUD_PRODUCTION), 1.0);
    assert_eq!(
        s.get("mlflow_model_rollback_recovery_seconds_sum", FRAUD),
        180.0
    );
    assert_eq!(s.get("mlflow_model_lead_time_seconds_count", FRAUD), 0.0);
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", FRAUD_PRODUCTION),
        secs(s4)
    );

    // 5. A new version that nothing serves is no deployment; a new serving alias `prod` → 2, a target
    // never seen, is one after start-up (not a baseline), with lead time from r14's start.
    registry(
        &server,
        &[
            "version",
            "fraud-model",
            "r10",
            state_file.to_str().unwrap(),
            "--",
            "alias",
            "fraud-model",
            "prod",
            "2",
        ],
    );
    let fraud_v3 = created("fraud-model/3");
    assert!(fraud_v3 >= t, "fraud-model/3 created at {fraud_v3}");
    let s5 = cycle_at(5);
    pipeline.cycle(s5).await.unwrap();
    let r14 = run_times(t, "r14");
    let fraud_v2 = created("fraud-model/2");
    let p = e.target("fraud-model", "prod");
    p.deployments = 1;
    p.deployed_ms = Some(s5);
    p.last_lead = Some(s5 - r14.0);
    let h = e.hist("fraud-model");
    h.lead.push(s5 - r14.0);
    h.to_deploy.push(s5 - fraud_v2);
    h.register.push(fraud_v2 - r14.1);
    // A new alias replaced nothing.
    e.quality
        .insert(("fraud-model", "prod", "rmse", "minimize"), 0.25);
    e.recorded = 6.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_family(
        &s,
        "mlflow_model_versions_created_total",
        &[
            (&[("model", "churn-model")], 3.0),
            (&[("model", "fraud-model")], 3.0),
        ],
    );
    assert_eq!(s.get("mlflow_model_deployments_total", FRAUD_PROD), 1.0);
    assert_eq!(s.get("mlflow_model_rollbacks_total", FRAUD_PROD), 0.0);
    // 9 d 5 min: above one week, within two.
    assert_eq!(
        s.get("mlflow_model_lead_time_seconds_sum", FRAUD),
        777_900.0
    );
    assert_eq!(
        ["604800", "1209600"].map(|le| bucket(&s, "mlflow_model_lead_time_seconds", FRAUD, le)),
        [0.0, 1.0]
    );
    assert_eq!(
        s.get("mlflow_model_time_to_deploy_seconds_sum", FRAUD),
        secs(s5 - fraud_v2)
    );
    assert_eq!(
        s.get("mlflow_model_time_to_register_seconds_count", FRAUD),
        1.0
    );
    assert_eq!(
        s.get("mlflow_model_time_to_register_seconds_sum", FRAUD),
        secs(fraud_v2 - (t - 9 * D + 20 * MIN))
    );
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", FRAUD_PROD),
        secs(s5)
    );

    // 6. Deleting champion deploys nothing, and nothing is served under it any more.
    registry(&server, &["delete-alias", "churn-model", "champion"]);
    let s6 = cycle_at(6);
    pipeline.cycle(s6).await.unwrap();
    e.quality.remove(&accuracy);
    e.quality.remove(&f1);
    e.replaced.remove(&f1);
    e.replaced.remove(&rmse);
    e.recorded = 7.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_eq!(s.get("mlflow_model_deployments_total", CHAMPION), 2.0);

    // Re-created → 3, which champion served before: a rollback, with no recovery observation since
    // nothing was served in between, and no lead time.
    registry(&server, &["alias", "churn-model", "champion", "3"]);
    let s7 = cycle_at(7);
    pipeline.cycle(s7).await.unwrap();
    let c = e.target("churn-model", "champion");
    c.deployments = 3;
    c.rollbacks = 2;
    c.deployed_ms = Some(s7);
    e.quality.insert(f1, 0.8);
    e.quality.insert(rmse, 0.3);
    e.recorded = 8.0;
    let s = scrape(&publisher);
    check(&s, &e);
    assert_eq!(s.get("mlflow_model_deployments_total", CHAMPION), 3.0);
    assert_eq!(s.get("mlflow_model_rollbacks_total", CHAMPION), 2.0);
    assert_eq!(
        s.get("mlflow_model_rollback_recovery_seconds_count", CHURN),
        1.0
    );
    assert_eq!(s.get("mlflow_model_lead_time_seconds_count", CHURN), 1.0);
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", CHAMPION),
        secs(s7)
    );
    let before = s;

    // 7. Restart on the same store: before a cycle only the exporter's own figures are published; after
    // one (nothing changed in MLflow) the counters continue and nothing is recorded again.
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let s8 = cycle_at(8);
    let mut pipeline = Pipeline::open(&settings, s8).await.unwrap();
    assert_eq!(pipeline.recorder.lock().await.events, 8);
    let publisher = pipeline.publisher.clone();
    let s = scrape(&publisher);
    let foreign: Vec<&String> = s
        .samples
        .keys()
        .filter(|k| {
            !k.starts_with("mlflow_exporter_") && !k.starts_with("process_") && *k != "mlflow_up"
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "published before any cycle: {foreign:?}"
    );
    assert_eq!(s.get("mlflow_up", &[]), 0.0);
    pipeline.cycle(s8).await.unwrap();
    let s = scrape(&publisher);
    for name in DELIVERY_SAMPLES {
        assert!(!before.family(name).is_empty(), "{name} before the restart");
        assert_series(name, &s.family(name), &before.family(name));
    }
    e.recorded = 0.0;
    check(&s, &e);

    // The audit trail: every stored event, once, in order.
    let r4 = run_times(t, "r4");
    let r10 = run_times(t, "r10");
    let churn_2 = Served {
        version: 2,
        run: r4,
        created: created("churn-model/2"),
    };
    let churn_3 = Served {
        version: 3,
        run: r7,
        created: churn_v3,
    };
    let fraud_1 = Served {
        version: 1,
        run: r10,
        created: created("fraud-model/1"),
    };
    let fraud_2 = Served {
        version: 2,
        run: r14,
        created: fraud_v2,
    };
    let champion = ("churn-model", "champion");
    let production = ("fraud-model", "Production");
    let expected = vec![
        event(1, "baseline", champion, s1, Some(&churn_2)),
        event(1, "baseline", production, s1, Some(&fraud_2)),
        event(2, "deployment", champion, s2, Some(&churn_3)),
        event(3, "deployment", champion, s3, Some(&churn_2)),
        event(2, "deployment", production, s4, Some(&fraud_1)),
        event(1, "deployment", ("fraud-model", "prod"), s5, Some(&fraud_2)),
        event(4, "alias_deleted", champion, s6, None),
        event(5, "deployment", champion, s7, Some(&churn_3)),
    ];
    let got = stored_events(&server, &store);
    assert_eq!(got.len(), expected.len(), "stored events: {got:#?}");
    for (i, (g, w)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, w, "stored event {i}");
    }
    pipeline.recorder.store().close().await;
}

/// Retention folds the events it deletes into a checkpoint first: after a restart the counters
/// are where they were, the targets known, and the next change is numbered past the keys stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_retention_and_a_restart_is_recorded() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| server.seed(t, "initial"));
    let store = server.dir.path().join("events.db");
    let (s1, s2, s3) = (t + MIN, t + 2 * MIN, t + 3 * MIN);

    // Baselines at s1 (champion key 1, Production key 1), champion 2 → 3 at s2 (key 2).
    let mut pipeline = Pipeline::open(&settings(&server, &store, &[]), t)
        .await
        .unwrap();
    pipeline.cycle(s1).await.unwrap();
    registry(&server, &["alias", "churn-model", "champion", "3"]);
    pipeline.cycle(s2).await.unwrap();
    pipeline.recorder.store().close().await;
    drop(pipeline);

    // Restarted at s3 keeping 90 s of history: the baselines (s1) go into the checkpoint,
    // champion's key 2 stays; all three are folded.
    let short = settings(
        &server,
        &store,
        &[("MLFLOW_EXPORTER_STORAGE__RETENTION", "90s")],
    );
    let mut pipeline = Pipeline::open(&short, s3).await.unwrap();
    assert_eq!(pipeline.recorder.lock().await.events, 3);
    assert_eq!(stored_events(&server, &store).len(), 1);
    // champion 3 → 2 during the restart: a change (a rollback) the first cycle must record;
    // fraud-model's Production is known from the checkpoint.
    registry(&server, &["alias", "churn-model", "champion", "2"]);
    pipeline.cycle(s3).await.unwrap();
    // A later cycle sees nothing new.
    pipeline.cycle(s3 + MIN).await.unwrap();
    let s = scrape(&pipeline.publisher);
    let events = |outcome| {
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "poll"), ("outcome", outcome)],
        )
    };
    let kinds: Vec<(String, String)> = stored_events(&server, &store)
        .iter()
        .map(|e| {
            let key = e["dedup_key"].as_str().unwrap().replace('\u{1f}', "␟");
            (key, e["kind"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        [events("recorded"), events("duplicate")],
        [1.0, 0.0],
        "stored: {kinds:?}"
    );
    assert_eq!(s.get("mlflow_model_deployments_total", CHAMPION), 2.0);
    assert_eq!(s.get("mlflow_model_rollbacks_total", CHAMPION), 1.0);
    pipeline.recorder.store().close().await;
}
