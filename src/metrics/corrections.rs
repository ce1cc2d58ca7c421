//! `mlflow_exporter_corrections_total`: for each family the tally counts, what it holds that
//! MLflow's current data no longer supports (runs removed by `mlflow gc`, an end moved earlier after
//! a running run was timed), in the family's own unit. Counters keep what they counted; this says
//! by how much, and why, they differ from a count of what MLflow holds now.

use super::family::{Family, Spec, TextFamily};
use crate::tally::Tally;

pub const CORRECTIONS: Spec = Spec::counter(
    "mlflow_exporter_corrections_total",
    "What a counter holds that MLflow no longer shows (counted runs removed, ends moved earlier), in the family's unit: runs, seconds or money",
    &["family"],
);

/// One series per family of the tally, zeros included.
pub fn family(tally: &Tally) -> TextFamily {
    let mut f = Family::new(&CORRECTIONS);
    for (family, amount) in &tally.corrections {
        f.add(&[family], *amount);
    }
    f.finish()
}
