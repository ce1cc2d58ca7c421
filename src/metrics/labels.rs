//! The cardinality guard: each label fed by user data keeps its most used values (up to
//! `max_label_values`) and folds the rest into `__other__`, reporting how many values were folded.

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::HashMap;

use super::family::{Family, Spec};
use crate::sync::snapshot::{Interner, Sym};

/// The label value that stands for every folded value.
pub const OTHER: &str = "__other__";

pub const FOLDED: Spec = Spec::gauge(
    "mlflow_exporter_label_values_folded",
    "Distinct values of a label beyond metrics.max_label_values, exported as __other__",
    &["label"],
);

/// Which values of one label are kept.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    /// Indexed by symbol; true when the value is kept as itself.
    keep: Vec<bool>,
    pub folded: usize,
}

impl Fold {
    /// Keeps the `max` values with the highest weight (ties by name), folds the rest.
    pub fn build(weights: &HashMap<Sym, u64>, max: usize, strings: &Interner) -> Fold {
        let mut ranked: Vec<(Sym, u64)> = weights.iter().map(|(s, w)| (*s, *w)).collect();
        ranked.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| strings.get(a.0).cmp(strings.get(b.0)))
        });
        let mut keep = vec![false; strings.len()];
        for (sym, _) in ranked.iter().take(max) {
            keep[sym.index()] = true;
        }
        Fold {
            keep,
            folded: ranked.len().saturating_sub(max),
        }
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

/// Counts weights per symbol, for [`Fold::build`].
pub fn tally(weights: &mut HashMap<Sym, u64>, sym: Option<Sym>) {
    if let Some(s) = sym {
        *weights.entry(s).or_default() += 1;
    }
}

/// `mlflow_exporter_label_values_folded`, one series per guarded label.
pub fn folded_family<'a>(folds: impl IntoIterator<Item = (&'a str, usize)>) -> Family {
    let mut f = Family::new(&FOLDED);
    for (label, n) in folds {
        f.add(&[label], n as f64);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_heaviest_values_and_breaks_ties_by_name() {
        let mut strings = Interner::default();
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|s| strings.intern(s));
        let weights = HashMap::from([(a, 1), (b, 5), (c, 1), (d, 3)]);
        let fold = Fold::build(&weights, 3, &strings);
        assert_eq!(fold.folded, 1);
        assert_eq!(fold.label(Some(b), &strings), "b");
        assert_eq!(fold.label(Some(d), &strings), "d");
        assert_eq!(fold.label(Some(a), &strings), "a");
        assert_eq!(fold.label(Some(c), &strings), OTHER);
        assert_eq!(fold.label(None, &strings), "");
        let all = Fold::build(&weights, 200, &strings);
        assert_eq!(all.folded, 0);
        assert_eq!(all.label(Some(c), &strings), "c");
    }
}
