//! How good the models are: the best value of each configured quality metric (accuracy, rmse, …)
//! among an experiment's finished runs, in the direction the configuration says is better.

use std::collections::{BTreeMap, HashMap};

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::{Derivation, Folds};
use crate::config::Goal;
use crate::sync::snapshot::{RunStatus, Snapshot, Sym};

pub const BEST_METRIC: Spec = Spec::gauge(
    "mlflow_experiment_best_metric",
    "Best latest value of a quality metric among the experiment's finished, not deleted runs",
    &["experiment", "key"],
);
pub const SPECS: &[Spec] = &[BEST_METRIC];

/// The better of two values for a goal.
pub fn better(goal: Goal, a: f64, b: f64) -> f64 {
    match goal {
        Goal::Max => a.max(b),
        Goal::Min => a.min(b),
    }
}

pub fn families(snap: &Snapshot, d: &Derivation, folds: &Folds) -> Vec<TextFamily> {
    let keys = &d.settings.quality_metrics;
    // By experiment id first: a name per run would cost a string-keyed lookup each (a tenth of a
    // derive at 100 000 runs). Ids are then named, and ids that share a name (`other`) merged.
    let mut by_id: HashMap<(Sym, usize), f64> = HashMap::new();
    for r in snap.runs.values() {
        if r.status != RunStatus::Finished || r.deleted || r.quality.is_empty() {
            continue;
        }
        for (i, v) in r.quality.iter().enumerate().filter(|(_, v)| v.is_finite()) {
            by_id
                .entry((r.experiment, i))
                .and_modify(|b| *b = better(keys[i].goal, *b, *v))
                .or_insert(*v);
        }
    }
    let mut best: BTreeMap<(&str, usize), f64> = BTreeMap::new();
    for ((id, i), v) in by_id {
        best.entry((folds.experiment(snap, id), i))
            .and_modify(|b| *b = better(keys[i].goal, *b, v))
            .or_insert(v);
    }
    let mut f = Family::new(&BEST_METRIC);
    for ((exp, i), v) in best {
        f.add(&[exp, &keys[i].key], v);
    }
    vec![f.finish()]
}
