//! What counts as a deployment and the buckets of the delivery histograms: `delivery.*`.

use serde::{Deserialize, Serialize};

use super::{check_buckets, ConfigError};

/// What counts as a deployment, and the buckets of the delivery histograms (seconds).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Aliases that serve traffic: moving one is a deployment. The legacy stage `Production` always is.
    pub serving_aliases: Vec<String>,
    pub lead_time_buckets: Vec<f64>,
    pub time_to_register_buckets: Vec<f64>,
    pub time_to_deploy_buckets: Vec<f64>,
    pub recovery_buckets: Vec<f64>,
    pub incident_recovery_buckets: Vec<f64>,
    /// Models whose delivery histograms are always shown apart; the others share `__other__` of
    /// their team.
    pub detailed_models: Vec<String>,
    /// Besides those, the first this many models the history sees serving are shown apart.
    pub max_detailed_models: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        let h = |hours: &[f64]| hours.iter().map(|x| x * 3600.0).collect::<Vec<_>>();
        DeliverySettings {
            serving_aliases: vec!["champion".into(), "production".into(), "prod".into()],
            // Minutes to months: DORA's bands are 1 h, 1 week, 6 months.
            lead_time_buckets: h(&[
                0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 2160.0, 4320.0,
            ]),
            time_to_register_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 720.0]),
            time_to_deploy_buckets: h(&[0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 2160.0]),
            recovery_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0]),
            incident_recovery_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0]),
            detailed_models: Vec::new(),
            max_detailed_models: 10,
        }
    }
}

impl DeliverySettings {
    /// The histograms' buckets are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, b) in [
            ("delivery.lead_time_buckets", &self.lead_time_buckets),
            (
                "delivery.time_to_register_buckets",
                &self.time_to_register_buckets,
            ),
            (
                "delivery.time_to_deploy_buckets",
                &self.time_to_deploy_buckets,
            ),
            ("delivery.recovery_buckets", &self.recovery_buckets),
            (
                "delivery.incident_recovery_buckets",
                &self.incident_recovery_buckets,
            ),
        ] {
            check_buckets(key, b)?;
        }
        Ok(())
    }
}
