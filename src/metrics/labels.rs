//! The cardinality guard's report: how many values of each user-fed label are folded into
//! `__other__` (the folding itself is sticky, and lives with the counts in [`crate::tally::labels`]).

use super::family::{Family, Spec};

pub use crate::tally::labels::OTHER;

pub const FOLDED: Spec = Spec::gauge(
    "mlflow_exporter_label_values_folded",
    "Distinct values of a label in MLflow exported as __other__: beyond metrics.max_label_values when they first appeared",
    &["label"],
);

/// `mlflow_exporter_label_values_folded`, one series per guarded label.
pub fn folded_family<'a>(folds: impl IntoIterator<Item = (&'a str, usize)>) -> Family {
    let mut f = Family::new(&FOLDED);
    for (label, n) in folds {
        f.add(&[label], n as f64);
    }
    f
}
