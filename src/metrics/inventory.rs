//! What exists in MLflow: experiments by lifecycle stage, registered models, versions by stage and
//! status, the version each alias points at; and from the tally, counters of everything ever
//! created (deleted experiments included), which charts of creations over time are built from.

use std::collections::BTreeMap;

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::Folds;
use crate::sync::snapshot::Snapshot;
use crate::tally::Tally;

pub const EXPERIMENTS: Spec = Spec::gauge(
    "mlflow_experiments",
    "Experiments by lifecycle stage",
    &["lifecycle_stage"],
);
pub const REGISTERED_MODELS: Spec =
    Spec::gauge("mlflow_registered_models", "Registered models", &[]);
pub const MODEL_VERSIONS: Spec = Spec::gauge(
    "mlflow_model_versions",
    "Model versions by legacy stage (None when unset) and registration status",
    &["model", "stage", "status"],
);
pub const ALIAS_VERSION: Spec = Spec::gauge(
    "mlflow_model_alias_version",
    "Version number each alias of a registered model points at",
    &["model", "alias"],
);
pub const EXPERIMENTS_CREATED: Spec = Spec::counter(
    "mlflow_experiments_created_total",
    "Experiments created, deleted ones included, by the experiment's team tag",
    &["team"],
);
pub const MODELS_CREATED: Spec = Spec::counter(
    "mlflow_registered_models_created_total",
    "Registered models created, by the model's team tag",
    &["team"],
);
pub const VERSIONS_CREATED: Spec = Spec::counter(
    "mlflow_model_versions_created_total",
    "Model versions created, by model",
    &["model"],
);
pub const SPECS: &[Spec] = &[
    EXPERIMENTS,
    REGISTERED_MODELS,
    MODEL_VERSIONS,
    ALIAS_VERSION,
    EXPERIMENTS_CREATED,
    MODELS_CREATED,
    VERSIONS_CREATED,
];

pub fn gauges(snap: &Snapshot, folds: &Folds) -> Vec<TextFamily> {
    let s = &snap.strings;
    let deleted = snap.experiments.values().filter(|e| e.deleted).count();
    let mut exp = Family::new(&EXPERIMENTS);
    exp.add(&["active"], (snap.experiments.len() - deleted) as f64);
    exp.add(&["deleted"], deleted as f64);

    let mut models = Family::new(&REGISTERED_MODELS);
    models.add(&[], snap.models.len() as f64);

    let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for ((model, _), v) in &snap.versions {
        let key = (
            folds.model.label(Some(*model), s),
            s.get(v.stage),
            s.get(v.status),
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut versions = Family::new(&MODEL_VERSIONS);
    for ((m, stage, status), n) in counts {
        versions.add(&[m, stage, status], n as f64);
    }

    // A folded model's aliases are left out: under `__other__` they would collide with each other.
    let mut aliases = Family::new(&ALIAS_VERSION);
    for (model, rec) in &snap.models {
        if !folds.model.is_kept(*model) {
            continue;
        }
        for (alias, version) in &rec.aliases {
            aliases.add(&[s.get(*model), s.get(*alias)], f64::from(*version));
        }
    }

    vec![
        exp.finish(),
        models.finish(),
        versions.finish(),
        aliases.finish(),
    ]
}

/// The creation counters of the tally: experiments and models by team, versions by model, each
/// counted once when first seen.
pub fn counters(tally: &Tally) -> Vec<TextFamily> {
    [
        (&EXPERIMENTS_CREATED, &tally.experiments_created),
        (&MODELS_CREATED, &tally.models_created),
        (&VERSIONS_CREATED, &tally.versions_created),
    ]
    .into_iter()
    .map(|(spec, series)| {
        let mut f = Family::new(spec);
        for (key, n) in series {
            f.add(&[&key[0]], *n as f64);
        }
        f.finish()
    })
    .collect()
}
