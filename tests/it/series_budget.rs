//! The series budget on a synthetic large install (benches/common: 100 000 runs, 200 experiments,
//! 500 models, 5 000 versions, some 770 serving aliases, a month of deployments and incidents):
//! with the default configuration one scrape holds at most `metrics.max_series` (10 000) samples,
//! `mlflow_exporter_series` says so, and a later cycle with new runs, values and models stays
//! within it without lowering a counter.

#[path = "../../benches/install/mod.rs"]
mod synthetic;

use std::collections::BTreeMap;

use crate::support::scrape::{assert_counters_kept, Scrape};
use mlflow_exporter::app::count_and_derive;
use mlflow_exporter::config::Settings;
use mlflow_exporter::sync::snapshot::{RunRecord, RunStatus};

const H: i64 = 3_600_000;

/// Samples per family of an exposition.
fn per_family(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap_or("").to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            *out.entry(family.clone()).or_default() += 1;
        }
    }
    out
}

fn breakdown(f: &BTreeMap<String, usize>) -> String {
    let mut rows: Vec<(&String, &usize)> = f.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1));
    rows.iter()
        .map(|(n, c)| format!("{c:>6} {n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_large_install_stays_within_the_series_budget_with_defaults() {
    let settings = Settings::default();
    let now = synthetic::NOW_MS;
    let (publisher, mut tally, mut snap, delivery, report, _) = synthetic::first_cycle(&settings);
    assert!(
        (700..=800).contains(&delivery.targets().count()),
        "{} serving targets",
        delivery.targets().count()
    );
    let deployments: u64 = delivery.figures.values().map(|f| f.deployments).sum();
    assert_eq!(deployments, 300);
    let text = String::from_utf8(publisher.current().text().to_vec()).unwrap();
    let first = per_family(&text);
    let total: usize = first.values().sum();
    assert!(
        total <= 10_000,
        "{total} series with the defaults:\n{}",
        breakdown(&first)
    );
    // The exporter says how many it serves, family by family, and the limit.
    let s = Scrape::parse(&text);
    let said: f64 = s.family("mlflow_exporter_series").values().sum();
    assert_eq!(said as usize, total, "{}", breakdown(&first));
    assert_eq!(s.get("mlflow_exporter_series_limit", &[]), 10_000.0);
    // The budget folded new combinations, and said so; every family is there.
    assert!(report.budget_folded > 0, "{report:?}");
    for name in [
        "mlflow_runs_ended_total",
        "mlflow_run_duration_seconds",
        "mlflow_run_compute_seconds_total",
        "mlflow_model_lead_time_seconds",
        "mlflow_incidents_total",
        "mlflow_incident_recovery_seconds",
    ] {
        assert!(first.get(name).is_some_and(|n| *n > 0), "{name}");
    }

    // A day later: 2 000 new runs, ended, of new experiments, teams and instance types, and 20 new
    // models deployed. The scrape stays within the budget, and no counter goes back.
    let exp = snap.strings.intern("9999");
    let name = snap.strings.intern("a-new-project");
    snap.experiments.insert(
        exp,
        mlflow_exporter::sync::snapshot::ExperimentRecord {
            name,
            deleted: false,
            team: None,
            workspace: None,
        },
    );
    for i in 0..2_000u128 {
        let team = snap.strings.intern(&format!("new-team-{}", i % 50));
        let itype = snap.strings.intern(&format!("x{}.large", i % 30));
        let mut r = RunRecord::new(exp, RunStatus::Finished, now, now + H);
        (r.team, r.instance_type) = (Some(team), Some(itype));
        snap.runs.insert(u128::MAX - i, r);
    }
    let (families, _) = count_and_derive(
        &publisher,
        &mut tally,
        &mut snap,
        &delivery,
        Vec::new(),
        false,
        now + 24 * H,
    );
    publisher.publish_families(&families, &delivery);
    let text2 = String::from_utf8(publisher.current().text().to_vec()).unwrap();
    let second = per_family(&text2);
    let total2: usize = second.values().sum();
    assert!(total2 <= 10_000, "{total2}:\n{}", breakdown(&second));
    let kept = assert_counters_kept(&s, &Scrape::parse(&text2), |_| false);
    assert!(kept > 1_000, "{kept}");
    println!("{total} series, then {total2}:\n{}", breakdown(&second));
}
