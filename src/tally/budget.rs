//! The series budget (`metrics.max_series`): the samples each family's series write, and how a
//! cycle's new series are admitted within the room left, the rest folded into `__other__`.

use hashbrown::HashSet;

use super::labels::OTHER;
use super::{CountReport, Key, Named, Series, Tally, Unsaved};

impl Tally {
    /// Samples the tally's families hold (a histogram's buckets, sum and count each count), the
    /// corrections family included.
    pub fn lines(&self) -> usize {
        let s = &self.settings;
        let run_h = histogram_lines(&s.run_bounds);
        self.ended.len() * 3
            + self.durations.len() * 3 * run_h
            + self.started.len()
            + self.cost.len() * 4
            + self.gpu_util.len() * histogram_lines(&s.gpu_bounds)
            + self.experiments_created.len()
            + self.models_created.len()
            + self.versions_created.len()
            + histogram_lines(&s.ttfm_bounds)
            + self.logged_models_created.len()
            + histogram_lines(&s.reg_bounds)
            + self.prompts_created.len()
            + self.prompt_versions_created.len()
            + self.traces.len() * 2
            + self.trace_durations.len() * 2 * histogram_lines(&s.trace_bounds)
            + self.trace_tokens.len() * 2
            + self.trace_cost.len()
            + self.trace_feedback.len() * feedback_lines(&s.score_bounds)
            + self.judge_cost.len()
            + self.llm_calls.len() * 2
            + self.logged_model_traces.len() * 2
            + self.rated.len() * 3
            // The apps' active users and sessions: every app with traces, at each window.
            + self.traces.len() * 2 * s.windows
            + self.trace_errors.len()
            + 1
            + self.corrections.len()
    }
}

/// Samples a histogram of these bounds writes: a bucket each, `+Inf`, `_sum` and `_count`.
pub(super) fn histogram_lines(bounds: &[f64]) -> usize {
    bounds.len() + usize::from(bounds.last().is_none_or(|b| b.is_finite())) + 2
}

/// Samples one feedback series writes: a count per value, and the scores' histogram.
pub(super) fn feedback_lines(score_bounds: &[f64]) -> usize {
    crate::sync::traces::FeedbackValue::LABELS.len() + histogram_lines(score_bounds)
}

/// Admits deltas into one family's series within the room left.
pub(super) struct Budget<'a> {
    pub(super) room: &'a mut usize,
    pub(super) report: &'a mut CountReport,
    pub(super) unsaved: &'a mut Unsaved,
}

impl Budget<'_> {
    /// Adds each delta to its series. A key without a series gets one when `admit` holds it (the
    /// room was taken for it already); else it is folded, its last label first, into a series
    /// that exists or fits, and at worst into the one of `__other__` alone, which is always made.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn merge<V: Default>(
        &mut self,
        series: &mut Series<V>,
        named: Named<V>,
        admit: &HashSet<Key>,
        cost: usize,
        family: &'static str,
        add: impl Fn(&mut V, &V),
    ) {
        for (k, (_, delta)) in named {
            let target = if series.contains_key(&k) {
                k
            } else if admit.contains(&k) {
                self.report.created += 1;
                k
            } else {
                self.report.budget_folded += 1;
                let mut target = None;
                for folded in fold_chain(&k) {
                    if series.contains_key(&folded) {
                        target = Some(folded);
                        break;
                    }
                    if cost <= *self.room || folded.iter().all(|v| &**v == OTHER) {
                        *self.room = self.room.saturating_sub(cost);
                        self.report.created += 1;
                        target = Some(folded);
                        break;
                    }
                }
                // `fold_chain` ends on the key of `__other__` alone, taken above.
                target.unwrap_or_else(|| k.iter().map(|_| OTHER.into()).collect())
            };
            add(series.entry(target.clone()).or_default(), &delta);
            self.unsaved.series.insert((family, target));
        }
    }
}

/// The keys of `named` without a series yet, tagged with the family's place, with their runs.
pub(super) fn new_keys<'a, V, W>(
    named: &'a Named<V>,
    series: &Series<W>,
    family: usize,
) -> impl Iterator<Item = (usize, u64, &'a Key)> {
    named
        .iter()
        .filter(|(k, _)| !series.contains_key(*k))
        .map(move |(k, (n, _))| (family, *n, k))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Whether a family has no series of `__other__` alone (of `arity` labels) yet.
pub(super) fn other_missing<V>(series: &Series<V>, arity: usize) -> bool {
    let other: Key = (0..arity).map(|_| OTHER.into()).collect();
    !series.contains_key(&other)
}

/// The keys a key folds into when it does not fit: its values replaced by `__other__` from the
/// last on, ending with every value `__other__`.
fn fold_chain(k: &Key) -> Vec<Key> {
    let mut out = Vec::new();
    let mut cur: Vec<Box<str>> = k.to_vec();
    for i in (0..cur.len()).rev() {
        if &*cur[i] != OTHER {
            cur[i] = OTHER.into();
            out.push(cur.clone().into_boxed_slice());
        }
    }
    if out.is_empty() {
        out.push(cur.into_boxed_slice());
    }
    out
}
