//! Runs counted: the per-run pass that counts each run once (started, ended with its duration,
//! its GPU utilization) and its compute time, money and GPU time as they accrue, and what the
//! store keeps of each run to go on from it after a restart.

use hashbrown::{HashMap, HashSet};

use super::{bits, CountReport, Deltas, Tally};
use crate::histogram::HistogramAcc;
use crate::sync::snapshot::{RunKey, RunRecord, RunStatus, Snapshot, NO_TIME};
use crate::sync::RateCard;

/// The runs that ended, by experiment and extra labels: per ended status (in
/// [`RunStatus::ENDED`] order) how many, and their durations.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Ended {
    pub count: [u64; 3],
    pub durations: [HistogramAcc; 3],
}

/// Compute, money and GPU time of one experiment, team and instance type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostSeries {
    pub ms: u64,
    pub gpu_ms: u64,
    /// Milliseconds by hourly rate (the rate's value, so that a changed rate card prices only
    /// what is counted after the change), sorted by rate.
    pub by_rate: Vec<(f64, u64)>,
    pub idle_cost: f64,
}

impl CostSeries {
    pub(super) fn add(&mut self, other: &CostSeries) {
        self.ms += other.ms;
        self.gpu_ms += other.gpu_ms;
        self.idle_cost += other.idle_cost;
        for (rate, ms) in &other.by_rate {
            self.add_rate(*rate, *ms);
        }
    }

    fn add_rate(&mut self, rate: f64, ms: u64) {
        match self.by_rate.binary_search_by(|(r, _)| r.total_cmp(&rate)) {
            Ok(i) => self.by_rate[i].1 += ms,
            Err(i) => self.by_rate.insert(i, (rate, ms)),
        }
    }

    /// The money: each rate's milliseconds priced, summed in rate order.
    pub fn money(&self) -> f64 {
        self.by_rate
            .iter()
            .map(|(rate, ms)| *ms as f64 * rate / 3_600_000.0)
            .sum()
    }
}

/// What one run counted, as the store keeps it: enough to count corrections if the run is gone
/// while the exporter is not running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredRun {
    pub counted_ms: u64,
    /// Compute time already counted as a correction (an end moved earlier).
    pub corrected_ms: u64,
    pub flags: u8,
    pub hourly_rate: f64,
    pub gpus: u32,
    pub idle_cost: f64,
    pub gone: bool,
}

impl Tally {
    /// Takes a run's counted state read back from the store.
    pub fn restore_run(&mut self, key: RunKey, run: StoredRun) {
        if run.gone {
            self.gone.insert(key, run);
        } else {
            self.pending.insert(key, run);
        }
    }

    /// The per-run pass: what each run adds since it was last counted. Returns the stored runs it
    /// claimed.
    pub(super) fn count_runs(
        &mut self,
        snap: &mut Snapshot,
        pending: &HashMap<RunKey, StoredRun>,
        now_ms: i64,
        d: &mut Deltas,
        report: &mut CountReport,
    ) -> HashSet<RunKey> {
        use bits::*;
        let rates = &self.settings.card.rates;
        let bounds = &self.settings.run_bounds_ms;
        let gpu_bounds = &self.settings.gpu_bounds;
        let mut claimed = HashSet::new();
        let mut backdated = Vec::new();
        let experiments = &snap.experiments;
        let team = |r: &RunRecord| {
            r.team
                .or_else(|| experiments.get(&r.experiment).and_then(|e| e.team))
        };
        for (key, r) in snap.runs.iter_mut() {
            if r.counted == 0 {
                if let Some(stored) = pending.get(&key).or_else(|| self.gone.get(&key)) {
                    // Counted before this start-up (or counted, then gone, now back): go on
                    // from what was counted.
                    r.counted = stored.flags;
                    r.counted_ms = stored.counted_ms;
                    claimed.insert(key);
                    self.gone.remove(&key);
                }
            }
            let before = (r.counted, r.counted_ms);
            let mut f = r.counted;
            let combo = r.extra;
            if f & SEEN == 0 {
                f |= SEEN;
                d.ended.entry((r.experiment, combo)).or_default();
            }
            if f & STARTED == 0 && r.start_ms != NO_TIME && r.status != RunStatus::Scheduled {
                f |= STARTED;
                *d.started.entry((r.experiment, team(r))).or_default() += 1;
            }
            let ms = r.compute_ms(now_ms);
            let rate = rates.hourly_rate(r.rate);
            let gpus = u64::from(rates.gpus(r.rate, r.gpus_logged));
            if ms > r.counted_ms {
                let add = ms - r.counted_ms;
                let (n, c) = d
                    .cost
                    .entry((r.experiment, team(r), r.instance_type))
                    .or_default();
                *n += 1;
                c.ms += add;
                c.gpu_ms += add * gpus;
                c.add_rate(rate, add);
                r.counted_ms = ms;
            } else if ms < r.counted_ms && r.status.is_ended() && f & CORRECTED == 0 {
                // Timed while running, then ended with an earlier end (a backdated end).
                f |= CORRECTED;
                backdated.push((r.counted_ms - ms, rate, gpus));
            }
            if r.status.is_ended() && f & ENDED == 0 {
                f |= ENDED;
                let (n, e) = d.ended.entry((r.experiment, combo)).or_default();
                *n += 1;
                let i = ended_index(r.status);
                e.count[i] += 1;
                if let Some(dur) = r.duration_ms() {
                    f |= DURATION;
                    e.durations[i].observe_ms(bounds, dur);
                }
            }
            if r.status.is_ended() && f & UTIL == 0 && !r.gpu_util_pct.is_nan() {
                f |= UTIL;
                let ratio = (r.gpu_util_pct / 100.0).clamp(0.0, 1.0);
                let (n, h) = d.util.entry((r.experiment, team(r))).or_default();
                *n += 1;
                h.observe(gpu_bounds, ratio);
                let (_, c) = d
                    .cost
                    .entry((r.experiment, team(r), r.instance_type))
                    .or_default();
                c.idle_cost += idle_cost(ms, rate, ratio);
            }
            r.counted = f;
            if (r.counted, r.counted_ms) != before {
                report.runs += 1;
                self.unsaved
                    .runs
                    .insert(key, stored(r, now_ms, rates, false));
            }
        }
        for (ms, rate, gpus) in backdated {
            self.correct_compute(ms, rate, gpus);
        }
        claimed
    }
}

/// Index of an ended status in [`RunStatus::ENDED`].
fn ended_index(s: RunStatus) -> usize {
    RunStatus::ENDED.iter().position(|x| *x == s).unwrap_or(0)
}

/// The money spent on idle GPUs by a run: its cost times the unused share.
fn idle_cost(ms: u64, hourly_rate: f64, ratio: f64) -> f64 {
    ms as f64 * hourly_rate / 3_600_000.0 * (1.0 - ratio)
}

/// A run's counted state as the store keeps it.
pub(super) fn stored(r: &RunRecord, now_ms: i64, rates: &RateCard, gone: bool) -> StoredRun {
    let ms = r.compute_ms(now_ms);
    let rate = rates.hourly_rate(r.rate);
    let util = r.counted & bits::UTIL != 0;
    StoredRun {
        counted_ms: r.counted_ms,
        corrected_ms: if r.counted & bits::CORRECTED != 0 {
            r.counted_ms.saturating_sub(ms)
        } else {
            0
        },
        flags: r.counted,
        hourly_rate: rate,
        gpus: rates.gpus(r.rate, r.gpus_logged),
        idle_cost: if util {
            idle_cost(ms, rate, (r.gpu_util_pct / 100.0).clamp(0.0, 1.0))
        } else {
            0.0
        },
        gone,
    }
}
