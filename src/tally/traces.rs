//! Traces counted once each, by id. Each scope's reads start at its cursor: the latest start read
//! less `mlflow.traces_overlap` (MLflow writes a trace when it ends, with its start time), held at
//! the start of a trace still in progress for up to `mlflow.traces_max_in_progress`. The traces
//! read at or after the lowest cursor are remembered (24 bytes each, 28 to 50 with the map's
//! room), so the overlap re-read counts none twice, across restarts too (the store keeps them
//! with the counts). Feedback comes after its trace: every `mlflow.feedback_interval` a read
//! looks back over `mlflow.feedback_window`, so the traces and feedback of that window are
//! remembered too, and each feedback is counted once, by its id.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::histogram::{FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::Sym;
use crate::sync::traces::{malformed, FeedbackValue, LlmBatch, TraceBatch, TraceState};

/// A trace the rate card waits for: its scope and experiment id.
pub type Waiting = (Box<str>, Box<str>);

/// An app's LLM calls not read yet: its first read has no lower bound.
pub const NEVER: i64 = i64::MIN;

/// A trace remembered: when it started, and whether it was still in progress (not counted yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub start_ms: i64,
    pub in_progress: bool,
}

/// What is known of the traces read so far.
#[derive(Debug, Clone, Default)]
pub struct TraceLedger {
    /// By scope (the workspace, `""` without workspaces): the start the next read begins at.
    pub cursors: BTreeMap<Box<str>, i64>,
    /// The traces read at or after the lowest cursor: by id (as two words, so that an entry is
    /// 24 bytes: a `u128` key would align it to 32), the start shifted left once with the
    /// in-progress bit below it.
    seen: HashMap<[u64; 2], i64>,
    /// The feedback counted whose trace started at or after the lowest cursor or the feedback
    /// window: by id, its trace's start.
    feedback: HashMap<[u64; 2], i64>,
    /// Every trace and feedback that started at or after this is remembered: a read that looks
    /// back further would count again what was forgotten. `None` until the first count.
    pub memory_from: Option<i64>,
    /// The window's start at the last count (`i64::MAX` without a window).
    hold: Option<i64>,
    /// By (scope, experiment id) of every app with traces: where the next read of its LLM calls
    /// starts ([`NEVER`] before the first).
    pub llm_cursors: BTreeMap<(Box<str>, Box<str>), i64>,
    /// Traces counted that the rate card waits for, with their scope and experiment id.
    pub unrated: BTreeMap<u128, Waiting>,
}

fn key(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

fn id(key: &[u64; 2]) -> u128 {
    u128::from(key[0]) << 64 | u128::from(key[1])
}

fn pack(s: Seen) -> i64 {
    s.start_ms << 1 | i64::from(s.in_progress)
}

fn unpack(v: i64) -> Seen {
    Seen {
        start_ms: v >> 1,
        in_progress: v & 1 == 1,
    }
}

/// What one count adds, by experiment (as the snapshot names its id).
#[derive(Debug, Default)]
pub struct TraceDeltas {
    pub by_experiment: HashMap<Sym, ExperimentTraces>,
    /// Per [`malformed::KEYS`]: traces counted with that part unreadable.
    pub malformed: [u64; malformed::KEYS.len()],
    /// Traces in progress past `mlflow.traces_max_in_progress`, no longer waited for.
    pub given_up: u64,
}

/// The traces of one experiment a count adds: per finished state (in [`TraceState::FINISHED`]
/// order) how many and their durations, input and output tokens, and the cost MLflow recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentTraces {
    pub count: [u64; 2],
    pub durations: [HistogramAcc; 2],
    pub tokens: [u64; 2],
    pub cost: f64,
    /// The app's users and sessions (as [`crate::sync::traces::person`]) the traces were for,
    /// with the latest start of each.
    pub people: [HashMap<u64, i64>; 2],
    /// Feedback counted, by name and source (an index of [`crate::sync::traces::SOURCES`]).
    pub feedback: HashMap<(Box<str>, u8), FeedbackCounts>,
    /// What LLM judges' calls for that feedback cost.
    pub judge_cost: f64,
    /// The app's LLM calls by model, and what MLflow priced them at.
    pub llm: HashMap<Box<str>, (u64, f64)>,
    /// The calls the rate card priced, by model: input and output tokens, and their price.
    pub rated: HashMap<Box<str>, ([u64; 2], f64)>,
    /// Traces naming a logged model (`mlflow.modelId`), by its id and whether they were made in
    /// a run (evaluation): per finished state.
    pub logged_models: HashMap<(Box<str>, bool), [u64; 2]>,
}

/// Feedback of one name from one source: how many said each [`FeedbackValue::LABELS`], and the
/// numeric scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackCounts {
    pub values: [u64; 5],
    pub scores: FloatHistogramAcc,
}

/// What changed of the state since the store last saved it.
#[derive(Debug, Clone, Default)]
pub struct UnsavedTraces {
    /// Remembered (or changed) traces, and forgotten ones (`None`).
    pub seen: HashMap<u128, Option<Seen>>,
    /// Feedback remembered (with its trace's start), and forgotten.
    pub feedback: HashMap<u128, Option<i64>>,
    /// The cursors or [`TraceLedger::memory_from`] changed.
    pub cursors: bool,
    /// The LLM calls' cursors changed.
    pub llm_cursors: bool,
    /// Traces the rate card waits for (`None`: no longer).
    pub unrated: HashMap<u128, Option<Waiting>>,
}

impl UnsavedTraces {
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.feedback.is_empty()
            && self.unrated.is_empty()
            && !self.cursors
            && !self.llm_cursors
    }

    /// Takes back what a failed save did not write; what changed since wins.
    pub fn merge_back(&mut self, older: UnsavedTraces) {
        for (id, s) in older.seen {
            self.seen.entry(id).or_insert(s);
        }
        for (id, s) in older.feedback {
            self.feedback.entry(id).or_insert(s);
        }
        self.cursors |= older.cursors;
        self.llm_cursors |= older.llm_cursors;
        for (id, s) in older.unrated {
            self.unrated.entry(id).or_insert(s);
        }
    }
}

/// The timing settings of the reads.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub overlap_ms: i64,
    pub max_in_progress_ms: i64,
    /// `mlflow.feedback_window`: how far back the reads for late feedback look (0: they don't).
    pub feedback_ms: i64,
    /// A rate card is set (`cost.token_rates`): traces counted are read whole later, for it.
    pub rate: bool,
}

/// The buckets traces and feedback are observed in.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    pub duration_ms: &'a [u64],
    pub score: &'a [f64],
}

impl TraceLedger {
    /// The start the next read of `scope` begins at; `None` before its first (which reads every
    /// trace there is).
    pub fn since(&self, scope: Option<&str>) -> Option<i64> {
        self.cursors.get(scope.unwrap_or("")).copied()
    }

    /// What is remembered of a trace.
    pub fn seen(&self, trace: u128) -> Option<Seen> {
        self.seen.get(&key(trace)).copied().map(unpack)
    }

    /// Remembers a trace (read back from the store, or read now).
    pub fn remember(&mut self, trace: u128, s: Seen) {
        self.seen.insert(key(trace), pack(s));
    }

    /// The traces remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// The ids remembered, in no order.
    pub fn ids(&self) -> impl Iterator<Item = u128> + '_ {
        self.seen.keys().map(id)
    }

    /// Remembers a feedback counted (read back from the store), by its trace's start.
    pub fn remember_feedback(&mut self, feedback: u128, trace_start_ms: i64) {
        self.feedback.insert(key(feedback), trace_start_ms);
    }

    /// The feedback remembered.
    pub fn feedback_remembered(&self) -> usize {
        self.feedback.len()
    }

    /// Where a read for late feedback at `now_ms` starts: the feedback window back, but not
    /// before what is remembered; `None` when there is no window (or nothing counted yet).
    pub fn feedback_since(&self, w: Window, now_ms: i64) -> Option<i64> {
        (w.feedback_ms > 0).then_some(())?;
        Some((now_ms - w.feedback_ms).max(self.memory_from?))
    }

    /// Counts the traces of `batches` not counted yet: a finished trace once, a trace in progress
    /// when it ends. `experiment` names an experiment id as the snapshot does. Moves each scope's
    /// cursor and forgets what no later read can return.
    pub fn count(
        &mut self,
        batches: Vec<TraceBatch>,
        mut experiment: impl FnMut(&str) -> Sym,
        b: Bounds,
        w: Window,
        now_ms: i64,
        unsaved: &mut UnsavedTraces,
    ) -> TraceDeltas {
        let mut d = TraceDeltas::default();
        let waits = |start_ms: i64| now_ms.saturating_sub(start_ms) <= w.max_in_progress_ms;
        // What a read for late feedback may return again: remembered too.
        let hold = match w.feedback_ms {
            0 => i64::MAX,
            ms => now_ms - ms,
        };
        self.hold = Some(hold);
        let remembered_before = self
            .memory_from
            .or_else(|| self.cursors.values().min().copied());
        for mut batch in batches {
            let models = std::mem::take(&mut batch.models);
            // The rate card prices traces from its first read on: the history before is not
            // read whole again.
            let scope: Box<str> = batch.workspace.as_deref().unwrap_or("").into();
            let rating = w.rate && self.cursors.contains_key(&scope);
            // No later read of this scope starts before the look-back from its latest trace, or
            // the start of a trace in progress it waits for: what started before is counted and
            // not remembered (the first read of a large history remembers only its last minutes).
            let waiting = batch
                .by_experiment
                .values()
                .flatten()
                .filter(|r| r.state == TraceState::InProgress && waits(r.start_ms))
                .map(|r| r.start_ms)
                .min();
            let floor = match batch.latest_ms {
                Some(latest) => {
                    waiting.map_or(latest - w.overlap_ms, |h| h.min(latest - w.overlap_ms))
                }
                None => i64::MIN,
            }
            .min(hold);
            for (exp, given) in batch.feedback {
                let slot = d.by_experiment.entry(experiment(&exp)).or_default();
                for f in given {
                    let k = key(f.id);
                    if self.feedback.contains_key(&k) {
                        continue;
                    }
                    let counts = slot.feedback.entry((f.name, f.source)).or_default();
                    counts.values[f.value.index()] += 1;
                    if let FeedbackValue::Number(v) = f.value {
                        counts.scores.observe(b.score, v);
                    }
                    if f.judge_cost.is_finite() {
                        slot.judge_cost += f.judge_cost;
                    }
                    malformed::count(f.malformed, &mut d.malformed);
                    if f.trace_start_ms >= floor {
                        self.feedback.insert(k, f.trace_start_ms);
                        unsaved.feedback.insert(f.id, Some(f.trace_start_ms));
                    }
                }
            }
            for (exp, records) in batch.by_experiment {
                // Every app with traces has its LLM calls read, from its whole history.
                let app = (scope.clone(), exp.as_str().into());
                if let std::collections::btree_map::Entry::Vacant(e) = self.llm_cursors.entry(app) {
                    e.insert(NEVER);
                    unsaved.llm_cursors = true;
                }
                let sym = experiment(&exp);
                // Every experiment with traces has its series, at 0 from the start.
                let slot = d.by_experiment.entry(sym).or_default();
                for r in records {
                    let known = self.seen(r.id);
                    if known.is_some_and(|s| !s.in_progress) {
                        continue;
                    }
                    if r.state == TraceState::InProgress {
                        let waited = waits(r.start_ms);
                        if !waited {
                            // Given up once: remembered as done, never counted.
                            d.given_up += 1;
                        }
                        let s = Seen {
                            start_ms: r.start_ms,
                            in_progress: waited,
                        };
                        self.note(r.id, known, s, floor, unsaved);
                        continue;
                    }
                    let i = r.state.index();
                    if rating && r.input_tokens + r.output_tokens > 0 {
                        let waits: Waiting = (scope.clone(), exp.as_str().into());
                        self.unrated.insert(r.id, waits.clone());
                        unsaved.unrated.insert(r.id, Some(waits));
                    }
                    slot.count[i] += 1;
                    slot.durations[i].observe_ms(b.duration_ms, r.duration_ms);
                    if let Some(m) = (r.model as usize)
                        .checked_sub(1)
                        .and_then(|i| models.get(i))
                    {
                        slot.logged_models.entry((m.clone(), r.in_run)).or_default()[i] += 1;
                    }
                    slot.tokens[0] += r.input_tokens;
                    slot.tokens[1] += r.output_tokens;
                    if r.cost.is_finite() {
                        slot.cost += r.cost;
                    }
                    for (kind, who) in [r.user, r.session].into_iter().enumerate() {
                        if who != 0 {
                            let last = slot.people[kind].entry(who).or_insert(r.start_ms);
                            *last = (*last).max(r.start_ms);
                        }
                    }
                    malformed::count(r.malformed, &mut d.malformed);
                    let s = Seen {
                        start_ms: r.start_ms,
                        in_progress: false,
                    };
                    self.note(r.id, known, s, floor, unsaved);
                }
            }
            let old = self.cursors.get(&scope).copied();
            // Past the latest start read, less the overlap; never back; held at a trace that is
            // still in progress.
            let mut next = match (batch.latest_ms, old) {
                (Some(latest), Some(old)) => (latest - w.overlap_ms).max(old),
                (Some(latest), None) => latest - w.overlap_ms,
                (None, Some(old)) => old,
                (None, None) => now_ms - w.overlap_ms,
            };
            if let Some(h) = waiting {
                next = next.min(h);
            }
            if old != Some(next) {
                self.cursors.insert(scope, next);
                unsaved.cursors = true;
            }
        }
        // Remembered from the lowest cursor or the window on, but what an older count forgot
        // stays forgotten.
        if let Some(lowest) = self.cursors.values().min().copied() {
            let from = lowest.min(hold);
            let from = remembered_before.map_or(from, |b| b.max(from));
            if self.memory_from != Some(from) {
                self.memory_from = Some(from);
                unsaved.cursors = true;
            }
        }
        self.forget(unsaved);
        d
    }

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

    /// Forgets the cursors of scopes no longer read (a workspace deleted, or excluded by
    /// `mlflow.workspaces`): a stale one would hold the lowest cursor back, and with it every
    /// trace read since.
    pub fn keep_scopes(&mut self, scopes: &[&str], unsaved: &mut UnsavedTraces) {
        self.unrated.retain(|id, (s, _)| {
            let keep = scopes.contains(&&**s);
            if !keep {
                unsaved.unrated.insert(*id, None);
            }
            keep
        });
        let apps = self.llm_cursors.len();
        self.llm_cursors.retain(|(s, _), _| scopes.contains(&&**s));
        unsaved.llm_cursors |= self.llm_cursors.len() != apps;
        let before = self.cursors.len();
        self.cursors.retain(|k, _| scopes.contains(&&**k));
        if self.cursors.len() != before {
            unsaved.cursors = true;
            if let (Some(m), Some(lowest)) = (self.memory_from, self.cursors.values().min()) {
                let hold = self.hold.unwrap_or(i64::MAX);
                self.memory_from = Some(m.max((*lowest).min(hold)));
            }
            self.forget(unsaved);
        }
    }

    /// Remembers what a read found of a trace if a later read can return it (it started at
    /// `floor` or later); else forgets it, if it was remembered.
    fn note(
        &mut self,
        trace: u128,
        known: Option<Seen>,
        s: Seen,
        floor: i64,
        unsaved: &mut UnsavedTraces,
    ) {
        if s.start_ms >= floor {
            if known != Some(s) {
                self.remember(trace, s);
                unsaved.seen.insert(trace, Some(s));
            }
        } else if known.is_some() {
            self.seen.remove(&key(trace));
            unsaved.seen.insert(trace, None);
        }
    }

    /// Forgets the traces that started before every cursor: no read returns them again. The
    /// map gives back its room once it holds far fewer than it had room for (after the first
    /// read of a large history, most of it).
    fn forget(&mut self, unsaved: &mut UnsavedTraces) {
        let Some(lowest) = self.cursors.values().min().copied() else {
            return;
        };
        let lowest = self.memory_from.map_or(lowest, |m| m.min(lowest));
        self.seen.retain(|k, v| {
            let keep = unpack(*v).start_ms >= lowest;
            if !keep {
                unsaved.seen.insert(id(k), None);
            }
            keep
        });
        self.feedback.retain(|k, start| {
            let keep = *start >= lowest;
            if !keep {
                unsaved.feedback.insert(id(k), None);
            }
            keep
        });
        if self.seen.capacity() > 4 * self.seen.len().max(256) {
            self.seen.shrink_to_fit();
        }
        if self.feedback.capacity() > 4 * self.feedback.len().max(256) {
            self.feedback.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::traces::{FeedbackRecord, TraceRecord};

    const W: Window = Window {
        overlap_ms: 1_000,
        max_in_progress_ms: 10_000,
        feedback_ms: 0,
        rate: false,
    };
    const B: Bounds = Bounds {
        duration_ms: &[10],
        score: &[0.5, 1.0],
    };

    fn trace(id: u128, start_ms: i64, state: TraceState) -> TraceRecord {
        TraceRecord {
            id,
            start_ms,
            duration_ms: 5,
            input_tokens: 1,
            output_tokens: 2,
            cost: 0.5,
            state,
            malformed: 0,
            user: id as u64 % 2 + 1,
            session: id as u64,
            model: 0,
            in_run: false,
        }
    }

    fn batch(records: Vec<TraceRecord>) -> TraceBatch {
        let mut b = TraceBatch {
            latest_ms: records.iter().map(|r| r.start_ms).max(),
            ..TraceBatch::default()
        };
        b.by_experiment.insert("1".into(), records);
        b
    }

    /// The experiment's symbol: the first of a table, the same each time.
    fn exp() -> Sym {
        crate::sync::snapshot::Interner::default().intern("1")
    }

    fn count(s: &mut TraceLedger, records: Vec<TraceRecord>, now: i64) -> TraceDeltas {
        let mut unsaved = UnsavedTraces::default();
        s.count(vec![batch(records)], |_| exp(), B, W, now, &mut unsaved)
    }

    fn feedback(id: u128, trace_start_ms: i64, value: FeedbackValue) -> FeedbackRecord {
        FeedbackRecord {
            id,
            trace_start_ms,
            name: "helpful".into(),
            source: 0,
            value,
            judge_cost: 0.25,
            malformed: 0,
        }
    }

    /// Traces with their feedback so far, read at `now` with a feedback window of 5 000 ms.
    fn count_with_feedback(
        s: &mut TraceLedger,
        records: Vec<TraceRecord>,
        given: Vec<FeedbackRecord>,
        now: i64,
    ) -> (TraceDeltas, UnsavedTraces) {
        let mut unsaved = UnsavedTraces::default();
        let mut b = batch(records);
        b.feedback.insert("1".into(), given);
        let w = Window {
            feedback_ms: 5_000,
            ..W
        };
        let d = s.count(vec![b], |_| exp(), B, w, now, &mut unsaved);
        (d, unsaved)
    }

    /// Feedback logged after its trace was counted is counted when a later read (looking back
    /// over the feedback window) finds it; each feedback once, the trace not again.
    #[test]
    fn late_feedback_counts_once_and_its_trace_not_again() {
        let mut s = TraceLedger::default();
        let ok = TraceState::Ok;
        let (d, _) = count_with_feedback(
            &mut s,
            vec![trace(1, 6_000, ok), trace(2, 9_000, ok)],
            vec![feedback(100, 6_000, FeedbackValue::True)],
            10_000,
        );
        let e = &d.by_experiment[&exp()];
        assert_eq!(e.count, [2, 0]);
        assert_eq!(e.feedback[&("helpful".into(), 0)].values, [1, 0, 0, 0, 0]);
        assert_eq!(e.judge_cost, 0.25);
        // Trace 1 is before the overlap (9 000 - 1 000) but inside the window (10 000 - 5 000):
        // remembered, as is what was said of it, and reads may look back to 5 000.
        assert_eq!(s.since(None), Some(8_000));
        assert_eq!(s.memory_from, Some(5_000));
        assert_eq!(
            s.feedback_since(
                Window {
                    feedback_ms: 5_000,
                    ..W
                },
                10_000
            ),
            Some(5_000)
        );
        assert_eq!(s.feedback_since(W, 10_000), None);
        // Read again from the window: the first feedback again, two new ones on trace 1 (a
        // score of 0.75 and a judge's error).
        let (d, unsaved) = count_with_feedback(
            &mut s,
            vec![trace(1, 6_000, ok), trace(2, 9_000, ok)],
            vec![
                feedback(100, 6_000, FeedbackValue::True),
                feedback(101, 6_000, FeedbackValue::Number(0.75)),
                feedback(102, 6_000, FeedbackValue::Error),
            ],
            10_500,
        );
        let e = &d.by_experiment[&exp()];
        assert_eq!(e.count, [0, 0]);
        let f = &e.feedback[&("helpful".into(), 0)];
        assert_eq!(f.values, [0, 0, 1, 0, 1]);
        assert_eq!(
            (f.scores.counts.as_slice(), f.scores.sum),
            (&[0, 1, 0][..], 0.75)
        );
        assert_eq!(e.judge_cost, 0.5);
        assert_eq!(unsaved.feedback[&101], Some(6_000));
        assert_eq!(s.feedback_remembered(), 3);
        // Once trace 1 is out of the window and the overlap, it and its feedback are forgotten.
        let (d, unsaved) = count_with_feedback(&mut s, vec![trace(3, 20_000, ok)], vec![], 21_000);
        assert_eq!(d.by_experiment[&exp()].count, [1, 0]);
        assert_eq!(s.memory_from, Some(16_000));
        assert_eq!(s.feedback_remembered(), 0);
        assert_eq!(unsaved.feedback[&100], None);
        assert_eq!(s.ids().collect::<Vec<_>>(), [3]);
    }

    /// An app seen in a traces read gets a cursor for its LLM calls; a window is counted only
    /// from where the app's count stands, so one read twice counts once.
    #[test]
    fn llm_calls_count_once_per_window() {
        use crate::source::mlflow::model::LlmCalls;
        let mut s = TraceLedger::default();
        count(&mut s, vec![trace(1, 100, TraceState::Ok)], 1_000);
        let app: (Box<str>, Box<str>) = ("".into(), "1".into());
        assert_eq!(s.llm_cursors[&app], NEVER);
        let window = |from_ms: i64, next_ms: i64, calls: u64| LlmBatch {
            workspace: None,
            experiment_id: "1".into(),
            from_ms,
            next_ms,
            calls: vec![LlmCalls {
                model: "gpt-4o".into(),
                calls,
                cost: 0.5,
            }],
        };
        let mut d = TraceDeltas::default();
        let mut unsaved = UnsavedTraces::default();
        // The first window, then the same one read again (its cycle was not counted): once.
        s.count_llm(
            vec![window(NEVER, 500, 2), window(NEVER, 700, 3)],
            |_| exp(),
            &mut d,
            &mut unsaved,
        );
        s.count_llm(vec![window(500, 900, 4)], |_| exp(), &mut d, &mut unsaved);
        assert_eq!(d.by_experiment[&exp()].llm["gpt-4o"], (6, 1.0));
        assert_eq!(s.llm_cursors[&app], 900);
        assert!(unsaved.llm_cursors);
        // A workspace no longer read drops its apps' cursors.
        s.keep_scopes(&["other"], &mut unsaved);
        assert!(s.llm_cursors.is_empty());
    }

    /// With a rate card, traces counted after a scope's first read wait to be read whole; each is
    /// priced once, only its calls to models the card prices, and only if it was waited for.
    #[test]
    fn the_rate_card_prices_each_trace_it_waits_for_once() {
        use crate::source::mlflow::model::SpanCall;
        use crate::sync::traces::RatedBatch;
        let w = Window { rate: true, ..W };
        let mut s = TraceLedger::default();
        let mut unsaved = UnsavedTraces::default();
        let run = |s: &mut TraceLedger, unsaved: &mut UnsavedTraces, records| {
            s.count(vec![batch(records)], |_| exp(), B, w, 10_000, unsaved)
        };
        // The first read (the history): nothing waits.
        run(&mut s, &mut unsaved, vec![trace(1, 1_000, TraceState::Ok)]);
        assert!(s.unrated.is_empty());
        // Then two traces with tokens, one in progress (not counted yet).
        run(
            &mut s,
            &mut unsaved,
            vec![
                trace(2, 2_000, TraceState::Ok),
                trace(3, 2_500, TraceState::InProgress),
            ],
        );
        assert_eq!(s.unrated.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(s.waiting_for_rates(10), [("".into(), 2)]);
        let call = |model: &str, input, output| SpanCall {
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            priced: false,
        };
        let rates: HashMap<Box<str>, (f64, f64)> =
            [("house".into(), (1.0, 4.0))].into_iter().collect();
        let read = RatedBatch {
            workspace: None,
            asked: vec![2],
            calls: vec![(2, call("house", 1_000, 500)), (2, call("other", 7, 7))],
        };
        let mut d = TraceDeltas::default();
        s.count_rated(
            vec![read.clone(), read],
            |_| exp(),
            &rates,
            &mut d,
            &mut unsaved,
        );
        // Once, though read twice: 1 000 × 1 + 500 × 4 per million.
        assert_eq!(
            d.by_experiment[&exp()].rated["house"],
            ([1_000, 500], 0.003)
        );
        assert!(!d.by_experiment[&exp()].rated.contains_key("other"));
        assert!(s.unrated.is_empty());
        assert_eq!(unsaved.unrated[&2], None);
    }

    /// A feedback whose judge cost cannot be read counts, as feedback, once; the cost part is
    /// counted unreadable once too, and read again it counts nothing.
    #[test]
    fn a_feedback_with_an_unreadable_cost_is_counted_and_flagged_once() {
        let mut s = TraceLedger::default();
        let bad = FeedbackRecord {
            judge_cost: f64::NAN,
            malformed: malformed::JUDGE_COST,
            ..feedback(100, 9_000, FeedbackValue::True)
        };
        let part = malformed::KEYS
            .iter()
            .position(|(bit, _)| *bit == malformed::JUDGE_COST)
            .unwrap();
        for expected in [1, 0] {
            let (d, _) = count_with_feedback(
                &mut s,
                vec![trace(2, 9_000, TraceState::Ok)],
                vec![bad.clone()],
                10_000,
            );
            assert_eq!(d.malformed[part], expected);
            assert_eq!(d.malformed.iter().sum::<u64>(), expected);
            let e = &d.by_experiment[&exp()];
            assert_eq!(e.judge_cost, 0.0);
            let counted = e.feedback.get(&("helpful".into(), 0)).map(|f| f.values);
            assert_eq!(counted, (expected == 1).then_some([1, 0, 0, 0, 0]));
        }
    }

    /// A ledger saved before feedback was read remembers only from its lowest cursor: a read for
    /// feedback does not look back before it, as it would count forgotten traces again.
    #[test]
    fn a_ledger_from_before_feedback_looks_back_no_further_than_it_remembers() {
        let mut s = TraceLedger::default();
        s.cursors.insert("".into(), 8_000);
        let w = Window {
            feedback_ms: 5_000,
            ..W
        };
        assert_eq!(s.feedback_since(w, 10_000), None);
        count_with_feedback(
            &mut s,
            vec![trace(2, 9_000, TraceState::Ok)],
            vec![],
            10_000,
        );
        assert_eq!(s.memory_from, Some(8_000));
        assert_eq!(s.feedback_since(w, 10_000), Some(8_000));
        // As time passes the window moves past it.
        count_with_feedback(
            &mut s,
            vec![trace(3, 16_000, TraceState::Ok)],
            vec![],
            16_000,
        );
        assert_eq!(s.memory_from, Some(11_000));
        assert_eq!(s.feedback_since(w, 16_000), Some(11_000));
    }

    /// The overlap re-reads what was counted: counted once. A trace in progress is counted when
    /// it ends and holds the cursor until then; what is before every cursor is forgotten.
    #[test]
    fn each_trace_counts_once_and_one_in_progress_when_it_ends() {
        let mut s = TraceLedger::default();
        let (ok, running) = (TraceState::Ok, TraceState::InProgress);
        let d = count(
            &mut s,
            vec![
                trace(1, 100, ok),
                trace(2, 200, running),
                trace(4, 5_000, ok),
            ],
            6_000,
        );
        let e = &d.by_experiment[&exp()];
        assert_eq!((e.count, e.tokens, e.cost), ([2, 0], [2, 4], 1.0));
        // Their users (id % 2 + 1) and sessions (the id), each at its latest start; the trace in
        // progress names none yet.
        let people = |m: &HashMap<u64, i64>| {
            let mut v: Vec<(u64, i64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            v.sort();
            v
        };
        assert_eq!(people(&e.people[0]), [(1, 5_000), (2, 100)]);
        assert_eq!(people(&e.people[1]), [(1, 100), (4, 5_000)]);
        // Held at the trace in progress (200), not at 5 000 - 1 000.
        assert_eq!(s.since(None), Some(200));
        // Read again with the trace in progress ended in error, and a new one: those two count.
        let d = count(
            &mut s,
            vec![
                trace(2, 200, TraceState::Error),
                trace(4, 5_000, ok),
                trace(3, 6_000, ok),
            ],
            7_000,
        );
        let e = &d.by_experiment[&exp()];
        assert_eq!(e.count, [1, 1]);
        // Its 5 ms in the first bucket (10 ms).
        assert_eq!(e.durations[1].counts, [1, 0]);
        assert_eq!(s.since(None), Some(5_000));
        // 1 and 2 started before the cursor: forgotten.
        let mut kept: Vec<u128> = s.ids().collect();
        kept.sort();
        assert_eq!(kept, [3, 4]);
        let d = count(&mut s, vec![trace(3, 6_000, ok)], 8_000);
        assert_eq!(d.by_experiment[&exp()].count, [0, 0]);
        assert_eq!(s.since(None), Some(5_000));
    }

    /// A workspace no longer read loses its cursor, and the traces only it held back are
    /// forgotten.
    #[test]
    fn a_scope_no_longer_read_holds_nothing_back() {
        let mut s = TraceLedger::default();
        let mut unsaved = UnsavedTraces::default();
        let mut old = batch(vec![trace(1, 100, TraceState::Ok)]);
        old.workspace = Some("gone".into());
        let mut new = batch(vec![trace(2, 9_000, TraceState::Ok)]);
        new.workspace = Some("kept".into());
        s.count(vec![old, new], |_| exp(), B, W, 9_500, &mut unsaved);
        // The old scope's cursor (100 - 1 000) holds trace 2 of the other in memory.
        assert_eq!(s.remembered(), 2);
        s.keep_scopes(&["kept"], &mut unsaved);
        assert_eq!(s.since(Some("gone")), None);
        assert_eq!(s.since(Some("kept")), Some(8_000));
        assert_eq!(s.ids().collect::<Vec<_>>(), [2]);
        assert!(unsaved.cursors);
        assert_eq!(unsaved.seen[&1], None);
    }

    /// A trace in progress longer than the wait is given up: the cursor moves on without it.
    #[test]
    fn a_trace_in_progress_too_long_is_given_up() {
        let mut s = TraceLedger::default();
        let d = count(
            &mut s,
            vec![
                trace(1, 100, TraceState::InProgress),
                trace(2, 20_000, TraceState::Ok),
            ],
            20_500,
        );
        assert_eq!(d.given_up, 1);
        assert_eq!(s.since(None), Some(19_000));
        assert_eq!(s.seen(1), None);
        assert_eq!(s.remembered(), 1);
    }
}
