//! Throughput of the platform: runs by current status (from the snapshot), and from the tally every
//! run that ended and how long it took, and every run started (usage frequency, per active user).

use std::collections::BTreeMap;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::HashMap;

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::{Derivation, Folds};
use crate::sync::snapshot::{RunStatus, Snapshot, Sym};
use crate::tally::{Key, Tally};

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
    "End minus start of the runs counted by mlflow_runs_ended_total, observed once when each ended",
    &["experiment", "status"],
)
.with_extra_labels();
pub const RUNS_STARTED: Spec = Spec::counter(
    "mlflow_runs_started_total",
    "Runs ever started (any status but SCHEDULED), deleted ones included",
    &["experiment", "team"],
);
pub const SPECS: &[Spec] = &[RUNS, RUNS_ENDED, RUN_DURATION, RUNS_STARTED];

/// `mlflow_runs`: runs by current status, of active experiments and not deleted. Every active
/// experiment has a series for every status.
pub fn gauges(snap: &Snapshot, folds: &Folds) -> TextFamily {
    let mut current: HashMap<(Sym, RunStatus), u64> = HashMap::new();
    for (id, e) in &snap.experiments {
        if !e.deleted {
            for st in RunStatus::ALL {
                current.insert((*id, st), 0);
            }
        }
    }
    for r in snap.runs.values() {
        let active_experiment = snap
            .experiments
            .get(&r.experiment)
            .is_some_and(|e| !e.deleted);
        if active_experiment && !r.deleted {
            *current.entry((r.experiment, r.status)).or_default() += 1;
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
    runs_f.finish()
}

/// The counters of the tally: runs ended (a series per ended status as soon as the experiment has a
/// run, so the first failure is an increase from 0), their durations (a histogram per ended status
/// of each key, zeros included; under a short series budget they fold apart from the counts) and
/// runs started.
pub fn counters(tally: &Tally, d: &Derivation) -> Vec<TextFamily> {
    let extra = d.extra_label_names();
    let mut total_f = Family::with_extra(&RUNS_ENDED, &extra);
    let mut dur_f = Family::with_extra(&RUN_DURATION, &extra);
    let bounds = &d.settings.run_duration_buckets;
    let mut values: Vec<&str> = Vec::new();
    for (key, counts) in &tally.ended {
        for (i, st) in RunStatus::ENDED.into_iter().enumerate() {
            labels_into(key, st, &mut values);
            total_f.add(&values, counts[i] as f64);
        }
    }
    for (key, hists) in &tally.durations {
        for (i, st) in RunStatus::ENDED.into_iter().enumerate() {
            labels_into(key, st, &mut values);
            let h = &hists[i];
            dur_f.add_histogram(&values, bounds, &h.counts, h.sum_ms as f64 / 1000.0);
        }
    }
    let mut started_f = Family::new(&RUNS_STARTED);
    for (key, n) in &tally.started {
        started_f.add(&[&key[0], &key[1]], *n as f64);
    }
    vec![total_f.finish(), dur_f.finish(), started_f.finish()]
}

/// The label values of a series of ended runs: the key's experiment, the status, the key's extra
/// labels.
fn labels_into<'a>(key: &'a Key, st: RunStatus, values: &mut Vec<&'a str>) {
    values.clear();
    values.push(&key[0]);
    values.push(st.as_str());
    values.extend(key[1..].iter().map(|v| &**v));
}
