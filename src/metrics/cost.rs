//! What the platform costs, as the tally counted it: compute time of runs (ended runs' wall time
//! plus running runs' elapsed time, counted as it accrues), that time priced by the rate card, and
//! GPU time, per experiment, team and instance type; and how well GPUs were used: utilization of
//! ended runs, and the money spent on idle GPUs.

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::Derivation;
use crate::tally::Tally;

pub const COMPUTE: Spec = Spec::counter(
    "mlflow_run_compute_seconds_total",
    "Wall time of ended runs plus elapsed time of running ones",
    LABELS,
);
pub const COST: Spec = Spec::counter(
    "mlflow_run_cost_total",
    "Compute time priced by the rate card, in the configured currency (see mlflow_exporter_cost_currency_info)",
    LABELS,
);
pub const GPU: Spec = Spec::counter(
    "mlflow_run_gpu_seconds_total",
    "Compute seconds times the run's GPU count (from the rate card, else its system/gpu_{i}_* metrics)",
    LABELS,
);
pub const CURRENCY: Spec = Spec::gauge(
    "mlflow_exporter_cost_currency_info",
    "Currency of mlflow_run_cost_total, from cost.currency; value 1",
    &["currency"],
);
const LABELS: &[&str] = &["experiment", "team", "instance_type"];
pub const GPU_UTILIZATION: Spec = Spec::histogram(
    "mlflow_run_gpu_utilization_ratio",
    "Per ended run that logged GPU system metrics: mean of its latest system/gpu_{i}_utilization_percentage values, 0-1",
    &["experiment", "team"],
);
pub const IDLE_GPU_COST: Spec = Spec::counter(
    "mlflow_run_idle_gpu_cost_total",
    "Cost times (1 - GPU utilization) of ended runs that logged GPU utilization: money spent on idle accelerators",
    LABELS,
);
pub const SPECS: &[Spec] = &[COMPUTE, COST, GPU, CURRENCY, GPU_UTILIZATION, IDLE_GPU_COST];

/// The cost counters of the tally, and the currency they are in. The four counters share their
/// labels (written once per series); the utilization histogram is per experiment and team.
pub fn counters(tally: &Tally, d: &Derivation) -> Vec<TextFamily> {
    let mut compute = Family::new(&COMPUTE);
    let mut cost = Family::new(&COST);
    let mut gpu = Family::new(&GPU);
    let mut idle = Family::new(&IDLE_GPU_COST);
    let mut pairs = Vec::new();
    for (key, c) in &tally.cost {
        compute.pairs_into(&[&key[0], &key[1], &key[2]], &mut pairs);
        compute.add_pairs(&pairs, c.ms as f64 / 1000.0);
        gpu.add_pairs(&pairs, c.gpu_ms as f64 / 1000.0);
        cost.add_pairs(&pairs, c.money());
        idle.add_pairs(&pairs, c.idle_cost);
    }
    let mut currency = Family::new(&CURRENCY);
    currency.add(&[&d.currency], 1.0);
    let bounds = &d.settings.gpu_utilization_buckets;
    let mut util_f = Family::new(&GPU_UTILIZATION);
    for (key, h) in &tally.gpu_util {
        util_f.add_histogram(&[&key[0], &key[1]], bounds, &h.counts, h.sum);
    }
    vec![
        compute.finish(),
        cost.finish(),
        gpu.finish(),
        currency.finish(),
        util_f.finish(),
        idle.finish(),
    ]
}
