//! GenAI apps (MLflow 3's traces): traces finished by state and their durations, tokens and the
//! cost MLflow recorded, by experiment (an app logs its traces to one); the feedback on them and
//! what LLM judges cost; and the traces the exporter could not read whole, or gave up waiting
//! for. All counted once by the tally.

use super::family::{Family, Spec, TextFamily};
use super::Derivation;
use crate::sync::traces::{malformed, FeedbackValue, TraceState};
use crate::tally::Tally;

pub const TRACES: Spec = Spec::counter(
    "mlflow_traces_total",
    "Traces of GenAI apps that finished, by experiment and state (OK, ERROR); a trace in progress is counted when it ends",
    &["experiment", "state"],
);
pub const DURATION: Spec = Spec::histogram(
    "mlflow_trace_duration_seconds",
    "Execution duration of finished traces, by experiment and state",
    &["experiment", "state"],
);
pub const TOKENS: Spec = Spec::counter(
    "mlflow_trace_tokens_total",
    "Tokens of finished traces (mlflow.trace.tokenUsage), by experiment and token_type (input, output)",
    &["experiment", "token_type"],
);
pub const COST: Spec = Spec::counter(
    "mlflow_trace_cost_total",
    "What MLflow recorded finished traces cost (mlflow.trace.cost, total_cost; MLflow prices models in US dollars), by experiment",
    &["experiment"],
);
const FEEDBACK_LABELS: &[&str] = &["experiment", "name", "source_type"];
pub const FEEDBACK: Spec = Spec::counter(
    "mlflow_trace_feedback_total",
    "Feedback on traces (MLflow assessments, overridden ones left out), by experiment, name, source_type (HUMAN, CODE, LLM_JUDGE, UNSPECIFIED) and value (true and false: a boolean or a judge's yes/no; numeric; text; error: the judge gave none)",
    &["experiment", "name", "source_type", "value"],
);
pub const FEEDBACK_SCORE: Spec = Spec::histogram(
    "mlflow_trace_feedback_score",
    "Numeric feedback on traces, by experiment, name and source_type",
    FEEDBACK_LABELS,
);
pub const JUDGE_COST: Spec = Spec::counter(
    "mlflow_trace_judge_cost_total",
    "What LLM judges' calls for feedback on traces cost (mlflow.assessment.judgeCost; MLflow prices models in US dollars), by experiment",
    &["experiment"],
);
const LLM_LABELS: &[&str] = &["experiment", "llm_model"];
pub const LLM_CALLS: Spec = Spec::counter(
    "mlflow_trace_llm_calls_total",
    "LLM calls of GenAI apps' traces (spans naming a model, as MLflow aggregates them), by experiment and llm_model (the model a span names: a provider's, or one served in-house); a window of traces is counted once, mlflow.traces_overlap after it ends",
    LLM_LABELS,
);
pub const LLM_COST: Spec = Spec::counter(
    "mlflow_trace_llm_cost_total",
    "What MLflow priced those LLM calls at (the spans' total_cost, US dollars; 0 for a model MLflow has no price for), by experiment and llm_model",
    LLM_LABELS,
);
pub const RATED_TOKENS: Spec = Spec::counter(
    "mlflow_trace_rated_tokens_total",
    "Tokens of the LLM calls MLflow did not price and cost.token_rates does, by experiment, llm_model and token_type (input, output); counted from when the rate card is set",
    &["experiment", "llm_model", "token_type"],
);
pub const RATED_COST: Spec = Spec::counter(
    "mlflow_trace_rated_cost_total",
    "What cost.token_rates prices those calls at (in cost.currency), by experiment and llm_model: the spend of models MLflow has no price for",
    LLM_LABELS,
);
pub const LOGGED_MODEL_TRACES: Spec = Spec::counter(
    "mlflow_logged_model_traces_total",
    "Finished traces naming a logged model (mlflow.modelId), by experiment, the logged model's name, traffic (evaluation: made in a run, mlflow.sourceRun; production: not) and state",
    &["experiment", "logged_model", "traffic", "state"],
);
pub const ERRORS: Spec = Spec::counter(
    "mlflow_exporter_trace_errors_total",
    "Traces and feedback counted with a part that could not be read (malformed metadata, a time or state MLflow does not write, an assessment without an id or name), by the part; that part is left out",
    &["part"],
);
pub const GIVEN_UP: Spec = Spec::counter(
    "mlflow_exporter_traces_given_up_total",
    "Traces still in progress past mlflow.traces_max_in_progress: no longer waited for, never counted",
    &[],
);
pub const LATENCY_BUDGET: Spec = Spec::gauge(
    "mlflow_trace_latency_budget_seconds",
    "The p99 trace duration GenAI apps should stay within (metrics.trace_latency_budget), for MLflowGenAILatencyHigh",
    &[],
);
const PEOPLE: &[&str] = &["experiment", "window"];
pub const APP_USERS: Spec = Spec::gauge(
    "mlflow_app_active_users",
    "End users of a GenAI app (mlflow.trace.user of its traces; the app's users, not the platform's) with a finished trace that started within the window, by experiment",
    PEOPLE,
);
pub const APP_SESSIONS: Spec = Spec::gauge(
    "mlflow_app_active_sessions",
    "Sessions of a GenAI app (mlflow.trace.session of its traces) with a finished trace that started within the window, by experiment",
    PEOPLE,
);
pub const SPECS: &[Spec] = &[
    APP_USERS,
    APP_SESSIONS,
    TRACES,
    DURATION,
    TOKENS,
    COST,
    FEEDBACK,
    FEEDBACK_SCORE,
    JUDGE_COST,
    LLM_CALLS,
    LLM_COST,
    RATED_TOKENS,
    RATED_COST,
    LOGGED_MODEL_TRACES,
    ERRORS,
    GIVEN_UP,
    LATENCY_BUDGET,
];

/// The traces' families, from the tally, at reference time `now_ms` (of the active users and
/// sessions).
pub fn counters(tally: &Tally, d: &Derivation, now_ms: i64) -> Vec<TextFamily> {
    // Every app with traces has its users and sessions at each window, 0 included.
    let mut users = Family::new(&APP_USERS);
    let mut sessions = Family::new(&APP_SESSIONS);
    let none = Default::default();
    for key in tally.traces.keys() {
        let people: &[hashbrown::HashMap<u64, i64>; 2] = tally.app_people.get(key).unwrap_or(&none);
        for (window_ms, label) in &d.windows {
            let since = now_ms.saturating_sub(*window_ms);
            for (family, seen) in [(&mut users, &people[0]), (&mut sessions, &people[1])] {
                let n = seen.values().filter(|last| **last >= since).count();
                family.add(&[&key[0], label], n as f64);
            }
        }
    }
    let mut traces = Family::new(&TRACES);
    for (key, counts) in &tally.traces {
        for st in TraceState::FINISHED {
            traces.add(&[&key[0], st.as_str()], counts[st.index()] as f64);
        }
    }
    let mut duration = Family::new(&DURATION);
    let bounds = &d.settings.trace_duration_buckets;
    for (key, hists) in &tally.trace_durations {
        for st in TraceState::FINISHED {
            let h = &hists[st.index()];
            duration.add_histogram(
                &[&key[0], st.as_str()],
                bounds,
                &h.counts,
                h.sum_ms as f64 / 1000.0,
            );
        }
    }
    let mut tokens = Family::new(&TOKENS);
    for (key, n) in &tally.trace_tokens {
        tokens.add(&[&key[0], "input"], n[0] as f64);
        tokens.add(&[&key[0], "output"], n[1] as f64);
    }
    let mut cost = Family::new(&COST);
    for (key, v) in &tally.trace_cost {
        cost.add(&[&key[0]], *v);
    }
    let mut feedback = Family::new(&FEEDBACK);
    let mut scores = Family::new(&FEEDBACK_SCORE);
    let score_bounds = &d.settings.feedback_score_buckets;
    for (key, f) in &tally.trace_feedback {
        let labels = [&*key[0], &*key[1], &*key[2]];
        for (value, n) in FeedbackValue::LABELS.iter().zip(f.values) {
            feedback.add(&[labels[0], labels[1], labels[2], value], n as f64);
        }
        scores.add_histogram(&labels, score_bounds, &f.scores.counts, f.scores.sum);
    }
    let mut judge = Family::new(&JUDGE_COST);
    for (key, v) in &tally.judge_cost {
        judge.add(&[&key[0]], *v);
    }
    let mut calls = Family::new(&LLM_CALLS);
    let mut llm_cost = Family::new(&LLM_COST);
    for (key, (n, v)) in &tally.llm_calls {
        calls.add(&[&key[0], &key[1]], *n as f64);
        llm_cost.add(&[&key[0], &key[1]], *v);
    }
    let mut rated_tokens = Family::new(&RATED_TOKENS);
    let mut rated_cost = Family::new(&RATED_COST);
    for (key, (n, v)) in &tally.rated {
        rated_tokens.add(&[&key[0], &key[1], "input"], n[0] as f64);
        rated_tokens.add(&[&key[0], &key[1], "output"], n[1] as f64);
        rated_cost.add(&[&key[0], &key[1]], *v);
    }
    let mut linked = Family::new(&LOGGED_MODEL_TRACES);
    for (key, counts) in &tally.logged_model_traces {
        for st in TraceState::FINISHED {
            linked.add(
                &[&key[0], &key[1], &key[2], st.as_str()],
                counts[st.index()] as f64,
            );
        }
    }
    let mut errors = Family::new(&ERRORS);
    for ((_, part), n) in malformed::KEYS.iter().zip(&tally.trace_errors) {
        errors.add(&[part], *n as f64);
    }
    let mut given_up = Family::new(&GIVEN_UP);
    given_up.add(&[], tally.traces_given_up as f64);
    let mut budget = Family::new(&LATENCY_BUDGET);
    budget.add(&[], d.settings.trace_latency_budget.as_secs_f64());
    vec![
        users.finish(),
        sessions.finish(),
        traces.finish(),
        duration.finish(),
        tokens.finish(),
        cost.finish(),
        feedback.finish(),
        scores.finish(),
        judge.finish(),
        calls.finish(),
        llm_cost.finish(),
        rated_tokens.finish(),
        rated_cost.finish(),
        linked.finish(),
        errors.finish(),
        given_up.finish(),
        budget.finish(),
    ]
}
