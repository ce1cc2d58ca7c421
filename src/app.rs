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
use crate::delivery::{Bounds, Delivery, Source};
use crate::error::MlflowError;
use crate::metrics::publish::Publisher;
use crate::metrics::Derivation;
use crate::probes::Probes;
use crate::server::ingest::{Ingest, VersionIndex};
use crate::server::web::{Limits, Web};
use crate::server::{self, AppState};
use crate::source::mlflow::MlflowClient;
use crate::store::EventStore;
use crate::sync::{CycleReport, Syncer};

const DAY_MS: i64 = 86_400_000;

/// One sync cycle end to end: read MLflow, detect registry changes, commit them, publish.
pub struct Pipeline {
    pub syncer: Syncer,
    /// Shared with the webhook endpoints.
    pub recorder: Arc<Recorder>,
    pub publisher: Arc<Publisher>,
    pub ready: Arc<AtomicBool>,
    /// Version and run times of the last snapshot, for deployments pushed between syncs.
    pub versions: VersionIndex,
    serving_aliases: Vec<String>,
    retention_ms: i64,
    last_purge_ms: i64,
    /// Successful cycles since start-up: the first one records baselines, not deployments.
    cycles: u64,
}

impl Pipeline {
    /// Opens the event store, drops events past retention, and folds the rest into the delivery state,
    /// so counters continue where the last run left them.
    pub async fn open(settings: &Settings, now_ms: i64) -> Result<Pipeline, crate::Error> {
        let publisher = Arc::new(Publisher::new(Derivation::new(settings))?);
        let client = MlflowClient::new(
            &settings.mlflow,
            Some(publisher.exporter.api_latency.clone()),
        )?;
        let store = EventStore::open(&settings.storage.path).await?;
        let retention_ms = settings.storage.retention.as_millis() as i64;
        let purged = store.purge_before(now_ms - retention_ms).await?;
        let delivery = store
            .fold(Delivery::new(Bounds::new(&settings.delivery)), |d, e| {
                d.apply(&e)
            })
            .await?;
        tracing::info!(
            path = %settings.storage.path.display(),
            events = delivery.events,
            purged,
            "delivery history loaded"
        );
        Ok(Pipeline {
            syncer: Syncer::new(client, settings),
            recorder: Arc::new(Recorder::new(store, delivery, publisher.clone())),
            publisher,
            ready: Arc::new(AtomicBool::new(false)),
            versions: VersionIndex::default(),
            serving_aliases: settings.delivery.serving_aliases.clone(),
            retention_ms,
            last_purge_ms: now_ms,
            cycles: 0,
        })
    }

    /// Runs one cycle at reference time `now_ms` and publishes the result; a failed sync keeps the
    /// last good figures served and says so through `mlflow_up`.
    pub async fn cycle(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        let report = match self.syncer.cycle(now_ms).await {
            Ok(r) => r,
            Err(e) => {
                self.publisher.exporter.sync_failed(&e);
                self.publisher.refresh();
                tracing::warn!(reason = e.reason(), error = %e, "sync with MLflow failed; serving the last good snapshot");
                return Err(e);
            }
        };
        let phase = std::time::Instant::now();
        self.record_changes(now_ms).await;
        self.versions
            .store(Arc::new(VersionTimes::index(self.syncer.snapshot())));
        let recorded = phase.elapsed();
        if now_ms - self.last_purge_ms >= DAY_MS {
            let store = self.recorder.store();
            let before = now_ms - self.retention_ms;
            match tokio::try_join!(
                store.purge_before(before),
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
        let snap = self.syncer.snapshot();
        self.publisher
            .exporter
            .sync_succeeded(report.mode, report.seconds, ended, snap.runs.len());
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
            runs = snap.runs.len(),
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
            publisher: self.publisher.clone(),
            serving_aliases: settings.delivery.serving_aliases.clone(),
            deliveries: Default::default(),
            limiter: crate::server::ingest::limiter(&settings.webhooks),
        })
    }

    /// Derives and publishes the current snapshot and history.
    pub async fn publish(&self, now_ms: i64) {
        let delivery = self.recorder.lock().await;
        // Deriving a large snapshot is CPU work: tell a multi-threaded runtime to move the scrapes
        // this thread would serve elsewhere (a current-thread runtime has nowhere to go).
        let publish = || {
            self.publisher
                .publish(self.syncer.snapshot(), &delivery, now_ms)
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(publish),
            _ => publish(),
        }
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
        Some(pipeline.publisher.clone()),
    )?;
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
        &pipeline.publisher,
        shutdown.clone(),
    )
    .await?;
    let sync = tokio::spawn(sync_loop(
        pipeline,
        settings.mlflow.sync_interval,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    let limits = Limits {
        max_connections: settings.web.max_connections,
        header_timeout: settings.web.read_header_timeout,
        request_timeout: settings.web.request_timeout,
        ..Limits::default()
    };
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
