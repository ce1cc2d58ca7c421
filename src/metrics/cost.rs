//! What the platform costs: compute time of runs (ended runs' wall time plus running runs' elapsed
//! time), that time priced by the rate card, and GPU time, per experiment, team and instance type;
//! and how well GPUs were used: utilization of ended runs, and the money spent on idle GPUs.

use std::collections::BTreeMap;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::HashMap;

use super::family::TextFamily;

use super::family::{Family, FloatHistogramAcc, Spec};
use super::{team_of, Derivation, Folds};
use crate::sync::snapshot::{Snapshot, Sym};

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

/// Exact integer sums; money is computed once per series and rate.
#[derive(Default)]
struct Acc {
    ms: u64,
    gpu_ms: u64,
    ms_by_rate: BTreeMap<u16, u64>,
    idle_cost: f64,
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.ms += other.ms;
        self.gpu_ms += other.gpu_ms;
        self.idle_cost += other.idle_cost;
        for (rate, ms) in &other.ms_by_rate {
            *self.ms_by_rate.entry(*rate).or_default() += ms;
        }
    }
}

pub fn families(snap: &Snapshot, d: &Derivation, folds: &Folds, now_ms: i64) -> Vec<TextFamily> {
    let s = &snap.strings;
    let gpu_bounds = &d.settings.gpu_utilization_buckets;
    let mut acc: HashMap<(Sym, Option<Sym>, Option<Sym>), Acc> = HashMap::new();
    let mut util: HashMap<(Sym, Option<Sym>), FloatHistogramAcc> = HashMap::new();
    for r in snap.runs.values() {
        let ms = r.compute_ms(now_ms);
        let team = team_of(snap, r);
        let a = acc
            .entry((r.experiment, team, r.instance_type))
            .or_default();
        a.ms += ms;
        a.gpu_ms += ms * u64::from(d.rates.gpus(r.rate, r.gpus_logged));
        *a.ms_by_rate.entry(r.rate).or_default() += ms;
        if r.status.is_ended() && !r.gpu_util_pct.is_nan() {
            let ratio = (r.gpu_util_pct / 100.0).clamp(0.0, 1.0);
            a.idle_cost += ms as f64 * d.rates.hourly_rate(r.rate) / 3_600_000.0 * (1.0 - ratio);
            util.entry((r.experiment, team))
                .or_default()
                .observe(gpu_bounds, ratio);
        }
    }
    let mut merged: BTreeMap<(&str, &str, &str), Acc> = BTreeMap::new();
    for ((exp, team, itype), a) in &acc {
        let key = (
            folds.experiment(snap, *exp),
            folds.team.label(*team, s),
            folds.instance_type.label(*itype, s),
        );
        merged.entry(key).or_default().add(a);
    }
    let mut compute = Family::new(&COMPUTE);
    let mut cost = Family::new(&COST);
    let mut gpu = Family::new(&GPU);
    let mut idle = Family::new(&IDLE_GPU_COST);
    let mut pairs = Vec::new();
    for ((exp, team, itype), a) in &merged {
        // The four families share their labels: written once.
        compute.pairs_into(&[*exp, *team, *itype], &mut pairs);
        compute.add_pairs(&pairs, a.ms as f64 / 1000.0);
        gpu.add_pairs(&pairs, a.gpu_ms as f64 / 1000.0);
        let money: f64 = a
            .ms_by_rate
            .iter()
            .map(|(rate, ms)| *ms as f64 * d.rates.hourly_rate(*rate) / 3_600_000.0)
            .sum();
        cost.add_pairs(&pairs, money);
        idle.add_pairs(&pairs, a.idle_cost);
    }
    let mut currency = Family::new(&CURRENCY);
    currency.add(&[&d.currency], 1.0);

    let mut util_merged: BTreeMap<(&str, &str), FloatHistogramAcc> = BTreeMap::new();
    for ((exp, team), h) in &util {
        util_merged
            .entry((folds.experiment(snap, *exp), folds.team.label(*team, s)))
            .or_default()
            .merge(h);
    }
    let mut util_f = Family::new(&GPU_UTILIZATION);
    for ((exp, team), h) in &util_merged {
        util_f.add_histogram(&[*exp, *team], gpu_bounds, &h.counts, h.sum);
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
