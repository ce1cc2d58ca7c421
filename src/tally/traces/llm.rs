//! The apps' LLM calls: `mlflow_trace_llm_calls_total` from MLflow's count and price of each
//! app's calls, read window by window, and `mlflow_trace_rated_*` from the rate card's price of
//! the calls in traces read whole.

use hashbrown::HashMap;

use super::{TraceDeltas, TraceLedger, UnsavedTraces};
use crate::sync::snapshot::Sym;
use crate::sync::traces::LlmBatch;

impl TraceLedger {
    /// Adds the LLM calls read, by app and model, and moves each app's cursor past its window.
    pub fn count_llm(
        &mut self,
        batches: Vec<LlmBatch>,
        mut experiment: impl FnMut(&str) -> Sym,
        d: &mut TraceDeltas,
        unsaved: &mut UnsavedTraces,
    ) {
        for b in batches {
            let k: (Box<str>, Box<str>) = (
                b.workspace.as_deref().unwrap_or("").into(),
                b.experiment_id.as_str().into(),
            );
            // Only a window from where the app's count stands: one read again (a cycle that
            // read it was not counted) is not counted twice.
            if self.llm_cursors.get(&k).copied() != Some(b.from_ms) {
                continue;
            }
            self.llm_cursors.insert(k, b.next_ms);
            unsaved.llm_cursors = true;
            let slot = d
                .by_experiment
                .entry(experiment(&b.experiment_id))
                .or_default();
            for c in b.calls {
                let m = slot.llm.entry(c.model.into_boxed_str()).or_default();
                m.0 += c.calls;
                if c.cost.is_finite() && c.cost >= 0.0 {
                    m.1 += c.cost;
                }
            }
        }
    }

    /// Up to `per_scope` traces of each scope the rate card waits for, in id order.
    pub fn waiting_for_rates(&self, per_scope: usize) -> Vec<(Box<str>, u128)> {
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for (id, (scope, _)) in &self.unrated {
            let n = taken.entry(scope).or_default();
            if *n < per_scope {
                *n += 1;
                out.push((scope.clone(), *id));
            }
        }
        out
    }

    /// Prices the calls of the traces read whole for the rate card (`rates`: by model, input and
    /// output price per million tokens); each trace once, and only one it waits for.
    pub fn count_rated(
        &mut self,
        batches: Vec<crate::sync::traces::RatedBatch>,
        mut experiment: impl FnMut(&str) -> Sym,
        rates: &HashMap<Box<str>, (f64, f64)>,
        d: &mut TraceDeltas,
        unsaved: &mut UnsavedTraces,
    ) {
        for b in batches {
            let mut waited: HashMap<u128, Box<str>> = HashMap::new();
            for id in b.asked {
                if let Some((_, exp)) = self.unrated.remove(&id) {
                    unsaved.unrated.insert(id, None);
                    waited.insert(id, exp);
                }
            }
            for (id, call) in b.calls {
                let (Some(exp), Some((input, output))) =
                    (waited.get(&id), rates.get(call.model.as_str()))
                else {
                    continue;
                };
                let slot = d.by_experiment.entry(experiment(exp)).or_default();
                let m = slot.rated.entry(call.model.into_boxed_str()).or_default();
                m.0[0] += call.input_tokens;
                m.0[1] += call.output_tokens;
                m.1 +=
                    (call.input_tokens as f64 * input + call.output_tokens as f64 * output) / 1e6;
            }
        }
    }
}
