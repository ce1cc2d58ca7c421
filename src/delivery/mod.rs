//! Delivery (DORA for models): registry changes as events, detected by comparing each snapshot's
//! serving aliases and `Production` stage with what is known to be served, and incidents opened and
//! resolved by Alertmanager or CI/CD; all folded into the figures: deployments, rollbacks, lead time
//! and its parts, incidents and time to restore.
//!
//! Everything here is pure: events come in, state and aggregates come out. The event store keeps the
//! events; on start-up they are folded again in order, so counters continue across restarts.

pub mod recorder;

use std::collections::{BTreeSet, HashMap};

use crate::config::DeliverySettings;
use crate::metrics::family::{bounds_ms, HistogramAcc};
use crate::sync::snapshot::{Snapshot, VersionRecord, NO_TIME};

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

/// One change of what a model's alias (or `Production` stage) serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// `model␟target␟n`: the n-th change of that target. Two sources that see the same change
    /// compute the same key, so the store keeps it once.
    pub dedup_key: String,
    pub kind: Kind,
    pub source: Source,
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
            model: model.to_string(),
            target: String::new(),
            version: None,
            at_ms,
            run_start_ms: None,
            run_end_ms: None,
            version_created_ms: None,
            incident: Some(format!("{}\u{1f}{id}", source.as_str())),
            severity: Some(severity.to_string()),
        }
    }
}

/// Times of a model version and of the run behind it, for lead time and its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VersionTimes {
    pub run_start_ms: Option<i64>,
    pub run_end_ms: Option<i64>,
    pub created_ms: Option<i64>,
}

impl VersionTimes {
    /// The times of one version of a snapshot.
    pub fn of(snap: &Snapshot, v: &VersionRecord) -> VersionTimes {
        let time = |t: i64| (t != NO_TIME).then_some(t);
        let run = v.run.and_then(|k| snap.runs.get(&k));
        VersionTimes {
            run_start_ms: run.and_then(|r| time(r.start_ms)),
            run_end_ms: run.and_then(|r| time(r.end_ms)),
            created_ms: time(v.created_ms),
        }
    }

    /// Every version's times in a snapshot, by model name and number.
    pub fn index(snap: &Snapshot) -> HashMap<(String, u32), VersionTimes> {
        snap.versions
            .iter()
            .map(|((m, n), v)| {
                (
                    (snap.strings.get(*m).to_string(), *n),
                    VersionTimes::of(snap, v),
                )
            })
            .collect()
    }
}

/// Figures of the incidents of one model and severity.
#[derive(Debug, Clone, Default)]
pub struct IncidentFigures {
    pub opened: u64,
    pub open: u64,
    pub recovery: HistogramAcc,
}

/// What one target (a model's alias, or its `Production` stage) serves, and has served.
#[derive(Debug, Clone, Default)]
struct Target {
    current: Option<u32>,
    /// When the current version was deployed (or first seen).
    since_ms: i64,
    served: BTreeSet<u32>,
    /// Sequence number of the last change applied; the next event gets the one after.
    changes: u64,
}

/// Figures of one target.
#[derive(Debug, Clone, Default)]
pub struct TargetFigures {
    pub deployments: u64,
    pub rollbacks: u64,
    pub lead_time: HistogramAcc,
    pub time_to_deploy: HistogramAcc,
    pub rollback_recovery: HistogramAcc,
    /// Time of the last deployment, or `NO_TIME`.
    pub last_deployed_ms: i64,
}

/// Bucket bounds in ms of the delivery histograms.
#[derive(Debug, Clone)]
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
    targets: HashMap<(String, String), Target>,
    pub figures: HashMap<(String, String), TargetFigures>,
    pub time_to_register: HashMap<String, HistogramAcc>,
    /// By model and severity.
    pub incidents: HashMap<(String, String), IncidentFigures>,
    /// Open incidents: id → (model, severity, opened at).
    open_incidents: HashMap<String, (String, String, i64)>,
    /// Events folded in so far.
    pub events: u64,
}

impl Delivery {
    pub fn new(bounds: Bounds) -> Delivery {
        Delivery {
            bounds,
            targets: HashMap::new(),
            figures: HashMap::new(),
            time_to_register: HashMap::new(),
            incidents: HashMap::new(),
            open_incidents: HashMap::new(),
            events: 0,
        }
    }

    /// Folds one event in. Events must come in the order they were recorded.
    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        if matches!(e.kind, Kind::IncidentOpened | Kind::IncidentResolved) {
            self.apply_incident(e);
            return;
        }
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
            Kind::AliasDeleted => t.current = None,
            Kind::Baseline => {
                if let Some(v) = e.version {
                    t.current = Some(v);
                    t.since_ms = e.at_ms;
                    t.served.insert(v);
                }
            }
            Kind::Deployment => {
                let Some(v) = e.version else { return };
                let f = self.figures.entry(key).or_insert_with(|| TargetFigures {
                    last_deployed_ms: NO_TIME,
                    ..TargetFigures::default()
                });
                f.deployments += 1;
                f.last_deployed_ms = e.at_ms;
                // A move back to a lower version than the one replaced, or to one this target
                // served before: the replaced deployment failed, and this restores service.
                let rollback = t.current.is_some_and(|cur| v < cur) || t.served.contains(&v);
                if rollback {
                    f.rollbacks += 1;
                    if t.current.is_some() {
                        f.rollback_recovery
                            .observe_ms(&self.bounds.recovery, span(t.since_ms, e.at_ms));
                    }
                } else {
                    // Lead time measures changes; a rollback restores an old one.
                    if let Some(start) = e.run_start_ms {
                        f.lead_time
                            .observe_ms(&self.bounds.lead_time, span(start, e.at_ms));
                    }
                    if let Some(created) = e.version_created_ms {
                        f.time_to_deploy
                            .observe_ms(&self.bounds.time_to_deploy, span(created, e.at_ms));
                        if let Some(end) = e.run_end_ms {
                            self.time_to_register
                                .entry(e.model.clone())
                                .or_default()
                                .observe_ms(&self.bounds.time_to_register, span(end, created));
                        }
                    }
                }
                t.current = Some(v);
                t.since_ms = e.at_ms;
                t.served.insert(v);
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
                self.open_incidents
                    .insert(id.clone(), (e.model.clone(), severity, e.at_ms));
            }
            Kind::IncidentResolved => {
                if let Some((model, severity, opened)) = self.open_incidents.remove(id) {
                    let f = self.incidents.entry((model, severity)).or_default();
                    f.open -= 1;
                    f.recovery
                        .observe_ms(&self.bounds.incident_recovery, span(opened, e.at_ms));
                }
            }
            _ => {}
        }
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
            dedup_key: dedup_key(model, target, known.map_or(0, |t| t.changes) + 1),
            kind,
            source,
            model: model.to_string(),
            target: target.to_string(),
            version: Some(version),
            at_ms,
            run_start_ms: times.run_start_ms,
            run_end_ms: times.run_end_ms,
            version_created_ms: times.created_ms,
            incident: None,
            severity: None,
        })
    }

    /// The deletion of a target's alias; nothing when it serves nothing now.
    pub fn deletion(&self, source: Source, model: &str, target: &str, at_ms: i64) -> Option<Event> {
        let t = self.targets.get(&(model.to_string(), target.to_string()))?;
        t.current?;
        Some(Event {
            dedup_key: dedup_key(model, target, t.changes + 1),
            kind: Kind::AliasDeleted,
            source,
            model: model.to_string(),
            target: target.to_string(),
            version: None,
            at_ms,
            run_start_ms: None,
            run_end_ms: None,
            version_created_ms: None,
            incident: None,
            severity: None,
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

    /// Compares a snapshot's serving aliases (those named in `aliases`) and `Production` stage with
    /// the history and returns the events that explain the difference. On the first poll after
    /// start-up a target the history has never seen is a baseline; later, a deployment.
    pub fn detect(
        &self,
        snap: &Snapshot,
        aliases: &[String],
        first_poll: bool,
        now_ms: i64,
    ) -> Vec<Event> {
        let s = &snap.strings;
        let mut now: HashMap<(String, String), u32> = HashMap::new();
        for (model, rec) in &snap.models {
            for (alias, version) in &rec.aliases {
                if aliases.iter().any(|a| a == s.get(*alias)) {
                    now.insert(
                        (s.get(*model).to_string(), s.get(*alias).to_string()),
                        *version,
                    );
                }
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
            let times = s
                .lookup(model)
                .and_then(|m| snap.versions.get(&(m, now[key])))
                .map(|v| VersionTimes::of(snap, v))
                .unwrap_or_default();
            events.extend(self.change(kind, Source::Poll, model, target, now[key], now_ms, times));
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

fn dedup_key(model: &str, target: &str, n: u64) -> String {
    format!("{model}\u{1f}{target}\u{1f}{n}")
}

/// `to − from` in ms, never negative (clocks of clients and the exporter disagree).
fn span(from: i64, to: i64) -> u64 {
    to.saturating_sub(from).max(0) as u64
}

#[cfg(test)]
mod tests;
