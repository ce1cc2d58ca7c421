//! Delivery (DORA for models) from the folded event history: deployments and rollbacks of each
//! serving alias (and the legacy `Production` stage), lead time and its two parts, when each was last
//! deployed, how long rollbacks took to restore, and the quality metrics of what is deployed.

use super::family::TextFamily;

use super::family::{Family, HistogramAcc, Spec};
use super::Derivation;
use crate::delivery::Delivery;
use crate::sync::snapshot::{Snapshot, NO_TIME};

const TARGET: &[&str] = &["model", "alias"];
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
    "Start of the training run behind the deployed version to its deployment (rollbacks excluded)",
    TARGET,
);
pub const TIME_TO_REGISTER: Spec = Spec::histogram(
    "mlflow_model_time_to_register_seconds",
    "End of the training run to the creation of the deployed version (rollbacks excluded)",
    &["model"],
);
pub const TIME_TO_DEPLOY: Spec = Spec::histogram(
    "mlflow_model_time_to_deploy_seconds",
    "Creation of the deployed version to its deployment (rollbacks excluded)",
    TARGET,
);
pub const DEPLOYED_TIMESTAMP: Spec = Spec::gauge(
    "mlflow_model_deployed_timestamp_seconds",
    "Time of the last deployment",
    TARGET,
);
pub const ROLLBACK_RECOVERY: Spec = Spec::histogram(
    "mlflow_model_rollback_recovery_seconds",
    "Deployment of the version a rollback replaced to the rollback: time to restore",
    TARGET,
);
pub const MODEL_METRIC: Spec = Spec::gauge(
    "mlflow_model_metric",
    "Latest value of a quality metric logged by the run behind the version an alias serves",
    &["model", "alias", "key"],
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
    "Incident opened to resolved: time to restore",
    INCIDENT,
);
/// Families derived from the snapshot (what the served versions' runs logged).
pub const SPECS: &[Spec] = &[MODEL_METRIC];
/// Families derived from the event history alone.
pub const HISTORY_SPECS: &[Spec] = &[
    DEPLOYMENTS,
    ROLLBACKS,
    LEAD_TIME,
    TIME_TO_REGISTER,
    TIME_TO_DEPLOY,
    DEPLOYED_TIMESTAMP,
    ROLLBACK_RECOVERY,
    INCIDENTS,
    INCIDENTS_OPEN,
    INCIDENT_RECOVERY,
];

fn histogram(f: &mut Family, values: &[&str], bounds: &[f64], acc: &HistogramAcc) {
    let zeros = vec![0; bounds.len() + 1];
    let counts = if acc.counts.is_empty() {
        &zeros
    } else {
        &acc.counts
    };
    f.add_histogram(values, bounds, counts, acc.sum_ms as f64 / 1000.0);
}

/// `mlflow_model_metric`: the quality metrics of the run behind each served version.
pub fn families(snap: &Snapshot, delivery: &Delivery, d: &Derivation) -> Vec<TextFamily> {
    let mut quality = Family::new(&MODEL_METRIC);
    for (model, target) in delivery.targets() {
        let run = delivery
            .serving(model, target)
            .zip(snap.strings.lookup(model))
            .and_then(|(v, m)| snap.versions.get(&(m, v)))
            .and_then(|v| v.run)
            .and_then(|k| snap.runs.get(&k));
        if let Some(r) = run {
            for (q, value) in d.settings.quality_metrics.iter().zip(r.quality.iter()) {
                if value.is_finite() {
                    quality.add(&[model, target, &q.key], *value);
                }
            }
        }
    }
    vec![quality.finish()]
}

/// The families of the event history: deployments, rollbacks, lead time, incidents.
pub fn history_families(delivery: &Delivery, d: &Derivation) -> Vec<TextFamily> {
    let b = &d.delivery;
    let mut deployments = Family::new(&DEPLOYMENTS);
    let mut rollbacks = Family::new(&ROLLBACKS);
    let mut lead = Family::new(&LEAD_TIME);
    let mut to_deploy = Family::new(&TIME_TO_DEPLOY);
    let mut deployed = Family::new(&DEPLOYED_TIMESTAMP);
    let mut recovery = Family::new(&ROLLBACK_RECOVERY);
    let empty = Default::default();
    // Every target ever seen has its series, zeros included, so the first deployment is an increase.
    for (model, target) in delivery.targets() {
        let f = delivery
            .figures
            .get(&(model.clone(), target.clone()))
            .unwrap_or(&empty);
        let labels = [model.as_str(), target.as_str()];
        deployments.add(&labels, f.deployments as f64);
        rollbacks.add(&labels, f.rollbacks as f64);
        histogram(&mut lead, &labels, &b.lead_time_buckets, &f.lead_time);
        histogram(
            &mut to_deploy,
            &labels,
            &b.time_to_deploy_buckets,
            &f.time_to_deploy,
        );
        histogram(
            &mut recovery,
            &labels,
            &b.recovery_buckets,
            &f.rollback_recovery,
        );
        if f.last_deployed_ms != NO_TIME && f.deployments > 0 {
            deployed.add(&labels, f.last_deployed_ms as f64 / 1000.0);
        }
    }
    let none = HistogramAcc::default();
    let mut register = Family::new(&TIME_TO_REGISTER);
    let mut models: Vec<&String> = delivery.targets().map(|(m, _)| m).collect();
    models.sort();
    models.dedup();
    for m in models {
        let acc = delivery.time_to_register.get(m).unwrap_or(&none);
        histogram(&mut register, &[m], &b.time_to_register_buckets, acc);
    }
    let mut incidents = Family::new(&INCIDENTS);
    let mut open = Family::new(&INCIDENTS_OPEN);
    let mut incident_recovery = Family::new(&INCIDENT_RECOVERY);
    for ((model, severity), f) in &delivery.incidents {
        let labels = [model.as_str(), severity.as_str()];
        incidents.add(&labels, f.opened as f64);
        open.add(&labels, f.open as f64);
        histogram(
            &mut incident_recovery,
            &labels,
            &b.incident_recovery_buckets,
            &f.recovery,
        );
    }
    vec![
        deployments.finish(),
        rollbacks.finish(),
        lead.finish(),
        register.finish(),
        to_deploy.finish(),
        deployed.finish(),
        recovery.finish(),
        incidents.finish(),
        open.finish(),
        incident_recovery.finish(),
    ]
}
