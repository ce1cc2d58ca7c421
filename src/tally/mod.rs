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

pub mod labels;
pub mod traces;

use std::collections::BTreeMap;

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::{HashMap, HashSet};

use crate::config::Settings;
use crate::histogram::{bounds_ms, FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::{RunKey, RunRecord, RunStatus, Snapshot, Sym, NO_TIME};
use crate::sync::RateCard;
use labels::{Folds, StickyLabels, OTHER};

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
    pub rates: RateCard,
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
    /// `cost.token_rates`: by model, input and output price per million tokens.
    pub token_rates: HashMap<Box<str>, (f64, f64)>,
    /// The longest of `metrics.user_windows`: an app's user or session last active before it is
    /// forgotten.
    pub max_window_ms: i64,
    /// How many windows (`metrics.user_windows`) the apps' users and sessions are counted in.
    pub windows: usize,
}

impl TallySettings {
    pub fn new(s: &Settings) -> TallySettings {
        let m = &s.metrics;
        TallySettings {
            max_series: m.max_series,
            extra: m.extra_labels.len(),
            rates: RateCard::new(&s.cost),
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
            token_rates: s
                .cost
                .token_rates
                .iter()
                .map(|r| (r.model.as_str().into(), (r.input, r.output)))
                .collect(),
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

/// Samples a histogram of these bounds writes: a bucket each, `+Inf`, `_sum` and `_count`.
pub fn histogram_lines(bounds: &[f64]) -> usize {
    bounds.len() + usize::from(bounds.last().is_none_or(|b| b.is_finite())) + 2
}

/// The runs that ended, by experiment and extra labels: per ended status (in
/// [`RunStatus::ENDED`] order) how many, and their durations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ended {
    pub count: [u64; 3],
    pub durations: [HistogramAcc; 3],
}

/// Compute, money and GPU time of one experiment, team and instance type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostSeries {
    pub ms: u64,
    pub gpu_ms: u64,
    /// Milliseconds by hourly rate (the rate's value, so that a changed rate card prices only
    /// what is counted after the change), sorted by rate.
    pub by_rate: Vec<(f64, u64)>,
    pub idle_cost: f64,
}

impl CostSeries {
    fn add(&mut self, other: &CostSeries) {
        self.ms += other.ms;
        self.gpu_ms += other.gpu_ms;
        self.idle_cost += other.idle_cost;
        for (rate, ms) in &other.by_rate {
            self.add_rate(*rate, *ms);
        }
    }

    fn add_rate(&mut self, rate: f64, ms: u64) {
        match self.by_rate.binary_search_by(|(r, _)| r.total_cmp(&rate)) {
            Ok(i) => self.by_rate[i].1 += ms,
            Err(i) => self.by_rate.insert(i, (rate, ms)),
        }
    }

    /// The money: each rate's milliseconds priced, summed in rate order.
    pub fn money(&self) -> f64 {
        self.by_rate
            .iter()
            .map(|(rate, ms)| *ms as f64 * rate / 3_600_000.0)
            .sum()
    }
}

/// One family's series: label values → what was counted.
pub type Series<V> = BTreeMap<Key, V>;

/// What one run counted, as the store keeps it: enough to count corrections if the run is gone
/// while the exporter is not running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredRun {
    pub counted_ms: u64,
    /// Compute time already counted as a correction (an end moved earlier).
    pub corrected_ms: u64,
    pub flags: u8,
    pub hourly_rate: f64,
    pub gpus: u32,
    pub idle_cost: f64,
    pub gone: bool,
}

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
    pub fn new(settings: &Settings) -> Tally {
        let extra = settings
            .metrics
            .extra_labels
            .iter()
            .map(|l| l.name.clone())
            .collect();
        Tally {
            settings: TallySettings::new(settings),
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

    /// Takes a run's counted state read back from the store.
    pub fn restore_run(&mut self, key: RunKey, run: StoredRun) {
        if run.gone {
            self.gone.insert(key, run);
        } else {
            self.pending.insert(key, run);
        }
    }

    /// Takes an object counted before (read back from the store).
    pub fn restore_object(&mut self, kind: &str, name: &str, gone: bool) {
        let Some(kind) = [
            kinds::EXPERIMENT,
            kinds::MODEL,
            kinds::VERSION,
            kinds::ACTIVATED,
            kinds::LOGGED_MODEL,
            kinds::REGISTERED_LOGGED_MODEL,
            kinds::PROMPT,
            kinds::PROMPT_VERSION,
            kinds::TRACED_RUN,
        ]
        .into_iter()
        .find(|k| *k == kind) else {
            return;
        };
        self.objects
            .entry(kind)
            .or_default()
            .insert(name.into(), gone);
    }

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
                &self.settings.token_rates,
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

    /// The per-run pass: what each run adds since it was last counted. Returns the stored runs it
    /// claimed.
    fn count_runs(
        &mut self,
        snap: &mut Snapshot,
        pending: &HashMap<RunKey, StoredRun>,
        now_ms: i64,
        d: &mut Deltas,
        report: &mut CountReport,
    ) -> HashSet<RunKey> {
        use bits::*;
        let rates = &self.settings.rates;
        let bounds = &self.settings.run_bounds_ms;
        let gpu_bounds = &self.settings.gpu_bounds;
        let mut claimed = HashSet::new();
        let mut backdated = Vec::new();
        let experiments = &snap.experiments;
        let team = |r: &RunRecord| {
            r.team
                .or_else(|| experiments.get(&r.experiment).and_then(|e| e.team))
        };
        for (key, r) in snap.runs.iter_mut() {
            if r.counted == 0 {
                if let Some(stored) = pending.get(&key).or_else(|| self.gone.get(&key)) {
                    // Counted before this start-up (or counted, then gone, now back): go on
                    // from what was counted.
                    r.counted = stored.flags;
                    r.counted_ms = stored.counted_ms;
                    claimed.insert(key);
                    self.gone.remove(&key);
                }
            }
            let before = (r.counted, r.counted_ms);
            let mut f = r.counted;
            let combo = r.extra;
            if f & SEEN == 0 {
                f |= SEEN;
                d.ended.entry((r.experiment, combo)).or_default();
            }
            if f & STARTED == 0 && r.start_ms != NO_TIME && r.status != RunStatus::Scheduled {
                f |= STARTED;
                *d.started.entry((r.experiment, team(r))).or_default() += 1;
            }
            let ms = r.compute_ms(now_ms);
            let rate = rates.hourly_rate(r.rate);
            let gpus = u64::from(rates.gpus(r.rate, r.gpus_logged));
            if ms > r.counted_ms {
                let add = ms - r.counted_ms;
                let (n, c) = d
                    .cost
                    .entry((r.experiment, team(r), r.instance_type))
                    .or_default();
                *n += 1;
                c.ms += add;
                c.gpu_ms += add * gpus;
                c.add_rate(rate, add);
                r.counted_ms = ms;
            } else if ms < r.counted_ms && r.status.is_ended() && f & CORRECTED == 0 {
                // Timed while running, then ended with an earlier end (a backdated end).
                f |= CORRECTED;
                backdated.push((r.counted_ms - ms, rate, gpus));
            }
            if r.status.is_ended() && f & ENDED == 0 {
                f |= ENDED;
                let (n, e) = d.ended.entry((r.experiment, combo)).or_default();
                *n += 1;
                let i = ended_index(r.status);
                e.count[i] += 1;
                if let Some(dur) = r.duration_ms() {
                    f |= DURATION;
                    e.durations[i].observe_ms(bounds, dur);
                }
            }
            if r.status.is_ended() && f & UTIL == 0 && !r.gpu_util_pct.is_nan() {
                f |= UTIL;
                let ratio = (r.gpu_util_pct / 100.0).clamp(0.0, 1.0);
                let (n, h) = d.util.entry((r.experiment, team(r))).or_default();
                *n += 1;
                h.observe(gpu_bounds, ratio);
                let (_, c) = d
                    .cost
                    .entry((r.experiment, team(r), r.instance_type))
                    .or_default();
                c.idle_cost += idle_cost(ms, rate, ratio);
            }
            r.counted = f;
            if (r.counted, r.counted_ms) != before {
                report.runs += 1;
                self.unsaved
                    .runs
                    .insert(key, stored(r, now_ms, rates, false));
            }
        }
        for (ms, rate, gpus) in backdated {
            self.correct_compute(ms, rate, gpus);
        }
        claimed
    }

    /// Compute time counted beyond what MLflow now says, priced and times GPUs as counted.
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

    fn correct_compute(&mut self, ms: u64, rate: f64, gpus: u64) {
        self.correct(names::COMPUTE, ms as f64 / 1000.0);
        self.correct(names::GPU, (ms * gpus) as f64 / 1000.0);
        self.correct(names::COST, ms as f64 * rate / 3_600_000.0);
    }

    fn correct(&mut self, family: &'static str, amount: f64) {
        *self.corrections.entry(family).or_default() += amount;
        self.unsaved.series.insert(("corrections", key(&[family])));
    }

    /// A counted run that a full read no longer found: everything it counted is a correction.
    fn correct_gone(&mut self, key: RunKey, r: &RunRecord, now_ms: i64) {
        let run = stored(r, now_ms, &self.settings.rates, true);
        self.correct_stored(key, run);
    }

    fn correct_stored(&mut self, key: RunKey, run: StoredRun) {
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

    /// Names the deltas and the objects seen first, creates the series that fit in `room` and
    /// adds them in. Series that do not exist yet compete for the room by family, in the order of
    /// [`PRIORITY`] (a count of runs per experiment before its histogram, the explosive
    /// combinations of the cost families last), and within a family the most runs first.
    fn apply(
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

    /// Experiments, models and versions seen for the first time, named by team (versions by
    /// model): each counted once. On a full read, those counted that MLflow no longer has are
    /// counted as corrections.
    fn objects_seen(&mut self, snap: &Snapshot, folds: &Folds, full: bool) -> [Named<u64>; 4] {
        let s = &snap.strings;
        let mut exps: Named<u64> = BTreeMap::new();
        let mut present: HashSet<Box<str>> = HashSet::new();
        for (id, e) in &snap.experiments {
            let name = s.get(*id);
            present.insert(name.into());
            if self.first_sight(kinds::EXPERIMENT, name) {
                let team = prompt_team(snap, folds, e.workspace, e.team);
                let slot = exps.entry(key(&[&team])).or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
        }
        if full {
            self.mark_gone(kinds::EXPERIMENT, &present, names::EXPERIMENTS_CREATED);
        }
        let mut models: Named<u64> = BTreeMap::new();
        present.clear();
        for (m, rec) in &snap.models {
            let name = s.get(*m);
            present.insert(name.into());
            if self.first_sight(kinds::MODEL, name) {
                let team = prompt_team(snap, folds, rec.workspace, rec.team);
                let slot = models.entry(key(&[&team])).or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
        }
        if full {
            self.mark_gone(kinds::MODEL, &present, names::MODELS_CREATED);
        }
        let mut versions: Named<u64> = BTreeMap::new();
        present.clear();
        for (m, n) in snap.versions.keys() {
            let name = version_name(s.get(*m), *n);
            if self.first_sight(kinds::VERSION, &name) {
                let slot = versions
                    .entry(key(&[folds.model.label(Some(*m), s)]))
                    .or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
            present.insert(name.into());
        }
        if full {
            self.mark_gone(kinds::VERSION, &present, names::VERSIONS_CREATED);
        }
        let mut logged: Named<u64> = BTreeMap::new();
        present.clear();
        // In id order, so that which fold into the budget's room does not depend on a hash.
        let mut ids: Vec<(&Box<str>, Sym)> = snap
            .logged_models
            .iter()
            .map(|(id, l)| (id, l.experiment))
            .collect();
        ids.sort_unstable();
        for (id, experiment) in ids {
            present.insert(id.clone());
            if self.first_sight(kinds::LOGGED_MODEL, id) {
                let slot = logged
                    .entry(key(&[folds.experiment(snap, experiment)]))
                    .or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
        }
        if full {
            self.mark_gone(kinds::LOGGED_MODEL, &present, names::LOGGED_MODELS_CREATED);
        }
        [exps, models, versions, logged]
    }

    /// Prompts and prompt versions seen for the first time, named by team (in its workspace):
    /// each counted once; on a full read, those counted that MLflow no longer has are corrections.
    fn prompts_seen(&mut self, snap: &Snapshot, folds: &Folds, full: bool) -> [Named<u64>; 2] {
        let s = &snap.strings;
        let team_of = |p: Sym| {
            let rec = snap.prompts.get(&p);
            prompt_team(
                snap,
                folds,
                rec.and_then(|r| r.workspace),
                rec.and_then(|r| r.team),
            )
        };
        let mut prompts: Named<u64> = BTreeMap::new();
        let mut present: HashSet<Box<str>> = HashSet::new();
        for p in snap.prompts.keys() {
            let name = s.get(*p);
            present.insert(name.into());
            if self.first_sight(kinds::PROMPT, name) {
                let slot = prompts.entry(key(&[&team_of(*p)])).or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
        }
        if full {
            self.mark_gone(kinds::PROMPT, &present, names::PROMPTS_CREATED);
        }
        let mut versions: Named<u64> = BTreeMap::new();
        present.clear();
        let mut keys: Vec<(Sym, u32)> = snap.prompt_versions.keys().copied().collect();
        keys.sort_unstable();
        for (p, n) in keys {
            let name = version_name(s.get(p), n);
            if self.first_sight(kinds::PROMPT_VERSION, &name) {
                let slot = versions.entry(key(&[&team_of(p)])).or_default();
                slot.0 += 1;
                slot.1 += 1;
            }
            present.insert(name.into());
        }
        if full {
            self.mark_gone(
                kinds::PROMPT_VERSION,
                &present,
                names::PROMPT_VERSIONS_CREATED,
            );
        }
        [prompts, versions]
    }

    /// Logged models first seen registered: each observed once in the time-to-registration
    /// histogram (its creation to the first model version registered from it).
    fn count_registrations(&mut self, snap: &Snapshot) {
        let mut first: HashMap<&str, i64> = HashMap::new();
        for v in snap.versions.values() {
            if let (Some(id), true) = (&v.logged_model, v.created_ms != NO_TIME) {
                let t = first.entry(id).or_insert(v.created_ms);
                *t = (*t).min(v.created_ms);
            }
        }
        let registered = self
            .objects
            .entry(kinds::REGISTERED_LOGGED_MODEL)
            .or_default();
        let mut seen: Vec<(&str, i64)> = first
            .into_iter()
            .filter(|(id, _)| !registered.contains_key(*id))
            .filter_map(|(id, at)| {
                let created = snap.logged_models.get(id)?.created_ms;
                (created != NO_TIME).then(|| (id, at.saturating_sub(created).max(0)))
            })
            .collect();
        if seen.is_empty() {
            return;
        }
        seen.sort_unstable();
        for (id, ms) in seen {
            registered.insert(id.into(), false);
            self.unsaved
                .objects
                .push((kinds::REGISTERED_LOGGED_MODEL, id.into(), false));
            self.time_to_registration
                .observe_ms(&self.settings.reg_bounds_ms, ms as u64);
        }
        self.unsaved
            .series
            .insert((names::TIME_TO_REGISTRATION, key(&[])));
    }

    /// The runs traces were made in, by key.
    pub fn traced_runs(&self) -> HashSet<RunKey> {
        self.objects
            .get(kinds::TRACED_RUN)
            .map(|runs| {
                runs.keys()
                    .map(|id| crate::sync::snapshot::run_key(id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True the first time an object is seen (recorded then), false for one counted before.
    fn first_sight(&mut self, kind: &'static str, name: &str) -> bool {
        let objects = self.objects.entry(kind).or_default();
        if objects.contains_key(name) {
            return false;
        }
        objects.insert(name.into(), false);
        self.unsaved.objects.push((kind, name.into(), false));
        true
    }

    /// Objects of `kind` counted and not `present`: counted as a correction of `family`, once.
    fn mark_gone(&mut self, kind: &'static str, present: &HashSet<Box<str>>, family: &'static str) {
        let objects = self.objects.entry(kind).or_default();
        let mut n = 0;
        for (name, gone) in objects.iter_mut() {
            if !*gone && !present.contains(name) {
                *gone = true;
                n += 1;
                self.unsaved.objects.push((kind, name.clone(), true));
            }
        }
        if n > 0 {
            self.correct(family, f64::from(n));
        }
    }

    /// Users who reached their first model version: each observed once in the time-to-value
    /// histogram (their first run's start to the first version made from a run of theirs).
    fn count_activations(&mut self, snap: &Snapshot) {
        let mut first_model = first_models(snap);
        let activated = self.objects.entry(kinds::ACTIVATED).or_default();
        first_model.retain(|u, _| !activated.contains_key(snap.strings.get(*u)));
        if first_model.is_empty() {
            return;
        }
        let mut first_run: HashMap<Sym, i64> = HashMap::new();
        for r in snap.runs.values() {
            if let Some(u) = r.user.filter(|u| first_model.contains_key(u)) {
                if r.start_ms != NO_TIME {
                    let t = first_run.entry(u).or_insert(r.start_ms);
                    *t = (*t).min(r.start_ms);
                }
            }
        }
        let mut users: Vec<(&str, i64, i64)> = first_model
            .iter()
            .filter_map(|(u, created)| {
                first_run
                    .get(u)
                    .map(|start| (snap.strings.get(*u), *start, *created))
            })
            .collect();
        users.sort_unstable();
        for (user, start, created) in users {
            activated.insert(user.into(), false);
            self.unsaved
                .objects
                .push((kinds::ACTIVATED, user.into(), false));
            self.time_to_first_model.observe_ms(
                &self.settings.ttfm_bounds_ms,
                created.saturating_sub(start).max(0) as u64,
            );
        }
        self.unsaved
            .series
            .insert((names::TIME_TO_FIRST_MODEL, key(&[])));
    }
}

/// Activation: when each user's first model version was created (the earliest version made from a
/// run of theirs), by user.
pub fn first_models(snap: &Snapshot) -> HashMap<Sym, i64> {
    let mut first: HashMap<Sym, i64> = HashMap::new();
    for (run, created) in registrations(snap) {
        if let Some(user) = run.user {
            let t = first.entry(user).or_insert(created);
            *t = (*t).min(created);
        }
    }
    first
}

/// Model versions made from a run the snapshot holds, with a time of creation: (the run, when).
pub fn registrations(snap: &Snapshot) -> impl Iterator<Item = (&RunRecord, i64)> {
    snap.versions.values().filter_map(|v| {
        let run = snap.runs.get(&v.run?)?;
        (v.created_ms != NO_TIME).then_some((run, v.created_ms))
    })
}

/// Admits deltas into one family's series within the room left.
struct Budget<'a> {
    room: &'a mut usize,
    report: &'a mut CountReport,
    unsaved: &'a mut Unsaved,
}

impl Budget<'_> {
    /// Adds each delta to its series. A key without a series gets one when `admit` holds it (the
    /// room was taken for it already); else it is folded, its last label first, into a series
    /// that exists or fits, and at worst into the one of `__other__` alone, which is always made.
    #[allow(clippy::too_many_arguments)]
    fn merge<V: Default>(
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
fn new_keys<'a, V, W>(
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
fn other_missing<V>(series: &Series<V>, arity: usize) -> bool {
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

/// Samples one feedback series writes: a count per value, and the scores' histogram.
pub fn feedback_lines(score_bounds: &[f64]) -> usize {
    crate::sync::traces::FeedbackValue::LABELS.len() + histogram_lines(score_bounds)
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

/// Index of an ended status in [`RunStatus::ENDED`].
pub fn ended_index(s: RunStatus) -> usize {
    RunStatus::ENDED.iter().position(|x| *x == s).unwrap_or(0)
}

/// The money spent on idle GPUs by a run: its cost times the unused share.
fn idle_cost(ms: u64, hourly_rate: f64, ratio: f64) -> f64 {
    ms as f64 * hourly_rate / 3_600_000.0 * (1.0 - ratio)
}

/// A run's counted state as the store keeps it.
fn stored(r: &RunRecord, now_ms: i64, rates: &RateCard, gone: bool) -> StoredRun {
    let ms = r.compute_ms(now_ms);
    let rate = rates.hourly_rate(r.rate);
    let util = r.counted & bits::UTIL != 0;
    StoredRun {
        counted_ms: r.counted_ms,
        corrected_ms: if r.counted & bits::CORRECTED != 0 {
            r.counted_ms.saturating_sub(ms)
        } else {
            0
        },
        flags: r.counted,
        hourly_rate: rate,
        gpus: rates.gpus(r.rate, r.gpus_logged),
        idle_cost: if util {
            idle_cost(ms, rate, (r.gpu_util_pct / 100.0).clamp(0.0, 1.0))
        } else {
            0.0
        },
        gone,
    }
}

/// A series key from label values.
pub fn key(values: &[&str]) -> Key {
    values.iter().map(|v| Box::from(*v)).collect()
}

/// The `team` label of a series by the team of an object of a workspace (an experiment, a model,
/// a prompt): its team tag (folded), `workspace/team` on a server with workspaces (published as a
/// workspace label of its own, see `metrics::workspace`).
pub fn prompt_team(
    snap: &Snapshot,
    folds: &Folds,
    workspace: Option<Sym>,
    team: Option<Sym>,
) -> String {
    let s = &snap.strings;
    let team = folds.team.label(team, s);
    match workspace {
        Some(w) => format!("{}/{team}", s.get(w)),
        None => team.to_string(),
    }
}

/// How the store names a model version: `model␟version`.
pub fn version_name(model: &str, version: u32) -> String {
    format!("{model}\u{1f}{version}")
}

#[cfg(test)]
mod tests;
