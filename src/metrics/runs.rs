//! Throughput of the platform: runs by current status, every run that ended and how long it took, and
//! every run started (usage frequency, per active user).

use std::collections::BTreeMap;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::{HashMap, HashSet};

use super::family::TextFamily;

use super::family::{Family, HistogramAcc, Spec};
use super::{team_of, Derivation, Folds};
use crate::sync::snapshot::{RunStatus, Snapshot, Sym, NO_TIME};

pub const RUNS: Spec = Spec::gauge(
    "mlflow_runs",
    "Runs by current status, in active experiments and not deleted (what MLflow's UI shows)",
    &["experiment", "status"],
);
pub const RUNS_ENDED: Spec = Spec::counter(
    "mlflow_runs_ended_total",
    "Runs that ended (FINISHED, FAILED, KILLED), deleted ones and those of deleted experiments included",
    &["experiment", "status"],
)
.with_extra_labels();
pub const RUN_DURATION: Spec = Spec::histogram(
    "mlflow_run_duration_seconds",
    "End minus start of the runs counted by mlflow_runs_ended_total",
    &["experiment", "status"],
)
.with_extra_labels();
pub const RUNS_STARTED: Spec = Spec::counter(
    "mlflow_runs_started_total",
    "Runs ever started (any status but SCHEDULED), deleted ones included",
    &["experiment", "team"],
);
pub const SPECS: &[Spec] = &[RUNS, RUNS_ENDED, RUN_DURATION, RUNS_STARTED];

#[derive(Default)]
struct Ended {
    total: u64,
    durations: HistogramAcc,
}

pub fn families(snap: &Snapshot, d: &Derivation, folds: &Folds) -> Vec<TextFamily> {
    let s = &snap.strings;
    // Aggregate by symbols first (cheap per run), then fold into label values.
    let mut current: HashMap<(Sym, RunStatus), u64> = HashMap::new();
    for (id, e) in &snap.experiments {
        if !e.deleted {
            for st in RunStatus::ALL {
                current.insert((*id, st), 0);
            }
        }
    }
    let mut started: HashMap<(Sym, Option<Sym>), u64> = HashMap::new();
    let mut ended: HashMap<(Sym, RunStatus, u32), Ended> = HashMap::new();
    let mut seen: HashSet<(Sym, u32)> = HashSet::new();
    for r in snap.runs.values() {
        let active_experiment = snap
            .experiments
            .get(&r.experiment)
            .is_some_and(|e| !e.deleted);
        if active_experiment && !r.deleted {
            *current.entry((r.experiment, r.status)).or_default() += 1;
        }
        let combo = r.extra;
        seen.insert((r.experiment, combo));
        *started.entry((r.experiment, team_of(snap, r))).or_default() +=
            u64::from(r.start_ms != NO_TIME && r.status != RunStatus::Scheduled);
        if r.status.is_ended() {
            let e = ended.entry((r.experiment, r.status, combo)).or_default();
            e.total += 1;
            if let Some(ms) = r.duration_ms() {
                e.durations.observe_ms(&d.bounds_ms, ms);
            }
        }
    }

    // Every ended status gets a series as soon as the experiment has a run, so that the first
    // failure is an increase from 0 that rate() sees.
    for (exp, combo) in seen {
        for st in RunStatus::ENDED {
            ended.entry((exp, st, combo)).or_default();
        }
    }

    let mut runs_f = Family::new(&RUNS);
    let mut folded: BTreeMap<(&str, RunStatus), u64> = BTreeMap::new();
    for ((exp, st), n) in current {
        *folded.entry((folds.experiment(snap, exp), st)).or_default() += n;
    }
    for ((exp, st), n) in folded {
        runs_f.add(&[exp, st.as_str()], n as f64);
    }

    let extra_values = |combo: u32| -> Vec<&str> {
        s.combo(combo)
            .iter()
            .zip(&folds.extra)
            .map(|(v, f)| f.label(*v, s))
            .collect()
    };
    let mut merged: BTreeMap<(&str, RunStatus, Vec<&str>), Ended> = BTreeMap::new();
    for ((exp, st, combo), e) in ended {
        let m = merged
            .entry((folds.experiment(snap, exp), st, extra_values(combo)))
            .or_default();
        m.total += e.total;
        m.durations.merge(&e.durations);
    }
    let extra = d.extra_label_names();
    let mut total_f = Family::with_extra(&RUNS_ENDED, &extra);
    let mut dur_f = Family::with_extra(&RUN_DURATION, &extra);
    for ((exp, st, extra), e) in &merged {
        let mut values = vec![*exp, st.as_str()];
        values.extend_from_slice(extra);
        total_f.add(&values, e.total as f64);
        if e.durations.counts.iter().any(|c| *c > 0) {
            dur_f.add_histogram(
                &values,
                &d.settings.run_duration_buckets,
                &e.durations.counts,
                e.durations.sum_ms as f64 / 1000.0,
            );
        }
    }
    let mut started_f = Family::new(&RUNS_STARTED);
    let mut folded: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for ((exp, team), n) in started {
        *folded
            .entry((folds.experiment(snap, exp), folds.team.label(team, s)))
            .or_default() += n;
    }
    for ((exp, team), n) in folded {
        started_f.add(&[exp, team], n as f64);
    }
    vec![
        runs_f.finish(),
        total_f.finish(),
        dur_f.finish(),
        started_f.finish(),
    ]
}
