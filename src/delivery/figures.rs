//! The figures the history folds events into: per target (deployments, rollbacks), per model and
//! severity (incidents), and the histograms per team and model, with their buckets and the
//! models they show apart.

use crate::config::{DeliverySettings, WebhookSettings};
use crate::histogram::{bounds_ms, HistogramAcc};
use crate::sync::snapshot::NO_TIME;

/// Incidents of one model and severity.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IncidentFigures {
    pub opened: u64,
    pub open: u64,
}

/// Figures of one target.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TargetFigures {
    pub deployments: u64,
    pub rollbacks: u64,
    /// Time of the last deployment; for a target only seen at a baseline, the creation of the
    /// version it served then (it cannot have been deployed before), else the baseline's time.
    pub last_deployed_ms: i64,
    /// Lead time of the last deployment that was not a rollback, when known, or `NO_TIME`.
    pub last_lead_time_ms: i64,
}

impl Default for TargetFigures {
    fn default() -> Self {
        TargetFigures {
            deployments: 0,
            rollbacks: 0,
            last_deployed_ms: NO_TIME,
            last_lead_time_ms: NO_TIME,
        }
    }
}

/// The delivery histograms of one team and model (a detailed model, or `__other__`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Histograms {
    pub lead_time: HistogramAcc,
    pub time_to_register: HistogramAcc,
    pub time_to_deploy: HistogramAcc,
    pub rollback_recovery: HistogramAcc,
}

/// Which models the histograms show apart, and the severities every served model's incident
/// series have from the start.
#[derive(Debug, Clone)]
pub struct Labelling {
    /// Always shown apart (`delivery.detailed_models`).
    pub detailed_models: Vec<String>,
    /// Besides those, the first this many models deployed (`delivery.max_detailed_models`).
    pub max_detailed_models: usize,
    /// `webhooks.severities`.
    pub severities: Vec<String>,
}

impl Default for Labelling {
    fn default() -> Self {
        Labelling::new(&DeliverySettings::default(), &WebhookSettings::default())
    }
}

impl Labelling {
    pub fn new(d: &DeliverySettings, w: &WebhookSettings) -> Labelling {
        Labelling {
            detailed_models: d.detailed_models.clone(),
            max_detailed_models: d.max_detailed_models,
            severities: w.severities.clone(),
        }
    }
}

/// Bucket bounds in ms of the delivery histograms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bounds {
    pub lead_time: Vec<u64>,
    pub time_to_register: Vec<u64>,
    pub time_to_deploy: Vec<u64>,
    pub recovery: Vec<u64>,
    pub incident_recovery: Vec<u64>,
}

impl Bounds {
    pub fn new(s: &DeliverySettings) -> Bounds {
        Bounds {
            lead_time: bounds_ms(&s.lead_time_buckets),
            time_to_register: bounds_ms(&s.time_to_register_buckets),
            time_to_deploy: bounds_ms(&s.time_to_deploy_buckets),
            recovery: bounds_ms(&s.recovery_buckets),
            incident_recovery: bounds_ms(&s.incident_recovery_buckets),
        }
    }
}
