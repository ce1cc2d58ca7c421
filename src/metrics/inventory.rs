//! What exists in MLflow: experiments by lifecycle stage, registered models, versions by stage and
//! status, the version each alias points at; and from the tally, counters of everything ever
//! created (deleted experiments included), which charts of creations over time are built from.
//! MLflow 3's logged models: by experiment and status, created, and how long until each was first
//! registered as a model version (the last step of time to value).

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
pub const LOGGED_MODELS: Spec = Spec::gauge(
    "mlflow_logged_models",
    "Logged models (MLflow 3) by experiment and status (PENDING, READY, FAILED_UPLOAD)",
    &["experiment", "status"],
);
pub const LOGGED_MODELS_CREATED: Spec = Spec::counter(
    "mlflow_logged_models_created_total",
    "Logged models (MLflow 3) created, by experiment, counted once when first seen",
    &["experiment"],
);
pub const TIME_TO_REGISTRATION: Spec = Spec::histogram(
    "mlflow_logged_model_time_to_registration_seconds",
    "Per logged model, observed once: from its creation to the first model version registered from it",
    &[],
);
pub const PROMPTS: Spec = Spec::gauge(
    "mlflow_prompts",
    "Prompts of MLflow 3's prompt registry, by the prompt's team tag",
    &["team"],
);
pub const PROMPT_VERSIONS: Spec = Spec::gauge(
    "mlflow_prompt_versions",
    "Versions of the prompts of MLflow 3's prompt registry, by the prompt's team tag",
    &["team"],
);
pub const PROMPTS_CREATED: Spec = Spec::counter(
    "mlflow_prompts_created_total",
    "Prompts created in MLflow 3's prompt registry, by the prompt's team tag, counted once",
    &["team"],
);
pub const PROMPT_VERSIONS_CREATED: Spec = Spec::counter(
    "mlflow_prompt_versions_created_total",
    "Prompt versions created, by the prompt's team tag, counted once",
    &["team"],
);
pub const SPECS: &[Spec] = &[
    EXPERIMENTS,
    REGISTERED_MODELS,
    MODEL_VERSIONS,
    ALIAS_VERSION,
    EXPERIMENTS_CREATED,
    MODELS_CREATED,
    VERSIONS_CREATED,
    LOGGED_MODELS,
    LOGGED_MODELS_CREATED,
    TIME_TO_REGISTRATION,
    PROMPTS,
    PROMPT_VERSIONS,
    PROMPTS_CREATED,
    PROMPT_VERSIONS_CREATED,
];

pub fn gauges(snap: &Snapshot, folds: &Folds) -> Vec<TextFamily> {
    let s = &snap.strings;
    // With workspaces, experiments and models are counted per workspace (every workspace with
    // either has both series).
    let mut per: BTreeMap<Option<&str>, [u64; 3]> = BTreeMap::new();
    for e in snap.experiments.values() {
        per.entry(e.workspace.map(|w| s.get(w))).or_default()[usize::from(e.deleted)] += 1;
    }
    for m in snap.models.values() {
        per.entry(m.workspace.map(|w| s.get(w))).or_default()[2] += 1;
    }
    let scoped = per.keys().any(Option::is_some);
    let (mut exp, mut models) = match scoped {
        true => (
            Family::per_workspace(&EXPERIMENTS),
            Family::per_workspace(&REGISTERED_MODELS),
        ),
        false => (Family::new(&EXPERIMENTS), Family::new(&REGISTERED_MODELS)),
    };
    if per.is_empty() {
        per.insert(None, [0; 3]);
    }
    for (w, [active, deleted, n]) in &per {
        let ws: Vec<&str> = w.iter().copied().collect();
        let with = |v: &'static str| -> Vec<&str> { ws.iter().copied().chain([v]).collect() };
        exp.add(&with("active"), *active as f64);
        exp.add(&with("deleted"), *deleted as f64);
        models.add(&ws, *n as f64);
    }

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

    // Every experiment with a logged model has a series of each status.
    let mut logged: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for l in snap.logged_models.values() {
        let experiment = folds.experiment(snap, l.experiment);
        for st in crate::sync::snapshot::LoggedStatus::ALL {
            *logged.entry((experiment, st.as_str())).or_default() += u64::from(st == l.status);
        }
    }
    let mut logged_f = Family::new(&LOGGED_MODELS);
    for ((e, st), n) in logged {
        logged_f.add(&[e, st], n as f64);
    }

    // Prompts and their versions by team: every team of a prompt has both series.
    let mut prompts: BTreeMap<String, [u64; 2]> = BTreeMap::new();
    let team = |p: &crate::sync::snapshot::ModelRecord| {
        crate::tally::prompt_team(snap, folds, p.workspace, p.team)
    };
    for p in snap.prompts.values() {
        prompts.entry(team(p)).or_default()[0] += 1;
    }
    for (p, _) in snap.prompt_versions.keys() {
        if let Some(rec) = snap.prompts.get(p) {
            prompts.entry(team(rec)).or_default()[1] += 1;
        }
    }
    let mut prompts_f = Family::new(&PROMPTS);
    let mut prompt_versions_f = Family::new(&PROMPT_VERSIONS);
    for (team, [n, v]) in &prompts {
        prompts_f.add(&[team], *n as f64);
        prompt_versions_f.add(&[team], *v as f64);
    }

    vec![
        exp.finish(),
        models.finish(),
        versions.finish(),
        aliases.finish(),
        logged_f.finish(),
        prompts_f.finish(),
        prompt_versions_f.finish(),
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
    .chain([
        (&LOGGED_MODELS_CREATED, &tally.logged_models_created),
        (&PROMPTS_CREATED, &tally.prompts_created),
        (&PROMPT_VERSIONS_CREATED, &tally.prompt_versions_created),
    ])
    .map(|(spec, series)| {
        let mut f = Family::new(spec);
        for (key, n) in series {
            f.add(&[&key[0]], *n as f64);
        }
        f.finish()
    })
    .chain([time_to_registration(tally)])
    .collect()
}

/// Exported from the start, empty before any logged model is registered.
fn time_to_registration(tally: &Tally) -> TextFamily {
    let bounds = &tally.settings.reg_bounds;
    let h = &tally.time_to_registration;
    let mut f = Family::new(&TIME_TO_REGISTRATION);
    f.add_histogram(&[], bounds, &h.counts, h.sum_ms as f64 / 1000.0);
    f.finish()
}
