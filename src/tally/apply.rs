//! A cycle's deltas named by their exported labels and added into the tally's series: the new
//! series compete for the series budget's room by family, in [`PRIORITY`] order.

use std::collections::BTreeMap;

use hashbrown::HashSet;

use super::budget::{feedback_lines, histogram_lines, new_keys, other_missing, Budget};
use super::labels::Folds;
use super::{key, names, traces, CostSeries, CountReport, Deltas, Key, Named, Tally};
use crate::histogram::{FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::{Snapshot, Sym};

impl Tally {
    /// Names the deltas and the objects seen first, creates the series that fit in `room` and
    /// adds them in. Series that do not exist yet compete for the room by family, in the order of
    /// [`PRIORITY`] (a count of runs per experiment before its histogram, the explosive
    /// combinations of the cost families last), and within a family the most runs first.
    pub(super) fn apply(
        &mut self,
        snap: &Snapshot,
        folds: &Folds,
        d: Deltas,
        full: bool,
        room: &mut usize,
        report: &mut CountReport,
    ) {
        let s = &snap.strings;
        let exp = |id: Sym| folds.experiment(snap, id);
        let extra = |combo: u32| -> Vec<&str> {
            s.combo(combo)
                .iter()
                .zip(&folds.extra)
                .map(|(v, f)| f.label(*v, s))
                .collect()
        };
        let mut ended: Named<[u64; 3]> = BTreeMap::new();
        let mut durations: Named<[HistogramAcc; 3]> = BTreeMap::new();
        for ((e, combo), (n, delta)) in d.ended {
            let mut values = vec![exp(e)];
            values.extend(extra(combo));
            let k = key(&values);
            let slot = ended.entry(k.clone()).or_default();
            slot.0 += n;
            add_counts(&mut slot.1, &delta.count);
            let slot = durations.entry(k).or_default();
            slot.0 += n;
            add_histograms(&mut slot.1, &delta.durations);
        }
        let mut started: Named<u64> = BTreeMap::new();
        for ((e, team), n) in d.started {
            let slot = started
                .entry(key(&[exp(e), folds.team.label(team, s)]))
                .or_default();
            slot.0 += n;
            slot.1 += n;
        }
        let mut cost: Named<CostSeries> = BTreeMap::new();
        for ((e, team, itype), (n, delta)) in d.cost {
            let k = key(&[
                exp(e),
                folds.team.label(team, s),
                folds.instance_type.label(itype, s),
            ]);
            let slot = cost.entry(k).or_default();
            slot.0 += n;
            slot.1.add(&delta);
        }
        let mut util: Named<FloatHistogramAcc> = BTreeMap::new();
        for ((e, team), (n, delta)) in d.util {
            let slot = util
                .entry(key(&[exp(e), folds.team.label(team, s)]))
                .or_default();
            slot.0 += n;
            slot.1.merge(&delta);
        }
        let [exps, models, versions, logged] = self.objects_seen(snap, folds, full);
        let [prompts, prompt_versions] = self.prompts_seen(snap, folds, full);
        let mut traces: Named<[u64; 2]> = BTreeMap::new();
        let mut trace_durations: Named<[HistogramAcc; 2]> = BTreeMap::new();
        let mut trace_tokens: Named<[u64; 2]> = BTreeMap::new();
        let mut trace_cost: Named<f64> = BTreeMap::new();
        let mut feedback: Named<traces::FeedbackCounts> = BTreeMap::new();
        let mut judge_cost: Named<f64> = BTreeMap::new();
        let mut llm_calls: Named<(u64, f64)> = BTreeMap::new();
        let mut model_traces: Named<[u64; 2]> = BTreeMap::new();
        let mut rated: Named<([u64; 2], f64)> = BTreeMap::new();
        for (e, t) in d.traces.by_experiment {
            let k = key(&[exp(e)]);
            for (model, (tokens, price)) in t.rated {
                let slot = rated.entry(key(&[exp(e), &model])).or_default();
                slot.0 += 1;
                add_pair(&mut slot.1 .0, &tokens);
                slot.1 .1 += price;
            }
            let mut linked: Vec<_> = t.logged_models.into_iter().collect();
            linked.sort_unstable();
            for ((id, in_run), counts) in linked {
                // By its name, as MLflow's UI shows it; a model not read (another experiment's,
                // deleted) by its id.
                let name = snap
                    .logged_models
                    .get(&id)
                    .map(|m| s.get(m.name))
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&id);
                let traffic = if in_run { "evaluation" } else { "production" };
                let slot = model_traces
                    .entry(key(&[exp(e), name, traffic]))
                    .or_default();
                slot.0 += counts.iter().sum::<u64>();
                add_pair(&mut slot.1, &counts);
            }
            for (model, (n, cost)) in t.llm {
                let slot = llm_calls.entry(key(&[exp(e), &model])).or_default();
                slot.0 += n;
                slot.1 .0 += n;
                slot.1 .1 += cost;
            }
            let mut given: Vec<_> = t.feedback.into_iter().collect();
            // In name order, so that which fold into the budget's room does not depend on a hash.
            given.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut n_feedback = 0;
            for ((name, source), counts) in given {
                let n = counts.values.iter().sum::<u64>();
                n_feedback += n;
                let source = crate::sync::traces::SOURCES[usize::from(source)];
                let slot = feedback.entry(key(&[exp(e), &name, source])).or_default();
                slot.0 += n;
                add_feedback(&mut slot.1, &counts);
            }
            let slot = judge_cost.entry(k.clone()).or_default();
            slot.0 += n_feedback;
            slot.1 += t.judge_cost;
            let people = self.app_people.entry(k.clone()).or_default();
            for (kind, seen) in t.people.iter().enumerate() {
                for (who, at) in seen {
                    let last = people[kind].entry(*who).or_insert(i64::MIN);
                    if *at > *last {
                        *last = *at;
                        let id = (k.clone(), kind as u8, *who);
                        self.unsaved.app_people.insert(id, Some(*at));
                    }
                }
            }
            let n = t.count.iter().sum::<u64>();
            let slot = traces.entry(k.clone()).or_default();
            slot.0 += n;
            add_pair(&mut slot.1, &t.count);
            let slot = trace_durations.entry(k.clone()).or_default();
            slot.0 += n;
            for (a, b) in slot.1.iter_mut().zip(&t.durations) {
                a.merge(b);
            }
            let slot = trace_tokens.entry(k.clone()).or_default();
            slot.0 += n;
            add_pair(&mut slot.1, &t.tokens);
            let slot = trace_cost.entry(k).or_default();
            slot.0 += n;
            slot.1 += t.cost;
        }

        let st = &self.settings;
        let run_h = histogram_lines(&st.run_bounds);
        let trace_h = histogram_lines(&st.trace_bounds);
        let cost_of = |fam: usize| match fam {
            DURATIONS => 3 * run_h,
            COST => 4,
            UTIL => histogram_lines(&st.gpu_bounds),
            ENDED => 3,
            TRACES | TRACE_TOKENS => 2,
            TRACE_DURATIONS => 2 * trace_h,
            FEEDBACK => feedback_lines(&st.score_bounds),
            LLM | LOGGED_MODEL_TRACES => 2,
            RATED => 3,
            _ => 1,
        };
        let mut wanted: Vec<(usize, u64, &Key)> = Vec::new();
        wanted.extend(new_keys(&ended, &self.ended, ENDED));
        wanted.extend(new_keys(&started, &self.started, STARTED));
        wanted.extend(new_keys(&exps, &self.experiments_created, EXPERIMENTS));
        wanted.extend(new_keys(&models, &self.models_created, MODELS));
        wanted.extend(new_keys(&versions, &self.versions_created, VERSIONS));
        wanted.extend(new_keys(&logged, &self.logged_models_created, LOGGED));
        wanted.extend(new_keys(&prompts, &self.prompts_created, PROMPTS));
        wanted.extend(new_keys(
            &prompt_versions,
            &self.prompt_versions_created,
            PROMPT_VERSIONS,
        ));
        wanted.extend(new_keys(&traces, &self.traces, TRACES));
        wanted.extend(new_keys(&trace_tokens, &self.trace_tokens, TRACE_TOKENS));
        wanted.extend(new_keys(&trace_cost, &self.trace_cost, TRACE_COST));
        wanted.extend(new_keys(&judge_cost, &self.judge_cost, JUDGE_COST));
        wanted.extend(new_keys(&feedback, &self.trace_feedback, FEEDBACK));
        wanted.extend(new_keys(&llm_calls, &self.llm_calls, LLM));
        wanted.extend(new_keys(&rated, &self.rated, RATED));
        wanted.extend(new_keys(
            &model_traces,
            &self.logged_model_traces,
            LOGGED_MODEL_TRACES,
        ));
        wanted.extend(new_keys(
            &trace_durations,
            &self.trace_durations,
            TRACE_DURATIONS,
        ));
        wanted.extend(new_keys(&durations, &self.durations, DURATIONS));
        wanted.extend(new_keys(&util, &self.gpu_util, UTIL));
        wanted.extend(new_keys(&cost, &self.cost, COST));
        wanted.sort_by(|a, b| {
            let rank = |fam: usize| PRIORITY.iter().position(|p| *p == fam);
            rank(a.0)
                .cmp(&rank(b.0))
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(b.2))
        });
        // The series of `__other__` alone of each family is made whatever the room (a family is
        // never dropped): its room is set aside first.
        let others = [
            (ENDED, other_missing(&self.ended, 1 + st.extra)),
            (STARTED, other_missing(&self.started, 2)),
            (EXPERIMENTS, other_missing(&self.experiments_created, 1)),
            (MODELS, other_missing(&self.models_created, 1)),
            (VERSIONS, other_missing(&self.versions_created, 1)),
            (LOGGED, other_missing(&self.logged_models_created, 1)),
            (PROMPTS, other_missing(&self.prompts_created, 1)),
            (
                PROMPT_VERSIONS,
                other_missing(&self.prompt_versions_created, 1),
            ),
            (TRACES, other_missing(&self.traces, 1)),
            (TRACE_TOKENS, other_missing(&self.trace_tokens, 1)),
            (TRACE_COST, other_missing(&self.trace_cost, 1)),
            (TRACE_DURATIONS, other_missing(&self.trace_durations, 1)),
            (JUDGE_COST, other_missing(&self.judge_cost, 1)),
            (FEEDBACK, other_missing(&self.trace_feedback, 3)),
            (LLM, other_missing(&self.llm_calls, 2)),
            (RATED, other_missing(&self.rated, 2)),
            (
                LOGGED_MODEL_TRACES,
                other_missing(&self.logged_model_traces, 3),
            ),
            (DURATIONS, other_missing(&self.durations, 1 + st.extra)),
            (UTIL, other_missing(&self.gpu_util, 2)),
            (COST, other_missing(&self.cost, 3)),
        ];
        for (fam, missing) in others {
            if missing {
                *room = room.saturating_sub(cost_of(fam));
            }
        }
        let mut admitted: [HashSet<Key>; FAMILIES] = Default::default();
        for (fam, _, k) in wanted {
            if cost_of(fam) <= *room {
                *room -= cost_of(fam);
                admitted[fam].insert(k.clone());
            }
        }
        let mut budget = Budget {
            room,
            report,
            unsaved: &mut self.unsaved,
        };
        // In the same order, so that what folds finds the room left by what did not.
        budget.merge(
            &mut self.ended,
            ended,
            &admitted[ENDED],
            3,
            names::RUNS_ENDED,
            add_counts,
        );
        budget.merge(
            &mut self.started,
            started,
            &admitted[STARTED],
            1,
            names::RUNS_STARTED,
            |a, b| *a += b,
        );
        for (series, named, fam, family) in [
            (
                &mut self.experiments_created,
                exps,
                EXPERIMENTS,
                names::EXPERIMENTS_CREATED,
            ),
            (
                &mut self.models_created,
                models,
                MODELS,
                names::MODELS_CREATED,
            ),
            (
                &mut self.versions_created,
                versions,
                VERSIONS,
                names::VERSIONS_CREATED,
            ),
            (
                &mut self.logged_models_created,
                logged,
                LOGGED,
                names::LOGGED_MODELS_CREATED,
            ),
            (
                &mut self.prompts_created,
                prompts,
                PROMPTS,
                names::PROMPTS_CREATED,
            ),
            (
                &mut self.prompt_versions_created,
                prompt_versions,
                PROMPT_VERSIONS,
                names::PROMPT_VERSIONS_CREATED,
            ),
        ] {
            budget.merge(series, named, &admitted[fam], 1, family, |a, b| *a += b);
        }
        for (series, named, fam, family) in [
            (&mut self.traces, traces, TRACES, names::TRACES),
            (
                &mut self.trace_tokens,
                trace_tokens,
                TRACE_TOKENS,
                names::TRACE_TOKENS,
            ),
        ] {
            budget.merge(series, named, &admitted[fam], 2, family, add_pair);
        }
        budget.merge(
            &mut self.trace_cost,
            trace_cost,
            &admitted[TRACE_COST],
            1,
            names::TRACE_COST,
            |a, b| *a += b,
        );
        budget.merge(
            &mut self.judge_cost,
            judge_cost,
            &admitted[JUDGE_COST],
            cost_of(JUDGE_COST),
            names::JUDGE_COST,
            |a, b| *a += b,
        );
        budget.merge(
            &mut self.trace_feedback,
            feedback,
            &admitted[FEEDBACK],
            cost_of(FEEDBACK),
            names::TRACE_FEEDBACK,
            add_feedback,
        );
        budget.merge(
            &mut self.llm_calls,
            llm_calls,
            &admitted[LLM],
            cost_of(LLM),
            names::LLM_CALLS,
            |a, b| {
                a.0 += b.0;
                a.1 += b.1;
            },
        );
        budget.merge(
            &mut self.logged_model_traces,
            model_traces,
            &admitted[LOGGED_MODEL_TRACES],
            cost_of(LOGGED_MODEL_TRACES),
            names::LOGGED_MODEL_TRACES,
            add_pair,
        );
        budget.merge(
            &mut self.rated,
            rated,
            &admitted[RATED],
            cost_of(RATED),
            names::RATED_TOKENS,
            |a, b| {
                add_pair(&mut a.0, &b.0);
                a.1 += b.1;
            },
        );
        budget.merge(
            &mut self.trace_durations,
            trace_durations,
            &admitted[TRACE_DURATIONS],
            cost_of(TRACE_DURATIONS),
            names::TRACE_DURATION,
            |a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    x.merge(y);
                }
            },
        );
        budget.merge(
            &mut self.durations,
            durations,
            &admitted[DURATIONS],
            cost_of(DURATIONS),
            names::RUN_DURATION,
            add_histograms,
        );
        budget.merge(
            &mut self.gpu_util,
            util,
            &admitted[UTIL],
            cost_of(UTIL),
            names::GPU_UTILIZATION,
            |a, b| a.merge(b),
        );
        budget.merge(
            &mut self.cost,
            cost,
            &admitted[COST],
            4,
            names::COMPUTE,
            |a, b| a.add(b),
        );
    }
}

fn add_pair(a: &mut [u64; 2], b: &[u64; 2]) {
    a[0] += b[0];
    a[1] += b[1];
}

fn add_feedback(a: &mut traces::FeedbackCounts, b: &traces::FeedbackCounts) {
    for (x, y) in a.values.iter_mut().zip(&b.values) {
        *x += y;
    }
    if !b.scores.counts.is_empty() {
        a.scores.merge(&b.scores);
    }
}

fn add_counts(a: &mut [u64; 3], b: &[u64; 3]) {
    for i in 0..3 {
        a[i] += b[i];
    }
}

fn add_histograms(a: &mut [HistogramAcc; 3], b: &[HistogramAcc; 3]) {
    for i in 0..3 {
        if !b[i].counts.is_empty() {
            a[i].merge(&b[i]);
        }
    }
}

/// The tally's families with series keyed by labels, by their place in [`Tally::apply`].
const ENDED: usize = 0;
const STARTED: usize = 1;
const EXPERIMENTS: usize = 2;
const MODELS: usize = 3;
const VERSIONS: usize = 4;
const DURATIONS: usize = 5;
const UTIL: usize = 6;
const COST: usize = 7;
const LOGGED: usize = 8;
const PROMPTS: usize = 9;
const PROMPT_VERSIONS: usize = 10;
const TRACES: usize = 11;
const TRACE_TOKENS: usize = 12;
const TRACE_COST: usize = 13;
const TRACE_DURATIONS: usize = 14;
const JUDGE_COST: usize = 15;
const FEEDBACK: usize = 16;
const LLM: usize = 17;
const LOGGED_MODEL_TRACES: usize = 18;
const RATED: usize = 19;
const FAMILIES: usize = 20;
/// Which new series get room first when the budget is short: counts before the histograms of the
/// same keys, the cost families (experiment × team × instance type, the most combinations) last.
const PRIORITY: [usize; FAMILIES] = [
    ENDED,
    STARTED,
    EXPERIMENTS,
    MODELS,
    VERSIONS,
    LOGGED,
    PROMPTS,
    PROMPT_VERSIONS,
    TRACES,
    TRACE_TOKENS,
    TRACE_COST,
    TRACE_DURATIONS,
    JUDGE_COST,
    FEEDBACK,
    LLM,
    LOGGED_MODEL_TRACES,
    RATED,
    DURATIONS,
    UTIL,
    COST,
];
