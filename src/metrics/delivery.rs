//! Delivery (DORA for models) from the folded event history: deployments and rollbacks of each
//! serving alias (and the legacy `Production` stage), when each was last deployed and its last lead
//! time; lead time and its two parts and how long rollbacks and incidents took to restore, by team
//! (and model, for the models shown apart); and the quality metrics of what is deployed and of what
//! it replaced.

use std::collections::{BTreeMap, BTreeSet};

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::{Derivation, Folds};
use crate::config::Goal;
use crate::delivery::{Delivery, TargetFigures};
use crate::histogram::HistogramAcc;
use crate::sync::snapshot::{Snapshot, NO_TIME};
use crate::tally::labels::ModelFold;

const TARGET: &[&str] = &["model", "alias"];
const BY_TEAM: &[&str] = &["team", "model"];
pub const DEPLOYMENTS: Spec = Spec::counter(
    "mlflow_model_deployments_total",
    "Deployments: a serving alias moved to another version, or a version entered Production",
    TARGET,
);
pub const ROLLBACKS: Spec = Spec::counter(
    "mlflow_model_rollbacks_total",
    "Deployments to a lower version than the one replaced, or to one the alias served before",
    TARGET,
);
pub const LEAD_TIME: Spec = Spec::histogram(
    "mlflow_model_lead_time_seconds",
    "Start of the training run behind the deployed version to its deployment (rollbacks excluded), by the model's team; models not shown apart are __other__",
    BY_TEAM,
);
pub const TIME_TO_REGISTER: Spec = Spec::histogram(
    "mlflow_model_time_to_register_seconds",
    "End of the training run to the creation of the deployed version (rollbacks excluded)",
    BY_TEAM,
);
pub const TIME_TO_DEPLOY: Spec = Spec::histogram(
    "mlflow_model_time_to_deploy_seconds",
    "Creation of the deployed version to its deployment (rollbacks excluded)",
    BY_TEAM,
);
pub const DEPLOYED_TIMESTAMP: Spec = Spec::gauge(
    "mlflow_model_deployed_timestamp_seconds",
    "Time of the last deployment; for an alias only seen serving since start-up, the creation of the version it served then",
    TARGET,
);
pub const LAST_LEAD_TIME: Spec = Spec::gauge(
    "mlflow_model_last_lead_time_seconds",
    "Lead time of the alias's last deployment that was not a rollback",
    TARGET,
);
pub const ROLLBACK_RECOVERY: Spec = Spec::histogram(
    "mlflow_model_rollback_recovery_seconds",
    "Deployment of the version a rollback replaced to the rollback: time to restore",
    BY_TEAM,
);
const QUALITY: &[&str] = &["model", "alias", "key", "goal"];
pub const MODEL_METRIC: Spec = Spec::gauge(
    "mlflow_model_metric",
    "Latest value of a quality metric logged by the run behind the version an alias serves; goal says which way is better",
    QUALITY,
);
pub const REPLACED_METRIC: Spec = Spec::gauge(
    "mlflow_model_replaced_metric",
    "Latest value of a quality metric logged by the run behind the version the alias served before its last deployment",
    QUALITY,
);
const INCIDENT: &[&str] = &["model", "severity"];
pub const INCIDENTS: Spec = Spec::counter(
    "mlflow_incidents_total",
    "Incidents opened (Alertmanager alerts or CI/CD events), by the model they are attributed to",
    INCIDENT,
);
pub const INCIDENTS_OPEN: Spec =
    Spec::gauge("mlflow_incidents_open", "Incidents open now", INCIDENT);
pub const INCIDENT_RECOVERY: Spec = Spec::histogram(
    "mlflow_incident_recovery_seconds",
    "Incident opened to resolved: time to restore, by the model's team",
    &["team", "model", "severity"],
);
const PROMPT_TARGET: &[&str] = &["prompt", "alias"];
const PROMPT_BY_TEAM: &[&str] = &["team", "prompt"];
pub const PROMPT_DEPLOYMENTS: Spec = Spec::counter(
    "mlflow_prompt_deployments_total",
    "Deployments of prompts: a serving alias of a prompt moved to another version, or set anew; prompts not shown apart are __other__",
    PROMPT_TARGET,
);
pub const PROMPT_ROLLBACKS: Spec = Spec::counter(
    "mlflow_prompt_rollbacks_total",
    "Deployments of a prompt to a lower version than the one replaced, or to one the alias served before",
    PROMPT_TARGET,
);
pub const PROMPT_DEPLOYED_TIMESTAMP: Spec = Spec::gauge(
    "mlflow_prompt_deployed_timestamp_seconds",
    "Time of the prompt alias's last deployment; for an alias only seen serving since start-up, the creation of the version it served then",
    PROMPT_TARGET,
);
pub const PROMPT_LEAD_TIME: Spec = Spec::histogram(
    "mlflow_prompt_lead_time_seconds",
    "Creation of the deployed prompt version to its deployment (rollbacks excluded), by the prompt's team",
    PROMPT_BY_TEAM,
);
pub const PROMPT_ROLLBACK_RECOVERY: Spec = Spec::histogram(
    "mlflow_prompt_rollback_recovery_seconds",
    "Deployment of the prompt version a rollback replaced to the rollback: time to restore",
    PROMPT_BY_TEAM,
);
/// Families derived from the snapshot (what the served versions' runs logged).
pub const SPECS: &[Spec] = &[MODEL_METRIC, REPLACED_METRIC];
/// Families derived from the event history alone.
pub const HISTORY_SPECS: &[Spec] = &[
    DEPLOYMENTS,
    ROLLBACKS,
    LEAD_TIME,
    TIME_TO_REGISTER,
    TIME_TO_DEPLOY,
    DEPLOYED_TIMESTAMP,
    LAST_LEAD_TIME,
    ROLLBACK_RECOVERY,
    INCIDENTS,
    INCIDENTS_OPEN,
    INCIDENT_RECOVERY,
    PROMPT_DEPLOYMENTS,
    PROMPT_ROLLBACKS,
    PROMPT_DEPLOYED_TIMESTAMP,
    PROMPT_LEAD_TIME,
    PROMPT_ROLLBACK_RECOVERY,
];

fn histogram(f: &mut Family, values: &[&str], bounds: &[f64], acc: &HistogramAcc) {
    f.add_histogram(values, bounds, &acc.counts, acc.sum_ms as f64 / 1000.0);
}

/// `mlflow_model_metric` and `mlflow_model_replaced_metric`: the quality metrics of the run
/// behind each served version, and behind the version it replaced. Models folded into `__other__`
/// are left out: their values would collide.
pub fn families(
    snap: &Snapshot,
    folds: &Folds,
    delivery: &Delivery,
    d: &Derivation,
) -> Vec<TextFamily> {
    let mut current = Family::new(&MODEL_METRIC);
    let mut replaced = Family::new(&REPLACED_METRIC);
    let mut targets: Vec<&(String, String)> = delivery.targets().collect();
    targets.sort();
    for (model, target) in targets {
        let Some(m) = snap.strings.lookup(model) else {
            continue;
        };
        if !folds.model.is_kept(m) {
            continue;
        }
        let run = |v: Option<u32>| {
            v.and_then(|v| snap.versions.get(&(m, v)))
                .and_then(|v| v.run)
                .and_then(|k| snap.runs.get(&k))
        };
        for (family, version) in [
            (&mut current, delivery.serving(model, target)),
            (&mut replaced, delivery.replaced(model, target)),
        ] {
            let Some(r) = run(version) else { continue };
            for (q, value) in d.settings.quality_metrics.iter().zip(r.quality.iter()) {
                if value.is_finite() {
                    family.add(&[model, target, &q.key, goal(q.goal)], *value);
                }
            }
        }
    }
    vec![current.finish(), replaced.finish()]
}

/// The `goal` label: which way a quality metric is better.
pub fn goal(g: Goal) -> &'static str {
    match g {
        Goal::Max => "maximize",
        Goal::Min => "minimize",
    }
}

/// The families of the event history: deployments, rollbacks, lead time, incidents, and the
/// prompts' deployments ([`prompt_families`]). `fold` names
/// the models that keep a `model` label of their own (as the snapshot's families do); the others'
/// figures are summed under `__other__`. Every target seen has its series from its first sight,
/// and every served model its incident series of each configured severity, zeros included.
pub fn history_families(delivery: &Delivery, d: &Derivation, fold: &ModelFold) -> Vec<TextFamily> {
    let b = &d.delivery;
    let per = per_target(delivery, |model| fold.label(model));
    let served: BTreeSet<&str> = delivery.targets().map(|(m, _)| m.as_str()).collect();
    let mut deployments = Family::new(&DEPLOYMENTS);
    let mut rollbacks = Family::new(&ROLLBACKS);
    let mut deployed = Family::new(&DEPLOYED_TIMESTAMP);
    let mut last_lead = Family::new(&LAST_LEAD_TIME);
    for ((model, target), f) in &per {
        let labels = [*model, *target];
        deployments.add(&labels, f.deployments as f64);
        rollbacks.add(&labels, f.rollbacks as f64);
        if let Some(t) = f.last_ms {
            deployed.add(&labels, t as f64 / 1000.0);
        }
        if let Some((_, lead)) = f.lead {
            last_lead.add(&labels, lead as f64 / 1000.0);
        }
    }
    let mut lead = Family::new(&LEAD_TIME);
    let mut register = Family::new(&TIME_TO_REGISTER);
    let mut to_deploy = Family::new(&TIME_TO_DEPLOY);
    let mut recovery = Family::new(&ROLLBACK_RECOVERY);
    for ((team, model), h) in &delivery.histograms {
        let labels = [team.as_str(), model.as_str()];
        histogram(&mut lead, &labels, &b.lead_time_buckets, &h.lead_time);
        histogram(
            &mut register,
            &labels,
            &b.time_to_register_buckets,
            &h.time_to_register,
        );
        histogram(
            &mut to_deploy,
            &labels,
            &b.time_to_deploy_buckets,
            &h.time_to_deploy,
        );
        histogram(
            &mut recovery,
            &labels,
            &b.recovery_buckets,
            &h.rollback_recovery,
        );
    }

    let severities = &delivery.labelling.severities;
    let mut counts: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    let mut restore: BTreeMap<(&str, &str, &str), HistogramAcc> = BTreeMap::new();
    for model in &served {
        for sev in severities {
            counts.entry((fold.label(model), sev)).or_default();
            restore
                .entry((delivery.team(model), delivery.histogram_model(model), sev))
                .or_default();
        }
    }
    for ((model, severity), f) in &delivery.incidents {
        let slot = counts.entry((fold.label(model), severity)).or_default();
        slot.0 += f.opened;
        slot.1 += f.open;
    }
    for ((team, model, severity), h) in &delivery.incident_recovery {
        restore.entry((team, model, severity)).or_default().merge(h);
    }
    let mut incidents = Family::new(&INCIDENTS);
    let mut open = Family::new(&INCIDENTS_OPEN);
    for ((model, severity), (opened, now_open)) in &counts {
        incidents.add(&[model, severity], *opened as f64);
        open.add(&[model, severity], *now_open as f64);
    }
    let mut incident_recovery = Family::new(&INCIDENT_RECOVERY);
    for ((team, model, severity), h) in &restore {
        histogram(
            &mut incident_recovery,
            &[team, model, severity],
            &b.incident_recovery_buckets,
            h,
        );
    }
    vec![
        deployments.finish(),
        rollbacks.finish(),
        lead.finish(),
        register.finish(),
        to_deploy.finish(),
        deployed.finish(),
        last_lead.finish(),
        recovery.finish(),
        incidents.finish(),
        open.finish(),
        incident_recovery.finish(),
    ]
    .into_iter()
    .chain(prompt_families(delivery.prompts(), d))
    .collect()
}

/// Per target, folded: deployments, rollbacks, last deployment, and (its time, lead time) of the
/// last deployment with one.
#[derive(Default)]
struct Folded {
    deployments: u64,
    rollbacks: u64,
    last_ms: Option<i64>,
    lead: Option<(i64, i64)>,
}

/// Every target's figures, summed by the label `label` gives its model (or prompt) and by alias.
fn per_target<'a>(
    delivery: &'a Delivery,
    label: impl Fn(&'a str) -> &'a str,
) -> BTreeMap<(&'a str, &'a str), Folded> {
    let mut per: BTreeMap<(&str, &str), Folded> = BTreeMap::new();
    let empty = TargetFigures::default();
    for (model, target) in delivery.targets() {
        let f = delivery
            .figures
            .get(&(model.clone(), target.clone()))
            .unwrap_or(&empty);
        let slot = per.entry((label(model), target)).or_default();
        slot.deployments += f.deployments;
        slot.rollbacks += f.rollbacks;
        if f.last_deployed_ms != NO_TIME {
            slot.last_ms = Some(
                slot.last_ms
                    .map_or(f.last_deployed_ms, |t| t.max(f.last_deployed_ms)),
            );
        }
        if f.last_lead_time_ms != NO_TIME && slot.lead.is_none_or(|(at, _)| at < f.last_deployed_ms)
        {
            slot.lead = Some((f.last_deployed_ms, f.last_lead_time_ms));
        }
    }
    per
}

/// The families of the prompts' history, apart from the models': deployments, rollbacks and the
/// last deployment of each serving alias, and lead time (a prompt version's creation to its
/// deployment: a prompt has no training run) and time to restore by team. Prompts the history
/// does not show apart ([`Delivery::histogram_model`]) are summed under `__other__`, in every
/// family, so that a registry of thousands of prompts stays within the series budget.
fn prompt_families(prompts: &Delivery, d: &Derivation) -> Vec<TextFamily> {
    let b = &d.delivery;
    let mut deployments = Family::new(&PROMPT_DEPLOYMENTS);
    let mut rollbacks = Family::new(&PROMPT_ROLLBACKS);
    let mut deployed = Family::new(&PROMPT_DEPLOYED_TIMESTAMP);
    for ((prompt, alias), f) in &per_target(prompts, |p| prompts.histogram_model(p)) {
        let labels = [*prompt, *alias];
        deployments.add(&labels, f.deployments as f64);
        rollbacks.add(&labels, f.rollbacks as f64);
        if let Some(t) = f.last_ms {
            deployed.add(&labels, t as f64 / 1000.0);
        }
    }
    let mut lead = Family::new(&PROMPT_LEAD_TIME);
    let mut recovery = Family::new(&PROMPT_ROLLBACK_RECOVERY);
    for ((team, prompt), h) in &prompts.histograms {
        let labels = [team.as_str(), prompt.as_str()];
        // Counted as the models' time from version to deployment, with its buckets.
        histogram(
            &mut lead,
            &labels,
            &b.time_to_deploy_buckets,
            &h.time_to_deploy,
        );
        histogram(
            &mut recovery,
            &labels,
            &b.recovery_buckets,
            &h.rollback_recovery,
        );
    }
    vec![
        deployments.finish(),
        rollbacks.finish(),
        deployed.finish(),
        lead.finish(),
        recovery.finish(),
    ]
}
