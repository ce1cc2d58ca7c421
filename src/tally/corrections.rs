//! Corrections: what the tally counted that MLflow no longer supports (a run gone, an end moved
//! earlier, an object removed) is counted in `mlflow_exporter_corrections_total{family}`, and
//! the counters themselves stay.

use super::runs::stored;
use super::{bits, key, names, StoredRun, Tally};
use crate::sync::snapshot::{RunKey, RunRecord};

impl Tally {
    /// Compute time counted beyond what MLflow now says, priced and times GPUs as counted.
    pub(super) fn correct_compute(&mut self, ms: u64, rate: f64, gpus: u64) {
        self.correct(names::COMPUTE, ms as f64 / 1000.0);
        self.correct(names::GPU, (ms * gpus) as f64 / 1000.0);
        self.correct(names::COST, ms as f64 * rate / 3_600_000.0);
    }

    pub(super) fn correct(&mut self, family: &'static str, amount: f64) {
        *self.corrections.entry(family).or_default() += amount;
        self.unsaved.series.insert(("corrections", key(&[family])));
    }

    /// A counted run that a full read no longer found: everything it counted is a correction.
    pub(super) fn correct_gone(&mut self, key: RunKey, r: &RunRecord, now_ms: i64) {
        let run = stored(r, now_ms, &self.settings.card.rates, true);
        self.correct_stored(key, run);
    }

    pub(super) fn correct_stored(&mut self, key: RunKey, run: StoredRun) {
        use bits::*;
        let f = run.flags;
        for (bit, family) in [
            (STARTED, names::RUNS_STARTED),
            (ENDED, names::RUNS_ENDED),
            (DURATION, names::RUN_DURATION),
            (UTIL, names::GPU_UTILIZATION),
        ] {
            if f & bit != 0 {
                self.correct(family, 1.0);
            }
        }
        if f & UTIL != 0 {
            self.correct(names::IDLE_GPU_COST, run.idle_cost);
        }
        let ms = run.counted_ms.saturating_sub(run.corrected_ms);
        self.correct_compute(ms, run.hourly_rate, u64::from(run.gpus));
        let gone = StoredRun { gone: true, ..run };
        self.gone.insert(key, gone);
        self.unsaved.runs.insert(key, gone);
    }
}
