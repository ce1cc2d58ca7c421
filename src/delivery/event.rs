//! The history's events: deployments, baselines and alias deletions of a model's (or a prompt's)
//! targets, and incidents, with where each came from, the key that makes it count once, and the
//! times of the version behind it for lead time.

use std::collections::HashMap;

use crate::sync::snapshot::{Snapshot, Sym, VersionRecord, NO_TIME};

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

/// A model's keys are as they always were; a prompt's have a field more, so none equals a model's.
pub(super) fn dedup_key(subject: Subject, model: &str, target: &str, n: u64) -> String {
    match subject {
        Subject::Model => format!("{model}\u{1f}{target}\u{1f}{n}"),
        Subject::Prompt => format!("prompt\u{1f}{model}\u{1f}{target}\u{1f}{n}"),
    }
}
