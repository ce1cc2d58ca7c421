//! Probes of serving endpoints and of MLflow itself: one task per probe on its own schedule (spread
//! over the interval, so 500 probes do not fire at once), results folded into each probe's live
//! record, and outages written to the event store as they open and close.

pub mod availability;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::probes::MLFLOW_PROBE;
use crate::config::Settings;
use crate::histogram::FloatHistogramAcc;
use crate::lock::lock;
use crate::source::probe::{Outcome, Prober, Reason};
use crate::store::EventStore;
use crate::telemetry::Telemetry;
use availability::{Availability, Totals, Transition};

/// What the metrics show of one probe, updated by every result.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub availability: Availability,
    /// Whether the latest probe succeeded, and the status it got (none: no answer).
    pub last: Option<(bool, Option<u16>)>,
    /// Failures by [`Reason`], in the order of `Reason::ALL`.
    pub failures: [u64; 5],
    /// Durations of probes that got an answer or timed out.
    pub durations: FloatHistogramAcc,
    pub cert_not_after: Option<i64>,
}

/// One probe's identity and live state.
#[derive(Debug)]
pub struct ProbeRecord {
    pub name: String,
    pub model: String,
    pub alias: String,
    threshold: u32,
    live: Mutex<Live>,
}

impl ProbeRecord {
    pub fn new(
        name: &str,
        model: &str,
        alias: &str,
        threshold: u32,
        totals: Totals,
    ) -> ProbeRecord {
        ProbeRecord {
            name: name.into(),
            model: model.into(),
            alias: alias.into(),
            threshold,
            live: Mutex::new(Live {
                availability: Availability::restore(totals),
                ..Live::default()
            }),
        }
    }

    /// Folds one result in; returns the outage change it made, with the totals to save.
    pub fn record(&self, o: &Outcome, buckets: &[f64]) -> Option<(Transition, Totals)> {
        let mut live = lock(&self.live);
        live.last = Some((o.failure.is_none(), o.status));
        if let Some(r) = o.failure {
            live.failures[Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)] += 1;
        }
        // A refused connection says nothing of how fast the endpoint answers: only answers and
        // timeouts are latency.
        if o.status.is_some() || o.failure == Some(Reason::Timeout) {
            live.durations.observe(buckets, o.seconds);
        }
        if o.cert_not_after.is_some() {
            live.cert_not_after = o.cert_not_after;
        }
        let change = live
            .availability
            .observe(o.at_ms, o.failure.is_none(), self.threshold)?;
        Some((change, live.availability.totals()))
    }

    pub fn live(&self) -> Live {
        lock(&self.live).clone()
    }
}

/// Every probe's record, read by the metrics.
#[derive(Debug)]
pub struct ProbeBook {
    pub records: Vec<Arc<ProbeRecord>>,
    pub buckets: Vec<f64>,
}

/// The running probes.
pub struct Probes {
    pub book: Arc<ProbeBook>,
    tasks: Vec<JoinHandle<()>>,
    store: EventStore,
}

/// A probe ready to run: what to send, on which schedule, into which record.
struct Scheduled {
    prober: Prober,
    interval: Duration,
    record: Arc<ProbeRecord>,
}

impl Probes {
    /// Builds every probe (header values are read now; a missing one stops start-up), restores
    /// their totals, and starts them. Their records are in [`Probes::book`].
    pub async fn start(
        settings: &Settings,
        store: EventStore,
        telemetry: &Arc<Telemetry>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Probes, crate::Error> {
        let p = &settings.probes;
        let saved = store.probe_totals().await?;
        let totals = |name: &str| saved.get(name).copied().unwrap_or_default();
        let mut scheduled = Vec::new();
        if p.mlflow_health {
            scheduled.push(Scheduled {
                prober: Prober::mlflow(&settings.mlflow, p.timeout)?,
                interval: p.interval,
                record: Arc::new(ProbeRecord::new(
                    MLFLOW_PROBE,
                    "",
                    "",
                    p.failures_before_down,
                    totals(MLFLOW_PROBE),
                )),
            });
        }
        for spec in p.specs()? {
            let t = &spec.probe;
            scheduled.push(Scheduled {
                prober: Prober::new(&spec)?,
                interval: spec.interval,
                record: Arc::new(ProbeRecord::new(
                    &t.name,
                    // `workspace/model`, as the snapshot names a workspace's model: published as
                    // a workspace label of its own.
                    &match &t.workspace {
                        Some(w) if !w.is_empty() => format!("{w}/{}", t.model),
                        _ => t.model.clone(),
                    },
                    &t.alias,
                    spec.failures_before_down,
                    totals(&t.name),
                )),
            });
        }
        let book = Arc::new(ProbeBook {
            records: scheduled.iter().map(|s| s.record.clone()).collect(),
            buckets: p.duration_buckets.clone(),
        });
        let n = scheduled.len().max(1) as u32;
        let mut tasks = Vec::with_capacity(scheduled.len() + 1);
        for (i, s) in scheduled.into_iter().enumerate() {
            // Spread the first probes evenly over the interval.
            let offset = s.interval / n * i as u32;
            tasks.push(tokio::spawn(run_probe(
                s,
                offset,
                book.buckets.clone(),
                store.clone(),
                telemetry.clone(),
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(checkpoints(
            book.clone(),
            store.clone(),
            telemetry.clone(),
            p.checkpoint_interval,
            shutdown,
        )));
        tracing::info!(probes = book.records.len(), "probes started");
        Ok(Probes { book, tasks, store })
    }

    /// Waits for the probes to stop (after shutdown fired) and saves the totals one last time.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.store.save_probe_totals(&all_totals(&self.book)).await {
            tracing::error!(error = %e, "cannot save the probes' totals at shutdown; up to one checkpoint interval of up time is lost");
        }
    }
}

fn all_totals(book: &ProbeBook) -> Vec<(String, Totals)> {
    book.records
        .iter()
        .map(|r| (r.name.clone(), r.live().availability.totals()))
        .collect()
}

/// Saves every probe's totals each `every`.
async fn checkpoints(
    book: Arc<ProbeBook>,
    store: EventStore,
    telemetry: Arc<Telemetry>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if let Err(e) = store.save_probe_totals(&all_totals(&book)).await {
            telemetry.probe_totals_not_saved(&e);
        }
    }
}

/// One probe's loop: probe at every tick, fold the result in, save outage changes.
async fn run_probe(
    s: Scheduled,
    offset: Duration,
    buckets: Vec<f64>,
    store: EventStore,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + offset;
    let mut tick = tokio::time::interval_at(start, s.interval);
    // A probe that could not start in time is skipped, not sent in a burst later.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = start;
    let record = &s.record;
    loop {
        let due = tokio::select! {
            t = tick.tick() => t,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let skipped = match due > next {
            true => ((due - next).as_nanos() / s.interval.as_nanos().max(1)) as u64,
            false => 0,
        };
        next = due + s.interval;
        telemetry.probe_started(due.elapsed().as_secs_f64(), skipped);
        let outcome = tokio::select! {
            o = s.prober.probe() => o,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Some(r) = outcome.failure {
            tracing::debug!(probe = %record.name, reason = r.as_str(), status = ?outcome.status, detail = %outcome.detail, "probe failed");
        }
        let change = record.record(&outcome, &buckets);
        telemetry.probe_recorded();
        let Some((change, totals)) = change else {
            continue;
        };
        let reason = outcome.failure.map(Reason::as_str).unwrap_or("");
        match change {
            Transition::Opened { .. } => {
                tracing::warn!(probe = %record.name, model = %record.model, alias = %record.alias, reason, detail = %outcome.detail, "endpoint down: outage opened")
            }
            Transition::Closed { start_ms, end_ms } => {
                tracing::info!(probe = %record.name, model = %record.model, alias = %record.alias, outage_seconds = (end_ms - start_ms) as f64 / 1000.0, "endpoint up again: outage closed")
            }
        }
        if let Err(e) = store
            .record_outage(&record.name, change, reason, &totals)
            .await
        {
            telemetry.outage_not_stored(&record.name, &e);
        }
    }
}
