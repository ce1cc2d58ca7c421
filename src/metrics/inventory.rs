//! What exists in MLflow: experiments by lifecycle stage, registered models, versions by stage and
//! status, and the version each alias points at.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;

use super::family::{Family, Spec};
use super::Folds;
use crate::sync::snapshot::Snapshot;

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
pub const SPECS: &[Spec] = &[
    EXPERIMENTS,
    REGISTERED_MODELS,
    MODEL_VERSIONS,
    ALIAS_VERSION,
];

pub fn families(snap: &Snapshot, folds: &Folds) -> Vec<MetricFamily> {
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
