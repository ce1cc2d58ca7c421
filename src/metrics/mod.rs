//! Pure functions from a [`Snapshot`] to metric families, one module per question family:
//! [`inventory`] (experiments, models, versions, aliases, and their creation counters), [`runs`]
//! (throughput, durations, runs started), [`adoption`] (users, teams, activation, time to value,
//! feature use), [`cost`] (compute time, money, GPU time and utilization), [`quality`] (best model
//! metrics). [`exporter`] holds the exporter's own health metrics and [`publish`] encodes everything
//! once per snapshot.

pub mod adoption;
pub mod cost;
pub mod delivery;
pub mod exporter;
pub mod family;
pub mod inventory;
pub mod labels;
pub mod probes;
pub mod publish;
pub mod quality;
pub mod runs;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::HashMap;
use std::time::Duration;

use family::TextFamily;

use crate::config::{DeliverySettings, MetricsSettings, Settings};
use crate::delivery::Delivery;
use crate::sync::snapshot::{RunRecord, Snapshot, Sym};
use crate::sync::RateCard;
use family::Spec;
use labels::{tally, Fold, OTHER};

/// Everything the derivation needs besides the snapshot: settings, compiled once.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub settings: MetricsSettings,
    pub rates: RateCard,
    /// `run_duration_buckets` in ms.
    pub bounds_ms: Vec<u64>,
    /// Windows in ms with their label values (`1d`, `7d`, …).
    pub windows: Vec<(i64, String)>,
    pub currency: String,
    /// `time_to_first_model_buckets` in ms.
    pub ttfm_bounds_ms: Vec<u64>,
    /// Bits of the features decided by the registry (a version was created from the run).
    pub registered_features: u32,
    pub delivery: DeliverySettings,
}

impl Derivation {
    pub fn new(s: &Settings) -> Derivation {
        let m = &s.metrics;
        Derivation {
            bounds_ms: family::bounds_ms(&m.run_duration_buckets),
            windows: m
                .user_windows
                .iter()
                .map(|w| (w.as_millis() as i64, window_label(*w)))
                .collect(),
            settings: m.clone(),
            rates: RateCard::new(&s.cost),
            currency: s.cost.currency.clone(),
            ttfm_bounds_ms: family::bounds_ms(&m.time_to_first_model_buckets),
            registered_features: m
                .features
                .iter()
                .enumerate()
                .filter(|(_, f)| f.registered)
                .fold(0, |bits, (i, _)| bits | 1 << i),
            delivery: s.delivery.clone(),
        }
    }

    pub fn extra_label_names(&self) -> Vec<String> {
        self.settings
            .extra_labels
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }
}

/// `86400s` → `1d`, `7200s` → `2h`: the shortest exact form, as PromQL writes durations.
pub fn window_label(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Every family derived from one snapshot and the delivery history, at reference time `now_ms`.
pub fn derive(
    snap: &Snapshot,
    delivery: &Delivery,
    d: &Derivation,
    now_ms: i64,
) -> Vec<TextFamily> {
    let folds = Folds::build(snap, d);
    // Two halves of about the same cost, one on another core: the cost families (four series per
    // experiment, team and instance type: 95 000 of the 105 000 series of the 100 000-run bench
    // store) against everything else. At 100 000 runs this is a third of an incremental cycle's
    // own time.
    let ((mut out, (adoption, quality)), cost) = in_parallel(
        || {
            let mut first = inventory::families(snap, &folds);
            first.extend(runs::families(snap, d, &folds));
            let adoption = adoption::families(snap, d, now_ms);
            (first, (adoption, quality::families(snap, d, &folds)))
        },
        || cost::families(snap, d, &folds, now_ms),
    );
    out.extend(adoption);
    out.extend(cost);
    out.extend(quality);
    out.extend(delivery::families(snap, delivery, d));
    out.push(folds.family().finish());
    out
}

/// Runs `a` here and `b` on another thread at the same time; a panic in either is raised here.
pub(crate) fn in_parallel<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|s| {
        let other = s.spawn(b);
        let a = a();
        let b = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

/// Where to cut items of these weights into two halves of about the same weight: the first half
/// is `..at`.
pub(crate) fn halfway(weights: impl Iterator<Item = usize> + Clone) -> usize {
    let total: usize = weights.clone().sum();
    let mut acc = 0;
    let mut count = 0;
    for w in weights {
        acc += w;
        count += 1;
        if acc * 2 >= total {
            return count;
        }
    }
    count
}

/// Every family's spec, for the collector's descriptors and the documentation.
pub fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    v.extend_from_slice(inventory::SPECS);
    v.extend_from_slice(runs::SPECS);
    v.extend_from_slice(adoption::SPECS);
    v.extend_from_slice(cost::SPECS);
    v.extend_from_slice(quality::SPECS);
    v.extend_from_slice(delivery::SPECS);
    v.push(labels::FOLDED);
    v
}

/// The cardinality guard of each user-fed label, built once per snapshot.
pub struct Folds {
    pub experiment: Fold,
    pub team: Fold,
    pub instance_type: Fold,
    pub model: Fold,
    pub extra: Vec<Fold>,
    extra_names: Vec<String>,
}

impl Folds {
    pub fn build(snap: &Snapshot, d: &Derivation) -> Folds {
        let max = d.settings.max_label_values;
        let n_extra = d.settings.extra_labels.len();
        let mut exp: HashMap<Sym, u64> = snap.experiments.keys().map(|k| (*k, 0)).collect();
        let mut team = HashMap::new();
        let mut itype = HashMap::new();
        let mut extra = vec![HashMap::new(); n_extra];
        for r in snap.runs.values() {
            tally(&mut exp, Some(r.experiment));
            tally(&mut team, team_of(snap, r));
            tally(&mut itype, r.instance_type);
            for (w, v) in extra.iter_mut().zip(snap.strings.combo(r.extra)) {
                tally(w, *v);
            }
        }
        // Teams named only by an experiment or a model still need a label value of their own.
        for e in snap.experiments.values() {
            tally(&mut team, e.team);
        }
        for m in snap.models.values() {
            tally(&mut team, m.team);
        }
        let mut model: HashMap<Sym, u64> = snap.models.keys().map(|k| (*k, 0)).collect();
        for (m, _) in snap.versions.keys() {
            tally(&mut model, Some(*m));
        }
        let s = &snap.strings;
        Folds {
            experiment: Fold::build(&exp, max, s),
            team: Fold::build(&team, max, s),
            instance_type: Fold::build(&itype, max, s),
            model: Fold::build(&model, max, s),
            extra: extra.iter().map(|w| Fold::build(w, max, s)).collect(),
            extra_names: d.extra_label_names(),
        }
    }

    /// The `experiment` label of an experiment id: its name, or `__other__` when folded.
    pub fn experiment<'a>(&self, snap: &'a Snapshot, id: Sym) -> &'a str {
        if !self.experiment.is_kept(id) {
            return OTHER;
        }
        match snap.experiments.get(&id) {
            Some(e) => snap.strings.get(e.name),
            // Runs of an experiment created after the experiments were listed: name it by id.
            None => snap.strings.get(id),
        }
    }

    fn family(&self) -> family::Family {
        let mut pairs = vec![
            ("experiment", self.experiment.folded),
            ("team", self.team.folded),
            ("instance_type", self.instance_type.folded),
            ("model", self.model.folded),
        ];
        for (name, f) in self.extra_names.iter().zip(&self.extra) {
            pairs.push((name.as_str(), f.folded));
        }
        labels::folded_family(pairs)
    }
}

/// A run's team: its own tag, else its experiment's.
pub fn team_of(snap: &Snapshot, r: &RunRecord) -> Option<Sym> {
    r.team
        .or_else(|| snap.experiments.get(&r.experiment).and_then(|e| e.team))
}

#[cfg(test)]
mod tests;
