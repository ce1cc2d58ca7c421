//! Unit tests of snapshot → families with hand-built snapshots: window edges, the cardinality cap,
//! the rate card, lifecycle rules and zero series, each with exact expected values. One file over
//! 600 lines: every test builds on the snapshot helpers at its top.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::proto::MetricType;

use family::TextFamily;

use super::*;
use crate::config::{CostSettings, Rate, RateMatch, Settings};
use crate::sync::snapshot::*;

const H: i64 = 3_600_000;
const D: i64 = 24 * H;
const NOW: i64 = 1_800_000_000_000;

#[derive(Default)]
struct Build {
    snap: Snapshot,
    next: u128,
}

impl Build {
    fn experiment(&mut self, id: &str, name: &str, team: Option<&str>, deleted: bool) -> &mut Self {
        let s = &mut self.snap.strings;
        let rec = ExperimentRecord {
            name: s.intern(name),
            deleted,
            team: team.map(|t| s.intern(t)),
            workspace: None,
        };
        let id = s.intern(id);
        self.snap.experiments.insert(id, rec);
        self
    }

    /// A run; `end` is `NO_TIME` when it has none.
    fn run(
        &mut self,
        exp: &str,
        user: Option<&str>,
        status: RunStatus,
        start: i64,
        end: i64,
    ) -> &mut RunRecord {
        self.next += 1;
        let s = &mut self.snap.strings;
        let rec = RunRecord {
            user: user.map(|u| s.intern(u)),
            ..RunRecord::new(s.intern(exp), status, start, end)
        };
        self.snap.runs.insert(self.next, rec)
    }

    fn sym(&mut self, s: &str) -> Sym {
        self.snap.strings.intern(s)
    }
}

/// A delivery history with nothing in it.
fn no_history(d: &Derivation) -> crate::delivery::Delivery {
    crate::delivery::Delivery::new(crate::delivery::Bounds::new(&d.delivery))
}

fn settings(f: impl FnOnce(&mut Settings)) -> Derivation {
    let mut s = Settings::default();
    f(&mut s);
    Derivation::new(&s)
}

/// Counts the snapshot into a new tally (no series budget) with these settings, and derives every
/// family of it at `NOW`.
fn counted(b: &mut Build, f: impl FnOnce(&mut Settings)) -> (Derivation, Vec<TextFamily>) {
    let mut s = Settings::default();
    f(&mut s);
    let d = Derivation::new(&s);
    let tally = crate::tally::Tally::of(&mut b.snap, &s, NOW);
    let fams = derive(&b.snap, &tally, &no_history(&d), &d, NOW);
    (d, fams)
}

/// Series of one family: label values joined by `,` → value (histograms: `_count`).
fn series(fams: &[TextFamily], name: &str) -> BTreeMap<String, f64> {
    let f = fams
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let sample = match f.kind() {
        MetricType::HISTOGRAM => format!("{name}_count"),
        _ => name.to_string(),
    };
    f.samples()
        .into_iter()
        .filter(|(n, _, _)| *n == sample)
        .map(|(_, labels, v)| {
            let key = labels
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(",");
            (key, v)
        })
        .collect()
}

/// The first series of a histogram family: its label values, cumulative bucket counts (without
/// `+Inf`), count and sum.
fn histogram(fams: &[TextFamily], name: &str) -> (Vec<String>, Vec<u64>, u64, f64) {
    let f = fams
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let samples = f.samples();
    let labels: Vec<String> = samples[0]
        .1
        .iter()
        .filter(|(l, _)| l != "le")
        .map(|(_, v)| v.clone())
        .collect();
    let buckets = samples
        .iter()
        .take_while(|(n, _, _)| n.ends_with("_bucket"))
        .filter(|(_, l, _)| l.last().is_some_and(|(_, le)| le != "+Inf"))
        .map(|(_, _, v)| *v as u64)
        .collect();
    let value = |suffix: &str| {
        samples
            .iter()
            .find(|(n, _, _)| *n == format!("{name}{suffix}"))
            .map(|s| s.2)
            .unwrap()
    };
    (labels, buckets, value("_count") as u64, value("_sum"))
}

fn map(rows: &[(&str, f64)]) -> BTreeMap<String, f64> {
    rows.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn user_windows_include_their_start_edge() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    // Exactly one window old: inside it (the window is [now - 1d, now]).
    b.run("1", Some("edge"), RunStatus::Finished, NOW - D, NOW - D + 1);
    // One ms older: in the window before, so churned for 1d, new for 7d.
    b.run(
        "1",
        Some("churner"),
        RunStatus::Finished,
        NOW - D - 1,
        NOW - D,
    );
    // Active now, first seen 20 days ago: active everywhere, new only for 30d.
    b.run("1", Some("veteran"), RunStatus::Running, NOW - H, NO_TIME);
    b.run(
        "1",
        Some("veteran"),
        RunStatus::Finished,
        NOW - 20 * D,
        NOW - 20 * D + H,
    );
    // Exactly two windows old: the 1d window before is [now - 2d, now - 1d), so this one is in it.
    b.run(
        "1",
        Some("old"),
        RunStatus::Killed,
        NOW - 2 * D,
        NOW - 2 * D + 1,
    );
    // No user, or no start time: neither counts as active.
    b.run("1", None, RunStatus::Finished, NOW - H, NOW);
    b.run(
        "1",
        Some("unstarted"),
        RunStatus::Scheduled,
        NO_TIME,
        NO_TIME,
    );
    let d = settings(|_| {});
    let f = adoption::families(&b.snap, &d, &Default::default(), NOW);
    assert_eq!(series(&f, "mlflow_users"), map(&[("", 5.0)]));
    assert_eq!(
        series(&f, "mlflow_active_users"),
        map(&[("1d", 2.0), ("7d", 4.0), ("30d", 4.0)])
    );
    assert_eq!(
        series(&f, "mlflow_new_users"),
        map(&[("1d", 1.0), ("7d", 3.0), ("30d", 4.0)])
    );
    assert_eq!(
        series(&f, "mlflow_churned_users"),
        map(&[("1d", 2.0), ("7d", 0.0), ("30d", 0.0)])
    );
}

#[test]
fn configured_windows_are_labelled_as_promql_durations() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    b.run("1", Some("u"), RunStatus::Finished, NOW - 90 * 60_000, NOW);
    let d = settings(|s| {
        s.metrics.user_windows = vec![Duration::from_secs(3600), Duration::from_secs(7200)]
    });
    let f = adoption::families(&b.snap, &d, &Default::default(), NOW);
    assert_eq!(
        series(&f, "mlflow_active_users"),
        map(&[("1h", 0.0), ("2h", 1.0)])
    );
    assert_eq!(
        series(&f, "mlflow_churned_users"),
        map(&[("1h", 1.0), ("2h", 0.0)])
    );
}

#[test]
fn runs_follow_mlflow_lifecycle_rules_and_zero_fill() {
    let mut b = Build::default();
    b.experiment("1", "live", None, false);
    b.experiment("2", "gone", None, true);
    b.experiment("3", "empty", None, false);
    b.run("1", Some("a"), RunStatus::Finished, 0, 60_000);
    b.run("1", Some("a"), RunStatus::Failed, 0, 600_000).deleted = true;
    b.run("1", Some("a"), RunStatus::Running, 0, NO_TIME);
    b.run("2", Some("a"), RunStatus::Killed, 0, 1_000).deleted = true;
    let (_d, f) = counted(&mut b, |_| {});
    // What the UI shows: the deleted run and the deleted experiment are not there.
    assert_eq!(
        series(&f, "mlflow_runs"),
        map(&[
            ("empty,FAILED", 0.0),
            ("empty,FINISHED", 0.0),
            ("empty,KILLED", 0.0),
            ("empty,RUNNING", 0.0),
            ("empty,SCHEDULED", 0.0),
            ("live,FAILED", 0.0),
            ("live,FINISHED", 1.0),
            ("live,KILLED", 0.0),
            ("live,RUNNING", 1.0),
            ("live,SCHEDULED", 0.0),
        ])
    );
    // Compute was spent all the same: every ended run counts.
    assert_eq!(
        series(&f, "mlflow_runs_ended_total"),
        map(&[
            ("gone,FAILED", 0.0),
            ("gone,FINISHED", 0.0),
            ("gone,KILLED", 1.0),
            ("live,FAILED", 1.0),
            ("live,FINISHED", 1.0),
            ("live,KILLED", 0.0),
        ])
    );
    // Every series of ended runs has its histogram, zeros included.
    assert_eq!(
        series(&f, "mlflow_run_duration_seconds"),
        map(&[
            ("gone,FAILED", 0.0),
            ("gone,FINISHED", 0.0),
            ("gone,KILLED", 1.0),
            ("live,FAILED", 1.0),
            ("live,FINISHED", 1.0),
            ("live,KILLED", 0.0),
        ])
    );
}

#[test]
fn duration_buckets_are_inclusive_and_sums_exact() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    for ms in [59_999, 60_000, 60_001, 86_400_000, 90_000_000] {
        b.run("1", Some("a"), RunStatus::Finished, 0, ms);
    }
    let (_d, f) = counted(&mut b, |_| {});
    let (_, cumulative, count, sum) = histogram(&f, "mlflow_run_duration_seconds");
    assert_eq!(cumulative, vec![2, 3, 3, 3, 3, 3, 3, 3, 3, 4]);
    assert_eq!(count, 5);
    assert_eq!(
        sum,
        (59_999 + 60_000 + 60_001 + 86_400_000 + 90_000_000) as f64 / 1000.0
    );
}

#[test]
fn the_cardinality_cap_folds_the_least_used_values() {
    let mut b = Build::default();
    for (id, name, runs) in [
        ("1", "big", 3),
        ("2", "mid", 2),
        ("3", "small", 1),
        ("4", "tiny", 1),
    ] {
        b.experiment(id, name, Some(name), false);
        for _ in 0..runs {
            b.run(id, Some("u"), RunStatus::Finished, 0, 1_000);
        }
    }
    let (m1, m2, m3) = (b.sym("m1"), b.sym("m2"), b.sym("m3"));
    let (champ, ready, none) = (b.sym("champion"), b.sym("READY"), b.sym("None"));
    for (m, versions) in [(m1, 3), (m2, 2), (m3, 1)] {
        b.snap.models.insert(
            m,
            ModelRecord {
                aliases: vec![(champ, 1)],
                team: None,
                workspace: None,
            },
        );
        for v in 1..=versions {
            b.snap.versions.insert(
                (m, v),
                VersionRecord {
                    stage: none,
                    status: ready,
                    created_ms: 0,
                    last_updated_ms: 0,
                    run: None,
                    logged_model: None,
                },
            );
        }
    }
    let (_d, f) = counted(&mut b, |s| s.metrics.max_label_values = 2);
    assert_eq!(
        series(&f, "mlflow_runs_ended_total"),
        map(&[
            ("__other__,FAILED", 0.0),
            ("__other__,FINISHED", 2.0),
            ("__other__,KILLED", 0.0),
            ("big,FAILED", 0.0),
            ("big,FINISHED", 3.0),
            ("big,KILLED", 0.0),
            ("mid,FAILED", 0.0),
            ("mid,FINISHED", 2.0),
            ("mid,KILLED", 0.0),
        ])
    );
    // Team values come from the experiments' tags: the same ranking folds them too.
    assert_eq!(
        series(&f, "mlflow_run_compute_seconds_total"),
        map(&[
            ("__other__,__other__,", 2.0),
            ("big,big,", 3.0),
            ("mid,mid,", 2.0)
        ])
    );
    assert_eq!(
        series(&f, "mlflow_model_versions"),
        map(&[
            ("__other__,None,READY", 1.0),
            ("m1,None,READY", 3.0),
            ("m2,None,READY", 2.0)
        ])
    );
    // A folded model's aliases would collide under __other__: they are left out.
    assert_eq!(
        series(&f, "mlflow_model_alias_version"),
        map(&[("m1,champion", 1.0), ("m2,champion", 1.0)])
    );
    assert_eq!(
        series(&f, "mlflow_exporter_label_values_folded"),
        map(&[
            ("experiment", 2.0),
            ("instance_type", 0.0),
            ("model", 1.0),
            ("team", 2.0)
        ])
    );
}

/// EUR, 0.25 an hour by default; rate 0: `p4d` at 32 an hour with 8 GPUs; rate 1: `m5*` at 0.5.
fn rate_card() -> CostSettings {
    CostSettings {
        currency: "EUR".into(),
        default_hourly_rate: 0.25,
        rates: vec![
            Rate {
                matcher: RateMatch {
                    tag: Some("instance_type".into()),
                    param: None,
                    value: Some("p4d".into()),
                    regex: None,
                },
                hourly_rate: 32.0,
                gpus: Some(8),
            },
            Rate {
                matcher: RateMatch {
                    tag: Some("instance_type".into()),
                    param: None,
                    value: None,
                    regex: Some("^m5".into()),
                },
                hourly_rate: 0.5,
                gpus: None,
            },
        ],
        ..CostSettings::default()
    }
}

#[test]
fn runs_of_one_series_on_several_rates_are_each_priced_at_their_own() {
    let mut b = Build::default();
    b.experiment("1", "train", Some("ml"), false);
    // One series (same experiment and team, no instance type), three rates in no order.
    b.run("1", Some("a"), RunStatus::Finished, 0, 2 * H).rate = 1;
    b.run("1", Some("a"), RunStatus::Finished, 0, H).rate = 0;
    b.run("1", Some("a"), RunStatus::Killed, 0, 4 * H);
    b.run("1", Some("a"), RunStatus::Failed, 0, H).rate = 1;
    let (_d, f) = counted(&mut b, |s| s.cost = rate_card());
    // 3 h at 0.5, 1 h at 32, 4 h at the default 0.25.
    assert_eq!(
        series(&f, "mlflow_run_cost_total"),
        map(&[("train,ml,", 1.5 + 32.0 + 1.0)])
    );
    assert_eq!(
        series(&f, "mlflow_run_compute_seconds_total"),
        map(&[("train,ml,", 8.0 * 3600.0)])
    );
}

#[test]
fn the_rate_card_prices_each_run_and_counts_its_gpus() {
    let mut b = Build::default();
    b.experiment("1", "train", Some("ml"), false);
    let (gpu_box, cpu_box) = (b.sym("p4d"), b.sym("m5"));
    // 2 h on the 8-GPU rate (the card's count wins over the 1 GPU the run logged).
    let r = b.run("1", Some("a"), RunStatus::Finished, 0, 2 * H);
    (r.rate, r.instance_type, r.gpus_logged) = (0, Some(gpu_box), 1);
    // Running for 30 min at `now`, on a rate with no GPU count: its 2 logged GPUs count.
    let r = b.run("1", Some("a"), RunStatus::Running, NOW - H / 2, NO_TIME);
    (r.rate, r.instance_type, r.gpus_logged) = (1, Some(cpu_box), 2);
    // No rate matched: the default rate; scheduled runs cost nothing.
    b.run("1", Some("a"), RunStatus::Killed, 0, 3 * H);
    b.run("1", Some("a"), RunStatus::Scheduled, NOW - H, NO_TIME);
    let (_d, f) = counted(&mut b, |s| s.cost = rate_card());
    assert_eq!(
        series(&f, "mlflow_run_compute_seconds_total"),
        map(&[
            ("train,ml,", 3.0 * 3600.0),
            ("train,ml,m5", 1800.0),
            ("train,ml,p4d", 7200.0)
        ])
    );
    assert_eq!(
        series(&f, "mlflow_run_cost_total"),
        map(&[
            ("train,ml,", 0.75),
            ("train,ml,m5", 0.25),
            ("train,ml,p4d", 64.0)
        ])
    );
    assert_eq!(
        series(&f, "mlflow_run_gpu_seconds_total"),
        map(&[
            ("train,ml,", 0.0),
            ("train,ml,m5", 3600.0),
            ("train,ml,p4d", 57600.0)
        ])
    );
    assert_eq!(
        series(&f, "mlflow_exporter_cost_currency_info"),
        map(&[("EUR", 1.0)])
    );
}

#[test]
fn a_run_tag_names_its_team_before_its_experiment() {
    let mut b = Build::default();
    b.experiment("1", "e", Some("exp-team"), false);
    b.experiment("2", "f", None, false);
    b.run("1", Some("a"), RunStatus::Finished, 0, 1_000);
    let own = b.sym("run-team");
    b.run("1", Some("a"), RunStatus::Finished, 0, 2_000).team = Some(own);
    b.run("2", Some("a"), RunStatus::Finished, 0, 4_000);
    let (_d, f) = counted(&mut b, |_| {});
    assert_eq!(
        series(&f, "mlflow_run_compute_seconds_total"),
        map(&[("e,exp-team,", 1.0), ("e,run-team,", 2.0), ("f,,", 4.0)])
    );
}

#[test]
fn every_family_is_declared_with_its_labels() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    b.run("1", Some("a"), RunStatus::Finished, 0, 1_000);
    let combo = b.snap.strings.intern_combo(&[None]);
    b.snap.runs.values_mut().for_each(|r| r.extra = combo);
    let (d, f) = counted(&mut b, |s| {
        s.metrics.extra_labels = vec![crate::config::ExtraLabel {
            name: "estimator".into(),
            tag: None,
            param: Some("estimator_class".into()),
        }]
    });
    let specs = specs();
    assert_eq!(f.len(), specs.len());
    let mut names: Vec<&str> = f.iter().map(|f| f.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), specs.len(), "each family once");
    for fam in &f {
        let spec = specs.iter().find(|s| s.name == fam.name()).unwrap();
        assert_eq!(fam.kind(), spec.kind);
        let names = spec.label_names(&d.extra_label_names());
        for (sample, labels, _) in fam.samples() {
            let got: Vec<&str> = labels
                .iter()
                .map(|(l, _)| l.as_str())
                .filter(|l| !(*l == "le" && sample.ends_with("_bucket")))
                .collect();
            assert_eq!(got, names, "{}", spec.name);
        }
    }
}

#[test]
fn the_number_of_counter_families_is_what_the_budget_reserves() {
    let tally = crate::tally::Tally::new(&Settings::default());
    let d = settings(|_| {});
    assert_eq!(counters(&tally, &d, 0).len(), COUNTER_FAMILIES);
}

#[test]
fn window_labels() {
    assert_eq!(window_label(Duration::from_secs(86400)), "1d");
    assert_eq!(window_label(Duration::from_secs(30 * 86400)), "30d");
    assert_eq!(window_label(Duration::from_secs(7200)), "2h");
    assert_eq!(window_label(Duration::from_secs(90)), "90s");
    assert_eq!(window_label(Duration::from_secs(120)), "2m");
}

fn version(b: &mut Build, model: &str, number: u32, run: Option<RunKey>, created_ms: i64) {
    let (m, none, ready) = (b.sym(model), b.sym("None"), b.sym("READY"));
    b.snap.models.entry(m).or_default();
    b.snap.versions.insert(
        (m, number),
        VersionRecord {
            stage: none,
            status: ready,
            created_ms,
            last_updated_ms: created_ms,
            run,
            logged_model: None,
        },
    );
}

#[test]
fn activation_time_to_value_and_registry_feature_users() {
    let mut b = Build::default();
    b.experiment("1", "e", Some("ml"), false);
    // ann: first run 10 d ago, a version from her second run 2 d ago → 8 d to value.
    b.run(
        "1",
        Some("ann"),
        RunStatus::Finished,
        NOW - 10 * D,
        NOW - 10 * D + H,
    );
    b.run(
        "1",
        Some("ann"),
        RunStatus::Finished,
        NOW - 3 * D,
        NOW - 3 * D + H,
    );
    let ann_run = b.next;
    // ben: a version from his only run, created 1 h after its start; and a later one.
    b.run(
        "1",
        Some("ben"),
        RunStatus::Finished,
        NOW - 12 * H,
        NOW - 11 * H,
    );
    let ben_run = b.next;
    // cy: runs, but no version of his; a version whose run MLflow no longer has; one with no run.
    b.run("1", Some("cy"), RunStatus::Finished, NOW - H, NOW);
    version(&mut b, "m", 1, Some(ann_run), NOW - 2 * D);
    version(&mut b, "m", 2, Some(ben_run), NOW - 11 * H);
    version(&mut b, "m", 3, Some(ben_run), NOW - H);
    version(&mut b, "m", 4, Some(999_999), NOW);
    version(&mut b, "m", 5, None, NOW);
    let (_d, f) = counted(&mut b, |s| {
        s.metrics.time_to_first_model_buckets = vec![3600.0, 86400.0, 864000.0]
    });
    assert_eq!(series(&f, "mlflow_activated_users"), map(&[("", 2.0)]));
    let (_, cumulative, _, sum) = histogram(&f, "mlflow_user_time_to_first_model_seconds");
    // ben: exactly 1 h (le is inclusive); ann: 8 d.
    assert_eq!(cumulative, vec![1, 1, 2]);
    assert_eq!(sum, (H + 8 * D) as f64 / 1000.0);
    // The registry feature follows the run a version came from: ann's run 3 d ago, ben's 12 h ago.
    let registry: BTreeMap<String, f64> = series(&f, "mlflow_feature_users")
        .into_iter()
        .filter(|(k, _)| k.starts_with("registry,"))
        .collect();
    assert_eq!(
        registry,
        map(&[
            ("registry,1d", 1.0),
            ("registry,30d", 2.0),
            ("registry,7d", 2.0)
        ])
    );
    assert_eq!(series(&f, "mlflow_teams"), map(&[("", 1.0)]));
}

#[test]
fn nobody_activated_still_exports_an_empty_histogram() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    b.run("1", Some("a"), RunStatus::Finished, NOW - H, NOW);
    let (_d, f) = counted(&mut b, |_| {});
    assert_eq!(series(&f, "mlflow_activated_users"), map(&[("", 0.0)]));
    assert_eq!(
        series(&f, "mlflow_user_time_to_first_model_seconds"),
        map(&[("", 0.0)])
    );
    // No team anywhere: no teams, none active.
    assert_eq!(series(&f, "mlflow_teams"), map(&[("", 0.0)]));
    assert_eq!(
        series(&f, "mlflow_active_teams"),
        map(&[("1d", 0.0), ("30d", 0.0), ("7d", 0.0)])
    );
}

#[test]
fn feature_users_count_each_user_once_per_window() {
    let mut b = Build::default();
    b.experiment("1", "e", None, false);
    // Default features: registry 0, system_metrics 1, autolog 2, git 3, nested_runs 4, datasets 5,
    // prompts 6, tracing 7 (from the runs traces were made in), evaluation 8.
    b.run("1", Some("a"), RunStatus::Finished, NOW - H, NOW)
        .features = 1 << 1 | 1 << 3;
    b.run("1", Some("a"), RunStatus::Running, NOW - 2 * H, NO_TIME)
        .features = 1 << 1;
    b.run("1", Some("b"), RunStatus::Finished, NOW - 5 * D, NOW)
        .features = 1 << 2;
    b.run("1", Some("c"), RunStatus::Finished, NOW - 40 * D, NOW)
        .features = 0b111110;
    // Run 3 (b's, 5 days ago) had traces made in it.
    let traced = [3].into_iter().collect();
    let f = adoption::families(&b.snap, &settings(|_| {}), &traced, NOW);
    let got: BTreeMap<String, f64> = series(&f, "mlflow_feature_users")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .collect();
    assert_eq!(
        got,
        map(&[
            ("autolog,30d", 1.0),
            ("autolog,7d", 1.0),
            ("git,1d", 1.0),
            ("git,30d", 1.0),
            ("git,7d", 1.0),
            ("system_metrics,1d", 1.0),
            ("system_metrics,30d", 1.0),
            ("system_metrics,7d", 1.0),
            ("tracing,30d", 1.0),
            ("tracing,7d", 1.0),
        ])
    );
    // Every feature and window is exported, zeros included: 9 features × 3 windows.
    assert_eq!(series(&f, "mlflow_feature_users").len(), 27);
}

#[test]
fn gpu_utilization_and_idle_cost_of_ended_runs() {
    let mut b = Build::default();
    b.experiment("1", "train", Some("ml"), false);
    let g5 = b.sym("g5");
    // 2 h at 25 % on a 2/h rate: 4 of cost, 3 of it idle.
    let r = b.run("1", Some("a"), RunStatus::Finished, 0, 2 * H);
    (r.gpu_util_pct, r.rate, r.instance_type) = (25.0, 0, Some(g5));
    // Failed at 100 % on the same rate: no idle cost; over 100 % counts as 100 %.
    let r = b.run("1", Some("a"), RunStatus::Failed, 0, H);
    (r.gpu_util_pct, r.rate, r.instance_type) = (130.0, 0, Some(g5));
    // Still running: not observed yet.
    let r = b.run("1", Some("a"), RunStatus::Running, NOW - H, NO_TIME);
    (r.gpu_util_pct, r.rate, r.instance_type) = (10.0, 0, Some(g5));
    // No GPU metrics: no utilization.
    b.run("1", Some("a"), RunStatus::Finished, 0, H)
        .instance_type = Some(g5);
    let (_d, f) = counted(&mut b, |s| {
        s.cost.rates = vec![Rate {
            matcher: RateMatch {
                tag: Some("instance_type".into()),
                param: None,
                value: Some("g5".into()),
                regex: None,
            },
            hourly_rate: 2.0,
            gpus: None,
        }];
        s.metrics.gpu_utilization_buckets = vec![0.25, 0.5, 1.0];
    });
    let (labels, cumulative, _, sum) = histogram(&f, "mlflow_run_gpu_utilization_ratio");
    assert_eq!(labels, ["train", "ml"]);
    assert_eq!(cumulative, vec![1, 1, 2]);
    assert_eq!(sum, 1.25);
    assert_eq!(
        series(&f, "mlflow_run_idle_gpu_cost_total"),
        map(&[("train,ml,g5", 3.0)])
    );
}

#[test]
fn best_metric_follows_each_keys_goal() {
    let mut b = Build::default();
    b.experiment("1", "a", None, false);
    b.experiment("2", "b", None, false);
    let nan = f64::NAN;
    // Keys by default: accuracy (max), auc (max), f1 (max), rmse (min), loss (min).
    b.run("1", None, RunStatus::Finished, 0, 1).quality = Box::new([0.8, nan, nan, 2.0, nan]);
    b.run("1", None, RunStatus::Finished, 0, 1).quality = Box::new([0.9, nan, nan, 3.0, 0.4]);
    // Better values, but failed, or deleted: not counted.
    b.run("1", None, RunStatus::Failed, 0, 1).quality = Box::new([0.99, nan, nan, 0.1, nan]);
    let r = b.run("1", None, RunStatus::Finished, 0, 1);
    (r.quality, r.deleted) = (Box::new([0.95, nan, nan, 0.5, nan]), true);
    b.run("2", None, RunStatus::Finished, 0, 1).quality = Box::new([nan, 0.7, nan, nan, nan]);
    let (_d, f) = counted(&mut b, |_| {});
    assert_eq!(
        series(&f, "mlflow_experiment_best_metric"),
        map(&[
            ("a,accuracy", 0.9),
            ("a,loss", 0.4),
            ("a,rmse", 2.0),
            ("b,auc", 0.7)
        ])
    );
    // Folded together, the better value of the two experiments wins for each key.
    let (_d, f) = counted(&mut b, |s| s.metrics.max_label_values = 1);
    assert_eq!(
        series(&f, "mlflow_experiment_best_metric"),
        map(&[
            ("__other__,auc", 0.7),
            ("a,accuracy", 0.9),
            ("a,loss", 0.4),
            ("a,rmse", 2.0)
        ])
    );
}

#[test]
fn runs_started_and_creation_counters() {
    let mut b = Build::default();
    b.experiment("1", "e", Some("ml"), false);
    b.experiment("2", "gone", Some("ml"), true);
    b.experiment("3", "f", None, false);
    b.run("1", Some("a"), RunStatus::Finished, 0, 1);
    b.run("1", Some("a"), RunStatus::Running, 0, NO_TIME);
    b.run("1", Some("a"), RunStatus::Scheduled, 0, NO_TIME);
    b.run("2", Some("a"), RunStatus::Killed, 0, 1).deleted = true;
    version(&mut b, "m", 1, None, 0);
    version(&mut b, "m", 2, None, 0);
    let team = b.sym("risk");
    version(&mut b, "n", 1, None, 0);
    b.snap
        .models
        .get_mut(&b.snap.strings.lookup("n").unwrap())
        .unwrap()
        .team = Some(team);
    let (_d, f) = counted(&mut b, |_| {});
    assert_eq!(
        series(&f, "mlflow_runs_started_total"),
        map(&[("e,ml", 2.0), ("gone,ml", 1.0)])
    );
    assert_eq!(
        series(&f, "mlflow_experiments_created_total"),
        map(&[("", 1.0), ("ml", 2.0)])
    );
    assert_eq!(
        series(&f, "mlflow_registered_models_created_total"),
        map(&[("", 1.0), ("risk", 1.0)])
    );
    assert_eq!(
        series(&f, "mlflow_model_versions_created_total"),
        map(&[("m", 2.0), ("n", 1.0)])
    );
}

#[test]
fn halfway_cuts_where_the_first_half_reaches_half_the_weight() {
    assert_eq!(super::halfway([1, 1, 1, 1].into_iter()), 2);
    assert_eq!(super::halfway([3, 1, 1, 1].into_iter()), 1);
    assert_eq!(super::halfway([1, 1, 1, 5].into_iter()), 4);
    assert_eq!(super::halfway([0, 0].into_iter()), 1);
    assert_eq!(super::halfway(std::iter::empty()), 0);
}
