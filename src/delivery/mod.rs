//! Delivery (DORA for models): registry changes as events, detected by comparing each snapshot's
//! serving aliases and `Production` stage with what is known to be served, and incidents opened and
//! resolved by Alertmanager or CI/CD; all folded into the figures: deployments, rollbacks, lead time
//! and its parts, incidents and time to restore.
//!
//! The fold is pure: events come in, state and aggregates come out ([`recorder`] commits events
//! before they are folded). The event store keeps the events; on start-up they are folded again in
//! order, so counters continue across restarts.
//!
//! Labels: counters and gauges are per model and alias; the histograms per team (the model's team
//! tag) and model, where only the models of `delivery.detailed_models` and the first
//! `delivery.max_detailed_models` seen serving are shown apart and the rest are `__other__`, so that
//! a registry of hundreds of models stays within the series budget.
//!
//! Here: the history's state and what it knows a target serves. The events are in `event.rs`,
//! their detection from a snapshot in `detect.rs`, the fold in `fold.rs`, the figures it makes in
//! `figures.rs`, and the checkpoint the store keeps of a folded prefix in `checkpoint.rs`.

pub mod recorder;

mod checkpoint;
mod detect;
mod event;
mod figures;
mod fold;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::histogram::HistogramAcc;
pub use event::{model_key, Event, Kind, Source, Subject, VersionTimes};
pub use figures::{Bounds, Histograms, IncidentFigures, Labelling, TargetFigures};

/// The legacy stage that counts as serving; it is tracked like an alias of this name.
pub const PRODUCTION: &str = "Production";

/// The `model` label of models the histograms do not show apart.
pub const OTHER: &str = crate::tally::labels::OTHER;

/// What one target (a model's alias, or its `Production` stage) serves, and has served.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Target {
    current: Option<u32>,
    /// What the last deployment replaced (nothing when the alias was re-created).
    replaced: Option<u32>,
    /// When the current version was deployed (or first seen).
    since_ms: i64,
    served: BTreeSet<u32>,
    /// Sequence number of the last change applied; the next event gets the one after.
    changes: u64,
}

/// The folded history.
#[derive(Debug, Clone)]
pub struct Delivery {
    bounds: Bounds,
    pub labelling: Labelling,
    targets: HashMap<(String, String), Target>,
    pub figures: HashMap<(String, String), TargetFigures>,
    /// By team and model (a detailed one, or `__other__`).
    pub histograms: BTreeMap<(String, String), Histograms>,
    /// By model and severity.
    pub incidents: HashMap<(String, String), IncidentFigures>,
    /// Time to restore by incident: by team, model (detailed, or `__other__`) and severity.
    pub incident_recovery: BTreeMap<(String, String, String), HistogramAcc>,
    /// Open incidents: id → (model, severity, opened at).
    open_incidents: HashMap<String, (String, String, i64)>,
    /// Each model's team, as its last change with one said.
    teams: HashMap<String, String>,
    /// Models the histograms show apart.
    detailed: BTreeSet<String>,
    /// Events folded in so far (of prompts too).
    pub events: u64,
    /// What this history's targets are: models, or (in the history of the prompts) prompts.
    subject: Subject,
    /// The history of the prompts' alias moves: folded alike, apart from the models'.
    prompts: Option<Box<Delivery>>,
}

impl Delivery {
    pub fn new(bounds: Bounds) -> Delivery {
        Delivery::with_labelling(bounds, Labelling::default())
    }

    pub fn with_labelling(bounds: Bounds, labelling: Labelling) -> Delivery {
        let prompts = Delivery::bare(bounds.clone(), labelling.clone(), Subject::Prompt);
        Delivery {
            prompts: Some(Box::new(prompts)),
            ..Delivery::bare(bounds, labelling, Subject::Model)
        }
    }

    fn bare(bounds: Bounds, labelling: Labelling, subject: Subject) -> Delivery {
        Delivery {
            subject,
            prompts: None,
            bounds,
            detailed: labelling.detailed_models.iter().cloned().collect(),
            labelling,
            targets: HashMap::new(),
            figures: HashMap::new(),
            histograms: BTreeMap::new(),
            incidents: HashMap::new(),
            incident_recovery: BTreeMap::new(),
            open_incidents: HashMap::new(),
            teams: HashMap::new(),
            events: 0,
        }
    }

    /// An empty history with the same buckets and labelling.
    pub fn empty(&self) -> Delivery {
        Delivery::with_labelling(self.bounds.clone(), self.labelling.clone())
    }

    /// The history of the prompts' alias moves (in that history, itself). Its `change` and
    /// `deletion` make prompts' events, which [`Delivery::apply`] folds there.
    pub fn prompts(&self) -> &Delivery {
        self.prompts.as_deref().unwrap_or(self)
    }

    /// A model's team, as the history knows it (empty when none).
    pub fn team(&self, model: &str) -> &str {
        self.teams.get(model).map_or("", String::as_str)
    }

    /// The `model` label of the histograms: the model, if shown apart, else `__other__`.
    pub fn histogram_model<'a>(&self, model: &'a str) -> &'a str {
        if self.detailed.contains(model) {
            model
        } else {
            OTHER
        }
    }

    /// The key of the histograms a model's changes go to.
    fn histogram_key(&self, model: &str) -> (String, String) {
        (
            self.team(model).to_string(),
            self.histogram_model(model).to_string(),
        )
    }

    /// Whether an incident is open now.
    pub fn is_open(&self, id: &str) -> bool {
        self.open_incidents.contains_key(id)
    }

    /// Every target (model, alias or `Production`) the history has seen.
    pub fn targets(&self) -> impl Iterator<Item = &(String, String)> {
        self.targets.keys()
    }

    /// What a target serves now, as far as the history knows.
    pub fn serving(&self, model: &str, target: &str) -> Option<u32> {
        self.targets
            .get(&(model.to_string(), target.to_string()))
            .and_then(|t| t.current)
    }

    /// The version a target's last deployment replaced, as far as the history knows.
    pub fn replaced(&self, model: &str, target: &str) -> Option<u32> {
        self.targets
            .get(&(model.to_string(), target.to_string()))
            .and_then(|t| t.replaced)
    }
}

#[cfg(test)]
mod tests;
