//! Pure functions from a [`Snapshot`] and its [`Tally`] to metric families, one module per question
//! family: [`inventory`] (experiments, models, versions, aliases, and their creation counters),
//! [`runs`] (throughput, durations, runs started), [`adoption`] (users, teams, activation, time to
//! value, feature use), [`cost`] (compute time, money, GPU time and utilization), [`quality`] (best
//! model metrics), [`traces`] (GenAI apps), [`corrections`] (what the counters hold that MLflow no
//! longer shows), [`delivery`] (DORA, from the delivery history), [`probes`] (from the probes'
//! records). Gauges follow the snapshot; counters are read from the tally, which counted each thing
//! once. The exporter's own metrics are [`crate::telemetry`]'s; [`crate::exposition`] encodes.

pub mod adoption;
pub mod corrections;
pub mod cost;
pub mod delivery;
pub mod family;
pub mod inventory;
pub mod labels;
pub mod probes;
pub mod quality;
pub mod runs;
pub mod traces;
pub mod workspace;

use std::sync::Arc;
use std::time::Duration;

use family::TextFamily;

use crate::config::{DeliverySettings, MetricsSettings, Settings};
use crate::delivery::Delivery;
use crate::sync::snapshot::{RunKey, Snapshot};
use crate::sync::Card;
use crate::tally::Tally;
use family::Spec;

/// Everything the derivation needs besides the snapshot: settings, compiled once.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub settings: MetricsSettings,
    /// The feature table the sync judged runs by: the registry's and the traces' bits are added
    /// here, where the registry and the traces are known.
    pub card: Arc<Card>,
    /// `run_duration_buckets` in ms.
    pub bounds_ms: Vec<u64>,
    /// Windows in ms with their label values (`1d`, `7d`, …).
    pub windows: Vec<(i64, String)>,
    pub currency: String,
    /// `time_to_first_model_buckets` in ms.
    pub ttfm_bounds_ms: Vec<u64>,
    pub delivery: DeliverySettings,
}

impl Derivation {
    /// A derivation with a card of its own (tests and tools; the pipeline shares the sync's).
    pub fn new(s: &Settings) -> Derivation {
        Derivation::with_card(s, Card::new(s))
    }

    pub fn with_card(s: &Settings, card: Arc<Card>) -> Derivation {
        let m = &s.metrics;
        Derivation {
            bounds_ms: crate::histogram::bounds_ms(&m.run_duration_buckets),
            windows: m
                .user_windows
                .iter()
                .map(|w| (w.as_millis() as i64, window_label(*w)))
                .collect(),
            settings: m.clone(),
            card,
            currency: s.cost.currency.clone(),
            ttfm_bounds_ms: crate::histogram::bounds_ms(&m.time_to_first_model_buckets),
            delivery: s.delivery.clone(),
        }
    }

    pub fn extra_label_names(&self) -> Vec<String> {
        self.settings
            .extra_labels
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }
}

/// `86400s` → `1d`, `7200s` → `2h`: the shortest exact form, as PromQL writes durations.
pub fn window_label(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Every family derived from one snapshot, its tally and the delivery history, at reference time
/// `now_ms`: the gauges of the snapshot, then the counters of the tally.
pub fn derive(
    snap: &Snapshot,
    tally: &Tally,
    delivery: &Delivery,
    d: &Derivation,
    now_ms: i64,
) -> Vec<TextFamily> {
    let folds = tally.labels.folds(snap);
    let traced = tally.traced_runs();
    let mut out = gauges(snap, &folds, delivery, d, &traced, now_ms);
    out.extend(counters(tally, d, now_ms));
    out
}

/// The families that follow MLflow's current state: what exists, runs by status, users and teams
/// per window, model quality, what deployed versions logged, and the folded label values.
pub fn gauges(
    snap: &Snapshot,
    folds: &Folds,
    delivery: &Delivery,
    d: &Derivation,
    traced: &hashbrown::HashSet<RunKey>,
    now_ms: i64,
) -> Vec<TextFamily> {
    // Two halves of about the same cost, one on another core: the users and teams of each window
    // against the rest, each a pass over the runs.
    let (mut out, adoption) = in_parallel(
        || {
            let mut first = inventory::gauges(snap, folds);
            first.push(runs::gauges(snap, folds));
            first.extend(quality::families(snap, d, folds));
            first
        },
        || adoption::families(snap, d, traced, now_ms),
    );
    out.extend(adoption);
    out.extend(delivery::families(snap, folds, delivery, d));
    out.push(labels::folded_family(folds.folded()).finish());
    out
}

/// Families of what only MLflow 3 has: not published for an MLflow 2.
pub const MLFLOW3_ONLY: &[&str] = &[
    inventory::LOGGED_MODELS.name,
    inventory::LOGGED_MODELS_CREATED.name,
    inventory::TIME_TO_REGISTRATION.name,
    inventory::PROMPTS.name,
    inventory::PROMPT_VERSIONS.name,
    inventory::PROMPTS_CREATED.name,
    inventory::PROMPT_VERSIONS_CREATED.name,
    traces::TRACES.name,
    traces::DURATION.name,
    traces::TOKENS.name,
    traces::COST.name,
    traces::ERRORS.name,
    traces::GIVEN_UP.name,
    traces::LATENCY_BUDGET.name,
    traces::APP_USERS.name,
    traces::APP_SESSIONS.name,
    traces::FEEDBACK.name,
    traces::FEEDBACK_SCORE.name,
    traces::JUDGE_COST.name,
    traces::LLM_CALLS.name,
    traces::LLM_COST.name,
    traces::LOGGED_MODEL_TRACES.name,
    traces::RATED_TOKENS.name,
    traces::RATED_COST.name,
];

/// How many families [`counters`] returns.
pub const COUNTER_FAMILIES: usize = 35;

/// The counters (and histograms) of the tally: everything counted once, from MLflow's history;
/// and the GenAI apps' active users and sessions at `now_ms`, which the tally keeps.
pub fn counters(tally: &Tally, d: &Derivation, now_ms: i64) -> Vec<TextFamily> {
    // The runs' and the cost's series are about as many (a key each per experiment, team or
    // instance type): each half on its own core, as the gauges are.
    let (mut out, cost) = in_parallel(|| runs::counters(tally, d), || cost::counters(tally, d));
    out.extend(cost);
    out.extend(inventory::counters(tally));
    out.extend(traces::counters(tally, d, now_ms));
    out.push(adoption::time_to_first_model(tally, d));
    out.push(corrections::family(tally));
    out
}

/// Runs `a` here and `b` on another thread at the same time; a panic in either is raised here.
pub(crate) fn in_parallel<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|s| {
        let other = s.spawn(b);
        let a = a();
        let b = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

/// Where to cut items of these weights into two halves of about the same weight: the first half
/// is `..at`.
pub(crate) fn halfway(weights: impl Iterator<Item = usize> + Clone) -> usize {
    let total: usize = weights.clone().sum();
    let mut acc = 0;
    let mut count = 0;
    for w in weights {
        acc += w;
        count += 1;
        if acc * 2 >= total {
            return count;
        }
    }
    count
}

/// Every family's spec, for the collector's descriptors and the documentation.
pub fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    v.extend_from_slice(inventory::SPECS);
    v.extend_from_slice(runs::SPECS);
    v.extend_from_slice(adoption::SPECS);
    v.extend_from_slice(cost::SPECS);
    v.extend_from_slice(quality::SPECS);
    v.extend_from_slice(delivery::SPECS);
    v.extend_from_slice(traces::SPECS);
    v.push(labels::FOLDED);
    v.push(corrections::CORRECTIONS);
    v
}

pub use crate::tally::labels::{team_of, Fold, Folds};

#[cfg(test)]
mod tests;
