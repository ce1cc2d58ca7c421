//! What changed: the events that take the history to what a snapshot's serving aliases and
//! `Production` stage serve (a baseline at start-up, else deployments and deletions), and the
//! events of one change or deletion, named after the target's next change.

use std::collections::HashMap;

use super::event::dedup_key;
use super::{Delivery, Event, Kind, Source, Subject, VersionTimes, PRODUCTION};
use crate::sync::snapshot::{Snapshot, Sym};

impl Delivery {
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
