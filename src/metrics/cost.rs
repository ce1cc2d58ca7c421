//! What the platform costs: compute time of runs (ended runs' wall time plus running runs' elapsed
//! time), that time priced by the rate card, and GPU time, per experiment, team and instance type;
//! and how well GPUs were used: utilization of ended runs, and the money spent on idle GPUs.

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
    /// Milliseconds by rate: a series nearly always has one (its instance type sets it), kept
    /// inline; others follow in `more`, which allocates only then.
    by_rate: Option<(u16, u64)>,
    more: Vec<(u16, u64)>,
    idle_cost: f64,
}

impl Acc {
    fn add_rate(&mut self, rate: u16, ms: u64) {
        match &mut self.by_rate {
            None => self.by_rate = Some((rate, ms)),
            Some((r, sum)) if *r == rate => *sum += ms,
            Some(_) => match self.more.iter_mut().find(|(r, _)| *r == rate) {
                Some((_, sum)) => *sum += ms,
                None => self.more.push((rate, ms)),
            },
        }
    }

    fn add(&mut self, other: &Acc) {
        self.ms += other.ms;
        self.gpu_ms += other.gpu_ms;
        self.idle_cost += other.idle_cost;
        for (rate, ms) in other.rates() {
            self.add_rate(rate, ms);
        }
    }

    fn rates(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.by_rate.into_iter().chain(self.more.iter().copied())
    }

    /// The milliseconds priced. Several rates are summed in rate order, so the value does not
    /// depend on the order runs were folded in; the usual single rate needs no list.
    fn money(&self, d: &Derivation) -> f64 {
        let price = |(rate, ms): (u16, u64)| ms as f64 * d.rates.hourly_rate(rate) / 3_600_000.0;
        if self.more.is_empty() {
            return self.by_rate.map_or(0.0, price);
        }
        let mut rates: Vec<(u16, u64)> = self.rates().collect();
        rates.sort_unstable_by_key(|(rate, _)| *rate);
        rates.into_iter().map(price).sum()
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
        a.add_rate(r.rate, ms);
        if r.status.is_ended() && !r.gpu_util_pct.is_nan() {
            let ratio = (r.gpu_util_pct / 100.0).clamp(0.0, 1.0);
            a.idle_cost += ms as f64 * d.rates.hourly_rate(r.rate) / 3_600_000.0 * (1.0 - ratio);
            util.entry((r.experiment, team))
                .or_default()
                .observe(gpu_bounds, ratio);
        }
    }
    let merged = by_name(
        acc,
        |(exp, team, itype)| {
            (
                folds.experiment(snap, exp),
                folds.team.label(team, s),
                folds.instance_type.label(itype, s),
            )
        },
        |sum, a| sum.add(&a),
    );
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
        cost.add_pairs(&pairs, a.money(d));
        idle.add_pairs(&pairs, a.idle_cost);
    }
    let mut currency = Family::new(&CURRENCY);
    currency.add(&[&d.currency], 1.0);

    let util_merged = by_name(
        util,
        |(exp, team)| (folds.experiment(snap, exp), folds.team.label(team, s)),
        |sum, h| sum.merge(&h),
    );
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

/// Accumulators keyed by symbols, named and sorted by name, those that share a name (`other`)
/// merged. Ties are broken by the symbols, so a merged float sum does not depend on the hash map's
/// order; and one sort of the ~24 000 keys of a large install is cheaper than as many string-keyed
/// inserts.
fn by_name<S: Ord + Copy, N: Ord + Copy, V>(
    accs: HashMap<S, V>,
    name: impl Fn(S) -> N,
    merge: impl Fn(&mut V, V),
) -> Vec<(N, V)> {
    let mut named: Vec<(N, S, V)> = accs.into_iter().map(|(k, v)| (name(k), k, v)).collect();
    named.sort_unstable_by_key(|&(name, syms, _)| (name, syms));
    let mut merged: Vec<(N, V)> = Vec::with_capacity(named.len());
    for (key, _, v) in named {
        match merged.last_mut() {
            Some((last, sum)) if *last == key => merge(sum, v),
            _ => merged.push((key, v)),
        }
    }
    merged
}
