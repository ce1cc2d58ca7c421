//! Sticky label folding: each label fed by user data (experiment, team, instance type, model, the
//! extra labels) keeps the values that once got a series of their own, for good, and admits new ones
//! (most used first) while fewer than `metrics.max_label_values` are kept; the rest are exported as
//! `__other__`. A counter therefore never moves between series when the ranking changes.

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::{HashMap, HashSet};

use crate::sync::snapshot::{Interner, RunRecord, Snapshot, Sym};

/// The label value that stands for every folded value.
pub const OTHER: &str = "__other__";

/// The kept values of one label, by name; they are never given up.
#[derive(Debug, Clone, Default)]
pub struct Sticky {
    kept: HashSet<Box<str>>,
    /// Admitted since the store last saved them.
    unsaved: Vec<Box<str>>,
}

impl Sticky {
    pub fn is_kept(&self, value: &str) -> bool {
        self.kept.contains(value)
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Takes a value kept before (read back from the store).
    pub fn restore(&mut self, value: &str) {
        self.kept.insert(value.into());
    }

    /// Admits the heaviest of `candidates` (ties by name) while fewer than `max` are kept.
    fn admit(&mut self, mut candidates: Vec<(&str, u64)>, max: usize) {
        candidates.retain(|(v, _)| !self.kept.contains(*v));
        candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        candidates.dedup_by(|a, b| a.0 == b.0);
        for (v, _) in candidates {
            if self.kept.len() >= max {
                break;
            }
            self.kept.insert(v.into());
            self.unsaved.push(v.into());
        }
    }

    /// The values admitted since the last call, for the store.
    pub fn take_unsaved(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.unsaved)
    }

    /// Gives values back to be saved again (the store failed).
    pub fn unsave(&mut self, values: Vec<Box<str>>) {
        self.unsaved.extend(values);
    }
}

/// The sticky folds of every guarded label.
#[derive(Debug, Clone, Default)]
pub struct StickyLabels {
    pub experiment: Sticky,
    pub team: Sticky,
    pub instance_type: Sticky,
    pub model: Sticky,
    /// The configured extra labels, in their order.
    pub extra: Vec<Sticky>,
    /// Names of the extra labels.
    pub extra_names: Vec<String>,
    pub max: usize,
}

impl StickyLabels {
    pub fn new(max: usize, extra_names: Vec<String>) -> StickyLabels {
        StickyLabels {
            extra: vec![Sticky::default(); extra_names.len()],
            extra_names,
            max,
            ..StickyLabels::default()
        }
    }

    /// Every label by its name, as the store keeps them.
    pub fn by_name_mut(&mut self) -> Vec<(&str, &mut Sticky)> {
        let mut v: Vec<(&str, &mut Sticky)> = vec![
            ("experiment", &mut self.experiment),
            ("team", &mut self.team),
            ("instance_type", &mut self.instance_type),
            ("model", &mut self.model),
        ];
        for (name, s) in self.extra_names.iter().zip(self.extra.iter_mut()) {
            v.push((name.as_str(), s));
        }
        v
    }

    /// Admits the values this snapshot uses, most used first, while each label has room.
    pub fn admit(&mut self, snap: &Snapshot) {
        let w = Weights::of(snap, self.extra.len());
        self.admit_weighed(snap, &w);
    }

    /// [`StickyLabels::admit`], then [`StickyLabels::folds`], with one pass over the runs.
    pub fn admit_and_fold(&mut self, snap: &Snapshot) -> Folds {
        let w = Weights::of(snap, self.extra.len());
        self.admit_weighed(snap, &w);
        self.folds_weighed(snap, &w)
    }

    fn admit_weighed(&mut self, snap: &Snapshot, w: &Weights) {
        let s = &snap.strings;
        let named = |m: &HashMap<Sym, u64>| -> Vec<(&str, u64)> {
            m.iter().map(|(k, n)| (s.get(*k), *n)).collect()
        };
        let experiments = w
            .experiment
            .iter()
            .map(|(id, n)| (experiment_name(snap, *id), *n))
            .collect();
        self.experiment.admit(experiments, self.max);
        self.team.admit(named(&w.team), self.max);
        self.instance_type.admit(named(&w.instance_type), self.max);
        self.model.admit(named(&w.model), self.max);
        for (fold, weights) in self.extra.iter_mut().zip(&w.extra) {
            fold.admit(named(weights), self.max);
        }
    }

    /// The folds of one snapshot by symbol, for deriving its families.
    pub fn folds(&self, snap: &Snapshot) -> Folds {
        let w = Weights::of(snap, self.extra.len());
        self.folds_weighed(snap, &w)
    }

    fn folds_weighed(&self, snap: &Snapshot, w: &Weights) -> Folds {
        let s = &snap.strings;
        let mut experiment = Fold::new(s);
        for id in w.experiment.keys() {
            experiment.decide(*id, self.experiment.is_kept(experiment_name(snap, *id)));
        }
        let by_value = |sticky: &Sticky, weights: &HashMap<Sym, u64>| {
            let mut f = Fold::new(s);
            for sym in weights.keys() {
                f.decide(*sym, sticky.is_kept(s.get(*sym)));
            }
            f
        };
        Folds {
            experiment,
            team: by_value(&self.team, &w.team),
            instance_type: by_value(&self.instance_type, &w.instance_type),
            model: by_value(&self.model, &w.model),
            extra: self
                .extra
                .iter()
                .zip(&w.extra)
                .map(|(sticky, weights)| by_value(sticky, weights))
                .collect(),
            extra_names: self.extra_names.clone(),
        }
    }
}

/// The `model` label of the families of the delivery history, which is folded outside a snapshot:
/// a kept model keeps it; a model not decided yet keeps it while the cap has room (the next sync
/// will keep it); the rest are `__other__`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFold {
    kept: HashSet<Box<str>>,
    room: bool,
}

impl Default for ModelFold {
    fn default() -> Self {
        ModelFold {
            kept: HashSet::new(),
            room: true,
        }
    }
}

impl ModelFold {
    pub fn label<'a>(&self, model: &'a str) -> &'a str {
        if self.room || self.kept.contains(model) {
            model
        } else {
            OTHER
        }
    }
}

impl StickyLabels {
    /// The fold of the `model` label, for the delivery history's families.
    pub fn model_fold(&self) -> ModelFold {
        ModelFold {
            kept: self.model.kept.clone(),
            room: self.model.len() < self.max,
        }
    }
}

/// The `experiment` label of an experiment id before folding: its name, or its id when the
/// experiment was created after the experiments were listed.
pub fn experiment_name(snap: &Snapshot, id: Sym) -> &str {
    match snap.experiments.get(&id) {
        Some(e) => snap.strings.get(e.name),
        None => snap.strings.get(id),
    }
}

/// How many runs use each value of each label: experiments, models and teams named only by an
/// experiment or a model count too, with weight 0.
struct Weights {
    experiment: HashMap<Sym, u64>,
    team: HashMap<Sym, u64>,
    instance_type: HashMap<Sym, u64>,
    model: HashMap<Sym, u64>,
    extra: Vec<HashMap<Sym, u64>>,
}

impl Weights {
    fn of(snap: &Snapshot, n_extra: usize) -> Weights {
        let mut w = Weights {
            experiment: snap.experiments.keys().map(|k| (*k, 0)).collect(),
            team: HashMap::new(),
            instance_type: HashMap::new(),
            model: snap.models.keys().map(|k| (*k, 0)).collect(),
            extra: vec![HashMap::new(); n_extra],
        };
        for r in snap.runs.values() {
            tally(&mut w.experiment, Some(r.experiment));
            tally(&mut w.team, team_of(snap, r));
            tally(&mut w.instance_type, r.instance_type);
            for (m, v) in w.extra.iter_mut().zip(snap.strings.combo(r.extra)) {
                tally(m, *v);
            }
        }
        for e in snap.experiments.values() {
            w.team.entry_ref_or_zero(e.team);
        }
        for m in snap.models.values() {
            w.team.entry_ref_or_zero(m.team);
        }
        for (m, _) in snap.versions.keys() {
            tally(&mut w.model, Some(*m));
        }
        w
    }
}

trait OrZero {
    fn entry_ref_or_zero(&mut self, sym: Option<Sym>);
}

impl OrZero for HashMap<Sym, u64> {
    fn entry_ref_or_zero(&mut self, sym: Option<Sym>) {
        if let Some(s) = sym {
            self.entry(s).or_default();
        }
    }
}

fn tally(weights: &mut HashMap<Sym, u64>, sym: Option<Sym>) {
    if let Some(s) = sym {
        *weights.entry(s).or_default() += 1;
    }
}

/// A run's team: its own tag, else its experiment's.
pub fn team_of(snap: &Snapshot, r: &RunRecord) -> Option<Sym> {
    r.team
        .or_else(|| snap.experiments.get(&r.experiment).and_then(|e| e.team))
}

/// Which values of one label are kept, by symbol, for one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    /// Indexed by symbol; true when the value is kept as itself.
    keep: Vec<bool>,
    /// Distinct values of the snapshot exported as `__other__`.
    pub folded: usize,
}

impl Fold {
    fn new(strings: &Interner) -> Fold {
        Fold {
            keep: vec![false; strings.len()],
            folded: 0,
        }
    }

    fn decide(&mut self, sym: Sym, kept: bool) {
        self.keep[sym.index()] = kept;
        self.folded += usize::from(!kept);
    }

    pub fn is_kept(&self, sym: Sym) -> bool {
        self.keep.get(sym.index()).copied().unwrap_or(false)
    }

    /// The exported value: the string itself, `__other__` when folded, empty when absent.
    pub fn label<'a>(&self, sym: Option<Sym>, strings: &'a Interner) -> &'a str {
        match sym {
            None => "",
            Some(s) if self.is_kept(s) => strings.get(s),
            Some(_) => OTHER,
        }
    }
}

/// The folds of every guarded label for one snapshot.
pub struct Folds {
    pub experiment: Fold,
    pub team: Fold,
    pub instance_type: Fold,
    pub model: Fold,
    pub extra: Vec<Fold>,
    pub extra_names: Vec<String>,
}

impl Folds {
    /// The `experiment` label of an experiment id: its name, or `__other__` when folded.
    pub fn experiment<'a>(&self, snap: &'a Snapshot, id: Sym) -> &'a str {
        if !self.experiment.is_kept(id) {
            return OTHER;
        }
        experiment_name(snap, id)
    }

    /// Label names with the number of values folded, for `mlflow_exporter_label_values_folded`.
    pub fn folded(&self) -> Vec<(&str, usize)> {
        let mut pairs = vec![
            ("experiment", self.experiment.folded),
            ("team", self.team.folded),
            ("instance_type", self.instance_type.folded),
            ("model", self.model.folded),
        ];
        for (name, f) in self.extra_names.iter().zip(&self.extra) {
            pairs.push((name.as_str(), f.folded));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::snapshot::{ExperimentRecord, RunStatus};

    fn snapshot(runs: &[(&str, usize)]) -> Snapshot {
        let mut snap = Snapshot::default();
        for (i, (name, n)) in runs.iter().enumerate() {
            let id = snap.strings.intern(&i.to_string());
            let name = snap.strings.intern(name);
            snap.experiments.insert(
                id,
                ExperimentRecord {
                    name,
                    deleted: false,
                    team: None,
                    workspace: None,
                },
            );
            for j in 0..*n {
                let key = (i * 1000 + j) as u128;
                snap.runs
                    .insert(key, RunRecord::new(id, RunStatus::Finished, 0, 1));
            }
        }
        snap
    }

    #[test]
    fn the_heaviest_values_are_admitted_and_stay_when_others_overtake_them() {
        let mut labels = StickyLabels::new(2, vec![]);
        labels.admit(&snapshot(&[("a", 1), ("b", 5), ("c", 3), ("d", 3)]));
        let kept = |l: &StickyLabels| ["a", "b", "c", "d", "e"].map(|v| l.experiment.is_kept(v));
        // b, then c before d by name.
        assert_eq!(kept(&labels), [false, true, true, false, false]);
        let snap = snapshot(&[("a", 50), ("b", 5), ("c", 3), ("d", 3), ("e", 9)]);
        labels.admit(&snap);
        assert_eq!(kept(&labels), [false, true, true, false, false]);
        let folds = labels.folds(&snap);
        assert_eq!(folds.experiment.folded, 3);
        let id = |n: &str| snap.strings.lookup(n).unwrap();
        assert_eq!(folds.experiment(&snap, id("0")), OTHER);
        assert_eq!(folds.experiment(&snap, id("1")), "b");
        // Raising the cap admits the heaviest of the rest, and keeps b and c.
        labels.max = 3;
        labels.admit(&snap);
        assert_eq!(kept(&labels), [true, true, true, false, false]);
        let saved: Vec<Box<str>> = labels.experiment.take_unsaved();
        assert_eq!(saved, ["b".into(), "c".into(), "a".into()] as [Box<str>; 3]);
    }
}
