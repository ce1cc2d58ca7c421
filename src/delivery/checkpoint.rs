//! The folded state of a prefix of the history, as JSON, for the store to keep when retention
//! deletes the events it was folded from, and its restore onto the current buckets.

use super::{Bounds, Delivery, Histograms, IncidentFigures, Target, TargetFigures};
use crate::histogram::HistogramAcc;

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
                counts: crate::histogram::rebucket(from, &h.counts, to)?,
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
