//! Wires the parts together: the pipeline (MLflow → snapshot → delivery events → durable history →
//! published metrics) run on a schedule, and the HTTP server, both stopped by one shutdown signal.
//! Takes an already bound listener, so tests bind port 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Settings;
use crate::delivery::recorder::Recorder;
use crate::delivery::VersionTimes;
use crate::delivery::{Bounds, Delivery, Labelling, Source};
use crate::error::MlflowError;
use crate::exposition::Publisher;
use crate::metrics::Derivation;
use crate::probes::Probes;
use crate::server::ingest::{Ingest, VersionIndex};
use crate::server::web::{Limits, Web};
use crate::server::{self, AppState};
use crate::source::mlflow::MlflowClient;
use crate::store::EventStore;
use crate::sync::shape::Shape;
use crate::sync::Card;
use crate::sync::{CycleReport, Syncer};
use crate::tally::Tally;
use crate::telemetry::Telemetry;

const DAY_MS: i64 = 86_400_000;

/// One sync cycle end to end: read MLflow, detect registry changes, commit them, publish.
pub struct Pipeline {
    pub syncer: Syncer,
    /// Shared with the webhook endpoints.
    pub recorder: Arc<Recorder>,
    pub publisher: Arc<Publisher>,
    /// The exporter's own metrics, shared with every service.
    pub telemetry: Arc<Telemetry>,
    pub ready: Arc<AtomicBool>,
    /// Version and run times of the last snapshot, for deployments pushed between syncs.
    pub versions: VersionIndex,
    serving_aliases: Vec<String>,
    retention_ms: i64,
    last_purge_ms: i64,
    /// Successful cycles since start-up: the first one records baselines, not deployments.
    cycles: u64,
    /// What was counted from MLflow, each thing once; saved to the store after each count.
    pub tally: Tally,
}

impl Pipeline {
    /// Opens the event store, folds events past retention into the checkpoint (and deletes them),
    /// and folds the rest into the delivery state, so counters continue where the last run left
    /// them; reads back the tally.
    pub async fn open(settings: &Settings, now_ms: i64) -> Result<Pipeline, crate::Error> {
        let telemetry = Arc::new(Telemetry::new()?);
        let shape = Arc::new(Shape::default());
        // One rate card and feature table: runs are judged by it and read back through it.
        let card = Card::new(settings);
        let publisher = Arc::new(Publisher::new(
            Derivation::with_card(settings, card.clone()),
            telemetry.clone(),
            shape,
        )?);
        let client = MlflowClient::new(&settings.mlflow, Some(telemetry.api_latency()))?;
        let store = EventStore::open(&settings.storage.path).await?;
        let retention_ms = settings.storage.retention.as_millis() as i64;
        let purged = store
            .compact_before(now_ms - retention_ms, empty_history(settings))
            .await?;
        let delivery = store.load_delivery(empty_history(settings)).await?;
        let tally = store
            .load_tally(Tally::with_card(settings, card.clone()))
            .await?;
        tracing::info!(
            path = %settings.storage.path.display(),
            events = delivery.events,
            purged,
            counter_series = tally.lines(),
            "delivery history and counters loaded"
        );
        Ok(Pipeline {
            syncer: Syncer::with_card(client, settings, card),
            recorder: Arc::new(Recorder::new(store, delivery, telemetry.clone(), {
                let publisher = publisher.clone();
                Box::new(move |d| publisher.offer_history(d))
            })),
            publisher,
            telemetry,
            ready: Arc::new(AtomicBool::new(false)),
            versions: VersionIndex::default(),
            serving_aliases: settings.delivery.serving_aliases.clone(),
            retention_ms,
            last_purge_ms: now_ms,
            cycles: 0,
            tally,
        })
    }

    /// Runs one cycle at reference time `now_ms` and publishes the result; a failed sync keeps the
    /// last good figures served and says so through `mlflow_up`.
    pub async fn cycle(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        // The traces' reads start where the tally's count of them ended.
        self.syncer.trace_cursors = self.tally.trace_state.cursors.clone();
        self.syncer.llm_cursors = self.tally.trace_state.llm_cursors.clone();
        self.syncer.unrated = self
            .tally
            .trace_state
            .waiting_for_rates(crate::sync::RATED_PER_CYCLE);
        self.syncer.feedback_since = self
            .tally
            .trace_state
            .feedback_since(self.tally.settings.trace_window, now_ms);
        let report = match self.syncer.cycle(now_ms).await {
            Ok(r) => r,
            Err(e) => {
                self.telemetry.sync_failed(&e);
                self.publisher.refresh();
                return Err(e);
            }
        };
        self.publisher
            .shape()
            .set(self.syncer.workspaces_enabled(), self.syncer.is_mlflow3());
        for w in self.syncer.workspaces() {
            self.telemetry.workspace_seen(w);
        }
        for (workspace, e) in &report.failed {
            self.telemetry.workspace_sync_failed(workspace, e);
        }
        if self.syncer.is_mlflow3() {
            let scopes: Vec<&str> = match self.syncer.workspaces_enabled() {
                true => self.syncer.workspaces(),
                false => vec![""],
            };
            let tally = &mut self.tally;
            tally
                .trace_state
                .keep_scopes(&scopes, &mut tally.unsaved.traces);
        }
        for (workspace, e) in &report.traces_failed {
            let workspace = workspace.as_deref().unwrap_or("");
            self.telemetry.trace_read_failed(workspace, e);
        }
        let phase = std::time::Instant::now();
        self.record_changes(now_ms).await;
        self.versions
            .store(Arc::new(VersionTimes::index(self.syncer.snapshot())));
        let recorded = phase.elapsed();
        if now_ms - self.last_purge_ms >= DAY_MS {
            let store = self.recorder.store();
            let before = now_ms - self.retention_ms;
            match tokio::try_join!(
                store.compact_before(before, self.recorder.lock().await.empty()),
                store.purge_outages_before(before)
            ) {
                Ok((n, outages)) => tracing::info!(
                    purged = n,
                    outages,
                    "old delivery events and probe outages deleted"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete old delivery events and outages; will retry")
                }
            }
            self.last_purge_ms = now_ms;
        }
        self.cycles += 1;
        let ended = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let runs = self.syncer.snapshot().runs.len();
        self.telemetry
            .sync_succeeded(report.mode, report.seconds, ended, runs);
        let phase = std::time::Instant::now();
        self.publish(now_ms).await;
        let published = phase.elapsed();
        crate::memory::release_freed();
        self.ready.store(true, Ordering::Release);
        tracing::debug!(
            read_seconds = report.seconds,
            record_seconds = recorded.as_secs_f64(),
            publish_seconds = published.as_secs_f64(),
            release_seconds = (phase.elapsed() - published).as_secs_f64(),
            "sync cycle phases"
        );
        tracing::info!(
            mode = report.mode.as_str(),
            requests = report.requests,
            runs_read = report.runs_read,
            traces_read = report.traces_read,
            workspaces = report.workspaces,
            failed_workspaces = report.failed.len(),
            runs,
            seconds = report.seconds,
            "sync with MLflow done"
        );
        Ok(report)
    }

    /// The webhook receivers' state, sharing this pipeline's recorder, publisher and version index.
    pub fn ingest(&self, settings: &Settings) -> Arc<Ingest> {
        Arc::new(Ingest {
            recorder: self.recorder.clone(),
            settings: settings.webhooks.clone(),
            versions: self.versions.clone(),
            telemetry: self.telemetry.clone(),
            shape: self.publisher.shape().clone(),
            serving_aliases: settings.delivery.serving_aliases.clone(),
            deliveries: Default::default(),
            limiter: crate::server::ingest::limiter(&settings.webhooks),
            mlflow: MlflowClient::new(&settings.mlflow, Some(self.telemetry.api_latency()))
                .ok()
                .map(Arc::new),
            team_tag: settings.metrics.team_tag.clone(),
        })
    }

    /// Counts what the current snapshot adds to the tally, saves it, and publishes the snapshot's
    /// gauges, the tally's counters and the history. New counter series get the room the budget
    /// (`metrics.max_series`) leaves after everything else served.
    pub async fn publish(&mut self, now_ms: i64) {
        let (gone, full) = self.syncer.take_gone();
        let publisher = self.publisher.clone();
        let recorder = self.recorder.clone();
        let delivery = recorder.lock().await;
        let (tally, syncer) = (&mut self.tally, &mut self.syncer);
        // Deriving a large snapshot is CPU work: tell a multi-threaded runtime to move the scrapes
        // this thread would serve elsewhere (a current-thread runtime has nowhere to go).
        let derive = || {
            let snap = syncer.snapshot_mut();
            count_and_derive(&publisher, tally, snap, &delivery, gone, full, now_ms)
        };
        let (families, report) = match tokio::runtime::Handle::try_current()
            .map(|h| h.runtime_flavor())
        {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(derive),
            _ => derive(),
        };
        if report.budget_folded > 0 {
            tracing::warn!(
                folded = report.budget_folded,
                max_series = publisher.derivation().settings.max_series,
                "new counter series beyond the series budget were folded into __other__; raise metrics.max_series to keep them apart"
            );
        }
        if report.gone > 0 {
            tracing::info!(
                runs = report.gone,
                "counted runs no longer in MLflow (removed for good): counters keep them, corrections counted"
            );
        }
        match self.recorder.store().save_tally(&mut self.tally).await {
            Ok(rows) => tracing::debug!(rows, runs = report.runs, "counters saved"),
            Err(e) => {
                self.telemetry.counter_store_failed(&e);
            }
        }
        publisher.publish_families(&families, &delivery);
    }

    /// Commits the registry changes this snapshot shows, then counts them. If the store fails,
    /// nothing is counted and the next cycle sees the same changes again.
    async fn record_changes(&mut self, now_ms: i64) {
        let (snap, aliases, first) = (
            self.syncer.snapshot(),
            &self.serving_aliases,
            self.cycles == 0,
        );
        // Errors are logged and counted by the recorder; the next cycle detects the same changes.
        let _ = self
            .recorder
            .record(Source::Poll, now_ms, |d| {
                d.detect(snap, aliases, first, now_ms)
            })
            .await;
    }
}

/// An empty delivery history with the configured buckets and labelling.
fn empty_history(settings: &Settings) -> Delivery {
    Delivery::with_labelling(
        Bounds::new(&settings.delivery),
        Labelling::new(&settings.delivery, &settings.webhooks),
    )
}

/// Counts what `snap` adds to the tally and derives every family of the snapshot and the tally:
/// labels are admitted first, the snapshot's gauges derived, and new counter series then get the
/// room the series budget (`metrics.max_series`) leaves after them, the history's and the
/// exporter's own families. `gone` and `full` are what the last sync says
/// ([`Syncer::take_gone`]).
pub fn count_and_derive(
    publisher: &Publisher,
    tally: &mut Tally,
    snap: &mut crate::sync::Snapshot,
    delivery: &Delivery,
    gone: Vec<(
        crate::sync::snapshot::RunKey,
        crate::sync::snapshot::RunRecord,
    )>,
    full: bool,
    now_ms: i64,
) -> (
    Vec<crate::metrics::family::TextFamily>,
    crate::tally::CountReport,
) {
    let d = publisher.derivation();
    let folds = tally.labels.admit_and_fold(snap);
    publisher.set_model_fold(tally.labels.model_fold());
    publisher.offer_history(delivery);
    // Runs traces were made in: those counted before, and those of the traces read now.
    let mut traced = tally.traced_runs();
    for b in &snap.traces {
        traced.extend(
            b.source_runs
                .iter()
                .map(|r| crate::sync::snapshot::run_key(r)),
        );
    }
    let mut families = crate::metrics::gauges(snap, &folds, delivery, d, &traced, now_ms);
    // `mlflow_exporter_series` has a sample per family, and one for the limit.
    let series_family =
        families.len() + crate::metrics::COUNTER_FAMILIES + publisher.other_families() + 2;
    let used: usize = families.iter().map(|f| f.lines()).sum::<usize>()
        + publisher.other_lines()
        + series_family
        + tally.lines();
    // New counter series stop short of the budget by a twentieth: the gauges of values kept
    // later, and the history's families of models served later, take their series from it.
    let room = (d.settings.max_series - d.settings.max_series / 20).saturating_sub(used);
    let report = tally.count(snap, &folds, gone, full, now_ms, room);
    families.extend(crate::metrics::counters(tally, d, now_ms));
    (families, report)
}

/// Runs the exporter until `shutdown` fires.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), crate::Error> {
    let pipeline = Pipeline::open(&settings, chrono::Utc::now().timestamp_millis()).await?;
    let ingest = pipeline.ingest(&settings);
    for (name, r) in [
        ("alertmanager", &settings.webhooks.alertmanager),
        ("events", &settings.webhooks.events),
    ] {
        if r.enabled && r.token.is_none() {
            tracing::warn!(
                receiver = name,
                "webhook receiver enabled without a token: anyone who reaches it can record events"
            );
        }
    }
    let web = Web::load(
        settings.web.config_file.clone(),
        own_auth_paths(&settings),
        Some(pipeline.telemetry.clone()),
    )?;
    // The first scrape may come within the re-encode interval: it shows the web config's gauges.
    pipeline.publisher.refresh();
    let state = AppState {
        publisher: pipeline.publisher.clone(),
        ready: pipeline.ready.clone(),
        telemetry_path: settings.web.telemetry_path.clone(),
        ingest: Some(ingest),
    };
    let (address, scheme) = server::web::describe(&listener, &web);
    tracing::info!(
        address,
        scheme,
        basic_auth = web.current().users.is_some(),
        tracking_uri = %settings.mlflow.tracking_uri,
        "mlflow-exporter listening"
    );
    let probes = Probes::start(
        &settings,
        pipeline.recorder.store().clone(),
        &pipeline.telemetry,
        shutdown.clone(),
    )
    .await?;
    pipeline.publisher.add_probes(probes.book.clone())?;
    let sync = tokio::spawn(sync_loop(
        pipeline,
        settings.mlflow.sync_interval,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    let limits = Limits::new(&settings.web);
    server::serve(listener, state, web, limits, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await?;
    probes.stop().await;
    if let Ok(pipeline) = sync.await {
        pipeline.recorder.store().close().await;
    }
    tracing::info!("mlflow-exporter stopped");
    Ok(())
}

/// Webhook paths whose receiver checks its own token or signature: basic auth is not asked of them,
/// since MLflow's webhooks cannot send it. A receiver without a credential stays behind basic auth.
fn own_auth_paths(settings: &Settings) -> Vec<String> {
    let w = &settings.webhooks;
    let mut paths = Vec::new();
    if w.mlflow.enabled && w.mlflow.secret.is_some() {
        paths.push("/api/v1/webhooks/mlflow".to_string());
    }
    if w.alertmanager.enabled && w.alertmanager.token.is_some() {
        paths.push("/api/v1/webhooks/alertmanager".to_string());
    }
    if w.events.enabled && w.events.token.is_some() {
        paths.push("/api/v1/events".to_string());
    }
    paths
}

/// One cycle every `interval`. A cycle still reading MLflow at shutdown is dropped (nothing it read
/// is kept); events are committed before anything counts them. Returns the pipeline when stopped.
pub async fn sync_loop(
    mut pipeline: Pipeline,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Pipeline {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return pipeline,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        tokio::select! {
            _ = pipeline.cycle(now_ms) => {}
            _ = shutdown.wait_for(|s| *s) => return pipeline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's rate is an index into the card that judged it: the tally and the derivation read it
    /// through that same card.
    #[tokio::test]
    async fn the_sync_the_tally_and_the_derivation_share_one_card() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::default();
        s.mlflow.tracking_uri = "http://127.0.0.1:1".into();
        s.storage.path = dir.path().join("events.db");
        let p = Pipeline::open(&s, 0).await.unwrap();
        let card = &p.tally.settings.card;
        assert!(Arc::ptr_eq(card, &p.publisher.derivation().card));
        assert!(Arc::ptr_eq(card, p.syncer.card()));
        p.recorder.store().close().await;
    }
}
