//! What the exporter has counted from MLflow, each thing once, when first seen: runs started and
//! ended and their durations, compute time, money and GPU time, GPU utilization and idle GPU cost,
//! experiments, models and versions created, and users activated (time to first model).
//!
//! Counters are sums of what was counted, never derived again from MLflow's current state, so they
//! never go back: not after `mlflow gc`, not after a full resync, not when label folding changes and
//! not across a restart (the store keeps the tally). Where MLflow later disagrees with what was
//! counted (a counted run is gone, an end time moved earlier) the counter stays and the difference
//! is counted in `mlflow_exporter_corrections_total{family}`.
//!
//! New series are born only within the series budget (`metrics.max_series`): a new label
//! combination that does not fit is folded into `__other__`, its last label first.
//!
//! Here: the tally's state and one cycle's count. Runs are counted in `runs.rs`, objects counted
//! once (experiments, models, versions, prompts, activations) in `objects.rs`, traces in
//! `traces/`, corrections in `corrections.rs`; `apply.rs` names a cycle's deltas and adds them in,
//! within the series budget of `budget.rs`; `labels.rs` folds label values.

pub mod labels;
pub mod traces;

mod apply;
mod budget;
mod corrections;
mod objects;
mod runs;

use std::collections::BTreeMap;
use std::sync::Arc;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::{HashMap, HashSet};

use crate::config::Settings;
use crate::histogram::{bounds_ms, FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::{RunKey, RunRecord, Snapshot, Sym};
use crate::sync::Card;
use labels::{Folds, StickyLabels};
pub use objects::{first_models, prompt_team, registrations};
use runs::Ended;
pub use runs::{CostSeries, StoredRun};

/// Label values of one series, as exported (folded already).
pub type Key = Box<[Box<str>]>;

/// Bits of [`RunRecord::counted`]: what of the run has been counted.
pub mod bits {
    /// The run has been seen: its experiment has its zero series.
    pub const SEEN: u8 = 1;
    /// Counted in `mlflow_runs_started_total`.
    pub const STARTED: u8 = 2;
    /// Counted in `mlflow_runs_ended_total`.
    pub const ENDED: u8 = 4;
    /// Observed in `mlflow_run_duration_seconds`.
    pub const DURATION: u8 = 8;
    /// Observed in `mlflow_run_gpu_utilization_ratio`, its idle GPU cost counted.
    pub const UTIL: u8 = 16;
    /// MLflow's end moved before what was counted; the difference is counted as a correction.
    pub const CORRECTED: u8 = 32;
}

/// The families the tally holds, by name, as `mlflow_exporter_corrections_total` labels them.
pub mod names {
    pub const RUNS_ENDED: &str = "mlflow_runs_ended_total";
    pub const RUN_DURATION: &str = "mlflow_run_duration_seconds";
    pub const RUNS_STARTED: &str = "mlflow_runs_started_total";
    pub const COMPUTE: &str = "mlflow_run_compute_seconds_total";
    pub const COST: &str = "mlflow_run_cost_total";
    pub const GPU: &str = "mlflow_run_gpu_seconds_total";
    pub const GPU_UTILIZATION: &str = "mlflow_run_gpu_utilization_ratio";
    pub const IDLE_GPU_COST: &str = "mlflow_run_idle_gpu_cost_total";
    pub const EXPERIMENTS_CREATED: &str = "mlflow_experiments_created_total";
    pub const MODELS_CREATED: &str = "mlflow_registered_models_created_total";
    pub const VERSIONS_CREATED: &str = "mlflow_model_versions_created_total";
    pub const TIME_TO_FIRST_MODEL: &str = "mlflow_user_time_to_first_model_seconds";
    pub const LOGGED_MODELS_CREATED: &str = "mlflow_logged_models_created_total";
    pub const TIME_TO_REGISTRATION: &str = "mlflow_logged_model_time_to_registration_seconds";
    pub const PROMPTS_CREATED: &str = "mlflow_prompts_created_total";
    pub const PROMPT_VERSIONS_CREATED: &str = "mlflow_prompt_versions_created_total";
    /// MLflow 3's traces: finished, their durations, tokens and recorded cost.
    pub const TRACES: &str = "mlflow_traces_total";
    pub const TRACE_DURATION: &str = "mlflow_trace_duration_seconds";
    pub const TRACE_TOKENS: &str = "mlflow_trace_tokens_total";
    pub const TRACE_COST: &str = "mlflow_trace_cost_total";
    /// Traces counted with a part unreadable (by the part), and traces given up in progress.
    pub const TRACE_ERRORS: &str = "mlflow_exporter_trace_errors_total";
    pub const TRACES_GIVEN_UP: &str = "mlflow_exporter_traces_given_up_total";
    /// Feedback on traces (by value, with a histogram of the scores), and LLM judges' spend.
    pub const TRACE_FEEDBACK: &str = "mlflow_trace_feedback_total";
    pub const JUDGE_COST: &str = "mlflow_trace_judge_cost_total";
    /// The apps' LLM calls by model, and what MLflow priced them at (one series holds both).
    pub const LLM_CALLS: &str = "mlflow_trace_llm_calls_total";
    pub const LLM_COST: &str = "mlflow_trace_llm_cost_total";
    /// Traces naming a logged model, by its name and their traffic (evaluation or production).
    pub const LOGGED_MODEL_TRACES: &str = "mlflow_logged_model_traces_total";
    /// The LLM calls the rate card priced: their tokens and price (one series holds both).
    pub const RATED_TOKENS: &str = "mlflow_trace_rated_tokens_total";
    pub const RATED_COST: &str = "mlflow_trace_rated_cost_total";
    pub const ALL: [&str; 27] = [
        RUNS_ENDED,
        RUN_DURATION,
        RUNS_STARTED,
        COMPUTE,
        COST,
        GPU,
        GPU_UTILIZATION,
        IDLE_GPU_COST,
        EXPERIMENTS_CREATED,
        MODELS_CREATED,
        VERSIONS_CREATED,
        TIME_TO_FIRST_MODEL,
        LOGGED_MODELS_CREATED,
        TIME_TO_REGISTRATION,
        PROMPTS_CREATED,
        PROMPT_VERSIONS_CREATED,
        TRACES,
        TRACE_DURATION,
        TRACE_TOKENS,
        TRACE_COST,
        TRACE_FEEDBACK,
        JUDGE_COST,
        LLM_CALLS,
        LLM_COST,
        LOGGED_MODEL_TRACES,
        RATED_TOKENS,
        RATED_COST,
    ];
}

/// What the tally needs of the settings, compiled once.
#[derive(Debug, Clone)]
pub struct TallySettings {
    pub max_series: usize,
    /// Extra labels of the runs families.
    pub extra: usize,
    /// The rate card and token rates the sync judged runs by (shared, so a run's rate index is
    /// read against the card that found it).
    pub card: Arc<Card>,
    pub run_bounds: Vec<f64>,
    pub run_bounds_ms: Vec<u64>,
    pub gpu_bounds: Vec<f64>,
    pub ttfm_bounds: Vec<f64>,
    pub ttfm_bounds_ms: Vec<u64>,
    /// `delivery.time_to_register_buckets`, for a logged model's time to registration.
    pub reg_bounds: Vec<f64>,
    pub reg_bounds_ms: Vec<u64>,
    /// `metrics.trace_duration_buckets`, and the reads' window of traces.
    pub trace_bounds: Vec<f64>,
    pub trace_bounds_ms: Vec<u64>,
    pub trace_window: traces::Window,
    /// `metrics.feedback_score_buckets`, for numeric feedback.
    pub score_bounds: Vec<f64>,
    /// The longest of `metrics.user_windows`: an app's user or session last active before it is
    /// forgotten.
    pub max_window_ms: i64,
    /// How many windows (`metrics.user_windows`) the apps' users and sessions are counted in.
    pub windows: usize,
}

impl TallySettings {
    pub fn new(s: &Settings, card: Arc<Card>) -> TallySettings {
        let m = &s.metrics;
        TallySettings {
            max_series: m.max_series,
            extra: m.extra_labels.len(),
            card,
            run_bounds: m.run_duration_buckets.clone(),
            run_bounds_ms: bounds_ms(&m.run_duration_buckets),
            gpu_bounds: m.gpu_utilization_buckets.clone(),
            ttfm_bounds: m.time_to_first_model_buckets.clone(),
            ttfm_bounds_ms: bounds_ms(&m.time_to_first_model_buckets),
            reg_bounds: s.delivery.time_to_register_buckets.clone(),
            reg_bounds_ms: bounds_ms(&s.delivery.time_to_register_buckets),
            trace_bounds: m.trace_duration_buckets.clone(),
            trace_bounds_ms: bounds_ms(&m.trace_duration_buckets),
            trace_window: traces::Window {
                overlap_ms: s.mlflow.traces_overlap.as_millis() as i64,
                max_in_progress_ms: s.mlflow.traces_max_in_progress.as_millis() as i64,
                feedback_ms: s.mlflow.feedback_window.as_millis() as i64,
                rate: !s.cost.token_rates.is_empty(),
            },
            score_bounds: m.feedback_score_buckets.clone(),
            max_window_ms: m
                .user_windows
                .iter()
                .map(|w| w.as_millis() as i64)
                .max()
                .unwrap_or(0),
            windows: m.user_windows.len(),
        }
    }
}

/// One family's series: label values → what was counted.
pub type Series<V> = BTreeMap<Key, V>;

/// Objects counted once each (experiments, models, versions, activated users): name → gone.
type Objects = HashMap<Box<str>, bool>;

/// The object kinds, as the store names them.
pub mod kinds {
    pub const EXPERIMENT: &str = "experiment";
    pub const MODEL: &str = "model";
    pub const VERSION: &str = "version";
    pub const ACTIVATED: &str = "activated_user";
    /// MLflow 3's logged models, by id; those observed registered.
    pub const LOGGED_MODEL: &str = "logged_model";
    pub const REGISTERED_LOGGED_MODEL: &str = "registered_logged_model";
    /// Prompts of MLflow 3's prompt registry, and their versions.
    pub const PROMPT: &str = "prompt";
    pub const PROMPT_VERSION: &str = "prompt_version";
    /// Runs a trace was made in (MLflow 3's `mlflow.sourceRun`), for the `tracing` feature.
    pub const TRACED_RUN: &str = "traced_run";
}

/// What changed since the store last saved the tally.
#[derive(Debug, Clone, Default)]
pub struct Unsaved {
    pub runs: HashMap<RunKey, StoredRun>,
    /// (family, labels) of series that changed.
    pub series: HashSet<(&'static str, Key)>,
    pub objects: Vec<(&'static str, Box<str>, bool)>,
    pub traces: traces::UnsavedTraces,
    /// Apps' users and sessions whose last activity changed (`None`: forgotten).
    pub app_people: HashMap<(Key, u8, u64), Option<i64>>,
}

impl Unsaved {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.series.is_empty()
            && self.objects.is_empty()
            && self.traces.is_empty()
            && self.app_people.is_empty()
    }

    /// Takes back what a failed save did not write; what changed since wins.
    pub fn merge_back(&mut self, older: Unsaved) {
        for (k, r) in older.runs {
            self.runs.entry(k).or_insert(r);
        }
        self.series.extend(older.series);
        let mut objects = older.objects;
        objects.append(&mut self.objects);
        self.objects = objects;
        self.traces.merge_back(older.traces);
        for (k, v) in older.app_people {
            self.app_people.entry(k).or_insert(v);
        }
    }
}

/// What a count did, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountReport {
    /// Runs whose counted state changed.
    pub runs: usize,
    /// Series created, and series that did not fit the budget and were folded.
    pub created: usize,
    pub budget_folded: usize,
    /// Runs found gone (counted before, not in MLflow now).
    pub gone: usize,
}

/// Everything counted so far.
#[derive(Debug, Clone)]
pub struct Tally {
    pub settings: TallySettings,
    pub labels: StickyLabels,
    /// `[experiment, extra labels…]`: runs ended, per ended status.
    pub ended: Series<[u64; 3]>,
    /// The same keys (those that fit the budget; the rest fold apart): their durations.
    pub durations: Series<[HistogramAcc; 3]>,
    /// `[experiment, team]`.
    pub started: Series<u64>,
    /// `[experiment, team, instance_type]`.
    pub cost: Series<CostSeries>,
    /// `[experiment, team]`.
    pub gpu_util: Series<FloatHistogramAcc>,
    /// `[team]`.
    pub experiments_created: Series<u64>,
    pub models_created: Series<u64>,
    /// `[model]`.
    pub versions_created: Series<u64>,
    pub time_to_first_model: HistogramAcc,
    /// `[experiment]`: logged models (MLflow 3) created.
    pub logged_models_created: Series<u64>,
    /// Per logged model, once: its creation to the first model version registered from it.
    pub time_to_registration: HistogramAcc,
    /// `[team]` (`workspace/team` with workspaces): prompts and prompt versions created (their
    /// alias moves are deployments, in the delivery history).
    pub prompts_created: Series<u64>,
    pub prompt_versions_created: Series<u64>,
    /// `[experiment]`: traces of MLflow 3's GenAI apps that finished, per state (in
    /// [`crate::sync::traces::TraceState::FINISHED`] order), and their durations.
    pub traces: Series<[u64; 2]>,
    pub trace_durations: Series<[HistogramAcc; 2]>,
    /// `[experiment]`: input and output tokens of the traces, and what MLflow recorded they cost.
    pub trace_tokens: Series<[u64; 2]>,
    pub trace_cost: Series<f64>,
    /// `[experiment, name, source_type]`: feedback on the traces, by value, and its scores.
    pub trace_feedback: Series<traces::FeedbackCounts>,
    /// `[experiment]`: what LLM judges' calls for that feedback cost.
    pub judge_cost: Series<f64>,
    /// `[experiment, model]`: the apps' LLM calls, and what MLflow priced them at.
    pub llm_calls: Series<(u64, f64)>,
    /// `[experiment, logged_model, traffic]`: traces naming a logged model, per finished state.
    pub logged_model_traces: Series<[u64; 2]>,
    /// `[experiment, model]`: the calls the rate card priced: input and output tokens, price.
    pub rated: Series<([u64; 2], f64)>,
    /// Per [`crate::sync::traces::malformed::KEYS`]: traces counted with that part unreadable.
    pub trace_errors: [u64; crate::sync::traces::malformed::KEYS.len()],
    pub traces_given_up: u64,
    /// The traces' cursors and the traces read after them.
    pub trace_state: traces::TraceLedger,
    /// `[experiment]`: each app's end users and sessions (index 0 and 1, by
    /// [`crate::sync::traces::person`]) with their last activity, within the longest user window.
    pub app_people: BTreeMap<Key, [HashMap<u64, i64>; 2]>,
    /// By family name: what the family holds that MLflow's current data no longer supports.
    pub corrections: BTreeMap<&'static str, f64>,
    objects: HashMap<&'static str, Objects>,
    /// Runs read back from the store, until the first full read after start-up claims them.
    pending: HashMap<RunKey, StoredRun>,
    /// Runs counted and then removed from MLflow: not counted again should they come back.
    gone: HashMap<RunKey, StoredRun>,
    pub unsaved: Unsaved,
}

/// Experiment, team and instance type of a cost series, by symbols.
type CostKey = (Sym, Option<Sym>, Option<Sym>);

/// Deltas of one cycle by symbols, before they are named.
#[derive(Default)]
struct Deltas {
    /// (experiment, extra combination) → runs, deltas.
    ended: HashMap<(Sym, u32), (u64, Ended)>,
    started: HashMap<(Sym, Option<Sym>), u64>,
    cost: HashMap<CostKey, (u64, CostSeries)>,
    util: HashMap<(Sym, Option<Sym>), (u64, FloatHistogramAcc)>,
    traces: traces::TraceDeltas,
}

/// One family's new deltas by exported key: (runs behind them, delta).
type Named<V> = BTreeMap<Key, (u64, V)>;

impl Tally {
    /// A tally with a card of its own (tests and tools; the pipeline shares the sync's).
    pub fn new(settings: &Settings) -> Tally {
        Tally::with_card(settings, Card::new(settings))
    }

    /// A tally that reads rates through `card`, the one the sync judged the runs by.
    pub fn with_card(settings: &Settings, card: Arc<Card>) -> Tally {
        let extra = settings
            .metrics
            .extra_labels
            .iter()
            .map(|l| l.name.clone())
            .collect();
        Tally {
            settings: TallySettings::new(settings, card),
            labels: StickyLabels::new(settings.metrics.max_label_values, extra),
            ended: Series::new(),
            durations: Series::new(),
            started: Series::new(),
            cost: Series::new(),
            gpu_util: Series::new(),
            experiments_created: Series::new(),
            models_created: Series::new(),
            versions_created: Series::new(),
            time_to_first_model: HistogramAcc::default(),
            logged_models_created: Series::new(),
            time_to_registration: HistogramAcc::default(),
            prompts_created: Series::new(),
            prompt_versions_created: Series::new(),
            traces: Series::new(),
            trace_durations: Series::new(),
            trace_tokens: Series::new(),
            trace_cost: Series::new(),
            trace_feedback: Series::new(),
            judge_cost: Series::new(),
            llm_calls: Series::new(),
            logged_model_traces: Series::new(),
            rated: Series::new(),
            trace_errors: Default::default(),
            traces_given_up: 0,
            trace_state: traces::TraceLedger::default(),
            app_people: BTreeMap::new(),
            corrections: names::ALL.iter().map(|n| (*n, 0.0)).collect(),
            objects: HashMap::new(),
            pending: HashMap::new(),
            gone: HashMap::new(),
            unsaved: Unsaved::default(),
        }
    }

    /// A tally that has counted `snap` once, with no series budget (tests, benches, tools).
    pub fn of(snap: &mut Snapshot, settings: &Settings, now_ms: i64) -> Tally {
        let mut t = Tally::new(settings);
        let folds = t.labels.admit_and_fold(snap);
        t.count(snap, &folds, Vec::new(), true, now_ms, usize::MAX);
        t
    }

    /// Counts what `snap` shows that was not counted yet. `gone` are runs a full read no longer
    /// found, with their last records; `full` says the snapshot is a full read (objects missing
    /// from it are gone). New series may take up to `room` samples; those that do not fit are
    /// folded into `__other__`. `folds` are the snapshot's after [`StickyLabels::admit`].
    pub fn count(
        &mut self,
        snap: &mut Snapshot,
        folds: &Folds,
        gone: Vec<(RunKey, RunRecord)>,
        full: bool,
        now_ms: i64,
        room: usize,
    ) -> CountReport {
        let mut report = CountReport::default();
        let mut deltas = Deltas::default();
        let pending = std::mem::take(&mut self.pending);
        let claimed = self.count_runs(snap, &pending, now_ms, &mut deltas, &mut report);
        if full {
            // Stored runs no full read found: removed while the exporter was not running.
            for (key, run) in pending {
                if !claimed.contains(&key) {
                    self.correct_stored(key, run);
                    report.gone += 1;
                }
            }
        } else {
            self.pending = pending;
        }
        for (key, rec) in gone {
            self.correct_gone(key, &rec, now_ms);
            report.gone += 1;
        }
        let batches = std::mem::take(&mut snap.traces);
        for b in &batches {
            for run in &b.source_runs {
                self.first_sight(kinds::TRACED_RUN, run);
            }
        }
        if !batches.is_empty() {
            let strings = &mut snap.strings;
            deltas.traces = self.trace_state.count(
                batches,
                |id| strings.intern(id),
                traces::Bounds {
                    duration_ms: &self.settings.trace_bounds_ms,
                    score: &self.settings.score_bounds,
                },
                self.settings.trace_window,
                now_ms,
                &mut self.unsaved.traces,
            );
            self.count_trace_errors(&deltas.traces);
        }
        let rated = std::mem::take(&mut snap.rated);
        if !rated.is_empty() {
            let strings = &mut snap.strings;
            self.trace_state.count_rated(
                rated,
                |id| strings.intern(id),
                &self.settings.card.token_rates,
                &mut deltas.traces,
                &mut self.unsaved.traces,
            );
        }
        let llm = std::mem::take(&mut snap.llm_calls);
        if !llm.is_empty() {
            let strings = &mut snap.strings;
            self.trace_state.count_llm(
                llm,
                |id| strings.intern(id),
                &mut deltas.traces,
                &mut self.unsaved.traces,
            );
        }
        let mut room = room;
        self.apply(snap, folds, deltas, full, &mut room, &mut report);
        self.forget_app_people(now_ms);
        self.count_activations(snap);
        self.count_registrations(snap);
        report
    }

    /// Forgets the apps' users and sessions last active before the longest user window.
    fn forget_app_people(&mut self, now_ms: i64) {
        let before = now_ms.saturating_sub(self.settings.max_window_ms);
        for (k, people) in self.app_people.iter_mut() {
            for (kind, seen) in people.iter_mut().enumerate() {
                seen.retain(|who, last| {
                    let keep = *last >= before;
                    if !keep {
                        let id = (k.clone(), kind as u8, *who);
                        self.unsaved.app_people.insert(id, None);
                    }
                    keep
                });
            }
        }
    }

    /// The traces a count found with unreadable parts, and those given up in progress.
    fn count_trace_errors(&mut self, d: &traces::TraceDeltas) {
        // Only what changed is saved: the families are served whole (at 0) whatever is stored.
        for (n, (_, part)) in crate::sync::traces::malformed::KEYS.iter().enumerate() {
            if d.malformed[n] > 0 {
                self.trace_errors[n] += d.malformed[n];
                self.unsaved
                    .series
                    .insert((names::TRACE_ERRORS, key(&[part])));
            }
        }
        if d.given_up > 0 {
            self.traces_given_up += d.given_up;
            self.unsaved
                .series
                .insert((names::TRACES_GIVEN_UP, key(&[])));
        }
    }
}

/// A series key from label values.
pub fn key(values: &[&str]) -> Key {
    values.iter().map(|v| Box::from(*v)).collect()
}

#[cfg(test)]
mod tests;
