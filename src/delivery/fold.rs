//! The fold: one event at a time into the history's state and figures, in the order they were
//! recorded; deployments and rollbacks, lead time and its parts, incidents and time to restore.

use super::{Delivery, Event, Kind};
use crate::histogram::HistogramAcc;

impl Delivery {
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
}

/// `to − from` in ms, never negative (clocks of clients and the exporter disagree).
fn span(from: i64, to: i64) -> u64 {
    to.saturating_sub(from).max(0) as u64
}
