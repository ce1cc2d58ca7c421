//! Objects counted once each, by name: experiments, registered models and their versions, logged
//! models, prompts and their versions, the runs traces were made in, users activated (time to
//! first model) and logged models registered (time to registration).

use std::collections::BTreeMap;

use hashbrown::{HashMap, HashSet};

use super::labels::Folds;
use super::{key, kinds, names, Named, Tally};
use crate::sync::snapshot::{RunKey, RunRecord, Snapshot, Sym, NO_TIME};

impl Tally {
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

    /// Experiments, models and versions seen for the first time, named by team (versions by
    /// model): each counted once. On a full read, those counted that MLflow no longer has are
    /// counted as corrections.
    pub(super) fn objects_seen(
        &mut self,
        snap: &Snapshot,
        folds: &Folds,
        full: bool,
    ) -> [Named<u64>; 4] {
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
    pub(super) fn prompts_seen(
        &mut self,
        snap: &Snapshot,
        folds: &Folds,
        full: bool,
    ) -> [Named<u64>; 2] {
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
    pub(super) fn count_registrations(&mut self, snap: &Snapshot) {
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
    pub(super) fn first_sight(&mut self, kind: &'static str, name: &str) -> bool {
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
    pub(super) fn count_activations(&mut self, snap: &Snapshot) {
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
fn version_name(model: &str, version: u32) -> String {
    format!("{model}\u{1f}{version}")
}
