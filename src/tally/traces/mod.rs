//! Traces counted once each, by id. Each scope's reads start at its cursor: the latest start read
//! less `mlflow.traces_overlap` (MLflow writes a trace when it ends, with its start time), held at
//! the start of a trace still in progress for up to `mlflow.traces_max_in_progress`. The traces
//! read at or after the lowest cursor are remembered (24 bytes each, 28 to 50 with the map's
//! room), so the overlap re-read counts none twice, across restarts too (the store keeps them
//! with the counts). Feedback comes after its trace: every `mlflow.feedback_interval` a read
//! looks back over `mlflow.feedback_window`, so the traces and feedback of that window are
//! remembered too, and each feedback is counted once, by its id.

mod llm;

use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::histogram::{FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::Sym;
use crate::sync::traces::{malformed, FeedbackValue, TraceBatch, TraceState};

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
mod tests;
