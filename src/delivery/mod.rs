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

pub mod recorder;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::{DeliverySettings, WebhookSettings};
use crate::histogram::{bounds_ms, HistogramAcc};
use crate::sync::snapshot::{Snapshot, Sym, VersionRecord, NO_TIME};

/// The legacy stage that counts as serving; it is tracked like an alias of this name.
pub const PRODUCTION: &str = "Production";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// First sight of what an alias serves at start-up: known, not a deployment.
    Baseline,
    Deployment,
    AliasDeleted,
    IncidentOpened,
    IncidentResolved,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Deployment => "deployment",
            Kind::AliasDeleted => "alias_deleted",
            Kind::IncidentOpened => "incident_opened",
            Kind::IncidentResolved => "incident_resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Baseline,
            Kind::Deployment,
            Kind::AliasDeleted,
            Kind::IncidentOpened,
            Kind::IncidentResolved,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Seen by comparing two syncs: the time is the detection time, at most one interval late.
    Poll,
    /// MLflow's webhook: alias moves at the time MLflow made them.
    MlflowWebhook,
    /// Alertmanager's webhook: incidents.
    Alertmanager,
    /// `POST /api/v1/events` from CI/CD.
    Api,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Poll,
        Source::MlflowWebhook,
        Source::Alertmanager,
        Source::Api,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Poll => "poll",
            Source::MlflowWebhook => "mlflow_webhook",
            Source::Alertmanager => "alertmanager",
            Source::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What a change is of. Prompts of MLflow 3's prompt registry are registered models underneath,
/// but their alias moves are deployments of prompts: folded apart, never in a model's figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    #[default]
    Model,
    Prompt,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Model => "model",
            Subject::Prompt => "prompt",
        }
    }

    pub fn parse(s: &str) -> Option<Subject> {
        [Subject::Model, Subject::Prompt]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// How the history names a model: by its name, or on a workspace-enabled MLflow by
/// `workspace/name` (names are unique only inside a workspace; the snapshot names them so too),
/// `default` when a source names no workspace.
pub fn model_key(workspaces: bool, workspace: Option<&str>, name: &str) -> String {
    match workspaces {
        true => {
            let ws = workspace.filter(|w| !w.is_empty()).unwrap_or("default");
            format!("{ws}/{name}")
        }
        false => name.to_string(),
    }
}

/// One change of what a model's (or a prompt's) alias, or a model's `Production` stage, serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// `model␟target␟n`: the n-th change of that target (`prompt␟name␟alias␟n` for a prompt's).
    /// Two sources that see the same change compute the same key, so the store keeps it once.
    pub dedup_key: String,
    pub kind: Kind,
    pub source: Source,
    /// A model's change, or a prompt's (then `model` names the prompt); incidents are of models.
    pub subject: Subject,
    pub model: String,
    pub target: String,
    pub version: Option<u32>,
    pub at_ms: i64,
    /// Of the training run behind the version, and of the version itself, when known.
    pub run_start_ms: Option<i64>,
    pub run_end_ms: Option<i64>,
    pub version_created_ms: Option<i64>,
    /// The incident an incident event opens or resolves, and its severity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The model's team tag when the change was seen (the delivery histograms are by team).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

impl Event {
    /// An incident opened or resolved at `at_ms`; `id` names the incident (unique per source).
    pub fn incident(
        kind: Kind,
        source: Source,
        id: &str,
        model: &str,
        severity: &str,
        at_ms: i64,
    ) -> Event {
        let verb = if kind == Kind::IncidentOpened {
            "opened"
        } else {
            "resolved"
        };
        Event {
            dedup_key: format!("incident\u{1f}{}\u{1f}{id}\u{1f}{verb}", source.as_str()),
            kind,
            source,
            subject: Subject::Model,
            model: model.to_string(),
            target: String::new(),
            version: None,
            at_ms,
            run_start_ms: None,
            run_end_ms: None,
            version_created_ms: None,
            incident: Some(format!("{}\u{1f}{id}", source.as_str())),
            severity: Some(severity.to_string()),
            team: None,
        }
    }
}

/// Times of a model version and of the run behind it, for lead time and its parts, and the
/// model's team tag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionTimes {
    pub run_start_ms: Option<i64>,
    pub run_end_ms: Option<i64>,
    pub created_ms: Option<i64>,
    pub team: Option<String>,
}

impl VersionTimes {
    /// The times of one version of `model` in a snapshot.
    pub fn of(snap: &Snapshot, model: Sym, v: &VersionRecord) -> VersionTimes {
        let time = |t: i64| (t != NO_TIME).then_some(t);
        let run = v.run.and_then(|k| snap.runs.get(&k));
        VersionTimes {
            run_start_ms: run.and_then(|r| time(r.start_ms)),
            run_end_ms: run.and_then(|r| time(r.end_ms)),
            created_ms: time(v.created_ms),
            team: snap
                .models
                .get(&model)
                .and_then(|m| m.team)
                .map(|t| snap.strings.get(t).to_string()),
        }
    }

    /// The times of a prompt's version in a snapshot (a prompt has no training run), and the
    /// prompt's team tag.
    pub fn of_prompt(snap: &Snapshot, prompt: &str, number: u32) -> VersionTimes {
        let Some(p) = snap.strings.lookup(prompt) else {
            return VersionTimes::default();
        };
        VersionTimes {
            created_ms: snap
                .prompt_versions
                .get(&(p, number))
                .and_then(|v| (v.created_ms != NO_TIME).then_some(v.created_ms)),
            team: snap
                .prompts
                .get(&p)
                .and_then(|r| r.team)
                .map(|t| snap.strings.get(t).to_string()),
            ..VersionTimes::default()
        }
    }

    /// Every model version's and prompt version's times in a snapshot, by what it is of, its name
    /// and number.
    pub fn index(snap: &Snapshot) -> HashMap<(Subject, String, u32), VersionTimes> {
        let name = |m: Sym| snap.strings.get(m).to_string();
        let models = snap.versions.iter().map(|((m, n), v)| {
            (
                (Subject::Model, name(*m), *n),
                VersionTimes::of(snap, *m, v),
            )
        });
        let prompts = snap.prompt_versions.keys().map(|(p, n)| {
            let times = VersionTimes::of_prompt(snap, snap.strings.get(*p), *n);
            ((Subject::Prompt, name(*p), *n), times)
        });
        models.chain(prompts).collect()
    }
}

/// Incidents of one model and severity.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IncidentFigures {
    pub opened: u64,
    pub open: u64,
}

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

/// Figures of one target.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TargetFigures {
    pub deployments: u64,
    pub rollbacks: u64,
    /// Time of the last deployment; for a target only seen at a baseline, the creation of the
    /// version it served then (it cannot have been deployed before), else the baseline's time.
    pub last_deployed_ms: i64,
    /// Lead time of the last deployment that was not a rollback, when known, or `NO_TIME`.
    pub last_lead_time_ms: i64,
}

impl Default for TargetFigures {
    fn default() -> Self {
        TargetFigures {
            deployments: 0,
            rollbacks: 0,
            last_deployed_ms: NO_TIME,
            last_lead_time_ms: NO_TIME,
        }
    }
}

/// The delivery histograms of one team and model (a detailed model, or `__other__`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Histograms {
    pub lead_time: HistogramAcc,
    pub time_to_register: HistogramAcc,
    pub time_to_deploy: HistogramAcc,
    pub rollback_recovery: HistogramAcc,
}

/// Which models the histograms show apart, and the severities every served model's incident
/// series have from the start.
#[derive(Debug, Clone)]
pub struct Labelling {
    /// Always shown apart (`delivery.detailed_models`).
    pub detailed_models: Vec<String>,
    /// Besides those, the first this many models deployed (`delivery.max_detailed_models`).
    pub max_detailed_models: usize,
    /// `webhooks.severities`.
    pub severities: Vec<String>,
}

impl Default for Labelling {
    fn default() -> Self {
        Labelling::new(&DeliverySettings::default(), &WebhookSettings::default())
    }
}

impl Labelling {
    pub fn new(d: &DeliverySettings, w: &WebhookSettings) -> Labelling {
        Labelling {
            detailed_models: d.detailed_models.clone(),
            max_detailed_models: d.max_detailed_models,
            severities: w.severities.clone(),
        }
    }
}

/// The `model` label of models the histograms do not show apart.
pub const OTHER: &str = crate::tally::labels::OTHER;

/// Bucket bounds in ms of the delivery histograms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bounds {
    pub lead_time: Vec<u64>,
    pub time_to_register: Vec<u64>,
    pub time_to_deploy: Vec<u64>,
    pub recovery: Vec<u64>,
    pub incident_recovery: Vec<u64>,
}

impl Bounds {
    pub fn new(s: &DeliverySettings) -> Bounds {
        Bounds {
            lead_time: bounds_ms(&s.lead_time_buckets),
            time_to_register: bounds_ms(&s.time_to_register_buckets),
            time_to_deploy: bounds_ms(&s.time_to_deploy_buckets),
            recovery: bounds_ms(&s.recovery_buckets),
            incident_recovery: bounds_ms(&s.incident_recovery_buckets),
        }
    }
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

    /// Folds one event in. Events must come in the order they were recorded.
    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        if e.subject != self.subject {
            if let Some(prompts) = self.prompts.as_deref_mut() {
                prompts.apply(e);
            }
            return;
        }
        if matches!(e.kind, Kind::IncidentOpened | Kind::IncidentResolved) {
            self.apply_incident(e);
            return;
        }
        if let Some(team) = &e.team {
            self.teams.insert(e.model.clone(), team.clone());
        }
        if matches!(e.kind, Kind::Baseline | Kind::Deployment)
            && !self.detailed.contains(&e.model)
            && self.detailed.len()
                < self.labelling.max_detailed_models + self.labelling.detailed_models.len()
        {
            // The first models seen serving are shown apart (one of the allow-list already is).
            self.detailed.insert(e.model.clone());
        }
        // Every served model has its histograms from its first sight, zeros included.
        let hkey = self.histogram_key(&e.model);
        self.histograms.entry(hkey.clone()).or_default();
        let key = (e.model.clone(), e.target.clone());
        let t = self.targets.entry(key.clone()).or_default();
        // Number changes past every key stored: after retention deleted a target's oldest events,
        // counting what is left would hand out a key still in the store.
        let stored = e
            .dedup_key
            .rsplit('\u{1f}')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        t.changes = (t.changes + 1).max(stored);
        match e.kind {
            Kind::IncidentOpened | Kind::IncidentResolved => {}
            Kind::AliasDeleted => (t.current, t.replaced) = (None, None),
            Kind::Baseline => {
                if let Some(v) = e.version {
                    t.current = Some(v);
                    t.since_ms = e.at_ms;
                    t.served.insert(v);
                    let f = self.figures.entry(key).or_default();
                    if f.deployments == 0 {
                        f.last_deployed_ms = e.version_created_ms.unwrap_or(e.at_ms).min(e.at_ms);
                    }
                }
            }
            Kind::Deployment => {
                let Some(v) = e.version else { return };
                // A move back to a lower version than the one replaced, or to one this target
                // served before: the replaced deployment failed, and this restores service.
                let rollback = t.current.is_some_and(|cur| v < cur) || t.served.contains(&v);
                let recovered = (rollback && t.current.is_some()).then_some(t.since_ms);
                t.replaced = t.current;
                t.current = Some(v);
                t.since_ms = e.at_ms;
                t.served.insert(v);
                let f = self.figures.entry(key).or_default();
                f.deployments += 1;
                f.last_deployed_ms = e.at_ms;
                if rollback {
                    f.rollbacks += 1;
                } else if let Some(start) = e.run_start_ms {
                    f.last_lead_time_ms = span(start, e.at_ms) as i64;
                }
                let b = &self.bounds;
                let h = self.histograms.entry(hkey).or_default();
                if let Some(since) = recovered {
                    h.rollback_recovery
                        .observe_ms(&b.recovery, span(since, e.at_ms));
                }
                if !rollback {
                    // Lead time measures changes; a rollback restores an old one.
                    if let Some(start) = e.run_start_ms {
                        h.lead_time.observe_ms(&b.lead_time, span(start, e.at_ms));
                    }
                    if let Some(created) = e.version_created_ms {
                        h.time_to_deploy
                            .observe_ms(&b.time_to_deploy, span(created, e.at_ms));
                        if let Some(end) = e.run_end_ms {
                            h.time_to_register
                                .observe_ms(&b.time_to_register, span(end, created));
                        }
                    }
                }
            }
        }
    }

    /// An incident opens once and resolves once; a resolution of an incident never seen open, or a
    /// second opening of an open one, is kept for audits but changes no figure.
    fn apply_incident(&mut self, e: &Event) {
        let Some(id) = &e.incident else { return };
        let severity = e.severity.clone().unwrap_or_default();
        match e.kind {
            Kind::IncidentOpened if !self.open_incidents.contains_key(id) => {
                let f = self
                    .incidents
                    .entry((e.model.clone(), severity.clone()))
                    .or_default();
                f.opened += 1;
                f.open += 1;
                self.incident_recovery_of(&e.model, &severity);
                self.open_incidents
                    .insert(id.clone(), (e.model.clone(), severity, e.at_ms));
            }
            Kind::IncidentResolved => {
                if let Some((model, severity, opened)) = self.open_incidents.remove(id) {
                    let (team, label) = self.histogram_key(&model);
                    self.incident_recovery
                        .entry((team, label, severity.clone()))
                        .or_default()
                        .observe_ms(&self.bounds.incident_recovery, span(opened, e.at_ms));
                    let f = self.incidents.entry((model, severity)).or_default();
                    f.open -= 1;
                }
            }
            _ => {}
        }
    }

    /// The time-to-restore histogram of a model's incidents of one severity.
    fn incident_recovery_of(&mut self, model: &str, severity: &str) -> &mut HistogramAcc {
        let (team, model) = self.histogram_key(model);
        self.incident_recovery
            .entry((team, model, severity.to_string()))
            .or_default()
    }

    /// Whether an incident is open now.
    pub fn is_open(&self, id: &str) -> bool {
        self.open_incidents.contains_key(id)
    }

    /// A deployment (or, with `Kind::Baseline`, a first sight) of `version` to a target, named after
    /// the target's next change; nothing when the target already serves that version.
    #[allow(clippy::too_many_arguments)]
    pub fn change(
        &self,
        kind: Kind,
        source: Source,
        model: &str,
        target: &str,
        version: u32,
        at_ms: i64,
        times: VersionTimes,
    ) -> Option<Event> {
        let known = self.targets.get(&(model.to_string(), target.to_string()));
        if known.and_then(|t| t.current) == Some(version) {
            return None;
        }
        Some(Event {
            dedup_key: dedup_key(
                self.subject,
                model,
                target,
                known.map_or(0, |t| t.changes) + 1,
            ),
            kind,
            source,
            subject: self.subject,
            model: model.to_string(),
            target: target.to_string(),
            version: Some(version),
            at_ms,
            run_start_ms: times.run_start_ms,
            run_end_ms: times.run_end_ms,
            version_created_ms: times.created_ms,
            incident: None,
            severity: None,
            team: times.team,
        })
    }

    /// The deletion of a target's alias; nothing when it serves nothing now.
    pub fn deletion(&self, source: Source, model: &str, target: &str, at_ms: i64) -> Option<Event> {
        let t = self.targets.get(&(model.to_string(), target.to_string()))?;
        t.current?;
        Some(Event {
            dedup_key: dedup_key(self.subject, model, target, t.changes + 1),
            kind: Kind::AliasDeleted,
            source,
            subject: self.subject,
            model: model.to_string(),
            target: target.to_string(),
            version: None,
            at_ms,
            run_start_ms: None,
            run_end_ms: None,
            version_created_ms: None,
            incident: None,
            severity: None,
            team: None,
        })
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

    /// Compares a snapshot's serving aliases (those named in `aliases`) and `Production` stage with
    /// the history, and its prompts' serving aliases with the prompts' history, and returns the
    /// events that explain the difference. On the first poll after start-up a target the history
    /// has never seen is a baseline; later, a deployment.
    pub fn detect(
        &self,
        snap: &Snapshot,
        aliases: &[String],
        first_poll: bool,
        now_ms: i64,
    ) -> Vec<Event> {
        let s = &snap.strings;
        let serving = |alias: Sym| aliases.iter().any(|a| a == s.get(alias));
        let mut now: HashMap<(String, String), u32> = HashMap::new();
        for (model, rec) in &snap.models {
            for (alias, version) in rec.aliases.iter().filter(|(a, _)| serving(*a)) {
                now.insert(
                    (s.get(*model).to_string(), s.get(*alias).to_string()),
                    *version,
                );
            }
        }
        for ((model, number), v) in &snap.versions {
            if s.get(v.stage) == PRODUCTION {
                let slot = now
                    .entry((s.get(*model).to_string(), PRODUCTION.to_string()))
                    .or_insert(*number);
                *slot = (*slot).max(*number);
            }
        }
        let mut events = self.explain(
            &now,
            |model, n| {
                s.lookup(model)
                    .and_then(|m| snap.versions.get(&(m, n)).map(|v| (m, v)))
                    .map(|(m, v)| VersionTimes::of(snap, m, v))
                    .unwrap_or_default()
            },
            first_poll,
            now_ms,
        );
        if self.subject == Subject::Model {
            let mut prompts: HashMap<(String, String), u32> = HashMap::new();
            for (prompt, rec) in &snap.prompts {
                for (alias, version) in rec.aliases.iter().filter(|(a, _)| serving(*a)) {
                    prompts.insert(
                        (s.get(*prompt).to_string(), s.get(*alias).to_string()),
                        *version,
                    );
                }
            }
            events.extend(self.prompts().explain(
                &prompts,
                |prompt, n| VersionTimes::of_prompt(snap, prompt, n),
                first_poll,
                now_ms,
            ));
        }
        events
    }

    /// The events that take this history's targets to what `now` says they serve: changes in
    /// the order of their targets, then deletions of those no longer served.
    fn explain(
        &self,
        now: &HashMap<(String, String), u32>,
        times: impl Fn(&str, u32) -> VersionTimes,
        first_poll: bool,
        now_ms: i64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut keys: Vec<&(String, String)> = now.keys().collect();
        keys.sort();
        for key in keys {
            let (model, target) = key;
            let kind = if first_poll && !self.targets.contains_key(key) {
                Kind::Baseline
            } else {
                Kind::Deployment
            };
            let version = now[key];
            let times = times(model, version);
            events.extend(self.change(kind, Source::Poll, model, target, version, now_ms, times));
        }
        let mut gone: Vec<&(String, String)> = self
            .targets
            .iter()
            .filter(|(k, t)| t.current.is_some() && !now.contains_key(*k))
            .map(|(k, _)| k)
            .collect();
        gone.sort();
        for (model, target) in gone {
            events.extend(self.deletion(Source::Poll, model, target, now_ms));
        }
        events
    }
}

/// The folded state of a prefix of the history, as the store keeps it when retention deletes the
/// events it was folded from: so that counters do not go back at the next start.
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// The bounds its histograms were counted with.
    bounds: Bounds,
    targets: Vec<(String, String, Target)>,
    figures: Vec<(String, String, TargetFigures)>,
    histograms: Vec<(String, String, Histograms)>,
    incidents: Vec<(String, String, IncidentFigures)>,
    incident_recovery: Vec<(String, String, String, HistogramAcc)>,
    open_incidents: Vec<(String, String, String, i64)>,
    teams: Vec<(String, String)>,
    detailed: Vec<String>,
    events: u64,
    /// The prompts' history (none in a checkpoint written before prompts were).
    #[serde(default)]
    prompts: Option<Box<Checkpoint>>,
}

impl Delivery {
    /// The state as JSON, for [`Delivery::from_checkpoint`].
    pub fn checkpoint(&self) -> String {
        serde_json::to_string(&self.to_checkpoint()).unwrap_or_default()
    }

    fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            bounds: self.bounds.clone(),
            targets: sorted(
                self.targets
                    .iter()
                    .map(|((m, t), v)| (m.clone(), t.clone(), v.clone())),
            ),
            figures: sorted(
                self.figures
                    .iter()
                    .map(|((m, t), v)| (m.clone(), t.clone(), v.clone())),
            ),
            histograms: self
                .histograms
                .iter()
                .map(|((a, b), v)| (a.clone(), b.clone(), v.clone()))
                .collect(),
            incidents: sorted(
                self.incidents
                    .iter()
                    .map(|((m, s), v)| (m.clone(), s.clone(), v.clone())),
            ),
            incident_recovery: self
                .incident_recovery
                .iter()
                .map(|((a, b, c), v)| (a.clone(), b.clone(), c.clone(), v.clone()))
                .collect(),
            open_incidents: {
                let mut v: Vec<_> = self
                    .open_incidents
                    .iter()
                    .map(|(id, (m, s, at))| (id.clone(), m.clone(), s.clone(), *at))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            },
            teams: {
                let mut v: Vec<_> = self
                    .teams
                    .iter()
                    .map(|(m, t)| (m.clone(), t.clone()))
                    .collect();
                v.sort();
                v
            },
            detailed: self.detailed.iter().cloned().collect(),
            events: self.events,
            prompts: self.prompts.as_ref().map(|p| Box::new(p.to_checkpoint())),
        }
    }

    /// `fresh` (made with the current settings) holding the state of a checkpoint; histograms
    /// counted with other buckets keep every observation, moved to the first bucket at least as
    /// large. `None` when the text is not a checkpoint.
    pub fn from_checkpoint(fresh: Delivery, text: &str) -> Option<Delivery> {
        Delivery::restore(fresh, serde_json::from_str(text).ok()?)
    }

    fn restore(mut fresh: Delivery, c: Checkpoint) -> Option<Delivery> {
        if let Some(p) = c.prompts {
            if let Some(fresh_p) = fresh.prompts.take() {
                fresh.prompts = Some(Box::new(Delivery::restore(*fresh_p, *p)?));
            }
        }
        let (old, new) = (&c.bounds, fresh.bounds.clone());
        let re = |h: HistogramAcc, from: &[u64], to: &[u64]| -> Option<HistogramAcc> {
            Some(HistogramAcc {
                counts: crate::store::tally::rebucket(from, &h.counts, to)?,
                sum_ms: h.sum_ms,
            })
        };
        fresh.targets = c.targets.into_iter().map(|(m, t, v)| ((m, t), v)).collect();
        fresh.figures = c.figures.into_iter().map(|(m, t, v)| ((m, t), v)).collect();
        for (a, b, h) in c.histograms {
            let h = Histograms {
                lead_time: re(h.lead_time, &old.lead_time, &new.lead_time)?,
                time_to_register: re(
                    h.time_to_register,
                    &old.time_to_register,
                    &new.time_to_register,
                )?,
                time_to_deploy: re(h.time_to_deploy, &old.time_to_deploy, &new.time_to_deploy)?,
                rollback_recovery: re(h.rollback_recovery, &old.recovery, &new.recovery)?,
            };
            fresh.histograms.insert((a, b), h);
        }
        fresh.incidents = c
            .incidents
            .into_iter()
            .map(|(m, s, v)| ((m, s), v))
            .collect();
        for (a, b, sev, h) in c.incident_recovery {
            let h = re(h, &old.incident_recovery, &new.incident_recovery)?;
            fresh.incident_recovery.insert((a, b, sev), h);
        }
        fresh.open_incidents = c
            .open_incidents
            .into_iter()
            .map(|(id, m, s, at)| (id, (m, s, at)))
            .collect();
        fresh.teams = c.teams.into_iter().collect();
        fresh.detailed.extend(c.detailed);
        fresh.events = c.events;
        Some(fresh)
    }
}

/// Entries sorted by their keys, so that a checkpoint's text does not depend on a hash map's order.
fn sorted<K: Ord, L: Ord, V>(it: impl Iterator<Item = (K, L, V)>) -> Vec<(K, L, V)> {
    let mut v: Vec<_> = it.collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

/// A model's keys are as they always were; a prompt's have a field more, so none equals a model's.
fn dedup_key(subject: Subject, model: &str, target: &str, n: u64) -> String {
    match subject {
        Subject::Model => format!("{model}\u{1f}{target}\u{1f}{n}"),
        Subject::Prompt => format!("prompt\u{1f}{model}\u{1f}{target}\u{1f}{n}"),
    }
}

/// `to − from` in ms, never negative (clocks of clients and the exporter disagree).
fn span(from: i64, to: i64) -> u64 {
    to.saturating_sub(from).max(0) as u64
}

#[cfg(test)]
mod tests;
